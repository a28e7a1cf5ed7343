"""The bundled paper variants under the same budget, scored the same way as the trials.

A variant is under the budget when it costs at most the budget at the budget's reference size;
it is then run at the trials' image size (where its resolution-dependent constants follow its
spec's own rules: windows, pools, DCT blocks and strides meet the smaller maps by their `fit`,
taking a divisor of the map or padding it), or reported as `invalid_at_img_size` when it cannot
run there.
"""

from __future__ import annotations

import json
import traceback
from pathlib import Path

from archdsl.errors import SpecError
from archdsl.search.feasibility import INVALID_AT_IMG_SIZE, BudgetCheck
from archdsl.search.records import atomic_write
from archdsl.search.searchers import METRIC


def paper_variants() -> list[str]:
    """Bundled specs that reproduce a paper's variant (they name a `family`)."""
    from archdsl.loading import bundled_spec_names, load_data

    names = []
    for name in bundled_spec_names():
        try:
            if load_data(name).data.get("family"):
                names.append(name)
        except SpecError:
            continue
    return names


def judge_variant(name: str, check: BudgetCheck) -> tuple[dict, object | None]:
    """(its row: FLOPs at the reference size, status; its spec at the trials' size if it fits)."""
    from archdsl.api import load_spec, lower_spec

    row: dict = {"name": name}
    try:
        row["flops"] = lower_spec(load_spec(name, img_size=check.budget_at)).flops
    except SpecError as error:
        return {**row, "status": "invalid", "error": str(error).splitlines()[0]}, None
    if row["flops"] > check.budget:
        return {**row, "status": "over_budget"}, None
    try:
        spec = load_spec(name, img_size=check.img_size)
        row["flops_trial"] = lower_spec(spec).flops
    except SpecError as error:
        return {**row, "status": INVALID_AT_IMG_SIZE, "error": str(error).splitlines()[0]}, None
    return {**row, "status": "fits"}, spec


def _score_variant(name: str, setup) -> dict:
    from archdsl.search.trial import score_spec

    row, spec = judge_variant(name, setup.check)
    if spec is None:
        return row
    try:
        result = score_spec(spec, setup, lambda metrics: None, reference_flops=row["flops"])
    except Exception as error:  # noqa: BLE001  (recorded, like a failing trial)
        return {**row, "status": "failed", "error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()}
    if setup.check.max_params is not None and result["params"] > setup.check.max_params:
        return {**row, "status": "over_budget", "params": result["params"]}
    return {**row, "status": "done", "score": result[METRIC], "params": result["params"]}


def score_baselines(out: Path, setup, resources: dict) -> list[dict]:
    """Score every bundled paper variant under the budget with the search's objective, as Ray
    tasks with a trial's resources. Stored in OUT/baselines.json (reused on resume)."""
    import ray

    path = out / "baselines.json"
    if path.is_file():
        return json.loads(path.read_text())
    task = ray.remote(_score_variant).options(num_cpus=resources["cpu"], num_gpus=resources["gpu"])
    rows = ray.get([task.remote(name, setup) for name in paper_variants()])
    atomic_write(path, json.dumps(rows, indent=1, default=str))
    return rows
