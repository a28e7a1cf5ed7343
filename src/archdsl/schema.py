"""The spec language as pydantic models, and pydantic errors turned into located `SpecError`s.

Structure (stem, stages, blocks, mixer) is fixed here; what may fill each slot is whatever ops
are registered for its role, chosen by the `op:` field (a discriminated union). A bare string
is shorthand for an op with default parameters: `norm: group_norm` == `norm: {op: group_norm}`.
"""

from __future__ import annotations

import difflib
import functools
import reprlib
import types
import typing
from typing import Annotated, Any, Optional, Union

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PositiveFloat,
    PositiveInt,
    PrivateAttr,
    ValidationError,
)

from archdsl.errors import Problem, SpecError
from archdsl.loading import LoadedSpec, SourceMap
from archdsl.network import Residual
from archdsl.norms import NormName
from archdsl.ops import Op, on_registry_change, ops_for


def _shorthand(value: Any) -> Any:
    return {"op": value} if isinstance(value, str) else value


def op_slot(role: str, optional: bool = False):
    """The annotation of a field that holds one op of `role` (or null, if `optional`).

    The shorthand validator wraps the whole union, None included: outside it, pydantic would
    try `None` first and never see a bare op name."""
    classes = tuple(ops_for(role).values())
    if not classes:
        raise RuntimeError(f"no ops are registered for role {role!r}")
    union = Union[classes] if len(classes) > 1 else classes[0]  # noqa: UP007  (built at run time)
    if optional:
        union = Optional[union]  # noqa: UP045
    if len(classes) == 1:
        return Annotated[union, BeforeValidator(_shorthand)]
    # the discriminator must come before the validator: the other way round pydantic nests the
    # whole union under every tag, and one wrong value is reported once per op type
    return Annotated[union, Field(discriminator="op"), BeforeValidator(_shorthand)]


# Validation time must not grow with the numbers in a spec (an op's check may list a size's
# divisors): every integer is capped far above what any network here could use.
MAX_INTEGER = 2**24
MAX_IMAGE_SIDE = 65536  # a 65536² image's first feature map alone is hundreds of GB
MAX_STAGE_DEPTH = 10_000  # lowering visits every block

ImageSide = Annotated[int, Field(gt=0, le=MAX_IMAGE_SIDE)]


def _no_boolean(value: Any) -> Any:
    """pydantic reads true as 1.0 where a float is expected; a scale written as a boolean is a mistake."""
    if isinstance(value, bool):
        raise ValueError(f"expected a positive number such as 1.0e-6, not the boolean {str(value).lower()}")
    return value


# a layer scale's initial value (a number; YAML's 1e-6, which it reads as text, is taken as 1.0e-6)
LayerScaleValue = Annotated[PositiveFloat, BeforeValidator(_no_boolean)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


@functools.cache
def spec_models() -> types.SimpleNamespace:
    """Build the language's models from the ops registered now (rebuilt when that changes)."""

    class Input(Strict):
        channels: PositiveInt = Field(3, description="image channels (3 for RGB)")
        size: ImageSide | tuple[ImageSide, ImageSide] = Field(
            224, description="input side N, or [height, width]; `--img-size` overrides it"
        )

        @property
        def hw(self) -> tuple[int, int]:
            return (self.size, self.size) if isinstance(self.size, int) else tuple(self.size)

    class Mixer(Strict):
        """The token mixer: context candidates, each reading the block's input; one fusion rule."""

        candidates: Annotated[
            list[op_slot("candidate")],
            Field(min_length=1, description="context candidates, each reading the block's normalised input"),
        ]
        fusion: op_slot("fusion") = Field("sum", validate_default=True, description="how the candidates' outputs are joined")
        interactions: list[op_slot("interaction")] = Field(
            [], description="gates from one candidate onto another's values or output"
        )
        pad_multiple: PositiveInt | None = Field(
            None,
            description="zero-pad the normalised map (bottom, right) to a multiple of this before the candidates run; crop after",
        )

    class Block(Strict):
        """x + mixer(norm(x)), then x + ffn(norm(x)): pre-norm residuals; or, `residual: whole_block`,
        x + ffn(norm(mixer(x)))."""

        mixer: Mixer = Field(description="the token mixer: candidates and their fusion")
        ffn: op_slot("ffn", optional=True) = Field(None, description="the feed-forward network after the mixer (none when null)")
        norm: NormName = Field(
            "layer_norm", description="the norm before the mixer and before the FFN (whole_block: between them)"
        )
        residual: Residual = Field(
            "per_branch",
            description="per_branch: x + mixer(norm(x)), then x + ffn(norm(x)) (pre-norm transformers); whole_block: "
            "x + ffn(norm(mixer(x))), one residual around both and no norm before the mixer (ConvNeXt); it needs an ffn",
        )
        layer_scale: LayerScaleValue | None = Field(
            None,
            description="a learned per-channel scale on each residual branch, every channel starting at this value "
            "(CaiT, ConvNeXt: 1.0e-6); none when null",
        )

    class Stage(Strict):
        width: PositiveInt = Field(description="channels of the stage's blocks")
        depth: Annotated[int, Field(gt=0, le=MAX_STAGE_DEPTH, description="number of blocks")]
        downsample: op_slot("downsample", optional=True) = Field(
            None, description="the op that brings the previous map to this stage's width and size (none when null)"
        )
        blocks: Annotated[list[Block], Field(min_length=1, description="block pattern, repeated to fill `depth`")]

    class Spec(Strict):
        name: str | None = Field(None, description="the network's name")
        family: str | None = Field(None, description="selects the weight converter for the authors' checkpoints")
        description: str | None = Field(None, description="free text")
        input: Input = Field(Input(), description="the input image: channels and size")
        stem: op_slot("stem") = Field(description="the op that turns the image into the first feature map")
        stages: Annotated[
            list[Stage], Field(min_length=1, description="the stages, in order; each may downsample, then runs its blocks")
        ]
        head: op_slot("head") = Field(description="the classifier on the last stage's map")
        drop_path_rate: Annotated[
            float, Field(ge=0.0, lt=1.0, description="stochastic depth, rising linearly to this over the blocks")
        ] = 0.0
        # where each value was written, so that errors found after validation point at YAML lines
        _sources: SourceMap | None = PrivateAttr(None)

        @property
        def image_size(self) -> tuple[int, int]:
            return self.input.hw

        def block_at(self, stage: int, index: int) -> Block:
            pattern = self.stages[stage].blocks
            return pattern[index % len(pattern)]

    return types.SimpleNamespace(Spec=Spec, Stage=Stage, Block=Block, Mixer=Mixer, Input=Input)


on_registry_change(spec_models.cache_clear)


def json_schema(space: bool = False) -> dict:
    """The language as a JSON Schema (Draft 2020-12), for editors: a spec, or one with `extends:`
    (then every key is optional and a mapping of list indices patches an inherited list), or with
    `space`, a search space (any value may be a choice node: choice, range, subset, expr)."""
    generated = spec_models().Spec.model_json_schema(ref_template="#/$defs/{model}")
    defs = generated.pop("$defs")
    defs["Spec"] = generated
    for definition in defs.values():  # `op:` selects the op the rest of the mapping configures
        if "const" in definition.get("properties", {}).get("op", {}):
            definition["properties"]["op"]["description"] = (
                definition.get("description") or definition["properties"]["op"]["const"]
            ).split("\n")[0]
    op_names = {
        name: definition["properties"]["op"]["const"]
        for name, definition in defs.items()
        if "const" in definition.get("properties", {}).get("op", {})
    }
    defs = {name: _with_shorthand(definition, op_names) for name, definition in defs.items()}
    if space:
        spaced = {f"Space{name}": _variant(definition, "Space", _with_choice_nodes) for name, definition in defs.items()}
        spaced["SpaceSpec"]["properties"]["search"] = {
            "type": "object",
            "additionalProperties": False,
            "description": "the space's defaults for `archdsl search`",
            "properties": {
                "budget": {"type": ["string", "number"], "description": "FLOP budget, such as 2GFLOPs"},
                "max_params": {"type": ["string", "number"], "description": "parameter budget, such as 10M"},
            },
        }
        return _with_extends({**defs, **spaced}, "SpaceSpec", "archdsl search space")
    return _with_extends(defs, "Spec", "archdsl spec")


def _with_extends(defs: dict, root: str, title: str) -> dict:
    """The schema of `root`, or, when the file has `extends:`, of a patch of it."""
    partial = {f"Partial{name}": _variant(definition, "Partial", _as_patch) for name, definition in defs.items()}
    partial[f"Partial{root}"]["properties"]["extends"] = {
        "description": "base file(s), relative to this file; this file's values win, a mapping of list indices patches an "
        "inherited list",
        "anyOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}],
    }
    return {
        "$schema": _DRAFT,
        "title": title,
        "$defs": {**defs, **partial},
        "if": {"required": ["extends"]},
        "then": {"$ref": f"#/$defs/Partial{root}"},
        "else": {"$ref": f"#/$defs/{root}"},
    }


_DRAFT = "https://json-schema.org/draft/2020-12/schema"


def _op_refs(node: dict, op_names: dict[str, str]) -> list[str]:
    """The op names an op slot's schema admits (none if it is not an op slot)."""
    refs = [node] if "$ref" in node else node.get("oneOf", [])
    names = [op_names.get(ref.get("$ref", "").rsplit("/", 1)[-1]) for ref in refs]
    return names if names and all(names) else []


def _with_shorthand(node: Any, op_names: dict[str, str]) -> Any:
    """Every op slot also takes the op's bare name (`norm: group_norm`)."""
    if isinstance(node, list):
        return [_with_shorthand(item, op_names) for item in node]
    if not isinstance(node, dict):
        return node
    names = _op_refs(node, op_names)
    if names:
        slot = {key: value for key, value in node.items() if key != "description"}
        shorthand = {"type": "string", "enum": names, "description": "an op's name: the op with its default parameters"}
        return {**({"description": node["description"]} if "description" in node else {}), "anyOf": [slot, shorthand]}
    return {key: _with_shorthand(value, op_names) for key, value in node.items()}


def _variant(node: Any, prefix: str, transform) -> Any:
    """A copy of a schema whose local references point at the `prefix` variants of their
    definitions and whose every sub-schema went through `transform`."""
    if isinstance(node, list):
        return [_variant(item, prefix, transform) for item in node]
    if not isinstance(node, dict):
        return node
    copied = {key: _variant(value, prefix, transform) for key, value in node.items()}
    if "$ref" in copied:
        copied["$ref"] = copied["$ref"].replace("#/$defs/", f"#/$defs/{prefix}")
    return transform(copied)


def _as_patch(node: dict) -> dict:
    """Under `extends:` nothing is required, an op may be patched without naming it, and a list
    may be patched by index (`stages: {2: {depth: 8}}`)."""
    node = {key: value for key, value in node.items() if key not in ("required", "discriminator")}
    if "oneOf" in node:
        node["anyOf"] = node.pop("oneOf")
    if node.get("type") == "array":
        items = node.get("items", {})
        by_index = {
            "type": "object",
            "patternProperties": {"^-?[0-9]+$": items},
            "additionalProperties": False,
            "description": "patches of the inherited list's items, by index",
        }
        return {"description": node.get("description", ""), "anyOf": [node, by_index]}
    return node


_CHOICE_NODES = [
    {
        "type": "object",
        "required": ["range"],
        "additionalProperties": False,
        "description": "a number drawn from [low, high]",
        "properties": {
            "range": {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2, "description": "[low, high]"},
            "step": {"type": "number", "description": "spacing of the values drawn"},
            "log": {"type": "boolean", "description": "draw on a log scale"},
        },
    },
    {
        "type": "object",
        "required": ["expr"],
        "additionalProperties": False,
        "description": "a value derived from the sampled ones",
        "properties": {
            "expr": {"type": "string", "description": "an expression such as share or divisor(channels, channels / 16)"}
        },
    },
]


def _with_choice_nodes(node: dict) -> dict:
    """In a search space a value may be drawn: a choice among options, a range, a subset of a
    list, or an expression of other drawn values."""
    if "properties" not in node or node.get("type") != "object":
        return node
    properties = {}
    for name, value in node["properties"].items():
        alternatives = [
            value,
            {
                "type": "object",
                "required": ["choice"],
                "additionalProperties": False,
                "description": "one of the options, drawn by the search",
                # an option may itself be drawn or derived, as the space's grammar allows
                "properties": {
                    "choice": {
                        "type": "array",
                        "minItems": 1,
                        "items": {"anyOf": [value, *_CHOICE_NODES]},
                        "description": "the options",
                    }
                },
            },
            *_CHOICE_NODES,
        ]
        if value.get("type") == "array":
            alternatives.append(
                {
                    "type": "object",
                    "required": ["subset"],
                    "additionalProperties": False,
                    "description": "some of the items, drawn by the search",
                    "properties": {
                        "subset": value,
                        "size": {
                            "description": "[fewest, most] items drawn",
                            "anyOf": [{"type": "integer"}, {"type": "array", "items": {"type": "integer"}}],
                        },
                    },
                }
            )
        properties[name] = {"description": value.get("description", ""), "anyOf": alternatives}
    return {**node, "properties": properties}


# --- pydantic errors -> located problems ------------------------------------------------------


def _strip_tags(loc: tuple, data: Any) -> tuple:
    """Pydantic's error locations include union branch names; keep only real YAML keys."""
    path: list = []
    node = data
    for part in loc:
        if isinstance(node, dict) and part in node:
            node = node[part]
            path.append(part)
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
            path.append(part)
    return tuple(path)


def _unwrap(annotation: Any) -> list[Any]:
    """The model classes an annotation can hold (through Optional, list, Annotated, Union)."""
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _unwrap(typing.get_args(annotation)[0])
    if origin in (list, tuple, Union, types.UnionType):
        return [m for arg in typing.get_args(annotation) for m in _unwrap(arg)]
    return [annotation] if isinstance(annotation, type) and issubclass(annotation, BaseModel) else []


def model_at(path: tuple, data: Any) -> type[BaseModel] | None:
    """The pydantic model that validates the mapping at `path`."""
    model: type[BaseModel] | None = spec_models().Spec
    node = data
    for part in path:
        if isinstance(part, int):
            node = node[part] if isinstance(node, list) and 0 <= part < len(node) else None
            continue
        if model is None or part not in model.model_fields:
            return None
        candidates = _unwrap(model.model_fields[part].annotation)
        node = node.get(part) if isinstance(node, dict) else None
        model = _pick(candidates, node)
    return model


def _pick(candidates: list, node: Any) -> type[BaseModel] | None:
    if isinstance(node, list):
        node = node[0] if node else None
    node = _shorthand(node)
    if len(candidates) == 1:
        return candidates[0]
    if isinstance(node, dict):
        for model in candidates:
            if issubclass(model, Op) and model.model_fields["op"].default == node.get("op"):
                return model
    return None


def _did_you_mean(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(str(word), choices, n=2, cutoff=0.5)
    return f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def _slot_ops(path: tuple, data: Any) -> list[str]:
    """The op names that may fill the slot at `path` (none if it is not an op slot)."""
    while path and isinstance(path[-1], int):
        path = path[:-1]
    parent = model_at(path[:-1], data) if path else None
    if parent is None or path[-1] not in parent.model_fields:
        return []
    return sorted(m.model_fields["op"].default for m in _unwrap(parent.model_fields[path[-1]].annotation) if issubclass(m, Op))


_shortener = reprlib.Repr()  # a found value is shown, not printed whole
_shortener.maxlist = _shortener.maxdict = 4
_shortener.maxstring = _shortener.maxother = 40
_short = _shortener.repr

# pydantic's error types for "a mapping was expected here"
_NOT_A_MAPPING = ("model_type", "model_attributes_type", "dict_type")


def _problem_from(error: dict, loaded: LoadedSpec) -> Problem:
    path = _strip_tags(error["loc"], loaded.data)
    kind = error["type"]
    ctx = error.get("ctx", {})
    if kind == "extra_forbidden":
        key = error["loc"][-1]
        parent = model_at(path[:-1], loaded.data)
        valid = [name for name in parent.model_fields if name != "op"] if parent else []
        valid_text = f" Valid keys here: {', '.join(valid)}." if valid else ""
        message = f"unknown key {key!r}.{_did_you_mean(key, valid)}{valid_text}"
        path = path if path and path[-1] == key else path + (key,)
    elif kind in ("union_tag_invalid", "union_tag_not_found"):
        names = _slot_ops(path, loaded.data)
        if kind == "union_tag_invalid":
            message = f"unknown op {ctx.get('tag')!r}.{_did_you_mean(ctx.get('tag'), names)} Valid ops here: {', '.join(names)}."
            path = path + ("op",)
        else:
            message = f"missing `op:`; write `op: NAME` with one of the ops valid here: {', '.join(names)}."
    elif kind == "missing":
        message = f"required key {error['loc'][-1]!r} is missing"
        path = path + (error["loc"][-1],)
    elif kind in _NOT_A_MAPPING:
        found = error.get("input")
        ops = _slot_ops(path, loaded.data)
        model = model_at(path, loaded.data)
        if ops:
            expected = f"an op: its name (one of {', '.join(ops)}) or a mapping with `op:` and its parameters"
        elif model is not None:
            expected = f"a mapping with the keys {', '.join(model.model_fields)}"
        else:
            expected = "a mapping"
        message = f"expected {expected}; found {_describe(found)}"
    elif kind == "list_type":
        message = f"expected a list (- item lines, or [a, b]); found {_describe(error.get('input'))}"
    else:
        message = f"{error['msg'][0].lower()}{error['msg'][1:]}; found {_short(error.get('input'))}"
    return Problem(message, path, loaded.sources.locate(path))


def _oversized(data: Any, path: tuple, loaded: LoadedSpec) -> list[Problem]:
    if isinstance(data, dict):
        return [problem for key, value in data.items() for problem in _oversized(value, path + (key,), loaded)]
    if isinstance(data, list):
        return [problem for index, value in enumerate(data) for problem in _oversized(value, path + (index,), loaded)]
    if isinstance(data, int) and not isinstance(data, bool) and abs(data) > MAX_INTEGER:
        return [
            Problem(
                f"{data:,} is beyond any size a network can use: widths, channels, heads, kernels, classes and other "
                f"counts are at most {MAX_INTEGER:,} (2^24)",
                path,
                loaded.sources.locate(path),
            )
        ]
    return []


def _describe(value: Any) -> str:
    kind = {dict: "a mapping", list: "a list", str: "the text", bool: "the boolean"}.get(type(value), "the value")
    if isinstance(value, (dict, list)):
        kind += f" of {len(value)} items"
    return f"{kind} {_short(value)}"


def validate(loaded: LoadedSpec):
    """Validate loaded data into a `Spec`, or raise a `SpecError` naming every problem's line."""
    oversized = _oversized(loaded.data, (), loaded)
    if oversized:
        raise SpecError(oversized)
    try:
        spec = spec_models().Spec.model_validate(loaded.data)
    except ValidationError as error:
        problems: list[Problem] = []
        seen: set[tuple] = set()
        for item in error.errors(include_url=False):
            problem = _problem_from(item, loaded)
            # a union of int / pair reports once per branch: one problem per path is enough
            if problem.path not in seen:
                seen.add(problem.path)
                problems.append(problem)
        raise SpecError(problems) from None
    spec._sources = loaded.sources
    return spec
