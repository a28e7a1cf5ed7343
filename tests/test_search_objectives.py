"""The search's objectives: every proxy finite and deterministic on every bundled spec, blind to
stochastic depth, synflow finite at 224; bench/proxy_tau.py's statistics and its sampling."""

from __future__ import annotations

import importlib.util
import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from archdsl.api import load_spec, lower_spec
from archdsl.compiler import compile_graph
from archdsl.loading import bundled_spec_names
from archdsl.network import DropPath
from archdsl.search.data import load_dataset
from archdsl.search.objectives import OBJECTIVES, SynFlow, TrialContext
from archdsl.search.space import load_space

PROXIES = [name for name in OBJECTIVES if name != "train"]
BENCH = Path(__file__).resolve().parents[1] / "bench" / "proxy_tau.py"


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # many small ops: on a shared machine a second thread mostly waits
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def digits():
    return load_dataset(None)


@pytest.fixture(scope="module")
def proxy_tau():
    spec = importlib.util.spec_from_file_location("proxy_tau", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules["proxy_tau"] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    del sys.modules["proxy_tau"]


def _scored(spec, digits, batch: int = 2):
    """One network per spec, built as a search builds it (the dataset's classes), shared by all
    proxies; minibatches of 2 keep the largest variants affordable."""
    spec = load_spec(spec, num_classes=digits.num_classes)
    graph = lower_spec(spec)
    torch.manual_seed(0)
    model = compile_graph(graph)
    context = TrialContext(
        device=torch.device("cpu"),
        image_size=spec.image_size,
        channels=spec.input.channels,
        data=digits,
        proxy_batch=batch,
        flops=graph.flops,
    )
    return model, context


def _scores(model, context) -> dict[str, float]:
    return {proxy: OBJECTIVES[proxy]().score(model, context) for proxy in PROXIES}


@pytest.mark.parametrize("name", bundled_spec_names())
def test_every_proxy_is_finite_on_every_bundled_spec(name, digits):
    scores = _scores(*_scored(load_spec(name, img_size=64), digits))
    assert all(math.isfinite(score) for score in scores.values()), scores


# the smallest variant of each family: a second scoring of the same network gives the same floats
# (the random state, the norms' running statistics and earlier gradients change nothing)
@pytest.mark.parametrize("name", ["cloformer_xxs", "mixformer_b0", "nommer_t", "sgformer_s"])
def test_every_proxy_is_deterministic(name, digits):
    model, context = _scored(load_spec(name, img_size=64), digits)
    first = _scores(model, context)
    torch.manual_seed(1)  # a different global random state: the scores must not read it
    assert _scores(model, context) == first


def test_stochastic_depth_is_off_while_scoring(digits):
    # at drop_path_rate 0.5 half the residual branches would be dropped in training mode
    scores = {}
    for rate in (0.0, 0.5):
        spec = load_spec("mixformer_b0", overrides={"drop_path_rate": rate}, img_size=64)
        model, context = _scored(spec, digits)
        assert any(isinstance(module, DropPath) and module.rate == rate for module in model.modules()) == (rate > 0)
        scores[rate] = _scores(model, context)
    assert scores[0.0] == scores[0.5]


def test_scoring_leaves_the_torch_random_state_and_module_modes_alone(digits):
    model, context = _scored(load_spec("cloformer_xxs", img_size=64), digits)
    model.eval()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    OBJECTIVES["naswot"]().score(model, context)
    assert torch.equal(torch.rand(3), expected)
    assert not any(module.training for module in model.modules())


def test_synflow_is_finite_on_cloformer_xs_at_224():
    spec = load_spec("cloformer_xs")  # 224 px: the plain float64 synflow overflows here
    torch.manual_seed(0)
    model = compile_graph(lower_spec(spec))
    context = TrialContext(device=torch.device("cpu"), image_size=spec.image_size, channels=3, data=None)
    assert math.isfinite(SynFlow().score(model, context))


def test_naswot_per_unit_is_naswot_less_the_unit_count(digits):
    model, context = _scored(load_spec("cloformer_xxs", img_size=64), digits)
    naswot, per_unit, units = (
        OBJECTIVES[name]().score(model, context) for name in ("naswot", "naswot_per_unit", "activation_units")
    )
    assert per_unit == pytest.approx(naswot - context.proxy_batch * math.log(units), abs=1e-6)


# --- bench/proxy_tau.py ---------------------------------------------------------------------------------


def _table(n: int = 20):
    rng = np.random.default_rng(1)
    accuracy = np.sort(rng.uniform(0.8, 0.9, n))
    seeds = [[a + 0.001, a - 0.001] for a in accuracy]  # two seeds that agree on the order
    noise = rng.permutation(n).astype(float)
    scores = {
        "flops": list(noise),
        "params": list(noise[::-1]),
        "perfect": list(accuracy * 10),
        "reversed": list(-accuracy),
        "half": [float(i // 2) for i in range(n)],
    }
    return scores, seeds


def test_proxy_tau_ranks_a_perfect_objective_at_one_and_a_reversed_one_at_minus_one(proxy_tau):
    scores, seeds = _table()
    table = proxy_tau.evaluate_table(scores, seeds, resamples=200)
    ranked = table["ranked"]
    assert ranked["perfect"]["kendall"].value == pytest.approx(1.0)
    assert ranked["perfect"]["kendall"].low == pytest.approx(1.0)  # every resample ranks them perfectly
    assert ranked["perfect"]["spearman"].value == pytest.approx(1.0)
    assert ranked["reversed"]["kendall"].value == pytest.approx(-1.0)
    assert ranked["reversed"]["kendall"].high == pytest.approx(-1.0)
    assert 0.8 < ranked["half"]["kendall"].value < 1.0  # tied pairs: tau-b below 1
    assert ranked["flops"]["kendall"].low < ranked["flops"]["kendall"].value < ranked["flops"]["kendall"].high
    assert table["ceiling"]["kendall"].value == pytest.approx(1.0)
    assert table["verdicts"]["perfect"].startswith("beats FLOPs and params")
    assert table["verdicts"]["reversed"].startswith("does not beat FLOPs or params")
    markdown = proxy_tau.markdown_table(ranked, table["ceiling"], table["verdicts"])
    assert "| perfect | +1.00 [+1.00, +1.00] |" in markdown


def test_proxy_tau_says_when_intervals_overlap(proxy_tau):
    Correlation = proxy_tau.Correlation
    baselines = {"FLOPs": Correlation(0.3, 0.1, 0.5), "params": Correlation(0.2, 0.0, 0.4)}
    assert (
        proxy_tau.verdict(Correlation(0.45, 0.3, 0.6), baselines)
        == "beats FLOPs and params (interval overlaps FLOPs and params's)"
    )
    assert proxy_tau.verdict(Correlation(0.9, 0.8, 1.0), baselines) == "beats FLOPs and params (interval apart from theirs)"
    assert proxy_tau.verdict(Correlation(0.25, 0.45, 0.45), baselines).startswith("beats params, not FLOPs")


def test_proxy_tau_reads_a_ground_truth_and_scores_it(proxy_tau, tmp_path, capsys):
    # a fabricated ground truth over 6 bundled specs (accuracies invented, in the order listed)
    names = ["cloformer_xxs", "cloformer_xs", "mixformer_b0", "mixformer_b1", "nommer_t", "sgformer_s"]
    lines = ["arch,spec_file,flops_224,params,activation_units,img_size,epochs,acc_seed0,acc_seed1,mean,sd,seconds"]
    (tmp_path / "specs").mkdir()
    for index, name in enumerate(names):
        (tmp_path / "specs" / f"{name}.yaml").write_text(yaml.safe_dump(load_spec(name).model_dump(mode="json")))
        lines.append(f"{index:012x},specs/{name}.yaml,0,0,0,64,1,{0.5 + index / 20},{0.5 + index / 20},0,0,0")
    csv_path = tmp_path / "truth.csv"
    csv_path.write_text("\n".join(lines) + "\n")
    out = tmp_path / "tau.json"
    proxy_tau.main(
        [
            "--ground-truth",
            str(csv_path),
            "--dataset",
            "digits",
            "--objectives",
            "params,flops,naswot",
            "--proxy-batch",
            "4",
            "--resamples",
            "50",
            "--out",
            str(out),
        ]
    )
    printed = capsys.readouterr().out
    assert "| seed 0 vs seed 1 accuracy (ceiling) | +1.00" in printed
    assert "| naswot |" in printed
    result = json.loads(out.read_text())
    assert [record["arch"] for record in result["architectures"]] == [f"{i:012x}" for i in range(6)]
    assert all(math.isfinite(record["scores"]["naswot"]) for record in result["architectures"])


def test_proxy_tau_redraws_invalid_samples(proxy_tau):
    space = load_space()
    rng = np.random.default_rng(0)
    specs, redrawn = proxy_tau.sample_specs(space, 4, 64, rng)
    assert len(specs) == 4 and redrawn > 0  # this seed's draws include invalid ones (see test_search_space)
    assert all(lower_spec(spec).flops > 0 for spec in specs)
