"""How well does each training-free proxy rank architectures? Kendall tau against short training.

    python bench/proxy_tau.py [--archs 40] [--img-size 32] [--epochs 4] [--device cuda] [--out tau.json]

Samples `--archs` architectures from the bundled default space (random draws that fit a
budget of 2 GFLOPs scaled to the image size), scores each with every proxy (naswot, synflow,
grad_norm) and with the parameter count, trains each briefly on the bundled digits (the
`train` objective's default dataset), and prints each proxy's Kendall tau-b against the
validation accuracy. A proxy whose tau does not beat the parameter count's is labelled so.
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch


def kendall_tau_b(x: list[float], y: list[float]) -> float:
    """Kendall's tau-b (ties in either ranking handled), O(n^2): n is small here."""
    concordant = discordant = ties_x = ties_y = 0
    for i in range(len(x)):
        for j in range(i + 1, len(x)):
            dx, dy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
            if dx == 0 and dy == 0:
                continue
            if dx == 0:
                ties_x += 1
            elif dy == 0:
                ties_y += 1
            elif dx == dy:
                concordant += 1
            else:
                discordant += 1
    denominator = math.sqrt((concordant + discordant + ties_x) * (concordant + discordant + ties_y))
    return (concordant - discordant) / denominator if denominator else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archs", type=int, default=40)
    parser.add_argument("--img-size", type=int, default=32)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--train-images", type=int, default=None, help="use a random subset of the digits (CPU runs)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()

    from archdsl.api import lower_spec
    from archdsl.compiler import compile_graph
    from archdsl.search.data import load_dataset
    from archdsl.search.objectives import GradNorm, NASWOT, Params, SynFlow, TrialContext
    from archdsl.search.training import ShortTraining
    from archdsl.search.space import RandomChooser, load_space

    device = torch.device(args.device)
    space = load_space()
    budget = 2e9 * (args.img_size / 224) ** 2
    data = load_dataset(None)
    if args.train_images:
        from archdsl.search.data import ImageData

        keep = np.sort(np.random.default_rng(args.seed).permutation(len(data.labels))[: args.train_images])
        data = ImageData(data.images[keep], data.labels[keep], data.classes, f"{data.source}, {args.train_images} of them")
    rng = np.random.default_rng(args.seed)
    proxies = {"naswot": NASWOT(), "synflow": SynFlow(), "grad_norm": GradNorm(), "params": Params()}
    rows = []
    start = time.time()
    while len(rows) < args.archs:
        sample = space.sample(RandomChooser(rng), args.img_size)
        spec = sample.spec()
        graph = lower_spec(spec)
        if graph.flops > budget:
            continue
        from archdsl.api import load_spec

        spec10 = load_spec(spec, num_classes=data.num_classes)
        row = {"config": sample.config, "flops": graph.flops}
        context = TrialContext(device=device, image_size=spec.image_size, channels=3, data=data, seed=args.seed,
                               epochs=args.epochs, batch_size=args.batch_size, lr=args.lr)
        for name, proxy in proxies.items():
            torch.manual_seed(args.seed)
            model = compile_graph(lower_spec(spec10 if proxy.uses_labels else spec)).to(device)
            try:
                row[name] = proxy.score(model, context)
            except Exception as error:  # noqa: BLE001
                row[name] = float("nan")
                row[f"{name}_error"] = str(error)
        torch.manual_seed(args.seed)
        model = compile_graph(lower_spec(spec10)).to(device)
        row["accuracy"] = ShortTraining(args.epochs).score(model, context)
        rows.append(row)
        print(f"[{len(rows)}/{args.archs}] {graph.flops / 1e6:.1f} MFLOPs acc {row['accuracy']:.3f} "
              + " ".join(f"{n}={row[n]:.4g}" for n in proxies) + f"  ({time.time() - start:.0f}s)", flush=True)

    accuracy = [r["accuracy"] for r in rows]
    taus = {}
    for name in proxies:
        pairs = [(r[name], r["accuracy"]) for r in rows if r[name] == r[name]]
        taus[name] = kendall_tau_b([p[0] for p in pairs], [p[1] for p in pairs])
    taus["flops"] = kendall_tau_b([r["flops"] for r in rows], accuracy)
    print(f"\nKendall tau-b vs {args.epochs}-epoch accuracy on digits at {args.img_size}px, {len(rows)} architectures "
          f"(accuracy {min(accuracy):.3f}..{max(accuracy):.3f}):")
    for name, tau in sorted(taus.items(), key=lambda item: -item[1]):
        label = "" if name in ("params", "flops") else ("  beats parameter count" if tau > taus["params"] else
                                                           "  DOES NOT beat parameter count")
        print(f"  {name:>10}: {tau:+.3f}{label}")
    if args.out:
        with open(args.out, "w") as handle:
            json.dump({"args": vars(args), "tau": taus, "rows": rows}, handle, indent=1, default=str)


if __name__ == "__main__":
    main()
