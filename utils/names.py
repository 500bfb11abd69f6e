"""From a config's `type` string to a callable, safely, and checking its arguments.

A `type` is a public name inside the module its config block belongs to, or a dotted path inside
one of `ALLOWED_MODULES` (the building blocks of a model and its training: layers, losses,
optimizers, schedulers, torchvision models and transforms, this project's `model` and
`data_loader`). Every module passed on the way must be one of those, and every object reached
must be defined in an allowed package and outside `DENIED_MODULES`. So a config, including one
stored in a checkpoint someone sent you, can never reach `os`, `subprocess`, `eval`, torch's
loaders of code and pickles, or this template's own file writers; nothing else is imported.
"""
import difflib
import functools
import importlib
import inspect
import json
from types import ModuleType
from collections.abc import Sequence
from typing import Any, Callable

from utils.errors import ConfigError

# Modules (with their submodules) a dotted `type` may name; nothing else is imported by a config.
ALLOWED_MODULES = ("torch.nn", "torch.optim", "torchvision.models", "torchvision.transforms",
                   "torchvision.ops", "torchmetrics", "model", "data_loader", "trainer.trainer",
                   "examples")
# Packages the objects reached may be defined in (`torch.nn.functional.conv2d` is torch's own).
ALLOWED_PACKAGES = ("torch", "torchvision", "torchmetrics", "model", "data_loader", "trainer",
                    "examples")
# Modules inside those packages whose functions load or run code, or fetch or write files.
DENIED_MODULES = ("torch.hub", "torch.serialization", "torch.utils", "torch._ops", "torch.ops",
                  "torch.package", "torch.jit", "torch.onnx", "torch.export", "torch.distributed",
                  "torch.multiprocessing", "torch.classes", "torch.backends", "torchvision.io",
                  "torchvision.datasets", "torchvision.utils", "trainer.checkpoint")


def did_you_mean(word: str, choices: Any) -> str:
    """` (did you mean 'x'?)` for the closest of `choices`, or an empty string."""
    if not isinstance(choices, (dict, list, tuple, set)):
        return ""
    names = [str(choice) for choice in choices]
    close = ([name for name in names if name.lower() == word.lower()]
             or difflib.get_close_matches(word, names, n=1, cutoff=0.75)
             or [name for name in names if len(word) >= 3 and word.lower() in name.lower()]
             or difflib.get_close_matches(word, names, n=1, cutoff=0.6))
    return f" (did you mean {close[0]!r}?)" if close else ""


def resolve_type(name: Any, module: ModuleType, key_path: str, kind: type | str | None = None,
                 fallback: tuple[str, ...] = ()) -> Callable:
    """The callable a config's `type` names: a public name in `module` (else in the first of
    the modules `fallback` that has it, imported only then), or a dotted path inside
    `ALLOWED_MODULES`. Nothing else is ever imported. A class must be a subclass of `kind` (a
    function is taken as a factory of one)."""
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{key_path}: expected a name, got {json.dumps(name)}")
    parts = name.split(".")
    private = [part for part in parts if part.startswith("_") or not part.isidentifier()]
    if private:
        raise ConfigError(f"{key_path}: {name!r} is not allowed (private or invalid name "
                          f"{private[0]!r})")
    if len(parts) == 1 and fallback and not hasattr(module, name):
        obj = _fallback_attr(module, fallback, name, key_path)
    elif len(parts) == 1:
        obj = _public_attr(module, name, key_path, module.__name__)
    else:
        obj = _resolve_dotted(parts, key_path)
    if not (inspect.isclass(obj) or inspect.isfunction(obj) or inspect.isbuiltin(obj)):
        raise ConfigError(f"{key_path}: {name!r} is not a class or a function")
    if isinstance(kind, str):  # "torchmetrics.Metric": for classes of that package, imported now
        kind_module, _, kind_name = kind.rpartition(".")
        same_package = (getattr(obj, "__module__", "") or "").split(".")[0] == kind.split(".")[0]
        kind = getattr(importlib.import_module(kind_module), kind_name) \
            if inspect.isclass(obj) and same_package else None
    if kind is not None and inspect.isclass(obj) and not issubclass(obj, kind):
        raise ConfigError(f"{key_path}: {name!r} is not a subclass of {kind.__name__} (it is "
                          f"a {obj.__mro__[1].__name__} subclass)")
    return obj


def _allowed_module(module_name: str) -> bool:
    return any(module_name == m or module_name.startswith(m + ".") for m in ALLOWED_MODULES)


def _resolve_dotted(parts: list[str], key_path: str) -> Any:
    if not _allowed_module(".".join(parts[:-1])):
        raise ConfigError(f"{key_path}: {'.'.join(parts)!r} is outside the modules a config may "
                          f"use ({', '.join(ALLOWED_MODULES)}; code of your own goes in model/, "
                          f"data_loader/ or examples/)")
    for split in range(len(parts) - 1, 0, -1):  # the longest importable allowed module prefix
        module_name = ".".join(parts[:split])
        if not _allowed_module(module_name):
            continue
        try:
            obj = importlib.import_module(module_name)
        except ImportError:
            continue
        for part in parts[split:]:
            if not inspect.ismodule(obj):  # no walks through classes, enums or instances
                raise ConfigError(f"{key_path}: {'.'.join(parts)!r} reaches into {module_name}, "
                                  f"which is not a module; name a class or function of a module")
            obj = _public_attr(obj, part, key_path, module_name)
            module_name += "." + part
        return obj
    raise ConfigError(f"{key_path}: cannot import {parts[0]!r}")


def _public_attr(owner: Any, name: str, key_path: str, owner_name: str) -> Any:
    """`owner.name`, if public and defined in an allowed package (`torch.os` is not torch's)."""
    if not name.startswith("_") and hasattr(owner, name):
        obj = getattr(owner, name)
        problem = _origin_problem(obj, f"{owner_name}.{name}")
        if problem:
            raise ConfigError(f"{key_path}: {problem}")
        return obj
    choices = _public_names(owner)
    raise ConfigError(f"{key_path}: {name!r} is not in {owner_name}{did_you_mean(name, choices)}")


def _fallback_attr(module: ModuleType, fallback: tuple[str, ...], name: str, key_path: str) -> Any:
    """`name` from the first module of `fallback` that has it; else an error suggesting the
    nearest name of `module` and of those modules."""
    modules = [importlib.import_module(module_name) for module_name in fallback]
    found = next((other for other in modules if hasattr(other, name)), None)
    if found is not None:
        return _public_attr(found, name, key_path, found.__name__)
    choices = [*_public_names(module), *(n for other in modules for n in _public_names(other))]
    raise ConfigError(f"{key_path}: {name!r} is not in {module.__name__} (nor in "
                      f"{fallback[0]}){did_you_mean(name, choices)}")


def _public_names(owner: Any) -> list[str]:
    """The public callables of `owner` a config may name."""
    return [n for n in dir(owner) if not n.startswith("_") and callable(getattr(owner, n, None))
            and not _origin_problem(getattr(owner, n), n)]


# The torchmetrics subpackages a config may use: metrics of plain tensors. The others load
# models or data sets (text, image, audio, multimodal: downloads, remote code).
TORCHMETRICS_ALLOWED = ("torchmetrics.classification", "torchmetrics.regression",
                        "torchmetrics.aggregation")


def _origin_problem(obj: Any, shown: str) -> str | None:
    """Why a config may not use `obj` (reached as `shown`), or None: a module must be one of
    `ALLOWED_MODULES`; anything else must be defined in `ALLOWED_PACKAGES`, outside
    `DENIED_MODULES` (`torch.os` is not torch's, `torch.nn.functional.torch.load` is denied)."""
    if inspect.ismodule(obj):
        if _allowed_module(obj.__name__):
            return None
        return (f"{shown} is the module {obj.__name__}, outside the modules a config may use "
                f"({', '.join(ALLOWED_MODULES)})")
    origin = getattr(obj, "__module__", None)
    if not isinstance(origin, str) or origin.split(".")[0] not in ALLOWED_PACKAGES:
        return (f"{shown} comes from {origin or 'an unknown module'}, outside the packages a "
                f"config may use ({', '.join(ALLOWED_PACKAGES)})")
    if origin.split(".")[0] == "torchmetrics" and not any(
            origin == m or origin.startswith(m + ".") for m in TORCHMETRICS_ALLOWED):
        return (f"{shown} is not allowed in a config (of torchmetrics only the metrics in "
                f"{', '.join(TORCHMETRICS_ALLOWED)})")
    if any(origin == d or origin.startswith(d + ".") for d in DENIED_MODULES):
        return f"{shown} is not allowed in a config (it loads or runs code, or fetches or writes files)"
    return None


def check_signature(factory: Callable, args: tuple, config_args: dict, key_path: str,
                    partial: bool = False, code_kwargs: dict | None = None,
                    display_name: str | None = None) -> None:
    """Raise a `ConfigError` naming `key_path` when `config_args` (with the `args` and
    `code_kwargs` the code passes) do not fit `factory`'s signature; one line per problem.
    `display_name` is how messages call the factory (default: its qualified name)."""
    display_name = display_name or _qualified_name(factory)
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # some builtins have no signature to check against
        return
    parameters = signature.parameters
    accepts_any = any(p.kind is p.VAR_KEYWORD for p in parameters.values())
    known = [n for n, p in parameters.items() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    given_by_code = {*list(parameters)[:len(args)], *(code_kwargs or {})}  # not to suggest
    problems = [] if accepts_any else [
        f"{key_path}: unexpected argument {key!r} for {display_name}"
        f"{did_you_mean(key, [n for n in known if n not in given_by_code])}"
        for key in config_args if key not in known]
    for key, value in config_args.items():
        problem = key in parameters and _json_type_problem(parameters[key], value,
                                                          f"{key_path}.{key}")
        if problem:
            problems.append(problem)
    if not problems:
        try:
            (signature.bind_partial if partial else signature.bind)(
                *args, **config_args, **(code_kwargs or {}))
        except TypeError as error:
            problems.append(f"{key_path}: {error} for {display_name}")
    if problems:
        raise ConfigError("\n".join(problems))


def check_options(cls: type, options: dict, key_path: str, given: Sequence[str] = (),
                  stop_at: type | None = None) -> None:
    """Raise a `ConfigError` (a line per problem) when `options` are not keyword parameters of
    `cls.__init__` — or, where it passes `**kwargs` on, of its bases' up to `stop_at` — or have
    the wrong JSON type; `given`: parameters the code passes, which options may not set."""
    parameters = keyword_parameters(cls, stop_at)
    choices = [name for name in parameters if name not in given]
    problems = []
    for key, value in options.items():
        if key in given:
            problems.append(f"{key_path}.{key}: set by the code, not by the config")
        elif key not in parameters:
            problems.append(f"{key_path}: unexpected argument {key!r} for {cls.__name__} (its "
                            f"options: {', '.join(choices) or 'none'}){did_you_mean(key, choices)}")
        elif problem := _json_type_problem(parameters[key], value, f"{key_path}.{key}"):
            problems.append(problem)
    if problems:
        raise ConfigError("\n".join(problems))


# The keyword options every torchmetrics.Metric takes through **kwargs (its documentation's).
TORCHMETRICS_OPTIONS = ("compute_on_cpu", "dist_sync_on_step", "process_group", "dist_sync_fn",
                        "distributed_available_fn", "sync_on_compute", "compute_with_cache")


def metric_option_problems(cls: type, config_args: dict, key_path: str) -> list[str]:
    """Arguments a torchmetrics class does not take: its constructors (`__new__` of a task
    wrapper such as `F1Score`, `__init__` through the bases while they pass **kwargs on)
    take them through **kwargs, so the signature check cannot see a misspelt one."""
    known = list(keyword_parameters(cls))
    if "__new__" in vars(cls):
        known += [name for name, p in list(inspect.signature(cls.__new__).parameters.items())[1:]
                  if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    known += TORCHMETRICS_OPTIONS
    return [f"{key_path}: unexpected argument {key!r} for {cls.__name__}"
            f"{did_you_mean(key, known)}" for key in config_args if key not in known]


def keyword_parameters(cls: type, stop_at: type | None = None) -> dict[str, inspect.Parameter]:
    """The named parameters of `cls.__init__` and, while an `__init__` takes `**kwargs` (and
    passes them on), of the bases' up to `stop_at`."""
    found: dict[str, inspect.Parameter] = {}
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        try:
            parameters = list(inspect.signature(klass.__init__).parameters.values())[1:]
        except (TypeError, ValueError):
            break
        for parameter in parameters:
            if parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY):
                found.setdefault(parameter.name, parameter)
        if klass is stop_at or not any(p.kind is p.VAR_KEYWORD for p in parameters):
            break
    return found


_SIMPLE_TYPES = {"int": "an integer", "float": "a number", "bool": "true or false",
                 "None": "null"}


def _expected_kinds(parameter: inspect.Parameter) -> set[str]:
    """The JSON kinds a parameter takes, from an annotation made only of int, float, bool and
    None (e.g. `step_size: int`), else from a default that is a plain number or boolean; an
    empty set when neither says."""
    annotation = parameter.annotation
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", None)
    if annotation is not parameter.empty and not isinstance(annotation, str):
        text = str(annotation) if text is None else text
    if isinstance(text, str):
        names = {name.strip() for name in text.split("|")}
        if names <= set(_SIMPLE_TYPES):
            return names
    default = parameter.default
    if isinstance(default, bool):
        return {"bool"}
    if isinstance(default, (int, float)):
        return {"float"}
    return set()


def _json_type_problem(parameter: inspect.Parameter, value: Any, key_path: str) -> str | None:
    """A value whose JSON type cannot be what the parameter takes, e.g. `"0.1"` for a learning
    rate or `"abc"` for `StepLR`'s `step_size: int`."""
    kinds = _expected_kinds(parameter)
    if not kinds:
        return None
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = ((value is None and "None" in kinds)
          or (isinstance(value, bool) and "bool" in kinds)
          or (is_number and "float" in kinds)
          or (isinstance(value, int) and is_number and "int" in kinds)
          or value is None and parameter.default is None)
    if not ok:
        shown = kinds - {"None"} - ({"int"} if "float" in kinds else set())  # ints are numbers
        expected = " or ".join(_SIMPLE_TYPES[kind] for kind in sorted(shown))
        return f"{key_path}: expected {expected or 'null'}, got {json.dumps(value)}"
    return None


def callable_name(function: Callable) -> str:
    """How a built loss or metric is called: its `__name__`, the wrapped function's for a
    partial, the class name for an instance (`CrossEntropyLoss`)."""
    if getattr(function, "__name__", None):
        return function.__name__
    if isinstance(function, functools.partial):
        return callable_name(function.func)
    return type(function).__name__


def _qualified_name(obj: Callable) -> str:
    module = getattr(obj, "__module__", None)
    name = getattr(obj, "__qualname__", getattr(obj, "__name__", repr(obj)))
    return f"{module}.{name}" if module else name
