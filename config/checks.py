"""Check a whole config before anything is built, and report every problem at once.

`train.py` and `test.py` describe the blocks they build (`Block`) and call
`ConfigParser.validate`, which runs `find_problems` before any folder, file, data set or model
exists. Each problem is one line that starts with its key path.
"""
import importlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from config.model_options import (
    arch_problems,
    closure_problem,
    param_group_problems,
    params_problem,
)
from config.names import callable_name
from config.sections import (
    is_plain_name,
    loader_args,
    metric_labels,
    monitor_problems,
    top_level_problems,
)
from utils.errors import ConfigError

# Keys a block may have besides type and args, and their allowed values (None: checked by
# `config.model_options`).
BLOCK_OPTIONS = {"lr_scheduler": {"interval": ("epoch", "step")},
                 "arch": {"init": None, "freeze": None, "weights": None},
                 "optimizer": {"param_groups": None},
                 "optimizers.*": {"params": None, "lr_scheduler": None},
                 "optimizers.*.lr_scheduler": {"interval": ("epoch", "step")},
                 # which of the step's outputs (and targets) a metric reads: keys of dicts
                 "metrics.*": {"output": None, "target": None}}


def block_options(key_path: str) -> dict:
    """The options block `key_path` may have besides type and args (`optimizers.generator`
    has those of `optimizers.*`)."""
    parts = key_path.split(".")
    if len(parts) >= 2 and parts[0] == "optimizers" or parts[:1] == ["metrics"] and \
            len(parts) == 2:
        parts[1] = "*"
    return BLOCK_OPTIONS.get(".".join(parts), {})
@dataclass(frozen=True)
class Block:
    """A config block an entry point builds, and what its code passes besides the config args."""

    key: str                     # "optimizer"
    # where a bare type name resolves: a module the entry script imported and handed in (the
    # user's `model.model`), or the dotted name of a library module ("torch.optim")
    module: ModuleType | str
    positional: int = 0          # arguments the code passes first (the optimizer's parameters)
    given: tuple[str, ...] = ()  # keyword arguments the code passes (the data loader's seed)
    function: bool = False       # built with init_ftn (a partial), not init_obj
    many: bool = False           # a list of blocks, each with a unique name (metrics)
    required: bool = True        # else absent or null means "none" (no lr_scheduler)
    # a class `type` must derive from this: the class, or its dotted name ("torch.nn.Module")
    kind: type | str = ""
    fallback: tuple[str, ...] = ()  # where a bare type name not in `module` resolves (then
    #                                 imported)
    # Build it during the check, on stand-ins, to catch values its constructor rejects (a
    # negative learning rate): "parameters" (one stand-in parameter) or the key of an earlier
    # block whose stand-in it takes (a scheduler takes the optimizer). Only for side-effect-free
    # constructors.
    dry_run: str = ""
    # Handed in by the entry script, so that the config system depends on neither: for
    # `trainer`, the settings class whose `problems(section)` checks the section; for
    # `data_loader`, a function from its `args` to the problems with the values every loader
    # takes.
    settings: Any = ""
    check_args: Any = ""


def find_problems(config, blocks: Sequence[Block], trainer: bool = True) -> list[str]:
    """Every problem in `config` (a `ConfigParser`) for building `blocks` and, with `trainer`,
    for training; an empty list when there is none."""
    raw = config.config
    settings = next((imported(block.settings) for block in blocks if block.key == "trainer"), None)
    problems = top_level_problems(raw, trainer, settings.known_keys() if settings else ())
    named = "optimizers" in raw and any(block.key == "optimizer" for block in blocks)
    if named:  # several optimizers, each with its scheduler, instead of optimizer/lr_scheduler
        problems += named_optimizer_problems(config, blocks)
    found, metric_names = _block_problems(config, blocks, trainer, named)
    problems += found
    loader = next((block for block in blocks if block.key == "data_loader"), None)
    if loader is not None and loader.check_args:
        problems += [problem for problem in imported(loader.check_args)(loader_args(raw))
                     if problem.split(":")[0] not in {line.split(":")[0] for line in problems}]
    problems += arch_problems(raw.get("arch"))
    if not named:
        problems += param_group_problems(raw.get("optimizer"))
    problems += _interval_problems(raw, named)
    if trainer and settings is not None and isinstance(raw.get("trainer"), dict):
        problems += settings.problems(raw["trainer"])
        if metric_names is None:
            metric_names = metric_labels(raw.get("metrics"))
        problems += monitor_problems(raw, metric_names, settings)
    return problems


def _block_problems(config, blocks: Sequence[Block], trainer: bool,
                    named: bool) -> tuple[list[str], list[str] | None]:
    """Each block resolved, its args bound and, where it can be, dry-built; the problems, and
    the names the metrics log under (None when the metrics have a problem)."""
    raw, problems = config.config, []
    metric_names, stand_ins = None, {}
    for block in blocks:
        if named and block.key in ("optimizer", "lr_scheduler"):
            continue
        if block.key == "trainer":
            problems += _trainer_type_problems(config, block) if trainer else []
            continue
        if block.key not in raw and block.required:
            problems.append(f"{block.key}: missing from the config ({_EXAMPLES[block.key]})"
                            if block.key in _EXAMPLES else f"{block.key}: missing from the config")
            continue
        if raw.get(block.key) is None and not block.required:
            continue
        try:
            built = _check_block(config, block)
            if block.key == "optimizer":
                problems += _closure_problems(built[0], block.key, raw[block.key])
            if block.many and block.key == "metrics":
                metric_names = [callable_name(function) for function in built]
            if block.dry_run:
                stand_ins[block.key] = _dry_run(config, block, stand_ins)
        except ConfigError as error:
            problems += error.problems
    return problems, metric_names


def _interval_problems(config: dict, named: bool) -> list[str]:
    """A ReduceLROnPlateau set to step after every optimizer step."""
    schedulers = {"lr_scheduler": config.get("lr_scheduler")}
    if named and isinstance(config["optimizers"], dict):
        schedulers = {f"optimizers.{name}.lr_scheduler": entry.get("lr_scheduler")
                      for name, entry in config["optimizers"].items() if isinstance(entry, dict)}
    return [f"{key}.interval: ReduceLROnPlateau steps on a validation value once an epoch; "
            f"use \"epoch\"" for key, scheduler in schedulers.items()
            if isinstance(scheduler, dict) and scheduler.get("interval") == "step" and
            str(scheduler.get("type", "")).rsplit(".", 1)[-1] == "ReduceLROnPlateau"]


# How a missing required block is written, for the message.
_EXAMPLES = {
    "arch": '"arch": {"type": "DigitsModel", "args": {}}',
    "data_loader": '"data_loader": {"type": "DigitsDataLoader", "args": {"data_dir": "data/", '
                   '"batch_size": 64}}',
    "optimizer": '"optimizer": {"type": "Adam", "args": {"lr": 0.001}}',
    "loss": '"loss": "nll_loss"',
    "metrics": '"metrics": ["accuracy"], or [] for none',
}


def _check_block(config, block: Block, key: str | None = None) -> Any:
    module = module_of(block)
    if block.many:
        # a class's kind is imported only when a class is named (torchmetrics takes seconds)
        return config.init_ftn_list(block.key, module, reserved=["loss"], kind=block.kind or None,
                                    fallback=block.fallback)
    args = (None,) * block.positional
    kwargs = dict.fromkeys(block.given)
    return config.resolve_block(key or block.key, module, args, kwargs, partial=block.function,
                                kind=kind_of(block), fallback=block.fallback)


def module_of(block: Block) -> ModuleType:
    """The module where `block`'s bare type names resolve."""
    return block.module if isinstance(block.module, ModuleType) else \
        importlib.import_module(block.module)


def kind_of(block: Block) -> type | None:
    """The class `block.kind` is or names, imported; None without one."""
    return imported(block.kind)


def imported(path: Any) -> Any:
    """The object a dotted `path` names (`"torch.nn.Module"`), imported; an object that is
    not a string as it is; None for an empty path."""
    if not isinstance(path, str):
        return path
    if not path:
        return None
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def _dry_run(config, block: Block, stand_ins: dict, key: str | None = None) -> Any:
    """`block` (at `key`) built on a stand-in first argument; None when that stand-in is
    missing."""
    import torch

    if block.dry_run == "parameters":
        first = [torch.nn.Parameter(torch.zeros(1))]
    elif stand_ins.get(block.dry_run) is not None:
        first = stand_ins[block.dry_run]
    else:
        return None  # the block it builds on has a problem of its own
    if block.dry_run == "optimizer":  # a scheduler: composed ones build their nested blocks
        return config.init_scheduler(key or block.key, module_of(block), first)
    return config.init_obj(key or block.key, module_of(block), first)


def named_optimizer_problems(config, blocks: Sequence[Block]) -> list[str]:
    """`optimizers`: `{"name": {"type", "args", "params", "lr_scheduler"}, ...}`, each checked
    like the `optimizer` and `lr_scheduler` blocks; with `optimizer` or `lr_scheduler` also set."""
    raw = config.config
    problems = [f"{key}: set either optimizer/lr_scheduler or optimizers, not both"
                for key in ("optimizer", "lr_scheduler") if raw.get(key) is not None]
    entries = raw["optimizers"]
    if not isinstance(entries, dict) or not entries:
        return problems + [f"optimizers: expected an object of named optimizers such as "
                           f"{{\"generator\": {{\"type\": \"Adam\", \"args\": {{\"lr\": 0.0002}}, "
                           f"\"params\": [\"generator.*\"]}}}}, got {json.dumps(entries)}"]
    optimizer, scheduler = (next(block for block in blocks if block.key == key)
                            for key in ("optimizer", "lr_scheduler"))
    for name, entry in entries.items():
        key = f"optimizers.{name}"
        if not is_plain_name(name) or "." in name:
            problems.append(f"{key}: an optimizer's name is a word (letters, digits, '-', '_')")
            continue
        try:
            factory, _ = _check_block(config, optimizer, key)
            stand_in = _dry_run(config, optimizer, {}, key)
        except ConfigError as error:
            problems += error.problems
            continue
        problems += _closure_problems(factory, key, entry)
        if entry.get("params") is not None:

            problem = params_problem(entry["params"], f"{key}.params", "generator.*")
            problems += [problem] if problem else []
        if entry.get("lr_scheduler") is not None:
            try:
                _check_block(config, scheduler, f"{key}.lr_scheduler")
                _dry_run(config, scheduler, {"optimizer": stand_in}, f"{key}.lr_scheduler")
            except ConfigError as error:
                problems += error.problems
    return problems


def _closure_problems(optimizer: type, key: str, block: Any) -> list[str]:
    """The optimizer block `key` (`block`: its config value) names a class whose `step`
    requires a closure."""
    problem = closure_problem(optimizer, key if isinstance(block, str) else f"{key}.type")
    return [problem] if problem else []


def _trainer_type_problems(config, block: Block) -> list[str]:
    """`trainer.type` (a subclass of the Trainer in an allowed module) and `trainer.args` (its
    own options)."""
    section = config.config.get("trainer")
    if not isinstance(section, dict) or ("type" not in section and "args" not in section):
        return []
    try:
        config.trainer_class(module_of(block), kind_of(block), block.given)
    except ConfigError as error:
        return error.problems
    return []
