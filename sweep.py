"""Search hyperparameters on Optuna:
`python sweep.py -c config.json -s configs/search_digits.json --trials 20`.

Each trial is a run of `train.py` in its own process, its run folder under the sweep's folder
(`<save_dir>/sweeps/<study>/`); the study lives in an SQLite file there unless `--storage` names
a shared database, so several processes (`--jobs`) or machines (the same command and URL) work
on one study. Ctrl-C / SIGTERM stops it cleanly; the same command again goes on. `--report
FOLDER` prints the trials' table any time.
"""
import argparse
import json
import sys
from pathlib import Path

from config.key_paths import parse_overrides
from config.sections import is_plain_name
from parse_config import ConfigParser
from search.search_space import candidates, space_problems
from train import blocks
from utils.cli import run_cli
from utils.errors import ConfigError, UserError
from utils.files import read_json


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Search hyperparameters on Optuna.")
    parser.add_argument("-c", "--config", help="the config the trials start from")
    parser.add_argument("-s", "--space", help="the search space: a JSON file of config key "
                                              "paths (see docs/search-and-kfold.md)")
    parser.add_argument("--trials", type=int, default=20,
                        help="trials the study has in the end, all machines together (20)")
    parser.add_argument("--jobs", type=int, default=1, help="trial processes at a time here (1)")
    parser.add_argument("--storage", help="an Optuna database URL shared by several machines "
                                          "(default: sqlite in the sweep's folder)")
    parser.add_argument("--study", help="the study's name (default: <config name>-<space file>)")
    parser.add_argument("--seed", type=int, help="the sampler's seed (default: the config's)")
    parser.add_argument("--sampler", choices=("tpe", "random"), default="tpe")
    parser.add_argument("--pruner", choices=("median", "hyperband", "none"), default="median",
                        help="stops trials that do worse than others at the same epoch")
    parser.add_argument("--prune-after", type=int, default=5, metavar="N",
                        help="median pruner: trials that run to the end before it prunes (5)")
    parser.add_argument("--monitor", help="what the trials are compared by, e.g. 'max "
                                          "val_accuracy' (default: trainer.monitor)")
    parser.add_argument("--folds", type=int, metavar="K",
                        help="each trial's value: the mean over K-fold cross-validation")
    parser.add_argument("--torchrun", type=int, metavar="N",
                        help="run each trial under torchrun with N processes")
    parser.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE",
                        help="set a key of the config the trials start from; may be repeated")
    parser.add_argument("--timeout", type=parse_duration, metavar="TIME",
                        help="start no trial after this wall time (seconds, or 90m, 2h); the "
                             "running ones save and stop, the same command again goes on")
    parser.add_argument("--enqueue", action="append", default=[], metavar="CONFIG",
                        help="a known configuration (its values at the space's key paths, e.g. "
                             "your baseline config.json) as the study's next trial; may be "
                             "repeated")
    parser.add_argument("--heartbeat", type=int, default=60, metavar="SECONDS",
                        help="how often this sweep tells the study its trials are alive (60); a "
                             "trial no sweep beat for 3 times as long (its machine is lost) runs "
                             "again")
    parser.add_argument("--report", metavar="FOLDER", help="print a sweep's trials and exit")
    args = parser.parse_args(argv)
    if args.report is None and (args.config is None or args.space is None):
        raise UserError("give the config with -c and the search space with -s "
                        "(or --report FOLDER)")
    if args.heartbeat <= 0:
        raise UserError(f"--heartbeat: expected a positive number of seconds, got "
                        f"{args.heartbeat}")
    for name in ("trials", "jobs", "prune_after", "torchrun"):
        value = getattr(args, name)
        if value is not None and value < (0 if name == "prune_after" else 1):
            raise UserError(f"--{name.replace('_', '-')}: expected a positive number, got {value}")
    return args


def parse_duration(text: str) -> float:
    """`--timeout`'s wall time: seconds, or a number with s, m or h."""
    units = {"s": 1, "m": 60, "h": 3600}
    number, unit = (text[:-1], units[text[-1]]) if text[-1:] in units else (text, 1)
    try:
        seconds = float(number) * unit
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected seconds or e.g. 90m, 2h, got {text!r}") \
            from None
    if not seconds > 0:
        raise argparse.ArgumentTypeError(f"expected a positive time, got {text!r}")
    return seconds


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.report is not None:
        report(Path(args.report), args.storage)
        return 0
    from search.study import Sweep, load_definition
    from search.trial import storage_identity

    definition, study = sweep_definition(args)
    enqueued = enqueued_configs(args, definition)
    if len(enqueued) > args.trials:
        raise UserError(f"--enqueue: {len(enqueued)} configurations, more than --trials "
                        f"{args.trials}")
    folder = Path(definition["config"]["trainer"]["save_dir"])
    if args.storage:  # its problems before anything is written (a sweep.json names it)
        from search.trial import open_storage

        open_storage(args.storage)
    storage = args.storage or f"sqlite:///{folder / 'study.db'}"
    # the folder is one study's: a second study of the same name elsewhere gets refused
    definition["storage"] = storage_identity(storage)
    (folder / "trials").mkdir(parents=True, exist_ok=True)
    definition = load_definition(folder, definition)
    options = {"trials": args.trials, "jobs": args.jobs, "sampler": args.sampler,
               "pruner": args.pruner, "prune_after": args.prune_after,
               "torchrun": args.torchrun, "heartbeat": args.heartbeat,
               "timeout": args.timeout, "enqueue": enqueued,
               "seed": args.seed if args.seed is not None else definition["config"].get("seed", 0)}
    print(f"Sweep: {folder} (study {study}, {storage.split('://')[0]} storage)", flush=True)
    searching = Sweep(folder, definition, storage, study, options,
                      lambda values: trial_config(definition["config"], values))
    code = searching.run()
    completed = report(folder, args.storage)
    if code == 0 and not completed and not searching.time_up:
        print(f"No trial completed: see their output in {folder / 'trials'}", file=sys.stderr)
        return 1
    return code


def sweep_definition(args: argparse.Namespace) -> tuple[dict, str]:
    """What the study searches (the base config with the sweep's folder as save_dir, the
    space, the monitor, the folds) and its name; every problem of the config and the space at
    once, before anything is written."""
    modification = parse_overrides(args.override)
    if args.monitor is not None:
        modification["trainer.monitor"] = args.monitor
    config = ConfigParser(read_json(args.config), modification=modification)
    config.validate(blocks())
    monitor = config["trainer"].get("monitor", "off")
    space = read_json(args.space)
    problems = [f"{args.space}: {line}" for line in space_problems(space, config.config)]
    if monitor == "off":
        problems.append("trainer.monitor: is off; a sweep compares trials by it: set it, e.g. "
                        "--monitor 'min val_loss'")
    if not problems:
        problems += [f"{args.space}: {line}" for line in _candidate_problems(config, space)]
    if args.folds is not None:
        from search.cross_validation import folds_problem

        problem = folds_problem(args.folds)
        problems += [problem] if problem else _problems(
            config, {"data_loader.args.validation_split": {"fold": 1, "folds": args.folds}})
    study = args.study or f"{config['name']}-{Path(args.space).stem}"
    if not is_plain_name(study):
        problems.append(f"--study: {study!r} must be a plain name (letters, digits, '-', '_', '.')")
    if problems:
        raise ConfigError(*dict.fromkeys(problems))
    save_dir = config["trainer"]["save_dir"]
    base = config.with_modification({"trainer.save_dir": str(
        (Path(save_dir) / "sweeps" / study).resolve())}).config
    return {"config": base, "space": space, "monitor": monitor, "folds": args.folds,
            "save_dir": save_dir}, study


def enqueued_configs(args: argparse.Namespace, definition: dict) -> list[dict]:
    """`--enqueue`'s configurations as Optuna params, all problems at once (each in one line)
    before anything is written."""
    from search.search_space import enqueued_params

    params, problems = [], []
    for path in args.enqueue:
        values, lines = enqueued_params(read_json(path), definition["space"], f"--enqueue {path}")
        params.append(values)
        problems += lines
    if problems:
        raise ConfigError(*problems)
    return params


def _candidate_problems(config: ConfigParser, space: dict) -> list[str]:
    """The config checked with each range's ends and each choice, one parameter at a time."""
    problems = []
    for path, spec in space.items():
        found = [(value, _problems(config, {path: value})) for value in candidates(spec)]
        if len(found) > 1 and found[0][1] and all(lines == found[0][1] for _, lines in found):
            problems += [f"{path}: {line}" for line in found[0][1]]  # whatever the value
        else:
            problems += [f"{path}={json.dumps(value)}: {line}"
                         for value, lines in found for line in lines]
    return problems


def _problems(config: ConfigParser, modification: dict) -> list[str]:
    try:
        config.with_modification(modification).validate(blocks())
    except ConfigError as error:
        return list(error.problems)
    return []


def trial_config(base: dict, values: dict) -> dict | str:
    """The config a trial with `{key.path: value}` trains with, or its problems in one line:
    each sampled config is checked before its trial starts."""
    try:
        config = ConfigParser(base, modification=values)
        config.validate(blocks())
    except ConfigError as error:
        return "; ".join(error.problems)
    return config.config


def report(folder: Path, storage: str | None) -> int:
    """Print the trials of the sweep in `folder`; write `trials.json`, `best_config.json` and
    the plots. Without `storage`, the one the sweep used (`sweep.json` keeps it without its
    password: PostgreSQL takes that from PGPASSWORD or ~/.pgpass). How many trials
    completed."""
    import optuna

    from search.study_report import write_results
    from search.trial import open_storage, sqlite_file

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    definition = read_json(folder / "sweep.json")
    own = folder.resolve() / "study.db"  # a SQLite study beside it, also when the folder moved
    saved = definition.get("storage")
    if storage:
        url = storage
    elif saved and (sqlite_file(saved) is None or not own.is_file()):
        url = saved  # a shared database, or a SQLite file given by --storage
    else:
        url = f"sqlite:///{own}"
    database = sqlite_file(url)
    if database is not None and not database.is_file():  # opening it would create it
        raise UserError(f"{database}: no such study database"
                        f"{' (--storage)' if storage else ''}; nothing was created")
    study_name = folder.name
    try:
        study = optuna.load_study(study_name=study_name, storage=open_storage(url))
    except KeyError:
        raise UserError(f"{folder}: no study {study_name!r} in {url.split('://')[0]} storage "
                        f"(give the sweep's --storage)") from None
    except UserError as error:
        if storage or database is not None:
            raise
        raise UserError(f"{error} (the storage sweep.json names; with a password: give "
                        f"--storage, or set PGPASSWORD or ~/.pgpass)") from None
    print("\n".join(write_results(folder, study, definition)))
    return sum(trial.state == optuna.trial.TrialState.COMPLETE for trial in study.get_trials())


if __name__ == "__main__":
    run_cli(lambda: sys.exit(main()))
