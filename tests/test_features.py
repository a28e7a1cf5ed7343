"""features_only backbones: each stage's map with feature_info, wired to an FPN-like neck."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import archdsl


class TinyFPN(nn.Module):
    """Lateral 1x1 convs to one width, top-down nearest upsampling and sums, 3x3 output convs."""

    def __init__(self, channels: list[int], width: int = 32):
        super().__init__()
        self.lateral = nn.ModuleList(nn.Conv2d(c, width, 1) for c in channels)
        self.output = nn.ModuleList(nn.Conv2d(width, width, 3, padding=1) for _ in channels)

    def forward(self, maps: list[torch.Tensor]) -> list[torch.Tensor]:
        merged = [lateral(m) for lateral, m in zip(self.lateral, maps)]
        for level in range(len(merged) - 2, -1, -1):
            merged[level] = merged[level] + F.interpolate(merged[level + 1], size=merged[level].shape[-2:], mode="nearest")
        return [conv(m) for conv, m in zip(self.output, merged)]


@pytest.mark.parametrize("name, size", [("cloformer_xxs", 224), ("mixformer_b0", 64), ("sgformer_s", 128), ("nommer_t", 224)])
def test_feature_maps_feed_a_four_level_neck(name, size):
    backbone = archdsl.create_model(name, img_size=size, features_only=True).eval()
    info = backbone.feature_info
    assert info.reduction() == [4, 8, 16, 32] and info.module_name() == ["stages.0", "stages.1", "stages.2", "stages.3"]
    assert info.channels() == [stage.width for stage in backbone.spec.stages]
    neck = TinyFPN(info.channels())
    with torch.no_grad():
        maps = backbone(torch.randn(1, 3, size, size))
        levels = neck(maps)
    assert [tuple(m.shape) for m in maps] == [(1, c, size // r, size // r) for c, r in zip(info.channels(), info.reduction())]
    assert [tuple(level.shape) for level in levels] == [(1, 32, size // r, size // r) for r in info.reduction()]


def test_nommer_stage_3_map_is_its_tokens_without_the_class_token(reference):
    weights = reference / "vectors" / "nommer_t.pt"
    backbone = archdsl.create_model("nommer_t", pretrained=weights, features_only=True, out_indices=(3,)).eval()
    full = archdsl.create_model("nommer_t", pretrained=weights).eval()
    assert backbone.feature_info[0]["extra_tokens"] == 1 and backbone.feature_info[0]["map_size"] == (7, 7)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        (stage_map,) = backbone(x)
        row = full.forward_features(x)[3]  # (1, 768, 1, 1 + 49): the class token first
    assert row.shape == (1, 768, 1, 50) and stage_map.shape == (1, 768, 7, 7)
    assert torch.equal(stage_map[0, :, 2, 5], row[0, :, 0, 1 + 2 * 7 + 5])


def test_out_indices_choose_stages_and_drop_the_rest(reference):
    backbone = archdsl.create_model(
        "cloformer_xxs", pretrained=reference / "vectors" / "cloformer_xxs.pt", features_only=True, out_indices=(1, 2)
    )
    full = archdsl.create_model("cloformer_xxs", pretrained=reference / "vectors" / "cloformer_xxs.pt")
    assert len(backbone.stages) == 3 and backbone.feature_info.channels() == [64, 128]
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        expected = full.forward_features(x)
        got = backbone(x)
    assert torch.equal(got[0], expected[1]) and torch.equal(got[1], expected[2])


def test_bad_out_indices_are_refused():
    with pytest.raises(archdsl.SpecError, match=r"^out_indices: stage 4 does not exist; this network has stages 0\.\.3$"):
        archdsl.create_model("cloformer_xxs", features_only=True, out_indices=(1, 4))
