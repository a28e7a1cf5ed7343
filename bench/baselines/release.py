"""Importing an authors' release for the side-by-side benchmark, without timm.

The releases import a few helpers from timm (DropPath, to_2tuple, trunc_normal_, register_model,
_cfg); timm needs torchvision, which has no CPU build here. `import_release` puts the release's
folder first on `sys.path` and installs a `timm` holding only those helpers (archdsl's DropPath,
which the releases construct as timm's, with the rate alone), then imports the release's
module. Nothing of the release is copied here: the release stays a checkout outside this
repository.
"""

from __future__ import annotations

import importlib
import sys
import types
from pathlib import Path

from torch import nn

from archdsl.network import DropPath  # the same per-sample stochastic depth as timm's


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
