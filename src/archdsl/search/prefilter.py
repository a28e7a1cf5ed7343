"""`--prefilter PROXY --keep FRACTION`: rank many draws with a cheap proxy, train the best few.

ceil(samples / keep) distinct configurations are drawn at random through the budget gate (so
every one fits the budget and runs at the trials' image size; fewer if the space holds fewer),
scored with the proxy as Ray tasks, and the best `samples` of them (the top `keep` fraction)
become the trials, best first.
Stored in OUT/prefilter.json (every draw's proxy score, and which were kept), reused on resume.
"""

from __future__ import annotations

import json
import math
import traceback
from dataclasses import replace
from pathlib import Path

from archdsl.search.objectives import make_objective
from archdsl.search.records import atomic_write
from archdsl.search.searchers import METRIC, BudgetGate, RandomSearcher, distinct_draws
from archdsl.search.settings import SearchSettings

PREFILTER_FILE = "prefilter.json"


def _score(configs: list[dict], setup) -> list[dict]:
    from archdsl.search.trial import score_spec

    rows = []
    for config in configs:
        verdict = setup.check(config)
        try:
            spec = setup.space.resolve(config, setup.check.img_size).spec()
            result = score_spec(spec, setup, lambda metrics: None, reference_flops=verdict.flops)
            rows.append({"config": config, "score": result[METRIC], "flops": verdict.flops})
        except Exception as error:  # noqa: BLE001  (a proxy that cannot score a draw ranks it last)
            rows.append(
                {
                    "config": config,
                    "score": None,
                    "flops": verdict.flops,
                    "error": f"{type(error).__name__}: {error}",
                    "traceback": traceback.format_exc(),
                }
            )
    return rows


def prefilter(out: Path, settings: SearchSettings, setup, resources: dict, slots: int, stats_key: str) -> list[dict]:
    """The configurations to train, best proxy score first."""
    import ray

    path = out / PREFILTER_FILE
    if path.is_file():
        return json.loads(path.read_text())["kept"]
    wanted = math.ceil(settings.samples / settings.keep)
    gate = BudgetGate(RandomSearcher(setup.check, settings.seed), setup.check, stats_key)
    configs = distinct_draws(gate, wanted, "prefilter")
    proxy_setup = replace(setup, objective=make_objective(settings.prefilter))
    task = ray.remote(_score).options(num_cpus=resources["cpu"], num_gpus=resources["gpu"])
    chunks = [configs[index::slots] for index in range(slots) if configs[index::slots]]
    rows = [row for chunk in ray.get([task.remote(chunk, proxy_setup) for chunk in chunks]) for row in chunk]
    rows.sort(key=lambda row: (row["score"] is None, -(row["score"] or 0.0)))
    kept = [row["config"] for row in rows if row["score"] is not None][: settings.samples]
    atomic_write(
        path,
        json.dumps(
            {"proxy": settings.prefilter, "drawn": len(configs), "keep": settings.keep, "kept": kept, "rows": rows},
            indent=1,
            default=str,
        ),
    )
    return kept
