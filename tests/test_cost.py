"""The analytic FLOP count agrees with fvcore (with the project's handles), and the graph's
parameter count with the built model's, on every bundled spec."""

from __future__ import annotations

import pytest

import archdsl
from archdsl.cost import count_params, graph_params
from archdsl.loading import bundled_spec_names


@pytest.mark.parametrize("name", bundled_spec_names())
def test_analytic_counts_agree_with_the_built_model(name):
    # at a small input, to keep the suite fast: the FLOP rules do not depend on the size, and
    # every family's tests compare both counts with the authors' figures at 224 (and 448)
    model = archdsl.create_model(name, img_size=64)
    counts = archdsl.count_flops(model)
    assert counts.analytic == counts.flops
    assert counts.fvcore_raw <= counts.flops
    # parameters counted on the graph (each node built on the meta device) are the model's
    assert graph_params(archdsl.lower_spec(model.spec)) == count_params(model)


def test_an_op_declares_its_own_fvcore_handle():
    """An op whose module runs an aten op fvcore skips (here cumsum) declares the rule beside its
    FLOP rule; fvcore with the project's handles then equals the analytic count."""
    from math import prod
    from typing import Literal

    from fvcore.nn.jit_handles import get_shape

    from archdsl.cost import flop_handles
    from archdsl.network import CandidateModule
    from archdsl.ops import CandidateOp, Site, register, unregister

    class RunningSumModule(CandidateModule):
        def forward(self, x, value_gate=None, context=None):
            return x.cumsum(dim=-1)

    def one_add_per_element(inputs, outputs) -> int:
        return prod(get_shape(inputs[0]))

    @register
    class RunningSum(CandidateOp):
        op: Literal["test_running_sum"] = "test_running_sum"
        fvcore_handles = {"aten::cumsum": one_add_per_element}

        def flops(self, site: Site) -> int:
            return site.in_shape.numel

        def build(self, site: Site):
            return RunningSumModule()

    try:
        assert flop_handles()["aten::cumsum"] is one_add_per_element
        spec = archdsl.load_spec(
            "cloformer_xxs",
            {"stages.0.blocks.0.mixer.candidates": [{"op": "test_running_sum"}], "stages.0.blocks.0.mixer.fusion": "sum"},
            img_size=64,
        )
        counts = archdsl.count_flops(spec)
        assert counts.analytic == counts.flops
    finally:
        unregister("candidate", "test_running_sum")
    assert "aten::cumsum" not in flop_handles()
