"""The checks before training, each handed the trainer: the first batch through the user's
step, the model, the loss and the metrics (one clear line when it does not fit), a schedule's
length, and what `trainer.log_images` would show."""
from dataclasses import dataclass, field

from torch import Tensor

from base.base_data_loader import release_workers
from logger.visualization import is_image_batch
from step.batches import StepOutput, first_tensor, map_tensors, step_output
from step.evaluation import broadcast_warning, describe_error
from step.metrics import EpochMetrics
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


# Schedulers that set the learning rate themselves, and the argument they set it from.
RATE_FROM = {"OneCycleLR": "max_lr", "CyclicLR": "base_lr"}


def check_schedule_length(trainer) -> None:
    """A schedule with a fixed length (OneCycleLR's total_steps) must cover the run when it
    steps per optimizer step (else it fails part-way, after hours) and end with it (a longer
    one stops before its end: a warning); stepped per epoch it is most likely a mistake. A
    schedule that sets the rate itself makes the optimizer's `lr` unused: a warning."""
    settings = trainer.settings
    for name, scheduler in trainer.lr_schedulers.items():
        path = f"optimizers.{name}.lr_scheduler" if name else "lr_scheduler"
        own = RATE_FROM.get(type(scheduler).__name__)
        optimizer_path = f"optimizers.{name}" if name else "optimizer"
        lr = ((trainer.config.config.get("optimizers") or {}).get(name) if name else
              trainer.config.config.get("optimizer") or {}).get("args", {}).get("lr")
        if own is not None and lr is not None:
            trainer.logger.warning(
                "Warning: %s.args.lr (%s) is not used: %s sets the learning rate from "
                "%s.args.%s; change (or search) that instead.", optimizer_path, lr,
                type(scheduler).__name__, path, own)
        total = getattr(scheduler, "total_steps", None)
        if not isinstance(total, int):
            continue
        needed = settings.epochs * trainer.len_epoch
        if trainer.scheduler_intervals[name] == "step" and total < needed:
            raise ConfigError(
                f"{path}.args.total_steps: the schedule has {total} steps but training runs "
                f"{needed} ({settings.epochs} epochs x {trainer.len_epoch} optimizer "
                f"steps); set total_steps to {needed}")
        if trainer.scheduler_intervals[name] == "step" and total > needed:
            trainer.logger.warning(
                "Warning: %s.args.total_steps: the schedule has %d steps but training runs %d "
                "(%d epochs x %d optimizer steps): it stops at step %d of its %d, before its "
                "end; set total_steps to %d.", path, total, needed, settings.epochs,
                trainer.len_epoch, needed, total, needed)
        if trainer.scheduler_intervals[name] == "epoch":
            trainer.logger.warning(
                "Warning: %s.type %s has a fixed length (%d steps) and steps once per epoch "
                "here; it is meant to step after every optimizer step: set %s.interval to "
                "\"step\" (and total_steps to %d).", path, type(scheduler).__name__, total,
                path, needed)


def check_first_batch(trainer) -> None:
    """Fail now, with one clear line, if a batch does not go through the step, the model, the
    loss and the metrics (warn when output and target broadcast in the loss); learn the step's
    loss parts. Eval mode; the generators are left as they were, so exact resume holds
    whatever the step draws."""
    loader = trainer.valid_data_loader
    if loader is None or len(loader) == 0:  # torchrun: this process's share may be empty
        loader = trainer.data_loader
    batch = next(iter(loader))
    release_workers(loader)
    rng_state = get_rng_state()
    try:
        step = _check_step(trainer, trainer.to_device(batch))
    except (RuntimeError, IndexError, TypeError, ValueError, KeyError,
            AttributeError) as error:
        raise UserError(f"the first batch does not go through model, loss and metrics: "
                        f"{describe_error(error)}") from None
    finally:
        set_rng_state(rng_state)
    trainer.loss_parts = list(step.parts)
    trainer.train_metrics = EpochMetrics(trainer.metric_fns, trainer.device, trainer.loss_parts)
    trainer.check_monitor()
    trainer.first_inputs = _summary_inputs(trainer, batch)


def _check_step(trainer, batch) -> StepOutput:
    """`training_step` (in eval mode, without gradients: nothing is updated) and
    `validation_step` on `batch`, and their output through the metrics; the latter's."""
    with trainer.evaluating():
        trained = _checked_output(trainer, batch, "training_step")
        step = _checked_output(trainer, batch, "validation_step")
    if list(trained.parts) != list(step.parts):
        raise UserError(f"training_step returns the loss parts {list(trained.parts)}, "
                        f"validation_step {list(step.parts)}; both must return the same")
    warning = broadcast_warning(step.output, step.target)
    if warning:
        trainer.logger.warning(warning)
    return step


def _checked_output(trainer, batch, method: str) -> StepOutput:
    step = step_output(getattr(trainer, method)(batch), method)
    metrics = EpochMetrics(trainer.metric_fns, trainer.device)
    if metrics.needs_output and (step.output is None or step.target is None):
        raise UserError(
            f"metrics {', '.join(trainer.train_metrics.names)} need the step's \"output\" and "
            f"\"target\", and {method} returned only "
            f"{['loss', *step.parts] if step.parts else 'the loss'}; return them in the "
            f"step's dict, or set \"metrics\": []")
    metrics.update(step, trainer.batch_size(batch))
    return step


def _summary_inputs(trainer, batch):
    """Two samples of the model's inputs by the default convention, for the model summary;
    None when the batch does not follow it."""
    try:
        inputs, _ = trainer.unpack(batch)
    except UserError:
        return None
    return map_tensors(inputs, lambda tensor: tensor[:2] if tensor.dim() else tensor)


def image_batch(trainer, batch) -> tuple[Tensor | None, str | None]:
    """The image tensor of a batch (the first tensor of its inputs by the default
    convention, else of the batch), and a warning when it is not an image batch."""
    try:
        inputs, _ = trainer.unpack(batch)
    except UserError:
        inputs = batch
    images = first_tensor(inputs)
    return images, None if is_image_batch(images) else _image_warning(images)
