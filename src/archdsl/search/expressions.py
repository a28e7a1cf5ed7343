"""`{expr: ...}` values in a search space: small arithmetic over what a sample has already chosen.

A derived value lets a space say "this candidate's channels are its share of the stage width"
or "one head per 32 channels", so that a choice of width or of candidates carries the values
that depend on it. Expressions are parsed with Python's `ast` and evaluated over a fixed set
of names and functions; nothing else (attributes, subscripts, imports, keyword calls) parses.

Names (each where it makes sense; using one elsewhere is a located error):

* `size`: the input height in pixels (`input.size`, or the search's `--img-size`);
* `stage`, `width`, `depth`: the enclosing stage's index, width and depth;
* `share`: inside a mixer candidate, its share of the width: the whole width when the mixer's
  fusion takes every candidate at full width (`sum`), else an even split of what the other
  candidates leave, in multiples of 8, the last candidate taking the remainder
  (`concat_projection`);
* `channels`: inside a candidate, its own channels (after they are derived);
* `parts`: the number of candidates of the mixer; `fusion`: the fusion's op name.

Functions: `min`, `max`, `round`, `int`, `abs`, `multiple(x, m)` (x rounded down to a multiple
of m, at least m) and `divisor(n, near)` (the divisor of n nearest to `near` on a log scale,
the larger on a tie: `blocks.layers.nearest_divisor`, the rule the ops use; for
heads that must divide the channels).
"""

from __future__ import annotations

import ast
import math
import operator
from dataclasses import dataclass

from archdsl.blocks.layers import nearest_divisor

NAMES = {"size", "stage", "width", "depth", "share", "channels", "parts", "fusion"}


def multiple(value: float, step: float) -> int:
    step = int(step)
    return max(step, int(value) // step * step)


def divisor(number: float, near: float) -> int:
    return nearest_divisor(int(number), float(near))


FUNCTIONS = {"min": min, "max": max, "round": round, "int": int, "abs": abs, "multiple": multiple, "divisor": divisor}

_BINARY = {
    ast.Add: operator.add,
    ast.Sub: operator.sub,
    ast.Mult: operator.mul,
    ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv,
    ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos, ast.Not: operator.not_}
_COMPARE = {
    ast.Eq: operator.eq,
    ast.NotEq: operator.ne,
    ast.Lt: operator.lt,
    ast.LtE: operator.le,
    ast.Gt: operator.gt,
    ast.GtE: operator.ge,
}


class ExpressionError(ValueError):
    """What is wrong with an expression; the space turns it into a located problem."""


@dataclass(frozen=True)
class Expression:
    text: str
    tree: ast.Expression
    names: frozenset[str]

    def evaluate(self, names: dict):
        missing = sorted(name for name in self.names if names.get(name) is None)
        if missing:
            available = sorted(name for name, value in names.items() if value is not None)
            raise ExpressionError(
                f"`{'`, `'.join(missing)}` is not defined here; names defined here: {', '.join(available) or 'none'}"
            )
        try:
            value = _evaluate(self.tree.body, names)
        except ZeroDivisionError:
            raise ExpressionError(f"{self.text!r} divides by zero with {self._values(names)}") from None
        except (TypeError, ValueError, OverflowError) as error:
            raise ExpressionError(f"{self.text!r} cannot be computed with {self._values(names)}: {error}") from None
        if isinstance(value, float) and math.isfinite(value) and value == int(value):
            value = int(value)  # `width / 2` -> 24, not 24.0, so integer fields accept it
        return value

    def _values(self, names: dict) -> str:
        return ", ".join(f"{name}={names[name]!r}" for name in sorted(self.names)) or "no names"


def parse_expression(text) -> Expression:
    """Parse `text` (a string or a number) or raise `ExpressionError` saying what is allowed."""
    if isinstance(text, bool) or not isinstance(text, (str, int, float)):
        raise ExpressionError(f'an expression is a string such as "width // 2", found {text!r}')
    source = str(text)
    try:
        tree = ast.parse(source, mode="eval")
    except SyntaxError as error:
        raise ExpressionError(f"cannot parse expression {source!r}: {error.msg}") from None
    names: set[str] = set()
    for node in ast.walk(tree):
        _allowed(node, source)
        if isinstance(node, ast.Name) and not _is_function_position(node, tree):
            if node.id not in NAMES:
                raise ExpressionError(f"unknown name {node.id!r} in {source!r}; names: {', '.join(sorted(NAMES))}")
            names.add(node.id)
    return Expression(source, tree, frozenset(names))


def _is_function_position(name: ast.Name, tree: ast.AST) -> bool:
    return any(isinstance(node, ast.Call) and node.func is name for node in ast.walk(tree))


def _allowed(node: ast.AST, source: str) -> None:
    simple = (
        ast.Expression,
        ast.Constant,
        ast.Name,
        ast.Load,
        ast.BinOp,
        ast.UnaryOp,
        ast.BoolOp,
        ast.Compare,
        ast.IfExp,
        ast.And,
        ast.Or,
        *_BINARY,
        *_UNARY,
        *_COMPARE,
    )
    if isinstance(node, simple):
        if isinstance(node, ast.Constant) and not isinstance(node.value, (int, float, str)):
            raise ExpressionError(f"constant {node.value!r} is not allowed in {source!r}")
        return
    if isinstance(node, ast.Call):
        if not isinstance(node.func, ast.Name) or node.func.id not in FUNCTIONS or node.keywords:
            raise ExpressionError(
                f"only calls of {', '.join(sorted(FUNCTIONS))} with positional arguments are allowed, in {source!r}"
            )
        return
    raise ExpressionError(
        f"{type(node).__name__} is not allowed in {source!r}: use arithmetic, comparisons, "
        f"`a if cond else b` and the functions {', '.join(sorted(FUNCTIONS))}"
    )


def _evaluate(node: ast.AST, names: dict):
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        return names[node.id]
    if isinstance(node, ast.BinOp):
        return _BINARY[type(node.op)](_evaluate(node.left, names), _evaluate(node.right, names))
    if isinstance(node, ast.UnaryOp):
        return _UNARY[type(node.op)](_evaluate(node.operand, names))
    if isinstance(node, ast.BoolOp):
        values = (_evaluate(value, names) for value in node.values)
        return all(values) if isinstance(node.op, ast.And) else any(values)
    if isinstance(node, ast.Compare):
        left = _evaluate(node.left, names)
        for op, right_node in zip(node.ops, node.comparators):
            right = _evaluate(right_node, names)
            if not _COMPARE[type(op)](left, right):
                return False
            left = right
        return True
    if isinstance(node, ast.IfExp):
        return _evaluate(node.body, names) if _evaluate(node.test, names) else _evaluate(node.orelse, names)
    if isinstance(node, ast.Call):
        return FUNCTIONS[node.func.id](*(_evaluate(arg, names) for arg in node.args))
    raise ExpressionError(f"cannot evaluate {type(node).__name__}")
