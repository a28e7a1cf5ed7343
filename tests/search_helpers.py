"""Objectives the search tests inject (pickled by value into Ray's workers)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import time

import torch

from archdsl.search.objectives import Objective
from archdsl.search.training import ShortTraining


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


class AfterEachEpoch(ShortTraining):
    """The real training, with `after_epoch(model)` run once each epoch's checkpoint is kept."""

    def after_epoch(self, model) -> None:
        raise NotImplementedError

    def train(self, model, context, restored=None, keep=None, seed=None):
        def kept_then(metrics, state):
            keep(metrics, state)
            self.after_epoch(model)

        return super().train(model, context, restored, kept_then if keep else None, seed)


class PoisonedTraining(AfterEachEpoch):
    """A network whose first stage is `width` wide has its weights set to NaN after its first
    epoch, so that its loss becomes NaN in the second."""

    def __init__(self, epochs: int, width: int):
        super().__init__(epochs)
        self.width = width

    def after_epoch(self, model) -> None:
        if model.spec.stages[0].width == self.width:
            with torch.no_grad():
                for parameter in model.parameters():
                    parameter.fill_(float("nan"))


class SlowTraining(AfterEachEpoch):
    """A pause after each epoch's checkpoint (so a test can kill it mid-way)."""

    def __init__(self, epochs: int, pause: float):
        super().__init__(epochs)
        self.pause = pause

    def after_epoch(self, model) -> None:
        time.sleep(self.pause)


def kill_session(session: int) -> None:
    """SIGKILL every process of a session this test started (the driver and its Ray)."""
    listing = subprocess.run(["ps", "-eo", "pid=,sid="], capture_output=True, text=True).stdout.split("\n")
    for line in listing:
        parts = line.split()
        if len(parts) == 2 and int(parts[1]) == session:
            try:
                os.kill(int(parts[0]), signal.SIGKILL)
            except ProcessLookupError:
                pass


# a one-stage space of networks under 4 MFLOPs at 32 px: search runs that train in seconds
TINY_SPACE = """
name: tiny
input: {channels: 3, size: 32}
stem: cloformer_stem
stages:
  - width: {choice: [16, 24, 32]}
    depth: {range: [1, 2]}
    blocks:
      - norm: group_norm
        mixer:
          candidates: [{op: attn_conv, heads: 1, kernel: {choice: [3, 5]}}]
        ffn: {op: conv_ffn, ratio: 2, kernel: 3}
head: {op: pool_linear, norm: group_norm, classes: 10}
"""
