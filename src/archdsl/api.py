"""The public Python API: load a spec, create a model, count its cost."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from torch import nn

from archdsl.compiler import compile_graph
from archdsl.cost import FlopCount, fvcore_counts
from archdsl.errors import Location, Problem, SpecError
from archdsl.features import FeatureNet, stage_feature_info
from archdsl.footprint import check_fits
from archdsl.graph import ArchGraph, lower
from archdsl.loading import load_data
from archdsl.network import ArchNet
from archdsl.schema import spec_models, validate
from archdsl.weights import is_archdsl_checkpoint, load_weights, read_checkpoint

Overrides = Iterable[str] | Mapping[str, Any] | None
ImageSize = int | tuple[int, int] | list[int] | str | None


def parse_image_size(value: ImageSize) -> int | list[int] | None:
    """224, (224, 288), "224" or "224x288" -> the `input.size` value of a spec."""
    if value is None or isinstance(value, int):
        return value
    if isinstance(value, str):
        parts = value.lower().replace(",", "x").split("x")
        try:
            numbers = [int(part) for part in parts]
        except ValueError:
            raise SpecError(
                Problem(f"image size {value!r} is not N or HxW (such as 224 or 224x288)", ("input", "size"), Location("img_size"))
            ) from None
        return numbers[0] if len(numbers) == 1 else numbers
    try:
        return [int(v) for v in value]
    except (TypeError, ValueError):
        raise SpecError(
            Problem(f"image size {value!r} is not N, HxW or (H, W)", ("input", "size"), Location("img_size"))
        ) from None


def _with_build_overrides(
    overrides: Overrides, img_size: ImageSize, num_classes: int | None, in_chans: int | None = None
) -> Overrides:
    extra: dict[str, Any] = {}
    if img_size is not None:
        extra["input.size"] = parse_image_size(img_size)
    if num_classes is not None:
        extra["head.classes"] = num_classes
    if in_chans is not None:
        extra["input.channels"] = in_chans
    if not extra:
        return overrides
    if overrides is None:
        return extra
    if isinstance(overrides, Mapping):
        return {**overrides, **extra}
    return list(overrides) + [f"{key}={value}" for key, value in extra.items()]


def load_spec(
    source,
    overrides: Overrides = None,
    *,
    img_size: ImageSize = None,
    num_classes: int | None = None,
    in_chans: int | None = None,
):
    """A spec file path, bundled name (`cloformer_xxs`), mapping or Spec -> validated Spec.

    `overrides`: `["stages.2.depth=8"]` or `{"stages.2.depth": 8}`, applied after `extends`;
    `img_size`, `num_classes` and `in_chans` override `input.size`, `head.classes`, `input.channels`."""
    overrides = _with_build_overrides(overrides, img_size, num_classes, in_chans)
    if isinstance(source, spec_models().Spec):
        if not overrides:
            return source
        # keep where every value was written, so later errors still point at the YAML
        return validate(load_data(source.model_dump(mode="json"), overrides, source._sources))
    if isinstance(source, Path):
        source = str(source)
    return validate(load_data(source, overrides))


def lower_spec(spec) -> ArchGraph:
    """Validated Spec -> ArchGraph with shapes and analytic FLOPs (no module is built)."""
    return lower(spec, spec._sources)


def _stored_checkpoint(source) -> dict | None:
    if isinstance(source, (str, Path)) and Path(source).suffix in (".pt", ".pth") and Path(source).is_file():
        stored = read_checkpoint(source)
        if not is_archdsl_checkpoint(stored):
            raise SpecError(
                Problem(
                    "this is a weights file, not an archdsl checkpoint: pass a spec as the model and this file as pretrained=",
                    (),
                    Location(str(source)),
                )
            )
        return stored
    return None


def create_model(
    source,
    pretrained: str | Path | None = None,
    num_classes: int | None = None,
    img_size: ImageSize = None,
    overrides: Overrides = None,
    in_chans: int | None = None,
    features_only: bool = False,
    out_indices: tuple[int, ...] = (0, 1, 2, 3),
    max_memory: str | int | None = None,
) -> ArchNet | FeatureNet:
    """Build a model from a spec (object, file, bundled name) or an archdsl checkpoint (.pt).

    `pretrained`: weights to load (an archdsl checkpoint or the authors' released format);
    the model is returned in eval mode when given.
    `num_classes`: the classifier's outputs; 0 builds no classifier (`forward` returns the pooled
    features). With weights, a checkpoint classifier that does not fit is left out and the new
    one initialised (logged as a warning on the "archdsl" logger), as for fine-tuning.
    `in_chans`: input channels; the stem's first conv is adapted from RGB weights.
    `features_only`: a `FeatureNet` (no head) whose forward returns the maps of the stages in
    `out_indices`, described by its `feature_info`.
    `max_memory`: a network whose parameters and activations (batch 1) exceed it (bytes or "8G";
    default: this machine's memory) is refused before it is built."""
    stored = _stored_checkpoint(source)
    spec = load_spec(
        stored["spec"] if stored is not None else source, overrides, img_size=img_size, num_classes=num_classes, in_chans=in_chans
    )
    graph = lower_spec(spec)
    if features_only:
        stage_feature_info(graph, out_indices)  # a wrong index is refused before anything is built
    check_fits(graph, max_memory)
    model = compile_graph(graph)
    new_classifier = num_classes is not None
    if stored is not None:
        load_weights(model, source, stored, new_classifier=new_classifier)
    if pretrained is not None:
        load_weights(model, pretrained, new_classifier=new_classifier)
    if stored is not None or pretrained is not None:
        model.eval()
    return FeatureNet(model, graph, out_indices) if features_only else model


def count_flops(model_or_spec, img_size: ImageSize = None) -> FlopCount:
    """FLOPs at batch 1: fvcore with the project's handles, fvcore raw, and the analytic count."""
    if isinstance(model_or_spec, nn.Module):
        model = model_or_spec
        spec = getattr(model, "spec", None)
        if spec is None:
            raise TypeError("count_flops needs an ArchNet (or a spec); this module has no spec")
        if img_size is not None:
            spec = load_spec(spec, img_size=img_size)
    else:
        spec = load_spec(model_or_spec, img_size=img_size)
        model = compile_graph(lower_spec(spec))
    analytic = lower_spec(spec).flops
    flops, raw = fvcore_counts(model, spec.image_size, spec.input.channels)
    return FlopCount(flops=flops, fvcore_raw=raw, analytic=analytic)
