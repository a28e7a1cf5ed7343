"""archdsl's prepared model with its GELUs in place against the same model with them allocating
their output, in one process, runs alternating: what `GELU(inplace=True)` saves at inference.

    python bench/inplace_activations.py cloformer_xxs sgformer_s --batch 8 --rounds 10
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import archdsl
from archdsl.blocks.layers import GELU


def compare(spec: str, batch: int, rounds: int) -> dict[str, float]:
    model = archdsl.prepare_for_inference(archdsl.create_model(spec))
    images = torch.randn(batch, 3, 224, 224)
    gelus = [module for module in model.modules() if isinstance(module, GELU)]
    seconds: dict[bool, list[float]] = {True: [], False: []}
    with torch.no_grad():
        model(images)
        for index in range(rounds):
            for inplace in (True, False) if index % 2 else (False, True):
                for gelu in gelus:
                    gelu.inplace = inplace
                start = time.perf_counter()
                model(images)
                seconds[inplace].append(time.perf_counter() - start)
    in_place, allocating = (statistics.median(seconds[flag]) * 1000 for flag in (True, False))
    return {"in_place_ms": in_place, "allocating_ms": allocating, "ratio": in_place / allocating}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("specs", nargs="+")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print("| spec | batch | GELU in place (ms) | allocating (ms) | ratio |")
    print("| --- | --- | --- | --- | --- |")
    for spec in args.specs:
        row = compare(spec, args.batch, args.rounds)
        print(f"| {spec} | {args.batch} | {row['in_place_ms']:.1f} | {row['allocating_ms']:.1f} | {row['ratio']:.2f} |")


if __name__ == "__main__":
    main()
