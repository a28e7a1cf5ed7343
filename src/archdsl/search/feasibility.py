"""Does a sample fit the budget? Decided from the lowered graph, before any module is built.

`BudgetCheck` replays a configuration into its spec, validates and lowers it (shapes and the
analytic FLOP count, about a millisecond), and rejects it when it is over the FLOP budget:
no op's `build` is called for a rejected sample. Only for a sample within the FLOP budget, and
only when a parameter budget is set, are its modules built on the meta device (no memory,
no weights) to count parameters. A sample that does not lower (a pool that does not divide
its map at this image size) is *invalid*; both kinds are redrawn, not run as trials.

The budget is counted at its reference size (`budget_at`: `2GFLOPs@224`, by default the
space's `input.size`), so the architectures searched are the same whatever `img_size` the
trials train or score at. A sample within budget there is then lowered again at `img_size`;
one that cannot run at that size (a pool that does not divide its smaller map) is rejected
as `invalid_at_img_size`, before any build, and counted apart.
"""

from __future__ import annotations

import time
from collections import Counter, OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from archdsl.api import lower_spec
from archdsl.cost import graph_params
from archdsl.errors import Location, SpecError
from archdsl.search.budget import format_flops, format_params
from archdsl.search.choosers import FixedChooser, RandomChooser
from archdsl.search.errors import OptionProblem, SearchError
from archdsl.search.grammar import Range
from archdsl.search.space import SearchSpace

FITS, OVER_FLOPS, OVER_PARAMS, INVALID = "fits", "over_flops", "over_params", "invalid"
INVALID_AT_IMG_SIZE = "invalid_at_img_size"  # fits the budget at its reference size, cannot run at --img-size


@dataclass(frozen=True)
class Verdict:
    status: str
    flops: int | None = None  # at the budget's reference size
    params: int | None = None
    trial_flops: int | None = None  # at the trials' image size
    reason: str | None = None  # why an invalid sample does not lower (a located error)
    seconds: float = 0.0

    @property
    def fits(self) -> bool:
        return self.status == FITS

    def violation(self, budget: int, max_params: int | None) -> list[float]:
        """Optuna-style constraint values (<= 0 means satisfied), one per budget."""
        if self.status in (INVALID, INVALID_AT_IMG_SIZE):
            return [1.0, 1.0]
        flops = self.flops / budget - 1.0
        params = (self.params / max_params - 1.0) if (max_params and self.params is not None) else -1.0
        return [flops, params]


def config_key(config: Mapping) -> str:
    return repr(sorted(config.items(), key=lambda item: item[0]))


def _height_width(size: int | list) -> tuple[int, int]:
    return tuple(size) if isinstance(size, (list, tuple)) else (size, size)


@dataclass
class BudgetCheck:
    space: SearchSpace
    budget: int
    max_params: int | None = None
    img_size: int | list | None = None  # where trials run (None: the space's input.size)
    budget_at: int | list | None = None  # where the budget is counted (None: the space's input.size)
    _cache: OrderedDict = field(default_factory=OrderedDict, repr=False)

    def __post_init__(self):
        self.budget_at = self.space.image_size if self.budget_at is None else self.budget_at
        self.img_size = self.space.image_size if self.img_size is None else self.img_size

    def __getstate__(self):
        return {**self.__dict__, "_cache": OrderedDict()}

    def verdict(self, sample) -> Verdict:
        """`sample` drawn at the reference size; judged there, then lowered at the trials' size."""
        start = time.perf_counter()
        try:
            graph = lower_spec(sample.spec())
        except SpecError as error:
            return Verdict(INVALID, reason=str(error).splitlines()[0], seconds=time.perf_counter() - start)
        flops = graph.flops
        if flops > self.budget:
            return Verdict(OVER_FLOPS, flops, seconds=time.perf_counter() - start)
        params = None
        if self.max_params is not None:
            params = graph_params(graph).trainable
            if params > self.max_params:
                return Verdict(OVER_PARAMS, flops, params, seconds=time.perf_counter() - start)
        trial_flops = flops
        if _height_width(self.img_size) != _height_width(self.budget_at):
            try:
                trial_flops = lower_spec(self.space.resolve(sample.config, self.img_size).spec()).flops
            except SpecError as error:
                return Verdict(
                    INVALID_AT_IMG_SIZE, flops, params, reason=str(error).splitlines()[0], seconds=time.perf_counter() - start
                )
        return Verdict(FITS, flops, params, trial_flops, seconds=time.perf_counter() - start)

    def __call__(self, config: Mapping) -> Verdict:
        key = config_key(config)
        if key not in self._cache:
            self._cache[key] = self.verdict(self.space.resolve(config, self.budget_at))
            if len(self._cache) > 4096:
                self._cache.popitem(last=False)
        return self._cache[key]


@dataclass
class Probe:
    counts: Counter
    reasons: Counter
    smallest: int | None


def probe(check: BudgetCheck, draws: int = 200, seed: int = 0) -> Probe:
    """Random draws from the space: how many fit, and why the others did not."""
    rng = np.random.default_rng(seed)
    counts, reasons = Counter(), Counter()
    smallest = None
    for _ in range(draws):
        verdict = check.verdict(check.space.sample(RandomChooser(rng), check.budget_at))
        counts[verdict.status] += 1
        if verdict.reason:
            reasons[verdict.reason.split(": ", 1)[-1]] += 1
        if verdict.flops is not None:
            smallest = verdict.flops if smallest is None else min(smallest, verdict.flops)
    return Probe(counts, reasons, smallest)


def _values(parameter) -> list:
    if isinstance(parameter, Range):
        if parameter.integer:
            grid = list(range(int(parameter.low), int(parameter.high) + 1, int(parameter.step)))
            return grid if len(grid) <= 16 else [grid[round(i * (len(grid) - 1) / 15)] for i in range(16)]
        return list(np.linspace(parameter.low, parameter.high, 8))
    return list(parameter.labels)


def smallest_flops(space: SearchSpace, img_size=None, starts: int = 3, seed: int = 0) -> tuple[int | None, dict | None]:
    """The fewest FLOPs a valid sample of the space reaches at `img_size`, by coordinate descent
    over the choices from a few random starts (exact for spaces where FLOPs fall monotonically
    along each choice, which widths, depths, kernels and candidate sets do)."""
    check = BudgetCheck(space, budget=1 << 62, img_size=img_size, budget_at=img_size)
    rng = np.random.default_rng(seed)
    best_flops, best_config = None, None
    for _ in range(starts):
        config, flops = None, None
        for _ in range(50):  # a valid start
            sample = space.sample(RandomChooser(rng), img_size)
            verdict = check(sample.config)
            if verdict.status != INVALID:
                config, flops = sample.config, verdict.flops
                break
        if config is None:
            continue
        improved = True
        while improved:
            improved = False
            for parameter in space.parameters:
                if parameter.name not in config:
                    continue
                for value in _values(parameter):
                    trial = space.sample(FixedChooser({**config, parameter.name: value}, RandomChooser(rng)), img_size).config
                    verdict = check(trial)
                    if verdict.status != INVALID and verdict.flops < flops:
                        config, flops, improved = trial, verdict.flops, True
        if best_flops is None or flops < best_flops:
            best_flops, best_config = flops, config
    return best_flops, best_config


def ensure_feasible(check: BudgetCheck, draws: int = 200, seed: int = 0) -> Probe:
    """Stop early, with a message a person can act on, if nothing in the space fits."""
    found = probe(check, draws, seed)
    where = f"--space {check.space.origin}"
    if found.counts[FITS]:
        return found
    common = "; ".join(f"{reason} ({count}x)" for reason, count in found.reasons.most_common(3))
    if found.counts[INVALID_AT_IMG_SIZE]:
        raise SearchError(
            OptionProblem(
                f"{found.counts[INVALID_AT_IMG_SIZE]} of {draws} random samples fit the budget at {check.budget_at}, and none of them "
                f"is a valid network at --img-size {check.img_size}; the commonest problems: {common}; choose an image size whose "
                f"maps the space's pools divide, or offer pools that fit it",
                (),
                Location(f"--img-size {check.img_size}"),
            )
        )
    if not found.counts[OVER_FLOPS] and not found.counts[OVER_PARAMS]:
        raise SearchError(
            OptionProblem(
                f"none of {draws} random samples of this space is a valid network at image size {check.budget_at}; "
                f"the commonest problems: {common}",
                (),
                Location(where),
            )
        )
    flops, config = smallest_flops(check.space, check.budget_at, seed=seed)

    if flops is not None and flops > check.budget:
        shown = ", ".join(f"{name}={value}" for name, value in list((config or {}).items())[:8])
        raise SearchError(
            OptionProblem(
                f"nothing in this space fits the budget of {format_flops(check.budget)} at image size "
                f"{check.budget_at}: the smallest FLOPs it reaches is {format_flops(flops)} ({flops:,}), "
                f"with {shown}{'...' if config and len(config) > 8 else ''}; raise --budget to at least {format_flops(flops)} or "
                f"offer smaller widths, depths or candidates",
                (),
                Location(where),
            )
        )
    if check.max_params is not None and found.counts[OVER_PARAMS] and not found.counts[OVER_FLOPS]:
        raise SearchError(
            OptionProblem(
                f"none of {draws} random samples fits --max-params {format_params(check.max_params)} (and the FLOP budget); "
                f"raise --max-params or offer smaller widths",
                (),
                Location(where),
            )
        )
    return found  # rare, but reachable (the descent found a sample under budget): the searcher will redraw
