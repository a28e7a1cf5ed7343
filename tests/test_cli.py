"""The `archdsl` command: build, validate, schema, checkpoints; bad input exits non-zero, cleanly."""

from __future__ import annotations

import json
import subprocess
import sys

import torch
from typer.testing import CliRunner

import archdsl
from archdsl.cli import app

runner = CliRunner()


def run(*args):
    return runner.invoke(app, list(args), catch_exceptions=False)


def test_build_json_has_the_summary(official):
    result = run("build", "cloformer_xxs", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert {"name", "img_size", "params", "flops", "flops_fvcore_raw", "flops_analytic", "stages"} <= summary.keys()
    assert summary["name"] == "cloformer_xxs" and summary["img_size"] == [224, 224]
    assert summary["params"] == official["cloformer"]["cloformer_xxs"]["params"]
    assert summary["flops_fvcore_raw"] == official["cloformer"]["cloformer_xxs"]["fvcore_flops"]
    stages = summary["stages"]
    assert [part["part"] for part in stages] == ["stem", "stage 0", "stage 1", "stage 2", "stage 3", "head"]
    assert [part["blocks"] for part in stages[1:5]] == [2, 2, 6, 2]
    assert stages[4]["out_shape"] == [256, 7, 7]
    assert sum(part["params"] for part in stages) == summary["params"]
    assert sum(part["flops"] for part in stages) == summary["flops_analytic"]


def test_build_table_with_overrides():
    result = run("build", "cloformer_xxs", "--img-size", "256", "--num-classes", "10", "--set", "stages.2.depth=4")
    assert result.exit_code == 0, result.output
    assert "256x256" in result.stdout and "128x16x16" in result.stdout
    stage_2 = next(line for line in result.stdout.splitlines() if "stage 2" in line)
    assert stage_2.split("│")[2].strip() == "4"  # its block count


def test_checkpoint_round_trip(tmp_path):
    path = tmp_path / "xxs.pt"
    result = run("build", "cloformer_xxs", "--num-classes", "10", "--set", "stages.2.depth=4", "-o", str(path))
    assert result.exit_code == 0, result.output
    model = archdsl.create_model(path)
    assert not model.training and model.spec.stages[2].depth == 4 and model.head.fc.out_features == 10
    stored = torch.load(path, weights_only=True)
    x = torch.randn(1, 3, 224, 224)
    again = archdsl.create_model(stored["spec"]).eval()
    again.load_state_dict(stored["state_dict"])
    with torch.no_grad():
        assert torch.equal(model(x), again(x))


def test_validate_ok_and_bad(tmp_path):
    result = run("validate", "cloformer_s")
    assert result.exit_code == 0 and "ok: cloformer_s is valid" in result.stdout
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\nstem: cloformer_stem\nstages: []\nhead: pool_linear\n")
    result = run("validate", str(bad))
    assert result.exit_code == 2
    assert f"{bad}:3:9: stages:" in result.stderr and "at least 1 item" in result.stderr


def test_bad_input_writes_nothing(tmp_path):
    path = tmp_path / "never.pt"
    result = run("build", "cloformer_xxs", "--img-size", "240", "-o", str(path))
    assert result.exit_code == 2 and "pool 8 does not divide the 60x60 map" in result.stderr
    assert not path.exists() and not list(tmp_path.iterdir())


def test_schema_is_json_schema_of_the_language():
    result = run("schema")
    schema = json.loads(result.stdout)
    text = json.dumps(schema)
    for op in ("attn_conv", "pooled_attention", "cloformer_stem", "strided_conv_ffn", "concat_projection"):
        assert op in text
    assert "stages" in schema["$defs"]["Spec"]["properties"]


def test_console_script_errors_have_no_traceback(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nstem: !!python/object/apply:os.system ['true']\n")
    result = subprocess.run([sys.executable, "-m", "archdsl.cli", "validate", str(bad)], capture_output=True, text=True)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr and f"{bad}:2:7: stem: YAML tag" in result.stderr


def test_non_square_img_size():
    result = run("build", "mixformer_b0", "--img-size", "224x288", "--json")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["img_size"] == [224, 288] and summary["stages"][-2]["out_shape"] == [192, 7, 9]
    assert summary["flops_analytic"] == summary["flops"]
    result = run("validate", "mixformer_b0", "--img-size", "224xabc")
    assert result.exit_code == 2 and "is not N or HxW" in result.stderr


def test_nomination_maps_png(tmp_path):
    from PIL import Image

    image = tmp_path / "input.png"
    Image.fromarray((torch.rand(64, 64, 3) * 255).byte().numpy()).save(image)
    output = tmp_path / "maps.png"
    result = run("nominations", "nommer_t", str(image), "--img-size", "224", "-o", str(output))
    assert result.exit_code == 0, result.output
    assert Image.open(output).size[0] > 0
    assert "pixels per candidate" in result.stdout
    per_layer = [line for line in result.stdout.splitlines() if "pixels per candidate" in line]
    assert len(per_layer) == 4  # NomMer-T: two S-NomMer layers in each of stages 0 and 1
    assert all(sum(eval(line.split("candidate")[1])) in (56 * 56, 28 * 28) for line in per_layer)
    result = run("nominations", "cloformer_xxs", str(image), "-o", str(tmp_path / "none.png"))
    assert result.exit_code == 2 and "no nomination fusion" in result.stderr
