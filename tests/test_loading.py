"""Loading: YAML with locations, extends, overrides, bundled names, refused input."""

from __future__ import annotations

import textwrap

import pytest

import archdsl
from archdsl.errors import SpecError
from archdsl.loading import load_data, resolve_spec_path

BASE = """\
name: base
input: {size: 224}
stem: cloformer_stem
stages:
  - width: 32
    depth: 2
    blocks:
      - norm: group_norm
        mixer:
          candidates:
            - {op: attn_conv, channels: 16, heads: 2, kernel: 3}
            - {op: pooled_attention, channels: 16, heads: 2, pool: 4}
          fusion: concat_projection
        ffn: {op: conv_ffn}
  - width: 64
    depth: 1
    downsample: strided_conv_ffn
    blocks:
      - norm: group_norm
        mixer:
          candidates: [{op: pooled_attention, channels: 64, heads: 4, pool: 2}]
        ffn: conv_ffn
head: {op: pool_linear, norm: group_norm, classes: 10}
"""


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_extends_chain_merges_mappings_and_replaces_lists(tmp_path):
    write(tmp_path, "base.yaml", BASE)
    write(
        tmp_path,
        "middle.yaml",
        """\
        extends: base.yaml
        name: middle
        head: {classes: 100}          # merged key by key: op and norm are inherited
        """,
    )
    sub = tmp_path / "sub"
    sub.mkdir()
    child = write(
        sub,
        "child.yaml",
        """\
        extends: ../middle.yaml       # relative to this file
        name: child
        stages: {1: {depth: 3}}       # a mapping of indices patches the inherited list
        """,
    )
    spec = archdsl.load_spec(child)
    assert spec.name == "child"
    assert spec.head.classes == 100 and spec.head.norm == "group_norm"
    assert [stage.depth for stage in spec.stages] == [2, 3]
    assert spec.stages[1].width == 64

    replaced = write(
        tmp_path,
        "replaced.yaml",
        """\
        extends: base.yaml
        stages:
          - width: 32
            depth: 1
            blocks: [{mixer: {candidates: [{op: pooled_attention, heads: 2}]}, ffn: conv_ffn}]
        """,
    )
    assert len(archdsl.load_spec(replaced).stages) == 1  # a list is replaced, not merged


def test_errors_point_at_the_file_that_wrote_the_value(tmp_path):
    write(tmp_path, "base.yaml", BASE)
    child = write(
        tmp_path,
        "child.yaml",
        """\
        extends: base.yaml
        stages: {0: {depth: 0}}
        """,
    )
    with pytest.raises(SpecError) as caught:
        archdsl.load_spec(child)
    message = str(caught.value)
    assert f"{child}:2:" in message and "stages[0].depth" in message and "greater than 0" in message

    # a value inherited unchanged points into the base file, even for graph-level checks
    spec = archdsl.load_spec(child, overrides=["stages.0.depth=2", "input.size=200"])
    with pytest.raises(SpecError) as caught:
        archdsl.lower_spec(spec)
    assert f"{tmp_path / 'base.yaml'}:12:" in str(caught.value)
    assert "stages[0].blocks[0].mixer.candidates[1].pool: pool 4 does not divide the 50x50 map" in str(caught.value)


def test_extends_cycle_is_located(tmp_path):
    write(tmp_path, "a.yaml", "extends: b.yaml\nname: a\n")
    write(tmp_path, "b.yaml", "name: b\nextends: a.yaml\n")
    with pytest.raises(SpecError) as caught:
        archdsl.load_spec(tmp_path / "a.yaml")
    message = str(caught.value)
    assert "cycle" in message and f"{tmp_path / 'b.yaml'}:2:" in message and "extends" in message


def test_missing_base_is_located(tmp_path):
    path = write(tmp_path, "a.yaml", "name: a\nextends: nowhere.yaml\n")
    with pytest.raises(SpecError, match=r"a\.yaml:2:10: extends: base spec 'nowhere.yaml' not found"):
        archdsl.load_spec(path)


def test_overrides_as_strings_and_mapping():
    spec = archdsl.load_spec("cloformer_xxs", ["stages.2.depth=8", "head.classes=10"])
    assert spec.stages[2].depth == 8 and spec.head.classes == 10
    spec = archdsl.load_spec("cloformer_xxs", {"stages.0.blocks.0.mixer.candidates.1.pool": 4})
    assert spec.stages[0].blocks[0].mixer.candidates[1].pool == 4
    with pytest.raises(SpecError, match=r"--set stages\.9\.depth=8: stages\[9\]: .*does not exist"):
        archdsl.load_spec("cloformer_xxs", ["stages.9.depth=8"])
    with pytest.raises(SpecError, match=r"--set stages\.2\.depth=-1: stages\[2\]\.depth: input should be greater than 0"):
        archdsl.load_spec("cloformer_xxs", ["stages.2.depth=-1"])
    with pytest.raises(SpecError, match="KEY=VALUE"):
        archdsl.load_spec("cloformer_xxs", ["stages.2.depth"])


def test_bundled_names_resolve():
    assert resolve_spec_path("cloformer_xxs").name == "cloformer_xxs.yaml"
    assert archdsl.load_spec("cloformer_s").name == "cloformer_s"
    with pytest.raises(SpecError, match="Did you mean cloformer_xxs"):
        archdsl.load_spec("clofromer_xxs")


@pytest.mark.parametrize(
    "text, expected",
    [
        (
            "stem: !!python/object/apply:os.system ['echo owned']\n",
            r"1:7: stem: YAML tag 'tag:yaml.org,2002:python/object/apply:os.system' is not allowed",
        ),
        ("stem: !!python/name:os.system\n", r"1:7: stem: YAML tag .*python/name:os.system' is not allowed"),
        ("name: x\nstages: [\n", r"3:1: cannot parse YAML"),
        ("name: x\nname: y\n", r"2:1: name: key 'name' appears twice"),
        ("- just\n- a list\n", r"1:1: a spec is a YAML mapping"),
    ],
)
def test_refused_yaml(tmp_path, text, expected):
    path = write(tmp_path, "bad.yaml", text)
    with pytest.raises(SpecError, match=expected):
        load_data(path)


def test_python_tags_are_never_executed(tmp_path):
    marker = tmp_path / "owned"
    path = write(tmp_path, "bad.yaml", f"stem: !!python/object/apply:os.system ['touch {marker}']\n")
    with pytest.raises(SpecError):
        archdsl.load_spec(path)
    assert not marker.exists()


def test_overriding_a_loaded_spec_keeps_its_source_lines():
    spec = archdsl.load_spec("cloformer_xxs", ["stages.0.blocks.0.mixer.candidates.1.fit=exact"])  # no padding: 240 fails
    resized = archdsl.load_spec(spec, img_size=240)
    with pytest.raises(SpecError, match=r"cloformer_xxs\.yaml:21:\d+: stages\[0\]\.blocks\[0\]\.mixer\.candidates\[1\]\.pool"):
        archdsl.lower_spec(resized)


def test_yaml_merge_keys_with_overrides(tmp_path):
    path = write(
        tmp_path,
        "merge.yaml",
        """\
        base: &conv {op: attn_conv, channels: 16, heads: 2, kernel: 3}
        wider: {<<: *conv, kernel: 7}
        """,
    )
    data = load_data(path).data
    assert data["wider"] == {"op": "attn_conv", "channels": 16, "heads": 2, "kernel": 7}
    with pytest.raises(SpecError, match="key 'kernel' appears twice"):
        load_data(write(tmp_path, "twice.yaml", "a: {<<: {x: 1}, kernel: 7, kernel: 5}\n"))


def test_extends_accepts_a_bundled_name(tmp_path):
    child = tmp_path / "deeper.yaml"
    child.write_text("extends: cloformer_xxs\nname: deeper\nstages: {2: {depth: 8}}\n")
    spec = archdsl.load_spec(child)
    bundled = archdsl.load_spec("cloformer_xxs")
    assert spec.name == "deeper" and spec.stages[2].depth == 8
    assert spec.stages[0] == bundled.stages[0] and spec.head == bundled.head
    # a file beside the spec wins over the bundled spec of the same name
    (tmp_path / "cloformer_xxs").write_text(child.read_text().replace("extends: cloformer_xxs\n", "extends: cloformer_xs.yaml\n"))
    (tmp_path / "cloformer_xs.yaml").write_text("extends: cloformer_xs\nname: local\n")  # itself extends the bundled one
    xs_width = archdsl.load_spec("cloformer_xs").stages[0].width
    assert xs_width != bundled.stages[0].width and archdsl.load_spec(child).stages[0].width == xs_width
    child.write_text("extends: cloformer_xxx\n")
    with pytest.raises(
        SpecError, match=r"deeper.yaml:1:10: extends: base spec 'cloformer_xxx' not found .*and for a bundled spec of that name"
    ):
        archdsl.load_spec(child)
