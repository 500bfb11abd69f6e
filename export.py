"""Export a trained model for deployment and verify it:
`python export.py -r saved/models/Digits_CNN/<run_id>/model_best.pth --format torch.export|onnx`.

The model (the checkpoint's weights, eval mode, on the CPU) goes through torch.export with the
batch dimension dynamic, on the first batch of real inputs — `--input FILE.pt` as for
predict.py, or the data loader's test split. `--format onnx` converts that program to ONNX
(needs onnx, onnxscript, onnxruntime). Before anything is written, the saved program (loaded
back with `torch.export.load`, or run in onnxruntime) is run on that batch and on its first 3
samples and compared with the eager model: one line per check with the largest difference.
It is written next to the checkpoint (`model_best.pt2` / `model_best.onnx`) unless `--output`
says where; a mismatch writes nothing and exits with code 1.
"""
import argparse
import sys
from pathlib import Path

from config.command_line import parse_command_line
from utils.cli import run_cli
from utils.errors import UserError

FORMATS = ("torch.export", "onnx")


def main(argv=None) -> Path:
    """The command line; the file written. A failed verification is one `error:` line on
    stderr and exit code 1."""
    parser = argparse.ArgumentParser(description="Export a trained model (torch.export or "
                                                 "ONNX) and verify it against the eager model.")
    parser.add_argument("--format", choices=FORMATS, default="torch.export",
                        help="torch.export: a .pt2 file for torch.export.load; onnx: a .onnx "
                             "file for onnxruntime (default: torch.export)")
    parser.add_argument("--input", metavar="FILE.pt",
                        help="example inputs: a tensor (N, ...) or a dict of tensors of N rows, "
                             "saved with torch.save (default: the data loader's test split)")
    parser.add_argument("--output", metavar="FILE",
                        help="where to write it (default: <checkpoint stem>.pt2 or .onnx next "
                             "to the checkpoint)")
    parser.add_argument("--atol", type=float, default=1e-5,
                        help="absolute tolerance of the check (default: 1e-5)")
    parser.add_argument("--rtol", type=float, default=1e-4,
                        help="relative tolerance of the check (default: 1e-4)")
    args = parse_command_line(parser, (), argv, evaluating=True)
    from deploy.export import ExportMismatch, Tolerance, check_packages
    from utils import distributed

    if distributed.launched_world_size() > 1:
        raise UserError("export.py exports in one process: start it with python, not torchrun")
    for name in ("atol", "rtol"):
        if not getattr(args, name) >= 0:
            raise UserError(f"--{name}: expected a number >= 0, got {getattr(args, name)}")
    check_packages(args.format)  # before anything is built
    from train import evaluation_configs

    _, config = evaluation_configs(args, args.resume)
    try:
        return export(config, args.format, args.input, args.output, Tolerance(args.atol, args.rtol))
    except ExportMismatch as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(1)


def export(config, format_name: str, input_path: str | None, output: str | None,
           tolerance) -> Path:
    """Export the model of the checkpoint `config.resume` as `format_name`, verified on the
    first batch of `input_path` (or the test split) within `tolerance` (a
    `deploy.export.Tolerance`); the file written."""
    import torch

    from deploy.export import example_inputs, export_model, export_path
    from deploy.predictions import input_batches
    from logger.logger import setup_logging
    from utils.weights import unwrap_model

    setup_logging(None)
    batches = input_batches(Path(input_path), config) if input_path else None
    path = export_path(config.resume, output, format_name)
    from train import checkpoint_trainer

    trainer, _ = checkpoint_trainer(config, torch.device("cpu"))
    model = unwrap_model(trainer.model)
    batch = next(iter(batches if batches is not None else trainer.data_loader), None)
    if batch is None:
        raise UserError("no inputs to export the model on: the test split is empty")
    examples = example_inputs(trainer.unpack, batch)
    export_model(model.eval(), format_name, examples, path, tolerance)
    return path


if __name__ == "__main__":
    run_cli(main)
