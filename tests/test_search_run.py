"""Searches on Ray Tune, end to end on CPU: outputs, a failing trial, resume after SIGKILL."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import torch
from search_helpers import TINY_SPACE, Flaky, SlowParams, fingerprint, kill_session

from archdsl.api import create_model, load_spec, lower_spec
from archdsl.search import run_search

TINY_IMAGE = 32  # the default space at 32x32: every pool divides its map, FLOPs 9..43 M
BUDGET = "25M@32"  # cuts through the space at 32px, and holds cloformer_xxs (13.5 M) and cloformer_xs (24.9 M) there


def test_search_end_to_end(local_ray, tmp_path):
    shown = []
    out = tmp_path / "out"
    result = run_search(
        None,
        budget=BUDGET,
        img_size=TINY_IMAGE,
        samples=6,
        searcher="tpe",
        objective="naswot",
        seed=0,
        out=out,
        top_k=3,
        progress=shown.append,
    )
    assert result.progress.done == 6 and result.progress.failed == 0
    assert result.progress.rejected > 0  # over-budget draws were made, and redrawn, not run
    assert {p.phase for p in shown} >= {"starting", "searching", "baselines", "finished"}

    rows = list(csv.DictReader((out / "leaderboard.csv").open()))
    assert [int(r["rank"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    scores = [float(r["score"]) for r in rows]
    assert scores == sorted(scores, reverse=True)
    assert all(int(r["flops"]) <= 25_000_000 for r in rows)
    assert all((out / r["spec_file"]).is_file() for r in rows)
    assert len(list((out / "trials").glob("*.json"))) == 6

    # best.yaml: a standalone spec that builds unchanged, under budget, the leaderboard's first
    best = load_spec(out / "best.yaml")
    assert lower_spec(best).flops == int(rows[0]["flops"]) <= 25_000_000
    model = create_model(out / "best.yaml").eval()
    assert model(torch.zeros(1, 3, TINY_IMAGE, TINY_IMAGE)).shape == (1, 1000)
    body = [line for line in (out / "best.yaml").read_text().splitlines() if not line.startswith("#")]
    assert not any(word in line for line in body for word in ("choice:", "subset:", "expr:", "range:"))
    assert len(list((out / "top").glob("*.yaml"))) == 3

    # the paper variants under budget, scored with the same objective
    baselines = {row["name"]: row for row in json.loads((out / "baselines.json").read_text())}
    assert baselines["cloformer_xxs"]["status"] == "done" and baselines["cloformer_xxs"]["flops"] == 13_490_560
    assert baselines["cloformer_xs"]["status"] == "done" and baselines["cloformer_xs"]["flops"] == 24_853_344
    assert baselines["cloformer_s"]["status"] == "over_budget"
    assert (out / "pareto.png").stat().st_size > 10_000
    summary = json.loads((out / "summary.json").read_text())
    assert sum(summary["rejected"].values()) == result.progress.rejected  # over budget, or invalid (redrawn)
    assert summary["rejected"]["over_flops"] > 0
    assert list((out / "ray" / "tune").glob("run_trial_*/result.json"))  # Ray Tune's own logs


def test_a_failing_trial_is_recorded_and_the_search_goes_on(local_ray, tmp_path):
    space = tmp_path / "flaky.yaml"
    space.write_text(TINY_SPACE)
    out = tmp_path / "out"
    # random draws with seed 0 give stage-0 widths 32, 16, 16, 32, 24
    result = run_search(space, budget="1G", samples=5, searcher="random", objective=Flaky(), seed=0, out=out, baselines=False)
    records = result.records
    assert len(records) == 5 and result.progress.failed == 3 and result.progress.done == 2
    by_width = Counter((r["config"]["stages[0].width"], r["status"]) for r in records)
    assert by_width == {(32, "done"): 2, (16, "failed"): 2, (24, "failed"): 1}
    for record in records:
        if record["config"]["stages[0].width"] == 16:  # raised: the error, and the traceback for a look
            assert record["error"] == "RuntimeError: injected failure: this objective refuses 16 channels"
            assert "search_helpers.py" in record["traceback"]
        elif record["config"]["stages[0].width"] == 24:  # NaN
            assert "gave nan" in record["error"]
        assert (out / record["spec_file"]).is_file()
    rows = list(csv.DictReader((out / "leaderboard.csv").open()))
    assert [r["status"] for r in rows] == ["done"] * 2 + ["failed"] * 3
    assert all(r["error"] for r in rows if r["status"] == "failed")
    assert load_spec(out / "best.yaml").stages[0].width == 32


DRIVER = """
import sys
sys.path.insert(0, {tests!r})
import ray
import search_helpers
ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
ray.cloudpickle.register_pickle_by_value(search_helpers)
from archdsl.search import run_search
run_search(None, budget={budget!r}, img_size={image}, samples=6, searcher="random", seed=2, baselines=False,
           objective=search_helpers.SlowParams({log!r}, 1.5), out={out!r})
"""


def test_resume_after_sigkill_runs_no_finished_trial_again(local_ray, tmp_path):
    out, log = tmp_path / "out", tmp_path / "evaluations.log"
    script = DRIVER.format(tests=str(Path(__file__).parent), budget=BUDGET, image=TINY_IMAGE, log=str(log), out=str(out))
    driver = subprocess.Popen(
        [sys.executable, "-c", script], start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.time() + 120
        while len(list((out / "trials").glob("*.json"))) < 2 and time.time() < deadline:
            assert driver.poll() is None, "the search ended before it could be killed"
            time.sleep(0.2)
    finally:
        kill_session(driver.pid)
        driver.wait()
    before = {path.stem: json.loads(path.read_text()) for path in (out / "trials").glob("*.json")}
    assert 2 <= len(before) < 6

    result = run_search(resume=out, objective=SlowParams(str(log), 1.5))
    after = {record["trial"]: record for record in result.records}
    assert len(after) == 6 and all(r["status"] == "done" for r in after.values())
    for trial, record in before.items():  # what was on disk stays as it was
        assert after[trial]["finished_at"] == record["finished_at"] and after[trial]["score"] == record["score"]
    evaluations = Counter(line.split()[0] for line in log.read_text().splitlines())
    for trial in before:  # and no finished trial was evaluated again
        assert evaluations[fingerprint(load_spec(out / "trials" / f"{trial}.yaml"))] == 1
    assert len({fingerprint(load_spec(out / r["spec_file"])) for r in after.values()}) == len(evaluations)


def test_a_finished_search_copied_without_ray_state_resumes_without_running_a_trial(local_ray, tmp_path):
    """A run folder committed or copied to another machine keeps OUT/trials but not OUT/ray: its
    resume goes straight to what follows the trials (the report here; the final stage in a
    training search) and evaluates nothing again."""
    first, log = tmp_path / "first", tmp_path / "evaluations.log"
    run_search(None, budget=BUDGET, img_size=TINY_IMAGE, samples=3, searcher="random", seed=1, baselines=False,
               objective=SlowParams(str(log), 0.0), out=first)  # fmt: skip
    copied = tmp_path / "copied"
    shutil.copytree(first, copied, ignore=shutil.ignore_patterns("ray"))
    for output in ("leaderboard.csv", "best.yaml", "summary.json"):
        (copied / output).unlink()
    evaluated = log.read_text()

    result = run_search(resume=copied, objective=SlowParams(str(log), 0.0))
    assert log.read_text() == evaluated
    assert not (copied / "ray").exists()
    assert sorted(r["trial"] for r in result.records) == sorted(p.stem for p in (first / "trials").glob("*.json"))
    assert (copied / "leaderboard.csv").read_text() == (first / "leaderboard.csv").read_text()
    assert (copied / "best.yaml").is_file()


def test_the_search_command(local_ray, tmp_path):
    from typer.testing import CliRunner

    from archdsl.cli import app

    out = tmp_path / "out"
    result = CliRunner().invoke(
        app,
        [
            "search",
            "--budget",
            BUDGET,
            "--img-size",
            str(TINY_IMAGE),
            "--samples",
            "2",
            "--searcher",
            "random",
            "--no-baselines",
            "--out",
            str(out),
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    assert (out / "leaderboard.csv").is_file() and (out / "best.yaml").is_file()
    built = CliRunner().invoke(app, ["build", str(out / "best.yaml"), "--json"], catch_exceptions=False)
    assert built.exit_code == 0, built.output
    assert json.loads(built.stdout)["flops_analytic"] <= 25_000_000


def test_the_search_command_on_the_gallery_space(local_ray, tmp_path):
    """`--space gallery` end to end: its 4.5 GFLOPs budget counted at 224, trials at 32 px with
    the parameter count as the objective; what it writes is an ordinary spec within budget."""
    from typer.testing import CliRunner

    from archdsl.cli import app

    out = tmp_path / "out"
    arguments = ["search", "--space", "gallery", "--img-size", str(TINY_IMAGE), "--samples", "2", "--searcher", "random"]
    result = CliRunner().invoke(
        app, [*arguments, "--objective", "params", "--no-baselines", "--out", str(out)], catch_exceptions=False
    )
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader((out / "leaderboard.csv").open()))
    assert [row["status"] for row in rows] == ["done", "done"]
    assert all(int(row["flops"]) <= 4_500_000_000 for row in rows)  # at 224, the space's default budget
    best = load_spec(out / "best.yaml")
    assert lower_spec(best).flops == int(rows[0]["flops"])
    # as written, at 224, the size its FLOPs were budgeted at
    model = create_model(best).eval()
    with torch.no_grad():
        assert model(torch.zeros(1, 3, 224, 224)).shape == (1, 1000)
