"""YAML -> plain data that remembers where every value came from.

Only `yaml.SafeLoader` constructs values, so `!!python/...` tags are refused. `extends:` merges
base files (paths relative to the file that names them); overrides (`stages.2.depth=8`) apply
last. Every value's file, line and column is kept in a `SourceMap` so that validation errors
can point at the line that is wrong.
"""

from __future__ import annotations

import copy
import re
import reprlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from archdsl.errors import Location, Problem, SpecError, format_path

BUNDLED_SPECS = "archdsl.specs"

# Limits that keep loading linear in the file: PyYAML composes nested collections recursively,
# and an alias names a node that is shared, not copied, so a few lines can stand for billions of
# values (the "billion laughs"). Real specs nest about 10 levels and expand to a few thousand values.
MAX_NESTING = 64
MAX_VALUES = 100_000


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

    def graft(self, other: SourceMap, prefix: tuple = ()) -> None:
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
    return SpecError(
        Problem(
            f"YAML tag {node.tag!r} is not allowed: specs are plain YAML (mappings, lists, numbers, strings)",
            path,
            _mark(node.start_mark, file),
        )
    )


def _too_deep(mark: yaml.Mark, file: str, expanded: bool = False) -> SpecError:
    how = "with its aliases expanded " if expanded else ""
    return SpecError(
        Problem(f"{how}the YAML nests deeper than {MAX_NESTING} levels; a spec needs about 10", (), _mark(mark, file))
    )


class _SpecLoader(yaml.SafeLoader):
    """SafeLoader whose composer refuses to nest deeper than MAX_NESTING (it recurses per level)."""

    def __init__(self, text: str, file: str):
        super().__init__(text)
        self.file = file
        self.nesting = 0

    def fetch_flow_collection_start(self, TokenClass):
        # the scanner keeps one pending simple key per open `[`/`{`: stop before that grows quadratic
        if self.flow_level >= MAX_NESTING:
            raise _too_deep(self.get_mark(), self.file)
        super().fetch_flow_collection_start(TokenClass)

    def compose_node(self, parent, index):
        self.nesting += 1
        try:
            if self.nesting > MAX_NESTING:
                raise _too_deep(self.peek_event().start_mark, self.file)
            return super().compose_node(parent, index)
        finally:
            self.nesting -= 1


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [child for pair in node.value for child in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _measure(
    node: yaml.Node, depth: int, file: str, measured: dict[int, tuple[int, int]], open_nodes: set[int]
) -> tuple[int, int]:
    """(values, height) of the tree that `node` expands to once aliases are copied out; each node is
    walked once (an aliased node is measured where it is defined, then looked up), so this is
    linear in the file. Refuses, at the node's line, a tree over MAX_VALUES values or
    MAX_NESTING levels, and an anchor that contains itself."""
    key = id(node)
    if key in open_nodes:
        raise SpecError(
            Problem(
                "this alias refers to the collection that contains it: the value would be infinite",
                (),
                _mark(node.start_mark, file),
            )
        )
    if key not in measured:
        if depth > MAX_NESTING:
            raise _too_deep(node.start_mark, file, expanded=True)
        open_nodes.add(key)
        values, height = 1, 0
        for child in _children(node):
            child_values, child_height = _measure(child, depth + 1, file, measured, open_nodes)
            values, height = values + child_values, max(height, child_height + 1)
            if values > MAX_VALUES:
                raise SpecError(
                    Problem(
                        f"with its aliases (*name) expanded this value holds over {MAX_VALUES:,} values; "
                        f"a spec has a few thousand",
                        (),
                        _mark(node.start_mark, file),
                    )
                )
        open_nodes.discard(key)
        measured[key] = (values, height)
    values, height = measured[key]
    if depth + height > MAX_NESTING:
        raise _too_deep(node.start_mark, file, expanded=True)
    return values, height


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
                    raise SpecError(
                        Problem(f"key {key!r} appears twice in this mapping", path + (key,), _mark(key_node.start_mark, file))
                    )
                seen_written.add(key)
            result[key] = _construct(loader, value_node, path + (key,), sources, file)
        return result
    if isinstance(node, yaml.SequenceNode):
        return [_construct(loader, item, path + (index,), sources, file) for index, item in enumerate(node.value)]
    try:
        return loader.construct_object(node, deep=True)
    except yaml.constructor.ConstructorError:
        raise _refuse_tag(node, path, file) from None
    except (ValueError, OverflowError) as error:  # `!!int x`, a 5,000-digit number, a 13th month
        raise SpecError(
            Problem(
                f"cannot read {node.value[:40]!r} as {node.tag.rsplit(':', 1)[-1]}: {str(error).split(';')[0]}",
                path,
                _mark(node.start_mark, file),
            )
        ) from None


def _location_in(text: str, position: int, file: str) -> Location:
    line = text.count("\n", 0, position) + 1
    return Location(file, line, position - (text.rfind("\n", 0, position) + 1) + 1)


# PyYAML's wording for a line indented deeper or shallower than its siblings
_INDENTATION_PROBLEMS = ("mapping values are not allowed here", "expected <block end>")


def parse_yaml(text: str, file: str) -> tuple[Any, SourceMap]:
    """Parse one YAML document with SafeLoader, recording a location for every value."""
    sources = SourceMap(default=Location(file, 1, 1))
    loader = None
    try:
        loader = _SpecLoader(text, file)
        node = loader.get_single_node()
        if node is not None:
            _measure(node, 0, file, {}, set())
        data = None if node is None else _construct(loader, node, (), sources, file)
    except yaml.reader.ReaderError as error:
        character = chr(error.character) if isinstance(error.character, int) else error.character
        raise SpecError(
            Problem(
                f"cannot read YAML: character {character!r} is not allowed in YAML text (a control "
                f'character must be escaped in a double-quoted string, such as "\\x{ord(character):02x}")',
                (),
                _location_in(text, error.position, file),
            )
        ) from None
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        what = error.problem or "is not valid YAML"
        if what.startswith(_INDENTATION_PROBLEMS):
            what += "; check this line's indentation: it must line up with the keys of its mapping or list"
        raise SpecError(Problem(f"cannot parse YAML: {what}", (), _mark(mark, file))) from None
    except yaml.YAMLError as error:
        raise SpecError(Problem(f"cannot parse YAML: {error}", (), Location(file))) from None
    finally:
        if loader is not None:
            loader.dispose()
    return data, sources


def bundled_spec_names() -> list[str]:
    """The paper variants (specs/*.yaml): what the search compares its winners with."""
    root = resources.files(BUNDLED_SPECS)
    return sorted(entry.name[: -len(".yaml")] for entry in root.iterdir() if entry.name.endswith(".yaml"))


def gallery_spec_names() -> list[str]:
    """The mainstream backbones and hybrids of specs/gallery/, by the names that load them (`gallery/convnext_t`)."""
    root = resources.files(BUNDLED_SPECS).joinpath("gallery")
    return sorted(f"gallery/{entry.name[: -len('.yaml')]}" for entry in root.iterdir() if entry.name.endswith(".yaml"))


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
    try:
        if path.is_file():
            return path.resolve()
    except (OSError, ValueError, RuntimeError) as error:  # a name too long, a NUL byte, a symlink loop
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        raise SpecError(Problem(f"cannot open spec file: {reason}", (), Location(str(name_or_path)[:200]))) from None
    text = str(name_or_path)
    bundled = bundled_spec_path(text)
    if bundled is not None:
        return bundled.resolve()
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
                raise SpecError(
                    Problem(
                        f"list index {index} is out of range: the inherited list has {len(base)} items (0..{len(base) - 1})",
                        path + (index,),
                        child_sources.locate(path + (index,)),
                    )
                )
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


def _decode(raw: bytes, file: str) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as error:
        line = raw.count(b"\n", 0, error.start) + 1
        column = error.start - (raw.rfind(b"\n", 0, error.start) + 1) + 1
        raise SpecError(
            Problem(
                f"the file is not UTF-8 text: byte 0x{raw[error.start]:02x} cannot be decoded ({error.reason}); save it as UTF-8",
                (),
                Location(file, line, column),
            )
        ) from None


def _base_path(parent: Path, base: str, where: Location | None, at: tuple) -> Path:
    """The file an `extends:` entry names, resolved against the directory of the file naming it."""
    shown = base if len(base) <= 80 else f"{base[:60]}...({len(base)} characters)"
    try:
        base_path = (parent / base).resolve()
        found = base_path.is_file()
    except (OSError, ValueError, RuntimeError) as error:  # a name too long, a NUL byte, a symlink loop
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        raise SpecError(Problem(f"base spec {shown!r} cannot be opened: {reason}", at, where)) from None
    if not found:  # then a bundled spec by name, as everywhere else a spec is named
        bundled = bundled_spec_path(base)
        if bundled is not None:
            return bundled.resolve()
        raise SpecError(
            Problem(
                f"base spec {shown!r} not found (looked for {base_path}, and for a bundled spec of that name); "
                f"paths are relative to {parent}",
                at,
                where,
            )
        )
    return base_path


def _load_file(path: Path, chain: tuple[Path, ...]) -> tuple[dict, SourceMap]:
    file = str(path)
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise SpecError(Problem(f"cannot read spec file: {error.strerror}", (), Location(file))) from None
    data, sources = parse_yaml(_decode(raw, file), file)
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SpecError(
            Problem(
                f"a spec is a YAML mapping (name:, input:, stem:, stages:, head:), found {type(data).__name__}",
                (),
                sources.locate(()),
            )
        )
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
        base_path = _base_path(path.parent, base, sources.locate(at), at)
        if base_path in chain + (path,):
            cycle = " -> ".join(str(p) for p in chain + (path, base_path))
            raise SpecError(
                Problem(
                    f"`extends` forms a cycle: {cycle}; a spec cannot extend itself, directly or through its bases",
                    at,
                    sources.locate(at),
                )
            )
        base_data, base_sources = _load_file(base_path, chain + (path,))
        merged_sources.graft(base_sources)
        merged = _merge(merged, base_data, (), merged_sources, base_sources) if merged else base_data
    merged = _merge(merged, data, (), merged_sources, sources)
    return merged, merged_sources


def parse_override(text: str) -> tuple[tuple, Any]:
    """`stages.2.depth=8` -> (('stages', 2, 'depth'), 8). The value is read as YAML."""
    if "=" not in text:
        raise SpecError(
            Problem(
                f"an override is KEY=VALUE with a dotted key, such as stages.2.depth=8; found {text!r}",
                (),
                Location(f"--set {text}"),
            )
        )
    key, raw = text.split("=", 1)
    value, _ = parse_yaml(raw, f"--set {text}")
    return override_path(key), value


_INDEX = re.compile(r"-?[0-9]+")  # ASCII digits only: str.isdigit also accepts '²', which int() refuses


def override_path(key: str) -> tuple:
    """`stages.2.depth` -> ('stages', 2, 'depth')."""
    return tuple(int(part) if _INDEX.fullmatch(part) else part for part in key.strip().split("."))


def apply_override(data: dict, sources: SourceMap, path: tuple, value: Any, origin: str) -> None:
    """Set the value at `path`; a missing mapping on the way is created (`input.size` on a spec
    that has no `input:`), a missing list item is an error naming the list's length."""
    target: Any = data
    for depth, part in enumerate(path):
        here, last = path[: depth + 1], depth == len(path) - 1
        if isinstance(target, dict):
            if last:
                break
            if part not in target:
                target[part] = {}
        elif isinstance(target, list):
            if not isinstance(part, int) or not -len(target) <= part < len(target):
                what = f"index {part}" if isinstance(part, int) else f"{part!r} is not an index and"
                raise SpecError(
                    Problem(
                        f"{what} does not exist: {format_path(path[:depth])} is a list of {len(target)} items "
                        f"(indices 0..{len(target) - 1})",
                        here,
                        Location(origin),
                    )
                )
            if last:
                break
        else:
            raise SpecError(
                Problem(
                    f"{format_path(path[:depth])} is a value ({reprlib.repr(target)}), not a mapping or list, so it has no "
                    f"{part!r}",
                    here,
                    Location(origin),
                )
            )
        target = target[part]
    target[path[-1]] = value
    sources.drop(path)
    sources.locations[path] = Location(origin)


def load_data(
    source: str | Path | Mapping, overrides: Iterable[str] | Mapping[str, Any] | None = None, sources: SourceMap | None = None
) -> LoadedSpec:
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
        # a value written in a base file says which spec inherited it
        sources.locations = {
            where: location if location.file == origin else replace(location, via=origin)
            for where, location in sources.locations.items()
        }
    for path_text, value, origin_text in _normalise_overrides(overrides):
        apply_override(data, sources, path_text, value, origin_text)
    return LoadedSpec(data, sources, origin)


def _normalise_overrides(overrides) -> list[tuple[tuple, Any, str]]:
    if not overrides:
        return []
    if isinstance(overrides, Mapping):
        items = []
        for key, value in overrides.items():
            items.append((override_path(str(key)), value, f"override {key}={reprlib.repr(value)}"))
        return items
    result = []
    for text in map(str, overrides):
        path, value = parse_override(text)
        result.append((path, value, f"--set {text}"))
    return result
