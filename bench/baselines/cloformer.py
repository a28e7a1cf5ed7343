"""The authors' CloFormer (qhfan/CloFormer @9181f69) for `bench/models.py --baseline`.

    --baseline bench/baselines/cloformer.py --baseline-source CHECKOUT

CHECKOUT is the release's checkout (default /tmp/authors/cloformer); the model is built from the
release's own `configs/<variant>.yaml` through its `build_model`, as the test vectors were.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import yaml

sys.path.insert(0, str(Path(__file__).parent))
from release import import_release  # noqa: E402


def build(spec_name: str, source: str | None = None):
    models = import_release(
        source and str(Path(source) / "classification"), "models.build", "/tmp/authors/cloformer/classification"
    )
    root = Path(models.__file__).parents[1]
    config = yaml.safe_load((root / "configs" / f"{spec_name}.yaml").read_text())["MODEL"]
    return models.build_model(
        SimpleNamespace(MODEL=SimpleNamespace(TYPE=config["TYPE"], cloformer=SimpleNamespace(**config["cloformer"])))
    )


def prepare(model):
    return model.eval()
