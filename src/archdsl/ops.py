"""What an op is, and the registry that makes the language's vocabulary.

An op is one pydantic model holding four things side by side:

* its **parameters**: the model's fields, validated from YAML (`op:` picks the class);
* its **shape rule**: `output_shape(site)`;
* its **FLOP rule**: `flops(site)`, in fvcore's convention (one multiply-add = one FLOP);
* its **module**: `build(site)` returns the `nn.Module`.

Plus `check(site)` for what can only be judged once shapes are known (a window larger than
its map, heads that do not divide the channels). Registering an op (`@register`) adds it to
the schema, the graph and the compiler; none of those name any op.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, NonNegativeInt, PositiveInt

ROLES = ("stem", "downsample", "candidate", "interaction", "fusion", "ffn", "head")


Layout = Literal["map", "tokens"]


@dataclass(frozen=True)
class FeatureShape:
    """A feature's shape without the batch dimension, with its layout.

    Layout "map": a B×C×H×W tensor. Layout "tokens": the height×width map plus `extra_tokens`
    (a class token) that no pixel owns, carried as a B×C×1×(extra_tokens + height·width) row,
    the extra tokens first and the map's pixels after them row-major. Only ops that declare
    `runs_on_tokens` (channel-wise maths, global attention) may run on it; the graph refuses
    the others, which would mistake the row for a map."""

    channels: int
    height: int
    width: int
    extra_tokens: int = 0

    @property
    def layout(self) -> Layout:
        return "tokens" if self.extra_tokens else "map"

    @property
    def tokens(self) -> int:
        """Every position an op sees: the map's pixels and the extra tokens."""
        return self.extra_tokens + self.height * self.width

    @property
    def numel(self) -> int:
        return self.channels * self.tokens

    @property
    def map_size(self) -> tuple[int, int]:
        return self.height, self.width

    @property
    def tensor_size(self) -> tuple[int, int, int]:
        """The (C, H, W) sizes of the tensor that carries this shape."""
        return (self.channels, self.height, self.width) if self.layout == "map" else (self.channels, 1, self.tokens)

    def with_channels(self, channels: int) -> FeatureShape:
        return replace(self, channels=channels)

    def padded(self, multiple: int) -> FeatureShape:
        """The map zero-padded on the bottom and right to sides that are multiples of `multiple`
        (itself where they are): what `network.pad_to_multiple` makes of the tensor."""
        return replace(self, height=-(-self.height // multiple) * multiple, width=-(-self.width // multiple) * multiple)

    def __str__(self) -> str:
        return f"{self.channels}x{self.height}x{self.width}{extra_tokens_text(self.extra_tokens)}"


def extra_tokens_text(count: int) -> str:
    """What a shape's text adds for its extra tokens: " + 1 token", " + 2 tokens", or nothing."""
    return f" + {count} token{'s' if count > 1 else ''}" if count else ""


@dataclass(frozen=True)
class Site:
    """Where an op is instantiated: what flows in, what must flow out, and its context."""

    in_shape: FeatureShape
    out_channels: int
    image_size: tuple[int, int]
    stage: int = 0
    # channels of each candidate, for a fusion rule; empty for every other role
    parts: tuple[int, ...] = ()


class OpCheckError(ValueError):
    """Raised by `Op.check`: the message says what is wrong and what would work; `field`
    names the op's parameter at fault so the error points at its YAML line."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


# What an op can declare in `capabilities`, each read by the graph:
# * "value_gate" (a candidate): its module uses `value_gate=`, a (B, channels, 1, 1) gate that an
#   interaction with applies_to "values" multiplies onto its values;
# * "replaces_previous_ffn" (a downsample): it is the previous block's FFN run with a stride
#   (CloFormer), so that block has no FFN of its own;
# * "runs_on_tokens": its maths ignores where a position sits (per-position layers, global
#   attention), so it may run on the "tokens" layout (see `FeatureShape`); every other op is
#   refused there.
Capability = Literal["value_gate", "replaces_previous_ffn", "runs_on_tokens"]

# fvcore's handle signature: (the traced node's inputs, its outputs) -> FLOPs
FlopHandle = Callable[[list[Any], list[Any]], int]


class Op(BaseModel):
    """Base of every op. Subclasses set `op: Literal["name"] = "name"` and `role`."""

    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)

    role: ClassVar[str]
    # what the graph may rely on beyond its role's contract (see `Capability`)
    capabilities: ClassVar[frozenset[Capability]] = frozenset()
    # aten op -> FLOP rule, for ops this op's module runs that fvcore does not count; cost.py
    # collects them from every registered op (see `FlopHandle`)
    fvcore_handles: ClassVar[Mapping[str, FlopHandle]] = {}

    def output_shape(self, site: Site) -> FeatureShape:
        return site.in_shape.with_channels(site.out_channels)

    def check(self, site: Site) -> None:
        """Raise `OpCheckError` if this op cannot run at `site`."""

    def flops(self, site: Site) -> int:
        raise NotImplementedError(f"op {self.op!r} has no FLOP rule")

    def build(self, site: Site):
        raise NotImplementedError(f"op {self.op!r} has no module")


class CandidateOp(Op):
    """A context candidate: reads the block's whole input, writes `channels` (its share of the
    block width; the whole width when omitted)."""

    role: ClassVar[str] = "candidate"
    # Side channels (SG-Former's significance map): the name of the map this candidate's module
    # returns beside its features, and of the map its forward receives as `context=`. An op that
    # emits or consumes redeclares them as fields, so a spec can name or switch off the channel.
    emits: ClassVar[str | None] = None
    consumes: ClassVar[str | None] = None
    channels: PositiveInt | None = None
    """output channels: this candidate's share of the block width (the whole width when omitted)"""

    def feature_shape(self, site: Site) -> FeatureShape:
        """What interactions whose source is this candidate read (its output, unless its
        module has a `finish` step after the features)."""
        return self.output_shape(site)


# pydantic warns when a field shadows a base attribute; for `emits`/`consumes` that is the protocol
warnings.filterwarnings(
    "ignore", message=r'Field name "(emits|consumes)" in ".*" shadows an attribute in parent', category=UserWarning
)


class DownsampleOp(Op):
    role: ClassVar[str] = "downsample"


class InteractionOp(Op):
    """A gate from candidate `source` onto candidate `target` of the same mixer: onto its
    values (the target's module takes `value_gate=`) or onto its output."""

    role: ClassVar[str] = "interaction"
    applies_to: ClassVar[Literal["values", "output"]] = "output"
    source: NonNegativeInt
    """index of the candidate the gate is computed from"""
    target: NonNegativeInt
    """index of the candidate the gate is applied to"""


_REGISTRY: dict[str, dict[str, type[Op]]] = {role: {} for role in ROLES}
_listeners: list[Callable[[], None]] = []


def register(cls: type[Op]) -> type[Op]:
    """Class decorator: add an op to the language under its `op` name and `role`."""
    role = cls.role
    if role not in _REGISTRY:
        raise ValueError(f"{cls.__name__}: role must be one of {ROLES}, not {role!r}")
    name = cls.model_fields["op"].default
    if not isinstance(name, str):
        raise ValueError(f"{cls.__name__}: declare `op: Literal['name'] = 'name'`")
    existing = _REGISTRY[role].get(name)
    if existing is not None and existing is not cls:
        raise ValueError(
            f"op {name!r} ({role}) is already registered by {existing.__module__}.{existing.__qualname__}; "
            f"{cls.__module__}.{cls.__qualname__} needs another name (or `unregister({role!r}, {name!r})` first)"
        )
    _REGISTRY[role][name] = cls
    for listener in _listeners:
        listener()
    return cls


def unregister(role: str, name: str) -> None:
    _REGISTRY[role].pop(name, None)
    for listener in _listeners:
        listener()


def ops_for(role: str) -> dict[str, type[Op]]:
    import archdsl.blocks  # noqa: F401  (registers the bundled ops)
    from archdsl.plugins import load_configured_plugins

    load_configured_plugins()

    return dict(_REGISTRY[role])


def registered_ops() -> list[type[Op]]:
    """Every registered op, of every role."""
    return [cls for role in ROLES for cls in ops_for(role).values()]


def on_registry_change(listener: Callable[[], None]) -> None:
    _listeners.append(listener)
