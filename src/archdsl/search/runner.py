"""Running a search on Ray Tune: `run_search(...)`, the one entry point (`archdsl search` calls it).

The driver reads the settings against the space, checks that something in it fits the budget
(at the budget's reference size) and runs at the trials' image size, and hands Ray Tune a
searcher behind a budget gate (searchers.py): only configurations that fit become trials
(trial.py). Every finished trial is written to `OUT/trials/` the moment Tune reports it
(records.py), so nothing finished is lost: `resume=OUT` continues a killed search, replaying
finished trials and continuing unfinished training trials from their last checkpointed epoch.

`--objective train` is a pipeline: an optional proxy pre-filter (prefilter.py), training under
ASHA (rungs at epochs 1, 2, 4, ... up to `epochs`, reduction factor 2), then the final stage
(final.py) that retrains the best trials and the paper variants with several seeds.
With several `objectives`, NSGA-II searches their front and every trial runs to the end.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from archdsl.search.baselines import score_baselines
from archdsl.search.budget import format_flops
from archdsl.search.cluster import check_address, connect, trial_resources
from archdsl.search.data import load_dataset
from archdsl.search.errors import option_error
from archdsl.search.feasibility import BudgetCheck, ensure_feasible
from archdsl.search.objectives import Objective, make_objective
from archdsl.search.records import RECORDERS, Recorder, RecorderCallback, SearchProgress, atomic_write, load_records, replayable
from archdsl.search.searchers import LIVE_STATS, METRIC, MODE, GateStats, ListSearcher, make_searcher
from archdsl.search.settings import ASHA_GRACE, ASHA_REDUCTION, SearchSettings, asha_rungs
from archdsl.search.space import load_space
from archdsl.search.trial import TrialSetup, run_trial

SETTINGS_FILE = "search.json"
TUNE_NAME = "tune"


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
    final: dict | None = None


def _objective(settings: SearchSettings, objective: str | Objective | None, out: Path) -> Objective:
    if objective is None or isinstance(objective, str):
        return make_objective(settings.objective, settings.epochs)
    if objective.name != settings.objective:
        raise option_error(
            "--objective",
            objective.name,
            f"the search in {out} was run with the objective {settings.objective!r}; resume it with that one",
        )
    return objective  # a custom objective object (given again on resume)


def _settings(space, objective, out: Path, resume, settings: SearchSettings | None, options: dict) -> SearchSettings:
    if resume is not None:
        if not (out / SETTINGS_FILE).is_file():
            raise option_error(
                "--resume",
                resume,
                f"no search to resume here: {out / SETTINGS_FILE} does not exist; give the --out directory of an earlier search",
            )
        return SearchSettings(**json.loads((out / SETTINGS_FILE).read_text()))
    if settings is not None and options:
        raise TypeError(f"run_search takes settings= or its fields as keywords, not both ({', '.join(options)})")
    settings = settings or SearchSettings(**options)
    if space is not None:
        settings.space = str(space)
    if isinstance(objective, str):
        settings.objective = objective
    elif objective is not None:
        settings.objective = objective.name
    return settings


def _plan(settings: SearchSettings, check: BudgetCheck) -> list[str]:
    """What this search will do, in a few lines (shown live and stored in summary.json)."""
    lines = [f"budget {format_flops(check.budget)} at {check.budget_at}px; trials at {check.img_size}px"]
    if settings.prefilter:
        lines.append(
            f"pre-filter: {settings.prefilter} ranks ceil({settings.samples} / {settings.keep:g}) draws, "
            f"the best {settings.samples} are trained"
        )
    if settings.objectives:
        lines.append(f"NSGA-II on {', '.join(settings.objectives)} (score maximised, the rest minimised); no early stopping")
    elif settings.training:
        lines.append(
            f"ASHA: rungs at epochs {', '.join(map(str, asha_rungs(settings.epochs)))} (grace {ASHA_GRACE}, "
            f"reduction factor {ASHA_REDUCTION}, max {settings.epochs} epochs)"
        )
    if settings.final_stage:
        lines.append(
            f"final stage: top {settings.final_top} trials, {settings.final_random} random hybrids and the paper "
            f"variants under the budget, "
            f"{settings.final_epochs or settings.epochs} epochs x {settings.final_seeds} seeds"
        )
    return lines


def _search_stage(
    out: Path, resume, settings: SearchSettings, setup: TrialSetup, resources, slots: int, records, stats_key, recorder
) -> None:
    """The trials, on Ray Tune: restored from OUT/ray when resuming, else a new Tuner behind the budget gate."""
    from ray import tune

    trainable = tune.with_resources(tune.with_parameters(run_trial, setup=setup, done=replayable(records)), resources)
    # Tune's experiment state every few seconds (every event costs ~10% of a proxy trial); a trial
    # that finished after the last one is replayed from OUT/trials on resume, not run again
    os.environ.setdefault("TUNE_GLOBAL_CHECKPOINT_S", "5")
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")  # our display, not Tune's banner and tables
    tune_dir = (out / "ray").resolve()
    RECORDERS[stats_key] = recorder
    if resume is not None and tune.Tuner.can_restore(str(tune_dir / TUNE_NAME)):
        tuner = tune.Tuner.restore(
            str(tune_dir / TUNE_NAME),
            trainable=trainable,
            resume_unfinished=True,
            resume_errored=False,
            restart_errored=False,
        )
    else:
        if settings.prefilter:
            from archdsl.search.prefilter import prefilter

            recorder.show(force=True, phase="prefilter")
            searcher = ListSearcher(prefilter(out, settings, setup, resources, slots, stats_key))
        else:
            metrics = [METRIC] + settings.costs
            searcher = make_searcher(
                settings.searcher, setup.check, settings.seed, stats_key, metrics, [MODE] + ["min"] * len(settings.costs)
            )
        tuner = tune.Tuner(
            trainable,
            tune_config=_tune_config(settings, searcher, slots),
            run_config=_run_config(settings, tune_dir, RecorderCallback(stats_key)),
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


def run_search(
    space: str | Path | None = None,
    *,
    objective: str | Objective | None = None,
    out: str | Path = "runs/search",
    resume: str | Path | None = None,
    address: str | None = None,
    progress: Callable[[SearchProgress], None] | None = None,
    settings: SearchSettings | None = None,
    **options,
) -> SearchResult:
    """Search `space` (a file, a bundled name, or None for the bundled default) for the networks
    that score best under a FLOP budget, on Ray Tune; write the results to `out`.

    The search's options are one `SearchSettings` (`settings=`), or its fields as keyword
    arguments (`budget="2GFLOPs@224"`, `img_size=32`, `objective="train"`, ...). `objective` may
    also be an `Objective` object. `resume=DIR` continues the search stored in DIR with its stored
    settings (the other arguments except `address`, `progress` and an objective object are then
    ignored). Raises `SearchError` (a located, one-paragraph `SpecError`) for anything that stops
    the search before it starts.
    """
    started = time.time()
    out = Path(resume if resume is not None else out)
    settings = _settings(space, objective, out, resume, settings, options)
    space_obj = load_space(settings.space, settings.overrides or None)
    if resume is None:
        settings.resolve(space_obj)
    objective_obj = _objective(settings, objective, out)
    data = None
    if objective_obj.uses_data or objective_obj.uses_labels or settings.prefilter or settings.final_stage:
        size = settings.img_size
        data = load_dataset(settings.dataset, tuple(size) if isinstance(size, (list, tuple)) else (size, size))
        if settings.train_images is not None:
            data = data.with_training_images(settings.train_images, settings.seed)
    check = BudgetCheck(space_obj, settings.budget, settings.max_params, settings.img_size, settings.budget_at)
    probe = ensure_feasible(check, seed=settings.seed)
    if address:
        check_address(address)  # before anything is written

    out.mkdir(parents=True, exist_ok=True)
    (out / "trials").mkdir(exist_ok=True)
    if resume is None:
        if (out / SETTINGS_FILE).exists() and any((out / "trials").iterdir()):
            raise option_error(
                "--out", out, f"this directory holds an earlier search; continue it with --resume {out}, or choose another --out"
            )
        atomic_write(out / SETTINGS_FILE, json.dumps(settings.stored(), indent=1, default=str))
    records = load_records(out)
    stats_key = str(out.resolve())
    recorder = Recorder(out, space_obj, settings, stats_key, progress, records, started)
    recorder.plan = _plan(settings, check)
    recorder.show(force=True, phase="starting")

    started_ray = connect(address)
    final = None
    try:
        resources, slots = trial_resources(settings.cpus_per_trial, settings.gpus_per_trial, objective_obj.epochs > 1)
        setup = TrialSetup(
            space_obj,
            check,
            objective_obj,
            data,
            settings.seed,
            settings.cpus_per_trial,
            settings.proxy_batch,
            settings.epochs,
            settings.batch_size,
            settings.lr,
            latency="latency_ms" in settings.costs,
        )
        if resume is not None and len(records) >= settings.samples:
            # every sample already ran: straight to what follows, from OUT/trials alone (a run
            # folder copied to another machine without Ray's state in OUT/ray resumes too)
            recorder.plan.append(f"search stage: all {settings.samples} trials recorded, not run again")
        else:
            _search_stage(out, resume, settings, setup, resources, slots, records, stats_key, recorder)
        baseline_rows = []
        if settings.final_stage:
            from archdsl.search.final import run_final_stage

            recorder.show(force=True, phase="final")
            final = run_final_stage(out, settings, setup, resources, list(load_records(out).values()))
        elif settings.baselines:
            recorder.show(force=True, phase="baselines")
            baseline_rows = score_baselines(out, setup, resources)
    finally:
        if started_ray:
            import ray

            ray.shutdown()
    recorder.show(force=True, phase="report")
    from archdsl.search.report import write_report

    stats = LIVE_STATS.get(stats_key) or GateStats()
    summary_stats = {
        "plan": recorder.plan,
        "draws": stats.draws,
        "rejected": dict(stats.rejected),
        "invalid_reasons": dict(stats.reasons.most_common(5)),
        "searcher_exhausted": stats.exhausted,
        "probe": dict(probe.counts),
    }
    report = write_report(out, space_obj, settings, load_records(out), baseline_rows, summary_stats, final)
    finished = recorder.progress("finished")
    if progress is not None:
        progress(finished)
    return SearchResult(
        out,
        report["best"],
        report["leaderboard"],
        report["pareto"],
        report["records"],
        baseline_rows,
        summary_stats,
        finished,
        final,
    )


def _tune_config(settings: SearchSettings, searcher, slots: int):
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    if settings.objectives:  # Tune's metric is one; the searcher holds the list
        return tune.TuneConfig(search_alg=searcher, num_samples=settings.samples, max_concurrent_trials=slots, reuse_actors=True)
    scheduler = None
    if settings.training:
        scheduler = ASHAScheduler(
            time_attr="epoch", max_t=settings.epochs, grace_period=ASHA_GRACE, reduction_factor=ASHA_REDUCTION
        )
    return tune.TuneConfig(
        metric=METRIC,
        mode=MODE,
        search_alg=searcher,
        scheduler=scheduler,
        num_samples=settings.samples,
        max_concurrent_trials=slots,
        reuse_actors=True,
    )


def _run_config(settings: SearchSettings, tune_dir: Path, callback):
    from ray import tune

    # a training trial keeps its last epoch's state (Tune's checkpoint), enough to continue it
    checkpoints = tune.CheckpointConfig(num_to_keep=1) if settings.training else None
    return tune.RunConfig(
        name=TUNE_NAME,
        storage_path=str(tune_dir),
        verbose=0,
        callbacks=[callback],
        checkpoint_config=checkpoints,
        failure_config=tune.FailureConfig(max_failures=0, fail_fast=False),
    )
