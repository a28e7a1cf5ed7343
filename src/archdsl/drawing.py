"""A picture of a lowered network (what `archdsl graph` writes, as SVG or PNG).

A header strip runs stem -> stage 0 -> ... -> head; under each stage's header hangs a column:
its downsample, then its blocks in execution order. A block is a box listing its norm, its
candidates with their channel shares, the fusion, the interactions and the FFN. Side channels
(SG-Former's significance map) are curved edges from the candidate line that emits the map to
the one that consumes it, labelled with the channel's name.

A stage's blocks whose plans are identical are drawn once: a run of one block as one box
marked "×N", a repeating pattern of several (SG-Former alternates two kinds) as the pattern's
boxes inside a dashed frame marked "×N". So MixFormer-B6's 34 blocks take four boxes.

Only matplotlib draws (no Graphviz): the layout is computed here, in points, in a monospace
font whose advance width is known, so every box's size follows from its characters. matplotlib
is imported when a picture is made, not with this module (the `plot` extra).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

from pydantic import BaseModel

from archdsl.errors import Location, Problem, SpecError
from archdsl.graph import ArchGraph, Node
from archdsl.norms import NormWithEps
from archdsl.ops import FeatureShape, Op, extra_tokens_text

FORMATS = {".svg": "svg", ".png": "png"}

FONT = "DejaVu Sans Mono"  # shipped with matplotlib, so the metrics below hold everywhere
FONT_SIZE = 8.0
CHAR = 0.602 * FONT_SIZE  # DejaVu Sans Mono's advance width is 1233/2048 em, bold alike
LINE = 1.35 * FONT_SIZE
PAD = 5.0  # inside a box, around its text
GAP = 16.0  # between boxes of a column, where the main path's arrow runs
GUTTER = 40.0  # between columns, where the header strip's arrows run
FRAME = 8.0  # a repeated pattern's frame, around its boxes
ARC_BULGE = 20.0  # how far a side channel's curve leaves the boxes' right edge
ARC_STEP = 14.0  # further for each further side channel of a column, so that they nest
MARGIN = 14.0
PNG_DPI = 160
LONGEST_UNIT = 8  # the longest block pattern looked for when collapsing a stage

FILL = {"stem": "#e4e4e4", "header": "#ffffff", "downsample": "#fbe3c8", "block": "#dbe8f5", "head": "#e4e4e4"}
EDGE = "#4a4a4a"
SIDE_CHANNEL = "#b8322a"
FRAME_EDGE = "#7c7c7c"


def picture_format(path: Path) -> str:
    """The format named by the file's suffix; a SpecError naming the valid ones otherwise."""
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        found = f"a {path.suffix!r} file" if path.suffix else "a file without a suffix"
        raise SpecError(
            Problem(
                f"cannot draw into {found}: the picture's format comes from the suffix, which must be {' or '.join(FORMATS)}",
                (),
                Location(str(path)),
            )
        )
    return FORMATS[suffix]


# ---- what is drawn: boxes of text, the patterns they repeat in, the columns they stand in


@dataclass(eq=False)
class Box:
    """Lines of text in a rectangle; the first line is its title. Placed by `_place`."""

    lines: list[str]
    kind: str  # stem | header | downsample | block | head: its colour
    gid: str  # the SVG id of its group, so that a reader (or a test) can find it
    badge: str | None = None  # right-aligned on the title line: a collapsed run's count
    emits: dict[str, int] = field(default_factory=dict)  # side channel -> line of the candidate
    consumes: dict[str, int] = field(default_factory=dict)
    x: float = 0.0
    y: float = 0.0  # the top: y grows downwards in the picture
    width: float = 0.0

    @property
    def chars(self) -> int:
        title = len(self.lines[0]) + (len(self.badge) + 2 if self.badge else 0)
        return max(title, *(len(line) for line in self.lines))

    @property
    def height(self) -> float:
        return len(self.lines) * LINE + 2 * PAD

    def line_middle(self, index: int) -> float:
        return self.y + PAD + (index + 0.5) * LINE


@dataclass(eq=False)
class Repeat:
    """A stage's pattern of blocks, drawn once, that runs `count` times in a row."""

    boxes: list[Box]
    count: int
    gid: str
    y: float = 0.0

    @property
    def framed(self) -> bool:
        return self.count > 1 and len(self.boxes) > 1

    @property
    def height(self) -> float:
        inner = sum(box.height for box in self.boxes) + GAP * (len(self.boxes) - 1)
        return inner + LINE + 2 * FRAME if self.framed else inner


@dataclass(eq=False)
class Column:
    header: Box
    items: list[Box | Repeat]
    x: float = 0.0
    width: float = 0.0
    right_gutter: float = GUTTER

    def boxes(self) -> list[Box]:
        found = []
        for item in self.items:
            found.extend(item.boxes if isinstance(item, Repeat) else [item])
        return found


@dataclass(frozen=True)
class SideEdge:
    source: Box
    source_line: int
    target: Box
    target_line: int
    channel: str


@dataclass
class Picture:
    title: str
    columns: list[Column]
    side_edges: list[SideEdge]
    footnote: list[str]


# ---- the text of each box


def _shape(shape: FeatureShape) -> str:
    return f"{shape.channels}×{_map_size(shape)}"


def _map_size(shape: FeatureShape) -> str:
    return f"{shape.height}×{shape.width}{extra_tokens_text(shape.extra_tokens)}"


def _value(value) -> str | None:
    """A parameter as the picture writes it; None for a structured value it leaves out."""
    if isinstance(value, NormWithEps):
        return value.name
    if isinstance(value, BaseModel | dict):
        return None
    if isinstance(value, list | tuple):
        return "[" + ", ".join(str(item) for item in value) + "]"
    return str(value)


def _params(op: Op) -> str:
    """The parameters the spec wrote for an op (its defaults are left out), `name value, ...`."""
    written = [(name, _value(getattr(op, name))) for name in type(op).model_fields if name in op.model_fields_set]
    return ", ".join(f"{name} {value}" for name, value in written if name != "op" and value is not None)


def _op_lines(op: Op) -> list[str]:
    params = _params(op)
    return [op.op, params] if params else [op.op]


def _norm_name(norm) -> str:
    return norm.name if isinstance(norm, NormWithEps) else norm


def _share(channels: int, width: int) -> str:
    part = Fraction(channels, width)
    return "all" if part == 1 else str(part)


def _ffn_absorbed(graph: ArchGraph, node: Node) -> bool:
    """The block's FFN runs as the next stage's downsample (CloFormer's strided ConvFFN)."""
    stages = graph.spec.stages
    if node.stage + 1 >= len(stages) or node.name != graph.stage_nodes(node.stage)[-1].name:
        return False
    downsample = stages[node.stage + 1].downsample
    return downsample is not None and "replaces_previous_ffn" in downsample.capabilities


def _block_body(graph: ArchGraph, node: Node) -> tuple[list[str], dict[str, int], dict[str, int]]:
    """A block's lines below its title, and the line of each side channel's candidate (counted
    with the title as line 0)."""
    plan = node.block
    norm = f"norm {_norm_name(plan.norm)}"
    lines = [norm + (f" · pad to multiple of {plan.pad_multiple}" if plan.pad_multiple else "")]
    emits, consumes = {}, {}
    name_width = max(len(candidate.op.op) for candidate in plan.candidates)
    for index, candidate in enumerate(plan.candidates):
        channels = candidate.out_shape.channels
        share = _share(channels, node.in_shape.channels)
        lines.append(f"[{index}] {candidate.op.op:<{name_width}}  {share} · {channels} ch")
        if candidate.op.emits is not None:
            emits[candidate.op.emits] = len(lines)
        if candidate.op.consumes is not None:
            consumes[candidate.op.consumes] = len(lines)
    lines.append(f"fusion {plan.fusion.op.op}")
    for interaction in plan.interactions:
        op = interaction.op
        lines.append(f"{op.op} [{op.source}]→[{op.target}] {op.applies_to}")
    if plan.ffn is not None:
        params = _params(plan.ffn.op)
        lines.append(f"ffn {plan.ffn.op.op}" + (f" ({params})" if params else ""))
    else:
        lines.append("ffn: run by the next downsample" if _ffn_absorbed(graph, node) else "ffn none")
    return lines, emits, consumes


def _block_titles(indices: list[int]) -> str:
    """The blocks one box stands for: `block 3`, `blocks 0–15` or `blocks 1, 3, …, 23`."""
    if len(indices) == 1:
        return f"block {indices[0]}"
    if indices[1] - indices[0] == 1:
        return f"blocks {indices[0]}–{indices[-1]}"
    if len(indices) <= 3:
        return "blocks " + ", ".join(map(str, indices))
    return f"blocks {indices[0]}, {indices[1]}, …, {indices[-1]}"


def repeating_units(signatures: list) -> list[tuple[int, int, int]]:
    """Cover a sequence by runs of a repeated unit, greedily from the start: (start, unit
    length, repeats) each. At each start the unit that covers the most items wins, the
    shortest on a tie; an item that starts no repetition is a unit of 1, once."""
    units, start = [], 0
    while start < len(signatures):
        length, repeats = 1, 1
        for candidate in range(1, min(LONGEST_UNIT, len(signatures) - start) + 1):
            unit = signatures[start : start + candidate]
            count = 1
            while signatures[start + count * candidate : start + (count + 1) * candidate] == unit:
                count += 1
            if count > 1 and count * candidate > length * repeats:
                length, repeats = candidate, count
        units.append((start, length, repeats))
        start += length * repeats
    return units


def _stage_items(graph: ArchGraph, stage: int) -> tuple[list[Box | Repeat], dict[str, Box]]:
    """A stage's downsample box and its blocks collapsed into repeats; and the box that
    stands for each block node."""
    nodes = graph.stage_nodes(stage)
    items: list[Box | Repeat] = []
    for node in nodes:
        if node.kind == "downsample":
            lines = ["downsample", *_op_lines(node.op.op), f"{_shape(node.in_shape)} → {_shape(node.out_shape)}"]
            items.append(Box(lines, "downsample", f"downsample-{stage}"))
    blocks = [node for node in nodes if node.kind == "block"]
    bodies = [_block_body(graph, node) for node in blocks]
    signatures = [(tuple(lines), tuple(emits.items()), tuple(consumes.items())) for lines, emits, consumes in bodies]
    box_of: dict[str, Box] = {}
    for start, length, repeats in repeating_units(signatures):
        boxes = []
        for offset in range(length):
            indices = [start + offset + length * turn for turn in range(repeats)]
            lines, emits, consumes = bodies[start + offset]
            badge = f"×{repeats}" if repeats > 1 and length == 1 else None
            box = Box([_block_titles(indices), *lines], "block", f"block-{stage}-{start + offset}", badge, emits, consumes)
            boxes.append(box)
            box_of.update({blocks[index].name: box for index in indices})
        items.append(Repeat(boxes, repeats, f"repeat-{stage}-{start}"))
    return items, box_of


def _side_edges(graph: ArchGraph, box_of: dict[str, Box]) -> list[SideEdge]:
    """One edge per side channel between two drawn boxes (repeats of a pattern share one)."""
    edges: dict[tuple, SideEdge] = {}
    for producer, consumer, channel in graph.graph.edges(data="channel"):
        if channel is None:
            continue
        source, target = box_of[producer], box_of[consumer]
        edge = SideEdge(source, source.emits[channel], target, target.consumes[channel], channel)
        edges.setdefault((id(source), id(target), channel), edge)
    return list(edges.values())


def describe(graph: ArchGraph) -> Picture:
    """What the picture shows, before any placing or drawing."""
    stem, head = graph.node("stem"), graph.node("head")
    columns = [
        Column(Box(["stem", *_op_lines(stem.op.op), f"{_shape(stem.in_shape)} → {_shape(stem.out_shape)}"], "stem", "stem"), [])
    ]
    box_of: dict[str, Box] = {}
    for index, stage in enumerate(graph.spec.stages):
        items, boxes = _stage_items(graph, index)
        box_of.update(boxes)
        blocks = [node for node in graph.stage_nodes(index) if node.kind == "block"]
        shape = blocks[0].in_shape
        header = Box(
            [f"stage {index}", f"width {shape.channels} · {_map_size(shape)}", f"depth {stage.depth}"], "header", f"stage-{index}"
        )
        columns.append(Column(header, items))
    columns.append(
        Column(Box(["head", *_op_lines(head.op.op), f"{_shape(head.in_shape)} → {head.out_shape.channels}"], "head", "head"), [])
    )
    header_lines = max(len(column.header.lines) for column in columns)
    for column in columns:  # one height for the header strip, so that its arrows run straight
        column.header.lines += [""] * (header_lines - len(column.header.lines))
    spec = graph.spec
    title = (
        f"{spec.name or 'spec'} · input {spec.input.channels}×{graph.image_size[0]}×{graph.image_size[1]} · "
        f"{sum(stage.depth for stage in spec.stages)} blocks · {graph.flops / 1e9:.3f} GFLOPs (analytic)"
    )
    footnote = [
        "[i] candidate i, with its share of the block width and its channels · [i]→[j] an interaction from candidate i onto j",
        "×N a block, or a framed pattern of blocks, repeated N times · red curves: side channels, from emitter to consumer",
    ]
    return Picture(title, columns, _side_edges(graph, box_of), footnote)


# ---- placing: every box's position, in points


def _column_edges(picture: Picture, column: Column) -> list[SideEdge]:
    boxes = column.boxes()
    return [edge for edge in picture.side_edges if edge.source in boxes]


def _arc_bulges(picture: Picture) -> dict[int, float]:
    """How far each side edge's curve leaves its boxes (by id of the edge): in a column, the
    shortest curve innermost, so that curves nest rather than cross."""
    bulges = {}
    for column in picture.columns:
        edges = sorted(_column_edges(picture, column), key=_edge_span)
        bulges.update({id(edge): ARC_BULGE + ARC_STEP * rank for rank, edge in enumerate(edges)})
    return bulges


def _edge_span(edge: SideEdge) -> float:
    return abs(edge.target.line_middle(edge.target_line) - edge.source.line_middle(edge.source_line))


def _place(picture: Picture) -> tuple[float, float]:
    """Set every box's position; return the picture's width and height in points."""
    header_top = MARGIN + 2 * LINE
    for column in picture.columns:
        column.width = (max(box.chars for box in [column.header, *column.boxes()]) + 1) * CHAR + 2 * PAD  # 1: slack
        edges = _column_edges(picture, column)
        if edges:  # the curves and their labels run in the gutter to the right
            label = max(len(edge.channel) for edge in edges) * CHAR
            column.right_gutter = GUTTER + ARC_BULGE + ARC_STEP * (len(edges) - 1) + 6 + label
    x = MARGIN + FRAME
    bottom = 0.0
    for column in picture.columns:
        column.x = x
        column.header.x, column.header.y, column.header.width = x, header_top, column.width
        y = header_top + column.header.height + GAP
        for item in column.items:
            y = _place_item(item, column, y) + GAP
        bottom = max(bottom, y)
        x += column.width + column.right_gutter
    width = x - picture.columns[-1].right_gutter + FRAME + MARGIN
    text = max(len(picture.title) * 1.2, *(len(line) * 0.9 for line in picture.footnote)) * CHAR + 2 * MARGIN
    return max(width, text), bottom + LINE * len(picture.footnote) + MARGIN


def _place_item(item: Box | Repeat, column: Column, y: float) -> float:
    """Place a box or a repeat with its top at y; return its bottom."""
    if isinstance(item, Box):
        item.x, item.y, item.width = column.x, y, column.width
        return y + item.height
    item.y = y
    if item.framed:
        y += LINE + FRAME
    for index, box in enumerate(item.boxes):
        box.x, box.y, box.width = column.x, y, column.width
        y += box.height + (GAP if index < len(item.boxes) - 1 else 0)
    return y + FRAME if item.framed else y


# ---- drawing


def _draw_box(ax, box: Box) -> None:
    from matplotlib.patches import FancyBboxPatch

    group = FancyBboxPatch(
        (box.x, box.y),
        box.width,
        box.height,
        boxstyle="round,pad=0,rounding_size=3",
        facecolor=FILL[box.kind],
        edgecolor=EDGE,
        linewidth=0.8,
    )
    group.set_gid(box.gid)
    ax.add_patch(group)
    for index, line in enumerate(box.lines):
        _text(ax, (box.x + PAD, box.y + PAD + index * LINE), line, f"{box.gid}-line-{index}", bold=index == 0)
    if box.badge:
        _text(
            ax,
            (box.x + box.width - PAD, box.y + PAD),
            box.badge,
            f"{box.gid}-count",
            bold=True,
            color=SIDE_CHANNEL,
            align="right",
        )


def _text(
    ax, at: tuple[float, float], text: str, gid: str, bold: bool = False, color: str = "black", align: str = "left"
) -> None:
    """One line of text hanging from `at`, in the drawing's font, with an id the SVG keeps."""
    ax.text(
        *at,
        text,
        fontfamily=FONT,
        fontsize=FONT_SIZE,
        fontweight="bold" if bold else "normal",
        color=color,
        va="top",
        ha=align,
        parse_math=False,
    ).set_gid(gid)


def _arrow(ax, start: tuple[float, float], end: tuple[float, float]) -> None:
    from matplotlib.patches import FancyArrowPatch

    ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=9, color=EDGE, linewidth=0.9, shrinkA=0, shrinkB=0))


def _draw_frame(ax, repeat: Repeat, column: Column) -> None:
    from matplotlib.patches import FancyBboxPatch

    left, width = column.x - FRAME, column.width + 2 * FRAME
    frame = FancyBboxPatch(
        (left, repeat.y),
        width,
        repeat.height,
        boxstyle="round,pad=0,rounding_size=4",
        facecolor="none",
        edgecolor=FRAME_EDGE,
        linewidth=0.9,
        linestyle=(0, (4, 2)),
    )
    frame.set_gid(repeat.gid)
    ax.add_patch(frame)
    top = repeat.y + FRAME / 2
    _text(ax, (left + width - PAD, top), f"×{repeat.count}", f"{repeat.gid}-count", bold=True, color=SIDE_CHANNEL, align="right")
    _text(ax, (left + PAD, top), f"pattern of {len(repeat.boxes)} blocks", f"{repeat.gid}-label", color=FRAME_EDGE)


def _draw_column(ax, column: Column) -> None:
    _draw_box(ax, column.header)
    middle = column.x + column.width / 2
    above = column.header.y + column.header.height
    for item in column.items:
        top = item.y
        _arrow(ax, (middle, above), (middle, top))
        if isinstance(item, Repeat):
            if item.framed:
                _draw_frame(ax, item, column)
            for index, box in enumerate(item.boxes):
                if index:
                    _arrow(ax, (middle, item.boxes[index - 1].y + item.boxes[index - 1].height), (middle, box.y))
                _draw_box(ax, box)
            above = item.y + item.height
        else:
            _draw_box(ax, item)
            above = item.y + item.height


def _draw_side_edge(ax, edge: SideEdge, bulge: float) -> None:
    """A curve from the emitting candidate's line to the consuming one's, out to the right."""
    from matplotlib.patches import FancyArrowPatch
    from matplotlib.path import Path as CurvePath

    x = edge.source.x + edge.source.width
    start, end = edge.source.line_middle(edge.source_line), edge.target.line_middle(edge.target_line)
    if start == end:  # a candidate that reads the map it emits, from the previous repeat: a loop
        start, end = start - LINE / 2, end + LINE / 2
    reach = x + bulge * 4 / 3  # a cubic's farthest point is 3/4 of the way to its control points
    curve = CurvePath([(x, start), (reach, start), (reach, end), (x, end)], [CurvePath.MOVETO] + [CurvePath.CURVE4] * 3)
    ax.add_patch(FancyArrowPatch(path=curve, arrowstyle="-|>", mutation_scale=9, color=SIDE_CHANNEL, linewidth=1.0))
    ax.text(
        x + bulge + 4,
        (start + end) / 2,
        edge.channel,
        fontfamily=FONT,
        fontsize=FONT_SIZE,
        color=SIDE_CHANNEL,
        va="center",
        ha="left",
        parse_math=False,
        bbox={"facecolor": "white", "edgecolor": "none", "pad": 1.0},  # over any outer curve it crosses
    ).set_gid(f"side-channel-{edge.channel}-{edge.source.gid}-to-{edge.target.gid}")


def draw(graph: ArchGraph):
    """The picture of a lowered graph as a matplotlib Figure (no pyplot: no global state)."""
    from matplotlib.figure import Figure

    picture = describe(graph)
    width, height = _place(picture)
    figure = Figure(figsize=(width / 72, height / 72))
    ax = figure.add_axes((0, 0, 1, 1))
    ax.set_xlim(0, width)
    ax.set_ylim(height, 0)  # one unit is one point, y downwards, so the layout's numbers are the page's
    ax.axis("off")
    title = ax.text(
        MARGIN, MARGIN, picture.title, fontfamily=FONT, fontsize=FONT_SIZE * 1.2, fontweight="bold", va="top", parse_math=False
    )
    title.set_gid("title")
    for column in picture.columns:
        _draw_column(ax, column)
    headers = [column.header for column in picture.columns]
    for left, right in zip(headers, headers[1:], strict=False):
        middle = left.y + left.height / 2
        _arrow(ax, (left.x + left.width, middle), (right.x, middle))
    bulges = _arc_bulges(picture)
    for edge in picture.side_edges:
        _draw_side_edge(ax, edge, bulges[id(edge)])
    ax.text(
        MARGIN,
        height - MARGIN,
        "\n".join(picture.footnote),
        fontfamily=FONT,
        fontsize=FONT_SIZE * 0.9,
        color=FRAME_EDGE,
        va="bottom",
        linespacing=1.4,
        parse_math=False,
    ).set_gid("footnote")
    return figure


def save_picture(graph: ArchGraph, path: Path) -> None:
    """Draw `graph` into `path`, in the format its suffix names (.svg or .png). The file is
    written whole at the end, so a failure leaves none. SVG text stays text (searchable)."""
    import matplotlib

    file_format = picture_format(path)
    # unhinted glyphs keep the font's own advance widths at every dpi, which the layout assumes
    settings = {"svg.fonttype": "none", "svg.hashsalt": "archdsl", "text.hinting": "no_hinting"}
    with matplotlib.rc_context(settings):
        figure = draw(graph)
        buffer = io.BytesIO()
        figure.savefig(buffer, format=file_format, dpi=PNG_DPI, facecolor="white")
    path.write_bytes(buffer.getvalue())
