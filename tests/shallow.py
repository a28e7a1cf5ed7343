"""Each family's smallest variant with at most two blocks a stage: every block pattern of the
variant (SG-Former's alternate), in a fraction of the time, for tests that trace or run each family."""

from __future__ import annotations

from archdsl import create_model, load_spec

VARIANTS = ["cloformer_xxs", "mixformer_b0", "sgformer_s", "nommer_t"]


def shallow_model(variant: str, img_size: int):
    stages = load_spec(variant).stages
    return create_model(
        variant, img_size=img_size, overrides={f"stages.{i}.depth": min(stage.depth, 2) for i, stage in enumerate(stages)}
    )
