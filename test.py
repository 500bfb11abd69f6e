"""Evaluate a checkpoint on the test split: `python test.py -r path/to/model_best.pth`."""
import argparse
import json
from pathlib import Path

from config.command_line import parse_command_line
from parse_config import ConfigParser
from train import checkpoint_trainer, evaluation_configs
from utils.cli import leaf_note, optional_leaf, run_cli
from utils.errors import UserError


def main(argv=None) -> dict[str, float] | list[dict]:
    parser = argparse.ArgumentParser(description="Evaluate a checkpoint on the test split.")
    parser.add_argument("--print-config", action="store_true",
                        help="print the effective config (checkpoint's or -c, + overrides) and exit")
    parser.add_argument("--compare", nargs="+", metavar="RUN", default=None,
                        help="evaluate several checkpoints or run folders (their model_best.pth) "
                             "on the test split: one table, and JSON in --json; a -r checkpoint "
                             "is compared first" + leaf_note("search"))
    parser.add_argument("--json", default="comparison.json",
                        help="where --compare writes its JSON (default: comparison.json)")
    args = parse_command_line(parser, (), argv, evaluating=True)
    from utils import distributed

    if distributed.launched_world_size() > 1:
        raise UserError("test.py evaluates in one process: start it with python, not torchrun")
    if args.compare:
        return compare(args)
    config, test_config = evaluation_configs(args, args.resume)
    if config.cli_args.print_config:
        print(json.dumps(config.config, indent=4))
        return {}
    results, epoch, classes = evaluate_checkpoint(test_config)
    write_report(test_config, results, epoch, classes)
    return results


def compare(args: argparse.Namespace) -> list[dict]:
    """`--compare`: each checkpoint's test results in one table, then as JSON in `--json`; a
    `-r` checkpoint is the first compared."""
    comparison = optional_leaf("search.comparison", "--compare")
    from utils.files import write_json

    configs, problems = [], []
    runs = [args.resume, *args.compare] if args.resume else args.compare  # -r A --compare B C
    for path in runs:  # every one checked before the first is evaluated
        try:
            configs.append(evaluation_configs(args, path)[1])
        except UserError as error:
            problems += error.problems
    problem = None if problems else comparison.test_data_problem(configs)
    if problems or problem:
        raise UserError(*problems, *([problem] if problem else []))
    results = []
    for test_config in configs:
        values, epoch, _ = evaluate_checkpoint(test_config)
        results.append({"checkpoint": str(test_config.resume), "epoch": epoch,
                        "results": values})
    print("\n".join(comparison.comparison_lines(results)), flush=True)  # before the write: never lost
    write_json(results, args.json)
    print(f"Comparison written to {args.json}")
    return results


def write_report(config: ConfigParser, results: dict, epoch: int, classes: dict | None) -> None:
    """The report on the console, then as JSON next to the checkpoint; for a classifier the
    confusion matrix also to TensorBoard, in the run's log folder, when the run used it."""
    from logger.progress import display_path
    from logger.test_report import report_lines
    from utils.files import write_json

    for line in report_lines(config.resume, epoch, results, classes):
        print(line, flush=True)  # before any write: a folder that cannot be written loses nothing
    out_path = config.resume.with_name(f"{config.resume.stem}.test.json")
    write_json({"checkpoint": str(config.resume), "epoch": epoch, **results, **(classes or {})},
               out_path)
    print(f"Report written to {out_path}")
    if (config.get("trainer") or {}).get("mlflow") is not None:
        optional_leaf("tracking.mlflow_run", "trainer.mlflow").log_test_report(
            config, results, epoch, out_path)
    if classes is not None and (config.get("trainer") or {}).get("tensorboard"):
        folder = write_confusion_image(config.resume, classes, epoch)
        if folder is not None:
            print(f"Confusion matrix image written to TensorBoard: {display_path(folder)}")


def write_confusion_image(checkpoint: Path, classes: dict, epoch: int) -> Path | None:
    """The confusion matrix as an image (and a table) in `<run log folder>/test-<checkpoint>`,
    a run of its own in TensorBoard, at step `epoch`; it replaces an earlier test of the same
    checkpoint file. None when the checkpoint is not in a run folder."""
    from logger.test_report import confusion_image, markdown_matrix, run_log_dir
    from logger.visualization import TensorboardWriter

    log_dir = run_log_dir(checkpoint)
    if log_dir is None:
        return None
    writer = TensorboardWriter(log_dir / f"test-{checkpoint.stem}", enabled=True)
    for old in writer.log_dir.glob("events.out.tfevents.*"):  # this folder is test.py's own
        old.unlink()
    writer.open()
    try:
        writer.add_image("test/confusion_matrix", confusion_image(
            classes["confusion_matrix"]["counts"]), epoch)
        writer.add_text("test/confusion_matrix", markdown_matrix(classes), epoch)
    finally:
        writer.close()
    return writer.log_dir


def evaluate_checkpoint(config: ConfigParser) -> tuple[dict, int, dict | None]:
    """Loss and metrics of the checkpoint `config.resume` on the test split, its epoch, and
    for a classifier the per-class accuracy and confusion matrix (`class_report`)."""
    from base.base_data_loader import release_workers, sample_count
    from logger.logger import setup_logging
    from logger.progress import bars_wanted, counted, progress_bar
    from logger.test_report import class_report
    from runs.manifest import changed_helper_files
    from step.evaluation import ConfusionMatrix

    setup_logging(None)  # console only: test.py writes nothing but its report
    # the trainer class of the run (its validation_step), on the test split, without training
    trainer, checkpoint = checkpoint_trainer(config)
    broken = [name for name, tensor in checkpoint["state_dict"].items()
              if tensor.is_floating_point() and not tensor.isfinite().all()]
    if broken:  # a report of such a model would be numbers of nothing
        raise UserError(f"{config.resume}: its weights hold NaN or infinite values ({broken[0]}"
                        f"{f' and {len(broken) - 1} more' if len(broken) > 1 else ''}); there "
                        f"is nothing to evaluate: test an earlier checkpoint")
    for line in changed_helper_files(config.resume.parent, trainer.helper_files):
        print(line, flush=True)  # a teacher's weights that changed since training
    trainer.epoch, trainer.global_step = checkpoint["epoch"], checkpoint.get("global_step", 0)
    data_loader = trainer.data_loader
    trainer.check_first_batch()
    # a step with dict outputs: the head the first metric naming one reads
    reads = next((fn.reads for fn in trainer.metric_fns if any(getattr(fn, "reads", ()))), None)
    confusion = ConfusionMatrix(reads)
    bars = bars_wanted((config.get("trainer") or {}).get("progress_bar", "auto"))
    with progress_bar(bars, len(data_loader), "test", unit="batch") as bar:
        results = trainer.evaluate(counted(data_loader, bar), confusion=confusion)
    release_workers(data_loader)
    results["n_samples"] = sample_count(data_loader)
    matrix = confusion.matrix
    classes = class_report(matrix, getattr(data_loader.dataset, "classes", None)) \
        if matrix is not None else None
    if classes is not None and reads is not None:
        classes["output"] = reads[0]  # the report says which head it is of
    if confusion.skipped:
        print(f"No per-class report: {confusion.skipped} (a metric block's \"output\" names the "
              f"head to report on).", flush=True)
    return results, checkpoint["epoch"], classes


if __name__ == "__main__":
    run_cli(main)
