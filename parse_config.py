"""The config: reading it, overriding it from the command line, and building objects from it.

`ConfigParser` never touches the disk in its constructor. Creating the run folders and writing
the effective config are explicit calls (`make_run_dirs`, `write_config`) made by `train.py`.
"""
import argparse
import copy
import difflib
import functools
import json
import logging
import os
import re
from collections import namedtuple
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

from trainer.settings import TrainerSettings
from utils.errors import ConfigError, UserError
from utils.names import check_signature, did_you_mean, resolve_type
from utils.util import read_json, write_json

# `flags` as argparse takes them, `type` the value's type, `target` the dotted config key it sets.
CustomArgs = namedtuple("CustomArgs", "flags type target")

_LOG_LEVELS = {0: logging.WARNING, 1: logging.INFO, 2: logging.DEBUG}
KNOWN_SECTIONS = ("name", "n_gpu", "seed", "arch", "data_loader", "optimizer", "loss", "metrics",
                  "lr_scheduler", "trainer")


class ConfigParser:
    """The effective config of one run (file + overrides) and where that run writes.

    Args:
        config: the config as read from JSON.
        resume: a checkpoint to resume from (or, with `fine_tune`, to take the weights from).
        modification: `{dotted.key.path: value}` applied on top of `config`.
        run_id: the run folder's name; a timestamp when not given.
        fine_tune: `-c new.json -r ckpt`: weights from the checkpoint, everything else new.
        continue_run: write on in the checkpoint's own run folder instead of a new one.
    """

    def __init__(self, config: dict, resume: str | os.PathLike | None = None,
                 modification: dict[str, Any] | None = None, run_id: str | None = None,
                 fine_tune: bool = False, continue_run: bool = False):
        self._config = apply_modifications(config, modification or {})
        check_top_level(self._config)
        self.resume = Path(resume) if resume is not None else None
        self.fine_tune = fine_tune
        self._continue_run = continue_run and self.resume is not None
        if self._continue_run:
            run_id = self.resume.parent.name
        elif run_id is not None and not _is_plain_name(run_id):
            raise ConfigError(f"--run-id: {run_id!r} must be a plain folder name (letters, digits, "
                              f"'-', '_', '.'), not a path")
        self.run_id = run_id or datetime.now().strftime("%m%d_%H%M%S")

    # ---------------------------------------------------------------- building from the CLI
    @classmethod
    def from_args(cls, parser: argparse.ArgumentParser, options: Iterable[CustomArgs] = (),
                  argv: Sequence[str] | None = None, evaluating: bool = False) -> "ConfigParser":
        """Add the standard and the registered options to `parser`, parse `argv`, build the config.

        `-r` alone resumes with the config stored in the checkpoint; `-c` with `-r` is fine-tuning,
        or with `evaluating` (test.py, where `-r` is required) a config override.
        """
        add_standard_args(parser, evaluating)
        for option in options:
            parser.add_argument(*option.flags, type=option.type, default=None,
                                help=f"sets {option.target}")
        args = parser.parse_args(argv)
        if args.device is not None:  # must happen before CUDA is first touched
            os.environ["CUDA_VISIBLE_DEVICES"] = args.device
        if evaluating and args.resume is None:
            raise UserError("give the checkpoint to evaluate with -r path/to/model_best.pth")
        if args.config is None and args.resume is None:
            raise UserError("give a config with -c config.json, or a checkpoint to resume with -r")

        resume, continue_run = None, False
        if args.resume is not None:
            from trainer.checkpoint import find_checkpoint, is_latest_in_run, load_checkpoint
            resume = find_checkpoint(args.resume)  # a file, or the newest in a run folder
        if args.config is not None:
            config = read_json(args.config)
            if not isinstance(config, dict):
                raise ConfigError(f"{args.config}: the config must be a JSON object")
        else:
            checkpoint = load_checkpoint(resume, mmap=True)
            config = checkpoint["config"]
            # resuming the newest checkpoint of a run continues it; an older one branches off
            continue_run = not evaluating and is_latest_in_run(resume, checkpoint["epoch"])

        modification = {option.target: getattr(args, _dest(option.flags))
                        for option in options}
        modification = {key: value for key, value in modification.items() if value is not None}
        modification.update(parse_overrides(args.override))
        return cls(config, resume=resume, modification=modification,
                   run_id=getattr(args, "run_id", None), continue_run=continue_run,
                   fine_tune=not evaluating and args.config is not None and resume is not None)

    # ---------------------------------------------------------------- reading the config
    def __getitem__(self, name: str) -> Any:
        return self._config[name]

    def __contains__(self, name: str) -> bool:
        return name in self._config

    def get(self, name: str, default: Any = None) -> Any:
        return self._config.get(name, default)

    @property
    def config(self) -> dict:
        """The effective config (file + overrides), as saved with the run and in checkpoints."""
        return self._config

    def with_modification(self, modification: dict[str, Any]) -> "ConfigParser":
        """A copy of this config with `{dotted.key: value}` applied; same run, same resume."""
        other = copy.copy(self)
        other._config = apply_modifications(self._config, modification)
        return other

    # ---------------------------------------------------------------- building objects
    def init_obj(self, name: str, module: ModuleType, *args, **kwargs) -> Any:
        """`module.<type>(*args, **config_args, **kwargs)` for the `{"type", "args"}` block `name`.

        `kwargs` given in code may not repeat an argument the config sets.
        """
        factory, config_args = self._prepare(name, module, args, kwargs)
        try:
            return factory(*args, **config_args, **kwargs)
        except (ValueError, TypeError) as error:  # the arguments bound: a value was rejected
            raise ConfigError(f"{name}.args: {error}") from None

    def init_ftn(self, name: str, module: ModuleType, *args, **kwargs) -> Callable:
        """`functools.partial(module.<type>, *args, **config_args, **kwargs)` for block `name`."""
        factory, config_args = self._prepare(name, module, args, kwargs, partial=True)
        return functools.partial(factory, *args, **config_args, **kwargs)

    def init_ftn_list(self, name: str, module: ModuleType, reserved: Sequence[str] = ()) -> list:
        """`init_ftn` for each entry of the list `name` (e.g. `metrics`), each with a unique
        `__name__`: the function's own, or the entry's `"name"` (`{"type": "top_k_acc",
        "args": {"k": 5}, "name": "top5"}`)."""
        entries = self._config.get(name, [])
        if not isinstance(entries, list):
            raise ConfigError(f"{name}: expected a list, got {json.dumps(entries)}")
        functions, seen = [], {}
        for index, entry in enumerate(entries):
            function = self.init_ftn(f"{name}.{index}", module)
            label = entry.get("name", function.func.__name__) if isinstance(entry, dict) \
                else function.func.__name__
            if not isinstance(label, str) or not label or label in reserved or label in seen:
                taken = f"taken by {name}.{seen[label]}" if label in seen else "not usable"
                raise ConfigError(f"{name}.{index}: the name {json.dumps(label)} is {taken}; give "
                                  f"this entry a \"name\" of its own, e.g. \"top5\"")
            function.__name__ = label
            functions.append(function)
            seen[label] = index
        return functions

    def _prepare(self, name: str, module: ModuleType, args: tuple, kwargs: dict,
                 partial: bool = False) -> tuple[Callable, dict]:
        block = get_by_path(self._config, name)
        if isinstance(block, str):
            block = {"type": block, "args": {}}
        if not isinstance(block, dict) or "type" not in block:
            raise ConfigError(f"{name}: expected {{\"type\": ..., \"args\": {{...}}}}")
        for key in block:
            if key not in ("type", "args", "name"):
                raise ConfigError(f"{name}.{key}: unknown key (a block has type, args and, in a "
                                  f"list, name){did_you_mean(key, ['type', 'args', 'name'])}")
        config_args = block.get("args", {})
        if not isinstance(config_args, dict):
            raise ConfigError(f"{name}.args: expected a JSON object, got {json.dumps(config_args)}")
        factory = resolve_type(block["type"], module, f"{name}.type")
        repeated = sorted(set(config_args) & set(kwargs))
        if repeated:
            raise ConfigError(f"{name}.args: {', '.join(map(repr, repeated))} set in the config "
                              f"is also given by the code; remove it from the config")
        check_signature(factory, args, {**config_args, **kwargs}, f"{name}.args", partial)
        return factory, dict(config_args)

    # ---------------------------------------------------------------- run folders and logging
    @property
    def save_dir(self) -> Path:
        """Where this run's config and checkpoints go: `<save_dir>/models/<name>/<run_id>`."""
        if self._continue_run:
            return self.resume.parent
        return self._save_root / "models" / self._config["name"] / self.run_id

    @property
    def log_dir(self) -> Path:
        """Where this run's log file and TensorBoard events go: `<save_dir>/log/<name>/<run_id>`."""
        return self._save_root / "log" / self._config["name"] / self.run_id

    @property
    def _save_root(self) -> Path:
        return Path(self._config["trainer"].get("save_dir", TrainerSettings.save_dir))

    def make_run_dirs(self) -> None:
        """Create the run folders; a run id taken by another run gets a suffix (`_1`, `_2`, ...)."""
        if self._continue_run:
            try:
                self.log_dir.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise UserError(f"trainer.save_dir: cannot create {self.log_dir} "
                                f"({error.strerror})") from None
            return
        base_id = self.run_id
        for attempt in range(1000):
            self.run_id = base_id if attempt == 0 else f"{base_id}_{attempt}"
            try:
                self.save_dir.parent.mkdir(parents=True, exist_ok=True)
                self.save_dir.mkdir()  # atomic: exactly one of two racing runs gets this name
            except FileExistsError:
                continue
            except OSError as error:
                raise UserError(f"trainer.save_dir: cannot create {self.save_dir} "
                                f"({error.strerror})") from None
            self.log_dir.mkdir(parents=True, exist_ok=True)
            return
        raise UserError(f"{self.save_dir.parent}: no free run folder for run id {base_id!r}")

    def write_config(self) -> None:
        """Save the effective config as `config.json` in the run folder."""
        write_json(self._config, self.save_dir / "config.json")

    def get_logger(self, name: str, verbosity: int = 2) -> logging.Logger:
        if verbosity not in _LOG_LEVELS:
            raise ConfigError(f"trainer.verbosity: {verbosity!r} is not one of 0, 1, 2")
        logger = logging.getLogger(name)
        logger.setLevel(_LOG_LEVELS[verbosity])
        return logger


# -------------------------------------------------------------------- command line
def add_standard_args(parser: argparse.ArgumentParser, evaluating: bool = False) -> None:
    parser.add_argument("-c", "--config", default=None,
                        help="config file (default for -r: the config stored in the checkpoint)")
    parser.add_argument("-r", "--resume", default=None,
                        help="checkpoint to evaluate" if evaluating else
                        "checkpoint (or run folder: its newest checkpoint) to resume from")
    parser.add_argument("-d", "--device", default=None,
                        help="GPU indices to use, e.g. 0,1 (sets CUDA_VISIBLE_DEVICES)")
    parser.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE",
                        help="set any config key, e.g. -o trainer.epochs=3 (value parsed as JSON "
                             "when it can be); may be repeated")
    if not evaluating:
        parser.add_argument("--run-id", default=None,
                            help="name of the run folder (default: a timestamp)")


def _is_plain_name(name: str) -> bool:
    return bool(re.fullmatch(r"[A-Za-z0-9_.-]+", name)) and name not in (".", "..")


def check_top_level(config: dict) -> None:
    """The keys every part of the template reads directly: `name`, `seed`, `n_gpu`, `trainer`."""
    name = config.get("name")
    if not isinstance(name, str) or not _is_plain_name(name):
        raise ConfigError(f"name: expected a plain folder name (letters, digits, '-', '_', '.'), "
                          f"got {json.dumps(name)}")
    for key, smallest in (("seed", 0), ("n_gpu", 0)):
        value = config.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int) or value < smallest:
            raise ConfigError(f"{key}: expected an integer >= {smallest}, got {json.dumps(value)}")
    for key in config:
        close = difflib.get_close_matches(key, KNOWN_SECTIONS, n=1, cutoff=0.75)
        if key not in KNOWN_SECTIONS and close:  # other keys may be the user's own
            raise ConfigError(f"{key}: unknown key (did you mean {close[0]!r}?)")
    if not isinstance(config.get("trainer"), dict):
        raise ConfigError("trainer: missing from the config (needs at least epochs and save_dir)")


def _dest(flags: Sequence[str]) -> str:
    long_flags = [flag for flag in flags if flag.startswith("--")]
    return (long_flags or flags)[0].lstrip("-").replace("-", "_")


def parse_overrides(overrides: Iterable[str]) -> dict[str, Any]:
    """`["trainer.epochs=3", "name=x"]` -> `{"trainer.epochs": 3, "name": "x"}`."""
    result = {}
    for override in overrides:
        key, sep, text = override.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"-o {override!r}: expected key.path=value, e.g. -o trainer.epochs=3")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text  # a bare word is a string: -o name=Digits2
        result[key.strip()] = value
    return result


# -------------------------------------------------------------------- nested keys
def get_by_path(tree: dict, path: str) -> Any:
    """The value at a dotted key path; a list element is addressed by its index (`metrics.0`)."""
    node = tree
    for depth, key in enumerate(path.split(".")):
        if isinstance(node, list) and key.isdigit() and int(key) < len(node):
            node = node[int(key)]
            continue
        if not isinstance(node, dict) or key not in node:
            where = ".".join(path.split(".")[:depth + 1])
            raise ConfigError(f"{where}: missing from the config{did_you_mean(key, node)}")
        node = node[key]
    return node


def apply_modifications(config: dict, modification: dict[str, Any]) -> dict:
    """A deep copy of `config` with every `{dotted.key: value}` set; parents must exist."""
    config = copy.deepcopy(config)
    for path, value in modification.items():
        *parents, leaf = path.split(".")
        node = get_by_path(config, ".".join(parents)) if parents else config
        if not isinstance(node, dict):
            raise ConfigError(f"{'.'.join(parents)}: is not a JSON object, cannot set {leaf!r}")
        node[leaf] = value
    return config
