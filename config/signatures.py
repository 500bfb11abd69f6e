"""A config's `args` against the signature of the callable they go to: every unknown or
missing argument and every value of the wrong JSON type, reported together."""
import inspect
import json
from collections.abc import Callable, Sequence
from typing import Any

from utils.errors import ConfigError, did_you_mean


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
        raise ConfigError(*problems)


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
        raise ConfigError(*problems)


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
# annotations that also take JSON values of other kinds than their default's
_JSON_CONTAINERS = {"dict", "list", "str", "tuple", "Any", "typing.Any"}


def _expected_kinds(parameter: inspect.Parameter) -> set[str]:
    """The JSON kinds a parameter takes, from an annotation made only of int, float, bool and
    None (e.g. `step_size: int`), else — unless the annotation also names a dict, list, str or
    Any — from a default that is a plain number or boolean; an empty set when neither says."""
    annotation = parameter.annotation
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", None)
    if annotation is not parameter.empty and not isinstance(annotation, str):
        text = str(annotation) if text is None else text
    if isinstance(text, str):
        names = {name.strip() for name in text.split("|")}
        if names <= set(_SIMPLE_TYPES):
            return names
        if any(name.split("[")[0] in _JSON_CONTAINERS for name in names):
            return set()  # `float | int | dict`: more than the default says
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


def _qualified_name(obj: Callable) -> str:
    module = getattr(obj, "__module__", None)
    name = getattr(obj, "__qualname__", getattr(obj, "__name__", repr(obj)))
    return f"{module}.{name}" if module else name
