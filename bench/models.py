"""Model benchmark: per bundled spec, build time, analytic-FLOP time, forward latency at batch 1
and 8 (eval, no_grad), peak memory, eager and torch.compile'd. Prints a table.

    python bench/models.py                      # every bundled paper variant
    python bench/models.py cloformer_xxs --no-compile --repeats 5
    python bench/models.py nommer_t --no-compile --baseline bench/baselines/nommer.py --baseline-source ~/NomMer

`--baseline FILE`: a Python file defining `build(spec_name, source) -> nn.Module` and
`prepare(model)` (bench/baselines/: the authors' releases, read from a checkout kept outside this
repository, and archdsl's own unprepared model). Each spec is then timed against it side by side
(bench/side_by_side.py: same weights, rounds alternating A B / B A, the median of per-round ratios
archdsl / baseline with min-max, for eval at batch 1 and `--batch` (8) and a training step at
`--batch`) and one Markdown table printed; `--processes N` runs each comparison in N fresh
processes, a row each, then a row of their medians with the spread over processes. Without
`--no-compile`, both are compiled (torch.compile, inductor) before they are timed; with it, both
run eager. `--device cuda` runs both on the GPU, `--dtype bfloat16` both under torch.autocast:

    python bench/models.py nommer_t --baseline bench/baselines/nommer.py --device cuda --dtype bfloat16 --batch 64

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


def measure(name: str, repeats: int, compile_model: bool, img_size: int) -> dict:
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
    if compile_model:
        start = time.perf_counter()
        compiled = torch.compile(model)
        with torch.no_grad():
            compiled(torch.randn(1, 3, *size))
        row["compile_s"] = time.perf_counter() - start
        row["compiled_b1_ms"] = _latency(compiled, 1, size, repeats)
    row["peak_mem_mb"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
    return row


def _run_one(name: str, options: list[str]) -> dict | str:
    """One spec measured in a fresh subprocess: its row, or the reason it failed."""
    result = subprocess.run([sys.executable, __file__, "--one", name, *options], capture_output=True, text=True)
    if result.returncode != 0:
        lines = result.stderr.strip().splitlines()
        return lines[-1] if lines else f"exit {result.returncode}"
    return json.loads(result.stdout.strip().splitlines()[-1])


def compare_side_by_side(names: list[str], args) -> None:
    import side_by_side

    options = [
        "--baseline",
        args.baseline,
        "--threads",
        str(args.threads),
        "--rounds",
        str(args.rounds),
        "--img-size",
        str(args.img_size),
        *(["--no-compile"] if args.no_compile else []),
        *(["--train-channels-last"] if args.train_channels_last else []),
        *(["--baseline-onednn"] if args.baseline_onednn else []),
        "--device",
        args.device,
        "--dtype",
        args.dtype,
        "--batch",
        str(args.batch),
    ]
    if args.baseline_source:
        options += ["--baseline-source", args.baseline_source]
    rows = []
    for name in names:
        processes = []
        for _ in range(args.processes):
            row = _run_one(name, options)
            if isinstance(row, str):
                print(f"{name}: failed: {row}", file=sys.stderr)
                break
            processes.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)
        rows += processes
        if len(processes) > 1:
            rows.append(side_by_side.across_processes(processes))
    print(side_by_side.format_rows(rows))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("specs", nargs="*", help="bundled names or files (default: every paper variant)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--no-compile", action="store_true")
    parser.add_argument("--baseline", help="a .py file with build(spec_name, source) and prepare(model): compare side by side")
    parser.add_argument("--baseline-source", help="the checkout the baseline file imports (its default: /tmp/authors/<family>)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in the side-by-side comparison")
    parser.add_argument("--rounds", type=int, default=15, help="alternating rounds per task in the side-by-side comparison")
    parser.add_argument(
        "--train-channels-last", action="store_true", help="side by side: archdsl's training step in channels-last memory"
    )
    parser.add_argument(
        "--baseline-onednn",
        action="store_true",
        help="side by side: the baseline lowered to oneDNN as archdsl is (its Sequential chains fused)",
    )
    parser.add_argument("--device", default="cpu", help="side by side: where both models run (cpu, cuda)")
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "bfloat16"],
        help="side by side: bfloat16 runs both under torch.autocast",
    )
    parser.add_argument("--batch", type=int, default=8, help="side by side: the larger eval batch and the training batch")
    parser.add_argument(
        "--processes",
        type=int,
        default=1,
        help="side by side: fresh processes per spec, a row each and one of their medians (some kernels' speed moves between processes)",
    )
    parser.add_argument("--one", help=argparse.SUPPRESS)  # internal: measure one spec, print JSON
    args = parser.parse_args()
    if args.one:
        if args.baseline:
            import side_by_side
            import torch

            torch.set_num_threads(args.threads)
            row = side_by_side.compare(
                args.one,
                args.baseline,
                args.baseline_source,
                args.rounds,
                args.img_size,
                compiled=not args.no_compile,
                train_channels_last=args.train_channels_last,
                baseline_onednn=args.baseline_onednn,
                device=args.device,
                autocast=None if args.dtype == "float32" else getattr(torch, args.dtype),
                batch_size=args.batch,
            )
        else:
            row = measure(args.one, args.repeats, not args.no_compile, args.img_size)
        print(json.dumps(row))
        return

    from archdsl.loading import bundled_spec_names

    names = args.specs or bundled_spec_names()
    if args.baseline:
        compare_side_by_side(names, args)
        return
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
    print(" ".join(f"{c:>14}" for c in columns))
    for name in names:
        row = _run_one(
            name,
            ["--repeats", str(args.repeats), "--img-size", str(args.img_size)] + (["--no-compile"] if args.no_compile else []),
        )
        if isinstance(row, str):
            print(f"{name:>14} failed: {row}")
            continue
        print(
            " ".join(f"{row[c]:>14.3f}" if isinstance(row.get(c), float) else f"{str(row.get(c, '-')):>14}" for c in columns),
            flush=True,
        )


if __name__ == "__main__":
    main()
