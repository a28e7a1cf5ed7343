"""The `archdsl` command: build, validate, schema, checkpoints; bad input exits non-zero, cleanly."""

from __future__ import annotations

import json
import re
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
    assert summary["pretrained_cfg"]["input_size"] == [3, 224, 224] and summary["pretrained_cfg"]["crop_pct"] == 0.875


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
    no_padding = "stages.0.blocks.0.mixer.candidates.1.fit=exact"  # the released code's rule: 240 fails
    result = run("build", "cloformer_xxs", "--img-size", "240", "--set", no_padding, "-o", str(path))
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


def test_build_headline_says_total_and_trainable_and_fvcore_only_on_request(official):
    result = run("build", "nommer_t")
    assert result.exit_code == 0, result.output
    text = " ".join(result.stdout.split())
    total, trainable = (int(n.replace(",", "")) for n in re.search(r"params ([\d,]+) total, ([\d,]+) trainable", text).groups())
    # the authors' count is every parameter; NomMer holds some that do not train
    assert total == official["nommer"]["nommer_t"]["params"] and trainable < total
    assert "(analytic; --fvcore for fvcore's count)" in text and "fvcore raw" not in text
    result = run("build", "cloformer_xxs", "--fvcore")
    assert result.exit_code == 0, result.output
    fvcore_raw = official["cloformer"]["cloformer_xxs"]["fvcore_flops"]
    assert f"fvcore raw {fvcore_raw / 1e6:.3f}M" in " ".join(result.stdout.split())


def test_list_shows_family_params_flops_and_the_search_spaces(official):
    result = run("list", "cloformer")
    assert result.exit_code == 0, result.output
    rows = {
        line.split("│")[1].strip(): [cell.strip() for cell in line.split("│")[2:-1]]
        for line in result.stdout.splitlines()
        if line.startswith("│")
    }
    assert set(rows) == {"cloformer_xxs", "cloformer_xs", "cloformer_s"}
    family, size, params, gflops = rows["cloformer_xxs"]
    assert (family, size) == ("cloformer", "224x224")
    assert params == f"{official['cloformer']['cloformer_xxs']['params'] / 1e6:.2f} M"
    assert gflops == f"{archdsl.lower_spec(archdsl.load_spec('cloformer_xxs')).flops / 1e9:.3f}"
    result = run("list", "hybrid")
    assert "  hybrid: cross-paper hybrid search space" in result.stdout
    result = run("list", "gallery/")
    rows = {line.split("│")[1].strip(): line for line in result.stdout.splitlines() if line.startswith("│")}
    assert {"gallery/convnext_t", "gallery/deit_ti", "gallery/swin_t"} <= set(rows)
    assert "28.59 M" in rows["gallery/convnext_t"]  # timm's convnext_tiny: 28,589,128


def test_version():
    result = run("--version")
    assert result.exit_code == 0 and result.stdout.strip() == f"archdsl {archdsl.__version__}"


def test_model_commands_never_import_the_search_extra():
    """--help, list, validate and build run without importing Ray, Optuna or matplotlib."""
    code = (
        "import sys\n"
        "from typer.testing import CliRunner\n"
        "from archdsl.cli import app\n"
        "for args in (['--help'], ['build', '--help'], ['list', 'cloformer_xx'], ['validate', 'cloformer_xxs'],\n"
        "             ['build', 'cloformer_xxs']):\n"
        "    result = CliRunner().invoke(app, args)\n"
        "    assert result.exit_code == 0, (args, result.output)\n"
        "print(sorted({name.split('.')[0] for name in sys.modules} & {'ray', 'optuna', 'matplotlib', 'pandas', 'fvcore'}))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]"


def test_every_search_option_reaches_the_settings():
    """The command passes its options to SearchSettings by name: one that is not a field (a typo,
    a field renamed) would be dropped, so every option is a field or one of the CLI's own, with
    the field's default."""
    import dataclasses
    import inspect

    from archdsl.cli import search
    from archdsl.search import SearchSettings

    cli_own = {"context", "out_dir", "resume", "address", "set_", "plugin", "no_baselines"}
    parameters = inspect.signature(search).parameters
    options = set(parameters) - cli_own
    assert options and options <= {field.name for field in dataclasses.fields(SearchSettings)}
    # and the command's defaults are the settings' (a search from Python and from the CLI alike)
    defaults = SearchSettings()
    differing = {name for name in options - {"objectives"} if parameters[name].default.default != getattr(defaults, name)}
    assert not differing


def test_search_without_the_extra_is_one_clean_error():
    # None in sys.modules makes `import ray` raise ModuleNotFoundError, as when it is not installed
    code = "import sys; sys.modules['ray'] = None\nfrom archdsl.cli import app\napp(['search', '--samples', '1'])\n"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert (
        "`archdsl search` needs the 'search' extra, which is not installed (no module 'ray'): pip install 'archdsl[search]'"
        in " ".join(result.stderr.split())
    )
