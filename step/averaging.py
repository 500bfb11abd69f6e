"""Averaged weights: `trainer.ema` (an exponential moving average of the weights, updated every
N optimizer steps) and `trainer.swa` (stochastic weight averaging: the mean of each epoch's
weights from `start_epoch` on, its own annealed learning rate, BatchNorm statistics recomputed
on the training data), both on `torch.optim.swa_utils`.

A callback the builder adds only when the config asks: a plain run imports none of it. The
averaged model is the one the run reports: validation runs it (the monitor, `model_best.pth`
and early stopping are about it) and a checkpoint's `state_dict` holds its weights, so
`test.py`, `predict.py`, export and fine-tuning use them as they are. The weights training
goes on from are the checkpoint's `averaging.training_state_dict`, beside the count of updates:
a resume, mid-epoch too, continues both exactly.
"""
import itertools
import math

import torch
from torch import nn
from torch.optim.swa_utils import AveragedModel, update_bn

from base.callbacks import Callback
from base.settings import EMA_OPTIONS, SWA_OPTIONS
from utils import distributed
from utils.seeding import get_rng_state, set_rng_state
from utils.weights import unwrap_model


def averaging_callbacks(settings) -> list[Callback]:
    """The callback `trainer.ema` or `trainer.swa` asks for (none when both are off)."""
    if settings.ema is not None:
        return [EMA(settings.ema)]
    if settings.swa is not None:
        return [SWA(settings.swa)]
    return []


class WeightAverage(Callback):
    """What EMA and SWA share: the averaged copy of the model, its count of updates, whether
    it is the model the run reports yet, and its place in checkpoints."""

    kind = ""  # the trainer key: "ema" or "swa"
    OPTIONS: dict = {}

    def __init__(self, options: dict):
        self.options = {key: options.get(key, default)
                        for key, (default, _) in self.OPTIONS.items()}
        self.averaged: AveragedModel | None = None
        self.updates = 0
        self.reporting = False  # validation and checkpoints use the averaged weights

    def averaged_model(self, trainer) -> AveragedModel:
        if self.averaged is None:
            self.averaged = self.build(unwrap_model(trainer.model))
        return self.averaged

    def build(self, model: nn.Module) -> AveragedModel:
        raise NotImplementedError

    def problem(self, trainer) -> str | None:
        """What makes the options useless for this run (seen once it is built), or None."""
        return None

    def update(self, trainer) -> None:
        self.averaged_model(trainer).update_parameters(unwrap_model(trainer.model))
        self.updates += 1
        if not self.reporting:
            self.report(trainer)

    def report(self, trainer) -> None:
        """From now on validation runs the averaged model (a copy outside DDP, like the model
        validation runs otherwise)."""
        self.reporting = True
        trainer.eval_model = self.averaged_model(trainer).module

    def state(self) -> dict:
        """Besides the weights: what continuing the average needs."""
        return {"updates": self.updates}

    def load_state(self, state: dict) -> None:
        self.updates = state["updates"]

    def on_save_checkpoint(self, trainer, state: dict) -> None:
        averaging = {"kind": self.kind, **self.state(), "training_state_dict": None}
        if self.reporting:
            averaging["training_state_dict"] = state["state_dict"]
            state["state_dict"] = self.averaged.module.state_dict()
        state["averaging"] = averaging

    def on_load_checkpoint(self, trainer, checkpoint: dict) -> None:
        averaging = checkpoint.get("averaging") or {}
        if averaging.get("kind") != self.kind:  # a run that did not average: start now
            if averaging:
                trainer.logger.warning(
                    "Warning: the checkpoint averaged its weights with trainer.%s, this run "
                    "with trainer.%s: the average starts again from the training weights",
                    averaging.get("kind"), self.kind)
            return
        self.load_state(averaging)
        if averaging["training_state_dict"] is not None:
            averaged = self.averaged_model(trainer)
            averaged.module.load_state_dict(checkpoint["state_dict"])
            averaged.n_averaged.fill_(self.updates)
            self.report(trainer)


class EMA(WeightAverage):
    """`trainer.ema`: after every `every` optimizer steps, each weight (and buffer: BatchNorm's
    statistics too) moves `1 - decay` of the way to the model's; with `warmup` the decay is
    min(decay, (1 + n) / (10 + n)) at the n-th update, so early averages follow the model."""

    kind = "ema"
    OPTIONS = EMA_OPTIONS

    def build(self, model: nn.Module) -> AveragedModel:
        return AveragedModel(model, multi_avg_fn=self._move, use_buffers=True)

    def decay(self) -> float:
        decay, n = self.options["decay"], self.updates
        return min(decay, (1 + n) / (10 + n)) if self.options["warmup"] else decay

    @torch.no_grad()
    def _move(self, averaged: list, current: list, _) -> None:
        if averaged[0].is_floating_point() or averaged[0].is_complex():
            torch._foreach_lerp_(averaged, current, 1 - self.decay())
        else:  # counters (BatchNorm's num_batches_tracked): the model's
            for mine, theirs in zip(averaged, current):
                mine.copy_(theirs)

    def on_step_end(self, trainer) -> None:
        if trainer.global_step % self.options["every"] == 0:
            self.update(trainer)

    def problem(self, trainer) -> str | None:
        steps = trainer.len_epoch * trainer.settings.epochs
        if self.options["every"] > steps:
            return (f"trainer.ema.every: {self.options['every']} is more than the run's {steps} "
                    f"optimizer steps ({trainer.settings.epochs} epochs of "
                    f"{trainer.len_epoch}): nothing would be averaged")
        return None


class SWA(WeightAverage):
    """`trainer.swa`: from `start_epoch` on, the average of the weights at each epoch's end,
    equally weighted (torch's AveragedModel), its BatchNorm statistics recomputed over the
    training data before validation (`bn_update`). With `lr`, the learning rate of every param
    group goes from its value when averaging starts to `lr` over `anneal_epochs` epochs (a
    cosine, as torch's SWALR), then stays there; the configured schedule no longer applies."""

    kind = "swa"
    OPTIONS = SWA_OPTIONS

    def __init__(self, options: dict):
        super().__init__(options)
        self.start_lrs: dict | None = None  # each optimizer's group rates when averaging began

    def build(self, model: nn.Module) -> AveragedModel:
        return AveragedModel(model)

    def state(self) -> dict:
        return {**super().state(), "start_lrs": self.start_lrs}

    def load_state(self, state: dict) -> None:
        super().load_state(state)
        self.start_lrs = state.get("start_lrs")

    def on_step_start(self, trainer) -> None:
        start, rate = self.options["start_epoch"], self.options["lr"]
        if rate is None or trainer.epoch < start:
            return
        if self.start_lrs is None:
            self.start_lrs = {name: [group["lr"] for group in optimizer.param_groups]
                              for name, optimizer in trainer.optimizers.items()}
        anneal = self.options["anneal_epochs"]
        progress = min(1.0, (trainer.epoch - start + 1) / anneal) if anneal else 1.0
        weight = (1 - math.cos(math.pi * progress)) / 2
        for name, optimizer in trainer.optimizers.items():
            for group, first in zip(optimizer.param_groups, self.start_lrs[name]):
                group["lr"] = weight * rate + (1 - weight) * first

    def on_train_epoch_end(self, trainer, epoch: int) -> None:
        if epoch < self.options["start_epoch"]:
            return
        self.update(trainer)
        if self.options["bn_update"]:
            recompute_batch_norm(trainer, self.averaged.module, epoch)


class _SeamForward(nn.Module):
    """`module` run the way the user's step runs the model (`predict_step`), for update_bn."""

    def __init__(self, trainer, module: nn.Module):
        super().__init__()
        self.trainer, self.module = trainer, module

    def forward(self, batch):
        model, self.trainer.model = self.trainer.model, self.module
        try:
            return self.trainer.predict_step(self.trainer.to_device(batch))
        finally:
            self.trainer.model = model


def recompute_batch_norm(trainer, module: nn.Module, epoch: int) -> None:
    """BatchNorm's statistics of `module` over one pass of epoch `epoch`'s training batches
    (torch's update_bn, each batch through the user's `predict_step`), the random generators
    left as they were; under torchrun the mean of every process's statistics."""
    if not any(isinstance(each, nn.modules.batchnorm._BatchNorm) for each in module.modules()):
        return
    loader, rng_state = trainer.data_loader, get_rng_state()
    if hasattr(loader, "set_epoch"):  # all of the epoch, also in a run resumed mid-epoch
        loader.set_epoch(epoch)
    # update_bn hands the model a batch's first element: each batch whole in a one-item list
    batches = ([batch] for batch in itertools.islice(loader, len(loader)))
    update_bn(batches, _SeamForward(trainer, module))
    set_rng_state(rng_state)
    if distributed.active():
        for layer in module.modules():
            if isinstance(layer, nn.modules.batchnorm._BatchNorm) and layer.track_running_stats:
                for buffer in (layer.running_mean, layer.running_var):
                    torch.distributed.all_reduce(buffer)
                    buffer /= distributed.world_size()
