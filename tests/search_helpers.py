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
    """Raises for a first stage 16 wide, gives NaN for one 24 wide, the parameter count otherwise."""

    name = "flaky"
    uses_data = False

    def score(self, model, context):
        width = model.spec.stages[0].width
        if width == 16:
            raise RuntimeError("injected failure: this objective refuses 16 channels")
        if width == 24:
            return float("nan")
        return float(sum(p.numel() for p in model.parameters()))
