"""The README's examples run as written."""

from __future__ import annotations

import re
from pathlib import Path

import torch

import archdsl
from archdsl.ops import unregister

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_the_add_an_op_example_works():
    block = next(b for b in re.findall(r"```python\n(.*?)```", README, re.S) if "@register" in b)
    namespace: dict = {}
    exec(compile(block, "README.md", "exec", dont_inherit=True), namespace)
    try:
        spec = archdsl.load_spec(
            "cloformer_xxs",
            {
                "stages.0.blocks.0.mixer.candidates": [{"op": "depthwise_blur", "kernel": 5}],
                "stages.0.blocks.0.mixer.fusion": "sum",
            },
        )
        model = archdsl.create_model(spec).eval()
        flops = archdsl.count_flops(model)
        assert flops.analytic == flops.flops
        with torch.no_grad():
            assert model(torch.randn(1, 3, 224, 224)).shape == (1, 1000)
        with_blur_channels = archdsl.load_spec(spec, {"stages.0.blocks.0.mixer.candidates.0.channels": 16})
        try:
            archdsl.lower_spec(with_blur_channels)
        except archdsl.SpecError as error:
            assert "stages[0].blocks[0].mixer.candidates[0].channels: a depthwise conv keeps the channel count" in str(error)
        else:
            raise AssertionError("the op's check did not run")
    finally:
        unregister("candidate", "depthwise_blur")


def test_the_spec_example_names_real_fields():
    spec = archdsl.load_spec("cloformer_xxs")
    assert spec.drop_path_rate == 0.0 and spec.stages[0].blocks[0].mixer.pad_multiple is None
    assert spec.stages[0].blocks[0].mixer.interactions == []


def test_the_backbone_example_runs_with_the_authors_weights(reference):
    block = next(b for b in re.findall(r"```python\n(.*?)```", README, re.S) if "pretrained=weights" in b)
    namespace: dict = {"weights": reference / "vectors" / "cloformer_xxs.pt"}
    exec(compile(block, "README.md", "exec", dont_inherit=True), namespace)
    model = namespace["model"]
    assert torch.isfinite(namespace["loss"]) and namespace["pooled"].shape == (2, 256) == (2, model.num_features)
    assert [tuple(m.shape) for m in namespace["maps"]] == [(2, 32, 56, 56), (2, 64, 28, 28), (2, 128, 14, 14), (2, 256, 7, 7)]
    assert torch.equal(namespace["logits"], namespace["pooled"])
    assert model.num_classes == 0 and model.pretrained_cfg["crop_pct"] == 0.875
    assert [tuple(m.shape) for m in (namespace["p3"], namespace["p4"], namespace["p5"])] == [
        (2, 64, 28, 28),
        (2, 128, 14, 14),
        (2, 256, 7, 7),
    ]


def test_the_gallery_hybrids_table_gives_each_hybrids_counts():
    """The Gallery section's table of cross-family hybrids: one row per gallery/hybrid_* spec, its
    parameters (total, counted on the lowered graph) and GFLOPs at 224 as the spec gives them."""
    from archdsl.cost import graph_params
    from archdsl.loading import gallery_spec_names

    rows = re.findall(r"^\| `(gallery/hybrid_\w+)` \| [^|]+ \| ([\d,]+) \| (\d+\.\d{3}) \|$", README, re.M)
    assert sorted(name for name, _, _ in rows) == [name for name in gallery_spec_names() if name.startswith("gallery/hybrid_")]
    for name, params, gflops in rows:
        graph = archdsl.lower_spec(archdsl.load_spec(name))
        assert (params, gflops) == (f"{graph_params(graph).total:,}", f"{graph.flops / 1e9:.3f}"), name
