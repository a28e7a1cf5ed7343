"""A user's ops from their own module: --plugin, ARCHDSL_PLUGINS and the archdsl.ops entry points
make them usable by every command (validate, build with FLOPs, search); bad plugins are one error."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Literal

import pytest
from typer.testing import CliRunner

from archdsl import plugins
from archdsl.cli import app
from archdsl.ops import CandidateOp, register, unregister

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
# the README's "Adding an op" example, as a user's module
PLUGIN_SOURCE = next(b for b in re.findall(r"```python\n(.*?)```", README, re.S) if "@register" in b)
SPEC = """\
extends: cloformer_xxs
stages: {0: {blocks: {0: {mixer: {candidates: [{op: depthwise_blur, kernel: 5}], fusion: sum}}}}}
"""


def run(*args):
    return CliRunner().invoke(app, list(args), catch_exceptions=False)


@pytest.fixture
def plugin_dir(tmp_path, monkeypatch):
    """blur_ops.py (registers depthwise_blur) importable from tmp_path; the registry, the loaded
    set and ARCHDSL_PLUGINS restored afterwards."""
    (tmp_path / "blur_ops.py").write_text(PLUGIN_SOURCE)
    (tmp_path / "blur.yaml").write_text(SPEC)
    monkeypatch.syspath_prepend(str(tmp_path))
    # set, then deleted: monkeypatch then removes what `--plugin` adds to the environment, which
    # the later tests' Ray workers would otherwise inherit
    monkeypatch.setenv(plugins.ENVIRONMENT_VARIABLE, "")
    monkeypatch.delenv(plugins.ENVIRONMENT_VARIABLE)
    yield tmp_path
    unregister("candidate", "depthwise_blur")
    sys.modules.pop("blur_ops", None)
    plugins._loaded.discard("blur_ops")


def subprocess_env(path: Path, **extra: str) -> dict:
    python_path = os.pathsep.join([str(path), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": python_path, **extra}


def test_plugin_op_validates_builds_and_counts_from_the_cli(plugin_dir):
    spec = str(plugin_dir / "blur.yaml")
    result = run("validate", spec)
    assert result.exit_code == 2 and "unknown op 'depthwise_blur'" in result.stderr
    result = run("validate", spec, "--plugin", "blur_ops")
    assert result.exit_code == 0, result.output
    result = run("build", spec, "--json", "--plugin", "blur_ops")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    blur_flops = 32 * 5 * 5 * 56 * 56  # a depthwise 5x5 over stage 0's 32x56x56 map, first block
    assert summary["flops"] == summary["flops_analytic"]
    assert summary["stages"][1]["flops"] > blur_flops
    assert os.environ[plugins.ENVIRONMENT_VARIABLE] == "blur_ops"  # what the search's workers inherit


def test_environment_variable_and_entry_point_load_plugins(plugin_dir):
    spec = str(plugin_dir / "blur.yaml")
    command = [sys.executable, "-m", "archdsl.cli", "validate", spec]
    result = subprocess.run(
        command, capture_output=True, text=True, env=subprocess_env(plugin_dir, ARCHDSL_PLUGINS=f"json,{os.pathsep}blur_ops")
    )
    assert result.returncode == 0, result.stderr
    assert "ok: " in result.stdout
    # an installed distribution declaring the module in the archdsl.ops entry-point group
    info = plugin_dir / "blur_plugin-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: blur-plugin\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[archdsl.ops]\nblur = blur_ops\n")
    result = subprocess.run(command, capture_output=True, text=True, env=subprocess_env(plugin_dir))
    assert result.returncode == 0, result.stderr


def test_a_plugin_that_does_not_import_is_one_error(plugin_dir):
    result = run("validate", "cloformer_xxs", "--plugin", "no_such_ops")
    assert result.exit_code == 2
    assert "error: --plugin no_such_ops: plugin module 'no_such_ops' not found" in result.stderr
    (plugin_dir / "broken_ops.py").write_text("import archdsl\n\nraise RuntimeError('the plugin is broken')\n")
    result = run("build", "cloformer_xxs", "--plugin", "broken_ops")
    assert result.exit_code == 2 and "Traceback" not in result.stderr
    assert (
        f"plugin module 'broken_ops' does not import: RuntimeError: the plugin is broken ({plugin_dir / 'broken_ops.py'}:3)"
    ) in " ".join(result.stderr.split())


def test_a_plugin_that_reuses_an_op_name_is_one_error(plugin_dir):
    (plugin_dir / "clash_ops.py").write_text(PLUGIN_SOURCE.replace('"depthwise_blur"', '"attn_conv"'))
    result = run("validate", "cloformer_xxs", "--plugin", "clash_ops")
    assert result.exit_code == 2
    text = " ".join(result.stderr.split())
    assert (
        "plugin module 'clash_ops' does not import: ValueError: op 'attn_conv' (candidate) is already registered "
        "by archdsl.blocks.cloformer.AttnConv"
    ) in text
    assert f"{plugin_dir / 'clash_ops.py'}:" in text


def test_register_refuses_a_second_class_whatever_its_module():
    namespace = {"Literal": Literal, "CandidateOp": CandidateOp}
    exec("class AttnConv(CandidateOp):\n    op: Literal['attn_conv'] = 'attn_conv'\n", namespace)
    impostor = namespace["AttnConv"]  # same name and qualname as the bundled class, another module
    with pytest.raises(ValueError, match="op 'attn_conv' .candidate. is already registered by archdsl.blocks.cloformer.AttnConv"):
        register(impostor)
    from archdsl.blocks.cloformer import AttnConv

    assert register(AttnConv) is AttnConv  # registering the same class again is harmless


def test_plugin_op_is_searchable_from_the_cli(plugin_dir):
    space = plugin_dir / "space.yaml"
    space.write_text("""\
name: blur_space
search: {budget: 1GFLOPs}
input: {channels: 3, size: 32}
stem: cloformer_stem
stages:
  - width: {choice: [16, 32]}
    depth: 1
    blocks:
      - norm: group_norm
        mixer: {candidates: [{op: depthwise_blur, kernel: {choice: [3, 5]}}], fusion: sum}
        ffn: {op: conv_ffn, ratio: 2, kernel: 3}
head: pool_linear
""")
    out = plugin_dir / "out"
    command = [
        sys.executable,
        "-m",
        "archdsl.cli",
        "search",
        "--plugin",
        "blur_ops",
        "--space",
        str(space),
        "--samples",
        "2",
        "--searcher",
        "random",
        "--objective",
        "params",
        "--no-baselines",
        "--out",
        str(out),
    ]
    result = subprocess.run(command, capture_output=True, text=True, env=subprocess_env(plugin_dir))
    assert result.returncode == 0, result.stderr[-3000:]
    best = (out / "best.yaml").read_text()
    assert "op: depthwise_blur" in best
