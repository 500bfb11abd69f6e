"""The user's seam: the default `Trainer`. A task of your own overrides these methods in a
subclass named by `trainer.type` (docs/your-own-task.md); the loop that calls them is
`base.base_trainer.BaseTrainer`."""
from torch import Tensor, nn

from base.base_trainer import BaseTrainer
from base.callbacks import Callback
from step.batches import batch_inputs, call_model, leading_size, move_to_device, split_batch
from utils.errors import UserError
from utils.weights import unwrap_model

__all__ = ["Callback", "Trainer"]


class Trainer(BaseTrainer):
    """Supervised training of `model` with `criterion` over batches of any structure.

    The seam, each method public and small: `training_step(batch)` returns the loss or a dict
    with "loss", "output", "target" and loss parts; `validation_step(batch)`;
    `to_device(batch)`; `batch_size(batch)`; `unpack(batch)`; and with
    `automatic_optimization = False` the step calls `backward(loss)` and `step(name)` itself
    (several optimizers). The step can read `self.epoch`, `self.global_step`, `self.model`,
    `self.module`, `self.criterion` and its own options. Everything else — accumulation, sample
    weighting, DDP, amp, clipping, the NaN policy, stop signals, resume positions, progress — is
    the loop's (`BaseTrainer`) and its step engine's, which call these.

    Its own options (`trainer.args`) are the keyword parameters of `__init__`; a subclass adds
    its own the same way: `def __init__(self, *args, kl_warmup_epochs: int = 0, **kwargs)`.
    """

    def __init__(self, *args, target_key: str | None = None, **kwargs):
        """`target_key`: the key of a dict batch that holds the target (default: the first of
        `step.batches.TARGET_KEYS` present). The other arguments are the loop's (model,
        criterion, metric_fns, optimizer, ...), given by the builder."""
        self.target_key = target_key
        super().__init__(*args, **kwargs)

    def training_step(self, batch) -> Tensor | dict[str, Tensor]:
        """Forward and loss for one (micro-)batch already on the device, in train mode and
        under autocast when `trainer.amp` is on.

        Returns the loss (a scalar tensor), or a dict with "loss" and optionally "output" and
        "target" (what the metrics and test.py's class report receive) and other scalar tensors
        (loss parts such as "recon", "kl"), which are logged like the loss. Never call
        `.item()` or `.backward()` here (in manual optimization: `self.backward`).

        The default: `inputs, target = self.unpack(batch)`, `output = model(inputs)` (dict
        inputs: `model(**inputs)`), `loss = criterion(output, target)`.
        """
        if self.criterion is None:
            raise UserError("loss: the config sets no loss, which the default training_step "
                            "needs (\"loss\": \"nll_loss\"); set one, or override "
                            "training_step(batch) in a Trainer subclass")
        inputs, target = self.unpack(batch)
        output = call_model(self.model, inputs)
        return {"loss": self.criterion(output, target), "output": output, "target": target}

    def validation_step(self, batch) -> Tensor | dict[str, Tensor]:
        """The same for a validation or test batch, in eval mode without gradients (default:
        `training_step`; `backward` and `step` do nothing here)."""
        return self.training_step(batch)

    def predict_step(self, batch):
        """The prediction for a batch of new data (eval mode, no gradients; the outputs of all
        batches are joined along the samples), also SWA's BatchNorm pass: by default the model's
        output.
        The batch is inputs alone — a tensor, a dict of the model's arguments — or a batch that
        also holds its target (a pair, a dict with a target key), whose target is left out."""
        return call_model(self.model, batch_inputs(batch, self.unpack))

    def to_device(self, batch):
        """`batch` on this process's device: every tensor inside nested tuples, lists, dicts,
        namedtuples and dataclasses (asynchronously from pinned memory)."""
        return move_to_device(batch, self.device)

    def batch_size(self, batch) -> int:
        """The samples in `batch` (dim 0 of its first tensor): the weight of its loss in an
        accumulated or distributed step, in the epoch means, and in samples/s."""
        return leading_size(batch)

    def unpack(self, batch) -> tuple:
        """`(inputs, target)`: a pair `(inputs, target)`; `(x1, x2, ..., target)` gives the
        inputs `(x1, x2, ...)`; a dict its target under `target_key` (or the first of `target`,
        `targets`, `label`, `labels`, `y`) and the rest as inputs, called as `model(**inputs)`.
        A batch that follows none of these is a one-line `UserError`."""
        return split_batch(batch, self.target_key)

    def backward(self, loss: Tensor) -> None:
        """Backpropagate `loss` of this micro-batch, weighted by its share of the optimizer
        step's samples and scaled by the fp16 grad scaler (manual optimization calls it from
        `training_step`; a NaN in it counts for `nan_policy`). Nothing during validation."""
        self.engine.backward(loss)

    def step(self, name: str = "") -> None:
        """Step optimizer `name` ("" or omitted: the only one) and clear its gradients: unscale,
        clip, the scaler's skip of inf gradients, and with `grad_accum_steps` only after the
        step's last micro-batch (the gradients it has at its earlier calls are kept for then).
        Manual optimization calls it from `training_step`, once per optimizer. Nothing during
        validation."""
        if self.optimizers:  # test.py: evaluation only
            self.engine.step(name)

    @property
    def module(self) -> nn.Module:
        """The model without its DDP / DataParallel wrappers: its submodules and attributes
        (`self.module.generator`); call `self.model(...)` to run it under DDP."""
        return unwrap_model(self.model)
