"""The analytic count agrees with fvcore (with the project's handles) on every bundled spec."""

from __future__ import annotations

import pytest

import archdsl
from archdsl.loading import bundled_spec_names


@pytest.mark.parametrize("name", bundled_spec_names())
def test_analytic_flops_agree_with_fvcore(name):
    # at a small input, to keep the suite fast: the FLOP rules do not depend on the size, and
    # every family's tests compare both counts with the authors' figures at 224 (and 448)
    counts = archdsl.count_flops(name, img_size=64)
    assert abs(counts.analytic - counts.flops) / counts.flops < 0.02
    assert counts.fvcore_raw <= counts.flops
