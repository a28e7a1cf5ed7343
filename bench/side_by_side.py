"""archdsl against another implementation of the same network, in one process: the engine of
`bench/models.py --baseline`.

The two models hold the same weights (the baseline's state_dict loaded into archdsl's model
through its converter; a baseline that is archdsl itself is built from the same seed). Each task
(eval forward at batch 1, eval forward at a larger batch, 8 by default, a training step at that
batch) is timed in rounds, on the CPU or a GPU, in float32 or under bf16 autocast:
each round times one repetition of each model, the order alternating (A B, B A, ...), so that a
load that comes and goes on a shared machine hits both alike; the figure is the median over
rounds of the per-round ratio archdsl / baseline, with its min and max. Below 1 archdsl is faster.

Beside each ratio, the *kernel share*: the fraction of the baseline's time (one profiled
repetition, self CPU time) spent in matrix-multiply, convolution and fused-attention kernels.
Both implementations run the same arithmetic, so an implementation whose kernels are no faster
than the baseline's cannot go below this ratio even if everything else it does were free.
Then the *arithmetic floor*: the ratio of a model that ran every multiply-add of the network
(archdsl's analytic count; three times the forward's for a training step: forward, input
gradient, weight gradient) at the core's best GEMM rate, measured in the same process
(`peak_macs_per_second`), and did nothing else. No float32 implementation on that core goes below it.

archdsl's rows: inference runs `archdsl.prepare_for_inference(model)` (what a user asks for with
one call); the training step runs the model as `create_model` returns it after
`archdsl.use_onednn(model)` (Linears and 1x1 convs on oneDNN's primitives; with
`train_channels_last`, moved to channels-last memory first, as timm's `--channels-last`). With
`baseline_onednn`, the baseline gets the same oneDNN lowering after its own preparation
(`lower_to_onednn` over its nn.Sequential chains in eval, `use_onednn` in training): what is
left of a ratio then is the implementations' difference, not the kernels'. With
`compiled`, both models then go through `torch.compile` (inductor); the warm-up includes the
compile. A baseline file defines `build(spec_name, source) -> nn.Module` and
`prepare(model) -> nn.Module` (its inference preparation: for the authors' code, `eval()`).
"""

from __future__ import annotations

import copy
import importlib.util
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

# the kernels that do the arithmetic (forward and backward), by their profiler names
ARITHMETIC_KERNELS = {
    "aten::mm",
    "aten::addmm",
    "aten::bmm",
    "aten::baddbmm",
    "aten::mkldnn_convolution",
    "aten::_slow_conv2d_forward",
    "aten::_slow_conv2d_backward",
    "aten::convolution_backward",
    "aten::_scaled_dot_product_flash_attention_for_cpu",
    "aten::_scaled_dot_product_flash_attention_for_cpu_backward",
    "mkldnn::_linear_pointwise",
    "mkldnn::_convolution_pointwise",
}


def load_baseline(path: str):
    name = Path(path).stem + "_baseline"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # torch.compile re-imports the modules of the functions it traces
    spec.loader.exec_module(module)
    return module


def _paired_models(name: str, baseline, source: str | None, img_size: int) -> tuple[nn.Module, nn.Module]:
    import archdsl
    from archdsl.network import ArchNet

    torch.manual_seed(0)
    theirs = baseline.build(name, source)
    if isinstance(theirs, ArchNet):  # archdsl against itself: the same state_dict
        ours = archdsl.create_model(name, img_size=img_size)
        ours.load_state_dict(theirs.state_dict())
        return ours, theirs
    with tempfile.TemporaryDirectory() as folder:
        weights = Path(folder) / "baseline.pth"
        torch.save(theirs.state_dict(), weights)
        ours = archdsl.create_model(name, pretrained=weights, img_size=img_size)
    return ours, theirs


def _step(
    model: nn.Module, task: str, batch: torch.Tensor, labels: torch.Tensor, optimizer, autocast: torch.dtype | None
) -> Callable[[], None]:
    def mixed_precision():
        return torch.autocast(batch.device.type, dtype=autocast, enabled=autocast is not None)

    if task.startswith("eval"):

        def forward() -> None:
            with torch.no_grad(), mixed_precision():
                model(batch)

        return forward

    def train_step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with mixed_precision():
            loss = nn.functional.cross_entropy(model(batch), labels)
        loss.backward()
        optimizer.step()

    return train_step


def _seconds(step: Callable[[], None], calls: int, device: torch.device) -> float:
    synchronize = torch.cuda.synchronize if device.type == "cuda" else lambda: None
    synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        step()
    synchronize()
    return (time.perf_counter() - start) / calls


def alternating_rounds(steps: dict[str, Callable[[], None]], rounds: int) -> dict[str, list[float]]:
    """Each CPU step's seconds, round by round: one call of each per round, in the dict's order and
    reversed every other round, so that a load that comes and goes hits them alike."""
    seconds: dict[str, list[float]] = {name: [] for name in steps}
    for index in range(rounds):
        for name in list(steps) if index % 2 == 0 else list(steps)[::-1]:
            seconds[name].append(_seconds(steps[name], 1, torch.device("cpu")))
    return seconds


def median_ratio(seconds: dict[str, list[float]], new: str, old: str) -> float:
    """The median over `alternating_rounds`' rounds of `new`'s time / `old`'s (below 1 `new` is faster)."""
    return statistics.median(a / b for a, b in zip(seconds[new], seconds[old], strict=True))


def kernel_share(step: Callable[[], None]) -> float:
    """The fraction of one call's self CPU time spent in `ARITHMETIC_KERNELS`."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        step()
    events = profile.key_averages()
    total = sum(event.self_cpu_time_total for event in events)
    return sum(event.self_cpu_time_total for event in events if event.key in ARITHMETIC_KERNELS) / total


def peak_macs_per_second(repeats: int = 5) -> float:
    """The best rate of a large float32 GEMM ((1024, 1024) @ (1024, 1024)) on the CPU at the
    current thread count, the faster of torch's two libraries (MKL through torch.mm, oneDNN's
    inner product; on AMD processors MKL runs its AVX2 code): the most multiply-adds per second
    any kernel here reaches."""
    a, b = torch.randn(1024, 1024), torch.randn(1024, 1024)
    products = [lambda: torch.mm(a, b)]
    if torch.backends.mkldnn.is_available():
        products.append(lambda: torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], None))
    best = min(_seconds(product, 3, torch.device("cpu")) for product in products * repeats)
    return 1024**3 / best


def tasks(batch_size: int) -> tuple[str, str, str]:
    """Eval at batch 1 and at `batch_size`, a training step at `batch_size`."""
    return ("eval_b1", f"eval_b{batch_size}", f"train_b{batch_size}")


def prepared_pair(
    ours: nn.Module, theirs: nn.Module, baseline, task: str, baseline_onednn: bool, train_channels_last: bool
) -> tuple[nn.Module, nn.Module]:
    """Copies of the two models as a task runs them (see the module's docstring)."""
    import archdsl
    from archdsl.inference import layer_chains
    from archdsl.onednn import lower_to_onednn

    if task.startswith("eval"):
        a, b = archdsl.prepare_for_inference(copy.deepcopy(ours)), baseline.prepare(copy.deepcopy(theirs))
        return a, lower_to_onednn(b, layer_chains(b)) if baseline_onednn else b
    a, b = archdsl.use_onednn(copy.deepcopy(ours).train()), copy.deepcopy(theirs).train()
    if train_channels_last:  # what timm's train.py --channels-last does to the model
        a = a.to(memory_format=torch.channels_last)
    return a, archdsl.use_onednn(b) if baseline_onednn else b


def compare(
    name: str,
    baseline_file: str,
    source: str | None,
    rounds: int,
    img_size: int,
    compiled: bool = False,
    train_channels_last: bool = False,
    baseline_onednn: bool = False,
    device: str = "cpu",
    autocast: torch.dtype | None = None,
    batch_size: int = 8,
) -> dict:
    """One row: per task, archdsl's and the baseline's median milliseconds and the ratio's
    median, min, max, and (on the CPU) the baseline's kernel share. `autocast` runs both
    models' forward passes under `torch.autocast` with that dtype."""
    import archdsl

    device = torch.device(device)
    macs_per_image = archdsl.lower_spec(archdsl.load_spec(name, img_size=img_size)).flops
    peak = peak_macs_per_second() if device.type == "cpu" else None
    baseline = load_baseline(baseline_file)
    ours, theirs = _paired_models(name, baseline, source, img_size)
    label = ", ".join(
        [Path(baseline_file).stem + (" (both compiled)" if compiled else "")]
        + ["ours trains on oneDNN" + (", channels-last" if train_channels_last else "")]
        + (["baseline on oneDNN too"] if baseline_onednn else [])
        + [f"{device.type} {str(autocast).removeprefix('torch.') if autocast else 'float32'}"]
    )
    row: dict = {
        "spec": name,
        "baseline": label,
        "threads": torch.get_num_threads(),
        "rounds": rounds,
        "tasks": tasks(batch_size),
    }
    for task in row["tasks"]:
        images = 1 if task == "eval_b1" else batch_size
        batch = torch.randn(images, 3, img_size, img_size, device=device)
        labels = torch.randint(0, 1000, (images,), device=device)
        a, b = prepared_pair(ours, theirs, baseline, task, baseline_onednn, train_channels_last)
        a, b = a.to(device), b.to(device)
        optimizers = [torch.optim.SGD(model.parameters(), lr=1e-4) for model in (a, b)]
        if compiled:  # both through inductor: compiled against compiled, never against eager
            a, b = torch.compile(a), torch.compile(b)
        steps = [_step(model, task, batch, labels, optimizer, autocast) for model, optimizer in zip((a, b), optimizers)]
        calls = 3 if task == "eval_b1" else 1
        for step in steps:  # warm-up: allocator, kernels' first-call set-up
            _seconds(step, 2, device)
        ratios, ours_s, theirs_s = [], [], []
        for index in range(rounds):
            order = (0, 1) if index % 2 == 0 else (1, 0)
            seconds = {which: _seconds(steps[which], calls, device) for which in order}
            ours_s.append(seconds[0])
            theirs_s.append(seconds[1])
            ratios.append(seconds[0] / seconds[1])
        row[task] = {
            "images": images,
            "ours_ms": statistics.median(ours_s) * 1000,
            "baseline_ms": statistics.median(theirs_s) * 1000,
            "ratio": statistics.median(ratios),
            "ratio_min": min(ratios),
            "ratio_max": max(ratios),
            # the CPU profiler's kernel names; a GPU's kernels are named per library and chip
            "kernel_share": kernel_share(steps[1]) if device.type == "cpu" else None,
            "arithmetic_floor": (
                images * macs_per_image * (1 if task.startswith("eval") else 3) / peak / statistics.median(theirs_s)
                if peak is not None
                else None
            ),
        }
    return row


def across_processes(rows: list[dict]) -> dict:
    """One spec's rows from several fresh processes as one row: per task the median of the
    processes' median ratios, with their min and max (where a kernel's speed depends on the
    process, this spread, not one process's rounds, says how far the figure moves), and the
    medians of the times, kernel shares and floors."""

    def median_of(values: list) -> float | None:
        return None if None in values else statistics.median(values)

    row = {**rows[0], "baseline": f"{rows[0]['baseline']}, median of {len(rows)} processes"}
    for task in rows[0]["tasks"]:
        ratios = [process[task]["ratio"] for process in rows]
        medians = {
            key: median_of([process[task][key] for process in rows])
            for key in ("ours_ms", "baseline_ms", "kernel_share", "arithmetic_floor")
        }
        row[task] = {
            "images": rows[0][task]["images"],
            "ratio": statistics.median(ratios),
            "ratio_min": min(ratios),
            "ratio_max": max(ratios),
            **medians,
        }
    return row


def format_rows(rows: list[dict]) -> str:
    """The table, Markdown: per task, `ratio (min-max) [kernel share, arithmetic floor]`, then ours / baseline in
    milliseconds and images per second. Rows of one run share their tasks."""
    row_tasks = rows[0]["tasks"] if rows else tasks(8)
    ratio_columns = [f"{task} ratio (min-max) [kernel share, floor]" for task in row_tasks]
    time_columns = [f"{task} ms (ours / baseline)" for task in row_tasks]
    throughput_columns = [f"{task} images/s (ours / baseline)" for task in row_tasks[1:]]
    lines = ["| " + " | ".join(["spec", "baseline", "threads", *ratio_columns, *time_columns, *throughput_columns]) + " |"]
    lines.append("|" + " --- |" * (3 + len(ratio_columns) + len(time_columns) + len(throughput_columns)))
    for row in rows:
        cells = [row["spec"], row["baseline"], str(row["threads"])]
        for task in row_tasks:
            figures = row[task]
            cells.append(
                f"{figures['ratio']:.2f} ({figures['ratio_min']:.2f}-{figures['ratio_max']:.2f})"
                + (
                    f" [{figures['kernel_share']:.2f}, {figures['arithmetic_floor']:.2f}]"
                    if figures["kernel_share"] is not None
                    else ""
                )
            )
        cells += [f"{row[task]['ours_ms']:.1f} / {row[task]['baseline_ms']:.1f}" for task in row_tasks]
        cells += [
            f"{row[task]['images'] * 1000 / row[task]['ours_ms']:.1f} / {row[task]['images'] * 1000 / row[task]['baseline_ms']:.1f}"
            for task in row_tasks[1:]
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
