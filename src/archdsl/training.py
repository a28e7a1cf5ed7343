"""Training hooks, timm-style: which parameters skip weight decay, and layer-wise groups for
learning-rate decay.

* Weight decay skips every parameter of at most one dimension (norm scales and shifts, biases:
  what timm's optimizer factory and the four authors' optimizers skip) and the tensors a module
  declares with `WithoutWeightDecay` (position embeddings, relative position tables, class
  tokens), by name.
* Layers for LR decay follow the network's order: the stem is layer 0, then each block (a
  stage's downsample goes with its first block), then the head; `coarse` groups by stage.
"""

from __future__ import annotations

from typing import ClassVar

from torch import nn


class WithoutWeightDecay:
    """Mixed into a module whose listed parameters are embeddings or tables, not weights to decay."""

    without_weight_decay: ClassVar[tuple[str, ...]] = ()


def no_weight_decay(model: nn.Module) -> set[str]:
    names = {name for name, parameter in model.named_parameters() if parameter.ndim <= 1}
    for prefix, module in model.named_modules():
        if isinstance(module, WithoutWeightDecay):
            names |= {
                f"{prefix}.{name}" if prefix else name
                for name in module.without_weight_decay
                if isinstance(getattr(module, name), nn.Parameter)
            }
    return names


def group_matcher(coarse: bool = False) -> dict:
    """timm's `group_matcher` format: regexes for the stem and the blocks (a match's numbers order
    the groups; `(0,)` puts a downsample before its stage's blocks)."""
    if coarse:
        return {"stem": r"^stem", "blocks": r"^stages\.(\d+)"}
    return {"stem": r"^stem", "blocks": [(r"^stages\.(\d+)\.downsample", (0,)), (r"^stages\.(\d+)\.blocks\.(\d+)", None)]}


def layer_ids(model: nn.Module, coarse: bool = False) -> dict[str, int]:
    """Parameter name -> layer: 0 the stem, then each block (`coarse`: each stage) in order, a
    stage's downsample with its first block; the head last."""
    ids = {f"stem.{name}": 0 for name, _ in model.stem.named_parameters()}
    layer = 0
    for s, stage in enumerate(model.stages):
        first = layer + 1
        ids |= {f"stages.{s}.downsample.{name}": first for name, _ in stage.downsample.named_parameters()}
        for b, block in enumerate(stage.blocks):
            ids |= {f"stages.{s}.blocks.{b}.{name}": first if coarse else first + b for name, _ in block.named_parameters()}
        layer = first if coarse else first + len(stage.blocks) - 1
    return ids | {f"head.{name}": layer + 1 for name, _ in model.head.named_parameters()}


def param_groups(model: nn.Module, lr: float, weight_decay: float, layer_decay: float = 1.0, coarse: bool = False) -> list[dict]:
    """Optimizer parameter groups of the trainable parameters: no weight decay for
    `no_weight_decay(model)`, and each layer's learning rate `lr * layer_decay ** (depth - layer)`
    (the head at `lr`), as timm's `param_groups_layer_decay`. `torch.optim.AdamW(param_groups(...))`."""
    ids = layer_ids(model, coarse)
    depth = max(ids.values())
    skip = no_weight_decay(model)
    groups: dict[tuple[int, bool], dict] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        decays = name not in skip
        key = (ids[name], decays)
        if key not in groups:
            groups[key] = {
                "params": [],
                "names": [],
                "layer": ids[name],
                "weight_decay": weight_decay if decays else 0.0,
                "lr": lr * layer_decay ** (depth - ids[name]),
            }
        groups[key]["params"].append(parameter)
        groups[key]["names"].append(name)
    return [groups[key] for key in sorted(groups)]
