"""k-fold cross-validation's summary: each fold's best epoch, and the mean ± std over folds.

`train.py --folds K` trains the K runs (fold k holds out `{"fold": k, "folds": K}` of the
training data: base/folds.py) and hands each run's result here.
"""
import json
import logging
import os
import statistics
from collections.abc import Callable
from pathlib import Path

from base.callbacks import Callback
from base.settings import TrainerSettings
from config.command_line import option_dest
from search.trial import PRUNED_REASON
from utils import distributed
from utils.checkpoint import load_checkpoint
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
    a fold's last epoch stops the folds after it (`TrainingInterrupted`). The folds keep their
    record (`FoldsRecord`): `-r` it to go on after an interruption."""
    folds = config.cli_args.folds
    if not folds:
        trainer = train_one(config, [trial] if trial is not None else [])
        return [run_result(trainer)] if trainer is not None else \
            [checkpoint_result(config.resume)] if config.resume is not None else []
    record = FoldsRecord.of_run(config)
    try:
        return _train_folds(config, train_one, trial, record)
    finally:
        record.release()


def _train_folds(config, train_one: Callable, trial, record: "FoldsRecord") -> list[dict]:
    folds, logger = config.cli_args.folds, logging.getLogger("train")
    results, metric = list(record.results), record.monitor
    if record.content["status"] == "pruned":
        logger.warning("Nothing to train: %s is a k-fold trial the sweep's pruner stopped "
                       "after fold %d.", record.path, len(results))
        return results
    if record.content["status"] == "complete":
        logger.warning("Nothing to train: %s is a complete k-fold run.", record.path)
        report_folds(record, summarize_folds(results, metric), written=True)
        return results
    for index in range(len(results), folds):
        if trial is not None:
            trial.next_fold(index, folds)
        run_config = record.resumed_fold(config, index + 1) or fold_config(config, index + 1)
        try:
            # a resumed fold that had stopped early (or was pruned) is finished: not trained on
            trainer = None if ended_early(run_config.resume) else \
                train_one(run_config, [*([trial] if trial is not None else []), record])
        except TrainingInterrupted as stop:
            raise record.interrupted(stop, index + 1) from None
        if trainer is None:  # a resumed fold that had finished: its checkpoint's result
            result = checkpoint_result(run_config.resume)
            metric = TrainerSettings.from_config(run_config["trainer"]).parsed_monitor.metric
        else:
            result, metric = run_result(trainer), trainer.monitor.metric
        results.append(result)
        pruned = (result["stop_reason"] or "").startswith(PRUNED_REASON)  # the same everywhere
        record.fold_done(result, metric, "pruned" if pruned else "running")
        if pruned:
            return results
        signum = distributed.max_value(trainer.stop_signals.poll() or 0) if trainer else 0
        if signum and index + 1 < folds:
            message = (f"Stopped by {signal_name(signum)} after fold {index + 1} of {folds}; "
                       f"the folds after it were not trained")
            logger.warning(message)
            raise record.interrupted(TrainingInterrupted(signum, message), index + 2)
    report_folds(record, summarize_folds(results, metric))
    return results


def train_search_runs(config, train_one: Callable) -> None:
    """train.py with `--folds K` or `--trial`: the folds (or the one run) and, as a sweep's
    trial, its report to the study."""
    from search.trial import StudyTrial, parse_trial

    trial = StudyTrial(parse_trial(config.cli_args.trial)) if config.cli_args.trial else None
    results = train_runs(config, train_one, trial)
    if trial is not None:
        trial.finish(results)


def run_result(trainer) -> dict:
    """What a finished run reports: its folder, the monitored value at its best epoch with
    every value logged then, how many epochs it trained and why it stopped early (or None)."""
    return {"run": str(trainer.checkpoint_dir), "best": trainer.best.value,
            "best_epoch": trainer.best.epoch, "values": dict(trainer.best.log),
            "epochs": trainer.last_epoch, "stop_reason": trainer.stop_reason}


def ended_early(path: Path | None) -> bool:
    """Whether the checkpoint a run resumes from is where it stopped before its last epoch
    (early stop, the pruner): that run is finished."""
    return path is not None and bool(load_checkpoint(path, mmap=True).get("stop_reason"))


def checkpoint_result(path: Path) -> dict:
    """`run_result` of a run that had finished, from its newest checkpoint `path` (resumed
    with nothing left to train)."""
    checkpoint = load_checkpoint(path, mmap=True)
    return {"run": str(Path(path).parent), "best": checkpoint["monitor_best"],
            "best_epoch": checkpoint.get("best_epoch"),
            "values": dict(checkpoint.get("best_log") or {}), "epochs": checkpoint["epoch"],
            "stop_reason": checkpoint.get("stop_reason")}


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


def report_folds(record: "FoldsRecord", summary: dict, written: bool = False) -> None:
    """The folds' table on the console, and the summary in the k-fold run's record (unless
    `written` there already)."""
    if not written:
        record.complete_with(summary)  # every process: a failure there stops them all
    if not distributed.is_main():
        return
    logging.getLogger("train").info(
        "%d-fold cross-validation (%s at each fold's best epoch):\n%s\nSummary: %s",
        len(summary["folds"]), summary["monitor"], "\n".join(fold_table(summary)), record.path)


class FoldsRecord(Callback):
    """A k-fold run's own file, `<run id>-folds.json` beside its folds' run folders (`_1`,
    `_2`, ... when an earlier k-fold run of the id has one: each keeps its own folds).

    Written when the first fold's run folder opens, as each fold opens and ends, and at the
    end with the summary (`"status": "complete"`); it holds the config the folds came from.
    `train.py -r <record>` goes on with an interrupted k-fold run: the finished folds as they
    are, the interrupted one from its newest checkpoint, then the rest and the summary. Rank 0
    holds the record's lock for the whole k-fold run: one writer, however it is started.
    """

    def __init__(self, path: Path | None, content: dict):
        self.path, self.content = path, content
        self._lock = None

    @classmethod
    def of_run(cls, config) -> "FoldsRecord":
        """The record of `config`'s k-fold run: the one `-r` named (read under its lock), or a
        new one, made when its first fold starts."""
        given = getattr(config.cli_args, "folds_record", None)
        content = {"status": "running", "run_id": config.run_id, "k": config.cli_args.folds,
                   "monitor": "", "folds": [], "training": None, "config": config.config}
        record = cls(Path(given) if given else None, content)
        with distributed.all_or_none("opening the k-fold record"):
            if given and distributed.is_main():
                record._take_lock()
                record.content = read_record(record.path)  # decided under the lock
        record.content = distributed.from_main(record.content)
        return record

    @property
    def results(self) -> list[dict]:
        return self.content["folds"]

    @property
    def monitor(self) -> str:
        return self.content["monitor"]

    def resumed_fold(self, config, fold: int):
        """The config that resumes fold `fold` from its run folder's newest checkpoint, when
        the record says it was training; None to start it anew (no checkpoint in it yet)."""
        from parse_config import ConfigParser
        from runs.run_folder import resolve_resume

        folder = self.content.get("training")
        if not folder or len(self.results) + 1 != fold:
            return None
        try:
            resume = resolve_resume(folder, with_config=False)
        except UserError as error:
            logging.getLogger("train").warning("Fold %d starts again: %s", fold, error)
            return None
        resumed = ConfigParser(resume.config, resume=resume.path,
                               run_id=f"{config.run_id}-fold{fold}",
                               continue_run=resume.continue_run, log_dir=resume.log_dir)
        resumed.cli_args = config.cli_args
        return resumed

    def on_train_start(self, trainer) -> None:
        """A fold's run folder is open: the record says where it trains."""
        self.content["training"] = str(trainer.checkpoint_dir)
        self._write()

    def fold_done(self, result: dict, monitor: str, status: str = "running") -> None:
        """A fold ended with `result`; `status` "pruned": the folds end with it."""
        self.content.update(training=None, monitor=monitor, status=status)
        self.results.append(result)
        self._write()

    def complete_with(self, summary: dict) -> None:
        self.content.update(status="complete", mean=summary["mean"], std=summary["std"])
        self._write()

    def interrupted(self, stop: TrainingInterrupted, fold: int) -> TrainingInterrupted:
        """`stop`, with how to go on with the folds (fold `fold` next) when it has a record."""
        if self.path is None:
            return stop
        from runs.run_folder import resume_command

        folds = self.content["k"]
        rest = {folds: "then the summary", folds - 1: f"then fold {folds} and the summary"}.get(
            fold, f"then folds {fold + 1}-{folds} and the summary")
        how = (f"To go on with the cross-validation (fold {fold} "
               f"{'from its checkpoint' if self.content.get('training') else 'anew'}, {rest}): "
               f"{resume_command(self.path)}")
        logging.getLogger("train").warning(how)
        message = f"{stop} {how}"
        return TrainingInterrupted(stop.signum, message)

    def release(self) -> None:
        if self._lock is not None:
            self._lock.release()
            self._lock = None

    def _write(self) -> None:
        """Rank 0 writes; every process calls it (a failure there stops them all)."""
        with distributed.all_or_none("writing the k-fold record"):
            if not distributed.is_main():
                return
            if self.path is None:  # the first fold's folder is open: the record starts
                folder = Path(self.content["training"]).parent
                self.path = _free_summary_path(folder, self.content["run_id"])
                self._take_lock()
            write_json(self.content, self.path)

    def _take_lock(self) -> None:
        from runs.run_lock import RunLock

        self._lock = RunLock(self.path.parent, f".{self.path.name}.lock",
                             busy=f"{self.path}: another process is going on with this k-fold "
                                  f"run ({{holder}}); wait for it to end")
        self._lock.acquire()


def read_record(path: Path) -> dict:
    """The content of a k-fold run's record, checked; a `UserError` naming the file."""
    try:
        content = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"-r {path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise UserError(f"-r {path}: not a k-fold run's record ({type(error).__name__})") \
            from None
    keys = {"status", "run_id", "k", "monitor", "folds", "training", "config"}
    if not isinstance(content, dict) or not keys <= set(content) or \
            not isinstance(content["k"], int) or not isinstance(content["folds"], list) \
            or not isinstance(content["config"], dict):
        raise UserError(f"-r {path}: not a k-fold run's record (<run id>-folds.json, written by "
                        f"train.py --folds K)")
    return content


def folds_config(args, options) -> "ConfigParser":  # noqa: F821 (parse_config: imported here)
    """`train.py -r <run id>-folds.json`: the config the k-fold run started from, to go on
    with it as it started (no -c, no options that change the config)."""
    from parse_config import ConfigParser

    given = [flag for flag, value in [("-c", args.config), ("--run-id", args.run_id),
                                      ("-o", args.override or None),
                                      *((option.flags[0], getattr(args, option_dest(option.flags)))
                                        for option in options)] if value is not None]
    if given:
        raise UserError(f"-r {args.resume}: goes on with a k-fold run as it started; "
                        f"{', '.join(given)} would make its folds differ (start a new k-fold "
                        f"run with -c instead)")
    content = read_record(Path(args.resume))
    if args.folds is not None and args.folds != content["k"]:
        raise UserError(f"--folds {args.folds}: {args.resume} is a {content['k']}-fold run")
    args.folds, args.folds_record = content["k"], args.resume
    config = ConfigParser(content["config"], run_id=content["run_id"])
    config.cli_args = args
    return config


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
