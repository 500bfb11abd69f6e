"""test.py's report: the metrics as an aligned table and as JSON, and for a classifier the
per-class accuracy and the confusion matrix (also as a TensorBoard image)."""
from collections.abc import Sequence
from pathlib import Path

from logger.progress import format_value

# With more classes than this, per-class accuracy and the matrix are in the JSON, not printed.
MAX_PRINTED_CLASSES = 20


def class_report(matrix: list[list[int]], class_names: Sequence[str] | None = None) -> dict:
    """Per-class accuracy (the share of each true class predicted right; null for a class with
    no test sample) and the matrix with its class names, as plain JSON data."""
    names = list(map(str, class_names)) if class_names is not None and \
        len(class_names) == len(matrix) else [str(index) for index in range(len(matrix))]
    accuracy = {name: (row[index] / sum(row) if sum(row) else None)
                for index, (name, row) in enumerate(zip(names, matrix))}
    return {"per_class_accuracy": accuracy,
            "confusion_matrix": {"classes": names, "rows": "true class",
                                 "columns": "predicted class", "counts": matrix}}


def aligned_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """`header` and `rows` of text cells as console lines, each column as wide as its widest."""
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip()
            for row in [header, *rows]]


def report_lines(checkpoint: Path, epoch: int, results: dict, classes: dict | None) -> list[str]:
    """The report as a person reads it on the console."""
    lines = [f"Test results of {checkpoint} (epoch {epoch}), {results['n_samples']:,} samples:"]
    metrics = {key: value for key, value in results.items() if key != "n_samples"}
    width = max(map(len, metrics), default=0)
    lines += [f"  {key:<{width}}  {format_value(value) if isinstance(value, float) else value}"
              for key, value in metrics.items()]
    if classes is None:
        return lines
    matrix = classes["confusion_matrix"]["counts"]
    names = classes["confusion_matrix"]["classes"]
    if len(matrix) > MAX_PRINTED_CLASSES:
        return lines + [f"  ({len(matrix)} classes: their accuracy and the confusion matrix are "
                        f"in the JSON report)"]
    name_width = max(5, *map(len, names))
    if classes.get("output"):  # a step with several outputs: the head it is of
        lines += ["", f"  Per class, of the output {classes['output']!r}:"]
    lines += ["", f"  {'class':<{name_width}}  {'accuracy':>8}  {'samples':>7}"]
    for name, row in zip(names, matrix):
        accuracy = classes["per_class_accuracy"][name]
        shown = "-" if accuracy is None else f"{accuracy:.4f}"
        lines.append(f"  {name:<{name_width}}  {shown:>8}  {sum(row):>7,}")
    lines += ["", "  Confusion matrix (rows: true class, columns: predicted class):"]
    cell = max(len(f"{count:,}") for row in matrix for count in row)
    short = [name[:max(cell, 3)] for name in names]
    cell = max(cell, 3, *map(len, short))
    lines.append(f"  {'':<{name_width}}  " + " ".join(f"{name:>{cell}}" for name in short))
    lines += [f"  {name:<{name_width}}  " + " ".join(f"{count:>{cell},}" for count in row)
              for name, row in zip(names, matrix)]
    return lines


def confusion_image(matrix: list[list[int]], cell_pixels: int = 0):
    """The matrix as a (3, H, W) image in [0, 1]: each row scaled by its class's samples,
    white (none) to dark blue (all); rows are true classes, columns predictions."""
    import torch

    counts = torch.tensor(matrix, dtype=torch.float32)
    shares = counts / counts.sum(dim=1, keepdim=True).clamp(min=1)
    white, blue = torch.tensor([1.0, 1.0, 1.0]), torch.tensor([0.03, 0.19, 0.42])
    image = white.view(3, 1, 1) + (blue - white).view(3, 1, 1) * shares.unsqueeze(0)
    cell_pixels = cell_pixels or max(4, 256 // len(matrix))
    return image.repeat_interleave(cell_pixels, dim=1).repeat_interleave(cell_pixels, dim=2)


def markdown_matrix(classes: dict) -> str:
    """The matrix as a Markdown table (TensorBoard's text tab renders it)."""
    names = classes["confusion_matrix"]["classes"]
    lines = ["| true \\ predicted | " + " | ".join(names) + " |",
             "|---|" + "---|" * len(names)]
    lines += [f"| {name} | " + " | ".join(map(str, row)) + " |"
              for name, row in zip(names, classes["confusion_matrix"]["counts"])]
    return "\n".join(lines)


def run_log_dir(checkpoint: Path) -> Path | None:
    """The log folder of the run a checkpoint is in (`<save_dir>/models/<name>/<run_id>/x.pth`
    has `<save_dir>/log/<name>/<run_id>`); None for a checkpoint outside that layout."""
    run = checkpoint.resolve().parent
    if run.parent.parent.name != "models":
        return None
    return run.parent.parent.parent / "log" / run.parent.name / run.name
