"""Every family runs under CPU bf16 autocast, forward in eval and forward + backward in train
mode, with finite logits and gradients (CUDA autocast is exercised by the device bench only)."""

from __future__ import annotations

import pytest
import torch
from shallow import VARIANTS, shallow_model


@pytest.mark.parametrize("variant", VARIANTS)
def test_bf16_autocast_runs(variant, one_thread):
    torch.manual_seed(0)
    model = shallow_model(variant, 32)
    image = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        full = model.eval()(image)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            half = model(image)
    assert half.dtype == torch.bfloat16 and torch.isfinite(half).all()
    if variant != "sgformer_s":  # its significance sort reorders near-tied tokens under bf16 rounding
        assert (half.float() - full).abs().max() < 0.1 * full.abs().max()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = model.train()(image).float().logsumexp(-1).mean()
    loss.backward()
    gradients = [p.grad for p in model.parameters() if p.grad is not None]
    assert gradients and all(torch.isfinite(g).all() for g in gradients)
