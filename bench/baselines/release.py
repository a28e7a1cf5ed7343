"""Importing an authors' release for the side-by-side benchmark, without timm.

The releases import a few helpers from timm (DropPath, to_2tuple, trunc_normal_, register_model,
_cfg); timm needs torchvision, which has no CPU build here. `import_release` puts the release's
folder first on `sys.path` and installs a `timm` holding only those helpers, written from timm's
definitions, before importing the release's module. Nothing of the release is copied here: the
release stays a checkout outside this repository.
"""

from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path

import torch
from torch import nn


class DropPath(nn.Module):
    """timm's stochastic depth: zero a sample's branch with probability `drop_prob`, scale the rest."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = 1 - self.drop_prob
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x.div(keep) * mask


def _to_2tuple(value):
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)


def _install_timm_helpers() -> None:
    if "timm" in sys.modules:
        return
    modules = {
        name: types.ModuleType(name)
        for name in ("timm", "timm.models", "timm.models.layers", "timm.models.registry", "timm.models.vision_transformer")
    }
    layers = modules["timm.models.layers"]
    layers.DropPath, layers.to_2tuple, layers.trunc_normal_ = DropPath, _to_2tuple, nn.init.trunc_normal_
    modules["timm.models.registry"].register_model = lambda function: function
    modules["timm.models.vision_transformer"]._cfg = lambda **kwargs: dict(kwargs)
    sys.modules.update(modules)


def import_release(source: str | None, module: str, default: str) -> types.ModuleType:
    """`module` of the release checked out at `source` (default `default`)."""
    root = Path(source or default)
    if not root.is_dir():
        raise SystemExit(f"no release checkout at {root}: pass --baseline-source DIR (see bench/baselines/README.md)")
    _install_timm_helpers()
    sys.path.insert(0, str(root))
    return importlib.import_module(module)
