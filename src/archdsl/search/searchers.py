"""Ray Tune searchers over a space, behind a gate that keeps over-budget samples out of the run.

* `random`: uniform draws from a seeded generator (`RandomSearcher`).
* `tpe` (the default): Optuna's TPE, model-based, through Ray Tune's `OptunaSearch` with a
  define-by-run space, so conditional choices are asked only when drawn.
* `evolution`: Optuna's NSGA-II, a genetic algorithm, through the same integration.

Both Optuna samplers are constrained samplers: every draw records its constraint values
(FLOPs / budget - 1, params / max - 1; <= 0 satisfied) and they learn to stay inside.

`BudgetGate` wraps any of them: it asks the inner searcher, checks the draw with the analytic
count (`BudgetCheck`, no module built) and, when it does not fit, tells the inner searcher so
and asks again, up to `max_draws` times per trial. Ray Tune only ever sees configurations that
fit, so no trial (and no worker) is spent on a rejected one. Rejections are counted by kind.

With several objectives (`--objectives score,flops`) the Optuna searchers are told every one
(NSGA-II keeps a front); `ListSearcher` serves a fixed list (the configurations a proxy
pre-filter kept), in order.
"""

from __future__ import annotations

import pickle
import time
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
from ray.tune.search import Searcher

from archdsl.search.choosers import OptunaChooser, RandomChooser
from archdsl.search.errors import option_error
from archdsl.search.feasibility import INVALID, INVALID_AT_IMG_SIZE, BudgetCheck, config_key

SEARCHERS = ("tpe", "evolution", "random")
METRIC, MODE = "score", "max"


@dataclass
class GateStats:
    """What the gate did; lives in the driver, read by the progress display."""

    draws: int = 0
    rejected: Counter = field(default_factory=Counter)  # over_flops / over_params / invalid / invalid_at_img_size
    reasons: Counter = field(default_factory=Counter)  # why invalid draws did not lower
    suggest_seconds: dict = field(default_factory=dict)  # trial id -> time to find a fitting draw
    exhausted: bool = False

    @property
    def total_rejected(self) -> int:
        return sum(self.rejected.values())


# the gate of each running search, by output directory: Tune restores searchers by unpickling,
# so the progress display finds the live one here rather than by reference
LIVE_STATS: dict[str, GateStats] = {}


class PickledState:
    """Ray Tune checkpoints a searcher through save/restore: here, the object's whole state."""

    def save(self, checkpoint_path):
        with open(checkpoint_path, "wb") as handle:
            pickle.dump(self.__dict__, handle)

    def restore(self, checkpoint_path):
        with open(checkpoint_path, "rb") as handle:
            self.__dict__.update(pickle.load(handle))


class RandomSearcher(PickledState, Searcher):
    def __init__(self, check: BudgetCheck, seed: int | list[int]):
        super().__init__(metric=METRIC, mode=MODE)
        self.check = check
        self.rng = np.random.default_rng(seed)

    def suggest(self, trial_id):
        return self.check.space.sample(RandomChooser(self.rng), self.check.budget_at).config

    def on_trial_complete(self, trial_id, result=None, error=False):
        pass


class ListSearcher(PickledState, Searcher):
    """The given configurations, one per trial, in order; then finished."""

    def __init__(self, configs: list[dict]):
        super().__init__(metric=METRIC, mode=MODE)
        self.configs = list(configs)
        self.served = 0

    def suggest(self, trial_id):
        if self.served >= len(self.configs):
            return Searcher.FINISHED
        self.served += 1
        return dict(self.configs[self.served - 1])

    def on_trial_complete(self, trial_id, result=None, error=False):
        pass


class DefineByRun:
    """Optuna's define-by-run space: asks the trial for every choice the sample draws, and
    records the sample's budget constraints for the constrained sampler."""

    def __init__(self, check: BudgetCheck):
        self.check = check

    def __call__(self, trial):
        sample = self.check.space.sample(OptunaChooser(trial), self.check.budget_at)
        verdict = self.check(sample.config)
        flops, params = verdict.violation(self.check.budget, self.check.max_params)
        if _HAS_SET_CONSTRAINT:  # optuna >= 5: the samplers read constraints from the trial
            trial.set_constraint("flops", flops)
            trial.set_constraint("params", params)
        else:
            trial.set_user_attr("constraints", [flops, params])
        return None


def _has_set_constraint() -> bool:
    try:
        import optuna
    except ImportError:
        return False
    return hasattr(optuna.trial.Trial, "set_constraint")


_HAS_SET_CONSTRAINT = _has_set_constraint()


def constraints(frozen_trial) -> list[float]:
    return frozen_trial.user_attrs.get("constraints", [0.0, 0.0])


def _optuna_searcher(check: BudgetCheck, kind: str, seed: int, metrics: list[str], modes: list[str]):
    try:
        import optuna
        from ray.tune.search.optuna import OptunaSearch
    except ImportError:
        raise option_error(
            "--searcher", kind, "needs the optuna package (pip install optuna); --searcher random needs nothing"
        ) from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    constrained = {} if _HAS_SET_CONSTRAINT else {"constraints_func": constraints}
    if kind == "tpe":
        sampler = optuna.samplers.TPESampler(seed=seed, n_startup_trials=10, **constrained)
    else:
        sampler = optuna.samplers.NSGAIISampler(seed=seed, population_size=16, **constrained)
    several = len(metrics) > 1  # a list of metrics makes OptunaSearch multi-objective
    return OptunaSearch(
        space=DefineByRun(check),
        metric=list(metrics) if several else metrics[0],
        mode=list(modes) if several else modes[0],
        sampler=sampler,
    )


class BudgetGate(PickledState, Searcher):
    def __init__(self, inner: Searcher, check: BudgetCheck, stats_key: str, max_draws: int = 2000, objectives: int = 1):
        super().__init__(metric=METRIC, mode=MODE)
        self.inner = inner
        self.objectives = objectives
        self.check = check
        self.max_draws = max_draws
        self.stats_key = stats_key
        self.stats = GateStats()
        self.live: dict[str, str] = {}  # Tune trial id -> the inner searcher's id for it
        self.worst = None
        LIVE_STATS[stats_key] = self.stats

    def set_search_properties(self, metric, mode, config, **spec):
        return True  # the space is ours; metric and mode are fixed

    def suggest(self, trial_id):
        start = time.perf_counter()
        for draw in range(self.max_draws):
            inner_id = trial_id if draw == 0 else f"{trial_id}~{draw}"
            config = self.inner.suggest(inner_id)
            if config is None or config == Searcher.FINISHED:
                return config
            self.stats.draws += 1
            verdict = self.check(config)
            if verdict.fits:
                self.live[trial_id] = inner_id
                self.stats.suggest_seconds[trial_id] = time.perf_counter() - start
                return dict(config)
            self.stats.rejected[verdict.status] += 1
            if verdict.status in (INVALID, INVALID_AT_IMG_SIZE) and verdict.reason:
                self.stats.reasons[verdict.reason.split(": ", 1)[-1]] += 1
            # tell the inner searcher: a constrained sampler learns where the budget is (from the
            # draw's constraints); a single-objective one also gets the worst score seen, a
            # multi-objective one a failed trial (no point of a front)
            if self.objectives > 1:
                self.inner.on_trial_complete(inner_id, result=None, error=True)
            else:
                penalty = self.worst if self.worst is not None else 0.0
                self.inner.on_trial_complete(inner_id, result={METRIC: penalty}, error=False)
        self.stats.exhausted = True
        return Searcher.FINISHED

    def on_trial_result(self, trial_id, result):
        self.inner.on_trial_result(self.live.get(trial_id, trial_id), result)

    def on_trial_complete(self, trial_id, result=None, error=False):
        score = (result or {}).get(METRIC)
        if not error and isinstance(score, (int, float)) and score == score:
            self.worst = score if self.worst is None else min(self.worst, score)
        self.inner.on_trial_complete(self.live.pop(trial_id, trial_id), result=result, error=error)

    def restore(self, checkpoint_path):
        super().restore(checkpoint_path)
        LIVE_STATS[self.stats_key] = self.stats

    def __setstate__(self, state):
        self.__dict__.update(state)
        LIVE_STATS[self.stats_key] = self.stats


DUPLICATE_PATIENCE = 20  # suggestions per wanted configuration before a space is taken to hold no more


def distinct_draws(gate: BudgetGate, wanted: int, label: str, taken: set | None = None) -> list[dict]:
    """Up to `wanted` distinct configurations that fit, suggested by `gate`, none of them one of
    `taken` (which gains them): a space may hold fewer fitting configurations than wanted."""
    taken = set() if taken is None else taken
    configs: list[dict] = []
    for attempt in range(DUPLICATE_PATIENCE * wanted):
        if len(configs) == wanted:
            break
        config = gate.suggest(f"{label}_{attempt}")
        if config is None or config == Searcher.FINISHED:
            break
        if config_key(config) not in taken:
            taken.add(config_key(config))
            configs.append(config)
    return configs


def make_searcher(
    kind: str, check: BudgetCheck, seed: int, stats_key: str, metrics: list[str] = (METRIC,), modes: list[str] = (MODE,)
) -> BudgetGate:
    if kind not in SEARCHERS:
        raise option_error(
            "--searcher",
            kind,
            f"unknown searcher; choose one of {', '.join(SEARCHERS)} (tpe: model-based, evolution: genetic, random: uniform)",
        )
    inner = RandomSearcher(check, seed) if kind == "random" else _optuna_searcher(check, kind, seed, list(metrics), list(modes))
    return BudgetGate(inner, check, stats_key, objectives=len(metrics))
