"""onednn.py: the oneDNN layers `prepare_for_inference` lowers convs and Linears to, each equal to
the layer and activation it replaces, and falling back to them where oneDNN does not apply."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from archdsl import create_model, onednn, prepare_for_inference
from archdsl.blocks.ffn import ConvFFNModule, MLPModule
from archdsl.blocks.layers import GELU, DepthwiseConv2d, DepthwiseResidualConv2d, Swish
from archdsl.onednn import OneDnnConv2d, OneDnnLinear, lower_to_onednn, use_onednn

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="this torch has no oneDNN")

ACTIVATIONS = [nn.Identity(), nn.ReLU(), nn.GELU(), nn.GELU(approximate="tanh"), GELU(inplace=True), nn.SiLU(), Swish()]


def _layers(model: nn.Module, kind: type) -> list[nn.Module]:
    return [module for module in model.modules() if isinstance(module, kind)]


@pytest.mark.parametrize("activation", ACTIVATIONS, ids=lambda a: f"{type(a).__name__}-{getattr(a, 'approximate', '')}")
@pytest.mark.parametrize(
    "conv",
    [nn.Conv2d(16, 24, 3, 2, 1), nn.Conv2d(16, 24, 1, bias=False), DepthwiseConv2d(16, 5), DepthwiseResidualConv2d(16, 3)],
    ids=["3x3-stride-2", "1x1-no-bias", "depthwise-5x5", "depthwise-residual"],
)
def test_a_lowered_conv_is_the_conv_then_its_activation(conv, activation):
    x = torch.randn(2, 16, 14, 14).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        expected = activation(conv(x))
        lowered = OneDnnConv2d(conv, activation)
        assert (lowered(x) - expected).abs().max().item() < 1e-5
    assert lowered.state_dict().keys() == conv.state_dict().keys()


@pytest.mark.parametrize("activation", ACTIVATIONS, ids=lambda a: f"{type(a).__name__}-{getattr(a, 'approximate', '')}")
def test_a_lowered_linear_is_the_linear_then_its_activation(activation):
    linear = nn.Linear(32, 48)
    x = torch.randn(2, 7, 7, 32)
    with torch.no_grad():
        expected = activation(linear(x))
        assert (OneDnnLinear(linear, activation)(x) - expected).abs().max().item() < 1e-5


def test_chained_activations_become_post_ops_and_the_rest_stays():
    ffn = nn.Sequential(ConvFFNModule(16, 64, 16, 5), MLPModule(16, 32, 16), nn.Conv2d(16, 16, 1), nn.Sigmoid()).eval()
    x = torch.randn(1, 16, 8, 8)
    with torch.no_grad():
        expected = ffn(x)
        lowered = lower_to_onednn(
            ffn, [(ffn[0], ffn[0].layer_chains[0]), (ffn[1], ffn[1].layer_chains[0]), (ffn, ("0", "1", "2", "3"))]
        )
        assert (lowered(x) - expected).abs().max().item() < 1e-5
    conv_ffn, mlp = lowered[0], lowered[1]
    assert conv_ffn.fc1.post_op[0] == "gelu" and isinstance(conv_ffn.act, nn.Identity)  # CloFormer: GELU before the dwconv
    assert conv_ffn.dwconv.post_op[0] == conv_ffn.fc2.post_op[0] == "none"
    assert mlp.fc1.post_op[0] == "gelu" and mlp.fc2.post_op[0] == "none"
    assert isinstance(lowered[2], OneDnnConv2d) and isinstance(lowered[3], nn.Sigmoid)  # oneDNN's sigmoid is not wired in


@pytest.mark.parametrize("variant", ["cloformer_xxs", "nommer_t", "sgformer_s", "mixformer_b0"])
def test_a_prepared_model_runs_every_conv_and_linear_on_onednn(variant):
    model = create_model(variant, img_size=64).eval()
    image = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        expected = model(image)
        prepared = prepare_for_inference(model)
        logits = prepared(image)
    left = [type(module) for module in prepared.modules() if type(module) in (nn.Conv2d, nn.Linear)]
    assert not left and _layers(prepared, OneDnnConv2d) and _layers(prepared, OneDnnLinear)
    assert any(layer.post_op[0] != "none" for layer in _layers(prepared, (OneDnnConv2d, OneDnnLinear)))
    assert (logits - expected).abs().max().item() < 1e-4 * expected.abs().max().item()


def test_a_prepared_model_falls_back_where_onednn_does_not_apply_and_copies():
    prepared = prepare_for_inference(create_model("cloformer_xxs", img_size=64))
    image = torch.randn(1, 3, 64, 64, requires_grad=True)
    with torch.no_grad():
        on_onednn = prepared(image)
        copied = copy.deepcopy(prepared)(image)
    with_gradient = prepared(image)  # no oneDNN autograd: the plain layers run
    with_gradient.sum().backward()
    assert image.grad is not None and image.grad.abs().sum() > 0
    assert (with_gradient - on_onednn).abs().max().item() < 1e-5
    assert torch.equal(copied, on_onednn)


def test_a_model_off_float32_is_not_lowered():
    prepared = prepare_for_inference(create_model("cloformer_xxs", img_size=64).double())
    assert not _layers(prepared, (OneDnnConv2d, OneDnnLinear))


@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last], ids=["nchw", "channels-last"])
@pytest.mark.parametrize("layer", [nn.Conv2d(16, 24, 1), nn.Conv2d(16, 24, 1, bias=False), nn.Linear(16, 24)], ids=str)
def test_a_lowered_layer_trains_with_the_plain_layers_gradients(layer, memory_format):
    x = torch.randn(3, 16, 6, 6) if isinstance(layer, nn.Conv2d) else torch.randn(3, 5, 16)
    x = x.contiguous(memory_format=memory_format) if x.dim() == 4 else x
    lowered = (OneDnnConv2d if isinstance(layer, nn.Conv2d) else OneDnnLinear)(layer, nn.Identity())
    inputs = [x.clone().requires_grad_() for _ in range(2)]
    outputs = layer(inputs[0]), lowered(inputs[1])
    gradient = torch.randn_like(outputs[0])
    expected, found = (torch.autograd.grad(out, [given, *layer.parameters()], gradient) for out, given in zip(outputs, inputs))
    for want, got in zip(expected, found, strict=True):
        assert (got - want).abs().max().item() < 1e-5 * want.abs().max().item() + 1e-6


@pytest.mark.parametrize("variant", ["sgformer_s", "nommer_t"])
def test_use_onednn_keeps_a_training_steps_gradients(variant):
    plain = create_model(variant, img_size=64).train()
    lowered = use_onednn(copy.deepcopy(plain))
    kinds = {type(module) for module in lowered.modules()}
    assert nn.Linear not in kinds and OneDnnLinear in kinds and OneDnnConv2d in kinds
    assert all(layer.pointwise for layer in _layers(lowered, OneDnnConv2d))  # the other convs stay torch's
    images, labels = torch.randn(2, 3, 64, 64), torch.tensor([3, 7])
    for model in (plain, lowered):
        torch.manual_seed(0)  # the same drop-path draws
        torch.nn.functional.cross_entropy(model(images), labels).backward()
    for (name, want), got in zip(plain.named_parameters(), lowered.parameters(), strict=True):
        if want.grad is not None:
            assert (got.grad - want.grad).norm() <= 1e-4 * want.grad.norm() + 1e-12, name


def test_a_lowered_layer_reorders_its_kernel_again_after_a_weight_update():
    conv = nn.Conv2d(8, 8, 3, padding=1)
    layer, x = OneDnnConv2d(conv, nn.Identity()), torch.randn(1, 8, 5, 5)
    with torch.no_grad():
        layer(x)  # reorders the kernel
        conv.weight.mul_(2)  # in place, as an optimizer step or load_state_dict
        assert (layer(x) - conv(x)).abs().max().item() < 1e-5


def test_a_prepared_model_runs_under_bf16_autocast():
    prepared = prepare_for_inference(create_model("nommer_t", img_size=64))
    image = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        expected = prepared(image)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = prepared(image)
    assert logits.dtype == torch.bfloat16  # torch's autocast kernels ran, not oneDNN's float32 ones
    assert (logits.float() - expected).abs().max().item() < 0.1 * expected.abs().max().item()


def test_lowered_layers_run_as_plain_ones_on_a_torch_without_onednn(monkeypatch):
    plain = create_model("nommer_t", img_size=64).train()
    lowered = use_onednn(copy.deepcopy(plain))
    monkeypatch.setattr(onednn, "HAS_ONEDNN", False)
    calls = []
    monkeypatch.setattr(torch.ops.mkldnn, "_linear_pointwise", lambda *args: calls.append(args))
    image = torch.randn(1, 3, 64, 64)
    torch.manual_seed(0)
    expected = plain(image)
    torch.manual_seed(0)
    assert (lowered(image) - expected).abs().max().item() < 1e-5 and not calls
