"""What a person watching the terminal sees: a bar per epoch (or, when the output is not a
terminal, a line every few steps), an aligned table after each epoch and a summary at the end."""
import contextlib
import math
import os
import sys
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

# tqdm's default without its own rate (the postfix has samples/s): more room for the bar.
BAR_FORMAT = "{desc} {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}<{remaining}{postfix}]"


def bars_wanted(setting: bool | str, stream=None) -> bool:
    """`trainer.progress_bar`: true, false, or "auto" — bars only when `stream` (stdout) is a
    terminal, so a log file, CI or `nohup` get plain lines instead of bar redraws."""
    if setting != "auto":
        return setting is True
    stream = stream or sys.stdout
    if not (hasattr(stream, "isatty") and stream.isatty()):
        return False
    try:  # a pseudo-terminal without a size (some `docker exec -t`) would show an empty bar
        size = os.get_terminal_size(stream.fileno())
        return size.columns > 0 and size.lines > 0
    except (OSError, ValueError):
        return True


@contextlib.contextmanager
def progress_bar(enabled: bool, total: int, description: str, initial: int = 0,
                 unit: str = "step") -> Iterator:
    """A tqdm bar on stdout while the block runs (None when not `enabled`); the console log
    goes through tqdm meanwhile, so a warning prints above the bar instead of through it.
    The bar disappears when the block ends: the epoch table is what stays on screen."""
    if not enabled:
        yield None
        return
    from tqdm import (
        tqdm,  # imported when a bar is shown: the CLI starts faster without it
    )
    from tqdm.contrib.logging import logging_redirect_tqdm

    with logging_redirect_tqdm(), _warnings_through(tqdm), \
            tqdm(total=total, initial=initial, desc=description, unit=unit, leave=False,
                 dynamic_ncols=True, file=sys.stdout, bar_format=BAR_FORMAT) as bar:
        yield bar


@contextlib.contextmanager
def _warnings_through(tqdm) -> Iterator[None]:
    """Python warnings (a library's UserWarning) printed above the bar too, like log records."""
    show = warnings.showwarning

    def above_the_bar(message, category, filename, lineno, file=None, line=None):
        tqdm.write(warnings.formatwarning(message, category, filename, lineno, line).rstrip(),
                   file=sys.stderr)

    warnings.showwarning = above_the_bar
    try:
        yield
    finally:
        warnings.showwarning = show


def counted(batches: Iterable, bar) -> Iterator:
    """The items of `batches`, advancing `bar` (when there is one) after each."""
    for item in batches:
        yield item
        if bar is not None:
            bar.update(1)


def step_postfix(loss: float, samples_per_s: float | None, rates: list[float]) -> str:
    """`loss 0.4123 | 3,456 samples/s | lr 1.00e-03`: a bar's postfix and a log line's tail
    (with several parameter groups, each group's rate: `lr 1.00e-04, 1.00e-03`)."""
    parts = [f"loss {format_value(loss)}"]
    if samples_per_s is not None:
        parts.append(f"{samples_per_s:,.0f} samples/s")
    parts.append("lr " + ", ".join(f"{lr:.2e}" for lr in rates))
    return " | ".join(parts)


def format_value(value: float) -> str:
    """Six decimals where that reads well, else scientific notation (1.234568e-07)."""
    if value == 0 or math.isfinite(value) and 1e-3 <= abs(value) < 1e6:
        return f"{value:.6f}"
    return f"{value:.6e}" if math.isfinite(value) else str(value)


def format_duration(seconds: float) -> str:
    """`0.4 s`, `12.3 s`, `4m 05s`, `2h 03m`."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m {secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h {minutes:02d}m"


def epoch_table(log: dict[str, float], monitored: str | None = None,
                improved: bool = False) -> list[str]:
    """The epoch's values as aligned rows: train and valid side by side (`val_x` is x's valid
    value), the monitored value marked `*` when it improved."""
    names = list(dict.fromkeys(key[4:] if key.startswith("val_") else key for key in log))
    cells = {}
    for name in names:
        cells[name] = [format_value(log[key]) if key in log else "-"
                       for key in (name, f"val_{name}")]
    has_valid = any(key.startswith("val_") for key in log)
    width = max(len(name) for name in names)
    columns = ("train", "valid") if has_valid else ("train",)
    value_width = max(10, *(len(cell) for row in cells.values() for cell in row))
    rows = [f"  {'':<{width}}  " + "  ".join(f"{column:>{value_width}}" for column in columns)]
    for name in names:
        values = cells[name][:len(columns)]
        row = f"  {name:<{width}}  " + "  ".join(f"{value:>{value_width}}" for value in values)
        if improved and monitored in (name, f"val_{name}"):  # which column improved
            row += f"  * best {'valid' if monitored.startswith('val_') else 'train'}" \
                if has_valid else "  * best"
        rows.append(row.rstrip())
    return rows


def display_path(path: os.PathLike) -> str:
    """`path` relative to the working folder when it is inside it (shorter to copy), else as is."""
    path = Path(path)
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)
