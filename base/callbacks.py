"""Code a run calls at fixed points, without subclassing the trainer."""


class Callback:
    """Code run by the trainer at fixed points (`train.main(argv, callbacks=[...])`), each
    method given the trainer: extra logging, a test's injected signal. The defaults do
    nothing."""

    def on_train_start(self, trainer) -> None:
        """Once the run folder is open and its lock held, before the first epoch trains (a
        resumed run: before the rest of its epoch); not called when there is nothing to
        train."""

    def on_train_end(self, trainer, error: BaseException | None) -> None:
        """Once training ends, its checkpoints written: `error` is None when it ran to its end
        (or stopped early), else the exception that ended it (`TrainingInterrupted` for a stop
        signal). Called whenever training got as far as `on_train_start`; it should not raise."""

    def on_step_start(self, trainer) -> None:
        """Before each training optimizer step (`trainer.global_step` steps done)."""

    def on_step_end(self, trainer) -> None:
        """After each training optimizer step, before a stop signal is acted on."""

    def on_train_epoch_end(self, trainer, epoch: int) -> None:
        """After epoch `epoch`'s last training step, before its validation."""

    def on_validation_batch_end(self, trainer) -> None:
        """After each validation batch, before a stop signal is acted on."""

    def on_epoch_end(self, trainer, epoch: int, log: dict) -> None:
        """After epoch `epoch` was validated and reported (`log`: its values), before its
        checkpoint is saved; `trainer.request_stop(reason)` ends the run there."""

    def on_save_checkpoint(self, trainer, state: dict) -> None:
        """`state`, the checkpoint about to be saved (plain data), may be changed in place (the
        averaged weights as its `state_dict`); under torchrun every process calls it."""

    def on_load_checkpoint(self, trainer, checkpoint: dict) -> None:
        """After a resume restored `checkpoint` into the trainer: what the callback kept in it."""
