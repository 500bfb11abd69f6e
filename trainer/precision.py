"""The mechanics of one optimizer step: mixed precision, gradient scaling, clipping.

`StepMechanics` keeps the trainer's loop readable: `with mechanics.autocast(): ...`,
`mechanics.backward(loss)`, `mechanics.step()`. Everything is off by default; each part is a
`trainer` config key (`amp`, `grad_clip_norm`).
"""
import contextlib
import os
from collections.abc import Iterator

import torch
from torch import Tensor, nn

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


class StepMechanics:
    """Autocast to `amp`'s dtype on `device`, a gradient scaler for fp16 (its state goes into
    checkpoints), and clipping of the global gradient norm (after unscaling)."""

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, device: torch.device,
                 amp: str | None = None, grad_clip_norm: float | None = None):
        self.model = model
        self.optimizer = optimizer
        self.device = device
        self.dtype = AMP_DTYPES.get(amp)
        self.scaler = torch.amp.GradScaler(device.type) if amp == "fp16" else None
        self.grad_clip_norm = grad_clip_norm

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def backward(self, loss: Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler is not None else loss).backward()

    def step(self, optimizer: torch.optim.Optimizer | None = None, update: bool = True) -> None:
        """Unscale (fp16), clip, step `optimizer` (default: the one given at construction; the
        scaler skips steps with inf/NaN gradients), and with `update` update the scale (with
        several optimizers: once, after all of them stepped)."""
        optimizer = optimizer if optimizer is not None else self.optimizer
        if self.scaler is not None and self.grad_clip_norm is not None:
            self.scaler.unscale_(optimizer)
        if self.grad_clip_norm is not None:
            torch.nn.utils.clip_grad_norm_(optimizer_parameters(optimizer), self.grad_clip_norm)
        if self.scaler is not None:
            self.scaler.step(optimizer)
        else:
            optimizer.step()
        if update:
            self.update()

    def update(self) -> None:
        """The grad scaler's new scale (fp16), once per optimizer step of the loop."""
        if self.scaler is not None:
            self.scaler.update()


def optimizer_parameters(optimizer: torch.optim.Optimizer) -> Iterator[Tensor]:
    """Every parameter of every group of `optimizer`."""
    return (p for group in optimizer.param_groups for p in group["params"])


def configure_backends(cudnn_benchmark: bool, deterministic: bool) -> None:
    """Process-wide kernel choices, set by train.py before anything is built: cuDNN autotuning,
    or deterministic algorithms everywhere (which rules autotuning out)."""
    torch.backends.cudnn.benchmark = cudnn_benchmark and not deterministic
    torch.backends.cudnn.deterministic = deterministic
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it to be
    torch.use_deterministic_algorithms(deterministic)
