"""A search space: a parsed space file (`grammar`), sampled through a chooser (`choosers`) into
concrete specs (`derivation`), with its own budget settings.

A space is loaded like a spec (`extends:` a paper variant and patch a few of its values with
choices; `--set` overrides), and validated like one: every option of every choice is resolved
at least once and validated by the spec schema, so an unknown op or key in any option is an
error at its file, line and YAML path before anything runs. An optional top-level `search:`
mapping holds the space's default `budget:` and `max_params:`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from archdsl.errors import Location, Problem
from archdsl.loading import SourceMap, load_data
from archdsl.search.budget import parse_flops, parse_params
from archdsl.search.choosers import Chooser, ConfigChooser, FixedChooser
from archdsl.search.derivation import Resolver, Sample, derive
from archdsl.search.errors import SearchError

# Choice, Derived and Subset are not used here: a search's saved state (Ray Tune's searcher
# pickle) holds its SearchSpace with the tree's nodes, and one saved before they moved to
# `grammar` names them in this module, so `--resume` finds them here
from archdsl.search.grammar import Choice, Derived, Range, Subset, located_error, parse_tree, walk  # noqa: F401

SETTINGS_KEYS = ("budget", "max_params")


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
        resolver = Resolver(chooser, self.sources)
        data = resolver.resolve(self.tree, (), ())
        if img_size is not None:
            data.setdefault("input", {})
            if isinstance(data["input"], dict):
                data["input"] = {**data["input"], "size": img_size}
                resolver.sources.locations[("input", "size")] = Location("--img-size")
        data = derive(data, resolver)
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
        for parameter, ancestors in walk(self.tree):
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
        raise located_error(
            f"`search:` is a mapping with keys {', '.join(SETTINGS_KEYS)}; found {settings!r}", ("search",), sources
        )
    for key in settings:
        if key not in SETTINGS_KEYS:
            raise located_error(
                f"unknown key {key!r} in `search:`; valid keys: {', '.join(SETTINGS_KEYS)}", ("search", key), sources
            )
    budget = max_params = None
    for key, parse in (("budget", parse_flops), ("max_params", parse_params)):
        if settings.get(key) is None:
            continue
        try:
            value = parse(settings[key], where=f"search.{key}")
        except SearchError as error:
            raise located_error(error.problems[0].message, ("search", key), sources) from None
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
    tree = parse_tree(data, (), loaded.sources)
    space = SearchSpace(tree, loaded.sources, loaded.origin, budget, max_params)
    space.parameters = [parameter for parameter, _ in walk(tree)]
    for chooser in space.coverage():
        space.sample(chooser).spec()  # raises a SpecError located in the space file
    return space
