"""Lowering: a validated Spec -> an ArchGraph (networkx) whose nodes know their shapes and cost.

One node per instantiated op group: the stem, each downsample, each block, the head. Edges
carry every tensor that flows: the main path, and side channels between blocks (attribute
`channel`). Every shape, FLOP count and graph-level check is done here from the ops' own rules,
before any module exists; a spec that lowers builds and runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import networkx as nx

from archdsl.errors import Problem, SpecError
from archdsl.loading import SourceMap
from archdsl.network import Residual
from archdsl.norms import norm_flops
from archdsl.ops import FeatureShape, Op, OpCheckError, Site, ops_for


@dataclass(frozen=True)
class Placed:
    """An op at a site, with the YAML path it was written at."""

    op: Op
    site: Site
    path: tuple

    @property
    def out_shape(self) -> FeatureShape:
        return self.op.output_shape(self.site)

    @property
    def flops(self) -> int:
        return self.op.flops(self.site)


@dataclass
class BlockPlan:
    norm: str
    candidates: list[Placed]
    fusion: Placed
    interactions: list[Placed]
    order: list[int]
    ffn: Placed | None
    pad_multiple: int | None = None
    residual: Residual = "per_branch"
    layer_scale: float | None = None


@dataclass
class Node:
    name: str  # the module path in the compiled network: stem, stages.1.blocks.0, head
    kind: str  # stem | downsample | block | head
    stage: int | None
    path: tuple  # YAML path of what it was lowered from
    in_shape: FeatureShape
    out_shape: FeatureShape
    flops: int
    op: Placed | None = None  # stem, downsample, head
    block: BlockPlan | None = None
    side_inputs: list[str] = field(default_factory=list)
    side_outputs: list[str] = field(default_factory=list)


class ArchGraph:
    """The lowered network: nodes in execution order in a networkx DiGraph."""

    def __init__(self, spec, image_size: tuple[int, int]):
        self.spec = spec
        self.image_size = image_size
        self.graph = nx.DiGraph()
        self._order: list[str] = []

    def add(self, node: Node, after: str | None) -> None:
        self.graph.add_node(node.name, node=node)
        if after is not None:
            self.graph.add_edge(after, node.name, channel=None, shape=node.in_shape)
        self._order.append(node.name)

    def nodes(self) -> list[Node]:
        return [self.graph.nodes[name]["node"] for name in self._order]

    def node(self, name: str) -> Node:
        return self.graph.nodes[name]["node"]

    @property
    def flops(self) -> int:
        return sum(node.flops for node in self.nodes())

    def stage_nodes(self, stage: int) -> list[Node]:
        return [node for node in self.nodes() if node.stage == stage]

    @property
    def num_stages(self) -> int:
        return len(self.spec.stages)


def _check_layout(placed: Placed) -> None:
    """A spatial op on the "tokens" layout would read the token row as a 1-pixel-high map."""
    op, shape = placed.op, placed.site.in_shape
    if shape.layout == "tokens" and "runs_on_tokens" not in op.capabilities:
        takers = sorted(name for name, cls in ops_for(op.role).items() if "runs_on_tokens" in cls.capabilities)
        raise OpCheckError(
            f"{op.op} works on a spatial map, but stage {placed.site.stage} carries a token sequence here ({shape}: the "
            f"{shape.height}x{shape.width} map and its extra tokens in one row); "
            + (f"{op.role} ops that run on tokens: {', '.join(takers)}" if takers else f"no {op.role} op runs on tokens")
            + ", or move the class token to a later stage"
        )


def _check(placed: Placed, sources: SourceMap | None) -> None:
    try:
        _check_layout(placed)
        placed.op.check(placed.site)
    except OpCheckError as error:
        path = placed.path + ((error.field,) if error.field else ())
        raise SpecError(Problem(str(error), path, sources.locate(path) if sources else None)) from None


def _place(op: Op, site: Site, path: tuple, sources: SourceMap | None) -> Placed:
    placed = Placed(op, site, path)
    _check(placed, sources)
    shape = placed.out_shape
    if min(shape.channels, shape.height, shape.width) < 1:
        raise SpecError(
            Problem(
                f"this {op.role} leaves an empty {shape} map; use a larger input size",
                path,
                sources.locate(path) if sources else None,
            )
        )
    return placed


def _candidate_order(interactions: list[Placed], count: int, path: tuple, sources: SourceMap | None) -> list[int]:
    """Candidates in an order where a values-gate's source runs before its target."""
    dependencies = nx.DiGraph()
    dependencies.add_nodes_from(range(count))
    for placed in interactions:
        op = placed.op
        for end in ("source", "target"):
            index = getattr(op, end)
            if not 0 <= index < count:
                raise SpecError(
                    Problem(
                        f"{end} {index} is not a candidate of this mixer (0..{count - 1})",
                        placed.path + (end,),
                        sources.locate(placed.path + (end,)) if sources else None,
                    )
                )
        if op.applies_to == "values":
            dependencies.add_edge(op.source, op.target)
    try:
        return list(nx.lexicographical_topological_sort(dependencies))
    except nx.NetworkXUnfeasible:
        raise SpecError(
            Problem(
                "interactions gate each other's values in a cycle; no candidate can run first",
                path + ("interactions",),
                sources.locate(path + ("interactions",)) if sources else None,
            )
        ) from None


def _lower_block(
    spec,
    stage_index: int,
    block_index: int,
    shape: FeatureShape,
    sources: SourceMap | None,
    absorbed: bool,
    produced: dict[str, tuple[str, FeatureShape]],
) -> Node:
    pattern_index = block_index % len(spec.stages[stage_index].blocks)
    path = ("stages", stage_index, "blocks", pattern_index)
    block = spec.stages[stage_index].blocks[pattern_index]
    image_size = spec.image_size
    name = f"stages.{stage_index}.blocks.{block_index}"

    candidates = []
    side_inputs, side_outputs = [], []
    pad = block.mixer.pad_multiple
    if pad and shape.layout == "tokens":
        where = path + ("mixer", "pad_multiple")
        raise SpecError(
            Problem(
                f"pad_multiple pads a map, but stage {stage_index} carries a token sequence ({shape}); remove it",
                where,
                sources.locate(where) if sources else None,
            )
        )
    mixed = shape.padded(pad) if pad else shape
    for index, op in enumerate(block.mixer.candidates):
        site = Site(mixed, op.channels or shape.channels, image_size, stage_index)
        cand_path = path + ("mixer", "candidates", index)
        placed = _place(op, site, cand_path, sources)
        consumed = op.consumes
        if consumed is not None:
            if consumed not in produced:
                where = cand_path + ("consumes",)
                raise SpecError(
                    Problem(
                        f"side channel {consumed!r} is consumed by block {block_index} of stage {stage_index}, but no earlier block "
                        f"of this stage emits it (a {mixed.height}x{mixed.width} map here; side channels do not cross stages); "
                        f"put a block whose candidate has `emits: {consumed}` before it in the stage's `blocks:` pattern",
                        where,
                        sources.locate(where) if sources else None,
                    )
                )
            producer, emitted_on = produced[consumed]
            if (emitted_on.height, emitted_on.width) != (mixed.height, mixed.width):
                where = path + ("mixer", "pad_multiple") if pad else cand_path + ("consumes",)
                raise SpecError(
                    Problem(
                        f"side channel {consumed!r} is a {emitted_on.height}x{emitted_on.width} map (emitted by {producer}), but block "
                        f"{block_index} of stage {stage_index} reads it on a {mixed.height}x{mixed.width} map"
                        f"{f' (padded to a multiple of {pad})' if pad else ''}; give the emitting and the consuming blocks the same "
                        f"`pad_multiple`",
                        where,
                        sources.locate(where) if sources else None,
                    )
                )
            side_inputs.append(consumed)
        emitted = op.emits
        if emitted is not None:
            side_outputs.append(emitted)
        candidates.append(placed)

    parts = tuple(placed.out_shape.channels for placed in candidates)
    fusion = _place(
        block.mixer.fusion, Site(mixed, shape.channels, image_size, stage_index, parts), path + ("mixer", "fusion"), sources
    )
    interactions = []
    for index, op in enumerate(block.mixer.interactions):
        source = candidates[op.source].op.feature_shape(candidates[op.source].site) if 0 <= op.source < len(candidates) else mixed
        target_channels = parts[op.target] if 0 <= op.target < len(parts) else shape.channels
        interactions.append(
            Placed(op, Site(source, target_channels, image_size, stage_index, parts), path + ("mixer", "interactions", index))
        )
    order = _candidate_order(interactions, len(candidates), path + ("mixer",), sources)
    for placed in interactions:
        target = candidates[placed.op.target].op
        if placed.op.applies_to == "values" and "value_gate" not in target.capabilities:
            takers = sorted(name for name, cls in ops_for("candidate").items() if "value_gate" in cls.capabilities)
            where = placed.path + ("target",)
            raise SpecError(
                Problem(
                    f"{placed.op.op} gates its target's values, but candidate {placed.op.target} ({target.op}) has none to gate; "
                    f"target a candidate that does ({', '.join(takers)})",
                    where,
                    sources.locate(where) if sources else None,
                )
            )
    for placed in interactions:  # only now are their source and target known to exist
        _check(placed, sources)

    whole_block = block.residual == "whole_block"
    if whole_block and (block.ffn is None or absorbed):
        where = path + ("residual",)
        why = (
            "this block has no ffn"
            if block.ffn is None
            else f"the next stage's downsample ({spec.stages[stage_index + 1].downsample.op}) replaces this block's FFN"
        )
        raise SpecError(
            Problem(
                f"residual: whole_block puts the block's norm and one residual around the mixer and the FFN, but {why}; "
                f"give the block an ffn, or use residual: per_branch",
                where,
                sources.locate(where) if sources else None,
            )
        )
    ffn = None
    if block.ffn is not None and not absorbed:
        ffn = _place(block.ffn, Site(shape, shape.channels, image_size, stage_index), path + ("ffn",), sources)
    # layer scale multiplies, which fvcore does not count; whole_block has the one norm before its FFN
    flops = (
        (0 if whole_block else norm_flops(block.norm, shape))
        + sum(p.flops for p in candidates)
        + fusion.flops
        + sum(p.flops for p in interactions)
        + (norm_flops(block.norm, shape) + ffn.flops if ffn else 0)
    )
    plan = BlockPlan(block.norm, candidates, fusion, interactions, order, ffn, pad, block.residual, block.layer_scale)
    return Node(
        name, "block", stage_index, path, shape, shape, flops, block=plan, side_inputs=side_inputs, side_outputs=side_outputs
    )


def _side_channel_fault(pattern: list[tuple[list[str], list[str]]], depth: int) -> tuple[str, int, str, int | None] | None:
    """Replay a stage's block pattern (each entry: channels consumed, channels emitted) for
    `depth` blocks. A map must be read by a later block of its stage before it is emitted again
    or the stage ends. The first fault as (kind, producing block, channel, replacing block):
    kind "unread" (the stage ends first) or "replaced"; "unproduced" for a consumer with
    nothing before it (then the block index is the consumer's); None if all is well."""
    pending: dict[str, int] = {}  # channel -> block that emitted it, not read yet
    available: set[str] = set()
    for index in range(depth):
        consumed, emitted = pattern[index % len(pattern)]
        for channel in consumed:
            if channel not in available:
                return "unproduced", index, channel, None
            pending.pop(channel, None)
        for channel in emitted:
            if channel in pending:
                return "replaced", pending[channel], channel, index
            pending[channel] = index
            available.add(channel)
    for channel, index in pending.items():
        return "unread", index, channel, None
    return None


def _depths_that_work(pattern: list[tuple[list[str], list[str]]], depth: int) -> list[int]:
    """The nearest depths below and above `depth` whose blocks pair every map with a reader."""
    below = next((d for d in range(depth - 1, 0, -1) if _side_channel_fault(pattern, d) is None), None)
    above = next((d for d in range(depth + 1, depth + 4 * len(pattern) + 1) if _side_channel_fault(pattern, d) is None), None)
    return [d for d in (below, above) if d is not None]


def _check_side_channels(stage, stage_index: int, shape: FeatureShape, sources: SourceMap | None) -> None:
    """Every map a block emits is read by a later block of the same stage: a map left unread
    when the stage ends would leak into the next stage (located error otherwise)."""
    pattern = []
    for block in stage.blocks:
        ops = block.mixer.candidates
        pattern.append(([op.consumes for op in ops if op.consumes is not None], [op.emits for op in ops if op.emits is not None]))
    fault = _side_channel_fault(pattern, stage.depth) if any(emitted for _, emitted in pattern) else None
    if fault is None or fault[0] == "unproduced":  # a consumer with no producer is reported at its own line
        return
    kind, block_index, channel, replacing = fault
    entry = block_index % len(stage.blocks)
    what = (
        f"block {block_index} of stage {stage_index} (pattern entry {entry}) emits side channel {channel!r}, "
        f"a {shape.height}x{shape.width} map, "
    )
    if kind == "replaced":
        path = ("stages", stage_index, "blocks")
        message = (
            what + f"but block {replacing} (pattern entry {replacing % len(stage.blocks)}) emits it again before any block "
            f"reads it; put a block that consumes {channel!r} between them, or set `emits: null` on the first"
        )
    else:
        path = ("stages", stage_index, "depth")
        depths = _depths_that_work(pattern, stage.depth)
        fix = (
            f"depth {' or '.join(str(d) for d in depths)} would give every producer a consumer"
            if depths
            else f"add a block that consumes {channel!r} after it"
        )
        message = (
            what + f"and no later block of the stage reads it: with depth {stage.depth} the {len(stage.blocks)}-block pattern "
            f"ends on a producer, and side channels do not cross into the next stage. {fix}, or set `emits: null` on that candidate"
        )
    raise SpecError(Problem(message, path, sources.locate(path) if sources else None))


def _emitted(stage, block_index: int) -> list[str]:
    return [
        channel
        for op in stage.blocks[block_index % len(stage.blocks)].mixer.candidates
        if (channel := getattr(op, "emits", None)) is not None
    ]


def lower(spec, sources: SourceMap | None = None) -> ArchGraph:
    """Lower a validated spec; raise one located SpecError listing every problem that keeps it from
    running (blocks keep their shape, so lowering goes on past a faulty block; only a faulty stem or
    downsample, whose output shape is then unknown, ends it early)."""
    image_size = spec.image_size
    graph = ArchGraph(spec, image_size)
    shape = FeatureShape(spec.input.channels, *image_size)
    problems: dict[tuple, Problem] = {}  # one per YAML path: a pattern's blocks repeat its faults

    def attempt(lowering, *args):
        try:
            return lowering(*args)
        except SpecError as error:
            for problem in error.problems:
                problems.setdefault(problem.path, problem)
            return None

    def result() -> SpecError:
        return SpecError(list(problems.values()))

    stem = _place(spec.stem, Site(shape, spec.stages[0].width, image_size, 0), ("stem",), sources)
    graph.add(Node("stem", "stem", None, ("stem",), shape, stem.out_shape, stem.flops, op=stem), None)
    previous, shape = "stem", stem.out_shape

    for stage_index, stage in enumerate(spec.stages):
        produced: dict[str, tuple[str, FeatureShape]] = {}  # side channels emitted so far in this stage
        if stage.downsample is not None:
            path = ("stages", stage_index, "downsample")
            placed = attempt(_place, stage.downsample, Site(shape, stage.width, image_size, stage_index), path, sources)
            if placed is None:
                raise result()
            name = f"stages.{stage_index}.downsample"
            graph.add(Node(name, "downsample", stage_index, path, shape, placed.out_shape, placed.flops, op=placed), previous)
            previous, shape = name, placed.out_shape
        elif shape.channels != stage.width:
            path = ("stages", stage_index, "width")
            problems.setdefault(
                path,
                Problem(
                    f"stage {stage_index} has width {stage.width} but receives {shape.channels} channels and has no downsample to "
                    f"change them; add a `downsample:` or set width: {shape.channels}",
                    path,
                    sources.locate(path) if sources else None,
                ),
            )
            shape = shape.with_channels(stage.width)
        next_stage = spec.stages[stage_index + 1] if stage_index + 1 < len(spec.stages) else None
        next_absorbs = (
            next_stage is not None
            and next_stage.downsample is not None
            and "replaces_previous_ffn" in next_stage.downsample.capabilities
        )
        for block_index in range(stage.depth):
            absorbed = next_absorbs and block_index == stage.depth - 1
            node = attempt(_lower_block, spec, stage_index, block_index, shape, sources, absorbed, produced)
            if node is None:  # its faults are recorded; what it would emit still counts for the blocks after it
                for channel in _emitted(stage, block_index):
                    produced[channel] = (f"stages.{stage_index}.blocks.{block_index}", shape)
                continue
            graph.add(node, previous)
            for channel in node.side_inputs:
                graph.graph.add_edge(produced[channel][0], node.name, channel=channel)
            for candidate in node.block.candidates:
                if (channel := getattr(candidate.op, "emits", None)) is not None:
                    produced[channel] = (node.name, candidate.site.in_shape)
            previous = node.name
        attempt(_check_side_channels, stage, stage_index, shape, sources)

    head = attempt(_place, spec.head, Site(shape, spec.head.classes, image_size, len(spec.stages) - 1), ("head",), sources)
    if problems:
        raise result()
    graph.add(Node("head", "head", None, ("head",), shape, head.out_shape, head.flops, op=head), previous)
    return graph
