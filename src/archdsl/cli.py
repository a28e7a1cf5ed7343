"""The `archdsl` command: a thin typer app over the library."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import List, Optional

import typer
from rich.console import Console
from rich.table import Table

from archdsl.errors import Location, Problem, SpecError

out = Console()
err = Console(stderr=True)

ISSUE_HINT = "This is a bug in archdsl, not in your spec: please report it on the archdsl issue tracker with the command you ran."


class App(typer.Typer):
    """The command line: a spec error exits 2 with its located message, a crash of archdsl's own
    code exits 1 as an internal error; neither prints a traceback."""

    def __call__(self, *args, **kwargs):
        try:
            return super().__call__(*args, **kwargs)
        except SpecError as error:  # from a command that does not catch it itself
            report(error)
            raise SystemExit(2) from None
        except Exception as error:  # noqa: BLE001  (the last stop before the user's terminal)
            err.print("[bold red]internal error:[/] ", end="")
            err.print(f"{type(error).__name__}: {error}\n{ISSUE_HINT}", highlight=False, soft_wrap=True, markup=False)
            raise SystemExit(1) from None


app = App(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
          help="A declarative architecture language for conv/attention vision backbones.")

SpecArgument = typer.Argument(..., help="A spec file, or a bundled spec name such as cloformer_xxs.")
SetOption = typer.Option(None, "--set", help="Override a value by dotted path, e.g. --set stages.2.depth=8 (repeatable).")
ImgSizeOption = typer.Option(None, "--img-size", help="Input size: N or HxW (e.g. 224 or 224x288).")
MaxMemoryOption = typer.Option(None, "--max-memory", help="Refuse a network whose parameters and batch-1 activations exceed "
                                                           "this (e.g. 8G; default: this machine's memory).")


def report(error: Exception) -> None:
    err.print("[bold red]error:[/] ", end="")
    err.print(str(error), highlight=False, soft_wrap=True, markup=False)  # spec text may hold [brackets]


def fail(error: Exception) -> None:
    report(error)
    raise typer.Exit(code=2)


def _human(number: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(number) >= scale:
            return f"{number / scale:.3f}{unit}"
    return str(number)


@app.command()
def build(
    spec: str = SpecArgument,
    img_size: Optional[str] = ImgSizeOption,
    num_classes: Optional[int] = typer.Option(None, "--num-classes", help="Classifier outputs."),
    set_: Optional[List[str]] = SetOption,
    pretrained: Optional[Path] = typer.Option(None, "--pretrained", help="Weights to load (archdsl or the authors' checkpoint)."),
    output: Optional[Path] = typer.Option(None, "-o", "--output", help="Write a checkpoint (resolved spec + weights)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of the table."),
    max_memory: Optional[str] = MaxMemoryOption,
) -> None:
    """Validate, lower and compile a spec; print its per-stage summary (shapes, params, FLOPs)."""
    from archdsl.api import create_model, lower_spec
    from archdsl.summary import summarize
    from archdsl.weights import save_checkpoint

    try:
        model = create_model(spec, pretrained=pretrained, num_classes=num_classes, img_size=img_size, overrides=set_ or None,
                             max_memory=max_memory)
        summary = summarize(model, lower_spec(model.spec))
        if output is not None:
            save_checkpoint(model, output)
    except SpecError as error:
        fail(error)
    if as_json:
        typer.echo(json.dumps(summary.as_dict()))
        return
    table = Table(title=f"{summary.name or spec} at {'x'.join(map(str, summary.img_size))}")
    for column in ("part", "blocks", "output", "params", "FLOPs"):
        table.add_column(column, justify="left" if column in ("part", "output") else "right")
    for part in summary.stages:
        table.add_row(part.part, str(part.blocks or ""), "x".join(map(str, part.out_shape)), f"{part.params:,}", _human(part.flops))
    table.add_section()
    table.add_row("total", "", "", f"{summary.params:,}", _human(summary.flops_analytic))
    out.print(table)
    out.print(f"params {summary.params:,} (trainable {summary.trainable_params:,})   "
              f"FLOPs {_human(summary.flops)} (fvcore raw {_human(summary.flops_fvcore_raw)}, analytic {_human(summary.flops_analytic)})")
    if output is not None:
        out.print(f"wrote {output}")


@app.command()
def validate(spec: str = SpecArgument, img_size: Optional[str] = ImgSizeOption, set_: Optional[List[str]] = SetOption,
             max_memory: Optional[str] = MaxMemoryOption) -> None:
    """Check a spec (schema and graph: shapes, heads, channel shares, side channels, memory) without building it."""
    from archdsl.api import load_spec, lower_spec
    from archdsl.footprint import check_fits

    try:
        graph = lower_spec(load_spec(spec, set_ or None, img_size=img_size))
        check_fits(graph, max_memory)
    except SpecError as error:
        fail(error)
    out.print(f"ok: {graph.spec.name or spec} is valid at {'x'.join(map(str, graph.image_size))}, {_human(graph.flops)} FLOPs (analytic)")


@app.command()
def schema(space: bool = typer.Option(False, "--space", help="The schema of search spaces (choice nodes allowed anywhere).")) -> None:
    """Print the language's JSON Schema (for YAML completion in editors)."""
    from archdsl.schema import json_schema

    typer.echo(json.dumps(json_schema(space=space), indent=2))


@app.command()
def nominations(
    spec: str = SpecArgument,
    image: Path = typer.Argument(..., help="An image file (resized to the model's input size)."),
    pretrained: Optional[Path] = typer.Option(None, "--pretrained", help="Weights (archdsl or the authors' checkpoint)."),
    output: Path = typer.Option(Path("nominations.png"), "-o", "--output", help="The PNG to write."),
    img_size: Optional[str] = ImgSizeOption,
) -> None:
    """Save each nominating layer's per-pixel choice for IMAGE as a PNG (NomMer: red/green/blue = CNN/local/global)."""
    from archdsl.api import create_model
    from archdsl.blocks.nommer import save_nomination_maps

    try:
        model = create_model(spec, pretrained=pretrained, img_size=img_size).eval()
        if not image.is_file():
            raise SpecError(Problem("image file not found", (), Location(str(image))))
        maps = save_nomination_maps(model, image, output)
    except (SpecError, ValueError) as error:
        fail(error)
    for name, weights in maps.items():
        counts = weights[0].argmax(0).flatten().bincount(minlength=weights.shape[1]).tolist()
        out.print(f"{name}: pixels per candidate {counts}")
    out.print(f"wrote {output}")


def _flops_help() -> str:
    from archdsl.search.budget import FLOPS_HELP

    return f"FLOP budget: {FLOPS_HELP} (default: the space's)."


@app.command()
def search(
    budget: Optional[str] = typer.Option(None, "--budget", help=_flops_help()),
    space: Optional[str] = typer.Option(None, "--space", help="A search space file or bundled name (default: the bundled hybrid space)."),
    max_params: Optional[str] = typer.Option(None, "--max-params", help="Parameter budget, such as 10M."),
    img_size: Optional[int] = typer.Option(None, "--img-size", help="Input side the budget applies at (default: the space's)."),
    objective: str = typer.Option("naswot", "--objective", help="naswot | synflow | grad_norm | params | train."),
    samples: int = typer.Option(64, "--samples", help="Trials to run."),
    searcher: str = typer.Option("tpe", "--searcher", help="tpe (Optuna) | evolution (NSGA-II) | random."),
    seed: int = typer.Option(0, "--seed", help="Seed for reproducible sampling."),
    out_dir: Path = typer.Option(Path("runs/search"), "--out", help="Where results go (leaderboard.csv, best.yaml, pareto.png, ...)."),
    resume: Optional[Path] = typer.Option(None, "--resume", help="Continue the search stored in this --out directory."),
    address: Optional[str] = typer.Option(None, "--address", help="Join an existing Ray cluster (HOST:PORT) instead of a local one."),
    cpus_per_trial: float = typer.Option(1, "--cpus-per-trial"),
    gpus_per_trial: Optional[float] = typer.Option(None, "--gpus-per-trial", help="Fractions allowed (default: 1 when GPUs exist, else 0)."),
    dataset: Optional[Path] = typer.Option(None, "--dataset", help="For --objective train: class folders or an .npz (default: bundled digits)."),
    epochs: int = typer.Option(3, "--epochs", help="For --objective train."),
    proxy_batch: int = typer.Option(16, "--proxy-batch", help="Batch size of the training-free proxies."),
    batch_size: int = typer.Option(64, "--batch-size", help="For --objective train."),
    lr: float = typer.Option(2e-3, "--lr", help="For --objective train."),
    top_k: int = typer.Option(5, "--top-k", help="How many of the best to write as spec files."),
    no_baselines: bool = typer.Option(False, "--no-baselines", help="Do not score the bundled paper variants for the Pareto plot."),
    set_: Optional[List[str]] = SetOption,
) -> None:
    """Search hybrids of the papers' context mixers under a FLOP budget, on Ray Tune."""
    from archdsl.search import run_search
    from archdsl.search.display import LiveProgress

    try:
        with LiveProgress() as show:
            result = run_search(
                space, budget=budget, max_params=max_params, img_size=img_size, objective=objective, samples=samples,
                searcher=searcher, seed=seed, out=out_dir, resume=resume, address=address, cpus_per_trial=cpus_per_trial,
                gpus_per_trial=gpus_per_trial, dataset=dataset, epochs=epochs, proxy_batch=proxy_batch, batch_size=batch_size,
                lr=lr, top_k=top_k, baselines=not no_baselines, overrides=set_ or None, progress=show)
    except SpecError as error:
        fail(error)
    out.print(f"best: {result.best_spec}   leaderboard: {result.leaderboard}   plot: {result.pareto}")


@app.command(name="list")
def list_specs() -> None:
    """List the bundled specs (usable by name anywhere a spec path is accepted)."""
    from archdsl.loading import bundled_spec_names

    for name in bundled_spec_names():
        typer.echo(name)


if __name__ == "__main__":
    sys.exit(app())
