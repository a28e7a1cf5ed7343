"""The generic modules a compiled spec is made of: ArchNet > Stage > Block > Mixer.

Only composition lives here; every layer with weights comes from an op's `build`. Side
channels (SG-Former's significance map) travel in a dict passed from block to block, so the
data flow stays explicit and traceable.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from archdsl.blocks.layers import DropPath
from archdsl.errors import Problem, SpecError


class Interaction(nn.Module):
    """A gate computed from one candidate's features and applied to another candidate:
    to its values (its forward receives `value_gate=`) or to its output (see `Mixer`)."""

    def __init__(self, module: nn.Module, source: int, target: int, applies_to: str):
        super().__init__()
        self.module, self.source, self.target, self.applies_to = module, source, target, applies_to

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.module(features)


class Mixer(nn.Module):
    """Runs the context candidates on the same input and fuses their outputs.

    A candidate module's forward(x, **inputs) returns its *features*; `inputs` holds
    `value_gate` when an interaction gates its values and `context` when it consumes a side
    channel, and a candidate that emits a side channel returns (features, map). If the module
    has `finish(features, output_gate)`, that makes its output (so a gate can act before a
    final norm, as MixFormer's spatial interaction does); otherwise the output is the features,
    times the output gate if any. Interactions always read their source's features.
    """

    def __init__(self, candidates: list[nn.Module], fusion: nn.Module, interactions: list[Interaction],
                 order: list[int], emits: list[str | None], consumes: list[str | None], pad_multiple: int | None = None):
        super().__init__()
        self.candidates = nn.ModuleList(candidates)
        self.fusion = fusion
        self.interactions = nn.ModuleList(interactions)
        self.order = order  # a values-gate's source runs before its target
        self.emits = emits
        self.consumes = consumes
        self.pad_multiple = pad_multiple

    def forward(self, x: torch.Tensor, side: dict[str, torch.Tensor]) -> torch.Tensor:
        height, width = x.shape[-2:]
        if self.pad_multiple:
            # zero-pad the normalised map on the bottom and right; every candidate sees the padding
            x = F.pad(x, (0, (-width) % self.pad_multiple, 0, (-height) % self.pad_multiple))
        features: list[torch.Tensor] = [x] * len(self.candidates)
        value_gates: dict[int, torch.Tensor] = {}
        for index in self.order:
            inputs: dict[str, torch.Tensor] = {}
            if index in value_gates:
                inputs["value_gate"] = value_gates[index]
            consumed = self.consumes[index]
            if consumed is not None:
                inputs["context"] = side[consumed]
            result = self.candidates[index](x, **inputs)
            emitted = self.emits[index]
            if emitted is not None:
                result, side[emitted] = result
            features[index] = result
            for interaction in self.interactions:
                if interaction.source == index and interaction.applies_to == "values":
                    value_gates[interaction.target] = interaction(result)
        outputs = []
        for index, candidate in enumerate(self.candidates):
            gate = None
            for interaction in self.interactions:
                if interaction.target == index and interaction.applies_to == "output":
                    gate = interaction(features[interaction.source]) if gate is None else gate * interaction(features[interaction.source])
            if hasattr(candidate, "finish"):
                outputs.append(candidate.finish(features[index], gate))
            else:
                outputs.append(features[index] if gate is None else features[index] * gate)
        out = self.fusion(outputs)
        if self.pad_multiple:
            out = out[:, :, :height, :width]
        return out


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
        try:
            return self._stage_maps(x)
        except RuntimeError as error:
            # at a size other than the one every module was checked and built for, some modules run
            # (convs, pooled attention) and some cannot (fixed windows, position tables)
            built, given = (self.spec.image_size if self.spec is not None else None), tuple(x.shape[-2:])
            if built is None or given == built or isinstance(error, torch.OutOfMemoryError):
                raise
            size = f"{given[0]}" if given[0] == given[1] else f"'{given[0]}x{given[1]}'"
            where = ("input", "size")
            raise SpecError(Problem(
                f"this model was built for {built[0]}x{built[1]} inputs and cannot run on a {given[0]}x{given[1]} input "
                f"({str(error).splitlines()[0]}); build it for that size: create_model(spec, img_size={size}) or "
                f"`archdsl build SPEC --img-size {given[0]}x{given[1]}`", where,
                self.spec._sources.locate(where) if self.spec._sources else None)) from None

    def _stage_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        side: dict[str, torch.Tensor] = {}  # side channels live within a forward pass
        features = []
        for stage in self.stages:
            x = stage(x, side)
            features.append(x)
        return features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.forward_features(x)[-1])
