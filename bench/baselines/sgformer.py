"""The authors' SG-Former (OliverRensu/SG-Former @b982803) for `bench/models.py --baseline`.

    --baseline bench/baselines/sgformer.py --baseline-source CHECKOUT

CHECKOUT is the release's checkout (default /tmp/authors/sgformer); the model is the release's
own `sgformer_s` / `_m` / `_b` function.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from release import import_release  # noqa: E402

# the release's pos_embed.py uses np.float, an alias NumPy removed in 1.24
np.float = float


def build(spec_name: str, source: str | None = None):
    return getattr(import_release(source, "sgformer", "/tmp/authors/sgformer"), spec_name)()


def prepare(model):
    return model.eval()
