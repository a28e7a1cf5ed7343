"""A search space: a spec with choices in it, in the same YAML language.

Anywhere a spec has a value, a space may write a *choice node* instead (these four keys are
reserved in space files):

* `{choice: [a, b, c]}`: one of the options. Options can be anything a spec can hold there,
  mappings included, and may contain further choice nodes: those are *conditional*, sampled
  only when their option is chosen (a window size inside the window-attention option exists
  only when window attention is drawn).
* `{range: [low, high], step: s, log: false}`: an integer (both ends integers) or a float.
* `{subset: [item, ...], size: [min, max]}`: a non-empty subset of the items, kept in order,
  as a list (`size` defaults to 1..all). In a list it is spliced in, so fixed and optional
  entries mix: `candidates: [{op: attn_conv, ...}, {subset: [...], size: [0, 1]}]` is not
  allowed (a subset has at least one item) but `candidates: {subset: [...]}` is the usual form.
* `{expr: "width // 2"}`: a value derived from what was chosen (see `expressions.py`).

An optional top-level `search:` mapping holds the space's default `budget:` and
`max_params:`. A space is loaded like a spec (`extends:` a paper variant and patch a few of its
values with choices; `--set` overrides), and validated like one: every option of every choice
is resolved at least once and validated by the spec schema, so an unknown op or key in any
option is an error at its file, line and YAML path before anything runs.

Each choice is one searcher parameter named by its YAML path (`stages[1].depth`,
`stages[2].blocks[0].mixer.candidates`); a searcher's configuration (choice name -> value)
replays to exactly one concrete spec.
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from archdsl.errors import Location, Problem, format_path
from archdsl.loading import LoadedSpec, SourceMap, load_data
from archdsl.ops import ops_for
from archdsl.schema import validate
from archdsl.search.budget import parse_flops, parse_params
from archdsl.search.errors import SearchError
from archdsl.search.expressions import Expression, ExpressionError, parse_expression

NODE_KEYS = {"choice": {"choice"}, "range": {"range", "step", "log"}, "subset": {"subset", "size"}, "expr": {"expr"}}
SETTINGS_KEYS = ("budget", "max_params")
MAX_SUBSETS = 4096
SHARE_MULTIPLE = 8


# --- the nodes of a parsed space ------------------------------------------------------------------


@dataclass
class Choice:
    path: tuple
    options: list
    labels: list

    @property
    def name(self) -> str:
        return format_path(self.path)


@dataclass
class Range:
    path: tuple
    low: float
    high: float
    step: float | None
    log: bool
    integer: bool

    @property
    def name(self) -> str:
        return format_path(self.path)


@dataclass
class Subset:
    path: tuple
    items: list
    combos: list[tuple[int, ...]]
    labels: list[str]

    @property
    def name(self) -> str:
        return format_path(self.path)


@dataclass
class Derived:
    path: tuple
    expression: Expression


@dataclass
class _Pending:
    """A derived value waiting for the names it reads (after every choice is made)."""

    derived: Derived


Parameter = Choice | Range | Subset


class Chooser(Protocol):
    """Makes the choices of one sample: a random generator, an Optuna trial, a stored config."""

    def categorical(self, name: str, labels: list) -> Any: ...

    def integer(self, name: str, low: int, high: int, step: int, log: bool) -> int: ...

    def real(self, name: str, low: float, high: float, step: float | None, log: bool) -> float: ...


class RandomChooser:
    """Uniform over each choice's options (log-uniform for `log: true` ranges)."""

    def __init__(self, rng):
        self.rng = rng

    def categorical(self, name, labels):
        return labels[int(self.rng.integers(len(labels)))]

    def integer(self, name, low, high, step, log):
        if log:
            value = math.exp(self.rng.uniform(math.log(low), math.log(high + 1)))
            return int(min(high, max(low, math.floor(value))))
        return int(low + step * self.rng.integers((high - low) // step + 1))

    def real(self, name, low, high, step, log):
        value = math.exp(self.rng.uniform(math.log(low), math.log(high))) if log else self.rng.uniform(low, high)
        if step:
            value = min(high, low + round((value - low) / step) * step)
        return float(value)


class OptunaChooser:
    """Asks an Optuna trial (define-by-run), so model-based samplers see every choice by name."""

    def __init__(self, trial):
        self.trial = trial

    def categorical(self, name, labels):
        return self.trial.suggest_categorical(name, labels)

    def integer(self, name, low, high, step, log):
        return self.trial.suggest_int(name, low, high, step=step, log=log)

    def real(self, name, low, high, step, log):
        return self.trial.suggest_float(name, low, high, step=step, log=log)


class ConfigChooser:
    """Replays a stored configuration (choice name -> value)."""

    def __init__(self, config: Mapping):
        self.config = config

    def _get(self, name):
        if name not in self.config:
            raise SearchError(
                Problem(
                    f"this configuration has no value for the choice {name!r}: was the space changed since the "
                    f"search started? Its choices: {', '.join(sorted(self.config)) or 'none'}",
                    (),
                    Location("config"),
                )
            )
        return self.config[name]

    def categorical(self, name, labels):
        return self._get(name)

    def integer(self, name, low, high, step, log):
        return self._get(name)

    def real(self, name, low, high, step, log):
        return self._get(name)


class FixedChooser:
    """Given values for some choices, the first option (or the low end) for the rest."""

    def __init__(self, fixed: Mapping | None = None, fallback: Chooser | None = None):
        self.fixed = dict(fixed or {})
        self.fallback = fallback

    def categorical(self, name, labels):
        if name in self.fixed:
            return self.fixed[name]
        return self.fallback.categorical(name, labels) if self.fallback else labels[0]

    def integer(self, name, low, high, step, log):
        if name in self.fixed:
            return self.fixed[name]
        return self.fallback.integer(name, low, high, step, log) if self.fallback else low

    def real(self, name, low, high, step, log):
        if name in self.fixed:
            return self.fixed[name]
        return self.fallback.real(name, low, high, step, log) if self.fallback else low


# --- parsing ----------------------------------------------------------------------------------------


def _error(message: str, path: tuple, sources: SourceMap) -> SearchError:
    return SearchError(Problem(message, path, sources.locate(path)))


def _label(value: Any, index: int, kind: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, dict) and isinstance(value.get("op"), str):
        return value["op"]
    return f"{kind}{index}"


def _unique(labels: list[str]) -> list[str]:
    counts: dict[str, int] = {}
    for label in labels:
        counts[label] = counts.get(label, 0) + 1
    return [f"{label}#{index}" if counts[label] > 1 else label for index, label in enumerate(labels)]


def _parse(value: Any, path: tuple, sources: SourceMap):
    if isinstance(value, dict):
        kinds = [kind for kind in NODE_KEYS if kind in value]
        if len(kinds) > 1:
            raise _error(f"a mapping can be one choice node, but this has {' and '.join(kinds)} keys", path, sources)
        if kinds:
            kind = kinds[0]
            extra = sorted(set(value) - NODE_KEYS[kind], key=str)
            if extra:
                raise _error(
                    f"unknown key {extra[0]!r} in a `{kind}` node; its keys are {', '.join(sorted(NODE_KEYS[kind]))} "
                    f"(choice, range, subset and expr are reserved in search spaces)",
                    path + (extra[0],),
                    sources,
                )
            return _PARSERS[kind](value, path, sources)
        return {key: _parse(item, path + (key,), sources) for key, item in value.items()}
    if isinstance(value, list):
        return [_parse(item, path + (index,), sources) for index, item in enumerate(value)]
    return value


def _parse_choice(node: dict, path: tuple, sources: SourceMap) -> Choice:
    options = node["choice"]
    if not isinstance(options, list) or not options:
        raise _error(
            f"`choice` takes a non-empty list of options, such as [32, 48, 64]; found {options!r}", path + ("choice",), sources
        )
    parsed = [_parse(option, path + ("choice", index), sources) for index, option in enumerate(options)]
    scalar = all(option is None or isinstance(option, (bool, int, float, str)) for option in options)
    if scalar:
        seen = set()
        for index, option in enumerate(options):
            key = (type(option).__name__, option)
            if key in seen:
                raise _error(f"option {option!r} appears twice in this choice", path + ("choice", index), sources)
            seen.add(key)
        labels = list(options)
    else:
        labels = _unique([_label(option, index, "option") for index, option in enumerate(options)])
    return Choice(path, parsed, labels)


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _parse_range(node: dict, path: tuple, sources: SourceMap) -> Range:
    bounds, step, log = node["range"], node.get("step"), node.get("log", False)
    if not (isinstance(bounds, list) and len(bounds) == 2 and all(_number(b) for b in bounds)):
        raise _error(f"`range` takes [low, high], such as [2, 8]; found {bounds!r}", path + ("range",), sources)
    low, high = bounds
    if low > high:
        raise _error(f"range [{low}, {high}] is empty: low is above high", path + ("range",), sources)
    if step is not None and not (_number(step) and step > 0):
        raise _error(f"`step` is a positive number; found {step!r}", path + ("step",), sources)
    if not isinstance(log, bool):
        raise _error(f"`log` is true or false; found {log!r}", path + ("log",), sources)
    integer = isinstance(low, int) and isinstance(high, int) and (step is None or isinstance(step, int))
    if log and low <= 0:
        raise _error(f"a log range needs low > 0; found {low}", path + ("range",), sources)
    if log and step not in (None, 1):
        raise _error("a log range cannot have a step other than 1", path + ("step",), sources)
    if integer:
        step = step or 1
        if (high - low) % step:
            raise _error(
                f"step {step} does not reach {high} from {low}; use a high of {low + (high - low) // step * step}",
                path + ("range",),
                sources,
            )
    return Range(path, low, high, step, log, integer)


def _parse_subset(node: dict, path: tuple, sources: SourceMap) -> Subset:
    items = node["subset"]
    if not isinstance(items, list) or not items:
        raise _error(f"`subset` takes a non-empty list of items; found {items!r}", path + ("subset",), sources)
    size = node.get("size", [1, len(items)])
    if isinstance(size, int) and not isinstance(size, bool):
        size = [size, size]
    if not (
        isinstance(size, list)
        and len(size) == 2
        and all(isinstance(s, int) and not isinstance(s, bool) for s in size)
        and 1 <= size[0] <= size[1] <= len(items)
    ):
        raise _error(
            f"`size` is N or [min, max] with 1 <= min <= max <= {len(items)} (the number of items); found {size!r}",
            path + ("size",),
            sources,
        )
    parsed = [_parse(item, path + ("subset", index), sources) for index, item in enumerate(items)]
    combos = [combo for count in range(size[0], size[1] + 1) for combo in itertools.combinations(range(len(items)), count)]
    if len(combos) > MAX_SUBSETS:
        raise _error(
            f"this subset has {len(combos)} combinations (more than {MAX_SUBSETS}); limit them with `size`",
            path + ("size",),
            sources,
        )
    item_labels = _unique([_label(item, index, "item") for index, item in enumerate(items)])
    labels = ["+".join(item_labels[i] for i in combo) for combo in combos]
    return Subset(path, parsed, combos, labels)


def _parse_expr(node: dict, path: tuple, sources: SourceMap) -> Derived:
    try:
        return Derived(path, parse_expression(node["expr"]))
    except ExpressionError as error:
        raise _error(str(error), path + ("expr",), sources) from None


_PARSERS = {"choice": _parse_choice, "range": _parse_range, "subset": _parse_subset, "expr": _parse_expr}


def _walk(tree: Any, ancestors: tuple = ()):
    """Every parameter with the (parameter, value) pairs its ancestors must take for it to be drawn."""
    if isinstance(tree, Choice):
        yield tree, ancestors
        for label, option in zip(tree.labels, tree.options):
            yield from _walk(option, ancestors + ((tree, label),))
    elif isinstance(tree, Subset):
        yield tree, ancestors
        for index, item in enumerate(tree.items):
            combo = min((c for c in tree.combos if index in c), key=len)
            yield from _walk(item, ancestors + ((tree, tree.labels[tree.combos.index(combo)]),))
    elif isinstance(tree, Range):
        yield tree, ancestors
    elif isinstance(tree, dict):
        for value in tree.values():
            yield from _walk(value, ancestors)
    elif isinstance(tree, list):
        for value in tree:
            yield from _walk(value, ancestors)


# --- resolution ------------------------------------------------------------------------------------


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


class _Resolver:
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
            if candidate == label and type(candidate) is type(label) or (candidate == label and _number(label)):
                return index
        raise SearchError(
            Problem(
                f"{label!r} is not an option of {node.name}; its options: {', '.join(map(repr, labels))}",
                node.path,
                self.space_sources.locate(node.path),
            )
        )


def _evaluate(value: Any, names: dict, qpath: tuple, resolver: _Resolver) -> Any:
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


def _derive_mixer(mixer: dict, names: dict, qpath: tuple, resolver: _Resolver) -> dict:
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


def _derive(data: dict, resolver: _Resolver) -> dict:
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


# --- the space ---------------------------------------------------------------------------------------


@dataclass
class SearchSpace:
    """A parsed, validated search space."""

    tree: dict
    sources: SourceMap
    origin: str
    budget: int | None = None
    max_params: int | None = None
    parameters: list = field(default_factory=list)

    @property
    def name(self) -> str:
        name = self.tree.get("name")
        return name if isinstance(name, str) else Path(self.origin).stem

    @property
    def image_size(self):
        input_ = self.tree.get("input", {})
        return input_.get("size", 224) if isinstance(input_, dict) else 224

    def sample(self, chooser: Chooser, img_size=None) -> Sample:
        """Make every choice with `chooser` and derive the dependent values: a concrete spec."""
        resolver = _Resolver(chooser, self.sources)
        data = resolver.resolve(self.tree, (), ())
        if img_size is not None:
            data.setdefault("input", {})
            if isinstance(data["input"], dict):
                data["input"] = {**data["input"], "size": img_size}
                resolver.sources.locations[("input", "size")] = Location("--img-size")
        data = _derive(data, resolver)
        return Sample(resolver.config, data, resolver.sources, self.origin)

    def resolve(self, config: Mapping, img_size=None) -> Sample:
        """Replay a configuration (choice name -> value) into its concrete spec."""
        return self.sample(ConfigChooser(config), img_size)

    def size(self) -> float:
        """How many configurations, counting conditional choices as if always drawn (an upper bound)."""
        total = 1.0
        for parameter in self.parameters:
            if isinstance(parameter, Range):
                total *= ((parameter.high - parameter.low) // parameter.step + 1) if parameter.integer else float("inf")
            else:
                total *= len(parameter.labels)
        return total

    def coverage(self):
        """Configurations that between them draw every option of every choice (each at least
        once, its ancestors forced to the options that contain it)."""
        seen = set()
        for parameter, ancestors in _walk(self.tree):
            fixed = {ancestor.name: label for ancestor, label in ancestors}
            values = [parameter.low, parameter.high] if isinstance(parameter, Range) else parameter.labels
            for value in values:
                config = {**fixed, parameter.name: int(value) if isinstance(parameter, Range) and parameter.integer else value}
                key = repr(sorted(config.items(), key=lambda item: item[0]))
                if key not in seen:
                    seen.add(key)
                    yield FixedChooser(config)
        if not seen:
            yield FixedChooser()


def _settings(data: dict, sources: SourceMap) -> tuple[int | None, int | None]:
    settings = data.pop("search", None)
    if settings is None:
        return None, None
    if not isinstance(settings, dict):
        raise _error(f"`search:` is a mapping with keys {', '.join(SETTINGS_KEYS)}; found {settings!r}", ("search",), sources)
    for key in settings:
        if key not in SETTINGS_KEYS:
            raise _error(f"unknown key {key!r} in `search:`; valid keys: {', '.join(SETTINGS_KEYS)}", ("search", key), sources)
    budget = max_params = None
    for key, parse in (("budget", parse_flops), ("max_params", parse_params)):
        if settings.get(key) is None:
            continue
        try:
            value = parse(settings[key], where=f"search.{key}")
        except SearchError as error:
            raise _error(error.problems[0].message, ("search", key), sources) from None
        budget, max_params = (value, max_params) if key == "budget" else (budget, value)
    return budget, max_params


DEFAULT_SPACE = "search/hybrid"


def load_space(source: str | Path | Mapping | None = None, overrides=None) -> SearchSpace:
    """A space file, bundled name (`hybrid`) or mapping -> a validated `SearchSpace`.

    None loads the bundled default space (specs/search/hybrid.yaml). Raises a located
    `SpecError` for anything a spec would reject, and for malformed choice nodes."""
    loaded = load_data(DEFAULT_SPACE if source is None else source, overrides)
    data = loaded.data
    if not isinstance(data, dict):
        raise SearchError(Problem("a search space is a YAML mapping like a spec", (), loaded.sources.locate(())))
    budget, max_params = _settings(data, loaded.sources)
    tree = _parse(data, (), loaded.sources)
    space = SearchSpace(tree, loaded.sources, loaded.origin, budget, max_params)
    space.parameters = [parameter for parameter, _ in _walk(tree)]
    for chooser in space.coverage():
        space.sample(chooser).spec()  # raises a SpecError located in the space file
    return space
