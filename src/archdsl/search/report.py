"""What a finished search leaves in OUT: the leaderboard, the best specs, the front, the plot.

* `leaderboard.csv`: with a final stage, first its architectures (the top trials and the paper
  variants, `stage` final) ranked by mean accuracy over the seeds, with mean, sd and runs;
  then every trial (`stage` search), ranked by the epochs it reached, then score: a trial
  ASHA stopped after 1 epoch never ranks beside one trained for 4 as an equal. Failed trials
  last, with their error (and, when training, the epoch they had finished).
* `best.yaml` and `top/NN_<trial>.yaml`: the best `top_k` architectures as standalone spec
  files (no choices left) at the budget's reference size (`input.size`), which is the size
  their FLOPs are budgeted at; `trials/ID.yaml` holds each at the size it was trained at.
* `front.csv` and `front/NN_<trial>.yaml` (with several `--objectives`): the non-dominated trials.
* `pareto.png`: score (or final mean ± sd) against FLOPs at the reference size, the Pareto
  front over the trials and the paper variants, the budget line; each paper variant has its
  own marker, named in the legend, so no label covers a trial.
* `summary.json`: the settings and plan, counts (done, stopped early, failed, rejected by
  kind), the best trial, the paper variants, the final stage (recipe, seeds, mean ± sd).
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

from archdsl.search.budget import format_flops, format_params
from archdsl.search.records import spec_yaml

COLUMNS = (
    "stage",
    "rank",
    "trial",
    "kind",
    "status",
    "epochs",
    "score",
    "final_mean",
    "final_sd",
    "final_runs",
    "flops",
    "flops_trial",
    "params",
    "latency_ms",
    "spec_file",
    "t_suggest",
    "t_sample",
    "t_lower",
    "t_build",
    "t_objective",
    "iterations",
    "error",
)


def ranked(records: list[dict]) -> list[dict]:
    """Finished trials by the epochs they reached, then score, then fewer FLOPs; failed ones last."""
    done = sorted(
        (r for r in records if r["status"] == "done"),
        key=lambda r: (-r.get("epoch", 0), -r["score"], r.get("flops") or 0, r["trial"]),
    )
    failed = sorted((r for r in records if r["status"] != "done"), key=lambda r: r["trial"])
    return done + failed


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """(flops, score) points no other point beats on both (fewer FLOPs and a higher score)."""
    front, best = [], float("-inf")
    for flops, score in sorted(points, key=lambda p: (p[0], -p[1])):
        if score > best:
            front.append((flops, score))
            best = score
    return front


def non_dominated(records: list[dict], costs: list[str]) -> list[dict]:
    """Records no other beats on every objective (score higher, each cost lower), by score."""

    def dominates(a: dict, b: dict) -> bool:
        better_or_equal = a["score"] >= b["score"] and all(a[c] <= b[c] for c in costs)
        return better_or_equal and (a["score"] > b["score"] or any(a[c] < b[c] for c in costs))

    usable = [r for r in records if all(r.get(c) is not None for c in costs)]
    return sorted((r for r in usable if not any(dominates(o, r) for o in usable)), key=lambda r: -r["score"])


def _header(record: dict, space, settings, rank: int, final: dict | None) -> str:
    trained = f" after {record['epoch']} epochs" if "epoch" in record else ""
    lines = [
        f"Found by `archdsl search` (rank {rank}): trial {record['trial']} of {space.origin}",
        f"objective {settings.objective}: score {record['score']:.6g}{trained} at {settings.img_size}px; "
        f"{format_flops(record['flops'])} ({record['flops']:,}) at {settings.budget_at}px (this file's size), budget "
        f"{format_flops(settings.budget)}; {format_params(record['params'])} parameters",
    ]
    if final is not None:
        lines.append(f"final stage: {final['mean']:.4f} ± {final['sd']:.4f} accuracy over seeds {final['seeds']}")
    lines.append("Its choices: " + ", ".join(f"{name}={value}" for name, value in record["config"].items()))
    return "\n".join(lines)


def _write_specs(folder: Path, chosen: list[dict], space, settings, finals: dict) -> None:
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir()
    for rank, record in enumerate(chosen, 1):
        data = space.resolve(record["config"], settings.budget_at).data
        text = spec_yaml(
            dict(data, name=f"{space.name}_{record['trial']}"),
            _header(record, space, settings, rank, finals.get(record["trial"])),
        )
        (folder / f"{rank:02d}_{record['trial']}.yaml").write_text(text)


def _leaderboard(path: Path, rows: list[dict], final: dict | None) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        for rank, row in enumerate((final or {}).get("architectures", []), 1):
            writer.writerow(
                {
                    "stage": "final",
                    "rank": rank if row["status"] == "done" else "",
                    "trial": row["name"],
                    "kind": row["kind"],
                    "status": row["status"],
                    "epochs": final["recipe"]["epochs"],
                    "final_mean": row["mean"],
                    "final_sd": row["sd"],
                    "final_runs": len(row["scores"]),
                    "flops": row["flops"],
                    "flops_trial": row.get("flops_trial"),
                    "params": row.get("params"),
                    "spec_file": row.get("spec_file", ""),
                    "score": row.get("search_score"),
                    "error": "; ".join(f"seed {f['seed']}: {f['error']}" for f in row["failed"]),
                }
            )
        for rank, record in enumerate(rows, 1):
            row = {key: record.get(key) for key in COLUMNS}
            row.update(
                stage="search",
                kind="trial",
                rank=rank if record["status"] == "done" else "",
                epochs=record.get("epoch"),
                iterations=record.get("training_iteration"),
                error=record.get("error", ""),
            )
            writer.writerow(row)


def write_report(
    out: Path, space, settings, records: dict[str, dict], baselines: list[dict], stats: dict, final: dict | None = None
) -> dict:
    rows = ranked(list(records.values()))
    done = [r for r in rows if r["status"] == "done"]
    finals = {a["name"]: a for a in (final or {}).get("architectures", []) if a["kind"] == "trial" and a["status"] == "done"}
    leaderboard = out / "leaderboard.csv"
    _leaderboard(leaderboard, rows, final)

    # the best: by the final stage's mean when there is one, else the search's ranking
    best_first = sorted(done, key=lambda r: (r["trial"] not in finals, -(finals.get(r["trial"], {}).get("mean") or 0.0)))
    chosen = best_first[: max(1, settings.top_k)]
    _write_specs(out / "top", chosen, space, settings, finals)
    best_path = None
    if chosen:
        best_path = out / "best.yaml"
        shutil.copyfile(next((out / "top").glob("01_*.yaml")), best_path)
    front = None
    if settings.objectives:
        front = non_dominated(done, settings.costs)
        _write_specs(out / "front", front, space, settings, finals)
        with (out / "front.csv").open("w", newline="") as handle:
            writer = csv.DictWriter(
                handle, fieldnames=["rank", "trial", "score", *settings.costs, "flops_trial", "spec_file"], extrasaction="ignore"
            )
            writer.writeheader()
            for rank, record in enumerate(front, 1):
                writer.writerow({**record, "rank": rank, "spec_file": f"front/{rank:02d}_{record['trial']}.yaml"})

    variants = [a for a in (final or {}).get("architectures", []) if a["kind"] == "paper_variant"]
    pareto = plot_pareto(out / "pareto.png", done, baselines, settings, final) if done or baselines or variants else None
    stopped = sum(r.get("epoch", settings.epochs) < settings.epochs for r in done) if settings.training else 0
    summary = {
        "space": space.origin,
        "settings": settings.stored(),
        **stats,
        "trials": {"done": len(done), "stopped_early": stopped, "failed": len(rows) - len(done)},
        "best": (
            {key: best_first[0].get(key) for key in ("trial", "score", "epoch", "flops", "flops_trial", "params", "spec_file")}
            if done
            else None
        ),
        "baselines": baselines,
        "final": final,
        "front": [{key: r.get(key) for key in ("trial", "score", *settings.costs)} for r in front] if front is not None else None,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    return {"best": best_path, "leaderboard": leaderboard, "pareto": pareto, "records": rows}


def plot_pareto(path: Path, done: list[dict], baselines: list[dict], settings, final: dict | None) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(9, 5.5), dpi=120)
    if final is not None:  # the final stage's architectures: mean ± sd over the seeds
        scored = [a for a in final["architectures"] if a["status"] == "done"]
        trials = [(a["flops"] / 1e9, a["mean"], a["sd"] or 0.0) for a in scored if a["kind"] == "trial"]
        variants = [(a["name"], a["flops"] / 1e9, a["mean"], a["sd"] or 0.0) for a in scored if a["kind"] == "paper_variant"]
        controls = [(a["flops"] / 1e9, a["mean"], a["sd"] or 0.0) for a in scored if a["kind"] == "random"]
        ylabel = f"accuracy, mean ± sd over {len(final['recipe']['seeds'])} seeds ({final['recipe']['epochs']} epochs)"
        for points, fmt, color, label in (
            (controls, "s", "tab:gray", "random hybrids (control)"),
            (trials, "o", "tab:blue", "searched (final stage)"),
        ):
            if points:
                x, y, sd = zip(*points)
                axes.errorbar(x, y, yerr=sd, fmt=fmt, color=color, capsize=3, label=label)
    else:
        trials = [(r["flops"] / 1e9, r["score"], 0.0) for r in done]
        variants = [(b["name"], b["flops"] / 1e9, b["score"], 0.0) for b in baselines if b.get("status") == "done"]
        ylabel = f"score ({settings.objective})"
        if trials:
            axes.scatter([t[0] for t in trials], [t[1] for t in trials], s=18, alpha=0.55, color="tab:blue", label="searched")
    points = [(t[0], t[1]) for t in trials] + [(v[1], v[2]) for v in variants]
    if points:
        front = pareto_front(points)
        axes.step(
            [p[0] for p in front],
            [p[1] for p in front],
            where="post",
            color="tab:gray",
            linewidth=1.2,
            label="Pareto front (searched and paper variants)",
        )
    if trials:
        best = max(trials, key=lambda t: t[1])
        axes.scatter(
            [best[0]], [best[1]], s=110, facecolors="none", edgecolors="tab:red", linewidths=1.8, label="best (best.yaml)"
        )
    markers = "*PXDvp^<>hs"
    colors = plt.get_cmap("tab10").colors
    for index, (name, flops, score, sd) in enumerate(variants):
        axes.errorbar(
            [flops],
            [score],
            yerr=[sd] if sd else None,
            fmt=markers[index % len(markers)],
            markersize=10,
            color=colors[(index + 1) % len(colors)],
            markeredgecolor="black",
            markeredgewidth=0.5,
            capsize=3,
            zorder=5,
            label=f"{name} ({score:.3f}{f' ± {sd:.3f}' if sd else ''})",
        )
    axes.axvline(
        settings.budget / 1e9,
        color="tab:red",
        linestyle="--",
        linewidth=1.2,
        label=f"budget {format_flops(settings.budget)} at {settings.budget_at}px",
    )
    axes.set_xlabel(f"GFLOPs at {settings.budget_at}px (multiply-adds); trained and scored at {settings.img_size}px")
    axes.set_ylabel(ylabel)
    axes.set_title(f"archdsl search: {len(done)} architectures")
    axes.grid(alpha=0.3)
    # the legend beside the axes: the paper variants are named there, never on top of a trial
    axes.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path
