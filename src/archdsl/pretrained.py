"""Each family's preprocessing: what its authors' evaluation transform does, so that a user
fine-tuning or running the released weights feeds the model what it was trained on.

A family registers its figures beside its ops (`register_preprocessing("cloformer", ...)` in
blocks/cloformer.py, citing where in the authors' code each comes from). `pretrained_cfg(spec)`
is the timm-style mapping: those figures plus the input size, class count and classifier of
this spec. Evaluation is: resize the shorter side to size / crop_pct with
`interpolation`, centre-crop to the input size, scale to [0, 1], normalise by mean and std.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

IMAGENET_MEAN = (0.485, 0.456, 0.406)  # timm's IMAGENET_DEFAULT_MEAN / STD, torchvision's ImageNet statistics
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Preprocessing:
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    crop_pct: float
    interpolation: Literal["bicubic", "bilinear"]


_PREPROCESSING: dict[str, Preprocessing] = {}


def register_preprocessing(family: str, preprocessing: Preprocessing) -> None:
    _PREPROCESSING[family] = preprocessing


def pretrained_cfg(spec) -> dict | None:
    """timm's `pretrained_cfg` keys for a spec of a known family; None for a spec without one
    (a hybrid has no authors' training to match)."""
    import archdsl.blocks  # noqa: F401  (the papers' families register their figures)
    import archdsl.converters  # noqa: F401  (the gallery's, beside the converters of their timm weights)

    preprocessing = _PREPROCESSING.get(spec.family) if spec.family else None
    if preprocessing is None:
        return None
    return {
        "input_size": (spec.input.channels, *spec.image_size),
        "mean": preprocessing.mean,
        "std": preprocessing.std,
        "crop_pct": preprocessing.crop_pct,
        "interpolation": preprocessing.interpolation,
        "num_classes": spec.head.classes,
        "classifier": "head.fc",
    }
