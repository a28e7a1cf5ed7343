"""Budgets as people write them: `2GFLOPs`, `2G`, `600M`, `0.6GFLOPs`, `2GMACs`; `10M` parameters.

A FLOP budget may name the input size it is counted at: `2GFLOPs@224`, `600M@160x192`. The
architectures searched are then those that cost at most that at that size, whatever
`--img-size` they are trained or scored at (without `@`, the space's own `input.size`).

This project counts one multiply-add as one FLOP (fvcore's convention, the one the four papers
print), so `2GMACs` and `2GFLOPs` are the same budget. A bad budget is a located
`SearchError` naming the option it came from and what would be valid.
"""

from __future__ import annotations

import re

from archdsl.search.errors import option_error

_SCALE = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}
_FLOP_UNITS = ("flops", "flop", "macs", "mac", "madds", "madd", "multadds", "multiply-adds")
_PARAM_UNITS = ("params", "param", "parameters", "p")
_AT = re.compile(r"^\s*(?P<height>\d+)\s*(?:x\s*(?P<width>\d+)\s*)?$", re.IGNORECASE)
_NUMBER = r"(?P<number>(?:\d+(?:\.\d*)?|\.\d+)(?:e[+-]?\d+)?)"
_PATTERN = re.compile(_NUMBER + r"\s*(?P<scale>[kmgt]?)\s*(?P<unit>[a-z-]*)$", re.IGNORECASE)

FLOPS_HELP = (
    "a FLOP budget such as 2GFLOPs, 2G, 600M, 0.6GFLOPs or 2GMACs; one multiply-add counts as one FLOP "
    "(fvcore's convention, the papers'), so GMACs and GFLOPs are the same number here; @224 or @224x288 after it "
    "names the input size the budget is counted at (default: the space's input.size)"
)
PARAMS_HELP = "a parameter budget such as 10M, 3.5M, 500K or 12000000"


def _parse(text: str | int | float, units: tuple[str, ...], what: str, where: str, help_text: str) -> int:
    if isinstance(text, bool):
        raise option_error(where, text, f"{what} {text!r} is not a number; give {help_text}")
    if isinstance(text, (int, float)):
        value = float(text)
    else:
        match = _PATTERN.match(str(text).strip())
        unit = match.group("unit").lower() if match else ""
        if match is None or unit not in ("",) + units:
            hint = ""
            if match is not None and unit in (_PARAM_UNITS if units is _FLOP_UNITS else _FLOP_UNITS):
                hint = f" ({unit!r} is a unit of the other budget)"
            raise option_error(where, text, f"cannot read {what} {text!r}{hint}: give {help_text}")
        value = float(match.group("number")) * _SCALE[match.group("scale").lower()]
    if not value > 0 or value != value or value == float("inf"):
        raise option_error(where, text, f"{what} {text!r} must be a positive, finite amount; give {help_text}")
    return int(round(value))


class FlopBudget(int):
    """A FLOP count, and the input size it is counted at (`at`: N, [H, W], or None for the space's)."""

    at: int | list[int] | None

    def __new__(cls, flops: int, at: int | list[int] | None = None):
        budget = super().__new__(cls, flops)
        budget.at = at
        return budget

    def __reduce__(self):
        return FlopBudget, (int(self), self.at)


def _parse_at(text: str, whole, where: str) -> int | list[int]:
    match = _AT.match(text)
    if match is None or int(match.group("height")) < 1 or (match.group("width") and int(match.group("width")) < 1):
        raise option_error(
            where,
            whole,
            f"cannot read the input size {text.strip()!r} after '@': give a positive N or HxW, "
            f"such as 2GFLOPs@224 or 2GFLOPs@224x288",
        )
    height, width = int(match.group("height")), match.group("width")
    return height if width is None or int(width) == height else [height, int(width)]


def parse_flops(text: str | int | float, where: str = "--budget") -> FlopBudget:
    """`2GFLOPs` / `2G` / `600M` / `0.6GFLOPs` / `2GMACs` / `2e9` -> FLOPs (multiply-adds) as an int;
    `2GFLOPs@224` / `2G@224x288` -> the same, counted at that input size (`.at`)."""
    if isinstance(text, str) and "@" in text:
        amount, _, at = text.partition("@")
        return FlopBudget(_parse(amount, _FLOP_UNITS, "FLOP budget", where, FLOPS_HELP), _parse_at(at, text, where))
    return FlopBudget(
        _parse(text, _FLOP_UNITS, "FLOP budget", where, FLOPS_HELP), text.at if isinstance(text, FlopBudget) else None
    )


def parse_params(text: str | int | float, where: str = "--max-params") -> int:
    """`10M` / `3.5M` / `500K` / `10Mparams` / `12000000` -> a parameter count."""
    return _parse(text, _PARAM_UNITS, "parameter budget", where, PARAMS_HELP)


def format_flops(flops: int | float) -> str:
    """2_182_000_000 -> `2.18 GFLOPs`."""
    for scale, suffix in ((10**12, "T"), (10**9, "G"), (10**6, "M"), (10**3, "K")):
        if abs(flops) >= scale:
            return f"{flops / scale:.3g} {suffix}FLOPs"
    return f"{flops:.0f} FLOPs"


def format_params(params: int | float) -> str:
    for scale, suffix in ((10**9, "G"), (10**6, "M"), (10**3, "K")):
        if abs(params) >= scale:
            return f"{params / scale:.3g}{suffix}"
    return f"{params:.0f}"
