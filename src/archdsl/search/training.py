"""`--objective train`: short training on a labelled dataset, resumable at any epoch.

One recipe for every network: AdamW (weight decay 0.05), a one-cycle schedule over all the
epochs, whole batches only (a last batch of one image breaks batch norm on a 1x1 map), a fixed
stratified validation split (by the search's seed), and the validation accuracy after every
epoch (the final stage: the official test split where the dataset has one). After each epoch `keep(metrics, state)` is given the state to resume from (model,
optimizer, schedule, the data order's and torch's random generators, the epoch): the search
stores it as a Ray Tune checkpoint, and `train(..., restored=state)` continues from the epoch
after it, as if it had never stopped. A NaN or infinite loss, or running out of GPU memory,
ends the training with `TrainingFailed`, which names the epoch.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from archdsl.search.data import ImageData
from archdsl.search.objectives import Objective, ObjectiveFailed, TrialContext

WEIGHT_DECAY, WARMUP = 0.05, 0.15


class TrainingFailed(ObjectiveFailed):
    """The training broke down at `epoch` (NaN loss, out of memory)."""

    def __init__(self, message: str, epoch: int):
        super().__init__(message)
        self.epoch = epoch

    def __reduce__(self):  # Ray carries a trial's exception to the driver by pickling it
        return TrainingFailed, (str(self), self.epoch)


def evaluate(model: nn.Module, data: ImageData, index: np.ndarray, context: TrialContext) -> float:
    """Top-1 accuracy on the images `index`."""
    model.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(index), 256):
            images, labels = data.batch(index[start : start + 256], context.image_size, context.channels, context.device)
            correct += int((model(images).argmax(1) == labels).sum())
    return correct / max(1, len(index))


class ShortTraining(Objective):
    name = "train"
    uses_labels = True

    def __init__(self, epochs: int = 4, test_split: bool = False):
        self.epochs = epochs
        # the final stage trains on every training image and reports the official test split
        # (Fashion-MNIST's); the search itself never sees those images
        self.test_split = test_split

    def score(self, model, context):
        return self.train(model, context)

    def train(
        self,
        model: nn.Module,
        context: TrialContext,
        restored: dict | None = None,
        keep: Callable[[dict, dict], None] | None = None,
        seed: int | None = None,
    ) -> float:
        """Train `model` for `self.epochs` epochs (from the epoch after `restored`'s) and return the
        last validation accuracy. `seed` orders the data (default: the context's, which also
        fixes the validation split); `keep` defaults to reporting the metrics alone."""
        keep = keep or (lambda metrics, state: context.report(metrics))
        data = context.data
        train_index, val_index = data.train_test() if self.test_split and data.test is not None else data.split(context.seed)
        generator = torch.Generator().manual_seed(context.seed if seed is None else seed)
        optimizer = torch.optim.AdamW(model.parameters(), lr=context.lr, weight_decay=WEIGHT_DECAY)
        steps_per_epoch = max(1, len(train_index) // context.batch_size)
        schedule = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=context.lr, total_steps=self.epochs * steps_per_epoch, pct_start=WARMUP
        )
        done, accuracy = 0, 0.0
        if restored is not None:
            model.load_state_dict(restored["model"])
            optimizer.load_state_dict(restored["optimizer"])
            schedule.load_state_dict(restored["schedule"])
            generator.set_state(restored["order_rng"])
            torch.set_rng_state(restored["torch_rng"])
            done, accuracy = int(restored["epoch"]), float(restored["score"])
        for epoch in range(done + 1, self.epochs + 1):
            try:
                loss = self._epoch(model, context, train_index, optimizer, schedule, generator, steps_per_epoch, epoch)
                accuracy = evaluate(model, data, val_index, context)
            except torch.cuda.OutOfMemoryError as error:
                raise TrainingFailed(f"out of GPU memory at epoch {epoch} (batch {context.batch_size}): {error}", epoch) from None
            state = {
                "epoch": epoch,
                "score": accuracy,
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "schedule": schedule.state_dict(),
                "order_rng": generator.get_state(),
                "torch_rng": torch.get_rng_state(),
            }
            keep({"score": accuracy, "epoch": epoch, "train_loss": loss, "resumed_from_epoch": done}, state)
        return accuracy

    def _epoch(self, model, context, train_index, optimizer, schedule, generator, steps: int, epoch: int) -> float:
        model.train()
        order = train_index[torch.randperm(len(train_index), generator=generator).numpy()]
        for step in range(steps):
            images, labels = context.data.batch(
                order[step * context.batch_size : (step + 1) * context.batch_size],
                context.image_size,
                context.channels,
                context.device,
            )
            loss = F.cross_entropy(model(images), labels)
            if not torch.isfinite(loss):
                raise TrainingFailed(f"the training loss became {float(loss)} at epoch {epoch}, step {step + 1}", epoch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
        return float(loss.detach())
