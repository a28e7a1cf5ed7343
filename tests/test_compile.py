"""torch.compile sees each family as one graph: no graph break in train mode, nor in eval mode
after `prepare_for_inference` (dynamo's trace only; inductor's compile is timed by bench/)."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo as dynamo

from archdsl import create_model, load_spec, prepare_for_inference

VARIANTS = ["cloformer_xxs", "mixformer_b0", "sgformer_s", "nommer_t"]


def _shallow(variant: str):
    """The variant at 64 px with at most two blocks a stage: every block pattern, a quicker trace."""
    stages = load_spec(variant).stages
    return create_model(variant, img_size=64, overrides={f"stages.{i}.depth": min(stage.depth, 2) for i, stage in enumerate(stages)})


@pytest.mark.parametrize("variant", VARIANTS)
def test_one_graph_in_every_mode(variant):
    model = _shallow(variant)
    image = torch.randn(2, 3, 64, 64)
    for prepare in (lambda m: m.train(), prepare_for_inference):
        dynamo.reset()
        explanation = dynamo.explain(prepare(model))(image)
        assert explanation.graph_break_count == 0, [str(reason.reason) for reason in explanation.break_reasons]
        assert explanation.graph_count == 1
