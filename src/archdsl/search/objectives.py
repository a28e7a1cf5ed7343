"""What a search maximises: training-free proxies, size baselines, or short training.

Proxies (each scored at initialisation, on one fixed labelled or unlabelled minibatch):

* `naswot`: Mellor, Turner, Storkey, Crowley, "Neural Architecture Search without Training",
  ICML 2021. The binary activation codes of a minibatch give a kernel K[i, j] = number of
  units on which inputs i and j agree (both active or both inactive); the score is log|det K|.
  Units are the outputs of every activation module (ReLU, GELU, SiLU/Swish, ...).
* `naswot_per_unit`: NASWOT with its size taken out: log|det(K / U)|, U the number of units
  per image. Every entry of K is a count out of U, so log|det K| = B log U + log|det(K / U)|
  for a minibatch of B: the first term is the unit count alone (over a 64-trial search of
  the default space NASWOT's Kendall tau with U was +0.70, issue #9), the second is what the
  codes say about how well the network separates the inputs (K / U holds the fractions of
  agreeing units).
* `synflow`: Tanaka, Kunin, Yamins, Ganguli, "Pruning neural networks without any data by
  iteratively conserving synaptic flow", NeurIPS 2020, used as a NAS proxy by Abdelfattah,
  Mehrotra, Dudziak, Lane, "Zero-Cost Proxies for Lightweight NAS", ICLR 2021: with every weight
  replaced by its absolute value, norm layers removed (as their code does, `bn=False`) and an
  all-ones input, the score is sum |theta * dR/dtheta| for R = sum of the outputs,
  reported as its natural log. Computed rescaled: the signal is divided by its mean magnitude
  (a constant, not differentiated) after the stem, every downsample and every block, and the
  logs of those constants are added back. For a network that is positively homogeneous block
  by block (convolutions, ReLU, residual sums: synflow's own setting) this is exactly the log
  of the original score; attention's products of activations square the signal block after
  block, so the original overflows even float64 at 224 px, and this is its scale-free form.
  The rescaled signal fits float32, which it runs in (in float64 torch convolves depthwise
  layers group by group, 5x slower).
* `grad_norm`: Abdelfattah et al. 2021: the sum over conv and linear weights of the L2 norm of
  the cross-entropy loss gradient on one labelled minibatch.
* `zico`: Li, Yang, Bhardwaj, Marculescu, "ZiCo: Zero-shot NAS via Inverse Coefficient of
  Variation on Gradients", ICLR 2023 (shown to beat the parameter count on NAS-Bench-101,
  NATS-Bench and TransNAS-Bench-101; code github.com/SLDGroup/ZiCo). The cross-entropy
  gradient of every conv and linear weight on two labelled minibatches; per layer,
  log of the sum over its weights of mean|g| / std(g) across the minibatches (weights whose
  gradient does not vary are left out, as the released code does); summed over layers. The
  gradients are cleared between minibatches (the paper's per-batch definition).
* `meco`: Jiang, Wang, Bie, "MeCo: Zero-Shot NAS with One Data and Single Forward Pass via
  Minimum Eigenvalue of Correlation", NeurIPS 2023 (code github.com/HamsterMimi/MeCo). For every
  layer (module without submodules) whose output is a feature map [B, C, H, W], the Pearson
  correlation matrix of the C channels of the first image's map across its H*W positions, and
  its smallest eigenvalue; the score is the sum over layers. The released code hooks every
  module, containers too, which counts a container's map again after its last layer's; here
  each layer counts once. Undefined correlations (a constant channel) count 0, as in the
  released code; a map with C >= H*W has a singular correlation (smallest eigenvalue 0, not
  computed). The rest of the minibatch only feeds the batch statistics of the norms.

Baselines a proxy has to beat:

* `params`: the parameter count (under a FLOP budget, bigger tends to be better).
* `flops`: the analytic FLOP count of the lowered graph (`TrialContext.flops`).
* `activation_units`: the number of activation outputs per image, what NASWOT's kernel counts.

And `train`: short training (AdamW, one-cycle) on a labelled dataset, scored by validation
accuracy after each epoch, so that ASHA can stop the weak early (training.py).

Every proxy scores inside `scoring(model, seed)`: stochastic depth and dropout off (the paper
variants' specs set `drop_path_rate`, the sampled hybrids do not; a score must not depend on
it), the torch random state fixed by the seed and restored afterwards, so a score is a
function of the architecture, its initial weights and the seed only. The runner builds the
weights after `torch.manual_seed(seed)`, so the weights are fixed by the seed too.

bench/proxy_tau.py measures every objective's Kendall tau and Spearman rho against a trained
ground truth. An objective is any object with `name`, `uses_labels`, `uses_data`, `epochs`
and `score(model, context)`, so a user can pass their own to `run_search(objective=...)`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from archdsl.blocks.layers import Swish
from archdsl.network import ArchNet, DropPath
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
    # the analytic FLOPs of the lowered graph being scored (whoever lowered the spec sets it)
    flops: int | None = None
    # called by multi-epoch objectives after each epoch with {"score": ..., ...}
    report: Callable[[dict], None] = field(default=lambda metrics: None)

    def minibatch(self, draw: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """Minibatch number `draw` of a fixed order of the data (fixed by the seed): the same
        minibatches for every trial, so scores are comparable."""
        count = len(self.data.labels)
        order = np.random.default_rng(self.seed).permutation(count)
        size = min(self.proxy_batch, count)
        index = np.sort(np.take(order, np.arange(draw * size, (draw + 1) * size), mode="wrap"))
        return self.data.batch(index, self.image_size, self.channels, self.device)


class Objective:
    name: str = ""
    uses_labels: bool = False  # the scored model's head is resized to the dataset's classes
    uses_data: bool = True
    epochs: int = 1  # >1: reports after each epoch (ASHA can stop it)

    def score(self, model: nn.Module, context: TrialContext) -> float:
        raise NotImplementedError


# --- scoring every network the same way ---------------------------------------------------------------

# the layers whose forward draws random numbers in training mode
STOCHASTIC_LAYERS = (DropPath, nn.modules.dropout._DropoutNd)


@contextmanager
def scoring(model: nn.Module, seed: int, batch_statistics: bool = True) -> Iterator[nn.Module]:
    """Score `model` deterministically: norms in training mode (batch statistics, as the
    proxies' papers do) unless `batch_statistics` is False, every stochastic layer in
    evaluation mode (an identity), and the torch random state seeded, then restored with every
    module's mode on exit."""
    modes = [(module, module.training) for module in model.modules()]
    model.train(batch_statistics)
    for module in model.modules():
        if isinstance(module, STOCHASTIC_LAYERS):
            module.eval()
    devices = [torch.cuda.current_device()] if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    try:
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed)
            yield model
    finally:
        for module, training in modes:
            module.training = training


def _is_torch_activation(module: nn.Module) -> bool:
    """One of torch's activation modules, or a class derived from one (archdsl's GELU)."""
    return any(cls.__module__ == "torch.nn.modules.activation" for cls in type(module).__mro__)


def _activations(model: nn.Module) -> list[nn.Module]:
    skip = (nn.Softmax, nn.Softmin, nn.LogSoftmax, nn.MultiheadAttention, nn.Softmax2d)
    return [
        module
        for module in model.modules()
        if isinstance(module, Swish) or (_is_torch_activation(module) and not isinstance(module, skip))
    ]


def _required_activations(model: nn.Module) -> list[nn.Module]:
    modules = _activations(model)
    if not modules:
        raise ObjectiveFailed("this objective reads activation modules (ReLU, GELU, SiLU...), and this network has none")
    return modules


@contextmanager
def _hooked(modules: list[nn.Module], hook) -> Iterator[None]:
    handles = [module.register_forward_hook(hook) for module in modules]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def naswot_kernel(model: nn.Module, images: torch.Tensor) -> tuple[torch.Tensor, int]:
    """NASWOT's kernel over `images` (float64, on the CPU) and the number of activation units
    per image it counts."""
    batch = images.shape[0]
    kernel = torch.zeros(batch, batch, dtype=torch.float64, device=images.device)
    units = 0

    def accumulate(module, inputs, output):
        nonlocal units
        codes = (output.detach().reshape(batch, -1) > 0).double()
        kernel.add_(codes @ codes.T + (1 - codes) @ (1 - codes).T)
        units += codes.shape[1]

    with _hooked(_required_activations(model), accumulate), torch.no_grad():
        model(images)
    return kernel.cpu(), units


def _log_det(kernel: torch.Tensor, name: str) -> float:
    sign, log_det = torch.linalg.slogdet(kernel)
    if sign <= 0 or not math.isfinite(float(log_det)):
        raise ObjectiveFailed(f"{name}: the activation-code kernel is singular (two inputs share every code)")
    return float(log_det)


class NASWOT(Objective):
    name = "naswot"
    per_unit = False  # the kernel as counts (NASWOT), or as fractions of the units (naswot_per_unit)

    def score(self, model, context):
        images, _ = context.minibatch()
        with scoring(model, context.seed):
            kernel, units = naswot_kernel(model, images)
        return _log_det(kernel / units if self.per_unit else kernel, self.name)


class NASWOTPerUnit(NASWOT):
    name = "naswot_per_unit"
    per_unit = True


class ActivationUnits(Objective):
    name = "activation_units"
    uses_data = False

    def score(self, model, context):
        units = 0

        def count(module, inputs, output):
            nonlocal units
            units += output[0].numel()

        image = torch.zeros(1, context.channels, *context.image_size, device=context.device)
        # running statistics: one image gives no batch statistics on a 1x1 map
        with scoring(model, context.seed, batch_statistics=False), _hooked(_required_activations(model), count), torch.no_grad():
            model(image)
        return float(units)


_NORMS = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm, nn.InstanceNorm2d)


def _without_norms(model: nn.Module) -> nn.Module:
    for name, child in list(model.named_children()):
        if isinstance(child, _NORMS):
            setattr(model, name, nn.Identity())
        else:
            _without_norms(child)
    return model


def _chain(net: ArchNet) -> list[nn.Module]:
    """The modules the signal passes through one after another: stem, then each stage's
    downsample and blocks."""
    return [net.stem] + [module for stage in net.stages for module in (stage.downsample, *stage.blocks)]


class SynFlow(Objective):
    name = "synflow"
    uses_data = False

    def score(self, model: ArchNet, context):
        net = _without_norms(copy.deepcopy(model))
        with torch.no_grad():
            for parameter in net.parameters():
                parameter.abs_()
        log_scale = 0.0

        def rescale(module, inputs, output):
            nonlocal log_scale
            magnitude = output.detach().abs().mean()
            if not magnitude > 0 or not torch.isfinite(magnitude):
                raise ObjectiveFailed(f"synflow: the signal is {float(magnitude)} after {type(module).__name__}")
            log_scale += math.log(float(magnitude))
            return output / magnitude

        ones = torch.ones(1, context.channels, *context.image_size, device=context.device)
        with scoring(net, context.seed, batch_statistics=False), _hooked(_chain(net), rescale):
            torch.sum(net(ones)).backward()
        total = sum(float((p.detach() * p.grad).abs().sum()) for p in net.parameters() if p.grad is not None)
        if not total > 0 or not math.isfinite(total):
            raise ObjectiveFailed(f"synflow is {total} even rescaled block by block (the signal vanished)")
        return math.log(total) + log_scale


def _weighted_layers(model: nn.Module) -> list[nn.Module]:
    return [module for module in model.modules() if isinstance(module, (nn.Conv2d, nn.Linear))]


class GradNorm(Objective):
    name = "grad_norm"
    uses_labels = True

    def score(self, model, context):
        images, labels = context.minibatch()
        model.zero_grad()
        with scoring(model, context.seed):
            F.cross_entropy(model(images), labels).backward()
        return float(sum(float(m.weight.grad.norm()) for m in _weighted_layers(model) if m.weight.grad is not None))


class ZiCo(Objective):
    """Over two minibatches, the fewest that give a gradient variance: there mean|g| is
    (|g1| + |g2|) / 2 and the population std is |g1 - g2| / 2, so each weight's mean/std is
    (|g1| + |g2|) / |g1 - g2|, a third of the tensor passes of the general formula."""

    name = "zico"
    uses_labels = True

    def score(self, model, context):
        layers = _weighted_layers(model)
        gradients: list[list[torch.Tensor]] = [[] for _ in layers]
        with scoring(model, context.seed):
            for draw in range(2):
                images, labels = context.minibatch(draw)
                model.zero_grad(set_to_none=True)  # new gradient tensors: the stored ones stay as they are
                F.cross_entropy(model(images), labels).backward()
                for stored, layer in zip(gradients, layers):
                    if layer.weight.grad is not None:
                        stored.append(layer.weight.grad.detach())
        total = 0.0
        for stored in gradients:
            if not stored:
                continue
            first, second = stored
            difference = (first - second).abs_()
            # where, not a boolean mask: indexing by a mask costs a nonzero() and two gathers
            ratio = float(torch.where(difference > 0, first.abs().add_(second.abs()).div_(difference), 0.0).sum())
            if ratio > 0:
                total += math.log(ratio)
        if total == 0.0:
            raise ObjectiveFailed("zico: no layer's gradient varies between minibatches")
        return total


class MeCo(Objective):
    name = "meco"

    def score(self, model, context):
        images, _ = context.minibatch()
        smallest: list[float] = []

        def correlate(module, inputs, output):
            if not isinstance(output, torch.Tensor) or output.ndim != 4:
                return
            count, positions = output.shape[1], output.shape[2] * output.shape[3]
            if count < 2 or positions < 2:
                return
            if count >= positions:
                # C channels seen at H*W positions: the correlation has rank at most H*W - 1
                smallest.append(0.0)
                return
            channels = output[0].detach().double().reshape(count, positions)
            correlation = torch.nan_to_num(torch.corrcoef(channels), nan=0.0, posinf=0.0, neginf=0.0)
            smallest.append(float(torch.linalg.eigvalsh(correlation.cpu())[0]))

        # every layer once: containers pass their last layer's map on
        leaves = [module for module in model.modules() if next(module.children(), None) is None]
        with scoring(model, context.seed), _hooked(leaves, correlate), torch.no_grad():
            model(images)
        if not smallest:
            raise ObjectiveFailed("meco reads feature maps [B, C, H, W], and this network produced none")
        return float(sum(smallest))


class Params(Objective):
    name = "params"
    uses_data = False

    def score(self, model, context):
        return float(sum(p.numel() for p in model.parameters() if p.requires_grad))


class Flops(Objective):
    name = "flops"
    uses_data = False

    def score(self, model, context):
        if context.flops is None:
            raise ObjectiveFailed("the flops objective reads TrialContext.flops, the lowered graph's FLOPs; set it")
        return float(context.flops)


def short_training(epochs: int | None = None) -> Objective:
    """`train` lives in training.py, which builds on this module's `Objective`."""
    from archdsl.search.training import ShortTraining

    return ShortTraining(epochs or 4)


OBJECTIVES: dict[str, Callable[[], Objective]] = {
    "naswot": NASWOT,
    "naswot_per_unit": NASWOTPerUnit,
    "synflow": SynFlow,
    "grad_norm": GradNorm,
    "zico": ZiCo,
    "meco": MeCo,
    "params": Params,
    "flops": Flops,
    "activation_units": ActivationUnits,
    "train": short_training,
}


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
