"""A training run as one trial of an Optuna study: `sweep.py` starts `train.py ... --trial SPEC`.

The run reports the monitored value at every epoch end (with k-fold, fold k's epochs come after
fold k-1's), stops where the study's pruner says (its checkpoint's `stop_reason` says so) and
tells the study its outcome at the end: the best monitored value (the mean over folds), or
pruned. Under torchrun only rank 0 talks to the study. Optuna is imported only here.
"""
import json
from pathlib import Path

from base.callbacks import Callback
from utils import distributed
from utils.errors import UserError

PRUNED_REASON = "pruned by the sweep's pruner"


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


def open_storage(url: str):
    """Optuna's database storage at `url`; SQLite waits for a busy database instead of failing
    (several trial processes write to one file)."""
    import optuna

    engine = {"connect_args": {"timeout": 120}} if url.startswith("sqlite") else {}
    database = sqlite_file(url)
    if database is not None:
        refuse_foreign_sqlite(database)
    try:
        return optuna.storages.RDBStorage(url, engine_kwargs=engine)
    except Exception as error:  # noqa: BLE001 (why: a URL's driver, host or database; all the user's)
        reason = (str(error).strip().splitlines() or [type(error).__name__])[0]
        # a SQLite file is named (no password in it); another URL only by its scheme
        database = sqlite_file(url)
        where = str(database) if database is not None else f"--storage {url.split('://')[0]}://..."
        raise UserError(f"{where}: cannot open the study's database ({type(error).__name__}: "
                        f"{reason})") from None


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

    trial_id = storage.get_trial_id_from_study_id_trial_number(
        storage.get_study_id_from_name(study.study_name), number)
    return optuna.trial.Trial(study, trial_id)


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
        metric = trainer.monitor.metric
        if self.trial is None or metric not in log:
            return
        self.trial.report(float(log[metric]), self.fold * trainer.settings.epochs + epoch)
        last = self.fold == self.folds - 1 and epoch >= trainer.settings.epochs
        if not last and self.trial.should_prune():  # the last epoch saves nothing: it completes
            trainer.request_stop(f"{PRUNED_REASON} at epoch {epoch} ({metric} "
                                 f"{log[metric]:.6g})")

    def finish(self, results: list[dict]) -> None:
        """Tell the study the trial's outcome from its runs' results (`run_result`): pruned,
        or the mean of their best values."""
        if self.study is None or not results:
            return
        import optuna

        if any((result["stop_reason"] or "").startswith(PRUNED_REASON) for result in results):
            self.study.tell(self.spec["number"], state=optuna.trial.TrialState.PRUNED)
        else:
            self.study.tell(self.spec["number"],
                            sum(result["best"] for result in results) / len(results))
