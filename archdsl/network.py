"""The generic modules a compiled spec is made of: ArchNet > Stage > Block > Mixer.

Only composition lives here; every layer with weights comes from an op's `build`. Side
channels (SG-Former's significance map) travel in a dict passed from block to block, so the
data flow stays explicit and traceable.
"""

from __future__ import annotations

import torch
from torch import nn

from archdsl.blocks.layers import DropPath


class Interaction(nn.Module):
    """A gate computed from one candidate's output and applied to another candidate:
    to its values (given to its forward as `value_gate`) or to its output."""

    def __init__(self, module: nn.Module, source: int, target: int, applies_to: str):
        super().__init__()
        self.module, self.source, self.target, self.applies_to = module, source, target, applies_to

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)


class Mixer(nn.Module):
    """Runs the context candidates on the same input and fuses their outputs."""

    def __init__(self, candidates: list[nn.Module], fusion: nn.Module, interactions: list[Interaction],
                 order: list[int], emits: list[str | None], consumes: list[str | None]):
        super().__init__()
        self.candidates = nn.ModuleList(candidates)
        self.fusion = fusion
        self.interactions = nn.ModuleList(interactions)
        self.order = order  # candidates whose values another gates run after that one
        self.emits = emits
        self.consumes = consumes

    def forward(self, x: torch.Tensor, side: dict[str, torch.Tensor]) -> torch.Tensor:
        outputs: list[torch.Tensor | None] = [None] * len(self.candidates)
        value_gates: dict[int, torch.Tensor] = {}
        for index in self.order:
            kwargs: dict[str, torch.Tensor] = {}
            if index in value_gates:
                kwargs["value_gate"] = value_gates[index]
            if self.consumes[index] is not None:
                kwargs["context"] = side[self.consumes[index]]
            out = self.candidates[index](x, **kwargs)
            if self.emits[index] is not None:
                out, side[self.emits[index]] = out
            outputs[index] = out
            for interaction in self.interactions:
                if interaction.source == index and interaction.applies_to == "values":
                    value_gates[interaction.target] = interaction(out)
        for interaction in self.interactions:
            if interaction.applies_to == "output":
                outputs[interaction.target] = outputs[interaction.target] * interaction(outputs[interaction.source])
        return self.fusion(outputs)


class Block(nn.Module):
    """x + mixer(norm1(x)); then x + ffn(norm2(x)), unless the next stage's downsample is this block's FFN."""

    def __init__(self, norm1: nn.Module, mixer: Mixer, norm2: nn.Module | None, ffn: nn.Module | None, drop_path: float):
        super().__init__()
        self.norm1 = norm1
        self.mixer = mixer
        self.norm2 = norm2
        self.ffn = ffn
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, side: dict[str, torch.Tensor]) -> torch.Tensor:
        x = x + self.drop_path(self.mixer(self.norm1(x), side))
        if self.ffn is not None:
            x = x + self.drop_path(self.ffn(self.norm2(x)))
        return x


class Stage(nn.Module):
    def __init__(self, downsample: nn.Module | None, blocks: list[Block]):
        super().__init__()
        self.downsample = downsample if downsample is not None else nn.Identity()
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor, side: dict[str, torch.Tensor]) -> torch.Tensor:
        x = self.downsample(x)
        for block in self.blocks:
            x = block(x, side)
        return x


class ArchNet(nn.Module):
    """A compiled spec. `forward_features(x)` gives every stage's map (for necks);
    `forward(x)` gives logits."""

    def __init__(self, stem: nn.Module, stages: list[Stage], head: nn.Module, spec=None):
        super().__init__()
        self.stem = stem
        self.stages = nn.ModuleList(stages)
        self.head = head
        self.spec = spec  # the validated Spec it was compiled from (not a module, not in state_dict)

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        side: dict[str, torch.Tensor] = {}  # side channels live within a forward pass
        features = []
        for stage in self.stages:
            x = stage(x, side)
            features.append(x)
        return features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x)[-1])
