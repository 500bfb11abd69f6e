"""The concrete trainer: supervised learning over (data, target) batches."""
import itertools
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from base.base_trainer import BaseTrainer, metric_name
from trainer.evaluation import check_first_batch, evaluate, to_device, track_batch
from utils.util import MetricTracker, inf_loop


class Trainer(BaseTrainer):
    """Trains `model` on `data_loader`, validating on `valid_data_loader` after each epoch.

    With `len_epoch` (or `trainer.len_epoch`) an epoch is exactly that many optimizer steps,
    cycling through the data as often as needed; otherwise it is one pass over the data.
    """

    def __init__(self, model: nn.Module, criterion: Callable, metric_fns: Sequence[Callable],
                 optimizer: torch.optim.Optimizer, config, device: torch.device,
                 data_loader: DataLoader, valid_data_loader: DataLoader | None = None,
                 lr_scheduler=None, len_epoch: int | None = None):
        super().__init__(model, criterion, metric_fns, optimizer, config, lr_scheduler)
        self.device = device
        self.data_loader = data_loader
        self.valid_data_loader = valid_data_loader
        self.len_epoch = len_epoch or self.settings.len_epoch or len(data_loader)
        self.iteration_based = bool(len_epoch or self.settings.len_epoch)
        self.metric_names = [metric_name(fn) for fn in self.metric_fns]
        self.train_metrics = MetricTracker("loss", *self.metric_names)
        self.check_monitor()

    def expected_log_keys(self) -> list[str]:
        keys = super().expected_log_keys()
        if self.valid_data_loader is not None:
            keys += [f"val_{key}" for key in keys]
        return keys

    def check_first_batch(self) -> None:
        """Fail now, with one clear line, if a batch does not fit model, loss and metrics."""
        loader = self.valid_data_loader if self.valid_data_loader is not None else self.data_loader
        check_first_batch(self.model, loader, self.criterion, self.metric_fns, self.device)

    def _train_epoch(self, epoch: int) -> dict[str, float]:
        self.model.train()
        self.train_metrics.reset()
        for batch_idx, (data, target) in enumerate(self._epoch_batches(epoch)):
            data, target = to_device(self.device, data, target)
            loss, output = self._train_step(data, target)
            self.global_step += 1
            track_batch(self.train_metrics, self.metric_fns, self.metric_names, loss, output, target)
            if batch_idx % self.settings.log_step == 0:
                self._log_progress(epoch, batch_idx, loss)
        log = self.train_metrics.result()
        if self.valid_data_loader is not None:
            log.update({f"val_{key}": value for key, value in self._valid_epoch(epoch).items()})
        return log

    def _train_step(self, data: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
        self.optimizer.zero_grad(set_to_none=True)
        output = self.model(data)
        loss = self.criterion(output, target)
        loss.backward()
        self.optimizer.step()
        return loss.detach(), output.detach()  # no .item(): keep the device running

    def _valid_epoch(self, epoch: int) -> dict[str, float]:
        return evaluate(self.model, self.valid_data_loader, self.criterion, self.metric_fns,
                        self.metric_names, self.device)

    def _epoch_batches(self, epoch: int) -> Iterator:
        """The batches of `epoch`, in an order that depends only on the seed and `epoch`."""
        set_epoch = getattr(self.data_loader, "set_epoch", None) or \
            getattr(getattr(self.data_loader, "sampler", None), "set_epoch", None)
        if set_epoch is not None:
            set_epoch(epoch)
        if self.iteration_based:
            return itertools.islice(inf_loop(self.data_loader), self.len_epoch)
        return iter(self.data_loader)

    def _log_progress(self, epoch: int, batch_idx: int, loss: Tensor) -> None:
        step = batch_idx + 1
        self.logger.debug("Train Epoch: %d [%d/%d (%.0f%%)] Loss: %.6f", epoch, step,
                          self.len_epoch, 100.0 * step / self.len_epoch, loss.item())
