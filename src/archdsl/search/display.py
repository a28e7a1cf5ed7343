"""A live terminal display of a running search, for `archdsl search` (rich).

with LiveProgress() as show:
    run_search(..., progress=show)
"""

from __future__ import annotations

from rich.console import Console
from rich.live import Live
from rich.table import Table

from archdsl.search.budget import format_flops
from archdsl.search.records import SearchProgress


class LiveProgress:
    """Shown from the search's first progress report on, so that an error found before the
    search starts is printed alone."""

    def __init__(self, console: Console | None = None):
        self.console = console or Console(stderr=True)
        self.live: Live | None = None

    def _render(self, progress: SearchProgress) -> Table:
        table = Table.grid(padding=(0, 2))
        rejected = ", ".join(f"{count} {kind.replace('_', ' ')}" for kind, count in sorted(progress.rejected_by.items()))
        epoch = "" if progress.best_epoch is None else f", epoch {progress.best_epoch}"
        best = (
            "-"
            if progress.best_score is None
            else (f"{progress.best_score:.5g} ({progress.best_trial}, {format_flops(progress.best_flops or 0)}{epoch})")
        )
        for line in progress.plan:
            table.add_row("plan", line)
        table.add_row("phase", progress.phase, "elapsed", f"{progress.elapsed:.0f}s")
        table.add_row("done", f"{progress.done}/{progress.samples}", "running", str(progress.running))
        table.add_row("failed", str(progress.failed), "rejected", f"{progress.rejected}" + (f" ({rejected})" if rejected else ""))
        table.add_row("best so far", best)
        return table

    def __call__(self, progress: SearchProgress) -> None:
        if self.live is None:
            self.live = Live(self._render(progress), console=self.console, refresh_per_second=4, transient=False)
            self.live.__enter__()
        else:
            self.live.update(self._render(progress))

    def __enter__(self) -> LiveProgress:
        return self

    def __exit__(self, *exc) -> None:
        if self.live is not None:
            self.live.__exit__(*exc)
