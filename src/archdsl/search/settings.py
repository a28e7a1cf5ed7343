"""One object for everything a search is started with: the CLI fills it, `run_search` reads it,
OUT/search.json stores it for `--resume`.

The user's text (`--budget 2GFLOPs@224`, `--max-params 10M`) is kept until `resolve` reads it
against the space: the budget becomes FLOPs and the size it is counted at (`budget_at`), the
image size defaults to the space's, and the options that only make sense together are checked
here, before anything is written or started.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from archdsl.search.budget import parse_flops, parse_params
from archdsl.search.errors import option_error

# ASHA's rungs for --objective train: a trial is compared with its peers after 1, 2, 4, ... epochs
# and the lower half is stopped (reduction factor 2); the last rung is --epochs
ASHA_GRACE, ASHA_REDUCTION, ASHA_MIN_RUNGS = 1, 2, 3
# what --objectives may name besides the objective's score (always maximised): minimised costs,
# and the result each is read from
COSTS = {
    "flops": "FLOPs at the budget's reference size",
    "params": "trainable parameters",
    "latency": "median ms of a batch-1 forward pass on the trial's own device",
}
COST_METRICS = {"flops": "flops", "params": "params", "latency": "latency_ms"}
SCORE_NAMES = ("score", "accuracy")
DEFAULT_OBJECTIVE = "naswot"


def asha_rungs(epochs: int) -> list[int]:
    """ASHA's rungs (grace 1, reduction factor 2, max_t = epochs), as Ray Tune places them:
    the epochs at which a trial is compared with its peers; every trial stops at `epochs`."""
    rungs, epoch = [], ASHA_GRACE
    while epoch <= epochs:
        rungs.append(epoch)
        epoch *= ASHA_REDUCTION
    return rungs


@dataclass
class SearchSettings:
    space: str | None = None
    overrides: list[str] = field(default_factory=list)
    budget: Any = None  # text as given ("2GFLOPs@224"), then FLOPs
    budget_at: Any = None  # the input size the budget is counted at (N or [H, W])
    max_params: Any = None
    img_size: Any = None  # the input size trials train / are scored at
    objective: str = DEFAULT_OBJECTIVE
    objectives: list[str] = field(default_factory=list)  # several: a multi-objective search (NSGA-II front)
    samples: int = 64
    searcher: str = "tpe"
    seed: int = 0
    cpus_per_trial: float = 1
    gpus_per_trial: float | None = None
    dataset: str | None = None
    train_images: int | None = None  # a fixed stratified subset of the training images (all: None)
    epochs: int = 4
    proxy_batch: int = 16
    batch_size: int = 64
    lr: float = 2e-3
    top_k: int = 5
    baselines: bool = True
    prefilter: str | None = None  # a proxy objective that ranks many draws before training
    keep: float = 0.25  # the fraction of the pre-filtered draws that is trained
    final_top: int = 3  # for --objective train: the best trials retrained from scratch, with the paper variants
    final_seeds: int = 3
    final_random: int = 2  # hybrids drawn at random under the budget, retrained beside the winners
    final_epochs: int | None = None  # default: --epochs

    @property
    def training(self) -> bool:
        return self.objective == "train"

    @property
    def final_stage(self) -> bool:
        return self.training and self.final_top > 0

    @property
    def costs(self) -> list[str]:
        """The results a multi-objective search minimises (flops, params, latency_ms)."""
        return [COST_METRICS[name] for name in self.objectives[1:]]

    def stored(self) -> dict:
        return asdict(self)

    def resolve(self, space) -> None:
        """Read the budgets against `space` and check the options; raises a located `SearchError`."""
        if self.samples < 1:
            raise option_error("--samples", self.samples, "the number of trials must be at least 1")
        if self.budget is None and space.budget is None:
            raise option_error(
                "--budget", None, "give a FLOP budget, such as --budget 2GFLOPs@224 (this space sets no `search: budget:`)"
            )
        budget = parse_flops(self.budget if self.budget is not None else space.budget)
        self.budget, self.budget_at = int(budget), budget.at if budget.at is not None else space.image_size
        self.max_params = parse_params(self.max_params) if self.max_params is not None else space.max_params
        if self.img_size is None:
            self.img_size = space.image_size
        self._check_training()
        self._check_objectives()

    def _check_training(self) -> None:
        if not 0 < self.keep <= 1:
            raise option_error("--keep", self.keep, "the fraction of pre-filtered draws to train is in (0, 1], such as 0.25")
        if self.prefilter is not None:
            from archdsl.search.objectives import OBJECTIVES  # torch: not at import, the CLI reads the defaults here

            if self.prefilter not in OBJECTIVES or self.prefilter == "train":
                proxies = ", ".join(name for name in OBJECTIVES if name != "train")
                raise option_error("--prefilter", self.prefilter, f"the pre-filter is a cheap proxy: one of {proxies}")
            if not self.training:
                raise option_error(
                    "--prefilter", self.prefilter, "a pre-filter ranks draws for training; use it with --objective train"
                )
        if self.training and not self.objectives and len(asha_rungs(self.epochs)) < ASHA_MIN_RUNGS:
            raise option_error(
                "--epochs",
                self.epochs,
                f"ASHA needs at least {ASHA_MIN_RUNGS} rungs (epochs "
                f"{', '.join(map(str, asha_rungs(4)))} with reduction factor "
                f"{ASHA_REDUCTION}); give --epochs 4 or more",
            )
        if self.final_stage and self.final_seeds < 2:
            raise option_error(
                "--final-seeds",
                self.final_seeds,
                "a mean and a standard deviation need at least 2 seeds (3 is the default); --final-top 0 skips the final stage",
            )
        if self.final_random < 0:
            raise option_error("--final-random", self.final_random, "give 0 or more random hybrids")
        if self.final_epochs is not None and self.final_epochs < 1:
            raise option_error("--final-epochs", self.final_epochs, "give at least 1 epoch")

    def _check_objectives(self) -> None:
        if not self.objectives:
            return
        names = [name.strip() for name in self.objectives]
        shown = ",".join(names)
        if (
            len(names) < 2
            or names[0] not in SCORE_NAMES
            or any(name not in COSTS for name in names[1:])
            or len(set(names)) != len(names)
        ):
            raise option_error(
                "--objectives",
                shown,
                f"name the score first (accuracy or score: the --objective's, "
                f"maximised), then one or more costs to minimise: "
                f"{', '.join(COSTS)}; such as accuracy,flops",
            )
        if self.searcher == "random":
            raise option_error(
                "--searcher", self.searcher, "a multi-objective search needs a searcher that keeps a front: evolution (NSGA-II)"
            )
        if self.prefilter is not None:
            raise option_error(
                "--objectives", shown, "a multi-objective search draws its own trials (NSGA-II); leave --prefilter out"
            )
        self.objectives = ["score"] + names[1:]
        self.searcher = "evolution"
