"""Bad input of every kind ends in one located SpecError (or a model that runs): nothing hangs,
no other exception escapes, and the CLI exits 2 without a traceback (issue #10)."""

from __future__ import annotations

import pytest
import torch

import archdsl
from archdsl.errors import SpecError
from archdsl.loading import load_data


@pytest.fixture(autouse=True)
def one_thread():
    """Small networks: one thread avoids hand-offs that cost more than their maths on a loaded machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def write(tmp_path, name, text: str | bytes):
    path = tmp_path / name
    (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
    return path


def alias_bomb(levels: int, indent: str = "") -> str:
    """`l0: &l0 lol`, then `lN: &lN [*lN-1 x10]`: 10**levels values in a few hundred bytes."""
    lines = [f"{indent}l0: &l0 lol"] + [f"{indent}l{n}: &l{n} [{', '.join([f'*l{n - 1}'] * 10)}]" for n in range(1, levels + 1)]
    return "\n".join(lines) + "\n"


def problems_of(call) -> list[str]:
    with pytest.raises(SpecError) as caught:
        call()
    return [str(problem) for problem in caught.value.problems]


# --- 1: loading is linear in the file --------------------------------------------------------------


def test_alias_bomb_is_refused_at_its_line(tmp_path):
    path = write(tmp_path, "bomb.yaml", alias_bomb(9))  # 10**9 values: minutes of work on main
    [problem] = problems_of(lambda: load_data(path))
    assert problem.startswith(f"{path}:6:5: ") and "over 100,000 values" in problem


def test_alias_bomb_through_set_and_extends(tmp_path):
    bomb = alias_bomb(9).replace("\n", ", ").rstrip(", ")
    [problem] = problems_of(lambda: archdsl.load_spec("cloformer_xxs", [f"description={{{bomb}}}"]))
    assert "--set description=" in problem and "values" in problem
    write(tmp_path, "base.yaml", "bomb:\n" + alias_bomb(9, indent="  "))
    child = write(tmp_path, "child.yaml", "extends: base.yaml\n")
    [problem] = problems_of(lambda: archdsl.load_spec(child))
    assert f"{tmp_path / 'base.yaml'}:7:" in problem and "values" in problem


def test_a_shared_anchor_within_the_limit_still_loads(tmp_path):
    path = write(tmp_path, "shared.yaml", alias_bomb(4))  # 10,000 values
    assert len(load_data(path).data["l4"]) == 10


@pytest.mark.parametrize(
    "text, expected",
    [
        ("a: " + "[" * 1000 + "]" * 1000 + "\n", r"1:68: the YAML nests deeper than 64 levels"),
        ("a: &x [*x]\n", r"1:4: this alias refers to the collection that contains it"),
        ("a: &x {b: *x}\n", r"1:4: this alias refers to the collection that contains it"),
        ("".join(f"l{n}: &l{n} [{f'*l{n - 1}' if n else 'x'}]\n" for n in range(80)), r"deeper than 64 levels"),
    ],
    ids=["1000 brackets", "anchor in its list", "anchor in its mapping", "80 chained aliases"],
)
def test_nesting_and_self_reference_are_errors_not_recursion(tmp_path, text, expected):
    [problem] = problems_of(lambda: load_data(write(tmp_path, "deep.yaml", text)))
    assert pytest.importorskip("re").search(expected, problem), problem


# --- 3: every reading failure is a located SpecError -------------------------------------------------


@pytest.mark.parametrize(
    "raw, expected",
    [
        (b"name: x\n\xff\n", ":2:1: the file is not UTF-8 text: byte 0xff"),
        (b"name: a\x07b\n", ":1:8: cannot read YAML: character '\\x07' is not allowed"),
        (b"size: " + b"9" * 5000 + b"\n", ":1:7: size: cannot read"),
        (b"when: !!int abc\n", ":1:7: when: cannot read 'abc' as int"),
    ],
    ids=["bad UTF-8", "control character", "5000 digits", "bad !!int"],
)
def test_unreadable_text_is_located(tmp_path, raw, expected):
    path = write(tmp_path, "bad.yaml", raw)
    [problem] = problems_of(lambda: load_data(path))
    assert problem.startswith(str(path)) and expected in problem, problem


@pytest.mark.parametrize(
    "base, expected",
    [
        ('"a\\0b.yaml"', "embedded null byte"),
        ("a" * 5000 + ".yaml", "File name too long"),
        ("loop1.yaml", "Symlink loop"),
    ],
    ids=["NUL byte", "5000 characters", "symlink loop"],
)
def test_unopenable_bases_are_located(tmp_path, base, expected):
    (tmp_path / "loop1.yaml").symlink_to(tmp_path / "loop2.yaml")
    (tmp_path / "loop2.yaml").symlink_to(tmp_path / "loop1.yaml")
    child = write(tmp_path, "child.yaml", f"name: c\nextends: {base}\n")
    [problem] = problems_of(lambda: archdsl.load_spec(child))
    assert problem.startswith(f"{child}:2:10: extends: base spec") and expected in problem and len(problem) < 400


@pytest.mark.parametrize(
    "override, expected",
    [
        (
            "stages.²=1",
            "--set stages.²=1: stages.²: '²' is not an index and does not exist: stages is a list of 4 items (indices 0..3)",
        ),
        (
            "stages.9.depth=8",
            "--set stages.9.depth=8: stages[9]: index 9 does not exist: stages is a list of 4 items (indices 0..3)",
        ),
        ("name.x=1", "--set name.x=1: name.x: name is a value ('cloformer_xxs'), not a mapping or list"),
    ],
)
def test_override_paths(override, expected):
    [problem] = problems_of(lambda: archdsl.load_spec("cloformer_xxs", [override]))
    assert problem.startswith(expected) and problem.count(override) == 1


def test_cli_exits_2_without_traceback_and_crashes_are_internal_errors(capsys, monkeypatch):
    from archdsl.cli import app

    def cli(*args) -> tuple[int, str]:
        with pytest.raises(SystemExit) as exited:
            app(list(args), prog_name="archdsl")  # as the console script calls it
        return exited.value.code, capsys.readouterr().err

    code, stderr = cli("validate", "cloformer_xxs", "--set", "stages.²=1")
    assert code == 2 and "Traceback" not in stderr and "--set stages.²=1: stages.²:" in stderr

    def crash(spec):
        raise KeyError("boom")

    monkeypatch.setattr(archdsl.api, "lower_spec", crash)
    code, stderr = cli("validate", "cloformer_xxs")
    assert code == 1 and "Traceback" not in stderr
    assert "internal error: KeyError: 'boom'" in stderr and "issue tracker" in stderr


# --- 2: validation time bounded for any integer ------------------------------------------------------


@pytest.mark.parametrize(
    "override, expected",
    [
        ("input.size=99999999999999", "input.size: 99,999,999,999,999 is beyond any size"),
        ("input.size=70000", "input.size: input should be less than or equal to 65536; found 70000"),
        ("stages.0.width=123456789012", "stages[0].width: 123,456,789,012 is beyond any size"),
        ("stages.0.depth=99999", "stages[0].depth: input should be less than or equal to 10000"),
    ],
)
def test_huge_sizes_are_refused_with_the_figure(override, expected):
    problems = problems_of(lambda: archdsl.lower_spec(archdsl.load_spec("nommer_t", [override])))
    assert any(expected in problem for problem in problems), problems


def test_divisor_listings_do_not_count_up_to_the_size():
    from archdsl.blocks.layers import common_divisors, divisors

    assert divisors(2**24 - 3) == [1, 2**24 - 3]  # a prime: 4,096 trial divisions, not 16 million
    assert common_divisors(65536, 49152) == [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384]
    message = "\n".join(
        problems_of(
            lambda: archdsl.lower_spec(
                archdsl.load_spec(
                    "cloformer_xxs",
                    [
                        "stages.0.width=16777213",
                        "stages.0.blocks.0.mixer.candidates.0.channels=16777189",
                        "stages.0.blocks.0.mixer.candidates.1.channels=24",
                    ],
                )
            )
        )
    )
    assert "heads that do: [1, 11, 13, 23, 143," in message and "1525199, 16777189]" in message


# --- 4: what validates runs --------------------------------------------------------------------------


@pytest.mark.parametrize("pads, size", [({1: 8}, 32), ({1: 8}, 224), ({0: 8}, 224)])
def test_a_side_channel_read_on_a_padded_map_is_refused_at_validation(pads, size):
    overrides = ["stages.2.depth=2"] + [f"stages.2.blocks.{block}.mixer.pad_multiple={pad}" for block, pad in pads.items()]
    [problem] = problems_of(lambda: archdsl.create_model("sgformer_s", overrides=overrides, img_size=size))
    assert "side channel 'significance' is a" in problem and "the same `pad_multiple`" in problem


def test_the_same_padding_on_both_blocks_runs():
    overrides = ["stages.2.depth=2", "stages.2.blocks.0.mixer.pad_multiple=8", "stages.2.blocks.1.mixer.pad_multiple=8"]
    model = archdsl.create_model("sgformer_s", overrides=overrides, img_size=32, num_classes=3).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 32, 32)).shape == (1, 3)


def test_img_size_on_a_spec_without_input(tmp_path):
    text = archdsl.loading.resolve_spec_path("cloformer_xxs").read_text()
    without_input = "\n".join(line for line in text.splitlines() if not line.startswith("input:"))
    path = write(tmp_path, "no_input.yaml", without_input)
    assert archdsl.load_spec(path, img_size=160).image_size == (160, 160)


# --- 6: every error located, in the language's words ---------------------------------------------------


def test_empty_file_is_located(tmp_path):
    path = write(tmp_path, "empty.yaml", "# nothing yet\n")
    problems = problems_of(lambda: archdsl.load_spec(path))
    assert problems[0] == f"{path}:1:1: stem: required key 'stem' is missing"


@pytest.mark.parametrize(
    "override, expected",
    [
        (
            {"stem": {"channels": 3}},
            "stem: missing `op:`; write `op: NAME` with one of the ops valid here: cloformer_stem, mixformer_stem",
        ),
        (
            {"stages.1.blocks.0": [1, 2]},
            "stages[1].blocks[0]: expected a mapping with the keys mixer, ffn, norm, residual, layer_scale; found a list of 2 items [1, 2]",
        ),
        (
            {"input": list(range(100))},
            "input: expected a mapping with the keys channels, size; found a list of 100 items [0, 1, 2, 3, ...]",
        ),
        ({"head": 5}, "head: expected an op: its name (one of class_token_head, pool_linear, projection_head)"),
    ],
)
def test_schema_errors_in_the_language_s_words(override, expected):
    [problem] = problems_of(lambda: archdsl.load_spec("cloformer_xxs", override))
    assert expected in problem and "instance of" not in problem and len(problem) < 400, problem


def test_over_indented_line_gets_a_hint(tmp_path):
    path = write(tmp_path, "indent.yaml", "name: x\nstem:\n    op: a\n  b: 2\n")
    [problem] = problems_of(lambda: archdsl.load_spec(path))
    assert problem.startswith(f"{path}:4:3: cannot parse YAML") and "indentation" in problem


def test_inherited_errors_name_the_spec_that_extended_the_base(tmp_path):
    base = write(tmp_path, "base.yaml", archdsl.loading.resolve_spec_path("cloformer_xxs").read_text())
    # 240 with the released code's rule for the stage-0 pool (the bundled spec pads instead): pool 8 fails there
    exact = "stages: {0: {blocks: {0: {mixer: {candidates: {1: {fit: exact}}}}}}}\n"
    child = write(tmp_path, "child.yaml", "extends: base.yaml\ninput: {size: 240}\n" + exact)
    problems = problems_of(lambda: archdsl.lower_spec(archdsl.load_spec(child)))
    assert all(f"{base}:" in problem and f"(inherited by {child})" in problem for problem in problems), problems


# --- 7: every graph problem at once ----------------------------------------------------------------------


def test_independent_graph_problems_come_together():
    overrides = [
        "stages.0.blocks.0.mixer.candidates.0.heads=5",
        "stages.1.blocks.0.mixer.candidates.0.heads=7",
        "stages.2.blocks.0.mixer.candidates.0.channels=100",
    ]
    problems = problems_of(lambda: archdsl.lower_spec(archdsl.load_spec("cloformer_xxs", overrides)))
    assert len(problems) == 3
    assert "stages[0].blocks[0].mixer.candidates[0].heads: 5 heads" in problems[0]
    assert "stages[1].blocks[0].mixer.candidates[0].heads: 7 heads" in problems[1]
    assert "stages[2].blocks[0].mixer.fusion: candidate channel shares [100, 64]" in problems[2]


# --- 8: a model given another size than it was built for --------------------------------------------------


@pytest.mark.parametrize("name", ["sgformer_s", "nommer_t"])
def test_built_size_is_named_when_another_cannot_run(name):
    model = archdsl.create_model(name, img_size=224).eval()
    with torch.no_grad(), pytest.raises(SpecError) as caught:
        model(torch.randn(1, 3, 256, 256))
    message = str(caught.value)
    assert "input.size: this model was built for 224x224 inputs and cannot run on a 256x256 input" in message
    assert "create_model(spec, img_size=256)" in message


def test_models_that_can_run_at_another_size_still_do():
    model = archdsl.create_model("cloformer_xxs", img_size=64, num_classes=3).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 3, 128, 128)).shape == (1, 3)


# --- 5: memory known before building ----------------------------------------------------------------------


def test_activations_beyond_memory_are_refused_before_building():
    [problem] = problems_of(lambda: archdsl.create_model("cloformer_xxs", overrides={"input.channels": 1000000}))
    assert "input: the input and the maps between this network's layers hold 50,176,665,832 values at batch 1" in problem
    assert "(186.9 GB; the 1000000x224x224 input alone), more than this machine's" in problem
    [problem] = problems_of(lambda: archdsl.create_model("sgformer_s", img_size=65536))
    assert "stem: the input and the maps" in problem and "stem alone outputs 64x16384x16384" in problem


def test_parameters_beyond_max_memory_are_refused_with_the_figures():
    [problem] = problems_of(lambda: archdsl.create_model("cloformer_xxs", num_classes=1000000, max_memory="500M"))
    assert problem.endswith(
        "head: this network has 260,909,728 parameters (995.3 MB; head alone 257,000,512) and its maps hold "
        "1,815,360 values at batch 1 (6.9 MB), more than the --max-memory of 500.0 MB; make the network or "
        "its input smaller"
    )
    assert archdsl.create_model("cloformer_xxs", num_classes=1000, max_memory="500M").head.fc.out_features == 1000


def test_cli_max_memory():
    from typer.testing import CliRunner

    from archdsl.cli import app

    result = CliRunner().invoke(app, ["validate", "cloformer_xxs", "--max-memory", "1.5M"])
    assert result.exit_code == 2 and "more than the --max-memory of 1.5 MB" in result.output
    result = CliRunner().invoke(app, ["validate", "cloformer_xxs", "--max-memory", "lots"])
    assert result.exit_code == 2 and "--max-memory: memory 'lots' is not a size such as 8G" in result.output
