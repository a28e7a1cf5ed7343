"""bench/side_by_side.py, the engine of `bench/models.py --baseline`, runs its three tasks and
prints its table (its figures are timings: nothing here asserts a speed)."""

from __future__ import annotations

import copy
import importlib.util
from pathlib import Path

import pytest
import torch

BENCH = Path(__file__).parents[1] / "bench"


@pytest.fixture(scope="module")
def side_by_side():
    spec = importlib.util.spec_from_file_location("side_by_side", BENCH / "side_by_side.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def row(side_by_side):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield side_by_side.compare(
            "mixformer_b0",
            str(BENCH / "baselines" / "unoptimised.py"),
            None,
            rounds=2,
            img_size=32,
            batch_size=2,
        )
    finally:
        torch.set_num_threads(threads)


def test_side_by_side_against_archdsl_as_built(side_by_side, row):
    assert row["tasks"] == ("eval_b1", "eval_b2", "train_b2")
    assert row["baseline"] == "unoptimised, ours trains on oneDNN, cpu float32"
    for task in row["tasks"]:
        figures = row[task]
        assert figures["ratio_min"] <= figures["ratio"] <= figures["ratio_max"]
        assert figures["ours_ms"] > 0 and figures["baseline_ms"] > 0
        assert 0 < figures["kernel_share"] <= 1
        assert 0 < figures["arithmetic_floor"] < figures["ratio_max"]  # nothing beats the core's peak
    table = side_by_side.format_rows([row]).splitlines()
    assert len(table) == 3
    assert "eval_b2 images/s (ours / baseline)" in table[0]
    assert table[2].startswith("| mixformer_b0 | unoptimised, ours trains on oneDNN, cpu ")


def test_rows_of_several_processes_summarise_to_their_median_and_spread(side_by_side, row):
    faster = copy.deepcopy(row)
    for task in row["tasks"]:
        faster[task]["ratio"] = row[task]["ratio"] / 2
    summary = side_by_side.across_processes([row, faster, row])
    assert summary["baseline"] == row["baseline"] + ", median of 3 processes"
    for task in row["tasks"]:
        assert summary[task]["ratio"] == row[task]["ratio"]
        assert summary[task]["ratio_min"] == row[task]["ratio"] / 2
        assert summary[task]["ratio_max"] == row[task]["ratio"]
        assert summary[task]["ours_ms"] == row[task]["ours_ms"]
    assert len(side_by_side.format_rows([row, faster, row, summary]).splitlines()) == 6


@pytest.mark.parametrize("task", ["eval_b1", "train_b8"])
def test_the_baseline_can_get_archdsls_onednn_lowering_too(side_by_side, task):
    from archdsl import create_model
    from archdsl.onednn import OneDnnConv2d, OneDnnLinear

    baseline = side_by_side.load_baseline(str(BENCH / "baselines" / "unoptimised.py"))
    model = create_model("cloformer_xxs", img_size=32)
    for lowered in (False, True):
        ours, theirs = side_by_side.prepared_pair(model, model, baseline, task, lowered, train_channels_last=False)
        for prepared, expected in ((ours, True), (theirs, lowered)):
            kinds = {type(module) for module in prepared.modules()}
            assert (OneDnnConv2d in kinds and OneDnnLinear in kinds) == expected
