"""The one error type a user of the language sees, and where in the YAML it points."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Location:
    """Where a value came from: a file (or `--set` override) with 1-based line and column."""

    file: str
    line: int | None = None
    column: int | None = None
    via: str | None = None  # the spec that inherited this value through `extends:`

    def __str__(self) -> str:
        where = self.file if self.line is None else f"{self.file}:{self.line}:{self.column}"
        return where if self.via is None else f"{where} (inherited by {self.via})"


def format_path(path: tuple) -> str:
    """`('stages', 2, 'mixer', 'candidates', 1, 'kernel')` -> `stages[2].mixer.candidates[1].kernel`."""
    text = ""
    for part in path:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text or "<root>"


@dataclass(frozen=True)
class Problem:
    message: str
    path: tuple = ()
    location: Location | None = None

    def __str__(self) -> str:
        where = f"{self.location}: " if self.location else ""
        what = f"{format_path(self.path)}: " if self.path else ""
        return f"{where}{what}{self.message}"


class SpecError(ValueError):
    """A spec (or a checkpoint for it) is wrong; each problem names file, line, YAML path and a fix."""

    def __init__(self, problems: list[Problem] | Problem):
        self.problems = [problems] if isinstance(problems, Problem) else list(problems)
        super().__init__("\n".join(str(problem) for problem in self.problems))


class CheckpointError(SpecError):
    """Weights that do not fit the spec they are loaded into."""
