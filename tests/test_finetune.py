"""Fine-tuning and backbone use: another class count from pretrained weights, headless models,
a new classifier, pre-logits, other input channels (timm's interface)."""

from __future__ import annotations

import logging

import pytest
import torch

import archdsl
from archdsl.pretrained import pretrained_cfg
from archdsl.weights import read_checkpoint, state_dict_of


@pytest.fixture(scope="module")
def cloformer_vector(reference):
    return reference / "vectors" / "cloformer_xxs.pt"


def test_fine_tune_loads_everything_but_the_classifier(cloformer_vector, caplog):
    original = archdsl.create_model("cloformer_xxs", pretrained=cloformer_vector)
    with caplog.at_level(logging.WARNING, logger="archdsl"):
        tuned = archdsl.create_model("cloformer_xxs", pretrained=cloformer_vector, num_classes=10)
    [record] = [r for r in caplog.records if r.name == "archdsl"]
    assert record.levelno == logging.WARNING
    assert (
        "classifier not loaded (checkpoint: head.fc.weight [1000, 256], head.fc.bias [1000]); "
        "re-initialised as head.fc.weight [10, 256], head.fc.bias [10]" in record.getMessage()
    )
    tuned_state, original_state = tuned.state_dict(), original.state_dict()
    body = [key for key in original_state if not key.startswith("head.fc.")]
    assert set(tuned_state) == set(original_state) and len(body) == len(original_state) - 2
    for key in body:
        assert torch.equal(tuned_state[key], original_state[key]), key
    assert tuned.get_classifier().weight.shape == (10, 256) and tuned.num_classes == 10
    with torch.no_grad():
        assert tuned(torch.randn(1, 3, 224, 224)).shape == (1, 10)


def test_fine_tune_from_the_authors_paddle_file(reference):
    """Through a converter too: MixFormer's Paddle names, with a 1280-d projection before the classifier."""
    tuned = archdsl.create_model("mixformer_b0", pretrained=reference / "vectors" / "mixformer_b0.npz", num_classes=10)
    original = archdsl.create_model("mixformer_b0", pretrained=reference / "vectors" / "mixformer_b0.npz")
    assert tuned.num_features == 1280 and tuned.get_classifier().out_features == 10
    assert torch.equal(tuned.head.projection.weight, original.head.projection.weight)


def test_the_same_class_count_loads_the_classifier(cloformer_vector, caplog):
    stored = state_dict_of(read_checkpoint(cloformer_vector), cloformer_vector)
    with caplog.at_level(logging.WARNING, logger="archdsl"):
        model = archdsl.create_model("cloformer_xxs", pretrained=cloformer_vector, num_classes=1000)
    assert not caplog.records
    assert torch.equal(model.head.fc.weight, stored["head.weight"].float())


def test_without_num_classes_a_wrong_classifier_is_refused(tmp_path):
    ten = tmp_path / "ten.pt"
    archdsl.weights.save_checkpoint(archdsl.create_model("cloformer_xxs", num_classes=10), ten)
    with pytest.raises(archdsl.CheckpointError, match=r"1 misshapen|2 misshapen"):
        archdsl.create_model("cloformer_xxs", pretrained=ten)


def test_headless_model_returns_pooled_features(cloformer_vector):
    headless = archdsl.create_model("cloformer_xxs", pretrained=cloformer_vector, num_classes=0)
    full = archdsl.create_model("cloformer_xxs", pretrained=cloformer_vector)
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        features = headless(x)
        last_map = full.forward_features(x)[-1]
        assert features.shape == (1, headless.num_features) == (1, 256)
        assert torch.equal(features, full.forward_head(last_map, pre_logits=True))
        assert torch.equal(full.get_classifier()(features), full.forward_head(last_map))
    assert archdsl.lower_spec(headless.spec).node("head").out_shape.channels == 256
    assert isinstance(headless.get_classifier(), torch.nn.Identity)


def test_reset_classifier_and_save(tmp_path):
    model = archdsl.create_model("cloformer_xxs")
    model.reset_classifier(7)
    assert model.get_classifier().out_features == 7 and model.num_classes == 7
    with torch.no_grad():
        assert model(torch.randn(1, 3, 224, 224)).shape == (1, 7)
    archdsl.weights.save_checkpoint(model, tmp_path / "seven.pt")
    again = archdsl.create_model(tmp_path / "seven.pt")
    assert again.num_classes == 7 and torch.equal(again.head.fc.weight, model.head.fc.weight)
    model.reset_classifier(0)
    with torch.no_grad():
        assert model(torch.randn(1, 3, 224, 224)).shape == (1, model.num_features) == (1, 256)


def test_one_input_channel_is_the_rgb_model_on_grey(cloformer_vector):
    rgb = archdsl.create_model("cloformer_xxs", pretrained=cloformer_vector)
    grey = archdsl.create_model("cloformer_xxs", pretrained=cloformer_vector, in_chans=1)
    assert grey.stem.layers[0][0].weight.shape[1] == 1 and grey.spec.input.channels == 1
    image = torch.randn(1, 1, 224, 224)
    with torch.no_grad():
        expected = rgb(image.repeat(1, 3, 1, 1))
        got = grey(image)
    # the same sums, in another order: measured 1.2e-7 of logits up to 1.9
    assert (got - expected).abs().max() < 1e-6


def test_more_input_channels_repeat_and_scale_the_rgb_kernels(cloformer_vector):
    rgb = archdsl.create_model("cloformer_xxs", pretrained=cloformer_vector)
    five = archdsl.create_model("cloformer_xxs", pretrained=cloformer_vector, in_chans=5)
    kernels = rgb.stem.layers[0][0].weight
    adapted = five.stem.layers[0][0].weight
    assert adapted.shape[1] == 5
    assert torch.allclose(adapted, torch.cat([kernels, kernels[:, :2]], dim=1) * 3 / 5, atol=0, rtol=1e-6)


@pytest.mark.parametrize(
    "name, crop_pct", [("cloformer_xxs", 0.875), ("mixformer_b0", 0.875), ("nommer_t", 0.875), ("sgformer_s", 0.9)]
)
def test_each_family_carries_its_authors_preprocessing(name, crop_pct):
    spec = archdsl.load_spec(name, img_size=256, num_classes=10)
    cfg = pretrained_cfg(spec)
    assert cfg == {
        "input_size": (3, 256, 256),
        "mean": (0.485, 0.456, 0.406),
        "std": (0.229, 0.224, 0.225),
        "crop_pct": crop_pct,
        "interpolation": "bicubic",
        "num_classes": 10,
        "classifier": "head.fc",
    }


def test_pretrained_cfg_on_the_model_and_none_for_a_hybrid():
    model = archdsl.create_model("cloformer_xxs", in_chans=1)
    assert model.pretrained_cfg["input_size"] == (1, 224, 224) and model.pretrained_cfg["crop_pct"] == 0.875
    hybrid = archdsl.load_spec("cloformer_xxs", {"family": None})
    assert pretrained_cfg(hybrid) is None
