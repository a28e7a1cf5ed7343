"""The final stage of `--objective train`: the best trials and the paper variants, retrained alike.

The search's accuracies are short and uneven (ASHA stops most trials early) and come from one
seed. The final stage retrains, from scratch and with one recipe (`--final-epochs`, the
search's batch size and learning rate), the top `--final-top` distinct trials (ranked by the
epochs they reached, then accuracy), every bundled paper variant within the budget at its
reference size, and `--final-random` hybrids drawn at random through the same budget gate (the
control a search must beat), each with `--final-seeds` seeds (initialisation and data order),
on every training image of a dataset with an official test split (or its `--train-images`),
evaluated on that split (Fashion-MNIST's 10,000; otherwise on the search's validation split).
Each architecture is reported as the mean and sample standard deviation of its accuracies.
Runs are Ray tasks with a trial's resources; each is written to OUT/final.json the moment it
ends, so a resumed search runs only the missing ones.
"""

from __future__ import annotations

import json
import statistics
import traceback
from dataclasses import replace
from pathlib import Path

from archdsl.search.baselines import judge_variant, paper_variants
from archdsl.search.feasibility import config_key
from archdsl.search.records import atomic_write
from archdsl.search.searchers import METRIC, BudgetGate, RandomSearcher, distinct_draws
from archdsl.search.settings import SearchSettings
from archdsl.search.training import ShortTraining

FINAL_FILE = "final.json"
RANDOM_STREAM = 7  # the random hybrids' generator is seeded with (--seed, this): apart from the searcher's


def _random_hybrids(count: int, check, seed: int, taken: set) -> list[dict]:
    """`count` distinct configurations drawn at random through the budget gate, none of them one
    of the `taken` (the searched ones); their own random stream, so the same on resume."""
    gate = BudgetGate(RandomSearcher(check, [seed, RANDOM_STREAM]), check, stats_key="final_random_hybrids")
    hybrids = []
    for index, config in enumerate(distinct_draws(gate, count, "random", taken), 1):
        verdict = check(config)
        hybrids.append(
            {
                "name": f"random_{index}",
                "kind": "random",
                "flops": verdict.flops,
                "flops_trial": verdict.trial_flops,
                "config": config,
            }
        )
    return hybrids


def _candidates(records: list[dict], settings: SearchSettings, setup) -> tuple[list[dict], list[dict]]:
    """(the architectures to retrain, each with its `config` (a trial) or paper variant `name`;
    the paper variants left out, and why)."""
    from archdsl.search.report import ranked

    chosen, skipped, seen = [], [], set()
    for record in ranked(records):
        if record["status"] != "done" or config_key(record["config"]) in seen or len(seen) == settings.final_top:
            continue  # the same architecture drawn twice is retrained once
        seen.add(config_key(record["config"]))
        chosen.append(
            {
                "name": record["trial"],
                "kind": "trial",
                "flops": record["flops"],
                "flops_trial": record.get("flops_trial"),
                "spec_file": record["spec_file"],
                "search_epoch": record.get("epoch"),
                "search_score": record["score"],
                "config": record["config"],
            }
        )
    chosen.extend(_random_hybrids(settings.final_random, setup.check, settings.seed, seen))
    for name in paper_variants():
        row, spec = judge_variant(name, setup.check)
        if spec is None:
            skipped.append(row)
        else:
            chosen.append({"name": name, "kind": "paper_variant", "flops": row["flops"], "flops_trial": row["flops_trial"]})
    return chosen, skipped


def _run(candidate: dict, setup, seed: int) -> dict:
    """One training run, on a worker (specs are made there: they do not travel through Ray)."""
    from archdsl.api import load_spec
    from archdsl.search.trial import score_spec

    try:
        if candidate["kind"] in ("trial", "random"):
            spec = setup.space.resolve(candidate["config"], setup.check.img_size).spec()
        else:
            spec = load_spec(candidate["name"], img_size=setup.check.img_size)
        result = score_spec(spec, setup, lambda metrics: None, reference_flops=candidate["flops"], seed=seed)
    except Exception as error:  # noqa: BLE001  (a failed run is recorded, the others go on)
        return {"status": "failed", "error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()}
    return {"status": "done", "score": result[METRIC], "params": result["params"], "device": result["device"]}


def _summarise(candidate: dict, runs: list[dict], max_params: int | None) -> dict:
    scores = [run["score"] for run in runs if run["status"] == "done"]
    row = dict(candidate)
    row.update(
        seeds=[run["seed"] for run in runs if run["status"] == "done"],
        scores=scores,
        mean=statistics.fmean(scores) if scores else None,
        sd=statistics.stdev(scores) if len(scores) > 1 else None,
        failed=[{"seed": run["seed"], "error": run["error"]} for run in runs if run["status"] == "failed"],
    )
    params = next((run["params"] for run in runs if run["status"] == "done"), None)
    row["params"] = params
    row["status"] = "done" if scores else "failed" if row["failed"] else "pending"  # pending: none has ended yet
    if max_params is not None and params is not None and params > max_params:
        row["status"] = "over_params"
    return row


def run_final_stage(out: Path, settings: SearchSettings, setup, resources: dict, records: list[dict]) -> dict:
    """Retrain the top trials and the paper variants with `settings.final_seeds` seeds each."""
    import ray

    epochs = settings.final_epochs or settings.epochs
    seeds = [settings.seed + index for index in range(settings.final_seeds)]
    final_setup = replace(setup, objective=ShortTraining(epochs, test_split=True), epochs=epochs)
    path = out / FINAL_FILE
    stored = json.loads(path.read_text()) if path.is_file() else {}
    runs = [run for run in stored.get("runs", []) if run["status"] == "done"]
    candidates, skipped = _candidates(records, settings, setup)
    finished = {(run["name"], run["seed"]) for run in runs}
    recipe = {
        "epochs": epochs,
        "batch_size": settings.batch_size,
        "lr": settings.lr,
        "optimizer": "AdamW, weight decay 0.05",
        "schedule": "one-cycle",
        "img_size": settings.img_size,
        "dataset": settings.dataset or "digits",
        "train_images": settings.train_images or "all",
        "seeds": seeds,
        "random_hybrids": settings.final_random,
    }

    def write() -> dict:
        architectures = [_summarise(c, [r for r in runs if r["name"] == c["name"]], settings.max_params) for c in candidates]
        architectures.sort(key=lambda a: (a["mean"] is None, -(a["mean"] or 0.0)))
        summary = {"recipe": recipe, "architectures": architectures, "skipped_variants": skipped, "runs": runs}
        atomic_write(path, json.dumps(summary, indent=1, default=str))
        return summary

    task = ray.remote(_run).options(num_cpus=resources["cpu"], num_gpus=resources["gpu"])
    pending = {
        task.remote(c, final_setup, seed): (c["name"], seed)
        for c in candidates
        for seed in seeds
        if (c["name"], seed) not in finished
    }
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        name, seed = pending.pop(ready[0])
        runs.append({"name": name, "seed": seed, **ray.get(ready[0])})
        write()
    return write()
