"""Hyperparameter search on Optuna (`sweep.py`): the study, its trials as `train.py` processes,
and what a sweep leaves behind (the trials' table, `best_config.json`).

A sweep's folder, `<save_dir>/sweeps/<study>/`, holds `sweep.json` (what the study searches:
the base config, the space, the folds), `study.db` (the Optuna study, unless `--storage` names
a shared database), `trials/trial-NNNN.json` (each trial's config) and `.log` (its output),
and the trials' run folders under `models/` and `log/` as any run's.
"""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from base.settings import Monitor
from search.search_space import sample
from search.trial import make_pruner, open_storage, sqlite_file, trial_handle
from utils.errors import UserError
from utils.files import read_json, write_json
from utils.interrupts import StopWithParent
from utils.seeding import derive_seed

ROOT = Path(__file__).resolve().parent.parent
INTERRUPTED_CODES = (128 + signal.SIGHUP, 128 + signal.SIGINT, 128 + signal.SIGTERM)


def trial_name(number: int) -> str:
    return f"trial-{number:04d}"


class Sweep:
    """One study worked on by this process: `trials` in all, `jobs` trial processes at a time.
    `trial_config(values)`: the config a trial with `{key.path: value}` trains with, or the
    problems (one line) that keep the template from training it."""

    def __init__(self, folder: Path, definition: dict, storage: str, study: str, options: dict,
                 trial_config: Callable[[dict], dict | str]):
        self.folder, self.definition = folder, definition
        self.storage_url, self.study_name = storage, study
        self.options = options  # trials, jobs, seed, sampler, pruner, prune_after, torchrun
        self.trial_config = trial_config
        self.running: dict[int, subprocess.Popen] = {}
        self.stopping = 0  # the signal that stops the sweep
        self.host = socket.gethostname()
        self._storage = None

    @property
    def storage(self):
        if self._storage is None:
            self._storage = open_storage(self.storage_url)
        return self._storage

    # ------------------------------------------------------------------ the study
    def study(self, seed: int | None = None):
        """The study (created on first use), with this sweep's sampler seeded by `seed` and
        its pruner."""
        import optuna

        options = self.options
        sampler = (optuna.samplers.RandomSampler if options["sampler"] == "random" else
                   optuna.samplers.TPESampler)(seed=seed)
        pruner = make_pruner(options["pruner"], options["prune_after"])
        mode = Monitor.parse(self.definition["monitor"]).mode
        return optuna.create_study(storage=self.storage,
                                   study_name=self.study_name, sampler=sampler, pruner=pruner,
                                   direction="minimize" if mode == "min" else "maximize",
                                   load_if_exists=True)

    def _claim(self, study, number: int, pid: int, threads: str | None = None) -> None:
        """Mark trial `number` as this machine's and this sweep's, run by process `pid`
        (with `threads` for torch): a sweep run again resumes it once that process is gone."""
        handle = trial_handle(study, self.storage, number)
        for key, value in (("host", self.host), ("pid", pid), ("started", start_time(pid)),
                           ("sweep", str(self.folder)), ("run", trial_name(number)),
                           ("threads", threads), ("torchrun", self.options.get("torchrun"))):
            handle.set_user_attr(key, value)

    # ------------------------------------------------------------------ running it
    def run(self) -> int:
        """Run trials until the study has `trials` of them; 0, or 128 + the stopping signal."""
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        previous = {signum: signal.signal(signum, self._stop)
                    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        try:
            while True:
                self._reap()
                if not self.stopping:
                    self._fill()
                if not self.running:
                    break
                time.sleep(0.2)
        except BaseException:  # the sweep itself failed (its database, say): no orphan trials
            self._stop_trials()
            raise
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
        return 128 + self.stopping if self.stopping else 0

    def _stop(self, signum, frame) -> None:
        if self.stopping:
            return
        self.stopping = signum
        self._stop_trials()
        try:  # a closed terminal (SIGHUP) cannot be written to: the trials are told already
            os.write(sys.stdout.fileno(), f"Sweep stopping ({signal.Signals(signum).name}): "
                     f"the running trials save their checkpoints; run the same command again "
                     f"to go on.\n".encode())
        except (OSError, ValueError):
            pass

    def _stop_trials(self) -> None:
        for process in self.running.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)  # torchrun passes it on to its workers

    def _fill(self) -> None:
        """Start trials while fewer than `jobs` run: interrupted ones of this sweep first,
        then new ones while the study has fewer than `trials`."""
        while not self.stopping and len(self.running) < self.options["jobs"]:
            study = self.study()
            trials = study.get_trials(deepcopy=False)
            waiting = [trial for trial in trials if self._resumable(trial)]
            if waiting:
                self._start(study, waiting[0].number, resume=True)
                continue
            if len(trials) >= self.options["trials"]:
                return
            number = study.ask().number
            self._claim(study, number, os.getpid())  # ours, should this process die now
            # trial n samples with a sampler seeded by (seed, n): the same command samples
            # the same parameters, also after a stop; machines sharing a study differ
            seeded = self.study(derive_seed(self.options["seed"], number) % 2**32)
            seeded.get_trials(deepcopy=False)  # it knows the new trial: it may sample for it
            values = sample(trial_handle(seeded, self.storage, number), self.definition["space"])
            problem = self._write_trial_config(number, values)
            if problem:  # a sampled config the template refuses: failed, not run
                self._fail(study, number, problem)
                continue
            self._start(study, number, resume=False)

    def _resumable(self, trial) -> bool:
        """A trial of this sweep on this machine left running by a stopped sweep."""
        import optuna

        attrs = trial.user_attrs
        return trial.state == optuna.trial.TrialState.RUNNING and \
            trial.number not in self.running and attrs.get("host") == self.host and \
            attrs.get("sweep") == str(self.folder) and \
            not process_alive(attrs.get("pid"), attrs.get("started"))

    def _write_trial_config(self, number: int, values: dict) -> str | None:
        """Write trial `number`'s config (the base config with `values`); its problems as one
        line when the template refuses it."""
        config = self.trial_config(values)
        if isinstance(config, str):
            return config
        write_json(config, self.folder / "trials" / f"{trial_name(number)}.json")
        return None

    def _start(self, study, number: int, resume: bool) -> None:
        name = trial_name(number)
        spec = json.dumps({"storage": self.storage_url, "study": self.study_name,
                           "number": number, "sweep": str(self.folder),
                           "pruner": self.options["pruner"],
                           "prune_after": self.options["prune_after"]})
        # what resumes the trial: its run folder, or with k-fold the folds' record
        run_folder = self.run_folder(f"{name}-fold1" if self.definition.get("folds") else name)
        target = run_folder.parent / f"{name}-folds.json" if self.definition.get("folds") \
            else run_folder
        if resume and target.exists() and not self._is_own_trial(run_folder, number):
            print(f"{name}: {run_folder} is not this study's trial {number} (its manifest says "
                  f"otherwise); the trial starts again", flush=True)
            resume = False
        resume = resume and target.exists()
        if resume:
            arguments = ["-r", str(target)]
        else:
            arguments = ["-c", str(self.folder / "trials" / f"{name}.json"), "--run-id", name]
            if self.definition.get("folds"):
                arguments += ["--folds", str(self.definition["folds"])]
        torchrun = self.options.get("torchrun")
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone",
                    f"--nproc_per_node={torchrun}"] if torchrun else [sys.executable]
        environment = self._trial_environment()
        log = open(self.folder / "trials" / f"{name}.log", "a", encoding="utf-8")
        with log:
            process = subprocess.Popen([*launcher, str(ROOT / "train.py"), *arguments,
                                        "--trial", spec], stdout=log, stderr=subprocess.STDOUT,
                                       cwd=os.getcwd(), env=environment,
                                       start_new_session=True, preexec_fn=StopWithParent())
        self._claim(study, number, process.pid, environment.get("OMP_NUM_THREADS"))
        self.running[number] = process
        if self.stopping:  # the signal came while it was being started
            process.send_signal(signal.SIGTERM)
        print(f"{name}: {'resumed from its checkpoint' if resume else 'started'} "
              f"({self._params_text(study, number)})", flush=True)

    def _trial_environment(self) -> dict[str, str]:
        """The trials share this machine's cores: each process's torch uses its share of them
        (OMP_NUM_THREADS, unless set), where all of them each would oversubscribe the cores and
        slow every trial down many times over."""
        if "OMP_NUM_THREADS" in os.environ:
            return dict(os.environ)
        processes = self.options["jobs"] * (self.options.get("torchrun") or 1)
        return {**os.environ, "OMP_NUM_THREADS": str(max(1, (os.cpu_count() or 1) // processes))}

    def _is_own_trial(self, run_folder: Path, number: int) -> bool:
        """Whether `run_folder` was trained as trial `number` of this study in this sweep
        folder: its manifest's sessions say so."""
        from runs.manifest import read_manifest

        sessions = (read_manifest(run_folder) or {}).get("sessions") or []
        own = {"study": self.study_name, "number": number, "sweep": str(self.folder)}
        return any(isinstance(session, dict) and session.get("trial") == own
                   for session in sessions)

    def run_folder(self, name: str) -> Path:
        return self.folder / "models" / self.definition["config"]["name"] / name

    def _params_text(self, study, number: int) -> str:
        trial = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
        return ", ".join(f"{key}={json.dumps(value)}" for key, value in trial.params.items())

    def _reap(self) -> None:
        """Trials whose process ended: a crash is the trial failed (the sweep goes on); an
        interrupted trial stays running in the study, to be resumed."""
        import optuna

        for number, process in list(self.running.items()):
            code = process.poll()
            if code is None:
                continue
            del self.running[number]
            study = self.study()
            trial = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
            if trial.state != optuna.trial.TrialState.RUNNING:
                value = f"value {trial.value:.6g}" if trial.value is not None else "no value"
                print(f"{trial_name(number)}: {trial.state.name.lower()} ({value})", flush=True)
            elif self.stopping or code in INTERRUPTED_CODES or -code in (signal.SIGTERM,
                                                                          signal.SIGINT):
                # (torchrun ends with 1 on the SIGTERM it passed on to its workers)
                print(f"{trial_name(number)}: interrupted; it resumes from its checkpoint when "
                      f"the sweep runs again", flush=True)
            else:
                self._fail(study, number, f"exit code {code}: " + _last_error(
                    self.folder / "trials" / f"{trial_name(number)}.log"))

    def _fail(self, study, number: int, error: str) -> None:
        """Trial `number` failed: why, as its `error` attribute and on the console."""
        import optuna

        trial_handle(study, self.storage, number).set_user_attr("error", error)
        study.tell(number, state=optuna.trial.TrialState.FAIL)
        print(f"{trial_name(number)}: failed ({error})", flush=True)


def start_time(pid: int) -> str | None:
    """When process `pid` started (clock ticks after boot, from /proc/PID/stat), None where
    that is unknown: with the pid it names one process, also once the pid is reused."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[-1].split()[19]  # field 22; the name before ")" may hold spaces


def process_alive(pid, started: str | None = None) -> bool:
    """Whether process `pid` runs, and is the one that started at `started` (`start_time`)
    when that is known — not a later process given the same pid."""
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    now = start_time(pid)
    return started is None or now is None or now == started


# the template's one-line errors and an exception's last line, with torchrun's rank prefixes
_ERROR_LINE = re.compile(r"(\[rank ?\d+\]:? )*(error: |[\w.]+(Error|Exception): )")


def _last_error(log: Path) -> str:
    """The `error:` line a failed trial printed last, else its output's last line."""
    try:
        lines = [line.strip() for line in log.read_text(errors="replace").splitlines()
                 if line.strip()]
    except OSError:
        return "no output"
    errors = [line for line in lines if _ERROR_LINE.match(line)]
    return (errors or lines or ["no output"])[-1]


def storage_identity(url: str) -> str:
    """The storage a study lives in, as `sweep.json` keeps it: the URL without a password
    (`postgresql://user@host/db`), a SQLite path resolved."""
    scheme, _, rest = url.partition("://")
    path = sqlite_file(url)
    if path is not None:
        return f"{scheme}:///{path.resolve()}"
    credentials, at, place = rest.rpartition("@")
    return f"{scheme}://{credentials.split(':')[0]}{at}{place}" if at else url


def load_definition(folder: Path, definition: dict) -> dict:
    """`definition` saved as the sweep's `sweep.json`, or checked against the one there: a
    study goes on only with what it started with."""
    path = folder / "sweep.json"
    if path.is_file():
        saved = read_json(path)
        saved.setdefault("storage", definition.get("storage"))  # a sweep from before it was kept
        if saved.get("storage") != definition.get("storage"):
            raise UserError(f"{folder}: this sweep folder belongs to study {folder.name!r} in "
                            f"{saved['storage']}, not in {definition.get('storage')}; give "
                            f"--study another name for another study, or that --storage")
        if saved != json.loads(json.dumps(definition)):
            changed = [key for key in definition if saved.get(key) != definition[key]]
            raise UserError(f"{path}: this study was started with another "
                            f"{' and '.join(changed)}; give --study a new name to start "
                            f"another study")
        return saved
    write_json(definition, path)
    return definition
