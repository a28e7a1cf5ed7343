"""Training in channels-last memory (`model.to(memory_format=torch.channels_last)`, timm's
`--channels-last`) gives the gradients of the NCHW model, every one within 1e-4 of the largest
gradient (per-parameter scales would judge rounding noise on gradients that are zero in exact
arithmetic, such as a conv bias before a BatchNorm), for every family but MixFormer: its
gradients here move by 2.5e-4 of the largest between one and two threads alone, NCHW both times
(its BatchNorms see two 64 px images), so it is held to 1e-3."""

from __future__ import annotations

import copy

import pytest
import torch
from shallow import VARIANTS, shallow_model

from archdsl.blocks.ffn import ConvFFNModule
from archdsl.blocks.layers import GELU, DepthwiseConv2d, DepthwiseResidualConv2d


def _gradients(model: torch.nn.Module, image: torch.Tensor) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)  # the same drop-path masks and Gumbel noise for both layouts
    model(image).logsumexp(-1).mean().backward()
    return {name: p.grad for name, p in model.named_parameters() if p.grad is not None}


TOLERANCE = dict.fromkeys(VARIANTS, 1e-4) | {"mixformer_b0": 1e-3}


@pytest.mark.parametrize("variant", VARIANTS)
def test_channels_last_training_gives_the_same_gradients(variant):
    torch.manual_seed(0)
    model = shallow_model(variant, 64).train()
    image = torch.randn(2, 3, 64, 64)
    channels_last_model = copy.deepcopy(model).to(memory_format=torch.channels_last)
    expected = _gradients(model, image)
    channels_last = _gradients(channels_last_model, image)
    assert expected.keys() == channels_last.keys()
    scale = max(gradient.abs().max() for gradient in expected.values())
    for name, gradient in expected.items():
        assert (channels_last[name] - gradient).abs().max() <= TOLERANCE[variant] * scale, name


def test_gelu_gives_a_channels_last_map_the_nchw_numbers():
    """archdsl's GELU runs a channels-last map through the contiguous kernel: the NCHW result bit
    for bit, forward and backward, and the output stays channels-last (torch's own GELU rounds
    a channels-last map differently)."""
    nchw = torch.randn(2, 24, 9, 11, requires_grad=True)
    channels_last = nchw.detach().contiguous(memory_format=torch.channels_last).requires_grad_()
    expected, out = GELU()(nchw), GELU()(channels_last)
    assert out.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(out, expected)
    upstream = torch.randn_like(expected)
    expected.backward(upstream)
    out.backward(upstream)
    assert torch.equal(channels_last.grad, nchw.grad)


def _assert_conv_gradients_match(conv, image, reference, reference_image) -> None:
    """The input, weight and bias gradients within 1e-6 of the reference's largest."""
    for mine, theirs in (
        (image.grad, reference_image.grad),
        (conv.weight.grad, reference.weight.grad),
        (conv.bias.grad, reference.bias.grad),
    ):
        assert (mine - theirs).abs().max() <= 1e-6 * theirs.abs().max()


@pytest.mark.parametrize(("kernel", "stride", "multiplier"), [(5, 1, 1), (7, 2, 1), (9, 1, 1), (5, 2, 2), (3, 1, 1)])
def test_depthwise_conv_gives_the_gradients_of_nn_conv2d(kernel, stride, multiplier):
    """DepthwiseConv2d computes its weight gradient itself for kernels above 3x3 on NCHW maps
    (oneDNN's is per-channel GEMMs there): nn.Conv2d's gradients within 1e-6 of the largest, and
    on the layouts and kernels it leaves to aten, aten's backward."""
    torch.manual_seed(0)
    conv = DepthwiseConv2d(6, kernel, stride, multiplier)
    reference = torch.nn.Conv2d(6, 6 * multiplier, kernel, stride, kernel // 2, groups=6)
    reference.load_state_dict(conv.state_dict())
    for layout in (torch.contiguous_format, torch.channels_last):
        image = torch.randn(3, 6, 15, 13).contiguous(memory_format=layout).requires_grad_()
        reference_image = image.detach().clone().requires_grad_()
        out, expected = conv(image), reference(reference_image)
        own = kernel > 3 and layout == torch.contiguous_format
        assert (type(out.grad_fn).__name__ == "_DepthwiseConvolutionBackward") == own
        assert torch.equal(out, expected)
        upstream = torch.randn_like(expected)
        out.backward(upstream)
        expected.backward(upstream)
        _assert_conv_gradients_match(conv, image, reference, reference_image)
        conv.zero_grad()
        reference.zero_grad()


@pytest.mark.parametrize(("kernel", "layout"), [(3, torch.channels_last), (5, torch.contiguous_format)])
def test_depthwise_residual_conv_is_the_conv_plus_its_input(kernel, layout):
    """DepthwiseResidualConv2d (the identity on the kernel's centre tap) gives x + depthwise(x) and
    that sum's gradients, with DepthwiseConv2d's state_dict."""
    torch.manual_seed(0)
    folded = DepthwiseResidualConv2d(6, kernel).to(memory_format=layout)
    conv = DepthwiseConv2d(6, kernel).to(memory_format=layout)
    assert folded.state_dict().keys() == conv.state_dict().keys()
    conv.load_state_dict(folded.state_dict())
    image = torch.randn(3, 6, 15, 13).contiguous(memory_format=layout).requires_grad_()
    reference_image = image.detach().clone().requires_grad_()
    out, expected = folded(image), conv(reference_image) + reference_image
    assert (out - expected).abs().max() <= 1e-6 * expected.abs().max()
    assert out.is_contiguous(memory_format=layout)
    upstream = torch.randn_like(expected)
    out.backward(upstream)
    expected.backward(upstream)
    _assert_conv_gradients_match(folded, image, conv, reference_image)


def test_a_residual_depthwise_ffn_refuses_a_stride():
    with pytest.raises(ValueError, match="stride 1, not 2"):
        ConvFFNModule(4, 16, 4, 3, stride=2, order="depthwise_residual")


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_inplace_gelu_overwrites_its_input_only_where_no_gradient_is_recorded(layout):
    image = torch.randn(2, 8, 5, 7).contiguous(memory_format=layout)
    expected = torch.nn.functional.gelu(image.contiguous())  # the NCHW numbers (see above)
    gelu = GELU(inplace=True)
    recorded = image.clone().requires_grad_()
    out = gelu(recorded)
    assert torch.equal(out, expected) and not torch.equal(recorded, expected)  # autograd keeps the input
    out.sum().backward()
    with torch.no_grad():
        overwritten = image.clone()
        out = gelu(overwritten)
    assert out.data_ptr() == overwritten.data_ptr() and torch.equal(overwritten, expected)
    assert out.is_contiguous(memory_format=layout)
