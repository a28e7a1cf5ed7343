"""The explorer: FLOP-budgeted search of hybrid backbones on Ray Tune (installed as `archdsl.search`).

`run_search(...)` is the entry point (the `archdsl search` command calls it with one
`SearchSettings`); `load_space` reads a search space; `parse_flops` / `parse_params` read
budgets as people write them.
"""

from archdsl.search.budget import format_flops, parse_flops, parse_params
from archdsl.search.errors import SearchError
from archdsl.search.objectives import OBJECTIVES, Objective
from archdsl.search.records import SearchProgress
from archdsl.search.runner import SearchResult, run_search
from archdsl.search.searchers import SEARCHERS
from archdsl.search.settings import SearchSettings
from archdsl.search.space import SearchSpace, load_space

__all__ = [
    "run_search",
    "SearchSettings",
    "SearchProgress",
    "SearchResult",
    "SearchError",
    "load_space",
    "SearchSpace",
    "parse_flops",
    "parse_params",
    "format_flops",
    "OBJECTIVES",
    "Objective",
    "SEARCHERS",
]
