"""Resolving a space into one concrete spec: each choice node is replaced by what the chooser
picks (recording the configuration and where each value was written), then the `expr:` values
are derived from what was chosen, stage by stage and mixer by mixer (`width`, `depth`,
`stage`, `size`, and in a mixer `parts`, `fusion`, `share`, `channels`)."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from archdsl.errors import Problem
from archdsl.loading import LoadedSpec, SourceMap
from archdsl.ops import ops_for
from archdsl.schema import validate
from archdsl.search.choosers import Chooser
from archdsl.search.errors import SearchError
from archdsl.search.expressions import ExpressionError
from archdsl.search.grammar import Choice, Derived, Range, Subset, is_number

SHARE_MULTIPLE = 8


@dataclass
class _Pending:
    """A derived value waiting for the names it reads (after every choice is made)."""

    derived: Derived


@dataclass
class Sample:
    """One point of a space: the searcher's view (`config`) and the concrete spec it makes."""

    config: dict
    data: dict
    sources: SourceMap
    origin: str

    def spec(self):
        """The validated `Spec` (a located `SpecError` pointing into the space file if not valid)."""
        return validate(LoadedSpec(copy.deepcopy(self.data), self.sources, self.origin))


class Resolver:
    def __init__(self, chooser: Chooser, space_sources: SourceMap):
        self.chooser = chooser
        self.space_sources = space_sources
        self.sources = SourceMap(default=space_sources.default)
        self.config: dict = {}

    def mark(self, spath: tuple, qpath: tuple) -> None:
        location = self.space_sources.locate(spath)
        if location is not None:
            self.sources.locations[qpath] = location

    def resolve(self, node: Any, spath: tuple, qpath: tuple) -> Any:
        self.mark(spath, qpath)
        if isinstance(node, Choice):
            label = self.chooser.categorical(node.name, node.labels)
            index = self._index(node, node.labels, label)
            self.config[node.name] = label
            return self.resolve(node.options[index], node.path + ("choice", index), qpath)
        if isinstance(node, Range):
            if node.integer:
                value = self.chooser.integer(node.name, int(node.low), int(node.high), int(node.step), node.log)
            else:
                value = self.chooser.real(node.name, float(node.low), float(node.high), node.step, node.log)
            if not (node.low <= value <= node.high) or isinstance(value, bool):
                raise SearchError(
                    Problem(
                        f"value {value!r} for {node.name} is outside its range [{node.low}, {node.high}]",
                        qpath,
                        self.space_sources.locate(node.path),
                    )
                )
            self.config[node.name] = value
            return value
        if isinstance(node, Subset):
            return self._subset(node, qpath)
        if isinstance(node, Derived):
            return _Pending(node)
        if isinstance(node, dict):
            return {key: self.resolve(value, spath + (key,), qpath + (key,)) for key, value in node.items()}
        if isinstance(node, list):
            result: list = []
            for index, item in enumerate(node):
                if isinstance(item, Subset):
                    result.extend(self._subset(item, qpath, start=len(result)))
                else:
                    result.append(self.resolve(item, spath + (index,), qpath + (len(result),)))
            return result
        return copy.deepcopy(node)

    def _subset(self, node: Subset, qpath: tuple, start: int = 0) -> list:
        label = self.chooser.categorical(node.name, node.labels)
        combo = node.combos[self._index(node, node.labels, label)]
        self.config[node.name] = label
        return [self.resolve(node.items[i], node.path + ("subset", i), qpath + (start + j,)) for j, i in enumerate(combo)]

    def _index(self, node, labels: list, label) -> int:
        for index, candidate in enumerate(labels):
            if candidate == label and type(candidate) is type(label) or (candidate == label and is_number(label)):
                return index
        raise SearchError(
            Problem(
                f"{label!r} is not an option of {node.name}; its options: {', '.join(map(repr, labels))}",
                node.path,
                self.space_sources.locate(node.path),
            )
        )


def _evaluate(value: Any, names: dict, qpath: tuple, resolver: Resolver) -> Any:
    if isinstance(value, _Pending):
        try:
            return value.derived.expression.evaluate(names)
        except ExpressionError as error:
            raise SearchError(Problem(str(error), qpath, resolver.space_sources.locate(value.derived.path + ("expr",)))) from None
    if isinstance(value, dict):
        return {key: _evaluate(item, names, qpath + (key,), resolver) for key, item in value.items()}
    if isinstance(value, list):
        return [_evaluate(item, names, qpath + (index,), resolver) for index, item in enumerate(value)]
    return value


def _image_height(data: dict) -> int | None:
    size = data.get("input", {}).get("size", 224) if isinstance(data.get("input", {}), dict) else 224
    if isinstance(size, list) and size:
        size = size[0]
    return size if isinstance(size, int) else None


def _op_name(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("op"), str):
        return value["op"]
    return None


def _takes_full_width(fusion: Any) -> bool:
    """Does this fusion take every candidate at the full width (sum), or a split of it (concat)?
    The fusion op declares it, so the search names no fusion op; an unknown one is reported by
    validation, with its location."""
    fusion_class = ops_for("fusion").get(_op_name(fusion) or "sum")
    return fusion_class is None or not fusion_class.splits_width


def _derive_mixer(mixer: dict, names: dict, qpath: tuple, resolver: Resolver) -> dict:
    candidates = mixer.get("candidates")
    if not isinstance(candidates, list):
        return _evaluate(mixer, names, qpath, resolver)
    fusion = mixer.get("fusion", "sum")
    width = names.get("width")
    mixer_names = {**names, "parts": len(candidates), "fusion": _op_name(fusion)}
    path = qpath + ("candidates",)
    channels: list = [None] * len(candidates)
    sharing = []
    for index, candidate in enumerate(candidates):
        value = candidate.get("channels") if isinstance(candidate, dict) else None
        if isinstance(value, _Pending) and "share" in value.derived.expression.names:
            sharing.append(index)
        else:
            channels[index] = _evaluate(value, mixer_names, path + (index, "channels"), resolver)
    if sharing and isinstance(width, int):
        if _takes_full_width(fusion):
            shares = [width] * len(sharing)
        else:
            left = width - sum(c if isinstance(c, int) else width for i, c in enumerate(channels) if i not in sharing)
            base = max(SHARE_MULTIPLE, left // len(sharing) // SHARE_MULTIPLE * SHARE_MULTIPLE)
            shares = [base] * (len(sharing) - 1) + [left - base * (len(sharing) - 1)]
        for index, share in zip(sharing, shares):
            channels[index] = _evaluate(
                candidates[index]["channels"], {**mixer_names, "share": share}, path + (index, "channels"), resolver
            )
    resolved = []
    for index, candidate in enumerate(candidates):
        if isinstance(candidate, dict):
            own = channels[index] if channels[index] is not None else width
            candidate = {
                key: (
                    channels[index]
                    if key == "channels"
                    else _evaluate(value, {**mixer_names, "channels": own}, path + (index, key), resolver)
                )
                for key, value in candidate.items()
            }
        resolved.append(candidate)
    rest = {key: value for key, value in mixer.items() if key != "candidates"}
    return {"candidates": resolved, **_evaluate(rest, mixer_names, qpath, resolver)}


def derive(data: dict, resolver: Resolver) -> dict:
    """The `expr:` values of resolved data, evaluated where they stand."""
    size = _image_height(data)
    top = {"size": size}
    result = {}
    for key, value in data.items():
        if key != "stages" or not isinstance(value, list):
            result[key] = _evaluate(value, top, (key,), resolver)
            continue
        stages = []
        for index, stage in enumerate(value):
            if not isinstance(stage, dict):
                stages.append(stage)
                continue
            names = {**top, "stage": index}
            qpath = ("stages", index)
            width = _evaluate(stage.get("width"), names, qpath + ("width",), resolver)
            depth = _evaluate(stage.get("depth"), {**names, "width": width}, qpath + ("depth",), resolver)
            names.update(width=width if isinstance(width, int) else None, depth=depth if isinstance(depth, int) else None)
            resolved = {}
            for key2, item in stage.items():
                if key2 == "width":
                    resolved[key2] = width
                elif key2 == "depth":
                    resolved[key2] = depth
                elif key2 == "blocks" and isinstance(item, list):
                    resolved[key2] = [
                        {
                            k: (
                                _derive_mixer(v, names, qpath + ("blocks", b, k), resolver)
                                if k == "mixer" and isinstance(v, dict)
                                else _evaluate(v, names, qpath + ("blocks", b, k), resolver)
                            )
                            for k, v in block.items()
                        }
                        if isinstance(block, dict)
                        else block
                        for b, block in enumerate(item)
                    ]
                else:
                    resolved[key2] = _evaluate(item, names, qpath + (key2,), resolver)
            stages.append(resolved)
        result[key] = stages
    return result
