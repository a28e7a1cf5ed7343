"""One trial: a configuration replayed into a spec, lowered, built and scored, on any worker.

`run_trial` is the Tune function trainable. It checks the configuration against the budget at
the budget's reference size, replays it at the trials' image size, builds the network and
scores it (`score_spec`, also used for the paper variants and the final stage). A training
objective reports after every epoch with a Ray Tune checkpoint of its state, and starts from
`tune.get_checkpoint()` when there is one: a trial paused by a scheduler, or left unfinished by
a killed search that is resumed, continues from its last epoch.
"""

from __future__ import annotations

import math
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from archdsl.search.data import ImageData
from archdsl.search.feasibility import BudgetCheck, config_key
from archdsl.search.objectives import Objective, ObjectiveFailed
from archdsl.search.searchers import METRIC
from archdsl.search.space import SearchSpace
from archdsl.search.training import ShortTraining

STATE_FILE = "state.pt"


@dataclass
class TrialSetup:
    """What every trial needs, put in Ray's object store once (`tune.with_parameters`)."""

    space: SearchSpace
    check: BudgetCheck
    objective: Objective
    data: ImageData | None
    seed: int
    cpus: float
    proxy_batch: int
    epochs: int
    batch_size: int
    lr: float
    latency: bool = False  # measure each network's batch-1 latency (--objectives ...,latency)


class OverBudget(RuntimeError):
    pass


class TuneCheckpoints:
    """A training trial's state, kept and found through Ray Tune's own checkpoints."""

    def restore(self) -> dict | None:
        import torch
        from ray import tune

        checkpoint = tune.get_checkpoint()
        if checkpoint is None:
            return None
        with checkpoint.as_directory() as folder:
            return torch.load(Path(folder) / STATE_FILE)

    def report(self, metrics: dict, state: dict) -> None:
        import torch
        from ray import tune

        with tempfile.TemporaryDirectory() as folder:
            torch.save(state, Path(folder) / STATE_FILE)
            tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))


def _device():
    """CUDA when Ray gave this trial a GPU (or, outside Ray, when there is one)."""
    import ray
    import torch

    if not torch.cuda.is_available():
        return torch.device("cpu")
    # outside a Ray session ray.get_gpu_ids() would start one: ask only inside
    gpus = ray.get_gpu_ids() if ray.is_initialized() else [0]
    return torch.device("cuda") if gpus else torch.device("cpu")


def measure_latency(model, image_size, channels: int, device, repeats: int = 15) -> float:
    """Median milliseconds of a batch-1 forward pass on `device`, after warm-up passes."""
    import torch

    images = torch.randn(1, channels, *image_size, device=device)
    times = []
    model.eval()
    with torch.no_grad():
        for index in range(repeats + 3):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            model(images)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if index >= 3:
                times.append((time.perf_counter() - start) * 1000)
    return statistics.median(times)


def score_spec(
    spec,
    setup: TrialSetup,
    report: Callable[[dict], None],
    timings: dict | None = None,
    reference_flops: int | None = None,
    checkpoints: TuneCheckpoints | None = None,
    seed: int | None = None,
) -> dict:
    """Build `spec` and score it with the objective: the part of a trial after lowering.
    `reference_flops`: its FLOPs at the budget's reference size (default: the spec's own);
    `seed`: the weights' initialisation and the training's data order (default: the search's)."""
    import torch

    from archdsl.api import load_spec, lower_spec
    from archdsl.compiler import compile_graph
    from archdsl.cost import count_params, graph_params
    from archdsl.search.objectives import TrialContext

    timings = dict(timings or {})
    torch.set_num_threads(max(1, int(setup.cpus)))
    device = _device()
    objective = setup.objective
    start = time.perf_counter()
    graph = lower_spec(spec)
    scored = spec
    if objective.uses_labels and setup.data is not None and spec.head.classes != setup.data.num_classes:
        scored = load_spec(spec, num_classes=setup.data.num_classes)  # the dataset's classes; FLOPs are the spec's
    torch.manual_seed(setup.seed if seed is None else seed)
    model = compile_graph(graph if scored is spec else lower_spec(scored))
    # the spec's own head, not the dataset's: counted on the model when it is the spec's
    params = (count_params(model) if scored is spec else graph_params(graph)).trainable
    model.to(device)
    timings["t_build"] = time.perf_counter() - start
    flops = graph.flops if reference_flops is None else reference_flops
    base = {"flops": flops, "flops_trial": graph.flops, "params": params, "device": str(device), **timings}
    if setup.latency:
        base["latency_ms"] = measure_latency(model, spec.image_size, spec.input.channels, device)
    context = TrialContext(
        device=device,
        image_size=spec.image_size,
        channels=spec.input.channels,
        data=setup.data,
        seed=setup.seed,
        proxy_batch=setup.proxy_batch,
        epochs=setup.epochs,
        batch_size=setup.batch_size,
        lr=setup.lr,
        flops=flops,
    )
    objective_start = time.perf_counter()
    reported = []

    def checked(metrics: dict) -> dict:
        score = metrics.get(METRIC)
        if score is None or not math.isfinite(score):
            raise ObjectiveFailed(f"the objective {objective.name!r} gave {score} at {metrics}")
        reported.append(metrics)
        return {**base, **metrics, "t_objective": time.perf_counter() - objective_start}

    context.report = lambda metrics: report(checked(metrics))
    if isinstance(objective, ShortTraining):

        def keep(metrics: dict, state: dict) -> None:
            if checkpoints is None:
                report(checked(metrics))
            else:
                checkpoints.report(checked(metrics), state)

        score = objective.train(model, context, checkpoints.restore() if checkpoints else None, keep, seed)
    else:
        score = objective.score(model, context)
    if score is None or not math.isfinite(float(score)):
        raise ObjectiveFailed(f"the objective {objective.name!r} gave {score} for this network")
    result = {**base, METRIC: float(score), "t_objective": time.perf_counter() - objective_start}
    if not reported:  # a multi-epoch objective has reported every epoch itself
        report(result)
    return result


def run_trial(config: dict, setup: TrialSetup, done: dict) -> None:
    """The Tune trainable. `done` maps finished trials (by id and by configuration) to their
    recorded results, so a resumed search replays them instead of running them again."""
    from ray import tune

    trial_id = tune.get_context().get_trial_id()
    replay = done.get(trial_id) or done.get(config_key(config))
    if replay is not None:
        tune.report({**replay, "replayed": True})
        return
    start = time.perf_counter()
    verdict = setup.check(config)  # at the budget's reference size, then lowered at the trials' size
    checked = time.perf_counter()
    if not verdict.fits:  # the gate never lets this through; a changed budget on resume might
        raise OverBudget(
            f"{verdict.status}: {verdict.flops or 0:,} FLOPs at {setup.check.budget_at}, budget "
            f"{setup.check.budget:,}; {verdict.reason or ''}"
        )
    spec = setup.space.resolve(config, setup.check.img_size).spec()
    timings = {"t_lower": checked - start, "t_sample": time.perf_counter() - checked, "pid": os.getpid()}
    score_spec(spec, setup, lambda metrics: tune.report(metrics), timings, verdict.flops, TuneCheckpoints())
