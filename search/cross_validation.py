"""k-fold cross-validation's summary: each fold's best epoch, and the mean ± std over folds.

`train.py --folds K` trains the K runs (fold k holds out `{"fold": k, "folds": K}` of the
training data: base/folds.py) and hands each run's result here.
"""
import logging
import os
import statistics
from collections.abc import Callable
from pathlib import Path

from search.trial import PRUNED_REASON
from utils import distributed
from utils.errors import UserError
from utils.files import write_json
from utils.interrupts import TrainingInterrupted, signal_name


def folds_problem(folds: int) -> str | None:
    """What is wrong with `--folds K` itself, or None."""
    return None if folds >= 2 else f"--folds: expected K >= 2 runs, got {folds}"


def fold_config(config, fold: int):
    """The `ConfigParser` of fold `fold` of `--folds K`: that fold held out as validation, the
    run folder `<run id>-fold<k>`."""
    folds = config.cli_args.folds
    problem = folds_problem(folds)
    if problem:
        raise UserError(problem)
    if config.resume is not None:
        raise UserError("--folds: trains K new runs; resume a fold's run folder with -r alone")
    fold_run = config.with_modification({"data_loader.args.validation_split":
                                         {"fold": fold, "folds": folds}})
    fold_run.run_id = f"{config.run_id}-fold{fold}"
    return fold_run


def train_runs(config, train_one: Callable, trial=None) -> list[dict]:
    """Train `config`'s run, or with `--folds K` its K folds, and report the folds; each run's
    `run_result`. `train_one(config, callbacks)` trains one run (train.py's `train`: the
    trainer, or None when there was nothing to train); `trial` (a sweep's `StudyTrial`) is
    told where each fold starts. A pruned fold ends the folds; a stop signal that came during
    a fold's last epoch stops the folds after it (`TrainingInterrupted`)."""
    folds = config.cli_args.folds
    results, metric = [], ""
    for index in range(folds or 1):
        if trial is not None:
            trial.next_fold(index, folds or 1)
        trainer = train_one(fold_config(config, index + 1) if folds else config,
                            [trial] if trial is not None else [])
        if trainer is None:
            continue
        results.append(run_result(trainer))
        metric = trainer.monitor.metric
        if (trainer.stop_reason or "").startswith(PRUNED_REASON):  # the same on every process
            return results
        signum = distributed.max_value(trainer.stop_signals.poll() or 0) if folds else 0
        if signum and index + 1 < folds:
            message = (f"Stopped by {signal_name(signum)} after fold {index + 1} of {folds}; "
                       f"the folds after it were not trained")
            logging.getLogger("train").warning(message)
            raise TrainingInterrupted(signum, message)
    if folds and results:
        report_folds(config, summarize_folds(results, metric))
    return results


def train_search_runs(config, train_one: Callable) -> None:
    """train.py with `--folds K` or `--trial`: the folds (or the one run) and, as a sweep's
    trial, its report to the study."""
    from search.trial import StudyTrial, parse_trial

    trial = StudyTrial(parse_trial(config.cli_args.trial)) if config.cli_args.trial else None
    results = train_runs(config, train_one, trial)
    if trial is not None:
        trial.finish(results, config.resume)


def run_result(trainer) -> dict:
    """What a finished run reports: its folder, the monitored value at its best epoch with
    every value logged then, how many epochs it trained and why it stopped early (or None)."""
    return {"run": str(trainer.checkpoint_dir), "best": trainer.best.value,
            "best_epoch": trainer.best.epoch, "values": dict(trainer.best.log),
            "epochs": trainer.last_epoch, "stop_reason": trainer.stop_reason}


def summarize_folds(results: list[dict], metric: str) -> dict:
    """The folds' results with the mean and the sample standard deviation (n - 1) of the
    monitored value and of every value their best epochs logged."""
    keys = [key for key in results[0]["values"] if all(key in r["values"] for r in results)]
    columns = {key: [result["values"][key] for result in results] for key in keys}
    return {"monitor": metric, "folds": results,
            "mean": {key: statistics.fmean(values) for key, values in columns.items()},
            "std": {key: statistics.stdev(values) if len(values) > 1 else 0.0
                    for key, values in columns.items()}}


def fold_table(summary: dict) -> list[str]:
    """The summary as console lines: a row per fold, then mean ± std."""
    from logger.progress import format_value
    from logger.test_report import aligned_table

    keys = list(summary["mean"])
    rows = [[f"fold {index}", str(result["best_epoch"]),
             *(format_value(result["values"][key]) for key in keys)]
            for index, result in enumerate(summary["folds"], 1)]
    rows.append(["mean ± std", "", *(f"{format_value(summary['mean'][key])} ± "
                                     f"{format_value(summary['std'][key])}" for key in keys)])
    return aligned_table(["", "best epoch", *keys], rows)


def report_folds(config, summary: dict) -> None:
    """The folds' table on the console and in `<run id>-folds.json` beside their run folders."""
    if not distributed.is_main():
        return
    path = _free_summary_path(config.save_dir.parent, config.run_id)
    write_json(summary, path)
    logging.getLogger("train").info(
        "%d-fold cross-validation (%s at each fold's best epoch):\n%s\nSummary: %s",
        len(summary["folds"]), summary["monitor"], "\n".join(fold_table(summary)), path)


def _free_summary_path(folder: Path, run_id: str) -> Path:
    """`<run id>-folds.json`, or with a suffix (`_1`, `_2`, ...) when an earlier k-fold run of
    the same id has it: each summary keeps its own folds. Reserved by creating it (exclusive),
    so two k-fold runs finishing together get two names."""
    for attempt in range(1000):
        path = folder / f"{run_id}-folds{f'_{attempt}' if attempt else ''}.json"
        try:
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return path
    raise UserError(f"{folder}: no free name for the k-fold summary of {run_id!r}")
