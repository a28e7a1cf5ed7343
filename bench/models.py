"""Model benchmark: per bundled spec, build time, analytic-FLOP time, forward latency at batch 1
and 8 (eval, no_grad), peak memory, eager and torch.compile'd. Prints a table.

    python bench/models.py                      # every bundled paper variant
    python bench/models.py cloformer_xxs --no-compile --repeats 5
    python bench/models.py cloformer_xxs --baseline authors.py   # vs another implementation

`--baseline FILE`: a Python file defining `build(spec_name) -> nn.Module` (for example the
authors' released code, kept out of this repository); its latency is measured in the same
process, interleaved with ours, and the speed-up printed as a ratio.

Each spec runs in its own subprocess so peak memory (max RSS above the bare-process baseline) is
its own. Figures are wall-clock on this machine: compare rows from one run, not across runs.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import time


def _latency(model, batch: int, size: tuple[int, int], repeats: int) -> float:
    import torch

    x = torch.randn(batch, 3, *size)
    with torch.no_grad():
        for _ in range(2):
            model(x)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def _load_baseline(path: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location("baseline", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.build


def measure(name: str, repeats: int, compile_model: bool, img_size: int, baseline: str | None = None) -> dict:
    import torch

    import archdsl
    from archdsl.api import lower_spec

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    spec = archdsl.load_spec(name, img_size=img_size)
    analytic_runs = []
    for _ in range(20):
        t0 = time.perf_counter()
        graph = lower_spec(spec)
        _ = graph.flops
        analytic_runs.append(time.perf_counter() - t0)
    model = archdsl.create_model(spec).eval()
    build_s = time.perf_counter() - start
    size = spec.image_size
    row = {
        "spec": name,
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
        "gflops": graph.flops / 1e9,
        "analytic_ms": statistics.median(analytic_runs) * 1000,
        "build_s": build_s,
        "eager_b1_ms": _latency(model, 1, size, repeats),
        "eager_b8_ms": _latency(model, 8, size, max(2, repeats // 2)),
    }
    if baseline:
        other = _load_baseline(baseline)(name).eval()
        # alternate the two, so that load on a shared machine hits both alike
        ours_b1, theirs_b1, ours_b8, theirs_b8 = [], [], [], []
        for _ in range(3):
            ours_b1.append(_latency(model, 1, size, repeats))
            theirs_b1.append(_latency(other, 1, size, repeats))
            ours_b8.append(_latency(model, 8, size, max(2, repeats // 2)))
            theirs_b8.append(_latency(other, 8, size, max(2, repeats // 2)))
        row["eager_b1_ms"], row["eager_b8_ms"] = min(ours_b1), min(ours_b8)
        row["baseline_b1_ms"], row["baseline_b8_ms"] = min(theirs_b1), min(theirs_b8)
        row["speedup_b1"] = row["baseline_b1_ms"] / row["eager_b1_ms"]
        row["speedup_b8"] = row["baseline_b8_ms"] / row["eager_b8_ms"]
    if compile_model:
        start = time.perf_counter()
        compiled = torch.compile(model)
        with torch.no_grad():
            compiled(torch.randn(1, 3, *size))
        row["compile_s"] = time.perf_counter() - start
        row["compiled_b1_ms"] = _latency(compiled, 1, size, repeats)
    row["peak_mem_mb"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("specs", nargs="*", help="bundled names or files (default: every paper variant)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--baseline", help="a .py file with build(spec_name) -> nn.Module to compare against")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one spec, print JSON
    args = parser.parse_args()
    if args.one:
        print(json.dumps(measure(args.one, args.repeats, not args.no_compile, args.img_size, args.baseline)))
        return

    from archdsl.loading import bundled_spec_names

    names = args.specs or bundled_spec_names()
    columns = [
        "spec",
        "params_m",
        "gflops",
        "analytic_ms",
        "build_s",
        "eager_b1_ms",
        "eager_b8_ms",
        "compile_s",
        "compiled_b1_ms",
        "peak_mem_mb",
    ]
    if args.baseline:
        columns[7:7] = ["baseline_b1_ms", "baseline_b8_ms", "speedup_b1", "speedup_b8"]
    print(" ".join(f"{c:>14}" for c in columns))
    for name in names:
        command = [sys.executable, __file__, "--one", name, "--repeats", str(args.repeats), "--img-size", str(args.img_size)]
        if args.no_compile:
            command.append("--no-compile")
        if args.baseline:
            command += ["--baseline", args.baseline]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            print(f"{name:>14} failed: {result.stderr.strip().splitlines()[-1] if result.stderr.strip() else result.returncode}")
            continue
        row = json.loads(result.stdout.strip().splitlines()[-1])
        print(
            " ".join(f"{row[c]:>14.3f}" if isinstance(row.get(c), float) else f"{str(row.get(c, '-')):>14}" for c in columns),
            flush=True,
        )


if __name__ == "__main__":
    main()
