"""NomMer's nomination maps (the paper's Fig. 5 and supplement Fig. 1-2): observed with
`nomination_maps(model, x)`, drawn beside the input image as a PNG by
`save_nomination_maps(model, image, path)` (what `archdsl nominations` runs)."""

from __future__ import annotations

import re
from collections import OrderedDict
from functools import partial
from pathlib import Path

import torch
from torch import nn

from archdsl.blocks.nommer import NominationModule

# candidate k of a nomination is drawn in colour k: NomMer's specs list the CNN, local and
# global candidates in this order, the paper's red, green and blue
NOMINATION_COLORS = ((1.0, 0.0, 0.0), (0.0, 0.8, 0.0), (0.0, 0.0, 1.0), (1.0, 0.85, 0.0), (1.0, 0.0, 1.0), (0.0, 0.9, 0.9))


def nomination_maps(model: nn.Module, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
    """Run `model` once on `x` (no gradients, in its current mode) and return every
    nomination's per-pixel choice, in execution order: block name (`stages.0.blocks.1`) ->
    (B, K, H, W) float weights, channel k for candidate k. In eval mode these are 0/1 (one 1
    per pixel; several on an exact tie); in training mode the Gumbel-softmax samples.
    `.argmax(1)` gives the chosen candidate's index. Forward hooks; nothing about the model
    changes. Maps a mixer padded are cropped to the block's input size."""
    maps: OrderedDict[str, torch.Tensor] = OrderedDict()
    sizes: dict[str, tuple[int, int]] = {}
    handles = []

    def record_size(name, module, args):
        sizes[name] = tuple(args[0].shape[-2:])

    def record_choice(name, module, args, output):
        height, width = sizes[name]
        maps[name] = output.permute(0, 3, 1, 2)[:, :, :height, :width].detach()

    for name, module in model.named_modules():
        if isinstance(module, NominationModule) and name.endswith(".mixer.fusion"):
            block = name[: -len(".mixer.fusion")]
            handles.append(model.get_submodule(f"{block}.mixer").register_forward_pre_hook(partial(record_size, block)))
            handles.append(module.choice.register_forward_hook(partial(record_choice, block)))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return maps


def layer_label(block: str) -> str:
    """`stages.0.blocks.1` -> `Layer 1_2`, the paper's name for that layer."""
    stage, index = (int(n) for n in re.fullmatch(r"stages\.(\d+)\.blocks\.(\d+)", block).groups())
    return f"Layer {stage + 1}_{index + 1}"


def colour_map(weights: torch.Tensor, colors=NOMINATION_COLORS) -> torch.Tensor:
    """(K, H, W) candidate weights -> (H, W, 3) RGB in [0, 1]: candidate k in colour k (an
    exact tie mixes the tied colours)."""
    palette = torch.tensor(colors[: weights.shape[0]], dtype=torch.float32)
    if palette.shape[0] < weights.shape[0]:
        raise ValueError(f"{weights.shape[0]} candidates but only {palette.shape[0]} colours; pass more colors=")
    return torch.einsum("khw,kc->hwc", weights.float().cpu(), palette).clamp(0, 1)


IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def load_image(path: str | Path, size: tuple[int, int]) -> torch.Tensor:
    """An image file -> a (1, 3, H, W) ImageNet-normalised tensor: shorter side resized to
    size/0.875, centre crop (the usual evaluation transform)."""
    import numpy as np
    from PIL import Image

    image = Image.open(path).convert("RGB")
    scale = max(size) / 0.875 / min(image.size)
    image = image.resize((max(size[1], round(image.size[0] * scale)), max(size[0], round(image.size[1] * scale))), Image.BICUBIC)
    left, top = (image.size[0] - size[1]) // 2, (image.size[1] - size[0]) // 2
    image = image.crop((left, top, left + size[1], top + size[0]))
    tensor = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    return ((tensor - mean) / std).unsqueeze(0)


def save_nomination_maps(model: nn.Module, image, path: str | Path, colors=NOMINATION_COLORS) -> OrderedDict[str, torch.Tensor]:
    """Write the input image and each nominating layer's map side by side as a PNG at `path`
    (candidate k in colour k: for NomMer red = CNN, green = local, blue = global, as in the
    paper) and return the maps (see `nomination_maps`).

    `image`: an image file (resized and normalised for the model's input size, see
    `load_image`) or a preprocessed (1, 3, H, W) tensor. The model runs in its current mode;
    call `model.eval()` first for the deterministic argmax maps."""
    # a bare Figure (no pyplot): draws off-screen without touching the caller's matplotlib backend
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    if isinstance(image, (str, Path)):
        spec = getattr(model, "spec", None)
        size = spec.image_size if spec is not None else (224, 224)
        image = load_image(image, size)
    if image.ndim == 3:
        image = image.unsqueeze(0)
    maps = nomination_maps(model, image)
    if not maps:
        raise ValueError("this model has no nomination fusion: there are no nomination maps to draw")
    mean, std = torch.tensor(IMAGENET_MEAN)[:, None, None], torch.tensor(IMAGENET_STD)[:, None, None]
    shown = (image[0].detach().float().cpu() * std + mean).clamp(0, 1).permute(1, 2, 0)

    panels = [("input", shown)] + [(layer_label(name), colour_map(weights[0], colors)) for name, weights in maps.items()]
    columns = min(len(panels), 5)
    rows = -(-len(panels) // columns)
    figure = Figure(figsize=(2.4 * columns, 2.6 * rows + 0.4))
    axes = figure.subplots(rows, columns, squeeze=False)
    for axis in axes.flat:
        axis.axis("off")
    for axis, (title, picture) in zip(axes.flat, panels):
        axis.imshow(picture.numpy(), interpolation="nearest")
        axis.set_title(title, fontsize=9)
    names = _candidate_names(model, next(iter(maps)))
    figure.legend(
        handles=[Patch(color=colors[k], label=name) for k, name in enumerate(names)],
        loc="lower center",
        ncol=len(names),
        fontsize=8,
        frameon=False,
    )
    figure.tight_layout(rect=(0, 0.06, 1, 1))
    figure.savefig(path, dpi=100)
    return maps


def _candidate_names(model: nn.Module, block: str) -> list[str]:
    spec = getattr(model, "spec", None)
    mixer = model.get_submodule(f"{block}.mixer")
    if spec is None:
        return [f"candidate {k}" for k in range(len(mixer.candidates))]
    stage, index = (int(n) for n in re.fullmatch(r"stages\.(\d+)\.blocks\.(\d+)", block).groups())
    return [candidate.op for candidate in spec.block_at(stage, index).mixer.candidates]
