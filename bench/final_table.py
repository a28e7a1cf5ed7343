"""The final stage of a training search as a Markdown table: each architecture's accuracy,
mean ± sd over its seeds, beside its FLOPs at the reference size and its parameters.

    python bench/final_table.py OUT

OUT is an `archdsl search --objective train` output folder (its final.json and search.json).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

KIND = {"trial": "searched", "random": "random hybrid", "paper_variant": "paper variant"}


def table(out: Path) -> str:
    final = json.loads((out / "final.json").read_text())
    settings = json.loads((out / "search.json").read_text())
    recipe = final["recipe"]
    lines = [
        f"Budget {settings['budget'] / 1e9:g} GFLOPs at {settings['budget_at']}, trained at {settings['img_size']} px on "
        f"{recipe['dataset']} ({recipe['train_images']} training images), {recipe['epochs']} epochs, batch "
        f"{recipe['batch_size']}, lr {recipe['lr']}, seeds {recipe['seeds']}; scored on the official test split.",
        "",
        "| rank | architecture | kind | GFLOPs@ref | params | accuracy per seed | mean ± sd |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for rank, row in enumerate(final["architectures"], 1):
        scores = ", ".join(f"{score:.4f}" for score in row["scores"]) or "-"
        if row["mean"] is not None:
            mean = f"{row['mean']:.4f} ± {row['sd'] or 0:.4f}"
        else:
            mean = "failed" if row["failed"] else "not run yet"
        params = "-" if row.get("params") is None else f"{row['params'] / 1e6:.2f} M"
        lines.append(
            f"| {rank} | {row['name']} | {KIND[row['kind']]} | {row['flops'] / 1e9:.2f} | {params} | {scores} | {mean} |"
        )
    missing = [row for row in final["architectures"] if len(row["scores"]) < len(recipe["seeds"])]
    if missing:
        lines += ["", f"Unfinished: {', '.join(row['name'] for row in missing)} (fewer runs than seeds so far)."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path)
    print(table(parser.parse_args().out))


if __name__ == "__main__":
    main()
