"""Building one `{"type": ..., "args": {...}}` block: its factory resolved and its args
checked against the signature, then the call, with its errors classified — the user's value
(one line) or the user's code (its traceback)."""
import inspect
import json
from collections.abc import Callable, Iterable
from types import ModuleType
from typing import Any

from config.checks import block_options
from config.key_paths import get_by_path
from config.names import resolve_type
from config.signatures import check_signature, metric_option_problems
from utils.errors import BuildError, ConfigError, UserError, did_you_mean

# Packages whose callables reject a bad value with ValueError / TypeError: that is a config
# mistake (one line). The same from the project's own code is a bug shown with its traceback.
_LIBRARIES = ("torch", "torchvision", "torchmetrics")
# What those raise for a bad argument value (a wrong weights name is a KeyError, weights that
# cannot be downloaded an OSError).
_LIBRARY_ARG_ERRORS = (ValueError, TypeError, LookupError, OSError, RuntimeError)
_BLOCK_KEYS = ("type", "args", "name")


# Schedulers that run other schedulers, given as `args.schedulers`: a list of blocks.
COMPOSED_SCHEDULES = ("SequentialLR", "ChainedScheduler")


def is_composed_schedule(block: Any) -> bool:
    """Whether a scheduler block runs nested scheduler blocks (`SequentialLR`, ...)."""
    return isinstance(block, dict) and isinstance(block.get("type"), str) and \
        block["type"].rsplit(".", 1)[-1] in COMPOSED_SCHEDULES


def resolve_block(config: dict, name: str, module: ModuleType, args: tuple, kwargs: dict,
                  partial: bool = False, kind: type | str | None = None,
                  fallback: tuple[str, ...] = ()) -> tuple[Callable, dict]:
    """The factory the block `name` of `config` names and its config args, checked against
    its signature (with what the code passes: positional `args` and `kwargs`); a
    `ConfigError` lists every problem."""
    block = get_by_path(config, name)
    type_path = name if isinstance(block, str) else f"{name}.type"
    if isinstance(block, str):  # "loss": "nll_loss"
        block = {"type": block}
    if not isinstance(block, dict) or "type" not in block:
        raise ConfigError(f"{name}: expected {{\"type\": ..., \"args\": {{...}}}} or a name, "
                          f"got {json.dumps(block)}")
    problems = _key_problems(name, block)
    config_args = block.get("args", {})
    if not isinstance(config_args, dict):
        problems.append(f"{name}.args: expected a JSON object, got {json.dumps(config_args)}")
        config_args = {}
    try:
        factory = resolve_type(block["type"], module, type_path, kind, fallback)
    except ConfigError as error:
        raise ConfigError(*problems, *error.problems) from None
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
        raise ConfigError(*problems)
    return factory, dict(config_args)


def _key_problems(name: str, block: dict) -> list[str]:
    """Keys of block `name` besides type, args (and name in a list) and its options, and
    option values outside their choices."""
    keys = _BLOCK_KEYS if name.rpartition(".")[2].isdigit() else _BLOCK_KEYS[:2]  # in a list
    options = block_options(name)
    problems = [f"{name}.{key}: unknown key (a block has type, args and, in a list, name)"
                f"{did_you_mean(key, [*keys, *options])}" for key in block
                if key not in keys and key not in options]
    return problems + [f"{name}.{key}: expected one of {', '.join(map(json.dumps, choices))}, "
                       f"got {json.dumps(block[key])}" for key, choices in options.items()
                       if key in block and choices is not None and block[key] not in choices]


def call_factory(config: dict, name: str, factory: Callable, args: tuple, config_args: dict,
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
        raise BuildError(f"{name}: building {_type_name(config, name)} raised "
                         f"{type(error).__name__}; the traceback from its code:") from error


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
