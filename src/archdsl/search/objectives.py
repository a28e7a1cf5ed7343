"""What a search maximises: training-free proxies, parameter count, or short training.

* `naswot`: Mellor, Turner, Storkey, Crowley, "Neural Architecture Search without Training",
  ICML 2021. The binary activation codes of a minibatch at initialisation give a kernel
  K[i, j] = number of units on which inputs i and j agree (both active or both inactive); the
  score is log|det K|: networks that separate the inputs better score higher. Units are the
  outputs of every activation module (ReLU, GELU, SiLU/Swish, ...).
* `synflow`: Tanaka, Kunin, Yamins, Ganguli, "Pruning neural networks without any data by
  iteratively conserving synaptic flow", NeurIPS 2020, used as a NAS proxy by Abdelfattah,
  Mehrotra, Dudziak, Lane, "Zero-Cost Proxies for Lightweight NAS", ICLR 2021: with every weight
  replaced by its absolute value, norm layers removed (as their code does, `bn=False`) and an
  all-ones input in float64, the score is sum |theta * dR/dtheta| for R = sum of the outputs.
  Reported as its natural log (same ranking, readable numbers).
* `grad_norm`: Abdelfattah et al. 2021: the sum over conv and linear weights of the L2 norm of
  the cross-entropy loss gradient on one labelled minibatch.
* `params`: the parameter count: the honest baseline a proxy has to beat (under a FLOP
  budget, bigger tends to be better).
* `train`: short training on a labelled dataset, scored by validation accuracy after each
  epoch, so that ASHA can stop the weak early (training.py).

bench/proxy_tau.py measures each proxy's Kendall tau against short-training accuracy.
An objective is any object with `name`, `uses_labels`, `epochs` and `score(model, context)`,
so a user can pass their own to `run_search(objective=...)`.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from archdsl.search.data import ImageData


class ObjectiveFailed(RuntimeError):
    """The objective cannot score this architecture (NaN, no activations, ...)."""


@dataclass
class TrialContext:
    """What an objective gets besides the model."""

    device: torch.device
    image_size: tuple[int, int]
    channels: int
    data: ImageData | None
    seed: int = 0
    proxy_batch: int = 16
    epochs: int = 3
    batch_size: int = 64
    lr: float = 2e-3
    # called by multi-epoch objectives after each epoch with {"score": ..., ...}
    report: Callable[[dict], None] = field(default=lambda metrics: None)

    def minibatch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The same minibatch for every trial (fixed by the seed), so scores are comparable."""
        rng = np.random.default_rng(self.seed)
        index = np.sort(rng.choice(len(self.data.labels), size=min(self.proxy_batch, len(self.data.labels)), replace=False))
        return self.data.batch(index, self.image_size, self.channels, self.device)


class Objective:
    name: str = ""
    uses_labels: bool = False  # the scored model's head is resized to the dataset's classes
    uses_data: bool = True
    epochs: int = 1  # >1: reports after each epoch (ASHA can stop it)

    def score(self, model: nn.Module, context: TrialContext) -> float:
        raise NotImplementedError


def _activations(model: nn.Module) -> list[nn.Module]:
    from archdsl.blocks.layers import Swish

    skip = (nn.Softmax, nn.Softmin, nn.LogSoftmax, nn.MultiheadAttention, nn.Softmax2d)
    return [module for module in model.modules()
            if isinstance(module, Swish)
            or (type(module).__module__ == "torch.nn.modules.activation" and not isinstance(module, skip))]


class NASWOT(Objective):
    name = "naswot"

    def score(self, model, context):
        images, _ = context.minibatch()
        batch = images.shape[0]
        kernel = torch.zeros(batch, batch, dtype=torch.float64, device=context.device)

        def accumulate(module, inputs, output):
            codes = (output.detach().reshape(batch, -1) > 0).double()
            kernel.add_(codes @ codes.T + (1 - codes) @ (1 - codes).T)

        modules = _activations(model)
        if not modules:
            raise ObjectiveFailed("naswot reads activation modules (ReLU, GELU, SiLU...), and this network has none")
        handles = [module.register_forward_hook(accumulate) for module in modules]
        try:
            model.train()
            with torch.no_grad():
                model(images)
        finally:
            for handle in handles:
                handle.remove()
        return float(torch.linalg.slogdet(kernel.cpu())[1])


_NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm2d)


def _without_norms(model: nn.Module) -> nn.Module:
    for name, child in list(model.named_children()):
        if isinstance(child, _NORMS):
            setattr(model, name, nn.Identity())
        else:
            _without_norms(child)
    return model


class SynFlow(Objective):
    name = "synflow"
    uses_data = False

    def score(self, model, context):
        net = _without_norms(copy.deepcopy(model)).double().eval()
        with torch.no_grad():
            for parameter in net.parameters():
                parameter.abs_()
        net.zero_grad()
        ones = torch.ones(1, context.channels, *context.image_size, dtype=torch.float64, device=context.device)
        torch.sum(net(ones)).backward()
        total = sum(float((p.detach() * p.grad).abs().sum()) for p in net.parameters() if p.grad is not None)
        if not total > 0 or not math.isfinite(total):
            raise ObjectiveFailed(f"synflow is {total} (the signal vanished or overflowed even in float64)")
        return math.log(total)


class GradNorm(Objective):
    name = "grad_norm"
    uses_labels = True

    def score(self, model, context):
        images, labels = context.minibatch()
        model.train()
        model.zero_grad()
        F.cross_entropy(model(images), labels).backward()
        return float(sum(float(m.weight.grad.norm()) for m in model.modules()
                         if isinstance(m, (nn.Conv2d, nn.Linear)) and m.weight.grad is not None))


class Params(Objective):
    name = "params"
    uses_data = False

    def score(self, model, context):
        return float(sum(p.numel() for p in model.parameters() if p.requires_grad))


def short_training(epochs: int | None = None) -> Objective:
    """`train` lives in training.py, which builds on this module's `Objective`."""
    from archdsl.search.training import ShortTraining

    return ShortTraining(epochs or 4)


OBJECTIVES: dict[str, Callable[[], Objective]] = {
    "naswot": NASWOT,
    "synflow": SynFlow,
    "grad_norm": GradNorm,
    "params": Params,
    "train": short_training,
}
DEFAULT_OBJECTIVE = "naswot"


def make_objective(name_or_objective, epochs: int | None = None) -> Objective:
    from archdsl.search.errors import option_error

    if isinstance(name_or_objective, Objective) or hasattr(name_or_objective, "score"):
        return name_or_objective
    factory = OBJECTIVES.get(str(name_or_objective))
    if factory is None:
        raise option_error("--objective", name_or_objective, f"unknown objective; choose one of {', '.join(OBJECTIVES)}")
    if factory is short_training:
        return short_training(epochs)
    return factory()
