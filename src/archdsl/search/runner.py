"""Running a search on Ray Tune: `run_search(...)`, the one entry point (`archdsl search` calls it).

The driver loads the space, checks that something in it fits the budget, and hands Ray Tune a
searcher behind a budget gate (searchers.py): only configurations that fit become trials. Each
trial (a Tune function trainable, on any worker of the cluster) replays its configuration into
a spec, lowers it, builds the network and scores it. The driver writes every finished trial to
`OUT/trials/` the moment Tune reports it (record + spec file), so nothing finished is lost:
`resume=OUT` continues a killed search, replaying the recorded trials instead of running them
again. A trial that raises or scores NaN is recorded as failed, with its error, and the search
goes on.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import time
import traceback
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml
from ray.tune import Callback

from archdsl.errors import SpecError

from archdsl.search.budget import parse_flops, parse_params
from archdsl.search.data import ImageData, load_dataset
from archdsl.search.errors import option_error
from archdsl.search.feasibility import BudgetCheck, config_key, ensure_feasible
from archdsl.search.objectives import DEFAULT_OBJECTIVE, Objective, ObjectiveFailed, make_objective
from archdsl.search.searchers import LIVE_STATS, METRIC, MODE, GateStats, make_searcher
from archdsl.search.space import SearchSpace, load_space

SETTINGS_FILE = "search.json"
TUNE_NAME = "tune"


# --- settings and progress ---------------------------------------------------------------------------


@dataclass
class SearchSettings:
    """Everything a search was started with, stored in OUT/search.json for `resume`."""

    space: str | None
    overrides: list[str]
    budget: int
    max_params: int | None
    img_size: Any
    objective: str
    samples: int
    searcher: str
    seed: int
    cpus_per_trial: float
    gpus_per_trial: float | None
    dataset: str | None
    epochs: int
    proxy_batch: int
    batch_size: int
    lr: float
    top_k: int
    baselines: bool


@dataclass
class SearchProgress:
    """What the live display shows; passed to `progress` after every change."""

    samples: int
    done: int = 0
    running: int = 0
    failed: int = 0
    rejected: int = 0  # draws over a budget or invalid, never run
    rejected_by: dict = field(default_factory=dict)
    best_score: float | None = None
    best_trial: str | None = None
    best_flops: int | None = None
    elapsed: float = 0.0
    phase: str = "searching"  # starting | searching | baselines | report | finished


@dataclass
class SearchResult:
    out: Path
    best_spec: Path | None
    leaderboard: Path
    pareto: Path | None
    records: list[dict]
    baselines: list[dict]
    stats: dict
    progress: SearchProgress


# --- the trial --------------------------------------------------------------------------------------


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


class OverBudget(RuntimeError):
    pass


def _device():
    """CUDA when Ray gave this trial a GPU (or, outside Ray, when there is one)."""
    import ray
    import torch

    if not torch.cuda.is_available():
        return torch.device("cpu")
    # outside a Ray session ray.get_gpu_ids() would start one: ask only inside
    gpus = ray.get_gpu_ids() if ray.is_initialized() else [0]
    return torch.device("cuda") if gpus else torch.device("cpu")


def score_spec(spec, setup: TrialSetup, report: Callable[[dict], None], timings: dict | None = None) -> dict:
    """Build `spec` and score it with the objective: the part of a trial after lowering.
    Used for the search's trials and, unchanged, for the bundled paper variants."""
    import torch

    from archdsl.api import load_spec, lower_spec
    from archdsl.compiler import compile_graph
    from archdsl.search.feasibility import count_params
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
    torch.manual_seed(setup.seed)
    model = compile_graph(graph if scored is spec else lower_spec(scored))
    params = sum(p.numel() for p in model.parameters() if p.requires_grad) if scored is spec else count_params(graph)
    model.to(device)
    timings["t_build"] = time.perf_counter() - start
    base = {"flops": graph.flops, "params": params, "device": str(device), **timings}
    context = TrialContext(device=device, image_size=spec.image_size, channels=spec.input.channels, data=setup.data,
                           seed=setup.seed, proxy_batch=setup.proxy_batch, epochs=setup.epochs, batch_size=setup.batch_size,
                           lr=setup.lr, flops=graph.flops)
    objective_start = time.perf_counter()

    def report_epoch(metrics: dict) -> None:
        score = metrics.get(METRIC)
        if score is None or not math.isfinite(score):
            raise ObjectiveFailed(f"the objective {objective.name!r} gave {score} at {metrics}")
        report({**base, **metrics, "t_objective": time.perf_counter() - objective_start})

    context.report = report_epoch
    score = objective.score(model, context)
    if score is None or not math.isfinite(float(score)):
        raise ObjectiveFailed(f"the objective {objective.name!r} gave {score} for this network")
    result = {**base, METRIC: float(score), "t_objective": time.perf_counter() - objective_start}
    if getattr(objective, "epochs", 1) <= 1:
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
    sample = setup.space.resolve(config, setup.check.img_size)
    spec = sample.spec()
    sampled = time.perf_counter()
    from archdsl.api import lower_spec

    flops = lower_spec(spec).flops
    lowered = time.perf_counter()
    if flops > setup.check.budget:  # the gate never lets this through; a changed budget on resume might
        raise OverBudget(f"{flops:,} FLOPs is over the budget of {setup.check.budget:,}")
    timings = {"t_sample": sampled - start, "t_lower": lowered - sampled, "pid": os.getpid()}
    score_spec(spec, setup, lambda metrics: tune.report(metrics), timings)


# --- the driver's side: records and progress ---------------------------------------------------------


def _atomic_write(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def spec_yaml(data: dict, header: str = "") -> str:
    body = yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=120)
    return "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines()) + body


def _error_text(trial) -> tuple[str, str]:
    text = None
    try:
        text = trial.get_error()
    except Exception:  # noqa: BLE001
        text = None
    if not text and getattr(trial, "error_file", None) and Path(trial.error_file).is_file():
        text = Path(trial.error_file).read_text()
    text = str(text or "the trial failed without an error message")
    lines = [line for line in text.strip().splitlines() if line.strip()]
    summary = next((line.strip() for line in reversed(lines) if ": " in line and not line.startswith(" ")), lines[-1] if lines else text)
    for prefix in ("ray.exceptions.RayTaskError", "ray.tune.error."):
        if summary.startswith(prefix):
            summary = summary.split(": ", 1)[-1]
    return summary, text


class Recorder:
    """Writes each finished trial to disk at once and keeps the progress display current
    (driven by `RecorderCallback`, Tune's callback in the driver)."""

    def __init__(self, out: Path, space: SearchSpace, settings: SearchSettings, stats_key: str,
                 progress: Callable[[SearchProgress], None] | None, records: dict[str, dict], started: float):
        self.out = out
        self.space = space
        self.settings = settings
        self.stats_key = stats_key
        self.callback = progress
        self.records = records
        self.running: set[str] = set()
        self.started = started
        self.last_shown = 0.0

    def _write(self, trial, status: str, result: dict | None, error: tuple[str, str] | None) -> None:
        trial_id = trial.trial_id
        existing = self.records.get(trial_id)
        if existing is not None and existing.get("status") == "done" and status == "done":
            return  # a replayed trial: its record from the first run stays as it was
        config = dict(trial.config)
        if status == "done" and (result or {}).get("replayed") and any(
                config_key(r["config"]) == config_key(config) for r in self.records.values() if r["status"] == "done"):
            return  # a finished configuration Tune had not checkpointed yet, replayed under a new id: one record
        trials_dir = self.out / "trials"
        spec_file = trials_dir / f"{trial_id}.yaml"
        record = {"trial": trial_id, "status": status, "config": config, "spec_file": str(spec_file.relative_to(self.out))}
        try:
            sample = self.space.resolve(config, self.settings.img_size)
            data = dict(sample.data, name=f"{self.space.name}_{trial_id}")
            _atomic_write(spec_file, spec_yaml(data, f"trial {trial_id} of a search of {self.space.origin}"))
        except SpecError as problem:
            record["spec_error"] = str(problem)
        if result:
            keep = ("score", "flops", "params", "t_sample", "t_lower", "t_build", "t_objective", "epoch", "device",
                    "training_iteration", "time_total_s", "pid", "replayed")
            record.update({key: result[key] for key in keep if key in result})
        stats = LIVE_STATS.get(self.stats_key)
        if stats is not None and trial_id in stats.suggest_seconds:
            record["t_suggest"] = stats.suggest_seconds[trial_id]
        if error is not None:
            record["error"], record["traceback"] = error
        record["finished_at"] = time.time()
        _atomic_write(trials_dir / f"{trial_id}.json", json.dumps(record, indent=1, default=str))
        self.records[trial_id] = record

    def on_trial_start(self, iteration, trials, trial, **info):
        self.running.add(trial.trial_id)
        self.show(force=True)

    def on_trial_complete(self, iteration, trials, trial, **info):
        self.running.discard(trial.trial_id)
        result = trial.last_result or {}
        if METRIC in result:
            self._write(trial, "done", result, None)
        else:
            self._write(trial, "failed", result, ("the trial ended without reporting a score", ""))
        self.show(force=True)

    def on_trial_error(self, iteration, trials, trial, **info):
        self.running.discard(trial.trial_id)
        self._write(trial, "failed", trial.last_result or {}, _error_text(trial))
        self.show(force=True)

    def on_step_end(self, iteration, trials, **info):
        self.show()

    def progress(self, phase: str = "searching") -> SearchProgress:
        stats = LIVE_STATS.get(self.stats_key) or GateStats()
        done = [r for r in self.records.values() if r["status"] == "done"]
        best = max(done, key=lambda r: r["score"], default=None)
        return SearchProgress(
            samples=self.settings.samples, done=len(done), running=len(self.running),
            failed=sum(r["status"] == "failed" for r in self.records.values()), rejected=stats.total_rejected,
            rejected_by=dict(stats.rejected), best_score=best["score"] if best else None, best_trial=best["trial"] if best else None,
            best_flops=best.get("flops") if best else None, elapsed=time.time() - self.started, phase=phase)

    def show(self, force: bool = False, phase: str = "searching") -> None:
        if self.callback is None or (not force and time.time() - self.last_shown < 0.5):
            return
        self.last_shown = time.time()
        self.callback(self.progress(phase))


# the recorder of each running search, by output directory: Tune pickles its callbacks with the
# experiment and restores them on resume, so the callback holds only this key
RECORDERS: dict[str, Recorder] = {}


class RecorderCallback(Callback):
    def __init__(self, key: str):
        self.key = key

    def _recorder(self) -> Recorder | None:
        return RECORDERS.get(self.key)

    def on_trial_start(self, iteration, trials, trial, **info):
        if self._recorder():
            self._recorder().on_trial_start(iteration, trials, trial, **info)

    def on_trial_complete(self, iteration, trials, trial, **info):
        if self._recorder():
            self._recorder().on_trial_complete(iteration, trials, trial, **info)

    def on_trial_error(self, iteration, trials, trial, **info):
        if self._recorder():
            self._recorder().on_trial_error(iteration, trials, trial, **info)

    def on_step_end(self, iteration, trials, **info):
        if self._recorder():
            self._recorder().on_step_end(iteration, trials, **info)


def load_records(out: Path) -> dict[str, dict]:
    records = {}
    for path in sorted((out / "trials").glob("*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue  # a half-written file cannot exist (atomic writes); skip anything foreign
        records[record["trial"]] = record
    return records


def _replayable(records: dict[str, dict]) -> dict:
    done = {}
    keep = ("score", "flops", "params", "t_sample", "t_lower", "t_build", "t_objective", "epoch", "device", "pid")
    for record in records.values():
        if record["status"] != "done":
            continue
        result = {key: record[key] for key in keep if key in record}
        done[record["trial"]] = result
        done[config_key(record["config"])] = result
    return done


# --- Ray ---------------------------------------------------------------------------------------------


def _check_address(address: str) -> None:
    if address in ("auto", "local") or address.startswith("ray://"):
        return
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise option_error("--address", address, "a Ray cluster address is HOST:PORT (the GCS port `ray start --head` printed, "
                                                 "6379 by default), `auto`, or ray://HOST:PORT")
    try:
        with socket.create_connection((host, int(port)), timeout=3):
            pass
    except OSError as error:
        raise option_error("--address", address, f"cannot reach a Ray cluster there ({error.strerror or error}); start one "
                                                 f"with `ray start --head --port {port}` on {host}, or leave --address out to "
                                                 f"run on this machine") from None


def connect(address: str | None) -> bool:
    """Join `address` or start Ray on this machine; True when this call started it."""
    import ray

    if ray.is_initialized():
        return False
    if address:
        _check_address(address)
        try:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
        except (ConnectionError, RuntimeError) as error:
            raise option_error("--address", address, f"cannot join the Ray cluster there: {error}") from None
    else:
        ray.init(address="local", include_dashboard=False, log_to_driver=False, configure_logging=False)
    return True


def _resources(cpus_per_trial: float, gpus_per_trial: float | None, objective: Objective) -> tuple[dict, int]:
    import ray

    cluster = ray.cluster_resources()
    cpus, gpus = cluster.get("CPU", 1), cluster.get("GPU", 0)
    if gpus_per_trial is None:
        # GPUs when present: a whole one for training, a quarter for a proxy (a few forward passes)
        gpus_per_trial = 0 if not gpus else (1.0 if getattr(objective, "epochs", 1) > 1 else 0.25)
    if gpus_per_trial and not gpus:
        raise option_error("--gpus-per-trial", gpus_per_trial, "this Ray cluster has no GPUs; use 0, or join a cluster with GPUs")
    if cpus_per_trial > cpus:
        raise option_error("--cpus-per-trial", cpus_per_trial, f"this Ray cluster has only {cpus:g} CPUs")
    slots = int(cpus // cpus_per_trial) if cpus_per_trial else 1
    if gpus_per_trial:
        slots = min(slots, int(gpus // gpus_per_trial))
    return {"cpu": cpus_per_trial, "gpu": gpus_per_trial or 0}, max(1, slots)


# --- the entry point ----------------------------------------------------------------------------------


def run_search(space: str | Path | None = None, *, budget: str | int | None = None, max_params: str | int | None = None,
               img_size: int | None = None, objective: str | Objective = DEFAULT_OBJECTIVE, samples: int = 64,
               searcher: str = "tpe", seed: int = 0, out: str | Path = "runs/search", resume: str | Path | None = None,
               address: str | None = None, cpus_per_trial: float = 1, gpus_per_trial: float | None = None,
               dataset: str | Path | None = None, epochs: int = 3, proxy_batch: int = 16, batch_size: int = 64,
               lr: float = 2e-3, top_k: int = 5, baselines: bool = True, overrides: list[str] | None = None,
               progress: Callable[[SearchProgress], None] | None = None) -> SearchResult:
    """Search `space` (a file, a bundled name, or None for the bundled default) for the networks
    that score best under `budget` FLOPs at `img_size`, on Ray Tune; write the results to `out`.

    `resume=DIR` continues the search stored in DIR with its stored settings (the other
    arguments except `address` and `progress` are then ignored). Raises `SearchError` (a
    located, one-paragraph `SpecError`) for anything that stops the search before it starts.
    """
    started = time.time()
    if resume is not None:
        out = Path(resume)
        if not (out / SETTINGS_FILE).is_file():
            raise option_error("--resume", resume, f"no search to resume here: {out / SETTINGS_FILE} does not exist; give the "
                                                   f"--out directory of an earlier search")
        settings = SearchSettings(**json.loads((out / SETTINGS_FILE).read_text()))
    else:
        out = Path(out)
        if samples < 1:
            raise option_error("--samples", samples, "the number of trials must be at least 1")
        settings = SearchSettings(
            space=None if space is None else str(space), overrides=list(overrides or []), budget=0, max_params=None,
            img_size=img_size, objective=objective if isinstance(objective, str) else getattr(objective, "name", "custom"),
            samples=samples, searcher=searcher, seed=seed, cpus_per_trial=cpus_per_trial, gpus_per_trial=gpus_per_trial,
            dataset=None if dataset is None else str(dataset), epochs=epochs, proxy_batch=proxy_batch, batch_size=batch_size,
            lr=lr, top_k=top_k, baselines=baselines)
    space_obj = load_space(settings.space, settings.overrides or None)
    if resume is None:
        if budget is None and space_obj.budget is None:
            raise option_error("--budget", None, "give a FLOP budget, such as --budget 2GFLOPs (this space sets no `search: budget:`)")
        settings.budget = parse_flops(budget) if budget is not None else space_obj.budget
        settings.max_params = parse_params(max_params) if max_params is not None else space_obj.max_params
        if settings.img_size is None:
            settings.img_size = space_obj.image_size
    if resume is None or isinstance(objective, str):
        objective_obj = make_objective(objective if resume is None else settings.objective, settings.epochs)
    elif getattr(objective, "name", None) == settings.objective:
        objective_obj = objective  # a custom objective object, given again on resume
    else:
        raise option_error("--objective", getattr(objective, "name", objective),
                           f"the search in {out} was run with the objective {settings.objective!r}; resume it with that one")
    data = None
    if getattr(objective_obj, "uses_data", True) or getattr(objective_obj, "uses_labels", False):
        hw = tuple(settings.img_size) if isinstance(settings.img_size, (list, tuple)) else (settings.img_size,) * 2
        data = load_dataset(settings.dataset, hw)
    check = BudgetCheck(space_obj, settings.budget, settings.max_params, settings.img_size)
    probe = ensure_feasible(check, seed=settings.seed)
    if address:
        _check_address(address)  # before anything is written

    out.mkdir(parents=True, exist_ok=True)
    (out / "trials").mkdir(exist_ok=True)
    if resume is None:
        if (out / SETTINGS_FILE).exists() and any((out / "trials").iterdir()):
            raise option_error("--out", out, "this directory holds an earlier search; continue it with --resume "
                                             f"{out}, or choose another --out")
        _atomic_write(out / SETTINGS_FILE, json.dumps(asdict(settings), indent=1))
    records = load_records(out)
    stats_key = str(out.resolve())
    recorder = Recorder(out, space_obj, settings, stats_key, progress, records, started)
    recorder.show(force=True, phase="starting")

    started_ray = connect(address)
    try:
        import ray
        from ray import tune

        resources, slots = _resources(settings.cpus_per_trial, settings.gpus_per_trial, objective_obj)
        setup = TrialSetup(space_obj, check, objective_obj, data, settings.seed, settings.cpus_per_trial, settings.proxy_batch,
                           settings.epochs, settings.batch_size, settings.lr)
        trainable = tune.with_resources(tune.with_parameters(run_trial, setup=setup, done=_replayable(records)), resources)
        # Tune's experiment state every few seconds (every event costs ~10% of a proxy trial); a trial
        # that finished after the last one is replayed from OUT/trials on resume, not run again
        os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "5")
        os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # our display, not Tune's banner and tables
        tune_dir = (out / "ray").resolve()
        RECORDERS[stats_key] = recorder
        callback = RecorderCallback(stats_key)
        if resume is not None and tune.Tuner.can_restore(str(tune_dir / TUNE_NAME)):
            tuner = tune.Tuner.restore(str(tune_dir / TUNE_NAME), trainable=trainable, resume_unfinished=True,
                                       resume_errored=False, restart_errored=False)
        else:
            gate = make_searcher(settings.searcher, check, settings.seed, stats_key)
            scheduler = None
            if getattr(objective_obj, "epochs", 1) > 1:
                from ray.tune.schedulers import ASHAScheduler

                scheduler = ASHAScheduler(time_attr="training_iteration", max_t=objective_obj.epochs, grace_period=1,
                                          reduction_factor=3)
            tuner = tune.Tuner(
                trainable,
                tune_config=tune.TuneConfig(metric=METRIC, mode=MODE, search_alg=gate, scheduler=scheduler,
                                            num_samples=settings.samples, max_concurrent_trials=slots, reuse_actors=True),
                run_config=tune.RunConfig(name=TUNE_NAME, storage_path=str(tune_dir), verbose=0, callbacks=[callback],
                                          failure_config=tune.FailureConfig(max_failures=0, fail_fast=False)),
            )
        # a failing trial is recorded with its traceback (OUT/trials/ID.json); Tune's own copy of
        # it on the terminal would tear the live display
        tune_logger = logging.getLogger("ray.tune")
        level = tune_logger.level
        tune_logger.setLevel(logging.CRITICAL)
        try:
            tuner.fit()
        finally:
            tune_logger.setLevel(level)
        recorder.show(force=True, phase="baselines")
        baseline_rows = score_baselines(out, settings, setup, resources) if settings.baselines else []
    finally:
        if started_ray:
            import ray

            ray.shutdown()
    recorder.show(force=True, phase="report")
    from archdsl.search.report import write_report

    stats = LIVE_STATS.get(stats_key) or GateStats()
    summary_stats = {"draws": stats.draws, "rejected": dict(stats.rejected), "invalid_reasons": dict(stats.reasons.most_common(5)),
                     "searcher_exhausted": stats.exhausted, "probe": dict(probe.counts)}
    report = write_report(out, space_obj, settings, load_records(out), baseline_rows, summary_stats)
    final = recorder.progress("finished")
    if progress is not None:
        progress(final)
    return SearchResult(out, report["best"], report["leaderboard"], report["pareto"], report["records"], baseline_rows,
                        summary_stats, final)


# --- the bundled paper variants, scored the same way ---------------------------------------------------


def _score_baseline_task(name: str, setup: TrialSetup, img_size) -> dict:
    from archdsl.api import load_spec, lower_spec

    row: dict = {"name": name}
    try:
        spec = load_spec(name, img_size=img_size)
        graph = lower_spec(spec)
    except SpecError as error:
        return {**row, "status": "invalid", "error": str(error).splitlines()[0]}
    row["flops"] = graph.flops
    if graph.flops > setup.check.budget:
        return {**row, "status": "over_budget"}
    reports: list[dict] = []
    try:
        result = score_spec(spec, setup, reports.append)
    except Exception as error:  # noqa: BLE001  (recorded, like a failing trial)
        return {**row, "status": "failed", "error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()}
    if setup.check.max_params is not None and result["params"] > setup.check.max_params:
        return {**row, "status": "over_budget", "params": result["params"]}
    return {**row, "status": "done", "score": result[METRIC], "params": result["params"]}


def paper_variants() -> list[str]:
    """Bundled specs that reproduce a paper's variant (they name a `family`)."""
    from archdsl.loading import bundled_spec_names, load_data

    names = []
    for name in bundled_spec_names():
        try:
            if load_data(name).data.get("family"):
                names.append(name)
        except SpecError:
            continue
    return names


def score_baselines(out: Path, settings: SearchSettings, setup: TrialSetup, resources: dict) -> list[dict]:
    """Score every bundled paper variant under the budget with the search's objective, as Ray
    tasks with a trial's resources. Stored in OUT/baselines.json (reused on resume)."""
    import ray

    path = out / "baselines.json"
    if path.is_file():
        return json.loads(path.read_text())
    task = ray.remote(_score_baseline_task).options(num_cpus=resources["cpu"], num_gpus=resources["gpu"])
    rows = ray.get([task.remote(name, setup, settings.img_size) for name in paper_variants()])
    _atomic_write(path, json.dumps(rows, indent=1, default=str))
    return rows
