"""The authors' NomMer (TencentYoutuResearch/VisualRecognition-NomMer @6e09b71) for
`bench/models.py --baseline`.

    --baseline bench/baselines/nommer.py --baseline-source CHECKOUT

CHECKOUT is the release's checkout (default /tmp/authors/nommer); it imports einops, which the
bench does not otherwise need (bench/baselines/README.md). The model is built through the
release's `build_model` from its `configs/nommer_<size>_attn.yaml` over its config defaults.
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import torch
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from release import import_release  # noqa: E402

SIZES = {"nommer_t": "tiny", "nommer_s": "small", "nommer_b": "base"}


def _sample_gumbel_on_cpu(shape, eps=1e-20):
    # the release's sample_gumbel moves its noise to CUDA unconditionally (training only); on a
    # machine without CUDA, the same noise on the CPU
    uniform = torch.rand(shape)
    return -torch.log(-torch.log(uniform + eps) + eps)


def build(spec_name: str, source: str | None = None):
    models = import_release(source, "models.build", "/tmp/authors/nommer")
    if not torch.cuda.is_available():
        sys.modules["models.nommer"].sample_gumbel = _sample_gumbel_on_cpu
    root = Path(models.__file__).parents[1]
    config = yaml.safe_load((root / "configs" / f"nommer_{SIZES[spec_name]}_attn.yaml").read_text())["MODEL"]
    nommer = {"WINDOW_SIZE": 7, "POOLING_SIZE": [8, 4], "CNN_EXPANSION": [4, 4]} | config[
        "NomMer"
    ]  # the release's config.py defaults
    model_config = SimpleNamespace(
        TYPE=config["TYPE"], DROP_PATH_RATE=config.get("DROP_PATH_RATE", 0.1), NUM_CLASSES=1000, NomMer=SimpleNamespace(**nommer)
    )
    return models.build_model(SimpleNamespace(MODEL=model_config, DATA=SimpleNamespace(IMG_SIZE=224)))


def prepare(model):
    return model.eval()
