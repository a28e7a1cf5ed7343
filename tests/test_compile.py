"""torch.compile sees each family as one graph: no graph break in train mode (as built and after
`use_onednn`), nor in eval mode after `prepare_for_inference` (dynamo's trace only; inductor's
compile is timed by bench/)."""

from __future__ import annotations

import copy

import pytest
import torch
import torch._dynamo as dynamo
from shallow import VARIANTS, shallow_model

from archdsl import prepare_for_inference, use_onednn


@pytest.mark.parametrize("variant", VARIANTS)
def test_one_graph_in_every_mode(variant):
    model = shallow_model(variant, 64)
    image = torch.randn(2, 3, 64, 64)
    for prepare in (lambda m: m.train(), lambda m: use_onednn(copy.deepcopy(m).train()), prepare_for_inference):
        dynamo.reset()
        explanation = dynamo.explain(prepare(model))(image)
        assert explanation.graph_break_count == 0, [str(reason.reason) for reason in explanation.break_reasons]
        assert explanation.graph_count == 1
