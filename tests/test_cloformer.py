"""CloFormer reproduced: exact parameters, fvcore FLOPs, the authors' weights and logits."""

from __future__ import annotations

import json

import pytest
import torch

import archdsl
from archdsl.cost import count_params
from archdsl.errors import CheckpointError

VARIANTS = ["cloformer_xxs", "cloformer_xs", "cloformer_s"]


@pytest.fixture(scope="module")
def vector(reference):
    return torch.load(reference / "vectors" / "cloformer_xxs.pt", weights_only=True)


def official_state(reference, variant: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """A state dict with every official key and shape of a variant (random values)."""
    generator = torch.Generator().manual_seed(seed)
    keys = json.loads((reference / "official_keys" / f"{variant}.json").read_text())
    return {
        name: (
            torch.zeros(shape, dtype=torch.long)
            if name.endswith("num_batches_tracked")
            else torch.randn(shape, generator=generator)
        )
        for name, shape in keys
    }


@pytest.mark.parametrize("variant", VARIANTS)
def test_parameters_and_flops_match_the_release(variant, official):
    reference = official["cloformer"][variant]
    model = archdsl.create_model(variant)
    trainable, total = count_params(model)
    assert trainable == total == reference["params"]
    flops = archdsl.count_flops(model)
    assert abs(flops.fvcore_raw - reference["fvcore_flops"]) / reference["fvcore_flops"] < 0.01
    assert abs(flops.analytic - flops.flops) / flops.flops < 0.02


@pytest.mark.parametrize("variant", VARIANTS)
def test_converter_maps_every_official_key(variant, reference, tmp_path):
    state = official_state(reference, variant)
    path = tmp_path / f"{variant}.pth"
    torch.save({"model": state}, path)  # nested under "model", as released checkpoints are
    model = archdsl.create_model(variant, pretrained=path)
    assert not model.training
    loaded = model.state_dict()
    # spot-check that values land where the notes say (stem conv, local QKV, downsample shortcut, head)
    assert torch.equal(loaded["stem.layers.0.0.weight"], state["patch_embed.conv1.conv.0.weight"])
    assert torch.equal(loaded["stages.0.blocks.0.mixer.candidates.0.qkv.weight"], state["layers.0.blocks.0.attn.qkvs.0.weight"])
    assert torch.equal(loaded["stages.1.downsample.shortcut.0.weight"], state["layers.0.blocks.1.downsample.0.weight"])
    assert torch.equal(loaded["head.fc.weight"], state["head.weight"])
    assert len(loaded) == len(state)


def test_logits_match_the_authors_code(vector, tmp_path):
    path = tmp_path / "xxs.pth"
    torch.save({"state_dict": vector["state_dict"]}, path)
    model = archdsl.create_model("cloformer_xxs", pretrained=path)
    with torch.no_grad():
        logits = model(vector["input"])
    assert (logits - vector["output"]).abs().max().item() < 5e-6  # measured 5.4e-7


def test_plain_state_dict_file_loads(vector, tmp_path):
    path = tmp_path / "plain.pth"
    torch.save(vector["state_dict"], path)
    archdsl.create_model("cloformer_xxs", pretrained=path)


def test_checkpoint_of_another_variant_is_rejected_with_the_list(reference, tmp_path):
    path = tmp_path / "xs.pth"
    torch.save(official_state(reference, "cloformer_xs"), path)
    with pytest.raises(CheckpointError) as caught:
        archdsl.create_model("cloformer_xxs", pretrained=path)
    message = str(caught.value)
    assert str(path) in message and "misshapen" in message
    assert "stem.layers.0.0.weight [24, 3, 3, 3] (model: [16, 3, 3, 3])" in message


def test_missing_and_unexpected_keys_are_listed(vector, tmp_path):
    state = dict(vector["state_dict"])
    state.pop("head.weight")
    state["layers.0.blocks.0.attn.extra.weight"] = torch.zeros(1)
    path = tmp_path / "broken.pth"
    torch.save(state, path)
    with pytest.raises(CheckpointError) as caught:
        archdsl.create_model("cloformer_xxs", pretrained=path)
    message = str(caught.value)
    assert "1 missing: head.fc.weight" in message
    assert "1 unexpected: stages.0.blocks.0.attn.extra.weight" in message


def test_a_pickle_that_runs_code_is_refused(tmp_path):
    import os
    import pickle

    marker = tmp_path / "owned"

    class Exploit:
        def __reduce__(self):
            return os.system, (f"touch {marker}",)

    path = tmp_path / "evil.pth"
    with open(path, "wb") as handle:
        pickle.dump({"model": Exploit()}, handle)
    with pytest.raises(CheckpointError, match="only tensors and plain containers"):
        archdsl.create_model("cloformer_xxs", pretrained=path)
    assert not marker.exists()


@pytest.mark.parametrize("size", [256, 320, 384])
def test_runs_at_multiples_of_32(size):
    model = archdsl.create_model("cloformer_xxs", img_size=size).eval()
    with torch.no_grad():
        logits = model(torch.randn(1, 3, size, size))
    assert logits.shape == (1, 1000) and torch.isfinite(logits).all()
