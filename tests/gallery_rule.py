"""The rule that makes the gallery's test weights and inputs: shared by the generator
(bench/gallery_vectors.py, which runs timm) and tests/test_gallery.py, so both build the same
state dict from a key list without shipping weights.

Each of timm's keys, in order, gets a tensor drawn from its own `torch.Generator` seeded with
`seed + index`, scaled so that activations stay of order one through the whole network, and with
every value that starts at a constant in timm (norm scales at 1, biases at 0, layer scales at
1e-6, the class token near 0) moved away from it: a mistake there (a missing layer scale, a norm
in the wrong place, a swapped bias) then changes the logits. Layer scales are drawn around 0.5,
not 1e-6, which would hide the blocks they scale.
"""

from __future__ import annotations

import math

import torch

WEIGHT_SEED = 1_000  # key i is drawn with seed WEIGHT_SEED + i
INPUT_SEED = 7
INPUT_SHAPE = (2, 3, 224, 224)


def rule_tensor(name: str, shape: tuple[int, ...], index: int, seed: int = WEIGHT_SEED) -> torch.Tensor:
    values = torch.randn(shape, generator=torch.Generator().manual_seed(seed + index))
    leaf = name.rsplit(".", 1)[-1]
    if leaf == "gamma":  # layer scale
        return 0.5 + 0.25 * values
    if name in ("cls_token", "pos_embed"):
        return 0.5 * values
    if leaf == "bias":
        return 0.1 * values
    if len(shape) == 1:  # a norm's scale
        return 1.0 + 0.2 * values
    return values / math.sqrt(math.prod(shape[1:]))  # a conv's or Linear's weight: unit gain per output


def rule_state(keys: list[tuple[str, tuple[int, ...]]], seed: int = WEIGHT_SEED) -> dict[str, torch.Tensor]:
    """A timm state dict: every (key, shape) of `keys`, in order, with the rule's values."""
    return {name: rule_tensor(name, tuple(shape), index, seed) for index, (name, shape) in enumerate(keys)}


def rule_input(seed: int = INPUT_SEED) -> torch.Tensor:
    """Two standard-normal 224x224 RGB images."""
    return torch.randn(INPUT_SHAPE, generator=torch.Generator().manual_seed(seed))
