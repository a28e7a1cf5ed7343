"""`archdsl schema` (and `--space`): a Draft 2020-12 schema that accepts every bundled spec and
search space, refuses what validation refuses at the schema level, and describes every field."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

from archdsl.schema import json_schema

SPECS = Path(__file__).resolve().parents[1] / "src" / "archdsl" / "specs"


def as_json(path: Path):
    return json.loads(json.dumps(yaml.safe_load(path.read_text())))  # as an editor sees YAML: string keys


@pytest.fixture(scope="module", params=[False, True], ids=["spec", "space"])
def validator(request):
    schema = json_schema(space=request.param)
    jsonschema.Draft202012Validator.check_schema(schema)
    return request.param, jsonschema.Draft202012Validator(schema)


def test_every_bundled_file_is_accepted(validator):
    space, checker = validator
    files = sorted((SPECS / "search").glob("*.yaml")) if space else sorted(SPECS.glob("*.yaml"))
    assert files
    for path in files:
        errors = [f"{list(error.absolute_path)}: {error.message[:200]}" for error in checker.iter_errors(as_json(path))]
        assert not errors, f"{path.name}: {errors}"


@pytest.mark.parametrize(
    "patch",
    [
        {"stem": "no_such_stem"},
        {"stagez": []},
        {"stages": []},
        {"head": {"op": "pool_linear", "classes": "many"}},
        {"stages": [{"width": 8, "depth": 1, "blocks": [{"mixer": {"candidates": [{"op": "lepe", "kernel": 3, "wings": 2}]}}]}]},
    ],
)
def test_what_validation_refuses_by_shape_the_schema_refuses(validator, patch):
    _, checker = validator
    spec = {**as_json(SPECS / "cloformer_xxs.yaml"), **patch}
    assert list(checker.iter_errors(spec))


def test_patches_under_extends_are_partial_but_checked(validator):
    _, checker = validator
    assert not list(checker.iter_errors({"extends": "base.yaml", "head": {"classes": 10}, "stages": {"1": {"depth": 3}}}))
    assert list(checker.iter_errors({"extends": "base.yaml", "stages": {"1": {"dept": 3}}}))


def test_a_space_may_extend_another():
    checker = jsonschema.Draft202012Validator(json_schema(space=True))
    narrower = {
        "extends": "hybrid.yaml",
        "name": "narrow",
        "search": {"budget": "400MFLOPs"},
        "stages": {
            "0": {"width": {"choice": [24, 32]}, "depth": {"range": [1, 2]}},
            "2": {"depth": {"range": [2, 6], "step": 2}},
        },
    }
    assert not list(checker.iter_errors(narrower))
    assert list(checker.iter_errors({**narrower, "stages": {"0": {"width": {"choise": [24]}}}}))
    # an option that is itself derived, as the grammar allows (a window, or one fitted to the map)
    derived_option = {"stages": {"0": {"width": {"choice": [24, {"expr": "2 * 16"}]}}}}
    assert not list(checker.iter_errors({**narrower, **derived_option}))


def test_every_field_is_described(validator):
    space, _ = validator
    missing = []

    def walk(node, where):
        if isinstance(node, dict):
            for name, value in node.get("properties", {}).items():
                if not value.get("description"):
                    missing.append(f"{where}.{name}")
            for key, value in node.items():
                walk(value, f"{where}/{key}")
        elif isinstance(node, list):
            for value in node:
                walk(value, where)

    walk(json_schema(space=space), "")
    assert not missing
