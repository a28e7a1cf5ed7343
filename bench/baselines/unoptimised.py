"""archdsl's own model as `create_model` returns it, without `prepare_for_inference`: the
baseline for a family with no PyTorch release (MixFormer's is PaddlePaddle).

    --baseline bench/baselines/unoptimised.py
"""

from __future__ import annotations

import archdsl


def build(spec_name: str, source: str | None = None):
    return archdsl.create_model(spec_name)


def prepare(model):
    return model.eval()
