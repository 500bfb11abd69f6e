"""`trainer.mlflow`: the run tracked in MLflow, beside TensorBoard.

A callback `train.py` adds when the config has the block; MLflow is an optional dependency
(`pip install mlflow`), imported only then. On rank 0 it opens the tracking store before the
run folder is made (a store that cannot be opened is one line, nothing written), then: the
effective config as params (key paths), `config.json` as an artifact, each epoch's logged values
as metrics (step: the epoch), at the end the run's model (`model_best.pth`, else the last
checkpoint) as an artifact and the run's status. The MLflow run's id goes into the run folder's
manifest: a resumed run (`-r`) continues the same MLflow run, and `test.py` adds its report to it.
"""
import json
import logging
import math
import os
import time
from importlib.util import find_spec
from pathlib import Path

from base.callbacks import Callback
from base.settings import MLFLOW_OPTIONS
from runs.manifest import note_in_session, read_manifest
from utils.errors import UserError
from utils.interrupts import TrainingInterrupted

PARAM_LENGTH = 6000  # MLflow's longest param value
BATCH = 100  # MLflow's most params in one log_batch call
# A tracking server that does not answer costs seconds, not MLflow's default of minutes (7
# retries with backoff, 120 s timeouts); the environment's own settings win.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
URI_FORMS = "sqlite:///path/to/mlflow.db, http://host:5000, or a database URL"


def require_mlflow() -> None:
    """A `UserError` in one line when MLflow is not installed."""
    if find_spec("mlflow") is None:
        raise UserError("trainer.mlflow: needs the package mlflow, which is not installed: "
                        "pip install mlflow (or set trainer.mlflow to null)")


def options_of(config) -> dict:
    """`trainer.mlflow` with its defaults: the experiment is the config's name; the store
    MLFLOW_TRACKING_URI, else `mlflow.db` in the save_dir (git-ignored with the runs)."""
    block = config["trainer"]["mlflow"]
    options = {key: block.get(key, default) for key, (default, _) in MLFLOW_OPTIONS.items()}
    options["experiment"] = options["experiment"] or config["name"]
    options["tracking_uri"] = options["tracking_uri"] or os.environ.get("MLFLOW_TRACKING_URI") or \
        f"sqlite:///{(Path(config['trainer']['save_dir']) / 'mlflow.db').resolve()}"
    return options


class Store:
    """A connection to the tracking store and the experiment in it."""

    def __init__(self, options: dict):
        require_mlflow()
        for name, value in HTTP_DEFAULTS.items():
            os.environ.setdefault(name, value)
        from mlflow.tracking import MlflowClient

        logging.getLogger("mlflow").setLevel(logging.WARNING)  # its database's INFO lines

        self.options, uri = options, options["tracking_uri"]
        try:
            self.client = MlflowClient(tracking_uri=uri)
            found = self.client.get_experiment_by_name(options["experiment"])
            self.experiment_id = found.experiment_id if found is not None else \
                self.client.create_experiment(options["experiment"],
                                              artifact_location=self.artifact_location())
        except Exception as error:  # noqa: BLE001 (why: MLflow's and its database's errors alike)
            raise UserError(f"trainer.mlflow.tracking_uri: cannot open the tracking store {uri} "
                            f"({URI_FORMS}): {first_line(error)}") from None

    def artifact_location(self) -> str | None:
        """Where a new experiment keeps its files: the option, else beside a SQLite database
        (MLflow's default is `mlruns/` in the working directory)."""
        if self.options["artifact_location"]:
            return self.options["artifact_location"]
        uri = self.options["tracking_uri"]
        if uri.startswith("sqlite:///"):
            return (Path(uri[len("sqlite:///"):]).resolve().parent / "mlartifacts").as_uri()
        return None

    def run_of(self, run_dir: Path) -> str | None:
        """The MLflow run the run folder's earlier sessions logged to, when this store has it."""
        sessions = (read_manifest(run_dir) or {}).get("sessions", [])
        ids = [session["mlflow"]["run_id"] for session in sessions
               if isinstance(session.get("mlflow"), dict)]
        if not ids:
            return None
        try:
            run = self.client.get_run(ids[-1])
        except Exception:  # noqa: BLE001 (why: another store, or deleted: a new run)
            return None
        return ids[-1] if run.info.lifecycle_stage == "active" else None


def first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"


def flat_params(config: dict, prefix: str = "") -> dict[str, str]:
    """The config's leaves by key path (`optimizer.args.lr`), as MLflow params (text)."""
    if isinstance(config, dict) and config:
        return {key: value for name, item in config.items()
                for key, value in flat_params(item, f"{prefix}{name}.").items()}
    if isinstance(config, list) and config:
        return {key: value for index, item in enumerate(config)
                for key, value in flat_params(item, f"{prefix}{index}.").items()}
    text = config if isinstance(config, str) else json.dumps(config)
    return {prefix[:-1]: text[:PARAM_LENGTH]}


class MLflowRun(Callback):
    """Logs the run to MLflow (on rank 0: `store` is None on the others)."""

    def __init__(self, config, store: Store | None):
        self.config, self.store = config, store
        self.run_id: str | None = None

    def on_train_start(self, trainer) -> None:
        if self.store is not None:
            self._try(trainer, "the run's start", self._start)

    def _start(self, trainer) -> None:
        from mlflow.entities import Param

        client, run_dir = self.store.client, Path(self.config.save_dir)
        run_id = self.store.run_of(run_dir)
        params = flat_params(self.config.config)
        if run_id is None:
            run_id = client.create_run(
                self.store.experiment_id, run_name=self.config.run_id,
                tags={"run_dir": str(run_dir.resolve()), "mlflow.source.name": "train.py"}
            ).info.run_id
            trainer.logger.info("MLflow run %s in experiment %r", run_id,
                                self.store.options["experiment"])
        else:
            client.update_run(run_id, status="RUNNING")
            logged = client.get_run(run_id).data.params
            changed = [f"{key} ({logged[key]}, now {value})" for key, value in params.items()
                       if key in logged and logged[key] != value]
            if changed:
                trainer.logger.warning("Warning: MLflow keeps a run's params as first logged: "
                                       "%s", ", ".join(changed))
            params = {key: value for key, value in params.items() if key not in logged}
            trainer.logger.info("MLflow run %s continued", run_id)
        self.run_id = run_id
        note_in_session(run_dir, mlflow={"run_id": run_id,
                                         "experiment": self.store.options["experiment"],
                                         "tracking_uri": self.store.options["tracking_uri"]})
        items = [Param(key, value) for key, value in params.items()]
        for start in range(0, len(items), BATCH):
            client.log_batch(run_id, params=items[start:start + BATCH])
        client.log_artifact(run_id, str(run_dir / "config.json"))

    def on_epoch_end(self, trainer, epoch: int, log: dict) -> None:
        if self.run_id is None:
            return
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        values = {**log, **{f"lr{'_' + name if name else ''}": optimizer.param_groups[0]["lr"]
                            for name, optimizer in trainer.optimizers.items()}}
        self._try(trainer, f"epoch {epoch}'s values", lambda _: self.store.client.log_batch(
            self.run_id, metrics=[Metric(key, float(value), now, epoch)
                                  for key, value in values.items()
                                  if isinstance(value, (int, float)) and not math.isnan(value)]))

    def on_train_end(self, trainer, error: BaseException | None) -> None:
        if self.run_id is None:
            return
        status = "FINISHED" if error is None else \
            "KILLED" if isinstance(error, TrainingInterrupted) else "FAILED"
        model = model_file(Path(self.config.save_dir), trainer.last_epoch)

        def end(_) -> None:
            if error is None and self.store.options["log_checkpoint"] and model is not None:
                self.store.client.log_artifact(self.run_id, str(model), "checkpoints")
            self.store.client.set_terminated(self.run_id, status)
        self._try(trainer, "the run's end", end)

    def _try(self, trainer, what: str, action) -> None:
        """`action(trainer)`; when the store fails, a warning, and nothing more of this session
        is sent (a store that does not answer would cost seconds at every epoch)."""
        try:
            action(trainer)
        except Exception as problem:  # noqa: BLE001 (why: a tracking failure ends no training)
            trainer.logger.warning("Warning: MLflow: %s not logged (%s); the rest of this "
                                   "session is not sent to MLflow (the run folder and "
                                   "TensorBoard have it)", what, first_line(problem))
            self.run_id = None


def model_file(run_dir: Path, epoch: int) -> Path | None:
    """The run's model: `model_best.pth`, else the last epoch's checkpoint."""
    for path in (run_dir / "model_best.pth", run_dir / f"checkpoint-epoch{epoch}.pth"):
        if path.is_file():
            return path
    return None


def log_test_report(config, results: dict, epoch: int, report: Path) -> None:
    """`test.py`: the test values (as `test_<name>` at step `epoch`; the sample count as a
    tag) and its report file into the MLflow run that trained the checkpoint, when its run
    folder recorded one."""
    from mlflow.entities import Metric

    store = Store(options_of(config))
    run_id = store.run_of(Path(config.resume).parent)
    if run_id is None:
        print(f"MLflow: no run of {config.resume.parent} in the tracking store; the report was "
              f"not logged there")
        return
    now = int(time.time() * 1000)
    store.client.log_batch(run_id, metrics=[
        Metric(f"test_{key}", float(value), now, epoch) for key, value in results.items()
        if isinstance(value, (int, float)) and key != "n_samples"])
    store.client.set_tag(run_id, "test_n_samples", str(results.get("n_samples")))
    store.client.log_artifact(run_id, str(report), "test")
    print(f"Test values and report logged to MLflow run {run_id}")
