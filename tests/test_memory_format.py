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
