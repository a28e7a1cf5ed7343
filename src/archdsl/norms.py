"""The norms a block, stem, head or op can name (`norm: group_norm`): a small registry, each
entry its modules and its FLOP rule.

Tensors between nodes are NCHW; `layer_norm` normalises each pixel over its channels (the
token LayerNorm of ViTs), `group_norm` is GroupNorm(1, C), which normalises each sample over
C, H and W jointly (CloFormer's "LN"). A norm whose epsilon differs from the default 1e-5 is
written `{name: layer_norm, eps: 1.0e-6}` (PVT-style models such as SG-Former use 1e-6).

Adding a norm is one entry in `NORMS`; the language (`NormKind`) follows it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal, Union

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, PositiveFloat
from torch import nn

from archdsl.ops import FeatureShape

DEFAULT_EPS = 1e-5


class ChannelLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of each pixel of an NCHW map."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


@dataclass(frozen=True)
class NormRule:
    over_map: Callable[[int, float], nn.Module]  # (channels, eps) -> a module over NCHW maps
    # (channels, eps) -> a module over channel-last tokens (..., C); None where the norm needs the map
    over_tokens: Callable[[int, float], nn.Module] | None
    flops_per_element: int  # fvcore's rule: layer/group norm with affine 5, batch norm in eval 2


NORMS: dict[str, NormRule] = {
    "layer_norm": NormRule(lambda c, eps: ChannelLayerNorm(c, eps=eps), lambda c, eps: nn.LayerNorm(c, eps=eps), 5),
    "group_norm": NormRule(lambda c, eps: nn.GroupNorm(1, c, eps=eps), None, 5),
    "batch_norm": NormRule(lambda c, eps: nn.BatchNorm2d(c, eps=eps), None, 2),
}

NormKind = Literal[tuple(NORMS)]  # type: ignore[valid-type]  (built from the registry)


class NormWithEps(BaseModel):
    """A norm with its epsilon given: `{name: layer_norm, eps: 1.0e-6}`."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)
    name: NormKind
    """the norm: layer_norm, group_norm or batch_norm"""
    eps: PositiveFloat = DEFAULT_EPS
    """epsilon added to the variance"""


# what a spec may write wherever a norm is named: a bare name, or a name with its epsilon
NormName = Union[NormKind, NormWithEps]  # noqa: UP007


def _rule_and_eps(norm: NormName) -> tuple[NormRule, float]:
    if isinstance(norm, NormWithEps):
        return NORMS[norm.name], norm.eps
    return NORMS[norm], DEFAULT_EPS


def make_norm(norm: NormName, channels: int) -> nn.Module:
    """The norm as a module over NCHW maps."""
    rule, eps = _rule_and_eps(norm)
    return rule.over_map(channels, eps)


def make_token_norm(norm: NormName, channels: int) -> nn.Module:
    """The norm as a module over channel-last tokens (..., channels), for ops that work channel-last inside."""
    rule, eps = _rule_and_eps(norm)
    if rule.over_tokens is None:
        raise ValueError(f"{norm!r} normalises over the map, not per token")
    return rule.over_tokens(channels, eps)


def norm_flops(norm: NormName, shape: FeatureShape) -> int:
    return shape.numel * _rule_and_eps(norm)[0].flops_per_element
