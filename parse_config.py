"""The config: reading it, overriding it from the command line, and building objects from it.

`ConfigParser` never touches the disk in its constructor. Creating the run folders and writing
the effective config are explicit calls (`make_run_dirs`, `write_config`) made by `train.py`.
"""
import argparse
import copy
import functools
import inspect
import json
import logging
import os
from collections.abc import Iterable, Sequence
from datetime import datetime
from pathlib import Path
from types import ModuleType
from typing import Any, Callable

from config.blocks import call_factory, is_composed_schedule, resolve_block
from config.checks import Block, find_problems
from config.command_line import CustomArgs, Resume, option_dest
from config.key_paths import apply_modifications, get_by_path, parse_overrides
from config.names import callable_name, resolve_type
from config.sections import MAX_NAME, is_plain_name
from config.signatures import check_options
from utils.errors import ConfigError, UserError
from utils.files import read_json, write_json

_LOG_LEVELS = {0: logging.WARNING, 1: logging.INFO, 2: logging.DEBUG}


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
                 fine_tune: bool = False, continue_run: bool = False,
                 problems: list[str] | None = None, log_dir: str | os.PathLike | None = None):
        """`problems` given: a bad override or run id is added to that list (and reported by
        `validate` with every other problem) instead of raising at once."""
        self._problems = problems if problems is not None else []
        self._config = apply_modifications(config, modification or {}, problems)
        self.cli_args: argparse.Namespace | None = None  # set by from_args
        self.resume = Path(resume) if resume is not None else None
        self.fine_tune = fine_tune
        self._continue_run = continue_run and self.resume is not None
        # a continued run's log folder, as its manifest records it
        self._bound_log_dir = Path(log_dir) if log_dir is not None and self._continue_run else None
        if self._continue_run:
            run_id = self.resume.parent.name
        elif run_id is not None and not is_plain_name(run_id):
            problem = (f"--run-id: {run_id[:40]!r}{'...' if len(run_id) > 40 else ''} must be a "
                       f"plain folder name (letters, digits, '-', '_', '.'; at most "
                       f"{MAX_NAME} characters), not a path")
            if problems is None:
                raise ConfigError(problem)
            problems.append(problem)
            run_id = None
        self.run_id = run_id or datetime.now().strftime("%m%d_%H%M%S")

    # ---------------------------------------------------------------- building from the CLI
    @classmethod
    def from_args(cls, args: argparse.Namespace, options: Iterable[CustomArgs] = (),
                  resume: Resume | None = None, evaluating: bool = False) -> "ConfigParser":
        """The config of a parsed command line (`parse_command_line`): the `-c` file, or with
        `-r` alone the checkpoint's stored config, plus the overrides. `resume` is what the
        entry script resolved `-r` to; `evaluating` (test.py): `-c` with `-r` overrides the
        checkpoint's config instead of fine-tuning. Problems in the overrides, the run id and the resumed
        file are reported by `validate`, with the config's own."""
        problems = list(resume.problems) if resume is not None else []
        if args.config is not None:
            config = read_json(args.config)
            if not isinstance(config, dict):
                raise ConfigError(f"{args.config}: the config must be a JSON object")
        else:
            config = resume.config
        modification = {option.target: getattr(args, option_dest(option.flags))
                        for option in options}
        modification = {key: value for key, value in modification.items() if value is not None}
        modification.update(parse_overrides(args.override))
        parsed = cls(config, resume=resume.path if resume is not None else None,
                     modification=modification, run_id=getattr(args, "run_id", None),
                     continue_run=resume is not None and resume.continue_run,
                     fine_tune=not evaluating and args.config is not None and resume is not None,
                     problems=problems, log_dir=resume.log_dir if resume is not None else None)
        parsed.cli_args = args
        return parsed

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
        """A copy of this config with `{dotted.key: value}` applied; same run, same resume.
        A key that cannot be set is a problem `validate` reports with the others."""
        other = copy.copy(self)
        other._problems = list(self._problems)
        other._config = apply_modifications(self._config, modification, other._problems)
        return other

    def validate(self, blocks: Sequence[Block], trainer: bool = True) -> None:
        """Check the whole config for building `blocks` (and, with `trainer`, for training)
        before anything is built; a `ConfigError` lists every problem, a line each (the
        command line's first)."""
        problems = list(dict.fromkeys([*self._problems, *find_problems(self, blocks, trainer)]))
        if problems:
            raise ConfigError(*problems)

    # ---------------------------------------------------------------- building objects
    def init_obj(self, name: str, module: ModuleType, *args, **kwargs) -> Any:
        """`module.<type>(*args, **config_args, **kwargs)` for the `{"type", "args"}` block `name`.

        `kwargs` given in code may not repeat an argument the config sets. A value rejected by
        torch is a `ConfigError`; an exception from the user's own code a `BuildError`.
        """
        factory, config_args = self.resolve_block(name, module, args, kwargs)
        return call_factory(self._config, name, factory, args, config_args, kwargs)

    def init_scheduler(self, name: str, module: ModuleType, optimizer) -> Any:
        """The learning-rate scheduler block `name` of `optimizer`; a composed one
        (`SequentialLR`, `ChainedScheduler`) with its `args.schedulers`, a list of scheduler
        blocks, built first on the same optimizer. A `ConfigError` lists every nested block's
        problems, each at its key path (`lr_scheduler.args.schedulers.1.args.T_max`)."""
        block = get_by_path(self._config, name)
        if not is_composed_schedule(block):
            return self.init_obj(name, module, optimizer)
        nested = (block.get("args") or {}).get("schedulers")
        if not isinstance(nested, list) or not nested:
            raise ConfigError(f"{name}.args.schedulers: expected a list of scheduler blocks "
                              f"({block['type']} runs them in turn), e.g. [{{\"type\": "
                              f"\"LinearLR\", \"args\": {{\"start_factor\": 0.1, "
                              f"\"total_iters\": 5}}}}, {{\"type\": \"CosineAnnealingLR\", "
                              f"\"args\": {{\"T_max\": 45}}}}]")
        schedulers, problems = [], []
        for index in range(len(nested)):
            try:
                schedulers.append(self.init_scheduler(f"{name}.args.schedulers.{index}", module,
                                                      optimizer))
            except ConfigError as error:
                problems += error.problems
        if problems:
            raise ConfigError(*problems)
        outer = self.with_modification({})  # the block without its nested ones, built on them
        del get_by_path(outer._config, f"{name}.args")["schedulers"]
        return outer.init_obj(name, module, optimizer=optimizer, schedulers=schedulers)

    def init_ftn(self, name: str, module: ModuleType, *args, **kwargs) -> Callable:
        """`functools.partial(module.<type>, *args, **config_args, **kwargs)` for block `name`.

        A class (`torch.nn.CrossEntropyLoss`) is instantiated instead: its instance is the
        function (`criterion(output, target)`)."""
        return self._init_ftn(name, module, args, kwargs)

    def _init_ftn(self, name: str, module: ModuleType, args: tuple, kwargs: dict,
                  kind: type | str | None = None, fallback: tuple[str, ...] = ()) -> Callable:
        factory, config_args = self.resolve_block(name, module, args, kwargs, partial=True,
                                                  kind=kind, fallback=fallback)
        if inspect.isclass(factory):
            return call_factory(self._config, name, factory, args, config_args, kwargs)
        return functools.partial(factory, *args, **config_args, **kwargs)

    def init_ftn_list(self, name: str, module: ModuleType, reserved: Sequence[str] = (),
                      kind: type | str | None = None, fallback: tuple[str, ...] = ()) -> list:
        """`init_ftn` for each entry of the list `name` (e.g. `metrics`), each with a unique
        `__name__`: the function's own, or the entry's `"name"` (`{"type": "top_k_acc",
        "args": {"k": 5}, "name": "top5"}`). A class entry must derive from `kind`; a bare
        name not in `module` is looked up in the module `fallback`. A `ConfigError` lists
        every entry's problems."""
        entries = self._config.get(name, [])
        if not isinstance(entries, list):
            raise ConfigError(f"{name}: expected a list, got {json.dumps(entries)}")
        functions, seen, problems = [], {}, []
        for index, entry in enumerate(entries):
            try:
                function = self._init_ftn(f"{name}.{index}", module, (), {}, kind, fallback)
            except ConfigError as error:
                problems.append(str(error))
                continue
            label = entry.get("name", callable_name(function)) if isinstance(entry, dict) \
                else callable_name(function)
            if not isinstance(label, str) or not label or label in reserved or label in seen:
                taken = f"taken by {name}.{seen[label]}" if label in seen else "not usable"
                problems.append(f"{name}.{index}: the name {json.dumps(label)} is {taken}; give "
                                f"this entry a \"name\" of its own, e.g. \"top5\"")
                continue
            reads = {key: entry.get(key) for key in ("output", "target")} \
                if isinstance(entry, dict) else {}
            wrong = [key for key, value in reads.items()
                     if value is not None and (not isinstance(value, str) or not value)]
            if wrong:
                problems += [f"{name}.{index}.{key}: expected a key of the step's {key} (a "
                             f"string), got {json.dumps(reads[key])}" for key in wrong]
                continue
            function.__name__ = label
            # the step's output and target keys it reads (None: the whole value)
            function.reads = (reads.get("output"), reads.get("target") or reads.get("output"))
            functions.append(function)
            seen[label] = index
        if problems:
            raise ConfigError(*problems)
        return functions

    def resolve_block(self, name: str, module: ModuleType, args: tuple, kwargs: dict,
                      partial: bool = False, kind: type | str | None = None,
                      fallback: tuple[str, ...] = ()) -> tuple[Callable, dict]:
        """The factory block `name` names and its config args, checked against its signature
        (with what the code passes: positional `args` and `kwargs`)."""
        return resolve_block(self._config, name, module, args, kwargs, partial, kind, fallback)

    def trainer_class(self, module: ModuleType, kind: type, given: Sequence[str] = ()
                      ) -> tuple[type, dict]:
        """The trainer class `trainer.type` names (default: `kind` itself; a subclass of it in
        `module` or a dotted path in an allowed module) and its own options, `trainer.args`,
        checked against its signature; `given`: the arguments the code passes."""
        section = self._config.get("trainer") or {}
        factory = resolve_type(section.get("type", kind.__name__), module, "trainer.type", kind)
        if not inspect.isclass(factory):
            raise ConfigError(f"trainer.type: {section['type']!r} is not a class (a subclass "
                              f"of {kind.__name__})")
        options = section.get("args", {})
        if not isinstance(options, dict):
            raise ConfigError(f"trainer.args: expected a JSON object, got {json.dumps(options)}")
        check_options(factory, options, "trainer.args", given, stop_at=kind)
        return factory, dict(options)

    # ---------------------------------------------------------------- run folders and logging
    @property
    def save_dir(self) -> Path:
        """Where this run's config and checkpoints go: `<save_dir>/models/<name>/<run_id>`."""
        if self._continue_run:
            return self.resume.parent
        return self._save_root / "models" / self._config["name"] / self.run_id

    @property
    def log_dir(self) -> Path:
        """Where this run's log file and TensorBoard events go: `<save_dir>/log/<name>/<run_id>`,
        or for a continued run the folder its manifest binds to it."""
        if self._bound_log_dir is not None:
            return self._bound_log_dir
        return self._save_root / "log" / self._config["name"] / self.run_id

    @property
    def _save_root(self) -> Path:
        return Path((self._config.get("trainer") or {}).get("save_dir", "saved/"))

    def make_run_dirs(self) -> None:
        """Create the run folders; a run id taken by another run gets a suffix (`_1`, `_2`, ...)."""
        if self._problems:  # from_args's problems, had `validate` not been called
            raise ConfigError(*self._problems)
        if self._continue_run:
            try:
                self.log_dir.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise UserError(f"trainer.save_dir: cannot create {self.log_dir} "
                                f"({error.strerror})") from None
            return
        base_id = self.run_id
        parent = self.save_dir.parent
        _make_folder(parent)  # <save_dir>/models/<name>: a file there is one clear line
        _make_folder(self.log_dir.parent)
        for attempt in range(1000):
            self.run_id = base_id if attempt == 0 else f"{base_id}_{attempt}"
            if self.log_dir.exists():  # a run id is taken by either of its folders
                continue
            try:
                self.save_dir.mkdir()  # atomic: exactly one of two racing runs gets this name
            except FileExistsError:
                continue
            except OSError as error:
                raise UserError(f"trainer.save_dir: cannot create {self.save_dir} "
                                f"({error.strerror})") from None
            try:
                self.log_dir.mkdir()
            except OSError as error:  # taken meanwhile, or not writable: give the name back
                self.save_dir.rmdir()
                if isinstance(error, FileExistsError):
                    continue
                raise UserError(f"trainer.save_dir: cannot create {self.log_dir} "
                                f"({error.strerror})") from None
            return
        raise UserError(f"{parent}: no free run folder for run id {base_id!r}")

    def write_config(self) -> None:
        """Save the effective config as `config.json` in the run folder."""
        write_json(self._config, self.save_dir / "config.json")

    def get_logger(self, name: str, verbosity: int = 2) -> logging.Logger:
        if verbosity not in _LOG_LEVELS:
            raise ConfigError(f"trainer.verbosity: {verbosity!r} is not one of 0, 1, 2")
        logger = logging.getLogger(name)
        logger.setLevel(_LOG_LEVELS[verbosity])
        return logger


def _make_folder(folder: Path) -> None:
    """`folder` and its parents; a `UserError` naming it when that cannot be."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = next((path for path in [folder, *folder.parents]
                        if path.exists() and not path.is_dir()), folder)
        raise UserError(f"trainer.save_dir: {blocker} is a file, not a folder") from None
    except OSError as error:
        raise UserError(f"trainer.save_dir: cannot create {folder} ({error.strerror})") from None
