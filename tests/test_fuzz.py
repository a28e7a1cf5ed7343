"""Seeded mutation fuzzing of the bundled specs: every mutant either builds and runs a forward
pass, or is refused by one SpecError whose every problem names a line or the override at fault.

Mutations: keys removed, renamed or added; values replaced by other types, signs and sizes; op
names swapped across roles; YAML tricks (alias bombs, deep nesting, control characters, bad
UTF-8, tabs, truncation, over-indentation, self-references); `extends:` to missing, odd or
looping bases; `--set` overrides with odd paths and values. `ARCHDSL_FUZZ_CASES` (default 200)
and `ARCHDSL_FUZZ_SEED` (default 0) choose the run; the README's reliability section quotes the
longest clean run."""

from __future__ import annotations

import copy
import os
import random
import traceback

import torch
import yaml

import archdsl
from archdsl.errors import SpecError
from archdsl.loading import resolve_spec_path
from archdsl.ops import ROLES, ops_for

CASES = int(os.environ.get("ARCHDSL_FUZZ_CASES", "200"))
SEED = int(os.environ.get("ARCHDSL_FUZZ_SEED", "0"))
# the input sides each base runs at (NomMer's 7x7 windows need multiples of 224)
BASES = {"cloformer_xxs": [32, 64], "mixformer_b0": [32, 64], "nommer_t": [224], "sgformer_s": [32, 64], "sgformer_m": [32, 64]}
NUDGES = [1, 2, 3, 4, 6, 8, 16, 32]
ODD_VALUES = [
    0,
    -1,
    1,
    2,
    3,
    5,
    7,
    8,
    16,
    2**40,
    10**6,
    1.5,
    -0.0,
    float("inf"),
    "",
    "x",
    "²",
    "3",
    True,
    None,
    [],
    {},
    [1, 2],
    {"op": "lepe"},
    "a" * 300,
]
ODD_KEYS = ["", "op", "extends", "stages", "blocks", "nonsense", 0, -1, "stages.0", "ｓｔｅｍ"]
ALL_OPS = sorted({name for role in ROLES for name in ops_for(role)}) + ["", "unknown_op", "LEPE"]


def _paths(node, prefix=()):
    yield prefix
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _paths(value, prefix + (key,))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _paths(value, prefix + (index,))


def _get(node, path):
    for part in path:
        node = node[part]
    return node


def _mutate_data(rng: random.Random, data: dict) -> str:
    paths = list(_paths(data))[1:]
    numbers = [path for path in paths if type(_get(data, path)) is int]
    kind = rng.choice(["nudge", "nudge", "nudge", "delete", "rename", "value", "op", "add", "duplicate", "empty"])
    path = rng.choice(numbers if kind == "nudge" else paths)
    parent, key = _get(data, path[:-1]), path[-1]
    if kind == "nudge":  # another plausible number: often still a valid network, which must then run
        parent[key] = rng.choice(NUDGES)
    elif kind == "delete":
        del parent[key]
    elif kind == "rename" and isinstance(parent, dict):
        parent[str(key)[:-1] + rng.choice("xyz_")] = parent.pop(key)
    elif kind == "op":
        parent[key] = rng.choice(ALL_OPS) if rng.random() < 0.5 else {"op": rng.choice(ALL_OPS)}
    elif kind == "add" and isinstance(parent, dict):
        parent[rng.choice(ODD_KEYS)] = rng.choice(ODD_VALUES)
    elif kind == "duplicate" and isinstance(parent, list):
        parent.insert(key, copy.deepcopy(parent[key]))
    elif kind == "empty":
        parent[key] = type(parent[key])() if isinstance(parent[key], (dict, list)) else None
    else:
        parent[key] = copy.deepcopy(rng.choice(ODD_VALUES))
    return f"{kind} at {'.'.join(map(str, path))}"


def _mutate_text(rng: random.Random, text: str, directory) -> tuple[str | bytes, str]:
    lines = text.splitlines()
    at = rng.randrange(len(lines))
    kind = rng.choice(["bomb", "nest", "control", "utf8", "tab", "truncate", "indent", "selfref", "extends", "merge"])
    if kind == "bomb":
        bomb = ["l0: &l0 lol"] + [f"l{n}: &l{n} [{', '.join([f'*l{n - 1}'] * 10)}]" for n in range(1, 9)]
        return "\n".join(bomb + lines) + "\n", kind
    if kind == "nest":
        depth = rng.choice([70, 1000, 20000])
        return text + f"deep: {'[' * depth}{']' * depth}\n", kind
    if kind == "control":
        return text[: len(text) // 2] + chr(rng.choice([0, 7, 27, 0x85, 0xFFFE])) + text[len(text) // 2 :], kind
    if kind == "utf8":
        raw = text.encode()
        cut = rng.randrange(len(raw))
        return raw[:cut] + bytes([rng.choice([0xFF, 0xC3, 0x80])]) + raw[cut:], kind
    if kind == "tab":
        lines[at] = "\t" + lines[at]
    elif kind == "truncate":
        return text[: rng.randrange(len(text))], kind
    elif kind == "indent":
        lines[at] = " " * rng.choice([1, 3, 8]) + lines[at]
    elif kind == "selfref":
        lines.append(rng.choice(["loop: &x [*x]", "loop: &x {a: *x}", "loop: *undefined", "loop: &x {<<: *x}"]))
    elif kind == "extends":
        (directory / "loop_a.yaml").unlink(missing_ok=True)
        (directory / "loop_a.yaml").symlink_to(directory / "loop_a.yaml")
        target = rng.choice(["missing.yaml", "spec.yaml", '"a\\0b"', "a" * 5000, "loop_a.yaml", "[1, 2]", "{}", "/", ".."])
        lines.insert(0, f"extends: {target}")
    else:
        lines.append("merged: {<<: [1, 2]}")
    return "\n".join(lines) + "\n", kind


def _overrides(rng: random.Random, data: dict) -> list[str]:
    paths = [".".join(map(str, path)) for path in list(_paths(data))[1:]]
    odd_paths = ["stages.²", "stages.99.depth", "stages.-9.width", "", ".", "stem..op", "head.classes.x", "input.size.0"]
    key = rng.choice(paths + odd_paths)
    value = rng.choice(
        ["1", "2", "4", "8", "0", "-3", "[]", "{}", "x", "&a [*a]", "99999999999999999999", "'\x07'", "2.5", "null", "[1,"]
    )
    return [f"{key}={value}" if rng.random() < 0.9 else key]


def _located(error: SpecError) -> list[str]:
    """The problems that do not name a line/column or an override."""
    return [
        str(problem)
        for problem in error.problems
        if problem.location is None
        or (problem.location.line is None and not problem.location.file.startswith(("--set", "override", "img_size")))
    ]


def run_case(rng: random.Random, directory) -> tuple[str, str]:
    """One mutant: ('refused' | 'ran', description); raises AssertionError on a contract breach."""
    base = rng.choice(sorted(BASES))
    text = resolve_spec_path(base).read_text()
    data = yaml.safe_load(text)
    # one block per pattern entry: the forward pass stays cheap
    shrink = [f"stages.{index}.depth={len(stage.blocks)}" for index, stage in enumerate(archdsl.load_spec(base).stages)]
    roll = rng.random()
    if roll < 0.5:
        what = _mutate_data(rng, data)
        content: str | bytes = yaml.safe_dump(data, sort_keys=False)
        overrides = shrink
    elif roll < 0.8:
        content, what = _mutate_text(rng, text, directory)
        overrides = shrink
    else:
        content, overrides = text, shrink + _overrides(rng, data)
        what = f"--set {overrides[-1]}"
    path = directory / "spec.yaml"
    (path.write_bytes if isinstance(content, bytes) else path.write_text)(content)
    size = rng.choice(BASES[base])
    description = f"{base} at {size}: {what}"
    try:
        model = archdsl.create_model(path, overrides=overrides, img_size=size, max_memory="2G")
    except SpecError as error:
        unlocated = _located(error)
        assert str(error) and not unlocated, f"{description}: problems without a location: {unlocated}"
        return "refused", description
    except Exception:  # noqa: BLE001  (what the contract forbids, reported with the case)
        raise AssertionError(f"{description}: raised\n{traceback.format_exc()}") from None
    model.eval()
    with torch.no_grad():
        try:
            logits = model(torch.randn(1, model.spec.input.channels, size, size))
        except Exception:  # noqa: BLE001
            raise AssertionError(f"{description}: validated, then failed to run\n{traceback.format_exc()}") from None
    assert logits.shape == (1, model.spec.head.classes), description
    return "ran", description


def test_mutated_specs_keep_the_contract(tmp_path, one_thread):
    for name in BASES:  # beside the mutant, so that `extends: sgformer_s.yaml` resolves
        (tmp_path / f"{name}.yaml").write_text(resolve_spec_path(name).read_text())
    rng = random.Random(SEED)
    outcomes: dict[str, int] = {"refused": 0, "ran": 0}
    breaches = []
    for _ in range(CASES):
        try:
            outcome, _ = run_case(rng, tmp_path)
            outcomes[outcome] += 1
        except AssertionError as breach:
            breaches.append(str(breach))
    print(
        f"fuzz: {CASES} cases (seed {SEED}): {outcomes['refused']} refused with located errors, {outcomes['ran']} built and ran, "
        f"{len(breaches)} breaches"
    )
    assert not breaches, "\n\n".join(breaches[:5])
    assert outcomes["refused"] and outcomes["ran"]  # the generator reaches both sides of the contract
