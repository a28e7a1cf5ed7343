"""What a finished search leaves in OUT: the leaderboard, the best specs, the Pareto plot.

* `leaderboard.csv`: every trial, ranked by score (failed ones last, with their error): rank,
  trial, status, score, FLOPs, params, the trial's spec file, the time split, the error.
* `best.yaml` and `top/NN_<trial>.yaml`: the best `top_k` architectures as standalone spec
  files (no choices left, `input.size` the search's image size) that `archdsl build` accepts.
* `pareto.png`: score against FLOPs for every finished trial, the Pareto front, the budget as
  a vertical line, and the bundled paper variants under the budget, scored the same way.
* `summary.json`: settings, counts (done, failed, rejected by kind), the best trial.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

from archdsl.search.budget import format_flops, format_params

COLUMNS = ("rank", "trial", "status", "score", "flops", "params", "spec_file", "t_suggest", "t_sample", "t_lower", "t_build",
           "t_objective", "iterations", "error")


def ranked(records: list[dict]) -> list[dict]:
    done = sorted((r for r in records if r["status"] == "done"), key=lambda r: (-r["score"], r.get("flops") or 0, r["trial"]))
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


def _header(record: dict, space, settings, rank: int) -> str:
    lines = [f"Found by `archdsl search` (rank {rank}): trial {record['trial']} of {space.origin}",
             f"objective {settings.objective}: score {record['score']:.6g}; {format_flops(record['flops'])} "
             f"({record['flops']:,}) at {settings.img_size}px, budget {format_flops(settings.budget)}; "
             f"{format_params(record['params'])} parameters",
             "Its choices: " + ", ".join(f"{name}={value}" for name, value in record["config"].items())]
    return "\n".join(lines)


def write_report(out: Path, space, settings, records: dict[str, dict], baselines: list[dict], stats: dict) -> dict:
    from archdsl.search.runner import spec_yaml

    rows = ranked(list(records.values()))
    leaderboard = out / "leaderboard.csv"
    with leaderboard.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        for rank, record in enumerate(rows, 1):
            row = {key: record.get(key) for key in COLUMNS}
            row["rank"] = rank if record["status"] == "done" else ""
            row["iterations"] = record.get("training_iteration")
            row["error"] = record.get("error", "")
            writer.writerow(row)

    done = [r for r in rows if r["status"] == "done"]
    top_dir = out / "top"
    if top_dir.exists():
        shutil.rmtree(top_dir)
    top_dir.mkdir()
    best_path = None
    for rank, record in enumerate(done[: max(1, settings.top_k)], 1):
        data = space.resolve(record["config"], settings.img_size).data
        name = f"{space.name}_best" if rank == 1 else f"{space.name}_top{rank}"
        text = spec_yaml(dict(data, name=name), _header(record, space, settings, rank))
        (top_dir / f"{rank:02d}_{record['trial']}.yaml").write_text(text)
        if rank == 1:
            best_path = out / "best.yaml"
            best_path.write_text(text)

    pareto = plot_pareto(out / "pareto.png", done, baselines, settings) if done or baselines else None
    summary = {
        "space": space.origin, "settings": {k: v for k, v in vars(settings).items()},
        "trials": {"done": len(done), "failed": len(rows) - len(done)}, **stats,
        "best": ({key: done[0].get(key) for key in ("trial", "score", "flops", "params", "spec_file")} if done else None),
        "baselines": baselines,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    return {"best": best_path, "leaderboard": leaderboard, "pareto": pareto, "records": rows}


def plot_pareto(path: Path, done: list[dict], baselines: list[dict], settings) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7.5, 5), dpi=120)
    points = [(r["flops"] / 1e9, r["score"]) for r in done]
    if points:
        axes.scatter([p[0] for p in points], [p[1] for p in points], s=18, alpha=0.55, color="tab:blue", label="searched")
        front = pareto_front(points)
        axes.step([p[0] for p in front], [p[1] for p in front], where="post", color="tab:blue", linewidth=1.2, label="Pareto front")
        best = max(points, key=lambda p: p[1])
        axes.scatter([best[0]], [best[1]], s=90, facecolors="none", edgecolors="tab:red", linewidths=1.8, label="best (best.yaml)")
    scored = [b for b in baselines if b.get("status") == "done"]
    for row in scored:
        axes.scatter([row["flops"] / 1e9], [row["score"]], marker="*", s=160, color="tab:orange", edgecolors="black", linewidths=0.5,
                     zorder=5)
        axes.annotate(row["name"], (row["flops"] / 1e9, row["score"]), textcoords="offset points", xytext=(6, 4), fontsize=8)
    if scored:
        axes.scatter([], [], marker="*", s=120, color="tab:orange", edgecolors="black", linewidths=0.5,
                     label="paper variants (same objective)")
    axes.axvline(settings.budget / 1e9, color="tab:red", linestyle="--", linewidth=1.2,
                 label=f"budget {format_flops(settings.budget)}")
    axes.set_xlabel(f"GFLOPs at {settings.img_size}px (multiply-adds)")
    axes.set_ylabel(f"score ({settings.objective})")
    axes.set_title(f"archdsl search: {len(done)} architectures")
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8, loc="best")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path
