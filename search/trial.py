"""A training run as one trial of an Optuna study: `sweep.py` starts `train.py ... --trial SPEC`.

The run reports the monitored value at every epoch end (with k-fold, fold k's epochs come after
fold k-1's), stops where the study's pruner says (its checkpoint's `stop_reason` says so) and
tells the study its outcome at the end: the best monitored value (the mean over folds), or
pruned. Under torchrun only rank 0 talks to the study. Optuna is imported only here.
"""
import json
import warnings
from pathlib import Path

from base.callbacks import Callback
from utils import distributed
from utils.errors import UserError

PRUNED_REASON = "pruned by the sweep's pruner"
LOST_TRIAL_RETRIES = 3  # a trial whose machine was lost is run again at most this often


def parse_trial(text: str) -> dict:
    """`--trial`'s JSON: {"storage": URL, "study": name, "number": n, "sweep": folder,
    "pruner": name, "prune_after": n}."""
    try:
        spec = json.loads(text)
    except json.JSONDecodeError as error:
        raise UserError(f"--trial: not JSON ({error})") from None
    if not isinstance(spec, dict) or not {"storage", "study", "number"} <= set(spec):
        raise UserError("--trial: expected {\"storage\": ..., \"study\": ..., \"number\": ...} "
                        "(sweep.py gives it)")
    return spec


def make_pruner(name: str, prune_after: int):
    """The study's pruner: `median` (after `prune_after` trials ran to the end), `hyperband`,
    `none`. The process that asks whether to prune builds it: Optuna does not store it."""
    import optuna

    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=prune_after)
    return optuna.pruners.HyperbandPruner() if name == "hyperband" else optuna.pruners.NopPruner()


def sqlite_file(url: str) -> Path | None:
    """The database file of a SQLite storage URL (`sqlite:///study.db`), else None."""
    scheme, _, rest = url.partition("://")
    if not scheme.startswith("sqlite") or not rest.lstrip("/"):
        return None
    return Path(rest[1:] if rest.startswith("/") else rest)


# the pip package of each database driver SQLAlchemy can be told to use (`postgresql+psycopg://`)
DRIVER_PACKAGES = {"psycopg": "psycopg[binary]", "psycopg2": "psycopg2-binary",
                   "pymysql": "pymysql", "mysqldb": "mysqlclient", "pg8000": "pg8000"}
# what a database says when another process created the study's tables at the same instant
_OTHER_DRIVER = {"postgresql": "psycopg", "mysql": "pymysql"}  # for the hint of a missing one
TABLE_RACE = ("already exists", "duplicate key", "UniqueViolation", "UNIQUE constraint failed",
              "database is locked")
TABLE_RACE_TRIES = 8


def open_storage(url: str, heartbeat: float | None = None):
    """Optuna's database storage at `url`; SQLite waits for a busy database instead of failing
    (several trial processes write to one file). Several machines opening a fresh database at
    once race to create its tables: the loser tries again. `heartbeat` (seconds): the sweep
    records one for its trials that often, and a trial no sweep has beaten for three times as
    long is failed and queued again (its machine is lost: `sweep.py`'s `--heartbeat`)."""
    import optuna

    engine = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {}
    database = sqlite_file(url)
    if database is not None:
        refuse_foreign_sqlite(database)
    where = str(database) if database is not None else f"--storage {storage_identity(url)}"
    driver_problem = _driver_problem(url)
    if driver_problem:
        raise UserError(f"{where}: {driver_problem}")
    with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return _rdb_storage(url, engine, where, heartbeat)


def _rdb_storage(url: str, engine: dict, where: str, heartbeat: float | None):
    """Optuna's RDBStorage at `url`, tried again when another machine's table creation won
    the race; `where` names it in the one-line error."""
    import random
    import time

    import optuna

    options = {}
    if heartbeat is not None:
        interval = max(1, round(heartbeat))
        options = {"heartbeat_interval": interval, "grace_period": 3 * interval,
                   "heartbeat_stale_trial_callback":
                       optuna.storages.RetryHeartbeatStaleTrialCallback(
                           max_retry=LOST_TRIAL_RETRIES, inherit_intermediate_values=True)}
    for attempt in range(TABLE_RACE_TRIES):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=engine, **options)
        except Exception as error:  # noqa: BLE001 (why: a URL's driver, host or database; all the user's)
            if attempt + 1 < TABLE_RACE_TRIES and any(mark in str(error) for mark in TABLE_RACE):
                time.sleep(random.uniform(0.05, 0.5))  # the other machine's tables: try again
                continue
            reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
            raise UserError(f"{where}: cannot open the study's database "
                            f"({type(error).__name__}: {reason})") from None
    raise AssertionError("unreachable")


def retry_history(trial) -> list[int]:
    """The trials `trial` runs again, each lost with its machine, the first one first (Optuna's
    RetryHeartbeatStaleTrialCallback records them); empty for a trial of its own."""
    return list(trial.system_attrs.get("retry_history") or [])


def lost_numbers(trials) -> set[int]:
    """The trials lost with their machine and queued again."""
    return {number for trial in trials for number in retry_history(trial)}


def _driver_problem(url: str) -> str | None:
    """What keeps SQLAlchemy from opening `url` before it connects: a scheme it does not know,
    or the database driver it would use not installed (SQLAlchemy 2.1 opens `postgresql://`
    with psycopg 3, 2.0 with psycopg2: naming the driver, `postgresql+psycopg://`, holds for
    both)."""
    import sqlalchemy
    from sqlalchemy.engine import make_url

    scheme, _, rest = url.partition("://")
    if scheme.startswith("sqlite") and not rest.lstrip("/").strip() or ":memory:" in rest:
        return ("an in-memory SQLite database is not shared with the trial processes; give a "
                "file, e.g. sqlite:///path/study.db")
    try:
        parsed = make_url(url)
        dialect = parsed.get_dialect()
    except sqlalchemy.exc.NoSuchModuleError:  # (an ArgumentError too)
        hint = " (did you mean postgresql+psycopg://?)" if scheme.startswith("postgres") else ""
        return f"SQLAlchemy knows no database {scheme}://{hint}"
    except sqlalchemy.exc.ArgumentError:
        return ("not a database URL (expected e.g. postgresql+psycopg://user@host/database or "
                "sqlite:///path/study.db)")
    try:
        dialect.import_dbapi()
    except ImportError:
        driver = parsed.get_driver_name()
        package = DRIVER_PACKAGES.get(driver, driver)
        return (f"{scheme}:// needs the database driver {driver!r}, which is not installed "
                f"(SQLAlchemy {sqlalchemy.__version__} opens {parsed.get_backend_name()} with "
                f"it): pip install \"{package}\", or name a driver you have in the URL, e.g. "
                f"{parsed.get_backend_name()}+{_OTHER_DRIVER.get(parsed.get_backend_name(), driver)}://")
    return None


def storage_identity(url: str) -> str:
    """The storage a study lives in, as `sweep.json` keeps it and messages show it: the URL
    without a password (`postgresql+psycopg://user@host/db`), a SQLite path resolved."""
    scheme, _, rest = url.partition("://")
    path = sqlite_file(url)
    if path is not None:
        return f"{scheme}:///{path.resolve()}"
    credentials, at, place = rest.rpartition("@")
    return f"{scheme}://{credentials.split(':')[0]}{at}{place}" if at else url


def refuse_foreign_sqlite(database: Path) -> None:
    """A SQLite file that holds tables, none of them Optuna's, is someone else's database:
    Optuna would add its tables to it. One line instead (a damaged file is Optuna's to find)."""
    import sqlite3

    if not database.is_file() or database.stat().st_size == 0:
        return
    connection = None
    try:
        connection = sqlite3.connect(f"file:{database}?mode=ro", uri=True)
        tables = [row[0] for row in connection.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")]
    except sqlite3.Error:
        return
    finally:
        if connection is not None:
            connection.close()
    if tables and "studies" not in tables:
        shown = ", ".join(sorted(tables)[:5]) + (", ..." if len(tables) > 5 else "")
        raise UserError(f"{database}: a SQLite database that is not an Optuna study's (its "
                        f"tables: {shown}); nothing was added to it. Give the study a file of its "
                        f"own with --storage")


def trial_handle(study, storage, number: int):
    """A live handle on trial `number` of `study` (to report, set attributes, sample),
    through the storage's public lookups."""
    import optuna

    return optuna.trial.Trial(study, trial_id(storage, study.study_name, number))


def trial_id(storage, study_name: str, number: int) -> int:
    """The storage's id of trial `number` of study `study_name`."""
    return storage.get_trial_id_from_study_id_trial_number(
        storage.get_study_id_from_name(study_name), number)


class StudyTrial(Callback):
    """The trial `spec` names, for one run or the K runs of k-fold cross-validation; it
    reports the trainer's monitored value."""

    def __init__(self, spec: dict):
        self.spec = spec
        # the fold training now, of how many (its epochs are reported after the earlier folds')
        self.fold, self.folds = 0, 1
        self.study = self.trial = None
        if distributed.is_main():
            import optuna

            optuna.logging.set_verbosity(optuna.logging.WARNING)
            storage = open_storage(spec["storage"])
            pruner = make_pruner(spec.get("pruner", "none"), spec.get("prune_after", 0))
            self.study = optuna.load_study(study_name=spec["study"], storage=storage,
                                           pruner=pruner)
            self.trial = trial_handle(self.study, storage, spec["number"])

    def next_fold(self, index: int, folds: int) -> None:
        """Fold `index` (from 0) of `folds` starts."""
        self.fold, self.folds = index, folds

    def on_epoch_end(self, trainer, epoch: int, log: dict) -> None:
        import optuna

        metric = trainer.monitor.metric
        if self.trial is None or metric not in log:
            return
        try:
            self.trial.report(float(log[metric]), self.fold * trainer.settings.epochs + epoch)
        except optuna.exceptions.UpdateFinishedTrialError:
            self._taken_over(trainer.logger)
            return
        last = self.fold == self.folds - 1 and epoch >= trainer.settings.epochs
        if not last and self.trial.should_prune():  # the last epoch saves nothing: it completes
            trainer.request_stop(f"{PRUNED_REASON} at epoch {epoch} ({metric} "
                                 f"{log[metric]:.6g})")

    def finish(self, results: list[dict]) -> None:
        """Tell the study the trial's outcome from its runs' results (`run_result`): pruned,
        or the mean of their best values."""
        if self.trial is None or not results:  # not rank 0, or taken over
            return
        import logging

        import optuna

        try:
            if any((result["stop_reason"] or "").startswith(PRUNED_REASON)
                   for result in results):
                self.study.tell(self.spec["number"], state=optuna.trial.TrialState.PRUNED)
            else:
                self.study.tell(self.spec["number"],
                                sum(result["best"] for result in results) / len(results))
        except optuna.exceptions.UpdateFinishedTrialError:
            self._taken_over(logging.getLogger("train"))

    def _taken_over(self, logger) -> None:
        """The study ended this trial while it ran: its sweep stopped beating (its machine
        was cut off, say) and another machine runs it again. Training goes on here; the
        study no longer hears of it."""
        if self.trial is not None:
            logger.warning("Warning: the study counts trial %d as lost (no heartbeat from its "
                           "sweep) and runs it again elsewhere; this run's results stay in its "
                           "run folder only.", self.spec["number"])
        self.trial = None
