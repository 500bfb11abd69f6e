"""The model switches a config may add: `arch.init`, `arch.freeze`, `arch.weights`,
`optimizer.param_groups` — their checks (before anything is built; every problem a line
starting with its key path) and their reading; and the check that an optimizer's `step` needs
no closure."""
import inspect
import json
from typing import Any, Callable

from config.signatures import check_signature
from utils.errors import ConfigError, did_you_mean

# The layers `arch.init` initialises when it names none.
DEFAULT_INIT_LAYERS = ("Conv1d", "Conv2d", "Conv3d", "Linear")
_INIT_KEYS = ("type", "args", "layers")
_WEIGHTS_KEYS = ("path", "strict")


def resolve_init(spec: Any, key_path: str = "arch.init") -> tuple[Callable, dict, tuple[type, ...]]:
    """`(torch.nn.init function, its args, layer classes)` of an `arch.init` block such as
    `{"type": "kaiming_normal_", "args": {"nonlinearity": "relu"}, "layers": ["Conv2d"]}`."""
    import torch.nn.init

    if not isinstance(spec, dict):
        raise ConfigError(f"{key_path}: expected {{\"type\": \"kaiming_normal_\", \"args\": "
                          f"{{...}}, \"layers\": [\"Conv2d\", \"Linear\"]}}, got "
                          f"{json.dumps(spec)}")
    problems = [f"{key_path}.{key}: unknown key (one of {', '.join(_INIT_KEYS)})"
                f"{did_you_mean(key, _INIT_KEYS)}" for key in spec if key not in _INIT_KEYS]
    functions = [name for name, value in vars(torch.nn.init).items()
                 if name.endswith("_") and not name.startswith("_") and inspect.isfunction(value)]
    name = spec.get("type")
    short = name.removeprefix("torch.nn.init.") if isinstance(name, str) else name
    function = getattr(torch.nn.init, short, None) if short in functions else None
    if function is None:
        problems.append(f"{key_path}.type: {json.dumps(name)} is not an initialiser in "
                        f"torch.nn.init (one ending in _, such as kaiming_normal_)"
                        f"{did_you_mean(str(name), functions)}")
    args = spec.get("args", {})
    if not isinstance(args, dict):
        problems.append(f"{key_path}.args: expected a JSON object, got {json.dumps(args)}")
    elif function is not None:
        try:
            check_signature(function, (None,), args, f"{key_path}.args",
                            display_name=f"torch.nn.init.{short}")
        except ConfigError as error:
            problems += error.problems
    layer_types = _layer_types(spec.get("layers", list(DEFAULT_INIT_LAYERS)), f"{key_path}.layers",
                               problems)
    if problems:
        raise ConfigError(*problems)
    return function, dict(args), layer_types


def _layer_types(layers: Any, key_path: str, problems: list[str]) -> tuple[type, ...]:
    """The torch.nn classes `layers` names; a problem with each wrong name added to `problems`."""
    import torch.nn

    if not isinstance(layers, list) or not layers:
        problems.append(f"{key_path}: expected a list of torch.nn layer names such as "
                        f"[\"Conv2d\", \"Linear\"], got {json.dumps(layers)}")
        return ()
    found = []
    for index, layer in enumerate(layers):
        kind = getattr(torch.nn, layer, None) if isinstance(layer, str) else None
        if inspect.isclass(kind) and issubclass(kind, torch.nn.Module):
            found.append(kind)
            continue
        modules = [n for n, v in vars(torch.nn).items() if inspect.isclass(v) and
                   issubclass(v, torch.nn.Module)]
        problems.append(f"{key_path}.{index}: {json.dumps(layer)} is not a layer in "
                        f"torch.nn{did_you_mean(str(layer), modules)}")
    return tuple(found)


def weights_spec(value: Any, key_path: str = "arch.weights") -> tuple[str, bool]:
    """`(path, strict)` of `"weights": "file.pth"` or `{"path": "file.pth", "strict": false}`."""
    if isinstance(value, str) and value:
        return value, True
    if isinstance(value, dict):
        unknown = [f"{key_path}.{key}: unknown key (one of path, strict)"
                   f"{did_you_mean(key, _WEIGHTS_KEYS)}" for key in value
                   if key not in _WEIGHTS_KEYS]
        path, strict = value.get("path"), value.get("strict", True)
        problems = unknown + ([] if isinstance(path, str) and path else
                              [f"{key_path}.path: expected the path of a .pth file, got "
                               f"{json.dumps(path)}"])
        if not isinstance(strict, bool):
            problems.append(f"{key_path}.strict: expected true or false, got {json.dumps(strict)}")
        if problems:
            raise ConfigError(*problems)
        return path, strict
    raise ConfigError(f"{key_path}: expected a path (\"pretrained.pth\") or {{\"path\": ..., "
                      f"\"strict\": false}}, got {json.dumps(value)}")


def arch_problems(arch: Any) -> list[str]:
    """The problems of `arch.init`, `arch.freeze` and `arch.weights` a config alone shows."""
    if not isinstance(arch, dict):
        return []
    problems = []
    for key, check in (("init", resolve_init), ("weights", weights_spec)):
        if arch.get(key) is not None:
            try:
                check(arch[key], f"arch.{key}")
            except ConfigError as error:
                problems += error.problems
    freeze = arch.get("freeze")
    if freeze is not None and not (isinstance(freeze, list) and
                                   all(isinstance(p, str) and p for p in freeze)):
        problems.append(f"arch.freeze: expected a list of parameter name patterns such as "
                        f"[\"conv1.*\"], got {json.dumps(freeze)}")
    return problems


def param_group_problems(optimizer: Any) -> list[str]:
    """The problems of `optimizer.param_groups` a config alone shows: each group an object with
    `params` (a pattern or a list of them) and options the optimizer takes."""
    if not isinstance(optimizer, dict) or optimizer.get("param_groups") is None:
        return []
    groups, key_path = optimizer["param_groups"], "optimizer.param_groups"
    if not isinstance(groups, list):
        return [f"{key_path}: expected a list such as [{{\"params\": \"fc.*\", \"lr\": 0.01}}], "
                f"got {json.dumps(groups)}"]
    options = _optimizer_options(optimizer.get("type"))
    problems = []
    for index, group in enumerate(groups):
        where = f"{key_path}.{index}"
        if not isinstance(group, dict):
            problems.append(f"{where}: expected {{\"params\": \"fc.*\", ...}}, got "
                            f"{json.dumps(group)}")
            continue
        problem = params_problem(group.get("params"), f"{where}.params", "fc.*")
        if problem:
            problems.append(problem)
        if options is not None:
            problems += [f"{where}.{key}: not an option of the optimizer (one of "
                         f"{', '.join(options)}){did_you_mean(key, options)}"
                         for key in group if key != "params" and key not in options]
    return problems


def closure_problem(optimizer: Any, key_path: str) -> str | None:
    """The problem of an optimizer class whose `step` requires a closure (L-BFGS: it
    re-evaluates the loss several times a step), which the training step, calling `step()`
    once after `backward`, does not give; None for any other. `key_path`: its `type`."""
    try:
        closure = inspect.signature(optimizer.step).parameters.get("closure")
    except (AttributeError, TypeError, ValueError):  # not a class with a step to inspect
        return None
    if closure is None or closure.default is not closure.empty or \
            closure.kind in (closure.VAR_POSITIONAL, closure.VAR_KEYWORD):
        return None
    return (f"{key_path}: {optimizer.__name__} needs a closure that re-evaluates the loss "
            f"several times per step, which the template's training step does not give; use "
            f"another optimizer (Adam, SGD, ...)")


def params_problem(params: Any, key_path: str, example: str) -> str | None:
    """What is wrong with a `params` entry (a parameter name pattern or a non-empty list of
    them), or None."""
    patterns = [params] if isinstance(params, str) else params
    if isinstance(patterns, list) and patterns and all(isinstance(p, str) and p for p in patterns):
        return None
    return (f"{key_path}: expected a parameter name pattern (\"{example}\") or a list of them, "
            f"got {json.dumps(params)}")


def _optimizer_options(type_name: Any) -> list[str] | None:
    """The keyword options of optimizer `type_name` (`lr`, `momentum`, ...); None when the type
    itself is wrong (reported with the optimizer block)."""
    import torch.optim

    if not isinstance(type_name, str):
        return None
    found = getattr(torch.optim, type_name.removeprefix("torch.optim."), None)
    if not inspect.isclass(found):
        return None
    try:
        parameters = inspect.signature(found).parameters
    except (TypeError, ValueError):
        return None
    return [name for name, p in parameters.items() if name != "params" and
            p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
