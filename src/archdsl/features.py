"""A backbone for detection and segmentation necks: `create_model(..., features_only=True,
out_indices=(0, 1, 2, 3))` returns a `FeatureNet` whose forward gives those stages' maps, with
`feature_info` (channels, reduction, module name per map), as timm's `features_only` models.

Every returned map is B×C×H×W: a stage in the "tokens" layout (NomMer's class-token stage)
gives its map without the extra tokens, which a neck has no place for.
"""

from __future__ import annotations

import torch
from torch import nn

from archdsl.errors import Location, Problem, SpecError
from archdsl.graph import ArchGraph
from archdsl.network import ArchNet


class FeatureInfo(list):
    """One dict per returned map: num_chs, reduction (input side / map side), module, as timm's;
    and map_size, extra_tokens (what the stage carries beside its map)."""

    def channels(self) -> list[int]:
        return [info["num_chs"] for info in self]

    def reduction(self) -> list[int]:
        return [info["reduction"] for info in self]

    def module_name(self) -> list[str]:
        return [info["module"] for info in self]


def stage_feature_info(graph: ArchGraph, out_indices: tuple[int, ...]) -> FeatureInfo:
    """Check `out_indices` against the graph's stages and describe each chosen map."""
    count = graph.num_stages
    height = graph.image_size[0]
    info = FeatureInfo()
    for index in out_indices:
        if not -count <= index < count:
            raise SpecError(
                Problem(f"stage {index} does not exist; this network has stages 0..{count - 1}", (), Location("out_indices"))
            )
        stage = index % count
        shape = graph.stage_nodes(stage)[-1].out_shape
        info.append(
            {
                "num_chs": shape.channels,
                "reduction": round(height / shape.height),
                "module": f"stages.{stage}",
                "map_size": shape.map_size,
                "extra_tokens": shape.extra_tokens,
            }
        )
    return info


def as_map(x: torch.Tensor, map_size: tuple[int, int], extra_tokens: int) -> torch.Tensor:
    """A stage's output as a B×C×H×W map: a "tokens"-layout row loses its extra tokens."""
    if not extra_tokens:
        return x
    return x[..., extra_tokens:].reshape(x.shape[0], x.shape[1], *map_size)


class FeatureNet(nn.Module):
    """The stem and the stages up to the last one asked for (no head); forward -> list of maps."""

    def __init__(self, model: ArchNet, graph: ArchGraph, out_indices: tuple[int, ...]):
        super().__init__()
        self.feature_info = stage_feature_info(graph, out_indices)
        self.out_indices = tuple(index % graph.num_stages for index in out_indices)
        self.stem = model.stem
        self.stages = nn.ModuleList(list(model.stages)[: max(self.out_indices) + 1])
        self.spec = model.spec

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        side: dict[str, torch.Tensor] = {}
        maps = []
        for stage in self.stages:
            x = stage(x, side)
            maps.append(x)
        return [
            as_map(maps[index], info["map_size"], info["extra_tokens"])
            for index, info in zip(self.out_indices, self.feature_info)
        ]
