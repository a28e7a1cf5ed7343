"""The compiled network: stage maps, logits, overrides, tracing, torch.compile, new ops."""

from __future__ import annotations

from typing import Literal

import pytest
import torch
import torch.nn.functional as F
from pydantic import PositiveInt
from torch import nn

import archdsl
from archdsl.blocks import multihead
from archdsl.blocks.layers import conv_flops
from archdsl.blocks.multihead import attend
from archdsl.network import CandidateModule
from archdsl.ops import CandidateOp, OpCheckError, Site, register, unregister


@pytest.fixture(scope="module")
def xxs():
    torch.manual_seed(0)
    return archdsl.create_model("cloformer_xxs").eval()


def test_forward_features_gives_the_four_stage_maps(xxs):
    with torch.no_grad():
        features = xxs.forward_features(torch.randn(2, 3, 224, 224))
    assert [tuple(f.shape) for f in features] == [(2, 32, 56, 56), (2, 64, 28, 28), (2, 128, 14, 14), (2, 256, 7, 7)]


def test_num_classes_and_img_size_at_build():
    model = archdsl.create_model("cloformer_xxs", num_classes=10, img_size=256).eval()
    assert model.spec.image_size == (256, 256) and model.head.fc.out_features == 10
    with torch.no_grad():
        assert model(torch.randn(1, 3, 256, 256)).shape == (1, 10)


def test_jit_trace_matches_eager(xxs):
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        traced = torch.jit.trace(xxs, x)
        assert (traced(x) - xxs(x)).abs().max().item() < 1e-5


def test_torch_compile_without_graph_breaks(xxs):
    # fullgraph=True fails on any graph break; aot_eager exercises dynamo and AOT autograd
    # without a C++ toolchain (bench/ measures the inductor-compiled model)
    compiled = torch.compile(xxs, backend="aot_eager", fullgraph=True)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        assert (compiled(x) - xxs(x)).abs().max().item() < 1e-5


def test_fused_and_traced_attention_agree():
    q, k, v = (torch.randn(2, 3, 50, 16) for _ in range(3))
    bias = torch.randn(3, 50, 50)
    fused = attend(q, k, v, 0.25, bias)
    explicit = ((q * 0.25) @ k.transpose(-2, -1) + bias).softmax(-1) @ v
    assert (fused - explicit).abs().max().item() < 1e-5


def test_attention_with_a_trained_bias_takes_the_explicit_path():
    """A bias that takes a gradient (a relative-position table in training) goes the explicit way,
    which SDPA's fused kernel cannot: the explicit numbers bit for bit, SDPA's gradients to ~1e-6
    (a scale whose square root is not a power of two: SDPA's unfused path scales q and k by it)."""
    q, k, v = (torch.randn(4, 2, 49, 16, requires_grad=True) for _ in range(3))
    table = torch.randn(2, 49, 49, requires_grad=True)
    trained = attend(q, k, v, 0.3, table * 1)
    explicit = ((q @ k.transpose(-2, -1)) * 0.3 + table).softmax(-1) @ v
    assert torch.equal(trained, explicit)
    fused = attend(q, k, v, 0.3, table.detach())
    assert (fused - trained).abs().max().item() < 1e-5
    inputs = (q, k, v, table)
    upstream = torch.randn_like(trained)
    ours = torch.autograd.grad(trained, inputs, upstream)
    math_path = torch.autograd.grad(F.scaled_dot_product_attention(q, k, v, attn_mask=table, scale=0.3), inputs, upstream)
    for mine, reference in zip(ours, math_path, strict=True):
        assert (mine - reference).abs().max() <= 1e-5 * reference.abs().max()


def test_attention_received_in_chunks_equals_whole(monkeypatch):
    """The explicit path cut into query chunks (large maps) gives the whole matrix's output bit
    for bit and the attention each key receives to float rounding."""
    q, k, v = (torch.randn(2, 3, n, 16) for n in (700, 40, 40))
    bias = torch.randn(3, 700, 40)
    whole, whole_received = attend(q, k, v, 0.25, bias, return_attention_received=True)
    explicit = ((q @ k.transpose(-2, -1)) * 0.25 + bias).softmax(-1)
    assert torch.equal(whole_received, explicit.mean(1).mean(1))
    monkeypatch.setattr(multihead, "EXPLICIT_CHUNK_ELEMENTS", 2 * 3 * 40 * 128)  # chunks of 128 queries
    chunked, chunked_received = attend(q, k, v, 0.25, bias, return_attention_received=True)
    assert torch.equal(chunked, whole)
    assert (chunked_received - whole_received).abs().max().item() < 1e-6 * whole_received.abs().max().item()
    assert whole_received.shape == (2, 40)


class _BlurModule(CandidateModule):
    def __init__(self, channels: int, kernel: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel, padding=kernel // 2, groups=channels)

    def forward(self, x, value_gate=None, context=None):
        return self.conv(x)


def test_a_new_op_needs_no_compiler_change():
    """An op defined here, outside the package, is usable in specs at once."""

    @register
    class Blur(CandidateOp):
        op: Literal["test_blur"] = "test_blur"
        kernel: PositiveInt = 3

        def check(self, site: Site) -> None:
            if site.out_channels != site.in_shape.channels:
                raise OpCheckError("blur keeps the channel count", field="channels")

        def flops(self, site: Site) -> int:
            return conv_flops(
                site.in_shape.channels, site.out_channels, self.kernel, site.in_shape.map_size, groups=site.out_channels
            )

        def build(self, site: Site) -> nn.Module:
            return _BlurModule(site.out_channels, self.kernel)

    try:
        spec = archdsl.load_spec(
            "cloformer_xxs",
            {
                "stages.0.blocks.0.mixer.candidates": [
                    {"op": "test_blur", "kernel": 5},
                    {"op": "attn_conv", "heads": 4, "kernel": 3},
                ],
                "stages.0.blocks.0.mixer.fusion": "sum",
            },
        )
        model = archdsl.create_model(spec).eval()
        flops = archdsl.count_flops(model)
        assert abs(flops.analytic - flops.flops) / flops.flops < 0.02
        with torch.no_grad():
            assert model(torch.randn(1, 3, 224, 224)).shape == (1, 1000)
    finally:
        unregister("candidate", "test_blur")
    with pytest.raises(archdsl.SpecError, match="unknown op 'test_blur'"):
        archdsl.load_spec("cloformer_xxs", {"stages.0.blocks.0.mixer.candidates": [{"op": "test_blur"}]})


def test_count_flops_on_a_spec_and_on_a_model_agree(xxs):
    from_spec = archdsl.count_flops("cloformer_xxs")
    from_model = archdsl.count_flops(xxs)
    assert from_spec == from_model
    at_256 = archdsl.count_flops("cloformer_xxs", img_size=256)
    assert at_256.analytic > from_spec.analytic


def test_flop_handles_count_what_fvcore_skips():
    from archdsl.cost import fvcore_counts

    class Fused(nn.Module):
        def forward(self, x):
            q = x.flatten(2).transpose(1, 2).unsqueeze(1)  # (1, 1, 64, 4)
            return F.scaled_dot_product_attention(q, q, q).sum() + F.avg_pool2d(x, 2).sum()

    with_handles, raw = fvcore_counts(Fused(), (8, 8), in_channels=4)
    assert raw == 0
    assert with_handles == 64 * 64 * (4 + 4) + 4 * 8 * 8  # two matmuls + one add per pooled element


def test_rectangular_windows_partition_and_merge_back():
    from archdsl.blocks.multihead import window_merge, window_partition

    x = torch.arange(2 * 6 * 8 * 3, dtype=torch.float32).reshape(2, 6, 8, 3)
    windows = window_partition(x, (3, 4))
    assert windows.shape == (2 * 2 * 2, 12, 3)
    assert torch.equal(windows[1], x[0, :3, 4:8].reshape(12, 3))  # image 0, window row 0, column 1
    assert torch.equal(window_merge(windows, (3, 4), 6, 8), x)
