"""The explorer: FLOP-budgeted search of hybrid backbones on Ray Tune (installed as `archdsl.search`).

`run_search(...)` is the entry point (the `archdsl search` command calls it with one
`SearchSettings`); `load_space` reads a search space; `parse_flops` / `parse_params` read
budgets as people write them.
"""

import importlib

# each public name and the module that holds it: imported on first use, so that the light parts
# (settings, budgets) do not bring in Ray Tune and torch (the CLI reads SearchSettings at start-up)
_EXPORTS = {
    "run_search": "runner",
    "SearchResult": "runner",
    "SearchSettings": "settings",
    "SearchProgress": "records",
    "SearchError": "errors",
    "load_space": "space",
    "SearchSpace": "space",
    "parse_flops": "budget",
    "parse_params": "budget",
    "format_flops": "budget",
    "OBJECTIVES": "objectives",
    "Objective": "objectives",
    "SEARCHERS": "searchers",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'archdsl.search' has no attribute {name!r}")
    return getattr(importlib.import_module(f"archdsl.search.{_EXPORTS[name]}"), name)
