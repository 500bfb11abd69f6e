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
import shutil
import signal
import socket
import subprocess
import sys
import time
import warnings
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from base.settings import Monitor
from search.search_space import sample
from search.trial import lost_numbers, make_pruner, open_storage, retry_history, trial_handle, trial_id
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
        self.time_up = False  # --timeout passed: no new trials
        # the name this machine's trials carry: its hostname, or SWEEP_HOST where that changes
        # at every start (a container) or is shared (two sweep folders on one machine)
        self.host = os.environ.get("SWEEP_HOST") or socket.gethostname()
        self._storage = None
        self.started = time.monotonic()
        self.trial_started: dict[int, float] = {}  # when this sweep started each running trial
        self.durations: list[float] = []  # how long the trials this sweep saw end took
        self.next_beat = 0.0  # when the heartbeats are recorded next (time.monotonic)
        self.announced: set[int] | None = None  # lost trials already said
        self.waiting_note: str | None = None  # the last "waiting for ..." line

    @property
    def storage(self):
        if self._storage is None:
            self._storage = open_storage(self.storage_url, self.options.get("heartbeat"))
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
                           ("threads", threads), ("torchrun", self.options.get("torchrun")),
                           ("heartbeat", self.options.get("heartbeat"))):
            handle.set_user_attr(key, value)

    # ------------------------------------------------------------------ running it
    def run(self) -> int:
        """Run trials until the study has `trials` of them; 0, or 128 + the stopping signal."""
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        previous = {signum: signal.signal(signum, self._stop)
                    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
        try:
            self._agree_on_heartbeat()
            self._enqueue()
            while True:
                self._beat()
                self._reap()
                self._check_time()
                if not self.stopping and not self.time_up:
                    self._fill()
                if not self.running and (self.stopping or self.time_up or
                                         not self._wait_for_others()):
                    break
                time.sleep(0.2 if self.running else 1.0)
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
        then queued ones (`--enqueue`, a lost trial's re-run), then new ones while fewer than
        `trials` count (`counted`)."""
        import optuna

        while not self.stopping and not self.time_up and \
                len(self.running) < self.options["jobs"]:
            study = self.study()
            trials = study.get_trials(deepcopy=False)
            waiting = [trial for trial in trials if self._resumable(trial)]
            if waiting:
                self._start(study, waiting[0].number, resume=True)
                continue
            queued = sum(trial.state == optuna.trial.TrialState.WAITING for trial in trials)
            if counted(trials) - queued >= self.options["trials"]:
                return  # (queued beyond --trials: they wait for a larger --trials)
            with warnings.catch_warnings():  # Optuna: heartbeats are "supposed" for optimize()
                warnings.simplefilter("ignore")
                number = study.ask().number  # a queued trial first
            self._record_heartbeat(number)  # first: a trial without one is never stale
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
            self._start(study, number, resume=self._lost_run(study, number) is not None)

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
        # what resumes the trial: its run folder, or with k-fold the folds' record; a lost
        # trial's re-run: the lost one's, where this machine reaches it
        lost = self._lost_run(study, number) if resume else None
        owner = lost if lost is not None else number
        run_name = trial_name(owner)
        run_folder, target = self._resume_target(run_name)
        if resume and target.exists() and not self._is_own_trial(run_folder, owner):
            print(f"{name}: {run_folder} is not this study's trial {owner} (its manifest says "
                  f"otherwise); the trial starts again", flush=True)
            resume = False
        resume = resume and target.exists()
        if resume and not self.definition.get("folds") and not has_checkpoint(target):
            # stopped before its first checkpoint: nothing to resume, and its folder would
            # take the run id from the start again
            shutil.rmtree(target)
            shutil.rmtree(self.folder / "log" / self.definition["config"]["name"] / run_name,
                          ignore_errors=True)
            print(f"{name}: stopped before its first checkpoint; it starts again", flush=True)
            resume = False
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
        if resume and lost is not None:  # its checkpoints are in the lost trial's folder
            trial_handle(study, self.storage, number).set_user_attr("run", run_name)
        self._record_heartbeat(number)
        self.running[number] = process
        self.trial_started.setdefault(number, time.monotonic())
        if self.stopping:  # the signal came while it was being started
            process.send_signal(signal.SIGTERM)
        how = "started"
        if resume:
            how = (f"resumed from {run_name}'s checkpoint (trial {lost} was lost with its "
                   f"machine)" if lost is not None else "resumed from its checkpoint")
        print(f"{name}: {how} ({self._params_text(study, number)})", flush=True)

    def _lost_run(self, study, number: int) -> int | None:
        """The trial that trial `number` runs again because its machine was lost, when this
        machine reaches that trial's run folder (a shared save_dir): it resumes from there."""
        trial = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
        history = retry_history(trial)
        if not history:
            return None
        lost = history[0]  # the first to run it: its folder holds the checkpoints
        _, target = self._resume_target(trial_name(lost))
        reachable = target.exists() if self.definition.get("folds") else has_checkpoint(target)
        return lost if reachable else None

    def _resume_target(self, run_name: str) -> tuple[Path, Path]:
        """The run folder of trial run `run_name` (with k-fold its first fold's) and what
        resumes it: that folder, or with k-fold the folds' record."""
        if not self.definition.get("folds"):
            return self.run_folder(run_name), self.run_folder(run_name)
        first = self.run_folder(f"{run_name}-fold1")
        return first, first.parent / f"{run_name}-folds.json"

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
            began = self.trial_started.pop(number, None)
            study = self.study()
            trial = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
            if trial.state != optuna.trial.TrialState.RUNNING:
                if began is not None:
                    self.durations.append(time.monotonic() - began)
                value = f"value {trial.value:.6g}" if trial.value is not None else "no value"
                print(f"{trial_name(number)}: {trial.state.name.lower()} ({value}); "
                      f"{self._progress(study)}", flush=True)
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
        print(f"{trial_name(number)}: failed ({error}); {self._progress(study)}", flush=True)

    def _progress(self, study) -> str:
        """`6 of 20 trials done (4 complete, 2 pruned), 2 running; best val_loss 0.0149
        (trial 5); about 3 min left`: the estimate from the trials this sweep saw end, with
        `jobs` at a time (other machines make it shorter)."""
        import optuna

        trials = study.get_trials(deepcopy=False)
        lost = lost_numbers(trials)
        finished = [trial for trial in trials if trial.state.is_finished() and
                    trial.number not in lost]
        states = Counter(trial.state.name.lower() for trial in finished)
        running = sum(trial.state == optuna.trial.TrialState.RUNNING for trial in trials)
        text = (f"{len(finished)} of {self.options['trials']} trials done"
                + (f" ({', '.join(f'{n} {state}' for state, n in states.items())})"
                   if states else "") + (f", {running} running" if running else ""))
        complete = [trial for trial in trials if trial.state == optuna.trial.TrialState.COMPLETE]
        if complete:
            best = study.best_trial
            metric = Monitor.parse(self.definition["monitor"]).metric
            text += f"; best {metric} {best.value:.6g} (trial {best.number})"
        left = self.options["trials"] - len(finished)
        if left > 0 and self.durations:
            mean = sum(self.durations) / len(self.durations)
            seconds = mean * -(-left // self.options["jobs"])
            text += f"; about {_duration(seconds)} left"
        return text

    # ------------------------------------------------------------------ several machines
    def _record_heartbeat(self, number: int) -> None:
        """Trial `number` is alive: this sweep runs it (or will resume it)."""
        if self.options.get("heartbeat"):
            self.storage.record_heartbeat(trial_id(self.storage, self.study_name, number))

    def _beat(self) -> None:
        """Every `heartbeat` seconds: a heartbeat for each trial this sweep runs or will
        resume; then the trials no sweep has beaten for three heartbeats (their machine is
        lost) are failed and queued again by Optuna, and said."""
        import optuna

        if not self.options.get("heartbeat") or time.monotonic() < self.next_beat:
            return
        self.next_beat = time.monotonic() + self.options["heartbeat"]
        study = self.study()
        trials = study.get_trials(deepcopy=False)
        if self.announced is None:  # lost before this sweep started: said then
            self.announced = lost_numbers(trials)
        for trial in trials:
            if trial.number in self.running or self._resumable(trial):
                self._record_heartbeat(trial.number)
            elif trial.state == optuna.trial.TrialState.RUNNING and \
                    not trial.user_attrs.get("heartbeat"):
                # started by a sweep without heartbeats (an older version): Optuna would never
                # find it stale, and a study waiting for it would wait forever. Beaten once
                # here, it is lost unless a sweep goes on beating for it
                self._record_heartbeat(trial.number)
                trial_handle(study, self.storage, trial.number).set_user_attr(
                    "heartbeat", f"adopted by {self.host}")
        with warnings.catch_warnings():  # fail_stale_trials is "experimental"
            warnings.simplefilter("ignore")
            optuna.storages.fail_stale_trials(study)
        trials = study.get_trials(deepcopy=False)
        for trial in trials:
            history = retry_history(trial)
            lost = history[-1] if history else None  # the trial it runs again
            if lost is None or lost in self.announced:
                continue
            self.announced.add(lost)
            original = next(t for t in trials if t.number == lost)
            host = original.user_attrs.get("host") or "another machine"
            print(f"{trial_name(lost)}: lost: its machine ({host}) stopped beating for "
                  f"{3 * self.options['heartbeat']} s; it runs again as trial {trial.number}",
                  flush=True)

    def _agree_on_heartbeat(self) -> None:
        """All sweeps of a study beat as often: one that beats less often than the others
        check would have its live trials declared lost. The first sweep's `--heartbeat` is
        the study's (a study attribute); another is one line."""
        beat = self.options.get("heartbeat")
        if not beat:
            return
        study = self.study()
        agreed = study.user_attrs.get("heartbeat")
        if agreed is None:
            study.set_user_attr("heartbeat", beat)
        elif agreed != beat:
            raise UserError(f"--heartbeat {beat}: the sweeps of study {self.study_name!r} beat "
                            f"every {agreed} s (its first sweep's --heartbeat); give --heartbeat "
                            f"{agreed}")

    def _wait_for_others(self) -> bool:
        """Nothing left to start here: whether trials still run elsewhere (or are queued),
        so the study's result is not final yet. Says so once per change."""
        import optuna

        study = self.study()
        trials = study.get_trials(deepcopy=False)
        queued = sum(trial.state == optuna.trial.TrialState.WAITING for trial in trials)
        if queued and counted(trials) - queued < self.options["trials"]:
            return True  # `_fill` starts it
        elsewhere = [trial for trial in trials if trial.state == optuna.trial.TrialState.RUNNING]
        if not elsewhere:
            if self.waiting_note is not None:
                print(f"The trials elsewhere ended: {self._progress(study)}", flush=True)
            return False
        text = ", ".join(f"trial {trial.number} on {trial.user_attrs.get('host') or '?'}"
                         for trial in elsewhere)
        if text != self.waiting_note:
            self.waiting_note = text
            print(f"Waiting for {len(elsewhere)} trial{'s' if len(elsewhere) > 1 else ''} still "
                  f"running elsewhere ({text}): the result is final when "
                  f"{'they end' if len(elsewhere) > 1 else 'it ends'} (Ctrl-C stops waiting; "
                  f"the result is then interim).", flush=True)
        return True

    def _check_time(self) -> None:
        """`--timeout`: past it no trial starts, and the running ones save and stop (the same
        command again resumes them)."""
        timeout = self.options.get("timeout")
        if self.time_up or self.stopping or timeout is None or \
                time.monotonic() - self.started < timeout:
            return
        self.time_up = True
        self._stop_trials()
        print(f"Time limit ({_duration(timeout)}) reached: no new trials"
              + ("; the running ones save their checkpoints and stop (the same command again "
                 "resumes them)" if self.running else "") + ".", flush=True)

    def _enqueue(self) -> None:
        """`--enqueue`'s configurations, each queued once as the study's next trials."""
        for values in self.options.get("enqueue") or ():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                self.study().enqueue_trial(values, skip_if_exists=True)


def has_checkpoint(run_folder: Path) -> bool:
    """Whether a trial's run folder holds a checkpoint to resume from."""
    return (run_folder / "checkpoint-interrupted.pth").is_file() or \
        any(run_folder.glob("checkpoint-epoch*.pth"))


def counted(trials) -> int:
    """The trials that count toward `--trials`: all but those lost with their machine and
    run again (their re-run counts)."""
    lost = lost_numbers(trials)
    return sum(trial.number not in lost for trial in trials)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


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
