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

from utils.command_line import CustomArgs, checked_checkpoint, option_dest, parse_command_line
from utils.config_check import Block, block_options, find_problems, is_plain_name
from utils.errors import BuildError, ConfigError, UserError
from utils.key_paths import apply_modifications, get_by_path, parse_overrides
from utils.names import (callable_name, check_options, check_signature, did_you_mean,
                         metric_option_problems, resolve_type)
from utils.files import read_json, write_json


_LOG_LEVELS = {0: logging.WARNING, 1: logging.INFO, 2: logging.DEBUG}
# Packages whose callables reject a bad value with ValueError / TypeError: that is a config
# mistake (one line). The same from the project's own code is a bug shown with its traceback.
_LIBRARIES = ("torch", "torchvision", "torchmetrics")
# What those raise for a bad argument value (a wrong weights name is a KeyError, weights that
# cannot be downloaded an OSError).
_LIBRARY_ARG_ERRORS = (ValueError, TypeError, LookupError, OSError, RuntimeError)
_BLOCK_KEYS = ("type", "args", "name")


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
                 problems: list[str] | None = None):
        """`problems` given: a bad override or run id is added to that list (and reported by
        `validate` with every other problem) instead of raising at once."""
        self._problems = problems if problems is not None else []
        self._config = apply_modifications(config, modification or {}, problems)
        self.cli_args: argparse.Namespace | None = None  # set by from_args
        self.resume = Path(resume) if resume is not None else None
        self.fine_tune = fine_tune
        self._continue_run = continue_run and self.resume is not None
        if self._continue_run:
            run_id = self.resume.parent.name
        elif run_id is not None and not is_plain_name(run_id):
            problem = (f"--run-id: {run_id!r} must be a plain folder name (letters, digits, "
                       f"'-', '_', '.'), not a path")
            if problems is None:
                raise ConfigError(problem)
            problems.append(problem)
            run_id = None
        self.run_id = run_id or datetime.now().strftime("%m%d_%H%M%S")

    # ---------------------------------------------------------------- building from the CLI
    @classmethod
    def from_args(cls, parser: argparse.ArgumentParser, options: Iterable[CustomArgs] = (),
                  argv: Sequence[str] | None = None, evaluating: bool = False) -> "ConfigParser":
        """Add the standard and the registered options to `parser`, parse `argv`, build the config.

        `-r` alone resumes with the config stored in the checkpoint; `-c` with `-r` is fine-tuning,
        or with `evaluating` (test.py, where `-r` is required) a config override. Problems in the
        overrides, the run id and a checkpoint given with `-c` are reported by `validate`, with
        the config's own.
        """
        args = parse_command_line(parser, options, argv, evaluating)
        problems: list[str] = []
        resume, continue_run = None, False
        if args.config is not None:
            config = read_json(args.config)
            if not isinstance(config, dict):
                raise ConfigError(f"{args.config}: the config must be a JSON object")
            if args.resume is not None:
                resume = checked_checkpoint(args.resume, problems, prefer_best=evaluating)
        else:  # the config stored in the checkpoint: nothing to check without it
            from trainer.checkpoint import find_checkpoint, is_latest_in_run, load_checkpoint
            # a file, or in a run folder the newest (test.py: model_best.pth)
            resume = find_checkpoint(args.resume, prefer_best=evaluating)
            checkpoint = load_checkpoint(resume, mmap=True)
            config = checkpoint["config"]
            # resuming the newest checkpoint of a run continues it; an older one branches off
            continue_run = not evaluating and is_latest_in_run(resume, checkpoint)

        modification = {option.target: getattr(args, option_dest(option.flags))
                        for option in options}
        modification = {key: value for key, value in modification.items() if value is not None}
        modification.update(parse_overrides(args.override))
        parsed = cls(config, resume=resume, modification=modification,
                     run_id=getattr(args, "run_id", None), continue_run=continue_run,
                     fine_tune=not evaluating and args.config is not None and resume is not None,
                     problems=problems)
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
            raise ConfigError("\n".join(problems))

    # ---------------------------------------------------------------- building objects
    def init_obj(self, name: str, module: ModuleType, *args, **kwargs) -> Any:
        """`module.<type>(*args, **config_args, **kwargs)` for the `{"type", "args"}` block `name`.

        `kwargs` given in code may not repeat an argument the config sets. A value rejected by
        torch is a `ConfigError`; an exception from the user's own code a `BuildError`.
        """
        factory, config_args = self.resolve_block(name, module, args, kwargs)
        return self._call(name, factory, args, config_args, kwargs)

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
            return self._call(name, factory, args, config_args, kwargs)
        return functools.partial(factory, *args, **config_args, **kwargs)

    def _call(self, name: str, factory: Callable, args: tuple, config_args: dict,
              kwargs: dict) -> Any:
        try:
            return factory(*args, **config_args, **kwargs)
        except ConfigError as error:  # the factory's own check of its arguments
            raise ConfigError(_prefixed(f"{name}.args", str(error), config_args)) from None
        except UserError:
            raise
        except Exception as error:
            origin = (getattr(factory, "__module__", None) or "").split(".")[0]
            if origin in _LIBRARIES and isinstance(error, _LIBRARY_ARG_ERRORS):
                raise ConfigError(_prefixed(f"{name}.args", str(error))) from None
            raise BuildError(f"{name}: building {_type_name(self._config, name)} raised "
                             f"{type(error).__name__}; the traceback from its code:") from error

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
            function.__name__ = label
            functions.append(function)
            seen[label] = index
        if problems:
            raise ConfigError("\n".join(problems))
        return functions

    def resolve_block(self, name: str, module: ModuleType, args: tuple, kwargs: dict,
                      partial: bool = False, kind: type | str | None = None,
                      fallback: tuple[str, ...] = ()) -> tuple[Callable, dict]:
        """The factory block `name` names and its config args, checked against its signature
        (with what the code passes: positional `args` and `kwargs`)."""
        block = get_by_path(self._config, name)
        type_path = name if isinstance(block, str) else f"{name}.type"
        if isinstance(block, str):  # "loss": "nll_loss"
            block = {"type": block}
        if not isinstance(block, dict) or "type" not in block:
            raise ConfigError(f"{name}: expected {{\"type\": ..., \"args\": {{...}}}} or a name, "
                              f"got {json.dumps(block)}")
        keys = _BLOCK_KEYS if name.rpartition(".")[2].isdigit() else _BLOCK_KEYS[:2]  # in a list
        options = block_options(name)
        problems = [f"{name}.{key}: unknown key (a block has type, args and, in a list, name)"
                    f"{did_you_mean(key, [*keys, *options])}" for key in block
                    if key not in keys and key not in options]
        problems += [f"{name}.{key}: expected one of {', '.join(map(json.dumps, choices))}, got "
                     f"{json.dumps(block[key])}" for key, choices in options.items()
                     if key in block and choices is not None and block[key] not in choices]
        config_args = block.get("args", {})
        if not isinstance(config_args, dict):
            problems.append(f"{name}.args: expected a JSON object, got {json.dumps(config_args)}")
            config_args = {}
        try:
            factory = resolve_type(block["type"], module, type_path, kind, fallback)
        except ConfigError as error:
            raise ConfigError("\n".join([*problems, str(error)])) from None
        repeated = sorted(set(config_args) & set(kwargs))
        if repeated:
            problems.append(f"{name}.args: {', '.join(map(repr, repeated))} set in the config is "
                            f"also given by the code; remove it from the config")
        home = module.__name__ if hasattr(module, block["type"]) else factory.__module__
        shown = block["type"] if "." in block["type"] else f"{home}.{block['type']}"
        try:
            check_signature(factory, args, config_args, f"{name}.args",
                            partial and not inspect.isclass(factory), code_kwargs=kwargs,
                            display_name=shown)
        except ConfigError as error:
            problems.append(str(error))
        if inspect.isclass(factory) and factory.__module__.split(".")[0] == "torchmetrics":
            problems += metric_option_problems(factory, config_args, f"{name}.args")
        if problems:
            raise ConfigError("\n".join(problems))
        return factory, dict(config_args)

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
        """Where this run's log file and TensorBoard events go: `<save_dir>/log/<name>/<run_id>`."""
        return self._save_root / "log" / self._config["name"] / self.run_id

    @property
    def _save_root(self) -> Path:
        return Path((self._config.get("trainer") or {}).get("save_dir", "saved/"))

    def make_run_dirs(self) -> None:
        """Create the run folders; a run id taken by another run gets a suffix (`_1`, `_2`, ...)."""
        if self._problems:  # from_args's problems, had `validate` not been called
            raise ConfigError("\n".join(self._problems))
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


def _prefixed(key_path: str, message: str, arguments: Iterable[str] = ()) -> str:
    """`message` with every line starting with `key_path` (unless it already does); a line
    that starts with one of `arguments` (`weights: ...`) gets that argument's key path."""
    def prefixed(line: str) -> str:
        if line.startswith(key_path):
            return line
        argument = line.split(":", 1)[0]
        if argument in arguments:
            return f"{key_path}.{line}"
        return f"{key_path}: {line}"
    return "\n".join(map(prefixed, message.splitlines() or [""]))


def _type_name(config: dict, key_path: str) -> str:
    try:
        block = get_by_path(config, key_path)
    except ConfigError:
        return key_path
    return block if isinstance(block, str) else str(block.get("type", key_path))
