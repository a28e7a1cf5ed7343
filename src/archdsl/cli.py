"""The `archdsl` command: a thin typer app over the library."""

from __future__ import annotations

import dataclasses
import json
import sys
from enum import Enum
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from archdsl.errors import Location, Problem, SpecError
from archdsl.search.settings import SearchSettings

out = Console()
err = Console(stderr=True)

# what each optional extra brings (pyproject.toml's [project.optional-dependencies]), by top-level module
EXTRAS = {"search": ("ray", "optuna", "matplotlib", "PIL"), "plot": ("matplotlib", "PIL"), "export": ("onnx", "onnxruntime")}
DEFAULTS = SearchSettings()  # `archdsl search`'s defaults are the settings' own (settings.py imports no Ray)
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


app = App(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    help="A declarative architecture language for conv/attention vision backbones.",
)

MaxMemoryOption = typer.Option(
    None,
    "--max-memory",
    help="Refuse a network whose parameters and batch-1 activations exceed this (e.g. 8G; default: this machine's memory).",
)


def report(error: Exception) -> None:
    err.print("[bold red]error:[/] ", end="")
    err.print(str(error), highlight=False, soft_wrap=True, markup=False)  # spec text may hold [brackets]


def fail(error: Exception) -> None:
    report(error)
    raise typer.Exit(code=2)


def fail_without_extra(extra: str, error: ModuleNotFoundError, command: str) -> None:
    """A module of an optional extra is missing: say which extra to install, exit 2."""
    if error.name is None or error.name.split(".")[0] not in EXTRAS[extra]:
        raise error
    fail(
        SpecError(
            Problem(
                f"`archdsl {command}` needs the {extra!r} extra, which is not installed (no module "
                f"{error.name.split('.')[0]!r}): pip install 'archdsl[{extra}]'"
            )
        )
    )


def _load_plugins(modules: list[str] | None) -> list[str] | None:
    from archdsl.plugins import load_plugins

    try:
        load_plugins(modules or ())
    except SpecError as error:
        fail(error)
    return modules


SpecArgument = typer.Argument(..., help="A spec file, or a bundled spec name such as cloformer_xxs.")
SetOption = typer.Option(
    None, "--set", metavar="PATH=VALUE", help="Override a value by dotted path, e.g. --set stages.2.depth=8 (repeatable)."
)
ImgSizeOption = typer.Option(None, "--img-size", metavar="N|HxW", help="Input size: N or HxW (e.g. 224 or 224x288).")
PluginOption = typer.Option(
    None,
    "--plugin",
    metavar="MODULE",
    callback=_load_plugins,
    help="Import MODULE first, to register its ops (repeatable; also ARCHDSL_PLUGINS and the archdsl.ops entry points).",
)


def _print_version(value: bool) -> None:
    if value:
        from archdsl import __version__

        typer.echo(f"archdsl {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True, help="Print the version and exit."),
) -> None:
    """A declarative architecture language for conv/attention vision backbones."""
    from archdsl.plugins import load_configured_plugins

    try:
        load_configured_plugins()
    except SpecError as error:
        fail(error)


def _human(number: float) -> str:
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(number) >= scale:
            return f"{number / scale:.3f}{unit}"
    return str(number)


@app.command()
def build(
    spec: str = SpecArgument,
    img_size: str | None = ImgSizeOption,
    num_classes: int | None = typer.Option(None, "--num-classes", help="Classifier outputs."),
    set_: list[str] | None = SetOption,
    pretrained: Path | None = typer.Option(None, "--pretrained", help="Weights to load (archdsl or the authors' checkpoint)."),
    output: Path | None = typer.Option(None, "-o", "--output", help="Write a checkpoint (resolved spec + weights)."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of the table (with fvcore's counts)."),
    fvcore: bool = typer.Option(
        False, "--fvcore", help="Also count FLOPs with fvcore on the built module (slower; always in --json)."
    ),
    plugin: list[str] | None = PluginOption,
    max_memory: str | None = MaxMemoryOption,
) -> None:
    """Validate, lower and compile a spec; print its per-stage summary (shapes, params, FLOPs)."""
    from archdsl.api import create_model, lower_spec
    from archdsl.summary import summarize
    from archdsl.weights import save_checkpoint

    try:
        model = create_model(
            spec, pretrained=pretrained, num_classes=num_classes, img_size=img_size, overrides=set_ or None, max_memory=max_memory
        )
        summary = summarize(model, lower_spec(model.spec), fvcore=fvcore or as_json)
        if output is not None:
            save_checkpoint(model, output)
    except SpecError as error:
        fail(error)
    if as_json:
        typer.echo(json.dumps(summary.as_dict()))
        return
    table = Table(title=f"{summary.name or spec} at {'x'.join(map(str, summary.img_size))}")
    for column in ("part", "blocks", "output", "params (total)", "FLOPs"):
        table.add_column(column, justify="left" if column in ("part", "output") else "right")
    for part in summary.stages:
        table.add_row(part.part, str(part.blocks or ""), part.shape_text(), f"{part.params:,}", _human(part.flops))
    table.add_section()
    table.add_row("total", "", "", f"{summary.params:,}", _human(summary.flops_analytic))
    out.print(table)
    counted = (
        f"FLOPs {_human(summary.flops)} (fvcore raw {_human(summary.flops_fvcore_raw)}, analytic {_human(summary.flops_analytic)})"
        if summary.flops is not None
        else f"FLOPs {_human(summary.flops_analytic)} (analytic; --fvcore for fvcore's count)"
    )
    out.print(f"params {summary.params:,} total, {summary.trainable_params:,} trainable   {counted}")
    if output is not None:
        out.print(f"wrote {output}")


@app.command()
def validate(
    spec: str = SpecArgument,
    img_size: str | None = ImgSizeOption,
    set_: list[str] | None = SetOption,
    plugin: list[str] | None = PluginOption,
    max_memory: str | None = MaxMemoryOption,
) -> None:
    """Check a spec (schema and graph: shapes, heads, channel shares, side channels, memory) without building it."""
    from archdsl.api import load_spec, lower_spec
    from archdsl.footprint import check_fits

    try:
        graph = lower_spec(load_spec(spec, set_ or None, img_size=img_size))
        check_fits(graph, max_memory)
    except SpecError as error:
        fail(error)
    out.print(
        f"ok: {graph.spec.name or spec} is valid at {'x'.join(map(str, graph.image_size))}, {_human(graph.flops)} FLOPs (analytic)"
    )


@app.command(name="graph")
def draw_graph(
    spec: str = SpecArgument,
    output: Path = typer.Option(..., "-o", "--output", help="The picture to write; its suffix picks the format: .svg or .png."),
    img_size: str | None = ImgSizeOption,
    set_: list[str] | None = SetOption,
    plugin: list[str] | None = PluginOption,
) -> None:
    """Draw the lowered graph: stages, blocks (identical ones collapsed as xN), candidates with their
    channel shares, fusion, interactions, FFN, and side channels as labelled edges (the 'plot' extra)."""
    from archdsl.api import load_spec, lower_spec
    from archdsl.drawing import picture_format, save_picture

    try:
        picture_format(output)  # before the spec is loaded: a wrong suffix is the quickest thing to report
        lowered = lower_spec(load_spec(spec, set_ or None, img_size=img_size))
        save_picture(lowered, output)
    except (SpecError, OSError) as error:
        fail(error)
    except ModuleNotFoundError as error:
        fail_without_extra("plot", error, "graph")
    typer.echo(f"wrote {output}")  # not rich: a path is no markup, and is not wrapped


@app.command()
def schema(
    space: bool = typer.Option(False, "--space", help="The schema of search spaces (choice nodes allowed anywhere)."),
    plugin: list[str] | None = PluginOption,
) -> None:
    """Print the language's JSON Schema (for YAML completion in editors)."""
    from archdsl.schema import json_schema

    typer.echo(json.dumps(json_schema(space=space), indent=2))


@app.command()
def nominations(
    spec: str = SpecArgument,
    image: Path = typer.Argument(..., help="An image file (resized to the model's input size)."),
    pretrained: Path | None = typer.Option(None, "--pretrained", help="Weights (archdsl or the authors' checkpoint)."),
    output: Path = typer.Option(Path("nominations.png"), "-o", "--output", help="The PNG to write."),
    img_size: str | None = ImgSizeOption,
    plugin: list[str] | None = PluginOption,
) -> None:
    """Save each nominating layer's per-pixel choice for IMAGE as a PNG (NomMer: red/green/blue = CNN/local/global)."""
    from archdsl.api import create_model
    from archdsl.nominations import save_nomination_maps

    try:
        model = create_model(spec, pretrained=pretrained, img_size=img_size).eval()
        if not image.is_file():
            raise SpecError(Problem("image file not found", (), Location(str(image))))
        maps = save_nomination_maps(model, image, output)
    except (SpecError, ValueError) as error:
        fail(error)
    except ModuleNotFoundError as error:
        fail_without_extra("plot", error, "nominations")
    for name, weights in maps.items():
        counts = weights[0].argmax(0).flatten().bincount(minlength=weights.shape[1]).tolist()
        out.print(f"{name}: pixels per candidate {counts}")
    out.print(f"wrote {output}")


class ExportFormat(str, Enum):
    # archdsl.export.FORMATS, written here: importing that module imports torch for every --help
    onnx = "onnx"
    torchscript = "torchscript"
    exported_program = "exported-program"


@app.command()
def export(
    spec: str = SpecArgument,
    format: ExportFormat = typer.Option(
        ...,
        "--format",
        help="onnx (checked with ONNX Runtime; the 'export' extra) | torchscript (torch.jit.trace) | "
        "exported-program (torch.export, a .pt2 archive).",
    ),
    output: Path = typer.Option(..., "-o", "--output", help="The file to write."),
    pretrained: Path | None = typer.Option(None, "--pretrained", help="Weights to load (archdsl or the authors' checkpoint)."),
    img_size: str | None = ImgSizeOption,
    dynamic_batch: bool = typer.Option(
        False, "--dynamic-batch", help="Leave the batch dimension free (checked at batch 2 and 1); otherwise batch 1."
    ),
    tolerance: float = typer.Option(
        1e-3, "--tolerance", help="The largest |exported - eager| output difference accepted; above it nothing is written."
    ),
    num_classes: int | None = typer.Option(None, "--num-classes", help="Classifier outputs."),
    set_: list[str] | None = SetOption,
    plugin: list[str] | None = PluginOption,
) -> None:
    """Export a model to ONNX, TorchScript or a torch.export program, for the spec's input size;
    the written file is run against the eager model on a random batch first, and the largest
    difference printed."""
    from archdsl.api import create_model
    from archdsl.export import export_model

    try:
        model = create_model(spec, pretrained=pretrained, num_classes=num_classes, img_size=img_size, overrides=set_ or None)
        report = export_model(model, format.value, output, dynamic_batch=dynamic_batch, tolerance=tolerance)
    except SpecError as error:
        fail(error)
    except ModuleNotFoundError as error:
        fail_without_extra("export", error, f"export --format {format.value}")
    differences = ", ".join(f"{difference:.2e} at batch {batch}" for batch, difference in report.differences.items())
    out.print(f"{report.format} at {'x'.join(map(str, report.image_size))}: max |exported - eager| {differences}")
    out.print(f"wrote {report.path}")


@app.command()
def search(
    context: typer.Context,
    budget: str | None = typer.Option(
        DEFAULTS.budget,
        "--budget",
        help="FLOP budget such as 2GFLOPs@224, 2GFLOPs, 600M or 2GMACs, counted "
        "at the @ size (default: the space's input size) whatever --img-size is; one "
        "multiply-add counts as one FLOP (default: the space's budget).",
    ),
    space: str | None = typer.Option(
        DEFAULTS.space, "--space", help="A search space file or bundled name (default: the bundled hybrid space)."
    ),
    max_params: str | None = typer.Option(DEFAULTS.max_params, "--max-params", help="Parameter budget, such as 10M."),
    img_size: int | None = typer.Option(
        DEFAULTS.img_size,
        "--img-size",
        help="Input side the trials train / are scored at (default: the space's); the budget stays at its own size (@N).",
    ),
    objective: str = typer.Option(
        DEFAULTS.objective,
        "--objective",
        help="naswot | naswot_per_unit | synflow | grad_norm | zico | meco | params | flops | activation_units | train. "
        "No training-free objective ranks trained accuracy better than FLOPs (docs/search.md: naswot, the default, "
        "tau +0.08 against FLOPs' +0.06 on 32 trained networks); for a ranking to trust use train.",
    ),
    objectives: str | None = typer.Option(
        None,
        "--objectives",
        help="A multi-objective search (NSGA-II): the score, then costs to minimise, e.g. accuracy,flops or accuracy,latency.",
    ),
    samples: int = typer.Option(DEFAULTS.samples, "--samples", help="Trials to run."),
    searcher: str = typer.Option(DEFAULTS.searcher, "--searcher", help="tpe (Optuna) | evolution (NSGA-II) | random."),
    seed: int = typer.Option(DEFAULTS.seed, "--seed", help="Seed for reproducible sampling."),
    out_dir: Path = typer.Option(
        Path("runs/search"), "--out", help="Where results go (leaderboard.csv, best.yaml, pareto.png, ...)."
    ),
    resume: Path | None = typer.Option(None, "--resume", help="Continue the search stored in this --out directory."),
    address: str | None = typer.Option(
        None, "--address", help="Join an existing Ray cluster (HOST:PORT) instead of a local one."
    ),
    cpus_per_trial: float = typer.Option(DEFAULTS.cpus_per_trial, "--cpus-per-trial"),
    gpus_per_trial: float | None = typer.Option(
        DEFAULTS.gpus_per_trial, "--gpus-per-trial", help="Fractions allowed (default: 1 when GPUs exist, else 0)."
    ),
    dataset: str | None = typer.Option(
        DEFAULTS.dataset,
        "--dataset",
        help="For training and labelled proxies: fashion-mnist (Debian's "
        "dataset-fashion-mnist), a folder of IDX files or of class "
        "folders, an .npz (default: the bundled 8x8 digits).",
    ),
    train_images: int | None = typer.Option(
        DEFAULTS.train_images,
        "--train-images",
        help="Train (search and final stage) on this many of the training images, the same number "
        "of each class; the official test split stays whole (default: all).",
    ),
    epochs: int = typer.Option(
        DEFAULTS.epochs, "--epochs", help="For --objective train: the most epochs a trial trains (ASHA's last rung, >= 4)."
    ),
    proxy_batch: int = typer.Option(DEFAULTS.proxy_batch, "--proxy-batch", help="Batch size of the training-free proxies."),
    batch_size: int = typer.Option(DEFAULTS.batch_size, "--batch-size", help="For --objective train."),
    lr: float = typer.Option(DEFAULTS.lr, "--lr", help="For --objective train."),
    prefilter: str | None = typer.Option(
        DEFAULTS.prefilter,
        "--prefilter",
        help="For --objective train: rank ceil(samples / keep) draws with this proxy and train the best --samples.",
    ),
    keep: float = typer.Option(
        DEFAULTS.keep, "--keep", help="The fraction of the pre-filtered draws that is trained, in (0, 1]."
    ),
    final_top: int = typer.Option(
        DEFAULTS.final_top,
        "--final-top",
        help="For --objective train: retrain this many of the best trials and the paper "
        "variants with several seeds (0: no final stage).",
    ),
    final_seeds: int = typer.Option(DEFAULTS.final_seeds, "--final-seeds", help="Seeds per architecture in the final stage."),
    final_random: int = typer.Option(
        DEFAULTS.final_random,
        "--final-random",
        help="Hybrids drawn at random under the budget, retrained in the final stage as a control.",
    ),
    final_epochs: int | None = typer.Option(
        DEFAULTS.final_epochs, "--final-epochs", help="Epochs of the final stage (default: --epochs)."
    ),
    top_k: int = typer.Option(DEFAULTS.top_k, "--top-k", help="How many of the best to write as spec files."),
    no_baselines: bool = typer.Option(
        False, "--no-baselines", help="Do not score the bundled paper variants for the Pareto plot."
    ),
    set_: list[str] | None = SetOption,
    plugin: list[str] | None = PluginOption,
) -> None:
    """Search hybrids of the papers' context mixers under a FLOP budget, on Ray Tune (the 'search' extra)."""
    try:
        from archdsl.search import run_search
        from archdsl.search.display import LiveProgress
    except ModuleNotFoundError as error:
        fail_without_extra("search", error, "search")

    # every option named like a SearchSettings field is that field; the rest are the CLI's own
    fields = {field.name for field in dataclasses.fields(SearchSettings)}
    given = {name: value for name, value in context.params.items() if name in fields}
    given.update(overrides=list(set_ or []), objectives=objectives.split(",") if objectives else [], baselines=not no_baselines)
    settings = SearchSettings(**given)
    try:
        with LiveProgress() as show:
            result = run_search(settings=settings, out=out_dir, resume=resume, address=address, progress=show)
    except SpecError as error:
        fail(error)
    out.print(f"best: {result.best_spec}   leaderboard: {result.leaderboard}   plot: {result.pareto}")


@app.command(name="list")
def list_specs(
    contains: str | None = typer.Argument(None, help="Only the names that contain this, such as mixformer."),
    plugin: list[str] | None = PluginOption,
) -> None:
    """List the bundled specs, the papers' variants and the gallery's (family, parameters,
    analytic FLOPs at the spec's input size), and search spaces; each is usable by name anywhere a spec (or --space) path is accepted."""
    from archdsl.api import load_spec, lower_spec
    from archdsl.cost import graph_params
    from archdsl.loading import bundled_space_descriptions, bundled_spec_names, gallery_spec_names

    names = [name for name in bundled_spec_names() + gallery_spec_names() if contains is None or contains in name]
    table = Table(title="bundled specs: the papers' variants, then the gallery")
    # a name is what the user types next, so it is never cut short (gallery/hybrid_... run long);
    # on a narrow terminal the other columns' headers wrap instead
    table.add_column("name", min_width=max(map(len, names), default=4), no_wrap=True)
    for column in ("family", "input", "params (total)", "GFLOPs (analytic)"):
        table.add_column(column, justify="right" if column.startswith(("params", "GFLOPs")) else "left")
    for name in names:
        graph = lower_spec(load_spec(name))
        table.add_row(
            name,
            graph.spec.family or "",
            "x".join(map(str, graph.image_size)),
            f"{graph_params(graph).total / 1e6:.2f} M",
            f"{graph.flops / 1e9:.3f}",
        )
    out.print(table)
    out.print("search spaces (archdsl search --space NAME):")
    for name, description in bundled_space_descriptions().items():
        if contains is None or contains in name:
            typer.echo(f"  {name}: {description}")


if __name__ == "__main__":
    sys.exit(app())
