"""From a config's `type` string to a callable, safely, and checking its arguments.

A `type` is a public name inside the module its config block belongs to, or a dotted path inside
one of `LIBRARY_MODULES` (the building blocks of a model and its training: layers, losses,
optimizers, schedulers, torchvision models and transforms) or of the user's packages, which the
entry script names (`allow_user_packages`: `model`, `data_loader`, `trainer`, `examples`); the
package of a module handed to `resolve_type` is the user's too. Every module passed on the way
must be one of those, and every object reached must be defined in an allowed package and
outside `DENIED_MODULES`. So a config, including one
stored in a checkpoint someone sent you, can never reach `os`, `subprocess`, `eval`, torch's
loaders of code and pickles, or this template's own file writers; nothing else is imported.
"""
import functools
import importlib
import inspect
import json
from types import ModuleType
from typing import Any, Callable

from utils.errors import ConfigError, did_you_mean

# Library modules (with their submodules) a dotted `type` may name; besides the user's packages,
# nothing else is imported by a config.
LIBRARY_MODULES = ("torch.nn", "torch.optim", "torchvision.models", "torchvision.transforms",
                   "torchvision.ops", "torchmetrics")
# Packages the objects reached may be defined in (`torch.nn.functional.conv2d` is torch's own).
LIBRARY_PACKAGES = ("torch", "torchvision", "torchmetrics")
# The user's packages (`model`, `examples`), as the entry script and the modules it hands in
# name them: the config system itself names none.
_user_packages: list[str] = []


def allow_user_packages(packages) -> None:
    """Let a config name what is inside the user's `packages` (top-level names: `model`,
    `examples`); the entry script calls it with the ones the project has."""
    for package in packages:
        if package not in _user_packages and package not in LIBRARY_PACKAGES:
            _user_packages.append(package)


def allowed_modules() -> tuple[str, ...]:
    return (*LIBRARY_MODULES, *_user_packages)


def allowed_packages() -> tuple[str, ...]:
    return (*LIBRARY_PACKAGES, *_user_packages)
# Modules inside those packages whose functions load or run code, or fetch or write files.
DENIED_MODULES = ("torch.hub", "torch.serialization", "torch.utils", "torch._ops", "torch.ops",
                  "torch.package", "torch.jit", "torch.onnx", "torch.export", "torch.distributed",
                  "torch.multiprocessing", "torch.classes", "torch.backends", "torchvision.io",
                  "torchvision.datasets", "torchvision.utils")


def resolve_type(name: Any, module: ModuleType, key_path: str, kind: type | str | None = None,
                 fallback: tuple[str, ...] = ()) -> Callable:
    """The callable a config's `type` names: a public name in `module` (else in the first of
    the modules `fallback` that has it, imported only then), or a dotted path inside
    the allowed modules. Nothing else is ever imported. A class must be a subclass of `kind`
    (a function is taken as a factory of one)."""
    top = module.__name__.split(".")[0]
    if top not in LIBRARY_PACKAGES:  # a module the entry script handed in: the user's
        allow_user_packages([top])
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
    return any(module_name == m or module_name.startswith(m + ".") for m in allowed_modules())


def _resolve_dotted(parts: list[str], key_path: str) -> Any:
    if not _allowed_module(".".join(parts[:-1])):
        raise ConfigError(f"{key_path}: {'.'.join(parts)!r} is outside the modules a config may "
                          f"use ({', '.join(allowed_modules())}; code of your own goes in "
                          f"{', '.join(p + '/' for p in _user_packages) or 'your packages'}, or "
                          f"a package named in train.py's USER_PACKAGES)")
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
    `allowed_modules()`; anything else must be defined in `allowed_packages()`, outside
    `DENIED_MODULES` (`torch.os` is not torch's, `torch.nn.functional.torch.load` is denied)."""
    if inspect.ismodule(obj):
        if _allowed_module(obj.__name__):
            return None
        return (f"{shown} is the module {obj.__name__}, outside the modules a config may use "
                f"({', '.join(allowed_modules())})")
    origin = getattr(obj, "__module__", None)
    if not isinstance(origin, str) or origin.split(".")[0] not in allowed_packages():
        return (f"{shown} comes from {origin or 'an unknown module'}, outside the packages a "
                f"config may use ({', '.join(allowed_packages())})")
    if origin.split(".")[0] == "torchmetrics" and not any(
            origin == m or origin.startswith(m + ".") for m in TORCHMETRICS_ALLOWED):
        return (f"{shown} is not allowed in a config (of torchmetrics only the metrics in "
                f"{', '.join(TORCHMETRICS_ALLOWED)})")
    if any(origin == d or origin.startswith(d + ".") for d in DENIED_MODULES):
        return f"{shown} is not allowed in a config (it loads or runs code, or fetches or writes files)"
    return None


def callable_name(function: Callable) -> str:
    """How a built loss or metric is called: its `__name__`, the wrapped function's for a
    partial, the class name for an instance (`CrossEntropyLoss`)."""
    if getattr(function, "__name__", None):
        return function.__name__
    if isinstance(function, functools.partial):
        return callable_name(function.func)
    return type(function).__name__
