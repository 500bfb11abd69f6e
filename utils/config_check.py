"""Check a whole config before anything is built, and report every problem at once.

`train.py` and `test.py` describe the blocks they build (`Block`) and call
`ConfigParser.validate`, which runs `find_problems` before any folder, file, data set or model
exists. Each problem is one line that starts with its key path.
"""
import difflib
import importlib
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from utils.errors import ConfigError
from utils.names import callable_name, did_you_mean

# Every top-level key the template reads; another key close to one of these is a likely typo.
KNOWN_SECTIONS = ("name", "n_gpu", "seed", "arch", "data_loader", "optimizer", "optimizers",
                  "loss", "metrics", "lr_scheduler", "trainer")
# Keys a block may have besides type and args, and their allowed values (None: checked by
# `utils.model_options`).
BLOCK_OPTIONS = {"lr_scheduler": {"interval": ("epoch", "step")},
                 "arch": {"init": None, "freeze": None, "weights": None},
                 "optimizer": {"param_groups": None},
                 "optimizers.*": {"params": None, "lr_scheduler": None},
                 "optimizers.*.lr_scheduler": {"interval": ("epoch", "step")}}


def block_options(key_path: str) -> dict:
    """The options block `key_path` may have besides type and args (`optimizers.generator`
    has those of `optimizers.*`)."""
    parts = key_path.split(".")
    if len(parts) >= 2 and parts[0] == "optimizers":
        parts[1] = "*"
    return BLOCK_OPTIONS.get(".".join(parts), {})
# Data loader arguments every `BaseDataLoader` takes, with their smallest allowed value.
_LOADER_MINIMUMS = {"batch_size": 1, "num_workers": 0}
# Top-level integers and their ranges (a seed feeds NumPy, which takes 32 bits).
_TOP_LEVEL_RANGES = {"seed": (0, 2**32 - 1), "n_gpu": (0, 1024)}


@dataclass(frozen=True)
class Block:
    """A config block an entry point builds, and what its code passes besides the config args."""

    key: str                     # "optimizer"
    module: str                  # where a bare type name resolves: "torch.optim"
    positional: int = 0          # arguments the code passes first (the optimizer's parameters)
    given: tuple[str, ...] = ()  # keyword arguments the code passes (the data loader's seed)
    function: bool = False       # built with init_ftn (a partial), not init_obj
    many: bool = False           # a list of blocks, each with a unique name (metrics)
    required: bool = True        # else absent or null means "none" (no lr_scheduler)
    kind: str = ""               # a class `type` must derive from this: "torch.nn.Module"
    fallback: tuple[str, ...] = ()  # where a bare type name not in `module` resolves (then
    #                                 imported)
    # Build it during the check, on stand-ins, to catch values its constructor rejects (a
    # negative learning rate): "parameters" (one stand-in parameter) or the key of an earlier
    # block whose stand-in it takes (a scheduler takes the optimizer). Only for side-effect-free
    # constructors.
    dry_run: str = ""


def find_problems(config, blocks: Sequence[Block], trainer: bool = True) -> list[str]:
    """Every problem in `config` (a `ConfigParser`) for building `blocks` and, with `trainer`,
    for training; an empty list when there is none."""
    raw = config.config
    problems = top_level_problems(raw, trainer)
    metric_names, stand_ins = None, {}
    named = "optimizers" in raw and any(block.key == "optimizer" for block in blocks)
    if named:  # several optimizers, each with its scheduler, instead of optimizer/lr_scheduler
        problems += named_optimizer_problems(config, blocks)
    for block in blocks:
        if named and block.key in ("optimizer", "lr_scheduler"):
            continue
        if block.key == "trainer":
            if trainer:
                problems += _trainer_type_problems(config, block)
            continue
        if block.key not in raw and block.required:
            problems.append(f"{block.key}: missing from the config ({_EXAMPLES[block.key]})"
                            if block.key in _EXAMPLES else f"{block.key}: missing from the config")
            continue
        if raw.get(block.key) is None and not block.required:
            continue
        try:
            built = _check_block(config, block)
        except ConfigError as error:
            problems += str(error).splitlines()
            continue
        if block.many and block.key == "metrics":
            metric_names = [callable_name(function) for function in built]
        if block.dry_run:
            try:
                stand_ins[block.key] = _dry_run(config, block, stand_ins)
            except ConfigError as error:
                problems += str(error).splitlines()
    problems += data_loader_problems(raw, problems)
    from utils.model_options import arch_problems, param_group_problems
    problems += arch_problems(raw.get("arch"))
    if not named:
        problems += param_group_problems(raw.get("optimizer"))
    schedulers = {"lr_scheduler": raw.get("lr_scheduler")}
    if named and isinstance(raw["optimizers"], dict):
        schedulers = {f"optimizers.{name}.lr_scheduler": entry.get("lr_scheduler")
                      for name, entry in raw["optimizers"].items() if isinstance(entry, dict)}
    for key, scheduler in schedulers.items():
        if isinstance(scheduler, dict) and scheduler.get("interval") == "step" and \
                str(scheduler.get("type", "")).rsplit(".", 1)[-1] == "ReduceLROnPlateau":
            problems.append(f"{key}.interval: ReduceLROnPlateau steps on a validation value "
                            f"once an epoch; use \"epoch\"")
    if trainer and isinstance(raw.get("trainer"), dict):
        from trainer.settings import TrainerSettings
        problems += TrainerSettings.problems(raw["trainer"])
        if metric_names is None:
            metric_names = _metric_labels(raw.get("metrics"))
        problems += monitor_problems(raw, metric_names)
    return problems


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
    module = importlib.import_module(block.module)
    if block.many:
        # a class's kind is imported only when a class is named (torchmetrics takes seconds)
        return config.init_ftn_list(block.key, module, reserved=["loss"], kind=block.kind or None,
                                    fallback=block.fallback)
    args = (None,) * block.positional
    kwargs = dict.fromkeys(block.given)
    return config.resolve_block(key or block.key, module, args, kwargs, partial=block.function,
                                kind=kind_of(block), fallback=block.fallback)


def kind_of(block: Block) -> type | None:
    """The class `block.kind` names, imported; None without one."""
    if not block.kind:
        return None
    kind_module, _, kind_name = block.kind.rpartition(".")
    return getattr(importlib.import_module(kind_module), kind_name)


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
    return config.init_obj(key or block.key, importlib.import_module(block.module), first)


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
            _check_block(config, optimizer, key)
            stand_in = _dry_run(config, optimizer, {}, key)
        except ConfigError as error:
            problems += str(error).splitlines()
            continue
        if entry.get("params") is not None:
            from utils.model_options import params_problem
            problem = params_problem(entry["params"], f"{key}.params", "generator.*")
            problems += [problem] if problem else []
        if entry.get("lr_scheduler") is not None:
            try:
                _check_block(config, scheduler, f"{key}.lr_scheduler")
                _dry_run(config, scheduler, {"optimizer": stand_in}, f"{key}.lr_scheduler")
            except ConfigError as error:
                problems += str(error).splitlines()
    return problems


def _trainer_type_problems(config, block: Block) -> list[str]:
    """`trainer.type` (a subclass of the Trainer in an allowed module) and `trainer.args` (its
    own options)."""
    section = config.config.get("trainer")
    if not isinstance(section, dict) or ("type" not in section and "args" not in section):
        return []
    try:
        config.trainer_class(importlib.import_module(block.module), kind_of(block), block.given)
    except ConfigError as error:
        return str(error).splitlines()
    return []


def _metric_labels(entries: Any) -> list[str]:
    """The names the configured metrics will be logged under, read from the config alone (for
    checking `monitor` when a metric itself has a problem)."""
    labels = []
    for entry in entries if isinstance(entries, list) else []:
        label = entry.get("name") or entry.get("type") if isinstance(entry, dict) else entry
        if isinstance(label, str):
            labels.append(label.rsplit(".", 1)[-1])
    return labels


def top_level_problems(config: dict, trainer: bool = True) -> list[str]:
    """`name`, `seed`, `n_gpu`, the `trainer` section and likely typos of section names."""
    problems = []
    name = config.get("name")
    if isinstance(name, (int, float)) and not isinstance(name, bool):
        problems.append(f"name: expected a folder name as a string, got the number {name}; write "
                        f"\"{name}\" in the file, or --name {name} on the command line")
    elif not isinstance(name, str) or not is_plain_name(name):
        problems.append(f"name: expected a plain folder name (letters, digits, '-', '_', '.'), "
                        f"got {json.dumps(name)}")
    for key, (smallest, largest) in _TOP_LEVEL_RANGES.items():
        value = config.get(key, 0)
        if isinstance(value, bool) or not isinstance(value, int) or not smallest <= value <= largest:
            problems.append(f"{key}: expected an integer from {smallest} to {largest}, "
                            f"got {json.dumps(value)}")
    from trainer.settings import TrainerSettings
    for key in config:
        close = difflib.get_close_matches(key, KNOWN_SECTIONS, n=1, cutoff=0.75)
        if key in KNOWN_SECTIONS:
            continue
        if close:  # other keys may be the user's own
            problems.append(f"{key}: unknown key (did you mean {close[0]!r}?)")
        elif key in TrainerSettings.known_keys():
            problems.append(f"{key}: not read at the top level (did you mean 'trainer.{key}'?)")
    if trainer and "trainer" not in config:
        problems.append("trainer: missing from the config (needs at least epochs and save_dir)")
    elif trainer and not isinstance(config["trainer"], dict):
        problems.append(f"trainer: expected a JSON object, got {json.dumps(config['trainer'])}")
    return problems


def data_loader_problems(config: dict, found: Sequence[str] = ()) -> list[str]:
    """Ranges of the arguments every `BaseDataLoader` takes (the data set size is checked when
    the data is loaded); a key with a problem in `found` already is not reported again."""
    from base.base_data_loader import validation_split_problem

    args = _loader_args(config)
    problems = []
    for key, smallest in _LOADER_MINIMUMS.items():
        value = args.get(key, smallest)
        if isinstance(value, int) and not isinstance(value, bool) and value < smallest:
            problems.append(f"data_loader.args.{key}: expected an integer >= {smallest}, "
                            f"got {json.dumps(value)}")
    key_path = "data_loader.args.validation_split"
    split_problem = validation_split_problem(args.get("validation_split", 0.0))
    if split_problem and not any(line.startswith(key_path + ":") for line in found):
        problems.append(f"{key_path}: {split_problem}")
    return problems


def monitor_problems(config: dict, metric_names: Sequence[str]) -> list[str]:
    """`trainer.monitor` must name a value the trainer logs: `loss`, a metric, or `val_` + one
    of those when the data loader keeps a validation split."""
    from trainer.settings import Monitor

    try:
        monitor = Monitor.parse(config["trainer"].get("monitor", "off"))
    except ConfigError:
        return []  # reported with the other trainer problems
    keys = ["loss", *metric_names]
    section = config["trainer"]
    if section.get("type", "Trainer") not in ("Trainer", "trainer.trainer.Trainer"):
        return []  # a trainer of the user's logs loss parts too: checked on the first batch
    validating = bool(_loader_args(config).get("validation_split", 0.0))
    if validating:
        keys += [f"val_{key}" for key in keys]
    if not monitor.enabled or monitor.metric in keys:
        return []
    hint = did_you_mean(monitor.metric, keys)
    if monitor.metric.startswith("val_") and not validating:
        hint = (" (val_ values exist only when data_loader.args.validation_split holds some "
                "data back)")
    return [f"trainer.monitor: {monitor.metric!r} is not a logged value (one of: "
            f"{', '.join(keys)}){hint}"]


def _loader_args(config: dict) -> dict:
    """`data_loader.args` when it is an object, else an empty one (reported elsewhere)."""
    loader = config.get("data_loader")
    args = loader.get("args") if isinstance(loader, dict) else None
    return args if isinstance(args, dict) else {}


def is_plain_name(name: str) -> bool:
    """A folder name without path separators: letters, digits, `-`, `_`, `.`."""
    return bool(re.fullmatch(r"[A-Za-z0-9_.-]+", name)) and name not in (".", "..")
