"""Budgets as people write them, and the located one-paragraph errors of bad search options."""

from __future__ import annotations

import socket

import pytest

from archdsl.errors import SpecError
from archdsl.search import SearchError, parse_flops, parse_params, run_search
from archdsl.search.budget import format_flops


@pytest.mark.parametrize(
    "text, flops",
    [
        ("2GFLOPs", 2_000_000_000),
        ("2G", 2_000_000_000),
        ("600M", 600_000_000),
        ("0.6GFLOPs", 600_000_000),
        ("2GMACs", 2_000_000_000),
        ("2 GFLOPs", 2_000_000_000),
        ("600MFLOPs", 600_000_000),
        ("1.5e9", 1_500_000_000),
        ("2gflops", 2_000_000_000),
        ("750K", 750_000),
        (2_000_000_000, 2_000_000_000),
        ("0.25TFLOPs", 250_000_000_000),
    ],
)
def test_flop_budgets_as_people_write_them(text, flops):
    assert parse_flops(text) == flops


def test_macs_and_flops_are_the_same_budget():
    # one multiply-add is one FLOP in this project (fvcore's convention, the papers')
    assert parse_flops("2GMACs") == parse_flops("2GFLOPs") == parse_flops("2G")


@pytest.mark.parametrize(
    "text, params",
    [("10M", 10_000_000), ("3.5M", 3_500_000), ("500K", 500_000), ("10Mparams", 10_000_000), ("12000000", 12_000_000)],
)
def test_parameter_budgets(text, params):
    assert parse_params(text) == params


@pytest.mark.parametrize(
    "text, says",
    [
        ("2GFLOPz", "cannot read FLOP budget '2GFLOPz'"),
        ("-1G", "cannot read FLOP budget '-1G'"),
        ("0G", "must be a positive, finite amount"),
        ("10Mparams", "a unit of the other budget"),
        ("lots", "cannot read FLOP budget 'lots'"),
    ],
)
def test_bad_flop_budgets_are_located_one_paragraph_errors(text, says):
    with pytest.raises(SearchError) as caught:
        parse_flops(text)
    message = str(caught.value)
    assert isinstance(caught.value, SpecError)  # printed like every spec error, without a traceback
    assert message.startswith(f"--budget {text}: ")
    assert says in message
    assert "2GFLOPs" in message and "\n" not in message  # says what would work, in one paragraph


def test_bad_parameter_budget():
    with pytest.raises(SearchError, match=r"^--max-params 2GFLOPs: .*a unit of the other budget"):
        parse_params("2GFLOPs")


def test_format_flops():
    assert format_flops(2_182_000_000) == "2.18 GFLOPs"
    assert format_flops(600_000_000) == "600 MFLOPs"


def test_unparseable_budget_stops_the_search_before_ray(tmp_path):
    with pytest.raises(SearchError, match=r"^--budget 2GFLOPz: "):
        run_search(budget="2GFLOPz", out=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_missing_dataset_is_located(tmp_path):
    missing = tmp_path / "no_such_dataset"
    with pytest.raises(SearchError) as caught:
        run_search(budget="2G", objective="train", dataset=missing, out=tmp_path / "out")
    assert str(caught.value).startswith(f"--dataset {missing}: no such file or directory")


def test_unknown_objective_and_searcher(tmp_path):
    with pytest.raises(
        SearchError,
        match=r"^--objective nope: unknown objective; choose one of naswot, naswot_per_unit, synflow, grad_norm, zico, meco, "
        r"params, flops, activation_units, train$",
    ):
        run_search(budget="2G", objective="nope", out=tmp_path / "out")


def test_unreachable_address_is_located(tmp_path):
    with socket.socket() as probe:  # a port on this machine that nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(SearchError) as caught:
        run_search(budget="2G", objective="params", address=f"127.0.0.1:{port}", out=tmp_path / "out")
    message = str(caught.value)
    assert message.startswith(f"--address 127.0.0.1:{port}: cannot reach a Ray cluster there")
    assert "ray start --head" in message
