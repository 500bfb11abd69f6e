"""A trainer's state as a checkpoint, and back: the sum of each part's own state (model,
optimizers, schedulers, grad scaler, best epoch, RNG, and mid-epoch the epoch's metric sums and
what its position means), as plain data that loads with `weights_only=True`."""
import os

from runs.resume import (
    by_name,
    param_group_names,
    restore_optimizer,
    restore_rng,
    restore_scaler,
    restore_scheduler,
)
from utils import distributed
from utils.checkpoint import FORMAT_VERSION
from utils.errors import CheckpointError
from utils.plain_data import kind_problem
from utils.seeding import get_rng_state
from utils.weights import load_model_state, unwrap_model


def training_state(trainer, epoch: int, step: int = 0) -> dict:
    """Everything needed to continue `trainer` exactly: `epoch` epochs done and, for a run
    stopped mid-epoch, `step` optimizer steps into the next one. Under torchrun every process
    calls it (it gathers the generators' states)."""
    rng_states = distributed.gathered(trainer.position_rng_state or get_rng_state())
    model = unwrap_model(trainer.model)
    optimizers, schedulers = trainer.optimizers, trainer.lr_schedulers
    arch = trainer.config["arch"]
    state = {
        "format_version": FORMAT_VERSION,
        "arch": arch if isinstance(arch, str) else arch["type"],
        "epoch": epoch,
        "epoch_step": step,
        "epoch_state": epoch_state(trainer) if step else None,
        "stop_reason": trainer.stop_reason,
        "global_step": trainer.global_step,
        "state_dict": model.state_dict(),
        "optimizer": by_name({name: optimizer.state_dict()
                              for name, optimizer in optimizers.items()}),
        "param_group_names": by_name({name: param_group_names(model, optimizer)
                                      for name, optimizer in optimizers.items()}),
        "lr_scheduler": by_name({name: schedulers[name].state_dict() if name in schedulers
                                 else None for name in optimizers}),
        "scaler": trainer.scaler.state_dict() if trainer.scaler is not None else None,
        **trainer.best.state_dict(),
        "rng_state": rng_states[0],
        # under torchrun every process's generators, by rank
        "rng_states": rng_states if len(rng_states) > 1 else None,
        "config": trainer.config.config,
    }
    for callback in trainer.callbacks:  # averaged weights (step/averaging.py)
        callback.on_save_checkpoint(trainer, state)
    return state


def epoch_state(trainer) -> dict:
    """What a checkpoint taken mid-epoch needs besides the model and optimizer to finish the
    epoch exactly: the running sums and metric states over every process, and what its
    position means."""
    return {"train_metrics": trainer.train_metrics.state_dict(), **trainer.batches.position()}


def load_training_state(trainer, checkpoint: dict, path: os.PathLike) -> None:
    """Continue `trainer` exactly where `checkpoint` (read from `path`) stopped; a state that
    does not fit this run is a `CheckpointError` naming the file."""
    load_model_state(trainer.model, training_weights(checkpoint), path)
    trainer.start_epoch = checkpoint["epoch"] + 1
    trainer.start_step = checkpoint.get("epoch_step", 0)
    trainer.global_step = checkpoint.get("global_step", 0)
    trainer.best.load_state_dict(checkpoint)
    model, config = unwrap_model(trainer.model), trainer.config.config
    try:
        if trainer.start_step:
            load_epoch_state(trainer, checkpoint.get("epoch_state") or {})
        for name, optimizer in trainer.optimizers.items():
            restore_optimizer(name, optimizer, checkpoint, config,
                              param_group_names(model, optimizer), trainer.logger)
        for name, scheduler in trainer.lr_schedulers.items():
            steps = checkpoint["epoch"] if trainer.scheduler_intervals[name] == "epoch" else \
                checkpoint.get("global_step")
            restore_scheduler(name, scheduler, checkpoint, config, trainer.logger, steps)
        if trainer.scaler is not None and checkpoint.get("scaler"):
            restore_scaler(trainer.scaler, checkpoint["scaler"])
        restore_rng(checkpoint, trainer.config.get("seed", 0), trainer.global_step)
    except CheckpointError as error:  # the file's state does not fit: name the file
        raise CheckpointError(f"{path}: {error}") from None
    averaging = checkpoint.get("averaging")
    if averaging and trainer.settings.ema is None and trainer.settings.swa is None:
        trainer.logger.warning("Warning: %s averaged its weights (trainer.%s) and this run does "
                               "not: training goes on from its training weights (the best value "
                               "so far is the averaged weights')", path, averaging["kind"])
    for callback in trainer.callbacks:
        callback.on_load_checkpoint(trainer, checkpoint)


def training_weights(checkpoint: dict) -> dict:
    """The weights training goes on from: under `trainer.ema` / `trainer.swa` the checkpoint's
    `state_dict` holds the averaged ones and `averaging.training_state_dict` these."""
    return (checkpoint.get("averaging") or {}).get("training_state_dict") or \
        checkpoint["state_dict"]


def load_epoch_state(trainer, state: dict) -> None:
    """The epoch's running metric sums; the position in it only means the same batches with
    the same global batch size and epoch length (else a `ConfigError`). A state that is not
    one `epoch_state` gives is a `CheckpointError`."""
    now = trainer.batches.position()
    problem = kind_problem({"train_metrics": {}, **now}, state, "epoch_state")
    if problem or "train_metrics" not in state:
        raise CheckpointError(f"its {problem or 'epoch_state lacks train_metrics'}: it cannot "
                              f"continue its epoch; resume from an epoch checkpoint")
    trainer.batches.check_resumable(state, trainer.start_step)
    # the sums are of every process: one process carries them on, the others start at 0
    try:
        trainer.train_metrics.load_state_dict(state["train_metrics"], trainer.device,
                                              main=distributed.is_main())
    except (KeyError, TypeError, ValueError, AttributeError, RuntimeError) as error:
        raise CheckpointError(f"its epoch_state.train_metrics cannot be restored "
                              f"({type(error).__name__}: {error})") from None
