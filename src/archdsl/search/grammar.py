"""The grammar of search spaces: a spec with choices in it, in the same YAML language.

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

Each choice is one searcher parameter named by its YAML path (`stages[1].depth`,
`stages[2].blocks[0].mixer.candidates`); a searcher's configuration (choice name -> value)
replays to exactly one concrete spec.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

from archdsl.errors import Problem, format_path
from archdsl.loading import SourceMap
from archdsl.search.errors import SearchError
from archdsl.search.expressions import Expression, ExpressionError, parse_expression

NODE_KEYS = {"choice": {"choice"}, "range": {"range", "step", "log"}, "subset": {"subset", "size"}, "expr": {"expr"}}
MAX_SUBSETS = 4096


@dataclass
class Parameter:
    """A choice node that is one searcher parameter, named by its YAML path."""

    path: tuple

    @property
    def name(self) -> str:
        return format_path(self.path)


@dataclass
class Choice(Parameter):
    options: list
    labels: list


@dataclass
class Range(Parameter):
    low: float
    high: float
    step: float | None
    log: bool
    integer: bool


@dataclass
class Subset(Parameter):
    items: list
    combos: list[tuple[int, ...]]
    labels: list[str]


@dataclass
class Derived:
    path: tuple
    expression: Expression


def located_error(message: str, path: tuple, sources: SourceMap) -> SearchError:
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


def parse_tree(value: Any, path: tuple, sources: SourceMap):
    if isinstance(value, dict):
        kinds = [kind for kind in NODE_KEYS if kind in value]
        if len(kinds) > 1:
            raise located_error(f"a mapping can be one choice node, but this has {' and '.join(kinds)} keys", path, sources)
        if kinds:
            kind = kinds[0]
            extra = sorted(set(value) - NODE_KEYS[kind], key=str)
            if extra:
                raise located_error(
                    f"unknown key {extra[0]!r} in a `{kind}` node; its keys are {', '.join(sorted(NODE_KEYS[kind]))} "
                    f"(choice, range, subset and expr are reserved in search spaces)",
                    path + (extra[0],),
                    sources,
                )
            return _PARSERS[kind](value, path, sources)
        return {key: parse_tree(item, path + (key,), sources) for key, item in value.items()}
    if isinstance(value, list):
        return [parse_tree(item, path + (index,), sources) for index, item in enumerate(value)]
    return value


def _parse_choice(node: dict, path: tuple, sources: SourceMap) -> Choice:
    options = node["choice"]
    if not isinstance(options, list) or not options:
        raise located_error(
            f"`choice` takes a non-empty list of options, such as [32, 48, 64]; found {options!r}", path + ("choice",), sources
        )
    parsed = [parse_tree(option, path + ("choice", index), sources) for index, option in enumerate(options)]
    scalar = all(option is None or isinstance(option, (bool, int, float, str)) for option in options)
    if scalar:
        seen = set()
        for index, option in enumerate(options):
            key = (type(option).__name__, option)
            if key in seen:
                raise located_error(f"option {option!r} appears twice in this choice", path + ("choice", index), sources)
            seen.add(key)
        labels = list(options)
    else:
        labels = _unique([_label(option, index, "option") for index, option in enumerate(options)])
    return Choice(path, parsed, labels)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _parse_range(node: dict, path: tuple, sources: SourceMap) -> Range:
    bounds, step, log = node["range"], node.get("step"), node.get("log", False)
    if not (isinstance(bounds, list) and len(bounds) == 2 and all(is_number(b) for b in bounds)):
        raise located_error(f"`range` takes [low, high], such as [2, 8]; found {bounds!r}", path + ("range",), sources)
    low, high = bounds
    if low > high:
        raise located_error(f"range [{low}, {high}] is empty: low is above high", path + ("range",), sources)
    if step is not None and not (is_number(step) and step > 0):
        raise located_error(f"`step` is a positive number; found {step!r}", path + ("step",), sources)
    if not isinstance(log, bool):
        raise located_error(f"`log` is true or false; found {log!r}", path + ("log",), sources)
    integer = isinstance(low, int) and isinstance(high, int) and (step is None or isinstance(step, int))
    if log and low <= 0:
        raise located_error(f"a log range needs low > 0; found {low}", path + ("range",), sources)
    if log and step not in (None, 1):
        raise located_error("a log range cannot have a step other than 1", path + ("step",), sources)
    if integer:
        step = step or 1
        if (high - low) % step:
            raise located_error(
                f"step {step} does not reach {high} from {low}; use a high of {low + (high - low) // step * step}",
                path + ("range",),
                sources,
            )
    return Range(path, low, high, step, log, integer)


def _parse_subset(node: dict, path: tuple, sources: SourceMap) -> Subset:
    items = node["subset"]
    if not isinstance(items, list) or not items:
        raise located_error(f"`subset` takes a non-empty list of items; found {items!r}", path + ("subset",), sources)
    size = node.get("size", [1, len(items)])
    if isinstance(size, int) and not isinstance(size, bool):
        size = [size, size]
    if not (
        isinstance(size, list)
        and len(size) == 2
        and all(isinstance(s, int) and not isinstance(s, bool) for s in size)
        and 1 <= size[0] <= size[1] <= len(items)
    ):
        raise located_error(
            f"`size` is N or [min, max] with 1 <= min <= max <= {len(items)} (the number of items); found {size!r}",
            path + ("size",),
            sources,
        )
    parsed = [parse_tree(item, path + ("subset", index), sources) for index, item in enumerate(items)]
    combos = [combo for count in range(size[0], size[1] + 1) for combo in itertools.combinations(range(len(items)), count)]
    if len(combos) > MAX_SUBSETS:
        raise located_error(
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
        raise located_error(str(error), path + ("expr",), sources) from None


_PARSERS = {"choice": _parse_choice, "range": _parse_range, "subset": _parse_subset, "expr": _parse_expr}


def walk(tree: Any, ancestors: tuple = ()):
    """Every parameter with the (parameter, value) pairs its ancestors must take for it to be drawn."""
    if isinstance(tree, Choice):
        yield tree, ancestors
        for label, option in zip(tree.labels, tree.options):
            yield from walk(option, ancestors + ((tree, label),))
    elif isinstance(tree, Subset):
        yield tree, ancestors
        for index, item in enumerate(tree.items):
            combo = min((c for c in tree.combos if index in c), key=len)
            yield from walk(item, ancestors + ((tree, tree.labels[tree.combos.index(combo)]),))
    elif isinstance(tree, Range):
        yield tree, ancestors
    elif isinstance(tree, dict):
        for value in tree.values():
            yield from walk(value, ancestors)
    elif isinstance(tree, list):
        for value in tree:
            yield from walk(value, ancestors)
