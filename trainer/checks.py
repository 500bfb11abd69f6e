"""The checks before training: the first batch through the user's step, the model, the loss
and the metrics (one clear line when it does not fit), a schedule's length, and the dry run's
two steps. `FirstBatchChecks` is a part of `Driver`."""
import itertools
from dataclasses import dataclass, field

from torch import Tensor

from base.base_data_loader import release_workers
from logger.visualization import is_image_batch
from trainer.batches import first_tensor, map_tensors
from trainer.evaluation import broadcast_warning, describe_error
from trainer.metrics import EpochMetrics
from trainer.step_output import StepOutput, step_output
from utils.errors import ConfigError, UserError
from utils.seeding import get_rng_state, set_rng_state


@dataclass
class DryRunResult:
    """What `Trainer.dry_run` did: the steps' losses, the validation values (None without
    validation data) and notes on the optional switches it exercised."""

    losses: list[float] = field(default_factory=list)
    log: dict[str, float] | None = None
    notes: list[str] = field(default_factory=list)


def _image_warning(images) -> str:
    shape = tuple(images.shape) if isinstance(images, Tensor) else "not a tensor"
    return ("Warning: trainer.log_images needs image batches (B, C, H, W) with 1 or 3 channels; "
            f"these are {shape}. No images are logged.")


class FirstBatchChecks:
    """What `Driver` checks before it trains (a part of it, not a class of its own)."""

    def _check_schedule_length(self) -> None:
        """A schedule with a fixed length (OneCycleLR's total_steps) must cover the run when it
        steps per optimizer step (else it fails part-way, after hours); stepped per epoch it
        is most likely a mistake."""
        for name, scheduler in self.lr_schedulers.items():
            total = getattr(scheduler, "total_steps", None)
            if not isinstance(total, int):
                continue
            path = f"optimizers.{name}.lr_scheduler" if name else "lr_scheduler"
            needed = self.settings.epochs * self.len_epoch
            if self.scheduler_intervals[name] == "step" and total < needed:
                raise ConfigError(
                    f"{path}.args.total_steps: the schedule has {total} steps but training runs "
                    f"{needed} ({self.settings.epochs} epochs x {self.len_epoch} optimizer "
                    f"steps); set total_steps to {needed}")
            if self.scheduler_intervals[name] == "epoch":
                self.logger.warning(
                    "Warning: %s.type %s has a fixed length (%d steps) and steps once per epoch "
                    "here; it is meant to step after every optimizer step: set %s.interval to "
                    "\"step\" (and total_steps to %d).", path, type(scheduler).__name__, total,
                    path, needed)

    def check_first_batch(self) -> None:
        """Fail now, with one clear line, if a batch does not go through the step, the model,
        the loss and the metrics (warn when output and target broadcast in the loss); learn the
        step's loss parts. Eval mode; the generators are left as they were, so exact resume
        holds whatever the step draws."""
        loader = self.valid_data_loader
        if loader is None or len(loader) == 0:  # torchrun: this process's share may be empty
            loader = self.data_loader
        batch = next(iter(loader))
        release_workers(loader)
        rng_state = get_rng_state()
        try:
            step = self._check_step(self.to_device(batch))
        except (RuntimeError, IndexError, TypeError, ValueError, KeyError,
                AttributeError) as error:
            raise UserError(f"the first batch does not go through model, loss and metrics: "
                            f"{describe_error(error)}") from None
        finally:
            set_rng_state(rng_state)
        self.loss_parts = list(step.parts)
        self.train_metrics = EpochMetrics(self.metric_fns, self.device, self.loss_parts)
        self.check_monitor()
        self.first_inputs = self._summary_inputs(batch)

    def _check_step(self, batch) -> StepOutput:
        """`training_step` (in eval mode, without gradients: nothing is updated) and
        `validation_step` on `batch`, and their output through the metrics; the latter's."""
        with self._evaluating(), self.mechanics.autocast():
            trained = self._checked_output(batch, "training_step")
            step = self._checked_output(batch, "validation_step")
        if list(trained.parts) != list(step.parts):
            raise UserError(f"training_step returns the loss parts {list(trained.parts)}, "
                            f"validation_step {list(step.parts)}; both must return the same")
        warning = broadcast_warning(step.output, step.target)
        if warning:
            self.logger.warning(warning)
        return step

    def _checked_output(self, batch, method: str) -> StepOutput:
        step = step_output(getattr(self, method)(batch), method)
        metrics = EpochMetrics(self.metric_fns, self.device)
        if metrics.needs_output and (step.output is None or step.target is None):
            raise UserError(
                f"metrics {', '.join(self.metric_names)} need the step's \"output\" and "
                f"\"target\", and {method} returned only "
                f"{['loss', *step.parts] if step.parts else 'the loss'}; return them in the "
                f"step's dict, or set \"metrics\": []")
        metrics.update(step, self.batch_size(batch))
        return step

    def _summary_inputs(self, batch):
        """Two samples of the model's inputs by the default convention, for the model summary;
        None when the batch does not follow it."""
        try:
            inputs, _ = self.unpack(batch)
        except UserError:
            return None
        return map_tensors(inputs, lambda tensor: tensor[:2] if tensor.dim() else tensor)

    def dry_run(self, steps: int = 2, batches: int = 2) -> DryRunResult:
        """`steps` optimizer steps and `batches` validation batches, exactly as training runs
        them (the same driver; image logging and watch hooks exercised when on), writing
        nothing. A loss that is not finite raises `TrainingDiverged`."""
        self._wrap_ddp()
        self.model.train()
        epoch, result = self.start_epoch, DryRunResult()
        self.epoch, self.epoch_step = epoch, self.start_step  # a NaN is reported at its step
        watching = self.watch.enabled and self.settings.tensorboard
        if watching:
            self.watch.attach()
        try:
            for index, group in enumerate(itertools.islice(
                    self._step_groups(epoch, self.start_step), steps)):
                sizes, total, _ = self._step_total(group)
                if index == 0 and self.settings.log_images:
                    result.notes.append(self._image_note(group[0]))
                self.watch.recording = watching and index == 0
                outputs, _ = self._optimizer_step(group, sizes, total)
                self.watch.recording = False
                if watching and index == 0:
                    result.notes.append(f"trainer.watch: recorded on the first step: "
                                        f"{', '.join(self.watch.scalars())}")
                self.epoch_step += 1
                self.global_step += 1
                self.nan_guard.check(epoch, self.epoch_step, self.global_step)
                if outputs is not None:
                    result.losses.append(outputs[-1][0].loss.item())
            if self.valid_data_loader is not None:
                result.log = self.evaluate(itertools.islice(self.valid_data_loader, batches))
        finally:
            self.watch.detach()
            release_workers(self.data_loader, self.valid_data_loader)
        return result

    def _image_batch(self, batch):
        """The image tensor of a batch: the first tensor of its inputs (default convention),
        else of the batch."""
        try:
            inputs, _ = self.unpack(batch)
        except UserError:
            inputs = batch
        return first_tensor(inputs)

    def _image_note(self, batch) -> str:
        """What `trainer.log_images` would log from `batch` (the dry run's check)."""
        images = self._image_batch(batch)
        if is_image_batch(images):
            return f"trainer.log_images: a grid of {min(16, images.size(0))} images per epoch"
        return _image_warning(images)
