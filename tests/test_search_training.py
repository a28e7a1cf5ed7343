"""`--objective train` as a pipeline, and budgets counted at a reference size.

One training search on a tiny space and a few hundred of the bundled digits is shared by the
ASHA, NaN, leaderboard and final-stage tests (Ray's start-up and the training are the slow
part); the resume test runs its own, in a driver it kills.
"""

from __future__ import annotations

import csv
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from search_helpers import TINY_SPACE, PoisonedTraining, SlowTraining, kill_session
from typer.testing import CliRunner

from archdsl.cli import app
from archdsl.search import run_search
from archdsl.search.choosers import RandomChooser
from archdsl.search.data import load_dataset
from archdsl.search.feasibility import FITS, INVALID_AT_IMG_SIZE, OVER_FLOPS, BudgetCheck, config_key
from archdsl.search.report import ranked
from archdsl.search.space import load_space

BUDGET = "15M@32"  # the whole tiny space (0.7 to 3.3 MFLOPs) and cloformer_xxs (13.5 M), not cloformer_xs (24.9 M)
EPOCHS = 4  # ASHA's rungs at epochs 1, 2 and 4
BENCH = Path(__file__).resolve().parents[1] / "bench"


# --- budgets at a reference size (no Ray) ---------------------------------------------------------------


def _verdicts(check: BudgetCheck, draws: int = 60) -> dict:
    rng = np.random.default_rng(0)
    configs = [check.space.sample(RandomChooser(rng), check.budget_at).config for _ in range(draws)]
    return {config_key(config): check(config) for config in configs}


def test_a_budget_at_224_selects_the_same_architectures_at_any_image_size():
    space = load_space()  # the default hybrid space, 224 px
    at = {size: _verdicts(BudgetCheck(space, 2_000_000_000, img_size=size, budget_at=224)) for size in (32, 64, 48)}
    over = {size: {key for key, verdict in verdicts.items() if verdict.status == OVER_FLOPS} for size, verdicts in at.items()}
    within = {
        size: {key for key, verdict in verdicts.items() if verdict.status in (FITS, INVALID_AT_IMG_SIZE)}
        for size, verdicts in at.items()
    }
    assert over[32] == over[64] == over[48] and over[32]  # the budget cuts through the space the same way
    assert within[32] == within[64] == within[48] and within[32]
    for key in within[32]:  # counted at 224 whatever the trials' size; the trials' own FLOPs are smaller
        assert at[32][key].flops == at[64][key].flops <= 2_000_000_000
        if at[32][key].fits and at[64][key].fits:
            assert at[32][key].trial_flops < at[64][key].trial_flops < at[32][key].flops
    # at 48 px the maps are 12, 6, 3, 2: a pool of 8 or 4 no longer divides them, so some of the
    # architectures within budget cannot run there; they are rejected apart, with the reason
    refused = [verdict for verdict in at[48].values() if verdict.status == INVALID_AT_IMG_SIZE]
    assert refused and all(verdict.reason for verdict in refused)
    assert all(verdict.status == FITS for key, verdict in at[64].items() if key in within[64])


def test_a_budget_without_at_is_counted_at_the_spaces_own_size():
    space = load_space()
    plain = BudgetCheck(space, 2_000_000_000, img_size=32)
    assert plain.budget_at == 224
    explicit = BudgetCheck(space, 2_000_000_000, img_size=32, budget_at=224)
    assert {k: v.status for k, v in _verdicts(plain, 20).items()} == {k: v.status for k, v in _verdicts(explicit, 20).items()}


@pytest.mark.parametrize(
    "options, says",
    [
        (["--budget", "2G@abc"], "--budget 2G@abc: cannot read the input size 'abc' after '@'"),
        (["--budget", "2G@0"], "--budget 2G@0: cannot read the input size '0'"),
        (["--budget", "2G", "--objective", "train", "--keep", "0"], "--keep 0.0: the fraction of pre-filtered draws"),
        (["--budget", "2G", "--objective", "train", "--keep", "1.5"], "--keep 1.5: "),
        (["--budget", "2G", "--objective", "train", "--epochs", "3"], "--epochs 3: ASHA needs at least 3 rungs"),
        (["--budget", "2G", "--objective", "naswot", "--prefilter", "naswot"], "--prefilter naswot: a pre-filter ranks draws"),
        (["--budget", "2G", "--objectives", "accuracy,speed"], "--objectives accuracy,speed: name the score first"),
        (["--budget", "2G", "--objective", "train", "--final-random", "-1"], "--final-random -1: give 0 or more random hybrids"),
        (["--budget", "2G", "--objective", "train", "--train-images", "5000"], "--train-images 5000: give between 20 (2 of each"),
    ],
)
def test_bad_search_options_are_one_clean_error_and_write_nothing(tmp_path, options, says):
    out = tmp_path / "out"
    result = CliRunner().invoke(app, ["search", *options, "--out", str(out)])
    assert result.exit_code == 2
    assert "Traceback" not in result.output
    assert says in " ".join(result.output.split())
    assert not out.exists()


# --- one training search, shared -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    """300 of the bundled digits, so that an epoch takes a moment on a CPU."""
    data = load_dataset(None)
    keep = np.sort(np.random.default_rng(0).permutation(len(data.labels))[:300])
    path = tmp_path_factory.mktemp("digits") / "digits300.npz"
    np.savez(path, images=data.images[keep], labels=data.labels[keep])
    return path


@pytest.fixture(scope="module")
def tiny_space(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("space") / "tiny.yaml"
    path.write_text(TINY_SPACE)
    return path


@pytest.fixture(scope="module")
def training_search(local_ray, tiny_space, digits, tmp_path_factory):
    out = tmp_path_factory.mktemp("training") / "out"
    # the pre-filter draws all 12 configurations of the tiny space (ceil(5 / 0.42)) and keeps the
    # 5 with the most parameters: the four 32 wide, then the 24-wide one with depth 2 and kernel 5,
    # whose weights turn NaN after its first epoch. 1.5 CPUs per trial: one trial at a time on
    # the fixture's 2 CPUs (ASHA sees them in a fixed order), with one torch thread
    result = run_search(
        tiny_space,
        objective=PoisonedTraining(EPOCHS, width=24),
        budget=BUDGET,
        img_size=32,
        samples=5,
        prefilter="params",
        keep=0.42,
        searcher="random",
        seed=0,
        dataset=str(digits),
        epochs=EPOCHS,
        batch_size=32,
        lr=3e-3,
        cpus_per_trial=1.5,
        final_top=1,
        final_random=1,
        final_seeds=3,
        final_epochs=1,
        out=out,
    )
    return out, result, json.loads((out / "summary.json").read_text())


def test_the_prefilter_trains_the_best_fraction_by_the_proxy(training_search):
    out, result, summary = training_search
    prefilter = json.loads((out / "prefilter.json").read_text())
    assert prefilter["proxy"] == "params" and prefilter["drawn"] == 12 and len(prefilter["rows"]) == 12
    scores = [row["score"] for row in prefilter["rows"]]
    assert scores == sorted(scores, reverse=True) and len(set(scores)) == 12
    assert prefilter["kept"] == [row["config"] for row in prefilter["rows"][:5]]
    widths = sorted(config["stages[0].width"] for config in prefilter["kept"])
    assert widths == [24, 32, 32, 32, 32]
    assert sorted(map(config_key, (r["config"] for r in result.records))) == sorted(map(config_key, prefilter["kept"]))


def test_asha_has_three_rungs_and_stops_a_trial_early(training_search):
    out, result, summary = training_search
    assert any("rungs at epochs 1, 2, 4" in line for line in summary["plan"])
    done = [r for r in result.records if r["status"] == "done"]
    assert len(done) == 4
    assert {r["epoch"] for r in done} <= {1, 2, 4}  # a trial stops at a rung or at the end
    stopped = [r for r in done if r["epoch"] < EPOCHS]
    assert stopped and summary["trials"]["stopped_early"] == len(stopped)
    assert any(r["epoch"] == EPOCHS for r in done)


def test_the_leaderboard_ranks_by_epochs_reached_then_score(training_search):
    out, result, summary = training_search
    rows = [row for row in csv.DictReader((out / "leaderboard.csv").open()) if row["stage"] == "search" and row["rank"]]
    keys = [(int(row["epochs"]), float(row["score"])) for row in rows]
    assert keys == sorted(keys, reverse=True)
    assert len({epochs for epochs, _ in keys}) >= 2  # stopped and finished trials, each ranked with its peers
    assert summary["best"]["epoch"] == EPOCHS


def test_nan_mid_training_is_a_failed_trial_with_its_epoch(training_search):
    out, result, summary = training_search
    failed = [r for r in result.records if r["status"] == "failed"]
    assert [r["config"]["stages[0].width"] for r in failed] == [24]
    assert failed[0]["epoch"] == 1  # it finished epoch 1, and broke in epoch 2
    assert "the training loss became nan at epoch 2" in failed[0]["error"]
    assert summary["trials"]["failed"] == 1 and summary["trials"]["done"] == 4  # and the search went on


def test_the_final_stage_retrains_the_best_a_random_hybrid_and_the_paper_variants_with_seeds(training_search):
    out, result, summary = training_search
    final = summary["final"]
    assert final["recipe"]["seeds"] == [0, 1, 2] and final["recipe"]["epochs"] == 1
    by_name = {a["name"]: a for a in final["architectures"]}
    best = next(r for r in ranked(result.records) if r["status"] == "done")
    assert set(by_name) == {best["trial"], "random_1", "cloformer_xxs"}
    control = by_name["random_1"]  # drawn through the budget gate, not one of the retrained trials
    assert control["kind"] == "random" and control["config"] != best["config"] and control["flops"] <= 15_000_000
    assert by_name["cloformer_xxs"]["kind"] == "paper_variant" and by_name["cloformer_xxs"]["flops"] == 13_490_560
    assert {row["name"]: row["status"] for row in final["skipped_variants"]}["cloformer_xs"] == "over_budget"
    for architecture in final["architectures"]:
        assert architecture["status"] == "done" and architecture["seeds"] == [0, 1, 2] and len(architecture["scores"]) == 3
        assert architecture["mean"] == pytest.approx(statistics.fmean(architecture["scores"]))
        assert architecture["sd"] == pytest.approx(statistics.stdev(architecture["scores"]))
    assert len({a["mean"] for a in final["architectures"]}) == 3  # each architecture trained on its own
    rows = [row for row in csv.DictReader((out / "leaderboard.csv").open()) if row["stage"] == "final"]
    assert [row["trial"] for row in rows] == [a["name"] for a in final["architectures"]]
    assert [float(row["final_mean"]) for row in rows] == sorted((a["mean"] for a in final["architectures"]), reverse=True)
    assert all(float(row["final_sd"]) >= 0 and row["final_runs"] == "3" for row in rows)
    assert (out / "pareto.png").stat().st_size > 10_000
    # bench/final_table.py: the table docs/search.md carries, one row per architecture, best first
    table = subprocess.run([sys.executable, str(BENCH / "final_table.py"), str(out)], capture_output=True, text=True, check=True)
    rows = [line for line in table.stdout.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [row.split(" | ")[1] for row in rows] == [a["name"] for a in final["architectures"]]
    assert f"{final['architectures'][0]['mean']:.4f} ± " in rows[0] and "| random hybrid |" in table.stdout


# --- resume mid-training after SIGKILL ---------------------------------------------------------------------


DRIVER = """
import sys
sys.path.insert(0, {tests!r})
import ray
import search_helpers
ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
ray.cloudpickle.register_pickle_by_value(search_helpers)
from archdsl.search import run_search
run_search({space!r}, objective=search_helpers.SlowTraining({epochs}, 2.0), budget={budget!r}, img_size=32, samples=1,
           searcher="random", seed=1, dataset={digits!r}, epochs={epochs}, batch_size=32, final_top=0, baselines=False,
           out={out!r})
"""


def _checkpointed_epochs(out: Path) -> int:
    """The epochs of the newest trial checkpoint Tune's experiment state has recorded (0: none)."""
    states = list((out / "ray" / "tune").glob("experiment_state-*.json"))
    text = " ".join(path.read_text() for path in states)
    return max((index + 1 for index in range(8) if f"checkpoint_{index:06d}" in text), default=0)


def test_a_killed_training_search_resumes_its_trial_from_its_last_epoch(local_ray, tiny_space, digits, tmp_path):
    out, epochs = tmp_path / "out", 6
    script = DRIVER.format(
        tests=str(Path(__file__).parent), space=str(tiny_space), epochs=epochs, budget=BUDGET, digits=str(digits), out=str(out)
    )
    driver = subprocess.Popen(
        [sys.executable, "-c", script], start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.time() + 240
        while _checkpointed_epochs(out) < 2 and time.time() < deadline:
            assert driver.poll() is None, "the search ended before it could be killed"
            time.sleep(0.2)
    finally:
        kill_session(driver.pid)
        driver.wait()
    reached = _checkpointed_epochs(out)
    assert 2 <= reached < epochs
    assert not list((out / "trials").glob("*.json"))  # the trial had not finished

    result = run_search(resume=out, objective=SlowTraining(epochs, 0.0))
    [record] = result.records
    assert record["status"] == "done" and record["epoch"] == epochs
    assert record["resumed_from_epoch"] >= reached  # it went on from its checkpoint, not from epoch 1
    progress = list(csv.DictReader(next((out / "ray" / "tune").glob("run_trial_*/progress.csv")).open()))
    resumed = [int(row["epoch"]) for row in progress if int(row["resumed_from_epoch"]) > 0]
    assert resumed == list(range(record["resumed_from_epoch"] + 1, epochs + 1))


# --- several objectives --------------------------------------------------------------------------------------


def test_a_multi_objective_search_writes_its_front(local_ray, tmp_path):
    from archdsl.api import load_spec, lower_spec

    out = tmp_path / "out"
    result = run_search(
        None,
        objective="params",
        objectives=["accuracy", "flops"],
        budget="2GFLOPs@224",
        img_size=32,
        samples=6,
        seed=0,
        baselines=False,
        out=out,
    )
    done = [r for r in result.records if r["status"] == "done"]
    rows = list(csv.DictReader((out / "front.csv").open()))
    front = {row["trial"] for row in rows}
    assert front and len(done) == 6

    def dominates(a, b):
        return a["score"] >= b["score"] and a["flops"] <= b["flops"] and (a["score"] > b["score"] or a["flops"] < b["flops"])

    for record in done:  # the front is exactly the trials no other beats on both
        beaten = any(dominates(other, record) for other in done)
        assert beaten == (record["trial"] not in front)
    for row in rows:  # spec files at the budget's reference size, their FLOPs the budgeted ones
        spec = load_spec(out / row["spec_file"])
        assert spec.image_size == (224, 224) and lower_spec(spec).flops == int(row["flops"]) <= 2_000_000_000
    assert json.loads((out / "summary.json").read_text())["settings"]["searcher"] == "evolution"  # NSGA-II


def test_a_final_stage_architecture_with_no_run_ended_is_pending_not_failed():
    """final.json is rewritten after every run: an architecture whose runs have not ended yet
    must not read as failed (a resumed or still-running final stage)."""
    from archdsl.search.final import _summarise

    candidate = {"name": "mixformer_b0", "kind": "paper", "flops": 1}
    assert _summarise(candidate, [], None)["status"] == "pending"
    failed = _summarise(candidate, [{"seed": 0, "status": "failed", "error": "OOM"}], None)
    assert failed["status"] == "failed" and failed["failed"] == [{"seed": 0, "error": "OOM"}]
    done = _summarise(candidate, [{"seed": 0, "status": "done", "score": 0.5, "params": 3}], None)
    assert done["status"] == "done" and done["mean"] == 0.5
