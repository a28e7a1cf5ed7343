"""A ground truth for the search's objectives: sampled architectures trained on Fashion-MNIST.

    python bench/ground_truth.py --out bench/results/ground_truth_fmnist [--archs 32] [--seeds 2]
                                 [--budget 2GFLOPs@224] [--img-size 32] [--train-images 10000]
                                 [--epochs 4] [--workers 2] [--threads 1]

Draws `--archs` architectures at random from a search space (by default `hybrid_mobile`, the
default space at a quarter of its widths, so that each network trains in minutes) whose
analytic FLOPs at 224 fit `--budget` (the budget is always taken at the space's reference
size, 224: the networks are the 224 ones, trained small) and that also lower at `--img-size`
(windows and DCT blocks fit the smaller maps by the specs' own `fit: nearest_divisor` rule;
a draw that cannot run small is redrawn and counted). Each is trained from scratch with one
fixed recipe, once per seed, on a fixed stratified subset of Fashion-MNIST's official
training split, and evaluated on all 10,000 images of the official test split.

The recipe (also written to OUT/recipe.json): grey images repeated on 3 channels, resized
bilinearly to `--img-size`, normalised by the training set's mean and std, random horizontal
flips; AdamW (lr 2e-3, weight decay 0.05), one-cycle schedule (15% warm-up), batch 128, whole
batches only; stochastic depth 0 (the sampled hybrids have none). The seed fixes the
initialisation, the batch order and the flips; the subset and the architectures are fixed
by `--sample-seed`.

Resumable: every finished (architecture, seed) run is appended at once to OUT/runs.jsonl,
and the drawn architectures are listed in OUT/architectures.json (specs in OUT/specs/); a
rerun with the same options trains those same architectures and skips the runs already
there, so a killed or longer run (a larger --archs) continues.
OUT/ground_truth.csv is rewritten after each run with one row per architecture whose seeds
have all finished: arch (spec hash), spec_file (OUT/specs/HASH.yaml, written at 224),
flops_224, params, activation_units (per image at --img-size), img_size, epochs,
acc_seed0.., mean, sd, seconds. At the end it prints the seed ceiling: Kendall's tau between
the accuracies of seed 0 and seed 1 across architectures, which no objective can beat.
"""

from __future__ import annotations

import argparse
import csv
import fcntl
import hashlib
import json
import multiprocessing
import os
import platform
import statistics
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

LR, WEIGHT_DECAY, BATCH, WARMUP = 2e-3, 0.05, 128, 0.15


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("bench/results/ground_truth_fmnist"))
    parser.add_argument("--archs", type=int, default=32)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--space", default="hybrid_mobile", help="a bundled space name or a space file")
    parser.add_argument("--budget", default=None, help="FLOPs at 224, the space's reference size (default: the space's)")
    parser.add_argument("--img-size", type=int, default=32)
    parser.add_argument("--train-images", type=int, default=10000, help="a fixed stratified subset of the 60,000")
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--sample-seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=1, help="runs in parallel (processes)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    parser.add_argument("--dataset", default="fashion-mnist")
    return parser.parse_args(argv)


def recipe(args) -> dict:
    return {
        "dataset": args.dataset,
        "budget_at_224": args.budget or "the space's own",
        "img_size": args.img_size,
        "train_images": args.train_images,
        "test_images": "the official test split (all of it)",
        "epochs": args.epochs,
        "seeds": args.seeds,
        "sample_seed": args.sample_seed,
        "optimizer": "AdamW",
        "lr": LR,
        "weight_decay": WEIGHT_DECAY,
        "batch": BATCH,
        "schedule": f"one-cycle, {WARMUP:.0%} warm-up",
        "augmentation": "random horizontal flip",
        "channels": "grey repeated on 3 channels",
        "space": args.space,
    }


def spec_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def draw_architectures(args, known: list[dict] = ()) -> tuple[list[dict], dict]:
    """`--archs` architectures: the `known` ones (a resumed run's, in their order), then new draws
    (seeded by `--sample-seed` and how many are known): (architectures, rejection counts)."""
    from archdsl.api import lower_spec
    from archdsl.errors import SpecError
    from archdsl.search.budget import parse_flops
    from archdsl.search.choosers import RandomChooser
    from archdsl.search.records import spec_yaml
    from archdsl.search.space import load_space

    space = load_space(args.space)
    budget = parse_flops(args.budget) if args.budget else space.budget
    rng = np.random.default_rng([args.sample_seed, len(known)])
    archs, seen = list(known), {arch["arch"] for arch in known}
    rejected = {"invalid": 0, "over_budget": 0, f"invalid_at_{args.img_size}px": 0, "duplicate": 0}
    while len(archs) < args.archs:
        sample = space.sample(RandomChooser(rng), 224)
        try:
            graph = lower_spec(sample.spec())
        except SpecError:
            rejected["invalid"] += 1
            continue
        if graph.flops > budget:
            rejected["over_budget"] += 1
            continue
        try:
            lower_spec(space.resolve(sample.config, args.img_size).spec())
        except SpecError:
            rejected[f"invalid_at_{args.img_size}px"] += 1
            continue
        text = spec_yaml(sample.data)
        digest = spec_hash(text)
        if digest in seen:
            rejected["duplicate"] += 1
            continue
        seen.add(digest)
        archs.append({"arch": digest, "yaml": text, "flops_224": int(graph.flops)})
    return archs, rejected


def activation_units(model, image) -> int:
    """Activation-output elements per image: the units NASWOT's kernel is built over."""
    import torch

    from archdsl.search.objectives import _activations

    total = 0

    def count(module, inputs, output):
        nonlocal total
        total += output[0].numel()

    handles = [module.register_forward_hook(count) for module in _activations(model)]
    try:
        with torch.no_grad():
            model.eval()(image)
    finally:
        for handle in handles:
            handle.remove()
    return total


def train_once(spec_file: Path, seed: int, args, data, train_index, test_index) -> dict:
    """One run of the recipe: test accuracy, training seconds, params, activation units."""
    import torch
    import torch.nn.functional as F

    import archdsl

    torch.manual_seed(seed)
    model = archdsl.create_model(str(spec_file), img_size=args.img_size, num_classes=data.num_classes)
    params = sum(p.numel() for p in model.parameters())
    size = (args.img_size, args.img_size)
    units = activation_units(model, data.batch(test_index[:1], size, 3)[0])
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    steps = len(train_index) // BATCH
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=LR, total_steps=args.epochs * steps, pct_start=WARMUP)
    start = time.perf_counter()
    for epoch in range(args.epochs):
        model.train()
        order = train_index[torch.randperm(len(train_index), generator=generator).numpy()]
        for step in range(steps):
            images, labels = data.batch(order[step * BATCH : (step + 1) * BATCH], size, 3)
            flip = torch.rand(len(labels), generator=generator) < 0.5
            images = torch.where(flip[:, None, None, None], images.flip(-1), images)
            loss = F.cross_entropy(model(images), labels)
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss {float(loss)} at epoch {epoch + 1}, step {step + 1}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    model.eval()
    correct = 0
    with torch.no_grad():
        for first in range(0, len(test_index), 500):
            images, labels = data.batch(test_index[first : first + 500], size, 3)
            correct += int((model(images).argmax(1) == labels).sum())
    return {
        "accuracy": correct / len(test_index),
        "seconds": round(time.perf_counter() - start, 1),
        "params": params,
        "activation_units": units,
    }


def fixed_subset(data, train_index: np.ndarray, count: int, seed: int) -> np.ndarray:
    """`count` training images, the same share of each class, fixed by `seed`."""
    rng = np.random.default_rng(seed)
    chosen = []
    for label in range(data.num_classes):
        index = train_index[data.labels[train_index] == label]
        chosen.extend(rng.choice(index, size=min(len(index), count // data.num_classes), replace=False))
    return np.sort(np.array(chosen))


def finished_runs(out: Path) -> dict[tuple[str, int], dict]:
    path = out / "runs.jsonl"
    if not path.exists():
        return {}
    runs = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return {(run["arch"], run["seed"]): run for run in runs}


def append_run(out: Path, run: dict) -> None:
    with open(out / "runs.jsonl", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        handle.write(json.dumps(run) + "\n")
        handle.flush()
        os.fsync(handle.fileno())
        fcntl.flock(handle, fcntl.LOCK_UN)


def write_table(out: Path, archs: list[dict], args) -> list[dict]:
    runs = finished_runs(out)
    rows = []
    for arch in archs:
        seeds = [runs.get((arch["arch"], seed)) for seed in range(args.seeds)]
        if any(run is None for run in seeds):
            continue
        accuracies = [run["accuracy"] for run in seeds]
        row = {
            "arch": arch["arch"],
            "spec_file": f"specs/{arch['arch']}.yaml",
            "flops_224": arch["flops_224"],
            "params": seeds[0]["params"],
            "activation_units": seeds[0]["activation_units"],
            "img_size": args.img_size,
            "epochs": args.epochs,
        }
        row.update({f"acc_seed{seed}": f"{acc:.4f}" for seed, acc in enumerate(accuracies)})
        row.update(
            {
                "mean": f"{statistics.fmean(accuracies):.4f}",
                "sd": f"{statistics.stdev(accuracies):.4f}",
                "seconds": round(sum(run["seconds"] for run in seeds), 1),
            }
        )
        rows.append(row)
    if rows:
        temporary = out / "ground_truth.csv.tmp"
        with open(temporary, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        temporary.replace(out / "ground_truth.csv")
    return rows


def worker(rank: int, args, archs: list[dict], units: list[tuple[int, int]]) -> None:
    import torch

    from archdsl.search.data import load_dataset

    torch.set_num_threads(args.threads)
    data = load_dataset(args.dataset)
    train_index, test_index = data.train_test()
    train_index = fixed_subset(data, train_index, args.train_images, args.sample_seed)
    for number, (arch_index, seed) in enumerate(units):
        if number % args.workers != rank:
            continue
        arch = archs[arch_index]
        if (arch["arch"], seed) in finished_runs(args.out):
            continue
        spec_file = args.out / "specs" / f"{arch['arch']}.yaml"
        try:
            result = train_once(spec_file, seed, args, data, train_index, test_index)
        except (FloatingPointError, RuntimeError) as error:  # a diverged or failed run is a result too
            result = {"accuracy": float("nan"), "error": str(error)[:300], "seconds": 0, "params": 0, "activation_units": 0}
        append_run(args.out, {"arch": arch["arch"], "seed": seed, **result})
        rows = write_table(args.out, archs, args)
        print(
            f"[worker {rank}] {arch['arch']} seed {seed}: accuracy {result['accuracy']:.4f} "
            f"({result['seconds']} s); {len(rows)}/{len(archs)} architectures complete",
            flush=True,
        )


def seed_ceiling(rows: list[dict]) -> float:
    from scipy.stats import kendalltau

    return float(kendalltau([float(r["acc_seed0"]) for r in rows], [float(r["acc_seed1"]) for r in rows]).statistic)


def known_architectures(out: Path) -> list[dict]:
    """The architectures an earlier run drew, in order, read back from their spec files, so a
    resumed run trains the same networks even if the space or the sampler has changed since."""
    path = out / "architectures.json"
    if not path.exists():
        return []
    return [{**arch, "yaml": (out / "specs" / f"{arch['arch']}.yaml").read_text()} for arch in json.loads(path.read_text())]


def same_recipe(out: Path, args) -> None:
    """A resumed run must train with the recipe of the runs already in OUT (not the same count)."""
    path = out / "recipe.json"
    if not path.exists():
        return
    earlier = {key: value for key, value in json.loads(path.read_text())["recipe"].items() if key != "seeds"}
    now = {key: value for key, value in recipe(args).items() if key != "seeds"}
    if earlier != now:
        changed = ", ".join(f"{key}: {earlier.get(key)!r} -> {now.get(key)!r}" for key in now if earlier.get(key) != now[key])
        raise SystemExit(f"error: {out} holds runs of another recipe ({changed}); give another --out or the same options")


def main(argv=None) -> None:
    args = parse_args(argv)
    same_recipe(args.out, args)
    (args.out / "specs").mkdir(parents=True, exist_ok=True)
    archs, rejected = draw_architectures(args, known_architectures(args.out)[: args.archs])
    for arch in archs:
        path = args.out / "specs" / f"{arch['arch']}.yaml"
        if not path.exists():
            path.write_text(arch["yaml"])
    listing = [{"arch": arch["arch"], "flops_224": arch["flops_224"]} for arch in archs]
    (args.out / "architectures.json").write_text(json.dumps(listing, indent=1) + "\n")
    about = {
        "recipe": recipe(args),
        "rejected_draws": rejected,
        "command": "python bench/ground_truth.py " + " ".join(argv or os.sys.argv[1:]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}, "
        f"torch threads per worker {args.threads}, workers {args.workers}",
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if (args.out / "recipe.json").exists():  # the first run's start and draws are kept
        earlier = json.loads((args.out / "recipe.json").read_text())
        about.update(started=earlier["started"], rejected_draws=earlier["rejected_draws"], resumed=about["started"])
    (args.out / "recipe.json").write_text(json.dumps(about, indent=2) + "\n")
    # architecture-major order: a run stopped early leaves complete rows (every seed of an architecture)
    units = [(index, seed) for index in range(len(archs)) for seed in range(args.seeds)]
    if args.workers == 1:
        worker(0, args, archs, units)
    else:
        context = multiprocessing.get_context("spawn")
        processes = [context.Process(target=worker, args=(rank, args, archs, units)) for rank in range(args.workers)]
        for process in processes:
            process.start()
        for process in processes:
            process.join()
    rows = write_table(args.out, archs, args)
    if len(rows) >= 3 and args.seeds >= 2:
        print(f"seed ceiling (Kendall tau, seed 0 vs seed 1, {len(rows)} architectures): {seed_ceiling(rows):+.3f}")


if __name__ == "__main__":
    main()
