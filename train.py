"""Train a model from a config: `python train.py -c config.json`, resume with `-r checkpoint`."""
import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from config.command_line import CustomArgs, parse_command_line
from parse_config import ConfigParser
from utils.cli import leaf_note, optional_leaf, run_cli
from utils.errors import UserError
from utils.interrupts import ignore_stop_signals

# Registered shortcuts for common overrides: (flags, type, config key they set).
OPTIONS = [
    CustomArgs(["--lr", "--learning_rate"], type=float, target="optimizer.args.lr"),
    CustomArgs(["--bs", "--batch_size"], type=int, target="data_loader.args.batch_size"),
    CustomArgs(["--epochs"], type=int, target="trainer.epochs"),
    CustomArgs(["--seed"], type=int, target="seed"),
    CustomArgs(["--name"], type=str, target="name"),
]

# The user's packages a config may name by dotted path (`"type": "examples.vae.VAE"`); a
# project made without a leaf (new_project.py) lacks some.
USER_PACKAGES = ("model", "data_loader", "trainer", "examples")


def user_modules():
    """The user's modules where a config's bare names resolve (`arch.type`, `loss`, ...): the
    only place the template imports them; the builder is handed them, and the config system
    told which packages are the user's."""
    import importlib.util

    import data_loader.data_loaders
    import model.loss
    import model.metric
    import model.model
    import trainer.trainer
    from builder.build import UserModules
    from config.names import allow_user_packages

    allow_user_packages(name for name in USER_PACKAGES if importlib.util.find_spec(name))
    return UserModules(data=data_loader.data_loaders, arch=model.model, loss=model.loss,
                       metric=model.metric, trainer=trainer.trainer)


def blocks(training: bool = True):
    """The config blocks train.py builds (test.py: without `training`, no optimizer)."""
    from builder import build

    return build.blocks(user_modules(), training)


def evaluation_configs(args: argparse.Namespace, path: str) -> tuple[ConfigParser, ConfigParser]:
    """The config of the checkpoint (or run folder) at `path` with the command line's -c and
    -o, and that config made to evaluate on the test split (test.py, predict.py); every
    problem at once."""
    from runs.run_folder import resolve_resume  # imports torch: after --help

    resume = resolve_resume(path, args.config is not None, evaluating=True)
    config = ConfigParser.from_args(argparse.Namespace(**{**vars(args), "resume": path}),
                                    resume=resume, evaluating=True)
    trainer_section = config.get("trainer")
    test_config = config.with_modification({
        "data_loader.args.training": False, "data_loader.args.shuffle": False,
        "data_loader.args.validation_split": 0.0,
        # evaluation only: no monitored value, no compiling; a -c config may have no trainer
        **({"trainer.monitor": "off", "trainer.compile": False} if isinstance(
            trainer_section, dict) else {"trainer": {"epochs": 1, "save_dir": "saved/"}})})
    test_config.validate(blocks(training=False), trainer=False)  # every problem, before building
    return config, test_config


def build_trainer(config: ConfigParser, device=None, training: bool = True):
    """The trainer the config describes, with the user's modules (`builder.build`)."""
    from builder import build

    return build.build_trainer(config, user_modules(), device, training)


def checkpoint_trainer(config: ConfigParser, device=None) -> tuple:
    """The trainer the config describes for evaluation (`training=False`), holding the weights
    of the checkpoint `config.resume`; and the checkpoint (test.py, predict.py, export.py)."""
    from utils.checkpoint import load_checkpoint
    from utils.weights import load_model_state, unwrap_model

    checkpoint = load_checkpoint(config.resume)
    trainer = build_trainer(config, device, training=False)
    load_model_state(unwrap_model(trainer.model), checkpoint["state_dict"], config.resume)
    return trainer, checkpoint


def main(argv=None, callbacks: Sequence = ()) -> None:
    """The command line; `callbacks`: `trainer.trainer.Callback`s the trainer calls."""
    parser = argparse.ArgumentParser(description="Train a model from a JSON config.")
    parser.add_argument("--print-config", action="store_true",
                        help="print the effective config (file + overrides) and exit")
    parser.add_argument("--dry-run", action="store_true",
                        help="check the config in seconds: build everything, run 2 training "
                             "steps and 2 validation batches, print the model summary and the "
                             "effective config; writes nothing")
    parser.add_argument("--folds", type=int, metavar="K",
                        help="k-fold cross-validation: K runs, each holding out one fold of the "
                             "training data as validation (stratified by class); prints each "
                             "fold and the mean ± std" + leaf_note("search"))
    parser.add_argument("--profile", type=int, nargs="?", const=5, metavar="STEPS",
                        help="profile STEPS training steps (5) after the first 6 with "
                             "torch.profiler: a trace in the run's log folder for TensorBoard, "
                             "the top operators printed")
    parser.add_argument("--lr-find", type=int, nargs="?", const=100, metavar="STEPS",
                        help="the learning-rate range test: STEPS (100) steps, the rate growing "
                             "from 1e-7 to 10; prints a rate to use and writes the loss curve; "
                             "trains nothing, writes no run")
    parser.add_argument("--trial", help=argparse.SUPPRESS)  # sweep.py: the Optuna trial to run
    started = time.monotonic()
    args = parse_command_line(parser, OPTIONS, argv)
    if args.lr_find is not None and (args.lr_find < 5 or args.dry_run or args.folds):
        raise UserError("--lr-find: expected at least 5 steps, alone (not with --dry-run or "
                        "--folds)" if args.lr_find >= 5 else
                        f"--lr-find: expected at least 5 steps, got {args.lr_find}")
    if args.profile is not None:
        if args.profile < 1:
            raise UserError(f"--profile: expected a positive number of steps, got {args.profile}")
        from step.profiling import StepProfiler

        callbacks = [*callbacks, StepProfiler(args.profile)]
    from runs.run_folder import resolve_resume  # imports torch: after --help

    if args.resume and args.resume.endswith(".json"):  # a k-fold run's record: go on with it
        config = optional_leaf("search.cross_validation", "-r <k-fold record>").folds_config(
            args, OPTIONS)
    else:
        resume = resolve_resume(args.resume, args.config is not None) if args.resume else None
        config = ConfigParser.from_args(args, OPTIONS, resume)
    if args.folds is not None:
        fold_config = optional_leaf("search.cross_validation", "--folds").fold_config
        fold_config(config, 1).validate(blocks())  # a fold's config, with everything else
    config.validate(blocks())  # every problem at once, before anything is built or written
    if config["trainer"].get("mlflow") is not None:  # an optional package: named up front
        optional_leaf("tracking.mlflow_run", "trainer.mlflow").require_mlflow()
    if config.cli_args.print_config:
        print(json.dumps(config.config, indent=4))
        return

    from logger.logger import setup_logging
    from utils import distributed

    setup_logging(None)  # console only until the run folder exists
    device = start_processes(config) if distributed.launched_world_size() > 1 else None
    try:
        if config.cli_args.dry_run:
            dry_run(config, device, started)
        elif config.cli_args.lr_find is not None:
            find_learning_rate(config, device, config.cli_args.lr_find)
        else:
            run(config, device, list(argv if argv is not None else sys.argv[1:]), callbacks)
    finally:  # also on errors and signals
        distributed.stop()


def start_processes(config: ConfigParser):
    """Under torchrun: join the other processes; this one's device. Only rank 0 logs."""
    import torch

    from utils import distributed

    use_cuda = config.get("n_gpu", 1) > 0 and torch.cuda.is_available()
    if config.get("n_gpu", 1) > 0 and not use_cuda and distributed.launched_rank() == 0:
        logging.getLogger("train").warning("Warning: n_gpu is %d but no CUDA GPU is available; "
                                           "each process runs on the CPU.", config["n_gpu"])
    device = distributed.start(use_cuda)
    if not distributed.is_main():  # the other ranks report errors only
        for handler in logging.getLogger().handlers:
            handler.setLevel(logging.ERROR)
    return device


def run(config: ConfigParser, device, argv: list[str], callbacks: Sequence = ()) -> None:
    """Train the run; with `--folds K` (or as a sweep's trial, `--trial`) hand it to the search
    package, which trains the folds or reports to the study."""
    if config.cli_args.folds is None and not config.cli_args.trial:
        train(config, device, argv, callbacks)
        return
    search = optional_leaf("search.cross_validation",
                           "--folds" if config.cli_args.folds is not None else "--trial")
    search.train_search_runs(config, lambda run_config, extra: train(
        run_config, device, argv, [*callbacks, *extra]))


def train(config: ConfigParser, device, argv: list[str], callbacks: Sequence = ()):
    """Build, check, resume if asked, open the run folder and train (on every process); the
    trainer, or None when there was nothing to train."""
    from utils import distributed

    trainer = prepare(config, device)
    trainer.callbacks += callbacks  # after the config's own (averaged weights)
    if trainer.nothing_to_train():  # before a run folder is made for nothing
        return None
    lock = None
    # a stop signal while the run folder opens is acted on after the first step, which saves a
    # checkpoint there: no run folder without one is left behind
    with trainer.stop_signals:
        with distributed.all_or_none("opening the run folder"):
            trainer.callbacks += tracking_callbacks(config)  # its store opened first
            if distributed.is_main():
                lock = open_run(config, trainer, argv)
        config.run_id = distributed.from_main(config.run_id)  # the folder rank 0 made
        try:
            trainer.train()
        finally:
            if lock is not None:
                lock.release()
    return trainer


def tracking_callbacks(config: ConfigParser) -> list:
    """`trainer.mlflow`'s callback (the tracking leaf), its store opened on rank 0: one that
    cannot be opened is one line, before the run folder is made."""
    from utils import distributed

    if config["trainer"].get("mlflow") is None:
        return []
    tracking = optional_leaf("tracking.mlflow_run", "trainer.mlflow")
    store = tracking.Store(tracking.options_of(config)) if distributed.is_main() else None
    return [tracking.MLflowRun(config, store)]


def find_learning_rate(config: ConfigParser, device, steps: int) -> None:
    """`--lr-find`: the range test on the run's trainer (`step.lr_find`), the rate to use,
    and the loss curve in `<save_dir>/lr_find/` (a CSV, and a PNG with matplotlib)."""
    from step.lr_find import range_test, write_curve
    from utils import distributed

    if distributed.active():
        raise UserError("--lr-find runs in one process: start it with python, not torchrun")
    trainer = prepare(config, device)
    result = range_test(trainer, steps)
    files = write_curve(result, Path(config["trainer"]["save_dir"]) / "lr_find", config["name"])
    print(f"Learning-rate range test: {len(result.rates)} steps, lr {result.rates[0]:.1e} to "
          f"{result.rates[-1]:.1e}" + (f" (stopped: {result.stopped})" if result.stopped else ""))
    if result.suggestion is None:
        print("No rate to suggest: the loss did not fall over the range (try more steps)")
    else:
        print(f"The loss fell fastest at lr {result.suggestion:.2e} and was lowest at "
              f"{result.lowest:.2e}. To use it: -o optimizer.args.lr={result.suggestion:.2e}")
    print(f"The curve: {', '.join(str(path) for path in files)}. Nothing of the run was "
          f"written; the weights are as they were.")


def dry_run(config: ConfigParser, device, started: float) -> None:
    """`--dry-run`: everything `train` does before its first write, then two training steps
    and two validation batches; prints the effective config and the model summary."""
    from logger.progress import format_value
    from utils import distributed

    trainer = prepare(config, device)
    main_process = distributed.is_main()
    if main_process:
        print("Effective config:")
        print(json.dumps(config.config, indent=4))
        print("\nModel summary:")
        print("\n".join([*trainer.model_notes, *summary_lines(trainer)]))
    result = trainer.dry_run(steps=2, batches=2)
    losses, log = result.losses, result.log
    if not main_process:
        return
    for note in result.notes:
        print(note)
    if trainer.start_epoch > trainer.settings.epochs:
        print(f"\nNote: the checkpoint is at epoch {trainer.start_epoch - 1} and trainer.epochs "
              f"is {trainer.settings.epochs}: training would have nothing to do (raise it with "
              f"--epochs).")
    steps = f"{len(losses)} training step{'s' if len(losses) != 1 else ''}"
    if losses:
        steps += f" (loss {', '.join(map(format_value, losses))})"
    if log:
        batches = min(2, len(trainer.valid_data_loader))
        steps += (f", validation on {batches} batch{'es' if batches != 1 else ''} (" +
                  ", ".join(f"{key} {format_value(value)}" for key, value in log.items()) + ")")
    print(f"\nDry run: {steps}; {time.monotonic() - started:.1f} s in all.")
    if trainer.start_epoch > trainer.settings.epochs:
        print("Nothing was written; without --dry-run this command would train nothing (see the "
              "note above).")
    else:
        print("The config is ready to train. Nothing was written; train with the same command "
              "without --dry-run.")


def prepare(config: ConfigParser, device):
    """The trainer, built, checked on a first batch and resumed if asked: everything before
    the first write (under torchrun every process, or none, gets through)."""
    from utils import distributed
    from utils.seeding import configure_backends, derive_seed, seed_everything

    trainer_section = config["trainer"]
    configure_backends(trainer_section.get("cudnn_benchmark", True),
                       trainer_section.get("deterministic", False))
    seed = config.get("seed", 0)
    # under torchrun: no run folder unless every process built and checked everything
    with distributed.all_or_none("starting"):
        seed_everything(seed)  # the same initial weights in every process
        trainer = build_trainer(config, device)
        if distributed.rank() > 0:  # dropout and augmentation differ between processes
            seed_everything(derive_seed(seed, distributed.rank()))
        trainer.check_first_batch()  # before the resume restores the RNG: resume stays exact
        if config.resume is not None:  # load before creating anything: a bad file writes nothing
            (trainer.load_weights if config.fine_tune else trainer.resume)(config.resume)
    return trainer


def log_model(logger, trainer) -> None:
    """The model's class and parameter counts; at verbosity 2 its summary table."""
    from logger.model_summary import totals_line
    from utils.weights import unwrap_model

    model = unwrap_model(trainer.eval_model)
    if logger.isEnabledFor(logging.DEBUG):
        logger.info("Model: %s", type(model).__name__)
        logger.debug("\n".join(summary_lines(trainer)))  # ends with the totals
    else:
        logger.info("Model: %s. %s", type(model).__name__, totals_line(model))


def summary_lines(trainer) -> list[str]:
    """The model's summary table, from two samples of the first batch; the totals alone when
    the model cannot be run on the batches' inputs by the default convention (a custom
    step)."""
    from logger.model_summary import summarize, totals_line
    from step.batches import call_model
    from utils.weights import unwrap_model

    model = unwrap_model(trainer.eval_model)
    if trainer.first_inputs is None:
        return ["(no table: the batches do not follow the default unpacking into (inputs, "
                "target); for a dict batch, trainer.args.target_key names the target key)",
                totals_line(model)]
    try:
        return summarize(model, trainer.first_inputs, call=call_model)
    except (RuntimeError, TypeError, ValueError, IndexError, KeyError) as error:
        return [f"(no table: the model does not take the batches' inputs as they are: "
                f"{type(error).__name__})", totals_line(model)]


def open_run(config: ConfigParser, trainer, argv: list[str]):
    """Create the run folder (or reopen it, resuming) and take its writer's lock (returned:
    held until training ends); write the effective config, add this session to the manifest,
    start the log file and say where training starts."""
    from base.base_data_loader import batch_size_of
    from logger.logger import setup_logging
    from runs.manifest import add_session, changed_helper_files, session_record
    from runs.run_folder import keep_edited_config
    from runs.run_lock import RunLock
    from utils import distributed
    from utils.checkpoint import load_checkpoint

    requested = config.run_id  # --run-id (a fold's: <id>-fold<k>), or the timestamp
    config.make_run_dirs()  # a run id taken by an earlier run gets a suffix
    lock = RunLock(config.save_dir)
    try:
        leftovers = lock.acquire()  # before anything is written: one writer per run folder
        refuse_overtaken_resume(config)  # decided under the lock: never over a newer checkpoint
        setup_logging(config.log_dir)  # a log file that cannot be opened: nothing written yet
    except BaseException:
        lock.release()
        if config.resume is None or config.save_dir != config.resume.parent:
            remove_new_run_dirs(config)  # a new run's folders, with nothing of a run in them
        raise
    edited = keep_edited_config(config.save_dir, load_checkpoint(config.resume, mmap=True)[
        "config"]) if config.resume is not None and config.save_dir == config.resume.parent \
        else None
    config.write_config()
    resumed_from = str(config.resume) if config.resume is not None else None
    trial = None
    if config.cli_args.trial:  # the sweep and trial this run is (not the storage: a password)
        spec = json.loads(config.cli_args.trial)
        trial = {key: spec.get(key) for key in ("study", "number", "sweep")}
        argv = [json.dumps(trial) if index and argv[index - 1] == "--trial" else arg
                for index, arg in enumerate(argv)]
    record = session_record(argv, config.config, resumed_from)
    if trial is not None:
        record["trial"] = trial
    changed = changed_helper_files(config.resume.parent, trainer.helper_files) \
        if config.resume is not None and not config.fine_tune else []
    if trainer.helper_files:
        record["helper_files"] = trainer.helper_files
    add_session(config.save_dir, config.log_dir, record)
    logger = config.get_logger("train", config["trainer"].get("verbosity", 2))
    logger.info("Run folder: %s", config.save_dir)
    for line in changed:
        logger.warning(line)
    for leftover in leftovers:
        logger.info("Removed %s, left half-written by a killed run.", leftover.name)
    if edited is not None:
        logger.warning("Warning: the run folder's config.json differs from the config stored in "
                       "%s (edited by hand?): training goes on with the checkpoint's config and "
                       "the command line's overrides; the edited file is kept as %s. To train "
                       "with it, give it with -c (fine-tuning, into a new run folder).",
                       config.resume.name, edited.name)
    if getattr(config.cli_args, "run_id", None) and config.run_id != requested:
        logger.warning("Warning: --run-id %s is taken by an earlier run; this run is %s.",
                       requested, config.run_id)
    if distributed.active():
        batch_size = batch_size_of(trainer.data_loader)
        logger.info("%d processes (torchrun), global batch %d = %d per process x %d",
                    distributed.world_size(), batch_size * distributed.world_size(), batch_size,
                    distributed.world_size())
    for note in trainer.model_notes:
        logger.info(note)
    log_model(logger, trainer)
    if config.resume is not None:
        log_resume(logger, config, trainer)
    return lock


def remove_new_run_dirs(config: ConfigParser) -> None:
    """The run and log folders this start made, when nothing but its lock file is in them."""
    from runs.run_lock import LOCK_NAME

    for folder in (config.save_dir, config.log_dir):
        try:
            (folder / LOCK_NAME).unlink(missing_ok=True)
            folder.rmdir()  # only if empty
        except OSError:
            pass


def refuse_overtaken_resume(config: ConfigParser) -> None:
    """A resume that continues its run folder chose the newest checkpoint before it held the
    folder's lock; another run may have written a newer one since (a resume of the same folder
    that ended meanwhile). Under the lock, check again: continuing would overwrite it."""
    from runs.run_folder import is_latest_in_run
    from utils.checkpoint import load_checkpoint

    if config.resume is None or config.save_dir != config.resume.parent:
        return
    if not is_latest_in_run(config.resume, load_checkpoint(config.resume, mmap=True)):
        raise UserError(f"{config.save_dir}: another run wrote a newer checkpoint after this one "
                        f"chose {config.resume.name}; nothing was written. Resume the folder "
                        f"again to continue from its newest checkpoint")


def log_resume(logger, config: ConfigParser, trainer) -> None:
    """Where a resumed (or fine-tuned) run starts, and whether it branched off."""
    where = f"epoch {trainer.start_epoch}"
    if trainer.start_step >= getattr(trainer, "len_epoch", trainer.start_step + 1):
        where += "'s validation (its training steps were done)"
    elif trainer.start_step:
        where += f", step {trainer.start_step + 1}"
    logger.info("%s %s; training from %s.", "Fine-tuning weights from" if config.fine_tune
                else "Resumed from", config.resume, where)
    if not config.fine_tune and config.save_dir != config.resume.parent:
        logger.info("The checkpoint is not the newest of a run folder this template made there: "
                    "this run branches off into a new run folder and leaves the old one as it "
                    "was.")


if __name__ == "__main__":
    run_cli(main)
    ignore_stop_signals()  # trained and saved: a late Ctrl-C must not make it look failed
