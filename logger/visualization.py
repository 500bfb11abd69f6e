"""TensorBoard output through `torch.utils.tensorboard`, opened explicitly and closed cleanly."""
import json
import os
import re
from pathlib import Path

# At most this many images in the grid `trainer.log_images` writes.
IMAGE_GRID_SIZE = 16


def summary_writer() -> type:
    """torch's `SummaryWriter` class, imported on first use (slow). TensorBoard's file layer
    imports boto3 and fsspec when they are installed, for `s3://` and remote log folders; a run's
    log folder is local, so they are kept out of this import (0.14 s of a run's start where boto3
    is installed) and importable as usual afterwards."""
    import sys

    if "torch.utils.tensorboard" in sys.modules:
        from torch.utils.tensorboard import SummaryWriter
        return SummaryWriter
    hidden = [name for name in ("boto3", "botocore", "fsspec") if name not in sys.modules]
    sys.modules.update(dict.fromkeys(hidden))  # None: "not installed", for this import only
    try:
        from torch.utils.tensorboard import SummaryWriter
    finally:
        for name in hidden:
            del sys.modules[name]
    return SummaryWriter


class TensorboardWriter:
    """Scalars, images, histograms and hparams to TensorBoard when `enabled`; every call is a
    no-op otherwise (check `active` before computing something only TensorBoard needs).

    The constructor only stores: the event file is created by `open()`.
    """

    def __init__(self, log_dir: str | os.PathLike, enabled: bool):
        self.log_dir = Path(log_dir)
        self.enabled = enabled
        self._writer = None

    @property
    def active(self) -> bool:
        return self._writer is not None

    def open(self, purge_step: int | None = None) -> None:
        """Start writing; `purge_step` drops points at or after it left by an interrupted run."""
        if self.enabled and self._writer is None:
            self._writer = summary_writer()(str(self.log_dir), purge_step=purge_step)

    def add_scalars(self, values: dict[str, float], step: int) -> None:
        """Each `tag: value` as its own scalar curve at `step`."""
        if self._writer is not None:
            for tag, value in values.items():
                self._writer.add_scalar(tag, value, step)

    def add_layout(self, metric_names) -> None:
        """A Custom Scalars chart per metric with its train and valid curves together (and,
        for the loss, the per-step training loss)."""
        if self._writer is None:
            return
        charts = {name: ["Multiline", [f"^{re.escape(name)}/(train|valid|train_step)$"]]
                  for name in metric_names}
        self._writer.add_custom_scalars({"train and valid": charts})

    def add_image_grid(self, tag: str, images, step: int) -> bool:
        """A grid of the first images of a (B, C, H, W) batch with 1 or 3 channels, each scaled
        to its own range (inputs are usually normalised); False for other shapes."""
        if self._writer is None:
            return True
        if not is_image_batch(images):
            return False
        from torchvision.utils import make_grid

        images = images[:IMAGE_GRID_SIZE].detach().float().cpu()
        self._writer.add_image(tag, make_grid(images, nrow=4, normalize=True, scale_each=True),
                               step)
        return True

    def add_histograms(self, named_tensors, step: int) -> None:
        """A histogram of each `(tag, tensor)`'s finite values (the gradients of a step the
        fp16 scaler skipped hold inf)."""
        if self._writer is None:
            return
        for tag, tensor in named_tensors:
            values = tensor.detach().float().cpu().flatten()
            values = values[values.isfinite()]
            if values.numel():
                self._writer.add_histogram(tag, values, step)

    def add_image(self, tag: str, image, step: int = 0) -> None:
        """One (3, H, W) image with values in [0, 1]."""
        if self._writer is not None:
            self._writer.add_image(tag, image, step)

    def add_text(self, tag: str, text: str, step: int = 0) -> None:
        if self._writer is not None:
            self._writer.add_text(tag, text, step)

    def add_hparams(self, config: dict, metrics: dict[str, float], step: int) -> None:
        """An HParams entry for this run: the flattened `config` against `metrics` (each also
        written as a scalar `hparams/<name>`, which the HParams tab reads). Written into this
        run's own event file, so the HParams tab shows one row per run folder. Only the
        session summaries: without an experiment summary TensorBoard builds the table's columns
        from every run's (with one per run it takes the first it finds, and runs whose configs
        have other keys lose columns)."""
        if self._writer is None:
            return
        from torch.utils.tensorboard.summary import hparams

        tagged = {f"hparams/{name}": value for name, value in metrics.items()}
        _experiment, session_start, session_end = hparams(flatten_config(config), tagged)
        for summary in (session_start, session_end):
            self._writer.file_writer.add_summary(summary, step)
        self.add_scalars(tagged, step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def is_image_batch(images) -> bool:
    """Whether `images` is a (B, C, H, W) tensor with 1 or 3 channels."""
    return hasattr(images, "dim") and images.dim() == 4 and images.size(1) in (1, 3)


def flatten_config(config: dict, prefix: str = "") -> dict[str, bool | int | float | str]:
    """`{"optimizer.args.lr": 0.001, ...}`: the values HParams can show; a list becomes its
    JSON text and null the text "null"."""
    flat = {}
    for key, value in config.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict) and value:
            flat.update(flatten_config(value, f"{path}."))
        elif isinstance(value, (bool, int, float, str)):
            flat[path] = value
        else:
            flat[path] = json.dumps(value)
    return flat
