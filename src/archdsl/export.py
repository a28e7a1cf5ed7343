"""Exporting a model to ONNX, TorchScript or a torch.export program, checked against eager.

`export_model` writes the artifact to a temporary file beside the target, loads it back the way
a user would (ONNX Runtime, `torch.jit.load`, `torch.export.load`), runs it on a seeded random
batch, and moves it into place only when its output is within `tolerance` of the eager model's.
With `dynamic_batch` the batch dimension is left free and the check runs at two batch sizes.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.onnx import symbolic_helper

from archdsl.errors import Location, Problem, SpecError

ONNX_OPSET = 17  # LayerNormalization is an ONNX op from 17 on; runtimes since 2022 read it
ONNX_INPUT, ONNX_OUTPUT = "image", "output"

Runner = Callable[[torch.Tensor], torch.Tensor]

# SG-Former-S at 224 with random weights: ONNX Runtime's significance maps are eager's to 7e-8,
# which reorders 14 of 3,136 near-tied tokens in the first sort and moves the logits 4e-2 to 5e-2
# (with the authors' weights, 5e-4); at 64 px, 1e-6
ONNX_TIES_HINT = (
    ". A model that sorts computed values, as SG-Former sorts its tokens by significance, can order near-equal ones "
    "differently under another runtime's rounding; raise the tolerance to accept the difference"
)


class ExportError(SpecError):
    """A model that cannot be exported where asked, or whose export does not compute what it does."""


@dataclass(frozen=True)
class ExportReport:
    format: str
    path: Path
    image_size: tuple[int, int]
    differences: dict[int, float]  # batch size -> max |exported - eager| on a seeded random batch

    @property
    def max_abs_difference(self) -> float:
        return max(self.differences.values())


# --- ONNX -----------------------------------------------------------------------------------------


@symbolic_helper.parse_args("v", "i", "i")
def _argsort_by_topk(g, values, dim: int, descending: int):
    length = g.op("Gather", g.op("Shape", values), g.op("Constant", value_t=torch.tensor([dim])))
    _, indices = g.op("TopK", values, length, axis_i=dim, largest_i=descending, sorted_i=1, outputs=2)
    return indices


def _argsort(g, values, *arguments):
    """`aten::argsort` as ONNX TopK over the whole axis. TopK puts equal values in index order,
    which is the order of torch's stable sort (SG-Former's significance sort relies on it). The
    exporter's own rule reads the `stable` overload's arguments one place off and refuses it
    ("Sort, Out parameter is not supported"). Both overloads end with (dim, descending)."""
    return _argsort_by_topk(g, values, *arguments[-2:])


def _export_onnx(model: nn.Module, example: torch.Tensor, path: Path, dynamic_batch: bool) -> Runner:
    # the extra's modules first, so that a missing one is reported before anything is written
    import onnx
    import onnxruntime

    # The TorchScript-based exporter (dynamo=False), although torch calls it legacy: it exports
    # all four families with one added rule (`_argsort`), in about a quarter of the time
    # (CloFormer-XXS at 64 px: 9 s against 41 s here). The torch.export-based one needs
    # onnxscript, and a translation of the stable sort too ("No ONNX function found for
    # aten.sort.stable").
    dynamic_axes = {ONNX_INPUT: {0: "batch"}, ONNX_OUTPUT: {0: "batch"}} if dynamic_batch else None
    torch.onnx.register_custom_op_symbolic("aten::argsort", _argsort, ONNX_OPSET)
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", "You are using the legacy TorchScript-based ONNX export", DeprecationWarning)
            torch.onnx.export(
                model,
                (example,),
                str(path),
                dynamo=False,
                opset_version=ONNX_OPSET,
                input_names=[ONNX_INPUT],
                output_names=[ONNX_OUTPUT],
                dynamic_axes=dynamic_axes,
            )
    except torch.onnx.OnnxExporterError as error:
        raise ExportError(Problem(f"the ONNX exporter cannot convert this model: {error}", (), Location(str(path)))) from None
    finally:
        torch.onnx.unregister_custom_op_symbolic("aten::argsort", ONNX_OPSET)
    onnx.checker.check_model(str(path))
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: its optimiser's notes on SG-Former's aggregation loops are not the user's
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return lambda x: torch.from_numpy(session.run([ONNX_OUTPUT], {ONNX_INPUT: x.numpy()})[0])


# --- TorchScript and torch.export -----------------------------------------------------------------


def _export_torchscript(model: nn.Module, example: torch.Tensor, path: Path, dynamic_batch: bool) -> Runner:
    # the trace records the shapes it reads from its input, so the batch stays free (the check
    # at a second batch size under `dynamic_batch` verifies it); export_model's check replaces
    # check_trace
    torch.jit.trace(model, example, check_trace=False).save(str(path))
    return torch.jit.load(str(path))


def _export_program(model: nn.Module, example: torch.Tensor, path: Path, dynamic_batch: bool) -> Runner:
    dynamic_shapes = ({0: torch.export.Dim("batch")},) if dynamic_batch else None
    torch.export.save(torch.export.export(model, (example,), dynamic_shapes=dynamic_shapes), str(path))
    return torch.export.load(str(path)).module()


EXPORTERS: dict[str, Callable[[nn.Module, torch.Tensor, Path, bool], Runner]] = {
    "onnx": _export_onnx,
    "torchscript": _export_torchscript,
    "exported-program": _export_program,
}
FORMATS = tuple(EXPORTERS)


# --- the export and its check ---------------------------------------------------------------------


def export_model(
    model: nn.Module,
    format: str,
    path: str | Path,
    image_size: tuple[int, int] | None = None,
    dynamic_batch: bool = False,
    tolerance: float = 1e-3,
) -> ExportReport:
    """Export `model` (an ArchNet) in `format` (one of FORMATS) to `path`, in eval mode, for
    inputs of `image_size` (default: the size it was built for), and check the written file
    against eager on a seeded random batch: of 1, or with `dynamic_batch` (a free batch
    dimension) of 2 and 1. Raises `ExportError`, leaving nothing at `path`, when the directory
    does not exist or the largest difference exceeds `tolerance`; an ONNX export needs the
    `export` extra (onnx, onnxruntime)."""
    if format not in EXPORTERS:
        raise ExportError(Problem(f"unknown export format {format!r}; formats: {', '.join(FORMATS)}"))
    path = Path(path)
    if not path.parent.is_dir():
        raise ExportError(Problem(f"cannot write here: the directory {path.parent} does not exist", (), Location(str(path))))
    if format == "exported-program" and path.suffix != ".pt2":
        raise ExportError(
            Problem(
                "an exported program is a .pt2 archive (torch.export.save and load expect that suffix): name it *.pt2",
                (),
                Location(str(path)),
            )
        )
    height, width = image_size or model.spec.image_size
    batches = (2, 1) if dynamic_batch else (1,)  # the first is the example the export traces
    generator = torch.Generator().manual_seed(0)
    inputs = {batch: torch.randn(batch, model.spec.input.channels, height, width, generator=generator) for batch in batches}
    temporary = path.with_name(f"{path.stem}.tmp{path.suffix}")  # the suffix kept: torch.export.save wants .pt2
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            run_exported = EXPORTERS[format](model, inputs[batches[0]], temporary, dynamic_batch)
            differences = {batch: (run_exported(x) - model(x)).abs().max().item() for batch, x in inputs.items()}
        failing = [(batch, difference) for batch, difference in differences.items() if not difference <= tolerance]  # NaN too
        if failing:
            batch, difference = failing[0]
            raise ExportError(
                Problem(
                    f"the {format} export differs from the eager model by {difference:.2e} at batch {batch}, more than the "
                    f"tolerance {tolerance:.0e}; nothing written" + (ONNX_TIES_HINT if format == "onnx" else ""),
                    (),
                    Location(str(path)),
                )
            )
        temporary.replace(path)
    finally:
        temporary.unlink(missing_ok=True)
        model.train(was_training)
    return ExportReport(format, path, (height, width), differences)
