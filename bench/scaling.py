"""Does latency grow as the FLOPs do? One model per family, prepared for inference, eval at
batch 1 on a few input sizes: FLOPs (the analytic count) and median latency, each as a multiple
of its value at 224. A size where latency grows more than `--slack` faster than FLOPs is flagged.

    python bench/scaling.py [--threads 1] [--repeats 5] [--slack 0.15]

Run it on a quiet machine: the flags compare latencies measured minutes apart.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import archdsl

MODELS = ["cloformer_xxs", "mixformer_b0", "sgformer_s", "nommer_t"]
SIZES = [(224, 224), (384, 384), (512, 512), (800, 1333)]


def latency_ms(model: torch.nn.Module, size: tuple[int, int], repeats: int) -> float:
    image = torch.randn(1, 3, *size)
    times = []
    with torch.no_grad():
        model(image)
        for _ in range(repeats):
            start = time.perf_counter()
            model(image)
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("models", nargs="*", default=MODELS)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--slack", type=float, default=0.15, help="flag latency growth above FLOP growth x (1 + slack)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print("| model | size | GFLOPs | latency (ms) | FLOPs / FLOPs@224 | latency / latency@224 | flag |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name in args.models:
        first = None
        for height, width in SIZES:
            spec = archdsl.load_spec(name, img_size=(height, width))
            flops = archdsl.lower_spec(spec).flops
            model = archdsl.prepare_for_inference(archdsl.create_model(spec))
            latency = latency_ms(model, (height, width), args.repeats)
            first = first or (flops, latency)
            flop_growth, latency_growth = flops / first[0], latency / first[1]
            flag = "latency grows faster" if latency_growth > flop_growth * (1 + args.slack) else ""
            print(
                f"| {name} | {height}x{width} | {flops / 1e9:.2f} | {latency:.0f} | {flop_growth:.2f} | {latency_growth:.2f} | {flag} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
