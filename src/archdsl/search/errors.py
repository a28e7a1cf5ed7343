"""The search's own user-facing error: located and one paragraph, like every `SpecError`.

It subclasses `SpecError` so a command that prints spec errors (file:line: path: message, no
traceback, non-zero exit) prints these the same way. An option's problem is located at the
option as the user wrote it (`--budget 2GFLOPz`, `--dataset /no/such/dir`); a problem in a
space file at its file, line and YAML path.
"""

from __future__ import annotations

from dataclasses import dataclass

from archdsl.errors import Location, Problem, SpecError


@dataclass(frozen=True)
class OptionProblem(Problem):
    """A problem with a command-line option or argument: no YAML path to print."""

    def __str__(self) -> str:
        return f"{self.location}: {self.message}" if self.location else self.message


class SearchError(SpecError):
    """A search that cannot start or go on: a bad option, an empty space, an unreachable cluster."""


def option_error(option: str, value, message: str) -> SearchError:
    where = option if value is None else f"{option} {value}"
    return SearchError(OptionProblem(message, (), Location(where)))
