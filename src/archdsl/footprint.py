"""How much memory a lowered network needs, known before any module exists, so that a network
whose parameters or activations cannot fit is refused with the figures rather than killed by the
allocator (or by the kernel, once an over-committed allocation is touched)."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from archdsl.cost import node_params
from archdsl.errors import Location, Problem, SpecError
from archdsl.graph import ArchGraph

BYTES_PER_VALUE = 4  # float32 weights and maps


@dataclass(frozen=True)
class Footprint:
    """`activations`: values in the input and in every node's output map at batch 1, which a
    training forward pass keeps (a lower bound: a block's inner maps come on top). `params`: the
    exact count, or None where the bound alone shows that the network fits."""

    activations: int
    params: int | None


def machine_memory() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def parse_memory(text: str | int) -> int:
    """8G, 512MB, 1.5GiB or a byte count -> bytes."""
    if isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([kmgt]?)(?:i?b)?\s*", str(text).lower())
    if not match:
        raise SpecError(Problem(f"memory {text!r} is not a size such as 8G, 512M or 1.5GB", (), Location("--max-memory")))
    scale = 1024 ** ("kmgt".index(match[2]) + 1) if match[2] else 1
    return int(float(match[1]) * scale)


def _size(count: int) -> str:
    """Bytes, in the largest unit that keeps a figure above 1."""
    for unit, scale in (("TB", 1024**4), ("GB", 1024**3), ("MB", 1024**2), ("KB", 1024)):
        if count >= scale:
            return f"{count / scale:,.1f} {unit}"
    return f"{count} bytes"


def _gb(values: int) -> str:
    return _size(values * BYTES_PER_VALUE)


def check_fits(graph: ArchGraph, max_memory: str | int | None = None) -> Footprint:
    """Refuse (a located SpecError with the figures) a network whose parameters and activations
    at batch 1 exceed `max_memory` bytes, or this machine's memory when none is given."""
    limit = parse_memory(max_memory) if max_memory is not None else machine_memory()
    limit_text = f"the --max-memory of {_size(limit)}" if max_memory is not None else f"this machine's {_size(limit)} of memory"
    sources = graph.spec._sources
    nodes = graph.nodes()
    activations = nodes[0].in_shape.numel + sum(node.out_shape.numel for node in nodes)

    def refuse(path: tuple, what: str) -> SpecError:
        return SpecError(
            Problem(
                f"{what}, more than {limit_text}; make the network or its input smaller",
                path,
                sources.locate(path) if sources else None,
            )
        )

    if activations * BYTES_PER_VALUE > limit:
        largest = max(nodes, key=lambda node: node.out_shape.numel)
        if nodes[0].in_shape.numel >= largest.out_shape.numel:
            path, detail = ("input",), f"the {nodes[0].in_shape} input alone"
        else:
            path, detail = largest.path, f"{largest.name} alone outputs {largest.out_shape}"
        raise refuse(
            path,
            f"the input and the maps between this network's layers hold {activations:,} values at batch 1 "
            f"({_gb(activations)}; {detail})",
        )
    # every weight takes part in at least one multiply-add per output, so FLOPs bound the weights;
    # tables added to maps (position embeddings, norms) are no larger than those maps
    if (graph.flops + 2 * activations) * BYTES_PER_VALUE <= limit:
        return Footprint(activations, None)
    counts = {name: count.total for name, count in node_params(graph).items()}  # frozen tables take memory too
    params = sum(counts.values())
    if (params + activations) * BYTES_PER_VALUE > limit:
        largest = max(nodes, key=lambda node: counts[node.name])
        raise refuse(
            largest.path,
            f"this network has {params:,} parameters ({_gb(params)}; {largest.name} alone "
            f"{counts[largest.name]:,}) and its maps hold {activations:,} values at batch 1 "
            f"({_gb(activations)})",
        )
    return Footprint(activations, params)
