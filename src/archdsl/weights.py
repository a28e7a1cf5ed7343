"""Checkpoints: this project's own (spec + weights), and the authors' released ones.

An authors' checkpoint (a torch file, Paddle's `.pdparams` or a numpy `.npz`: see `READERS`) is
read into a name -> tensor mapping, renamed by the converter its family registers
(`@register_converter("cloformer")` in converters/cloformer.py), and loaded strictly: any
missing, unexpected or misshapen key rejects the whole file, listed.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from archdsl.checkpoint_formats import read_npz, read_pdparams
from archdsl.errors import CheckpointError, Location, Problem

Converter = Callable[[dict[str, torch.Tensor], nn.Module], dict[str, torch.Tensor]]
_CONVERTERS: dict[str, Converter] = {}
ARCHDSL_FORMAT = "archdsl-checkpoint-v1"
CLASSIFIER = "head.fc."  # every head module's classifier (blocks/heads.py)
_log = logging.getLogger("archdsl")


def rename_by_table(key: str, table) -> str | None:
    """Apply the first `(pattern, rename)` of `table` whose regex matches the whole key
    (`rename` takes the match); None if none does. Converters list their fixed names this way."""
    for pattern, rename in table:
        if match := re.fullmatch(pattern, key):
            return rename(match)
    return None


def index_of(modules: nn.ModuleList, kinds: type | tuple[type, ...]) -> int:
    """Position of the first module of `kinds` among a mixer's candidates or interactions (an
    interaction counts as the gate it wraps); -1 if there is none, so that the checkpoint keys
    meant for it are reported as unexpected."""
    for index, module in enumerate(modules):
        if isinstance(getattr(module, "module", module), kinds):
            return index
    return -1


def register_converter(family: str) -> Callable[[Converter], Converter]:
    def decorator(function: Converter) -> Converter:
        _CONVERTERS[family] = function
        return function

    return decorator


def converter_for(family: str) -> Converter | None:
    """The converter registered for `family` (the bundled ones are registered on first use)."""
    import archdsl.converters  # noqa: F401  (registers the bundled converters)

    return _CONVERTERS.get(family)


def _refuse(path: Path, message: str) -> CheckpointError:
    return CheckpointError(Problem(message, (), Location(str(path))))


def read_torch(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


# how each kind of file is read, by suffix; anything else is read as a torch file. Each reader
# returns the stored object and never executes code from the file.
READERS: dict[str, Callable[[Path], dict]] = {
    ".pdparams": read_pdparams,
    ".npz": read_npz,
}


def read_checkpoint(path: str | Path) -> dict:
    """The raw object stored in a checkpoint file (never executing pickled code)."""
    path = Path(path)
    if not path.is_file():
        raise _refuse(path, "checkpoint file not found")
    reader = READERS.get(path.suffix.lower(), read_torch)
    kind = "a torch checkpoint" if reader is read_torch else f"a {path.suffix} checkpoint"
    try:
        return reader(path)
    except Exception as error:  # noqa: BLE001  (readers raise several types for a bad or unsafe file)
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise _refuse(path, f"cannot read as {kind} (only tensors and plain containers are accepted): {first_line}") from None


def state_dict_of(stored: dict, path: Path) -> dict[str, torch.Tensor]:
    """The weights inside a checkpoint: plain, or nested under "model" / "state_dict"."""
    if isinstance(stored, dict) and stored.get("format") == ARCHDSL_FORMAT:
        return stored["state_dict"]
    for key in ("state_dict", "model"):
        if isinstance(stored, dict) and isinstance(stored.get(key), dict):
            return stored[key]
    if isinstance(stored, dict) and all(isinstance(v, torch.Tensor) for v in stored.values()):
        return stored
    raise _refuse(
        path, "no state_dict found: expected a mapping of names to tensors, or one nested under 'model' or 'state_dict'"
    )


def _mismatches(state: dict[str, torch.Tensor], model: nn.Module) -> list[str]:
    expected = model.state_dict()
    lines = []
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    misshapen = [key for key in state if key in expected and tuple(state[key].shape) != tuple(expected[key].shape)]
    for label, keys in (("missing", missing), ("unexpected", unexpected)):
        if keys:
            shown = ", ".join(keys[:12]) + (f", ... ({len(keys) - 12} more)" if len(keys) > 12 else "")
            lines.append(f"{len(keys)} {label}: {shown}")
    if misshapen:
        shown = ", ".join(f"{key} {list(state[key].shape)} (model: {list(expected[key].shape)})" for key in misshapen[:8])
        lines.append(
            f"{len(misshapen)} misshapen: {shown}" + (f", ... ({len(misshapen) - 8} more)" if len(misshapen) > 8 else "")
        )
    return lines


def adapt_input_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """RGB kernels of a first conv -> kernels for `in_channels` inputs, as timm's
    `adapt_input_conv`: summed for one channel (a grey image gives what its RGB copy gave);
    otherwise the RGB kernels repeated and scaled by 3 / in_channels."""
    weight = weight.float()
    if in_channels == 1:
        return weight.sum(dim=1, keepdim=True)
    repeats = -(-in_channels // 3)
    return weight.repeat(1, repeats, 1, 1)[:, :in_channels] * (3 / in_channels)


def _input_conv_key(model: nn.Module) -> str:
    """The weight of the stem's first convolution, the only layer that sees the image's channels."""
    name = next(name for name, module in model.stem.named_modules() if isinstance(module, nn.Conv2d))
    return f"stem.{name}.weight" if name else "stem.weight"


def _adapt_to_input_channels(state: dict[str, torch.Tensor], model: nn.Module, expected: dict) -> dict[str, torch.Tensor]:
    key = _input_conv_key(model)
    stored, wanted = state.get(key), expected[key]
    if stored is None or stored.ndim != 4 or stored.shape[1] != 3 or wanted.shape[1] == 3 or stored.shape[0] != wanted.shape[0]:
        return state
    _log.info("%s: converted from 3 to %d input channel(s)", key, wanted.shape[1])
    return {**state, key: adapt_input_conv(state[key], wanted.shape[1])}


def _fresh_classifier(state: dict[str, torch.Tensor], expected: dict, path: Path) -> dict[str, torch.Tensor]:
    """Drop the checkpoint's classifier where it does not fit the model's (another class count,
    or none), keeping the model's freshly initialised one, and say so in one line."""
    unfit = [
        key for key in state if key.startswith(CLASSIFIER) and (key not in expected or state[key].shape != expected[key].shape)
    ]
    fitting = {key: value for key, value in state.items() if key not in unfit}
    fresh = {key: value for key, value in expected.items() if key.startswith(CLASSIFIER) and key not in fitting}
    if not unfit and not fresh:
        return state
    found = ", ".join(f"{key} {list(state[key].shape)}" for key in unfit) or "none"
    own = (
        f"re-initialised as {', '.join(f'{key} {list(value.shape)}' for key, value in fresh.items())}"
        if fresh
        else "the model has none (headless)"
    )
    _log.warning("%s: classifier not loaded (checkpoint: %s); %s", path, found, own)
    return {**fitting, **fresh}


def load_weights(model: nn.Module, path: str | Path, stored: dict | None = None, *, new_classifier: bool = False) -> None:
    """Load a checkpoint file into `model` (converting an authors' checkpoint), strictly.

    `new_classifier`: the model was asked for its own class count, so a checkpoint classifier
    that does not fit it is left out (logged) instead of refusing the file. A stem conv for
    another number of input channels is adapted from RGB weights (`adapt_input_conv`)."""
    path = Path(path)
    stored = read_checkpoint(path) if stored is None else stored
    state = state_dict_of(stored, path)
    expected = model.state_dict()

    def names(keys) -> set[str]:
        return {key for key in keys if not (new_classifier and key.startswith(CLASSIFIER))}

    if names(state) != names(expected):
        family = getattr(getattr(model, "spec", None), "family", None)
        converter = converter_for(family) if family else None
        if converter is not None:
            state = converter(dict(state), model)
    state = _adapt_to_input_channels(state, model, expected)
    if new_classifier:
        state = _fresh_classifier(state, expected, path)
    problems = _mismatches(state, model)
    if problems:
        spec = getattr(model, "spec", None)
        name = getattr(spec, "name", None) or "this spec"
        raise _refuse(
            path, f"checkpoint does not fit {name}: " + "; ".join(problems) + ". Is it a checkpoint of another family or variant?"
        )
    converted = {key: value.to(expected[key].dtype) for key, value in state.items()}
    model.load_state_dict(converted, strict=True)


def save_checkpoint(model: nn.Module, path: str | Path) -> None:
    """Write the resolved spec and the weights; `create_model(path)` rebuilds the model from it.
    Written to a temporary file and renamed, so a failed save leaves nothing half-written."""
    path = Path(path)
    spec = model.spec
    payload = {"format": ARCHDSL_FORMAT, "spec": spec.model_dump(mode="json"), "state_dict": model.state_dict()}
    temporary = path.with_name(path.name + ".tmp")
    torch.save(payload, temporary)
    temporary.replace(path)


def is_archdsl_checkpoint(stored) -> bool:
    return isinstance(stored, dict) and stored.get("format") == ARCHDSL_FORMAT
