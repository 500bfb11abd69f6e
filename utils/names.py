"""From a config's `type` string to a callable, safely, and checking its arguments.

A `type` is a public name inside the module its config block belongs to, or a dotted path
whose top-level package is in `ALLOWED_PACKAGES`. Everything reached on the way must be defined
in an allowed package and outside `DENIED_MODULES`, so a config can never reach `os`,
`subprocess`, `eval`, or torch's own loaders of code and pickles.
"""
import difflib
import importlib
import inspect
import json
from types import ModuleType
from typing import Any, Callable

from utils.errors import ConfigError

# Top-level packages a dotted `type` may come from; nothing else is ever imported from a config.
ALLOWED_PACKAGES = ("torch", "torchvision", "model", "data_loader", "trainer", "base", "utils",
                    "logger")
# Modules inside those packages whose functions load or run code, or fetch or write files.
DENIED_MODULES = ("torch.hub", "torch.serialization", "torch.utils.cpp_extension", "torch._ops",
                  "torch.ops", "torch.package", "torch.jit", "torch.onnx", "torch.export",
                  "torch.distributed", "torch.multiprocessing", "torch.utils.model_zoo",
                  "torchvision.io", "torchvision.datasets.utils", "utils.util", "utils.cli")


def did_you_mean(word: str, choices: Any) -> str:
    """` (did you mean 'x'?)` for the closest of `choices`, or an empty string."""
    if not isinstance(choices, (dict, list, tuple, set)):
        return ""
    close = difflib.get_close_matches(word, [str(c) for c in choices], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def resolve_type(name: Any, module: ModuleType, key_path: str) -> Callable:
    """The callable a config's `type` names: a public name in `module`, or a dotted path whose
    top-level package is in `ALLOWED_PACKAGES`. Nothing else is ever imported."""
    if not isinstance(name, str) or not name:
        raise ConfigError(f"{key_path}: expected a name, got {json.dumps(name)}")
    parts = name.split(".")
    private = [part for part in parts if part.startswith("_") or not part.isidentifier()]
    if private:
        raise ConfigError(f"{key_path}: {name!r} is not allowed (private or invalid name "
                          f"{private[0]!r})")
    if len(parts) == 1:
        obj = _public_attr(module, name, key_path, module.__name__)
    else:
        obj = _resolve_dotted(parts, key_path)
    if not callable(obj):
        raise ConfigError(f"{key_path}: {name!r} is not callable")
    return obj


def _resolve_dotted(parts: list[str], key_path: str) -> Any:
    if parts[0] not in ALLOWED_PACKAGES:
        raise ConfigError(f"{key_path}: {'.'.join(parts)!r} is outside the packages a config may "
                          f"use ({', '.join(ALLOWED_PACKAGES)})")
    for split in range(len(parts) - 1, 0, -1):  # the longest importable module prefix
        module_name = ".".join(parts[:split])
        try:
            obj = importlib.import_module(module_name)
        except ImportError:
            continue
        for part in parts[split:]:
            obj = _public_attr(obj, part, key_path, module_name)
            module_name += "." + part
        return obj
    raise ConfigError(f"{key_path}: cannot import {parts[0]!r}")


def _public_attr(owner: Any, name: str, key_path: str, owner_name: str) -> Any:
    """`owner.name`, if public and defined in an allowed package (`torch.os` is not torch's)."""
    if not name.startswith("_") and hasattr(owner, name):
        obj = getattr(owner, name)
        origin = obj.__name__ if inspect.ismodule(obj) else getattr(obj, "__module__", None)
        if not isinstance(origin, str) or origin.split(".")[0] not in ALLOWED_PACKAGES:
            raise ConfigError(f"{key_path}: {owner_name}.{name} comes from "
                              f"{origin or 'an unknown module'}, outside the packages a config "
                              f"may use ({', '.join(ALLOWED_PACKAGES)})")
        for module in (origin, f"{owner_name}.{name}"):
            if any(module == d or module.startswith(d + ".") for d in DENIED_MODULES):
                raise ConfigError(f"{key_path}: {owner_name}.{name} is not allowed in a config "
                                  f"(it loads or runs code, or fetches or writes files)")
        return obj
    choices = [n for n in dir(owner) if not n.startswith("_") and callable(getattr(owner, n, None))]
    raise ConfigError(f"{key_path}: {name!r} is not in {owner_name}{did_you_mean(name, choices)}")


def check_signature(factory: Callable, args: tuple, kwargs: dict, key_path: str,
                    partial: bool = False) -> None:
    """Raise a `ConfigError` naming `key_path` when `kwargs` do not fit `factory`'s signature."""
    try:
        signature = inspect.signature(factory)
    except (TypeError, ValueError):  # some builtins have no signature to check against
        return
    accepts_any = any(p.kind is p.VAR_KEYWORD for p in signature.parameters.values())
    known = [n for n, p in signature.parameters.items()
             if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
    if not accepts_any:
        for key in kwargs:
            if key not in known:
                raise ConfigError(f"{key_path}: unexpected argument {key!r} for "
                                  f"{_qualified_name(factory)}{did_you_mean(key, known)}")
    try:
        (signature.bind_partial if partial else signature.bind)(*args, **kwargs)
    except TypeError as error:
        raise ConfigError(f"{key_path}: {error} for {_qualified_name(factory)}") from None
    for key, value in kwargs.items():
        parameter = signature.parameters.get(key)
        if parameter is not None:
            _check_json_type(parameter, value, f"{key_path}.{key}")


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


def _check_json_type(parameter: inspect.Parameter, value: Any, key_path: str) -> None:
    """A value whose JSON type cannot be what the parameter takes, e.g. `"0.1"` for a learning
    rate or `"abc"` for `StepLR`'s `step_size: int`."""
    kinds = _expected_kinds(parameter)
    if not kinds:
        return
    is_number = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = ((value is None and "None" in kinds)
          or (isinstance(value, bool) and "bool" in kinds)
          or (is_number and "float" in kinds)
          or (isinstance(value, int) and is_number and "int" in kinds)
          or value is None and parameter.default is None)
    if not ok:
        expected = " or ".join(_SIMPLE_TYPES[kind] for kind in sorted(kinds) if kind != "None")
        raise ConfigError(f"{key_path}: expected {expected or 'null'}, got {json.dumps(value)}")


def _qualified_name(obj: Callable) -> str:
    module = getattr(obj, "__module__", None)
    name = getattr(obj, "__qualname__", getattr(obj, "__name__", repr(obj)))
    return f"{module}.{name}" if module else name
