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

from archdsl.blocks.layers import GELU


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
