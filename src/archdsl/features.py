"""A backbone for detection and segmentation necks: `create_model(..., features_only=True,
out_indices=(0, 1, 2, 3))` returns a `FeatureNet` whose forward gives those stages' maps, with
`feature_info` (channels, reduction, module name per map), as timm's `features_only` models.

Only stages whose output is a B×C×H×W map at one stride of the input can be named; NomMer's
class-token stage (a 1×(1 + h·w) token row) cannot, until token layouts are typed in the graph.
"""

from __future__ import annotations

import torch
from torch import nn

from archdsl.errors import Location, Problem, SpecError
from archdsl.graph import ArchGraph
from archdsl.network import ArchNet


class FeatureInfo(list):
    """One dict per returned map: num_chs, reduction (input side / map side), module."""

    def channels(self) -> list[int]:
        return [info["num_chs"] for info in self]

    def reduction(self) -> list[int]:
        return [info["reduction"] for info in self]

    def module_name(self) -> list[str]:
        return [info["module"] for info in self]


def stage_feature_info(graph: ArchGraph, out_indices: tuple[int, ...]) -> FeatureInfo:
    """Check `out_indices` against the graph's stages and describe each chosen map."""
    count = graph.num_stages
    height, width = graph.image_size
    info = FeatureInfo()
    for index in out_indices:
        if not -count <= index < count:
            raise SpecError(
                Problem(f"stage {index} does not exist; this network has stages 0..{count - 1}", (), Location("out_indices"))
            )
        stage = index % count
        channels, map_height, map_width = graph.stage_nodes(stage)[-1].out_shape
        reduction = round(height / map_height)
        if reduction != round(width / map_width):
            raise SpecError(
                Problem(
                    f"stage {stage}'s output is {map_height}x{map_width}, not a map at one stride of the "
                    f"{height}x{width} input (a token sequence, such as NomMer's class-token stage); "
                    f"name only stages that output maps",
                    (),
                    Location("out_indices"),
                )
            )
        info.append({"num_chs": channels, "reduction": reduction, "module": f"stages.{stage}"})
    return info


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
        return [maps[index] for index in self.out_indices]
