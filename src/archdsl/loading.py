"""YAML -> plain data that remembers where every value came from.

Only `yaml.SafeLoader` constructs values, so `!!python/...` tags are refused. `extends:` merges
base files (paths relative to the file that names them); overrides (`stages.2.depth=8`) apply
last. Every value's file, line and column is kept in a `SourceMap` so that validation errors
can point at the line that is wrong.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Mapping

import yaml

from archdsl.errors import Location, Problem, SpecError, format_path

BUNDLED_SPECS = "archdsl.specs"


@dataclass
class SourceMap:
    """YAML path (tuple of keys and indices) -> where that value was written."""

    locations: dict[tuple, Location] = field(default_factory=dict)
    default: Location | None = None

    def locate(self, path: tuple) -> Location | None:
        """The location of `path`, or of its nearest written ancestor."""
        path = tuple(path)
        while True:
            if path in self.locations:
                return self.locations[path]
            if not path:
                return self.default
            path = path[:-1]

    def graft(self, other: "SourceMap", prefix: tuple = ()) -> None:
        for path, location in other.locations.items():
            self.locations[prefix + path] = location

    def drop(self, prefix: tuple) -> None:
        for path in [p for p in self.locations if p[: len(prefix)] == prefix and len(p) > len(prefix)]:
            del self.locations[path]


@dataclass
class LoadedSpec:
    """A spec as data, before validation: its source map, and the file it was read from."""

    data: dict
    sources: SourceMap
    origin: str


def _mark(mark: yaml.Mark | None, file: str) -> Location:
    if mark is None:
        return Location(file)
    return Location(file, mark.line + 1, mark.column + 1)


_PLAIN_COLLECTION_TAGS = ("tag:yaml.org,2002:map", "tag:yaml.org,2002:seq")


def _refuse_tag(node: yaml.Node, path: tuple, file: str) -> SpecError:
    return SpecError(Problem(f"YAML tag {node.tag!r} is not allowed: specs are plain YAML (mappings, lists, numbers, strings)",
                             path, _mark(node.start_mark, file)))


def _construct(loader: yaml.SafeLoader, node: yaml.Node, path: tuple, sources: SourceMap, file: str) -> Any:
    sources.locations[path] = _mark(node.start_mark, file)
    if isinstance(node, (yaml.MappingNode, yaml.SequenceNode)) and node.tag not in _PLAIN_COLLECTION_TAGS:
        raise _refuse_tag(node, path, file)
    if isinstance(node, yaml.MappingNode):
        written = {id(key_node) for key_node, _ in node.value}
        loader.flatten_mapping(node)  # YAML merge keys (`<<: *anchor`) come first; keys written here override them
        result: dict = {}
        seen_written: set = set()
        for key_node, value_node in node.value:
            key = loader.construct_object(key_node, deep=True)
            if not isinstance(key, (str, int)):
                raise SpecError(Problem(f"mapping keys must be strings, found {key!r}", path, _mark(key_node.start_mark, file)))
            if id(key_node) in written:
                if key in seen_written:
                    raise SpecError(Problem(f"key {key!r} appears twice in this mapping", path + (key,), _mark(key_node.start_mark, file)))
                seen_written.add(key)
            result[key] = _construct(loader, value_node, path + (key,), sources, file)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_construct(loader, item, path + (index,), sources, file) for index, item in enumerate(node.value)]
    try:
        return loader.construct_object(node, deep=True)
    except yaml.constructor.ConstructorError:
        raise _refuse_tag(node, path, file) from None


def parse_yaml(text: str, file: str) -> tuple[Any, SourceMap]:
    """Parse one YAML document with SafeLoader, recording a location for every value."""
    sources = SourceMap(default=Location(file))
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = None if node is None else _construct(loader, node, (), sources, file)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        what = error.problem or "is not valid YAML"
        raise SpecError(Problem(f"cannot parse YAML: {what}", (), _mark(mark, file))) from None
    except yaml.YAMLError as error:
        raise SpecError(Problem(f"cannot parse YAML: {error}", (), Location(file))) from None
    finally:
        loader.dispose()
    return data, sources


def bundled_spec_names() -> list[str]:
    root = resources.files(BUNDLED_SPECS)
    return sorted(entry.name[: -len(".yaml")] for entry in root.iterdir() if entry.name.endswith(".yaml"))


def bundled_space_descriptions() -> dict[str, str]:
    """The bundled search spaces (specs/search/), each with its `description:`."""
    root = resources.files(BUNDLED_SPECS).joinpath("search")
    spaces = sorted(entry for entry in root.iterdir() if entry.name.endswith(".yaml"))
    return {entry.name[: -len(".yaml")]: str(yaml.safe_load(entry.read_text()).get("description", "")) for entry in spaces}


def bundled_spec_path(name: str) -> Path | None:
    """The file of a bundled spec or search space by name (`cloformer_xxs`, `hybrid`), if any."""
    bundled = resources.files(BUNDLED_SPECS)
    for candidate in (name, f"{name}.yaml", f"search/{name}", f"search/{name}.yaml"):
        entry = bundled.joinpath(candidate)
        if entry.is_file():
            return Path(str(entry))
    return None


def resolve_spec_path(name_or_path: str | Path) -> Path:
    """A file path as given, or a bundled spec name (`cloformer_xxs`) resolved in specs/."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    text = str(name_or_path)
    bundled = bundled_spec_path(text)
    if bundled is not None:
        return bundled
    import difflib

    close = difflib.get_close_matches(path.stem, bundled_spec_names(), n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else f" Bundled specs: {', '.join(bundled_spec_names())}."
    raise SpecError(Problem(f"no such spec file or bundled spec name {text!r}.{hint}", (), Location(text)))


def _merge(base: Any, child: Any, path: tuple, sources: SourceMap, child_sources: SourceMap) -> Any:
    """Child values win; mappings merge key by key; lists are replaced, unless the child
    writes a mapping of list indices (`stages: {2: {depth: 8}}`), which patches those items."""
    if isinstance(base, dict) and isinstance(child, dict):
        merged = dict(base)
        for key, value in child.items():
            merged[key] = _merge(base.get(key), value, path + (key,), sources, child_sources) if key in base else value
            if key not in base:
                sources.drop(path + (key,))
                _graft_subtree(sources, child_sources, path + (key,))
        return merged
    if isinstance(base, list) and isinstance(child, dict) and child and all(isinstance(k, int) for k in child):
        merged_list = list(base)
        for index, value in child.items():
            if not -len(base) <= index < len(base):
                raise SpecError(Problem(
                    f"list index {index} is out of range: the inherited list has {len(base)} items (0..{len(base) - 1})",
                    path + (index,), child_sources.locate(path + (index,))))
            index %= len(base)
            merged_list[index] = _merge(base[index], value, path + (index,), sources, child_sources)
        return merged_list
    sources.drop(path)
    _graft_subtree(sources, child_sources, path)
    return copy.deepcopy(child)


def _graft_subtree(sources: SourceMap, child_sources: SourceMap, prefix: tuple) -> None:
    for path, location in child_sources.locations.items():
        if path[: len(prefix)] == prefix:
            sources.locations[path] = location


def _load_file(path: Path, chain: tuple[Path, ...]) -> tuple[dict, SourceMap]:
    path = path.resolve()
    file = str(path)
    try:
        text = path.read_text()
    except OSError as error:
        raise SpecError(Problem(f"cannot read spec file: {error.strerror}", (), Location(file))) from None
    data, sources = parse_yaml(text, file)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SpecError(Problem(f"a spec is a YAML mapping (name:, input:, stem:, stages:, head:), found {type(data).__name__}", (), sources.locate(())))
    bases = data.pop("extends", None)
    if bases is None:
        return data, sources
    base_list = bases if isinstance(bases, list) else [bases]
    merged: dict = {}
    merged_sources = SourceMap(default=sources.default)
    for index, base in enumerate(base_list):
        at = ("extends", index) if isinstance(bases, list) else ("extends",)
        if not isinstance(base, str):
            raise SpecError(Problem(f"`extends` takes a file path or a list of them, found {base!r}", at, sources.locate(at)))
        base_path = (path.parent / base).resolve()
        if not base_path.is_file():  # then a bundled spec by name, as everywhere else a spec is named
            base_path = bundled_spec_path(base) or base_path
        if not base_path.is_file():
            raise SpecError(Problem(f"base spec {base!r} not found (looked for {base_path}, and for a bundled spec of that name); "
                                    f"paths are relative to {path.parent}", at, sources.locate(at)))
        if base_path in chain + (path,):
            cycle = " -> ".join(str(p) for p in chain + (path, base_path))
            raise SpecError(Problem(f"`extends` forms a cycle: {cycle}; a spec cannot extend itself, directly or through its bases", at, sources.locate(at)))
        base_data, base_sources = _load_file(base_path, chain + (path,))
        merged_sources.graft(base_sources)
        merged = _merge(merged, base_data, (), merged_sources, base_sources) if merged else base_data
    merged = _merge(merged, data, (), merged_sources, sources)
    return merged, merged_sources


def parse_override(text: str) -> tuple[tuple, Any]:
    """`stages.2.depth=8` -> (('stages', 2, 'depth'), 8). The value is read as YAML."""
    if "=" not in text:
        raise SpecError(Problem(f"an override is KEY=VALUE with a dotted key, such as stages.2.depth=8; found {text!r}", (), Location(f"--set {text}")))
    key, raw = text.split("=", 1)
    path = tuple(int(part) if part.lstrip("-").isdigit() else part for part in key.strip().split("."))
    value, _ = parse_yaml(raw, f"--set {text}")
    return path, value


def apply_override(data: dict, sources: SourceMap, path: tuple, value: Any, origin: str) -> None:
    target: Any = data
    for depth, part in enumerate(path[:-1]):
        here = path[: depth + 1]
        try:
            target = target[part]
        except (KeyError, IndexError, TypeError):
            raise SpecError(Problem(f"override {origin!r}: {format_path(here)} does not exist in the spec", here, Location(origin))) from None
    last = path[-1]
    if isinstance(target, list):
        if not isinstance(last, int) or not -len(target) <= last < len(target):
            raise SpecError(Problem(f"override {origin!r}: index {last} is out of range (the list has {len(target)} items)", path, Location(origin)))
    elif not isinstance(target, dict):
        raise SpecError(Problem(f"override {origin!r}: {format_path(path[:-1])} is a value, not a mapping or list", path, Location(origin)))
    target[last] = value
    sources.drop(path)
    sources.locations[path] = Location(origin)


def load_data(source: str | Path | Mapping, overrides: Iterable[str] | Mapping[str, Any] | None = None,
              sources: SourceMap | None = None) -> LoadedSpec:
    """Read a spec file, bundled name or mapping into data + source map, with extends and
    overrides applied. A mapping may bring the source map it was read with."""
    if isinstance(source, Mapping):
        data = copy.deepcopy(dict(source))
        sources = copy.deepcopy(sources) if sources is not None else SourceMap(default=Location("<dict>"))
        origin = str(sources.default or "<dict>")
    else:
        path = resolve_spec_path(source)
        data, sources = _load_file(path, ())
        origin = str(path)
    for path_text, value, origin_text in _normalise_overrides(overrides):
        apply_override(data, sources, path_text, value, origin_text)
    return LoadedSpec(data, sources, origin)


def _normalise_overrides(overrides) -> list[tuple[tuple, Any, str]]:
    if not overrides:
        return []
    if isinstance(overrides, Mapping):
        items = []
        for key, value in overrides.items():
            path = tuple(int(p) if p.lstrip("-").isdigit() else p for p in str(key).split("."))
            items.append((path, value, f"override {key}={value!r}"))
        return items
    result = []
    for text in overrides:
        path, value = parse_override(text)
        result.append((path, value, f"--set {text}"))
    return result
