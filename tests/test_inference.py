"""`archdsl.prepare_for_inference`: the same logits as the model it prepares, from the authors'
weights of each family's test vector, with the BatchNorms it can fold gone."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from archdsl import create_model, prepare_for_inference
from archdsl.inference import fold_batch_norms

# (variant, vector file, BatchNorms left after folding: MixFormer's output norms follow a gate, its
# downsamples' norms precede their conv)
VECTORS = [("cloformer_xxs", "cloformer_xxs.pt", 0), ("nommer_t", "nommer_t.pt", 0), ("mixformer_b0", "mixformer_b0.npz", 18)]


def _input(reference, vector_file: str) -> torch.Tensor:
    path = reference / "vectors" / vector_file
    if path.suffix == ".npz":
        with np.load(path) as archive:
            return torch.from_numpy(archive["__input__"].astype(np.float32))
    return torch.load(path, weights_only=True)["input"]


def _batch_norms(model: nn.Module) -> int:
    return sum(isinstance(module, nn.BatchNorm2d) for module in model.modules())


@pytest.mark.parametrize(("variant", "vector_file", "left"), VECTORS)
def test_prepared_model_gives_the_same_logits(variant, vector_file, left, reference, tmp_path):
    weights = reference / "vectors" / vector_file
    if weights.suffix == ".pt":
        weights = tmp_path / "official.pth"
        torch.save(torch.load(reference / "vectors" / vector_file, weights_only=True)["state_dict"], weights)
    model = create_model(variant, pretrained=weights)
    image = _input(reference, vector_file)
    with torch.no_grad():
        expected = model(image)
        prepared = prepare_for_inference(model)
        logits = prepared(image)
    assert _batch_norms(prepared) == left < _batch_norms(create_model(variant))
    assert (logits - expected).abs().max().item() < 1e-5  # measured 2e-7 to 1.2e-6


def test_sgformer_prepared_stays_within_its_parity_tolerance(reference, tmp_path):
    # SG-Former sorts tokens by significance: channels-last convs round differently and near-ties
    # may swap, so the prepared model is held to the vector's own tolerance (test_sgformer.py)
    vector = torch.load(reference / "vectors" / "sgformer_s.pt", weights_only=True)
    torch.save(vector["state_dict"], tmp_path / "official.pth")
    prepared = prepare_for_inference(create_model("sgformer_s", pretrained=tmp_path / "official.pth"))
    with torch.no_grad():
        logits = prepared(vector["input"])
    assert (logits - vector["output"]).abs().max().item() < 3e-4  # measured 4.0e-5, 3.7e-5 unprepared


def test_folding_needs_eval_mode():
    model = create_model("nommer_t", img_size=64).train()
    with pytest.raises(ValueError, match="eval"):
        fold_batch_norms(model)
    assert _batch_norms(model) == 17
