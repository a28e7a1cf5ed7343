"""SG-Former S/M/B: exact parameters, FLOPs at 224/384/448, the authors' weights and test vector,
other input sizes, and the significance side channel's validation."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
import yaml

from archdsl.api import count_flops, create_model, load_spec, lower_spec
from archdsl.blocks.layers import nearest_divisor
from archdsl.blocks.position import resize_position_embedding
from archdsl.blocks.sgformer import (
    HybridScaleAttentionModule,
    RankAggregation,
    SelfGuidedAttentionModule,
    significance_orders,
)
from archdsl.compiler import compile_graph
from archdsl.converters.sgformer import convert_sgformer
from archdsl.cost import graph_params
from archdsl.errors import CheckpointError, SpecError

VARIANTS = ["sgformer_s", "sgformer_m", "sgformer_b"]


@pytest.fixture(scope="module")
def vector(reference) -> dict:
    return torch.load(reference / "vectors" / "sgformer_s.pt", weights_only=True)


@pytest.fixture(scope="module")
def checkpoints(vector, tmp_path_factory) -> dict:
    """The vector's official state_dict saved plain and nested under "model"."""
    folder = tmp_path_factory.mktemp("sgformer")
    plain, nested = folder / "plain.pth", folder / "nested.pth"
    torch.save(vector["state_dict"], plain)
    torch.save({"model": vector["state_dict"], "epoch": 300}, nested)
    return {"plain": plain, "nested": nested}


def _lowering_error(overrides=None, img_size=None) -> str:
    with pytest.raises(SpecError) as caught:
        lower_spec(load_spec("sgformer_s", overrides, img_size=img_size))
    return str(caught.value)


# --- size ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", VARIANTS)
def test_parameters_exactly_official(variant, official):
    graph = lower_spec(load_spec(variant))
    params = graph_params(graph).trainable  # meta device: no memory
    assert params == official["sgformer"][variant]["params"]


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("size", [224, 448])
def test_analytic_flops_match_official_fvcore(variant, size, official):
    figures = official["sgformer"][variant]
    reference = figures["fvcore_flops"] if size == 224 else figures["fvcore_flops_448"]
    analytic = lower_spec(load_spec(variant, img_size=size)).flops
    # requirement 1%; the only differences are the head's pooling (fvcore skips the code's mean)
    # and the aggregation's embedding_bag (the code's f-linears): a few parts per million
    assert abs(analytic / reference - 1) < 1e-4


def test_fvcore_on_the_built_model(official):
    counts = count_flops("sgformer_s")
    assert counts.analytic == counts.flops  # the graph's rules equal fvcore with the project's handles, exactly
    assert abs(counts.fvcore_raw / official["sgformer"]["sgformer_s"]["fvcore_flops"] - 1) < 0.01
    assert abs(counts.fvcore_raw / official["sgformer"]["sgformer_s"]["fvcore_flops"] - 1) < 5e-4


@pytest.mark.parametrize("variant", VARIANTS)
def test_flops_at_384_beside_the_paper(variant, reference):
    paper = yaml.safe_load((reference / "paper_tables.yaml").read_text())["sgformer"][variant]["gflops_384"]
    ours = lower_spec(load_spec(variant, img_size=384)).flops / 1e9
    # the release cannot run at 384; with the derived window (8) and rates this spec lands
    # 1.5-1.8% above the paper's 15.1 / 23.4 / 47.9 G, as does the notes' extrapolation of the code
    assert 0.0 < ours / paper - 1 < 0.025


# --- the authors' weights ----------------------------------------------------------------------------


def test_test_vector_logits_maps_and_stages(vector, checkpoints):
    model = create_model("sgformer_s", pretrained=checkpoints["nested"])
    maps, stage_outputs = {}, {}
    for stage_index, stage in enumerate(model.stages):
        for block_index, block in enumerate(stage.blocks):
            attention = block.mixer.candidates[0]
            if isinstance(attention, HybridScaleAttentionModule):
                name = f"block{stage_index + 1}.{block_index}"
                attention.register_forward_hook(lambda module, args, out, name=name: maps.__setitem__(name, out[1]))
    # each stage's closing norm is, here, the next downsample's first layer (the last: the head's)
    closing = [model.stages[i].downsample.norm for i in (1, 2, 3)] + [model.head.norm]
    for index, norm in enumerate(closing, 1):
        norm.register_forward_hook(lambda module, args, out, index=index: stage_outputs.__setitem__(index, out))
    with torch.no_grad():
        logits = model(vector["input"])
        again = model(vector["input"])
    assert (logits - vector["output"]).abs().max().item() < 3e-4  # measured 3.8e-5 (ties in the sort)
    assert torch.equal(logits, again)  # stable sorts: the same input always gives the same output
    assert sorted(maps) == sorted(vector["significance_maps"])
    for name, significance in maps.items():
        stored = vector["significance_maps"][name]
        batch = significance.shape[0]
        assert (significance.reshape(batch, -1) - stored["row"]).abs().max().item() < 1e-6
        assert (significance.transpose(1, 2).reshape(batch, -1) - stored["col"]).abs().max().item() < 1e-6
    for index, output in stage_outputs.items():
        stored = vector["intermediates"][f"stage{index}_output_after_norm{index}"]
        assert (output.flatten(2).transpose(1, 2) - stored).abs().max().item() < 1e-3


def test_weights_of_another_depth_are_refused_with_the_keys_listed(checkpoints):
    with pytest.raises(CheckpointError) as caught:
        create_model("sgformer_s", overrides={"stages.2.depth": 14}, pretrained=checkpoints["nested"])
    message = str(caught.value)
    assert "54 unexpected: block3.14." in message and "missing" not in message  # blocks 3.14 and 3.15, 27 keys each


@pytest.mark.parametrize("variant", ["sgformer_m", "sgformer_b"])
def test_converter_maps_every_official_key(variant, reference):
    keys = json.loads((reference / "official_keys" / f"{variant}.json").read_text())
    with torch.device("meta"):
        model = compile_graph(lower_spec(load_spec(variant)))
        official = {name: torch.empty(shape) for name, shape in keys}
    converted = convert_sgformer(official, model)
    expected = model.state_dict()
    assert set(converted) == set(expected)
    assert all(converted[name].shape == expected[name].shape for name in expected)


# --- other input sizes -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "size, window, rates, keys",
    [
        (384, (8, 8), [[192, 64, 32], [48, 16, 8], [2, 1]], [156, 156, 432]),
        (256, (8, 8), [[256, 64, 32], [64, 16, 8], [2, 1]], [68, 68, 192]),
    ],
)
def test_224_weights_in_another_size(size, window, rates, keys, vector, checkpoints):
    model = create_model("sgformer_s", img_size=size, pretrained=checkpoints["plain"])
    side = size // 4
    assert model.stem.pos_embed.shape == (1, side * side, 64)
    assert torch.allclose(
        model.stem.pos_embed, resize_position_embedding(vector["state_dict"]["pos_embed"].float(), (side, side))
    )
    for stage in range(3):
        hybrid, guided = (model.stages[stage].blocks[i].mixer.candidates[0] for i in (0, 1))
        assert hybrid.window == window
        assert guided.aggregate.rates == rates[stage] and guided.aggregate.runs == keys[stage]
    image = F.interpolate(vector["input"][:1], size=size, mode="bicubic", align_corners=False)
    with torch.no_grad():
        logits = model(image)
    assert torch.isfinite(logits).all()
    # the transferred weights still compute nearly the same function
    assert torch.corrcoef(torch.stack([logits[0], vector["output"][0]]))[0, 1] > 0.95


def test_an_impossible_size_names_the_sizes_that_work():
    # under the released code's rule, `fit: exact` (the bundled spec pads such maps instead)
    message = _lowering_error({"stages.0.blocks.0.mixer.candidates.0.fit": "exact"}, img_size=200)
    assert "stages[0].blocks[0].mixer.candidates[0].scale" in message
    assert "50x50 map of stage 0" in message and "[160, 192, 224, 256]" in message


# --- the significance side channel ---------------------------------------------------------------


def test_consumer_before_any_producer():
    guided = {"op": "self_guided_attention", "heads": 2, "shares": [1, 2, 1], "rates": [196, 56, 28]}
    message = _lowering_error({"stages.0.blocks.0.mixer.candidates.0": guided})
    assert "stages[0].blocks[0].mixer.candidates[0].consumes" in message
    assert "block 0 of stage 0" in message and "56x56 map" in message and "emits: significance" in message


@pytest.mark.parametrize("stage, depth, side, fix", [(0, 3, 56, "depth 2 or 4"), (2, 15, 14, "depth 14 or 16")])
def test_depth_leaving_a_producer_without_consumer(stage, depth, side, fix):
    message = _lowering_error({f"stages.{stage}.depth": depth})
    assert f"stages[{stage}].depth" in message and f"block {depth - 1} of stage {stage}" in message
    assert f"{side}x{side} map" in message and fix in message and "emits: null" in message


def test_a_map_replaced_before_it_is_read():
    hybrid = {"op": "hybrid_scale_attention", "heads": 4, "scale": 4}
    message = _lowering_error({"stages.1.blocks.1.mixer.candidates.0": hybrid})
    assert "stages[1].blocks" in message and "block 0 of stage 1" in message and "28x28 map" in message


def test_a_producer_without_its_map_is_a_plain_candidate():
    spec = load_spec(
        "sgformer_s",
        {
            "stages.0.depth": 3,
            "stages.0.blocks.0.mixer.candidates.0.emits": None,
            "stages.0.blocks.1.mixer.candidates.0": {"op": "hybrid_scale_attention", "heads": 2, "scale": 8, "emits": None},
        },
    )
    assert lower_spec(spec).stage_nodes(0)[-1].side_outputs == []


def test_impossible_group_split():
    message = _lowering_error({"stages.0.blocks.1.mixer.candidates.0.shares": [1, 1, 1]})
    assert "stages[0].blocks[1].mixer.candidates[0].shares" in message
    assert "56x56 map of stage 0" in message and "3136 is not a multiple of 3" in message and "[2, 4, 7, 8]" in message


# --- the parts ---------------------------------------------------------------------------------------


def test_derived_sizes_are_the_codes_at_multiples_of_224():
    assert [nearest_divisor(3136 // 4 * share, rate) for share, rate in ((1, 196), (2, 56), (1, 28))] == [196, 56, 28]
    assert [nearest_divisor(12544 // 4 * share, rate) for share, rate in ((1, 196), (2, 56), (1, 28))] == [196, 56, 28]
    assert nearest_divisor(56, 7) == nearest_divisor(112, 7) == 7
    assert nearest_divisor(96, 7) == 8 and nearest_divisor(12, 7) == 6  # 7/6 vs 8/7 on a log scale


def test_position_embedding_starts_as_the_codes_sincos_table(vector):
    table = create_model("sgformer_s").stem.pos_embed.detach()
    assert torch.equal(table.half(), vector["state_dict"]["pos_embed"])  # the vector's is the code's init, in fp16


def test_rank_aggregation_equals_one_linear_per_sub_region():
    torch.manual_seed(0)
    sizes, rates = [8, 16, 8], [4, 2, 1]
    aggregate = RankAggregation(sizes, rates)
    tokens, orders = torch.randn(3, 32, 5), torch.stack([torch.randperm(32).expand(3, 32), torch.randperm(32).expand(3, 32)])
    out = aggregate(tokens, orders)
    starts, weight_starts = [0, 8, 24], [0, 4, 6]
    for k in range(2):
        ordered = tokens.gather(1, orders[k].unsqueeze(-1).expand(-1, -1, 5))
        parts = []
        for part, (start, size, rate, w0) in enumerate(zip(starts, sizes, rates, weight_starts)):
            runs = ordered[:, start : start + size].reshape(3, size // rate, rate, 5)
            parts.append(torch.einsum("bnrc,r->bnc", runs, aggregate.weight[w0 : w0 + rate]) + aggregate.bias[part])
        assert torch.allclose(out[k], torch.cat(parts, dim=1), atol=1e-6)


def test_ties_sort_stably_in_each_flattening_order():
    significance = torch.tensor([[[0.5, 0.1, 0.5], [0.1, 0.5, 0.1]]])  # 2x3, ties everywhere
    row, column = significance_orders(significance)[:, 0].tolist()
    assert row == [1, 3, 5, 0, 2, 4]  # ties in row-major token order
    assert column == [3, 1, 5, 0, 4, 2]  # ties in column-major order: (1,0), (0,1), (1,2), then (0,0), (1,1), (0,2)
    torch.manual_seed(0)
    attention = SelfGuidedAttentionModule(16, 16, 2, [3, 3], [3, 1]).eval()
    x = torch.randn(1, 16, 2, 3)
    with torch.no_grad():
        assert torch.equal(attention(x, context=significance), attention(x, context=significance))


def test_jit_trace_matches_eager(vector):
    model = create_model("sgformer_s", overrides={"stages.1.depth": 2, "stages.2.depth": 2}).eval()  # every op, fewer blocks
    weights = convert_sgformer({k: v.float() for k, v in vector["state_dict"].items()}, model)
    model.load_state_dict({k: v for k, v in weights.items() if k in model.state_dict()})
    image = vector["input"][:1]
    with torch.no_grad():
        traced = torch.jit.trace(model, image, check_trace=False)  # sorts, gathers and the embedding_bag trace as tensor ops
        # the trace runs eager's kernels (fused attention included), so the significance sorts see
        # the same bits and order the same tokens
        assert torch.equal(traced(image), model(image))


def test_hybrid_scale_attention_without_its_map_attends_fused():
    """emits: null runs both halves through the fused `attend`; the heads equal the explicit
    path's (which the map needs), here on rectangular windows."""
    torch.manual_seed(0)
    emitting = HybridScaleAttentionModule(32, 32, 4, 4, (4, 8), emit=True).eval()
    fused = HybridScaleAttentionModule(32, 32, 4, 4, (4, 8), emit=False).eval()
    fused.load_state_dict(emitting.state_dict())
    x = torch.randn(2, 32, 16, 24)
    with torch.no_grad():
        explicit, significance = emitting(x)
        out = fused(x)
    assert significance.shape == (2, 16, 24)
    assert out.shape == explicit.shape == (2, 32, 16, 24)
    assert (out - explicit).abs().max().item() < 2e-6  # measured 2.1e-7
