"""The driver's side of a search: every finished trial on disk at once, and the live progress.

`Recorder` writes each trial to OUT/trials/ID.json (its record: configuration, score, the epoch
it reached, FLOPs at the budget's reference size and at the trials' size, the time split, or
its error) and OUT/trials/ID.yaml (its spec at the trials' image size) the moment Ray Tune
reports it, through `RecorderCallback`, Tune's callback in the driver.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from ray.tune import Callback

from archdsl.errors import SpecError
from archdsl.search.feasibility import config_key
from archdsl.search.searchers import LIVE_STATS, METRIC, GateStats
from archdsl.search.settings import SearchSettings
from archdsl.search.space import SearchSpace

# what a trial's last result contributes to its record (and replays on resume)
RESULT_KEYS = (
    "score",
    "epoch",
    "resumed_from_epoch",
    "train_loss",
    "flops",
    "flops_trial",
    "params",
    "latency_ms",
    "t_sample",
    "t_lower",
    "t_build",
    "t_objective",
    "device",
    "pid",
)


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
    best_epoch: int | None = None
    elapsed: float = 0.0
    phase: str = "searching"  # starting | prefilter | searching | baselines | final | report | finished
    plan: list[str] = field(default_factory=list)


def atomic_write(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.tmp")
    temporary.write_text(text)
    os.replace(temporary, path)


def spec_yaml(data: dict, header: str = "") -> str:
    body = yaml.safe_dump(data, sort_keys=False, default_flow_style=None, width=120)
    return "".join(f"# {line}\n" if line else "#\n" for line in header.splitlines()) + body


def error_text(trial) -> tuple[str, str]:
    text = None
    try:
        text = trial.get_error()
    except Exception:  # noqa: BLE001
        text = None
    if not text and getattr(trial, "error_file", None) and Path(trial.error_file).is_file():
        text = Path(trial.error_file).read_text()
    text = str(text or "the trial failed without an error message")
    lines = [line for line in text.strip().splitlines() if line.strip()]
    summary = next(
        (line.strip() for line in reversed(lines) if ": " in line and not line.startswith(" ")), lines[-1] if lines else text
    )
    for prefix in ("ray.exceptions.RayTaskError", "ray.tune.error."):
        if summary.startswith(prefix):
            summary = summary.split(": ", 1)[-1]
    return summary, text


class Recorder:
    """Writes each finished trial to disk at once and keeps the progress display current
    (driven by `RecorderCallback`, Tune's callback in the driver)."""

    def __init__(
        self,
        out: Path,
        space: SearchSpace,
        settings: SearchSettings,
        stats_key: str,
        progress: Callable[[SearchProgress], None] | None,
        records: dict[str, dict],
        started: float,
    ):
        self.out = out
        self.space = space
        self.settings = settings
        self.stats_key = stats_key
        self.callback = progress
        self.records = records
        self.running: set[str] = set()
        self.started = started
        self.last_shown = 0.0
        self.plan: list[str] = []  # what the search will do, shown above the counts (ASHA's rungs, the stages)

    def _write(self, trial, status: str, result: dict | None, error: tuple[str, str] | None) -> None:
        trial_id = trial.trial_id
        existing = self.records.get(trial_id)
        if existing is not None and existing.get("status") == "done" and status == "done":
            return  # a replayed trial: its record from the first run stays as it was
        config = dict(trial.config)
        if (
            status == "done"
            and (result or {}).get("replayed")
            and any(config_key(r["config"]) == config_key(config) for r in self.records.values() if r["status"] == "done")
        ):
            return  # a finished configuration Tune had not checkpointed yet, replayed under a new id: one record
        trials_dir = self.out / "trials"
        spec_file = trials_dir / f"{trial_id}.yaml"
        record = {"trial": trial_id, "status": status, "config": config, "spec_file": str(spec_file.relative_to(self.out))}
        try:
            sample = self.space.resolve(config, self.settings.img_size)
            data = dict(sample.data, name=f"{self.space.name}_{trial_id}")
            atomic_write(spec_file, spec_yaml(data, f"trial {trial_id} of a search of {self.space.origin}"))
        except SpecError as problem:
            record["spec_error"] = str(problem)
        if result:
            record.update(
                {key: result[key] for key in RESULT_KEYS + ("training_iteration", "time_total_s", "replayed") if key in result}
            )
        if status == "failed" and self.settings.training:
            record["epoch"] = (result or {}).get("epoch", 0)  # the last epoch it finished; the error names the one it broke in
        stats = LIVE_STATS.get(self.stats_key)
        if stats is not None and trial_id in stats.suggest_seconds:
            record["t_suggest"] = stats.suggest_seconds[trial_id]
        if error is not None:
            record["error"], record["traceback"] = error
        record["finished_at"] = time.time()
        atomic_write(trials_dir / f"{trial_id}.json", json.dumps(record, indent=1, default=str))
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
        self._write(trial, "failed", trial.last_result or {}, error_text(trial))
        self.show(force=True)

    def on_step_end(self, iteration, trials, **info):
        self.show()

    def progress(self, phase: str = "searching") -> SearchProgress:
        stats = LIVE_STATS.get(self.stats_key) or GateStats()
        done = [r for r in self.records.values() if r["status"] == "done"]
        best = max(done, key=lambda r: (r.get("epoch", 0), r["score"]), default=None)
        return SearchProgress(
            samples=self.settings.samples,
            done=len(done),
            running=len(self.running),
            failed=sum(r["status"] == "failed" for r in self.records.values()),
            rejected=stats.total_rejected,
            rejected_by=dict(stats.rejected),
            best_score=best["score"] if best else None,
            best_trial=best["trial"] if best else None,
            best_flops=best.get("flops") if best else None,
            best_epoch=best.get("epoch") if best else None,
            elapsed=time.time() - self.started,
            phase=phase,
            plan=self.plan,
        )

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


def replayable(records: dict[str, dict]) -> dict:
    done = {}
    for record in records.values():
        if record["status"] != "done":
            continue
        result = {key: record[key] for key in RESULT_KEYS if key in record}
        done[record["trial"]] = result
        done[config_key(record["config"])] = result
    return done
