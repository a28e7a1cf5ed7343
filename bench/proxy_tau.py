"""How well does each objective rank architectures? Kendall tau and Spearman rho against a trained ground truth.

    python bench/proxy_tau.py --ground-truth bench/results/ground_truth_fmnist/ground_truth.csv \\
        --out bench/results/proxy_tau_fmnist.json [--dataset fashion-mnist] [--device cuda]

The ground truth is bench/ground_truth.py's CSV: one row per architecture with its spec file
(relative to the CSV's folder, written at 224 px), the image size it was trained at and one
`acc_seedN` column per training seed. Each architecture is rebuilt from its spec at that size
and scored with every objective (training-free proxies and the size baselines params, FLOPs
and activation units) on minibatches of `--dataset`, each objective as a search scores it
(weights drawn after `torch.manual_seed(--seed)`, the same minibatches for every network).

For every objective: Kendall's tau-b and Spearman's rho of its scores against the mean
accuracy over the seeds, each with a bootstrap 95% interval (architectures resampled with
replacement, percentile method, fixed seed); and the seed ceiling: Kendall's tau between the
first two seeds' accuracies, the agreement no proxy can be expected to beat. A proxy is
labelled by its point estimate against both FLOPs and params, and the label says whether its
interval overlaps theirs (then the data do not tell them apart). Prints a Markdown table;
`--out` writes the figures and every architecture's scores as JSON.

`--space-check N` instead samples N architectures of the default search space (invalid draws
are redrawn) at `--space-size` (224) and reports every objective that does not give a finite
score on one of them.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import stats

from archdsl.errors import SpecError

BASELINES = ("params", "flops", "activation_units")
REQUIRED_COLUMNS = ("arch", "spec_file", "img_size", "acc_seed0", "acc_seed1")


# --- statistics --------------------------------------------------------------------------------------


@dataclass
class Correlation:
    value: float
    low: float
    high: float

    def overlaps(self, other: Correlation) -> bool:
        return self.low <= other.high and other.low <= self.high

    def text(self) -> str:
        return f"{self.value:+.2f} [{self.low:+.2f}, {self.high:+.2f}]"


def _kendall(x, y) -> float:
    return stats.kendalltau(x, y).statistic  # tau-b: ties in either ranking handled


def _spearman(x, y) -> float:
    return stats.spearmanr(x, y).statistic


def correlation(x, y, statistic, resamples: int = 2000, seed: int = 0) -> Correlation:
    """`statistic(x, y)` and its bootstrap 95% interval over resampled (x, y) pairs."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    result = stats.bootstrap(
        (x, y),
        statistic,
        paired=True,
        vectorized=False,
        n_resamples=resamples,
        confidence_level=0.95,
        method="percentile",
        rng=np.random.default_rng(seed),
    )
    interval = result.confidence_interval
    return Correlation(float(statistic(x, y)), float(interval.low), float(interval.high))


def rank_objectives(
    scores: dict[str, list[float]], accuracy: list[float], resamples: int = 2000, seed: int = 0
) -> dict[str, dict]:
    """Kendall tau-b and Spearman rho of each objective's scores against `accuracy`, over the
    architectures it scored (NaN: it failed there)."""
    ranked = {}
    for name, values in scores.items():
        keep = [i for i, value in enumerate(values) if math.isfinite(value)]
        x, y = [values[i] for i in keep], [accuracy[i] for i in keep]
        if len(keep) < 3:
            ranked[name] = {"n": len(keep), "kendall": None, "spearman": None}
            continue
        ranked[name] = {
            "n": len(keep),
            "kendall": correlation(x, y, _kendall, resamples, seed),
            "spearman": correlation(x, y, _spearman, resamples, seed),
        }
    return ranked


def verdict(kendall: Correlation, baselines: dict[str, Correlation]) -> str:
    """`kendall` against the baselines' (by point estimate), and whether the intervals overlap."""
    beaten = [name for name, other in baselines.items() if kendall.value > other.value]
    names = " and ".join(baselines)
    if len(beaten) == len(baselines):
        text = f"beats {names}"
    elif beaten:
        text = f"beats {' and '.join(beaten)}, not {' and '.join(n for n in baselines if n not in beaten)}"
    else:
        text = f"does not beat {' or '.join(baselines)}"
    overlapping = [name for name, other in baselines.items() if kendall.overlaps(other)]
    if not overlapping:
        return f"{text} (interval apart from theirs)"
    return f"{text} (interval overlaps {' and '.join(overlapping)}'s)"


def markdown_table(ranked: dict[str, dict], ceiling: dict, verdicts: dict[str, str]) -> str:
    lines = [
        "| objective | Kendall tau-b [95% CI] | Spearman rho [95% CI] | n | |",
        "| --- | --- | --- | --- | --- |",
        f"| seed 0 vs seed 1 accuracy (ceiling) | {ceiling['kendall'].text()} | {ceiling['spearman'].text()} "
        f"| {ceiling['n']} | what no proxy can be expected to beat |",
    ]
    order = [n for n in BASELINES if n in ranked] + sorted(
        (n for n in ranked if n not in BASELINES), key=lambda n: -(ranked[n]["kendall"].value if ranked[n]["kendall"] else -2)
    )
    for name in order:
        row = ranked[name]
        if row["kendall"] is None:
            lines.append(f"| {name} | - | - | {row['n']} | scored fewer than 3 architectures |")
            continue
        note = "baseline" if name in BASELINES else verdicts[name]
        lines.append(f"| {name} | {row['kendall'].text()} | {row['spearman'].text()} | {row['n']} | {note} |")
    return "\n".join(lines)


def evaluate_table(
    scores: dict[str, list[float]], seed_accuracies: list[list[float]], resamples: int = 2000, seed: int = 0
) -> dict:
    """Everything the report shows, from each objective's scores and each architecture's
    accuracy per training seed (`seed_accuracies[arch][seed]`)."""
    accuracy = [float(np.mean(row)) for row in seed_accuracies]
    ranked = rank_objectives(scores, accuracy, resamples, seed)
    first, second = [row[0] for row in seed_accuracies], [row[1] for row in seed_accuracies]
    ceiling = {
        "n": len(first),
        "kendall": correlation(first, second, _kendall, resamples, seed),
        "spearman": correlation(first, second, _spearman, resamples, seed),
    }
    baselines = {
        label: ranked[name]["kendall"]
        for label, name in (("FLOPs", "flops"), ("params", "params"))
        if name in ranked and ranked[name]["kendall"] is not None
    }
    verdicts = {
        name: verdict(row["kendall"], baselines)
        for name, row in ranked.items()
        if name not in BASELINES and row["kendall"] is not None and baselines
    }
    return {"ranked": ranked, "ceiling": ceiling, "verdicts": verdicts, "accuracy": accuracy}


# --- the ground truth and the scores -----------------------------------------------------------------


def read_ground_truth(path: Path) -> list[dict]:
    """The CSV's rows, with `acc_seeds` (the accuracy per seed, seed order) and `spec_path`."""
    if not path.is_file():
        raise SystemExit(f"--ground-truth {path}: no such file; bench/ground_truth.py writes it")
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        missing = [column for column in REQUIRED_COLUMNS if column not in columns]
        if missing:
            raise SystemExit(f"--ground-truth {path}: missing column(s) {', '.join(missing)}; found {', '.join(columns)}")
        seed_columns = sorted((c for c in columns if c.startswith("acc_seed")), key=lambda c: int(c[len("acc_seed") :]))
        rows = []
        for line, row in enumerate(reader, start=2):
            try:
                row["acc_seeds"] = [float(row[c]) for c in seed_columns]
                row["img_size"] = int(row["img_size"])
            except ValueError as error:
                raise SystemExit(f"{path}:{line}: {error}") from None
            row["spec_path"] = path.parent / row["spec_file"]
            rows.append(row)
    if len(rows) < 3:
        raise SystemExit(f"--ground-truth {path}: {len(rows)} architecture(s); ranking needs at least 3")
    return rows


def score_architecture(spec, objectives: dict, data, device: torch.device, seed: int, proxy_batch: int) -> dict:
    """Every objective's score for `spec` (NaN and the error where one fails), each on a network
    built as a search builds it: the dataset's classes for the objectives that use labels."""
    from archdsl.api import load_spec, lower_spec
    from archdsl.compiler import compile_graph
    from archdsl.search.objectives import TrialContext

    graph = lower_spec(spec)
    labelled = lower_spec(load_spec(spec, num_classes=data.num_classes))
    context = TrialContext(
        device=device,
        image_size=spec.image_size,
        channels=spec.input.channels,
        data=data,
        seed=seed,
        proxy_batch=proxy_batch,
        flops=graph.flops,
    )
    scores, errors = {}, {}
    for name, objective in objectives.items():
        torch.manual_seed(seed)
        model = compile_graph(labelled if objective.uses_labels else graph).to(device)
        try:
            score = float(objective.score(model, context))
        except Exception as error:  # noqa: BLE001  (recorded beside the scores, as a search records a failed trial)
            score, errors[name] = float("nan"), f"{type(error).__name__}: {error}"
        if not math.isfinite(score) and name not in errors:
            errors[name] = f"not finite: {score}"
        scores[name] = score
    return {"scores": scores, "errors": errors}


def sample_specs(space, count: int, img_size: int, rng: np.random.Generator, max_draws: int | None = None) -> tuple[list, int]:
    """`count` valid specs of `space` at `img_size` within its FLOP budget (if it sets one), and
    how many draws were redrawn: one that does not validate or lower (a SpecError) or is over
    budget."""
    from archdsl.api import lower_spec
    from archdsl.search.choosers import RandomChooser

    max_draws = max_draws or 50 * count
    specs = []
    for draw in range(1, max_draws + 1):
        try:
            spec = space.sample(RandomChooser(rng), img_size).spec()
            flops = lower_spec(spec).flops
        except SpecError:
            continue
        if space.budget is None or flops <= space.budget:
            specs.append(spec)
            if len(specs) == count:
                return specs, draw - count
    raise SystemExit(
        f"only {len(specs)} of {count} draws from the space were valid and within its budget after {max_draws} draws"
    )


def make_objectives(names: str | None) -> dict:
    from archdsl.search.objectives import OBJECTIVES, make_objective

    chosen = [n for n in OBJECTIVES if n != "train"] if names is None else [n.strip() for n in names.split(",") if n.strip()]
    return {name: make_objective(name) for name in chosen}


# --- the two modes -----------------------------------------------------------------------------------


def measure(args, objectives: dict, data, device: torch.device) -> None:
    from archdsl.api import load_spec

    path = Path(args.ground_truth)
    rows = read_ground_truth(path)
    records, start = [], time.time()
    for index, row in enumerate(rows, start=1):
        try:
            spec = load_spec(row["spec_path"], overrides={"input.size": row["img_size"]})
        except SpecError as error:
            raise SystemExit(f"{path}: architecture {row['arch']}: {error}") from None
        result = score_architecture(spec, objectives, data, device, args.seed, args.proxy_batch)
        records.append(
            {
                "arch": row["arch"],
                "spec_file": row["spec_file"],
                "img_size": row["img_size"],
                "acc_seeds": row["acc_seeds"],
                **result,
            }
        )
        print(
            f"[{index}/{len(rows)}] {row['arch']} acc {np.mean(row['acc_seeds']):.4f} "
            + " ".join(f"{n}={s:.4g}" for n, s in result["scores"].items())
            + f" ({time.time() - start:.0f}s)",
            file=sys.stderr,
            flush=True,
        )
    scores = {name: [record["scores"][name] for record in records] for name in objectives}
    table = evaluate_table(scores, [record["acc_seeds"] for record in records], args.resamples, args.seed)
    accuracy = table["accuracy"]
    print(
        f"\nRanking of {len(records)} architectures ({path}; mean accuracy over {len(rows[0]['acc_seeds'])} seeds, "
        f"{min(accuracy):.4f} to {max(accuracy):.4f}), scored on {data.source} at {rows[0]['img_size']} px, "
        f"proxy minibatch {args.proxy_batch}, seed {args.seed}; bootstrap 95% intervals over {args.resamples} "
        f"resamples of the architectures:\n"
    )
    print(markdown_table(table["ranked"], table["ceiling"], table["verdicts"]))
    failed = {name: sum(1 for record in records if name in record["errors"]) for name in objectives}
    for name, count in failed.items():
        if count:
            print(
                f"\n{name} failed on {count} architecture(s), e.g. {next(r['errors'][name] for r in records if name in r['errors'])}"
            )
    if args.out:

        def plain(value):
            return asdict(value) if isinstance(value, Correlation) else value

        ranked = {name: {key: plain(value) for key, value in row.items()} for name, row in table["ranked"].items()}
        ceiling = {key: plain(value) for key, value in table["ceiling"].items()}
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(
            json.dumps(
                {
                    "command": " ".join(sys.argv),
                    "ground_truth": str(path),
                    "dataset": data.source,
                    "device": str(device),
                    "torch": torch.__version__,
                    "ranked": ranked,
                    "ceiling": ceiling,
                    "verdicts": table["verdicts"],
                    "architectures": records,
                },
                indent=1,
            )
        )
        print(f"\nwrote {args.out}")


def check_space(args, objectives: dict, data, device: torch.device) -> None:
    from archdsl.search.space import load_space

    specs, _ = sample_specs(load_space(), args.space_check, args.space_size, np.random.default_rng(args.seed))
    failures = 0
    for index, spec in enumerate(specs, start=1):
        result = score_architecture(spec, objectives, data, device, args.seed, args.proxy_batch)
        for name, error in result["errors"].items():
            failures += 1
            print(f"architecture {index}: {name}: {error}")
    print(
        f"{failures} failure(s) over {len(specs)} architectures of the default space at {args.space_size} px "
        f"and {len(objectives)} objectives"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ground-truth", help="bench/ground_truth.py's CSV")
    parser.add_argument("--dataset", default="fashion-mnist", help="the images the proxies see (default fashion-mnist)")
    parser.add_argument("--objectives", default=None, help="comma-separated (default: every objective but train)")
    parser.add_argument("--proxy-batch", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resamples", type=int, default=2000)
    parser.add_argument("--space-check", type=int, default=None, metavar="N")
    parser.add_argument("--space-size", type=int, default=224)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=None)
    args = parser.parse_args(argv)
    if (args.ground_truth is None) == (args.space_check is None):
        parser.error("give --ground-truth FILE (rank the objectives) or --space-check N (check them on the space)")

    from archdsl.search.data import load_dataset

    device = torch.device(args.device)
    try:
        objectives = make_objectives(args.objectives)
        data = load_dataset(args.dataset)
    except SpecError as error:  # a located one-paragraph message naming the option
        parser.exit(2, f"{error}\n")
    (measure if args.ground_truth else check_space)(args, objectives, data, device)


if __name__ == "__main__":
    main()
