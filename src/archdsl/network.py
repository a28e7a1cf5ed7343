"""The generic modules a compiled spec is made of: ArchNet > Stage > Block > Mixer.

Only composition lives here; every layer with weights comes from an op's `build`. Side
channels (SG-Former's significance map) travel in a dict passed from block to block, so the
data flow stays explicit and traceable.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from archdsl.errors import Problem, SpecError
from archdsl.training import group_matcher, no_weight_decay


def pad_to_multiple(x: torch.Tensor, multiple: int) -> torch.Tensor:
    """Zero-pad a (..., H, W) map on the bottom and right to sides that are multiples of
    `multiple`, as the MixFormer release pads its windows; unchanged where they already are. The
    shape rule is `FeatureShape.padded`; whoever pads crops the result back to H×W.

    Under tracing it always pads (by zero where nothing is missing): the amounts then stay
    expressions of the traced input size instead of a branch taken once, at the traced size."""
    height, width = x.shape[-2:]
    if not torch.jit.is_tracing() and height % multiple == 0 and width % multiple == 0:
        return x
    return F.pad(x, (0, (-width) % multiple, 0, (-height) % multiple))


class DropPath(nn.Module):
    """Stochastic depth per sample (identity in eval)."""

    def __init__(self, rate: float = 0.0):
        super().__init__()
        self.rate = rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.rate == 0.0 or not self.training:
            return x
        keep = 1.0 - self.rate
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"rate={self.rate}"


class CandidateModule(nn.Module):
    """Base of every context candidate's module: what a `Mixer` calls.

    `forward(x, value_gate, context)` returns the candidate's *features*: `value_gate` is a
    (B, channels, 1, 1) gate for its values when an interaction gates them (only for ops with
    the "value_gate" capability), `context` the side channel it consumes (its op's `consumes`);
    a module whose op `emits` returns (features, map). `finish(features, output_gate)` makes the
    output from the features; a subclass overrides it to act after the gate (MixFormer gates
    its branches before their final norm). Interactions always read the features."""

    def forward(self, x: torch.Tensor, value_gate: torch.Tensor | None = None, context: torch.Tensor | None = None):
        raise NotImplementedError(f"{type(self).__name__} has no forward")

    def finish(self, features: torch.Tensor, output_gate: torch.Tensor | None) -> torch.Tensor:
        return features if output_gate is None else features * output_gate


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

    Each candidate is a `CandidateModule`: its forward gives the features (and the map it
    emits, if any), its `finish` the output after any output gate. Interactions always read
    their source's features.
    """

    def __init__(
        self,
        candidates: list[nn.Module],
        fusion: nn.Module,
        interactions: list[Interaction],
        order: list[int],
        emits: list[str | None],
        consumes: list[str | None],
        pad_multiple: int | None = None,
    ):
        super().__init__()
        for candidate in candidates:
            if not isinstance(candidate, CandidateModule):
                raise TypeError(
                    f"a candidate op built {type(candidate).__name__}; a candidate's module must subclass "
                    f"archdsl.network.CandidateModule"
                )
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
            x = pad_to_multiple(x, self.pad_multiple)  # the normalised map: every candidate sees the padding
        features: list[torch.Tensor] = [x] * len(self.candidates)
        value_gates: dict[int, torch.Tensor] = {}
        for index in self.order:
            consumed = self.consumes[index]
            context = side[consumed] if consumed is not None else None
            result = self.candidates[index](x, value_gate=value_gates.get(index), context=context)
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
                    gate = (
                        interaction(features[interaction.source])
                        if gate is None
                        else gate * interaction(features[interaction.source])
                    )
            outputs.append(candidate.finish(features[index], gate))
        out = self.fusion(outputs)
        if self.pad_multiple:
            out = out[:, :, :height, :width]
        return out


# How a block's residuals run (the spec's `residual:`, see `Block`)
Residual = Literal["per_branch", "whole_block"]


class LayerScale(nn.Module):
    """A learned per-channel scale on a residual branch (CaiT's and ConvNeXt's layer scale), every
    channel starting at `initial`. Channels are dim 1 in both layouts (the map, the token row)."""

    def __init__(self, channels: int, initial: float):
        super().__init__()
        self.scale = nn.Parameter(torch.full((channels,), float(initial)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale.view(-1, 1, 1)


class Block(nn.Module):
    """Residual "per_branch": x + mixer(norm1(x)); then x + ffn(norm2(x)), unless the next stage's
    downsample is this block's FFN. Residual "whole_block" (ConvNeXt): x + ffn(norm2(mixer(x))),
    one residual around both and no norm before the mixer (`norm1` is None). A branch's
    `layer_scale1` (the mixer's) or `layer_scale2` (the FFN's) scales it before the residual add."""

    def __init__(
        self,
        norm1: nn.Module | None,
        mixer: Mixer,
        norm2: nn.Module | None,
        ffn: nn.Module | None,
        drop_path: float,
        whole_block: bool = False,
        layer_scale1: LayerScale | None = None,
        layer_scale2: LayerScale | None = None,
    ):
        super().__init__()
        self.norm1 = norm1
        self.mixer = mixer
        self.layer_scale1 = layer_scale1 if layer_scale1 is not None else nn.Identity()
        self.norm2 = norm2
        self.ffn = ffn
        self.layer_scale2 = layer_scale2 if layer_scale2 is not None else nn.Identity()
        self.whole_block = whole_block
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, side: dict[str, torch.Tensor]) -> torch.Tensor:
        if self.whole_block:
            return x + self.drop_path(self.layer_scale2(self.ffn(self.norm2(self.mixer(x, side)))))
        x = x + self.drop_path(self.layer_scale1(self.mixer(self.norm1(x), side)))
        if self.ffn is not None:
            x = x + self.drop_path(self.layer_scale2(self.ffn(self.norm2(x))))
        return x


class Stage(nn.Module):
    def __init__(self, downsample: nn.Module | None, blocks: list[Block]):
        super().__init__()
        self.downsample = downsample if downsample is not None else nn.Identity()
        self.blocks = nn.ModuleList(blocks)
        self.grad_checkpointing = False

    def forward(self, x: torch.Tensor, side: dict[str, torch.Tensor]) -> torch.Tensor:
        x = self.downsample(x)
        for block in self.blocks:
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = self._checkpointed(block, x, side)
            else:
                x = block(x, side)
        return x

    @staticmethod
    def _checkpointed(block: Block, x: torch.Tensor, side: dict[str, torch.Tensor]) -> torch.Tensor:
        """Run a block keeping none of its activations: the backward pass recomputes them. The
        recomputation must read the side channels this block read, not what later blocks wrote."""
        read = dict(side)

        def run(x: torch.Tensor) -> torch.Tensor:
            written = dict(read)
            out = block(x, written)
            side.update(written)
            return out

        return checkpoint(run, x, use_reentrant=False)


class ArchNet(nn.Module):
    """A compiled spec. `forward_features(x)` gives every stage's output (a stage in the
    "tokens" layout gives its token row; `features_only` models give maps);
    `forward(x)` gives logits (pooled features when built with `num_classes=0`).

    The fine-tuning interface follows timm's: `num_features`, `num_classes`, `get_classifier()`,
    `reset_classifier(n)`, `forward_head(x, pre_logits=)`."""

    def __init__(self, stem: nn.Module, stages: list[Stage], head: nn.Module, spec=None):
        super().__init__()
        self.stem = stem
        self.stages = nn.ModuleList(stages)
        self.head = head
        self.spec = spec  # the validated Spec it was compiled from (not a module, not in state_dict)

    @property
    def num_features(self) -> int:
        """Width of the pooled features the classifier reads (`forward_head(x, pre_logits=True)`)."""
        return self.head.num_features

    @property
    def num_classes(self) -> int:
        return self.spec.head.classes

    @property
    def pretrained_cfg(self) -> dict | None:
        """The input size and the authors' evaluation preprocessing (mean, std, crop_pct,
        interpolation) of this model's family, as timm's `pretrained_cfg`; None for a hybrid."""
        from archdsl.pretrained import pretrained_cfg

        return pretrained_cfg(self.spec)

    def get_classifier(self) -> nn.Module:
        return self.head.fc

    def reset_classifier(self, num_classes: int) -> None:
        """A new, freshly initialised classifier for `num_classes` (0: none, headless); the
        spec follows, so a saved checkpoint rebuilds this model."""
        from archdsl.api import load_spec
        from archdsl.blocks.heads import classifier  # the core imports no op at import time

        self.spec = load_spec(self.spec, {"head.classes": num_classes})
        like = next(self.parameters())
        self.head.fc = classifier(self.num_features, num_classes).to(like.device, like.dtype)

    def no_weight_decay(self) -> set[str]:
        """Parameter names to exclude from weight decay: norms, biases, position embeddings,
        relative position tables, class tokens (see archdsl.training)."""
        return no_weight_decay(self)

    def group_matcher(self, coarse: bool = False) -> dict:
        """timm's regexes grouping parameters into stem, blocks (or stages) and head, for
        layer-wise LR decay; `archdsl.training.param_groups` builds the optimizer groups."""
        return group_matcher(coarse)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block's activations in the backward pass instead of storing them."""
        for stage in self.stages:
            stage.grad_checkpointing = enable

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """The last stage's map -> logits, or the pooled features before the classifier."""
        features = self.head.pre_logits(x)
        return features if pre_logits else self.head.fc(features)

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
            raise SpecError(
                Problem(
                    f"this model was built for {built[0]}x{built[1]} inputs and cannot run on a {given[0]}x{given[1]} input "
                    f"({str(error).splitlines()[0]}); build it for that size: create_model(spec, img_size={size}) or "
                    f"`archdsl build SPEC --img-size {given[0]}x{given[1]}`",
                    where,
                    self.spec._sources.locate(where) if self.spec._sources else None,
                )
            ) from None

    def _stage_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        side: dict[str, torch.Tensor] = {}  # side channels live within a forward pass
        features = []
        for stage in self.stages:
            x = stage(x, side)
            features.append(x)
        return features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x)[-1])
