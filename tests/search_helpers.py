"""Objectives the search tests inject (pickled by value into Ray's workers)."""

from __future__ import annotations

import hashlib
import json
import os
import time

from archdsl.search.objectives import Objective


def fingerprint(model_or_spec) -> str:
    """The architecture, not its name."""
    spec = getattr(model_or_spec, "spec", model_or_spec).model_dump(mode="json")
    spec.pop("name", None)
    return hashlib.sha1(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]


class SlowParams(Objective):
    """Parameter count after a pause, logging every evaluation (to prove none is repeated)."""

    name = "slow_params"
    uses_data = False

    def __init__(self, log: str, pause: float = 1.0):
        self.log, self.pause = log, pause

    def score(self, model, context):
        time.sleep(self.pause)
        with open(self.log, "a") as handle:
            handle.write(f"{fingerprint(model)} {os.getpid()}\n")
        return float(sum(p.numel() for p in model.parameters()))


class Flaky(Objective):
    """Raises for networks whose first stage mixes with pooled attention alone, gives NaN for
    the rest whose first stage is 32 wide, and the parameter count otherwise."""

    name = "flaky"
    uses_data = False

    def score(self, model, context):
        first = [candidate.op for candidate in model.spec.stages[0].blocks[0].mixer.candidates]
        if first == ["pooled_attention"]:
            raise RuntimeError("injected failure: this objective refuses pooled attention")
        if model.spec.stages[0].width == 32:
            return float("nan")
        return float(sum(p.numel() for p in model.parameters()))
