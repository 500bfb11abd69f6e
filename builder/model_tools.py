"""What `arch` can ask of a model besides building it: initialise layers (`init`, with
`nn.Module.apply`), freeze parameters by name (`freeze`), start from saved weights (`weights`)."""
import fnmatch
from collections.abc import Callable, Sequence

import torch
from torch import nn

from utils.errors import ConfigError, did_you_mean


def initialise(model: nn.Module, init_fn: Callable, args: dict,
               layer_types: tuple[type, ...]) -> int:
    """`init_fn(layer.weight, **args)` and a zero bias for every layer of `layer_types`, through
    `model.apply`; the number of layers initialised."""
    count = 0

    def visit(module: nn.Module) -> None:
        nonlocal count
        if not isinstance(module, layer_types):
            return
        weight, bias = getattr(module, "weight", None), getattr(module, "bias", None)
        if isinstance(weight, torch.Tensor):
            init_fn(weight, **args)
        if isinstance(bias, torch.Tensor):
            nn.init.zeros_(bias)
        count += 1

    with torch.no_grad():
        model.apply(visit)
    return count


def matching(names: Sequence[str], patterns: Sequence[str],
             key_path: str) -> tuple[list[str], list[str]]:
    """The names any glob pattern matches (`features.*`), and a problem at `key_path.<index>`
    for each pattern that matches nothing, naming the nearest names."""
    problems, found = [], []
    for index, pattern in enumerate(patterns):
        hits = [name for name in names if fnmatch.fnmatchcase(name, pattern)]
        if not hits:
            problems.append(f"{key_path}.{index}: {pattern!r} matches no parameter"
                            f"{did_you_mean(pattern, names)} (the model's: "
                            f"{some_names(names)})")
        found += [name for name in hits if name not in found]
    return found, problems


def trainable_matching(model: nn.Module, patterns: Sequence[str],
                       key_path: str) -> tuple[list[str], list[str]]:
    """`matching` over the trainable parameters (what an optimizer group or a gradient hook can
    use); a pattern that matches only frozen ones says so."""
    everything = [name for name, _ in model.named_parameters()]
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    found, problems = [], []
    for index, pattern in enumerate(patterns):
        hits = [name for name in trainable if fnmatch.fnmatchcase(name, pattern)]
        if not hits:
            frozen = any(fnmatch.fnmatchcase(name, pattern) for name in everything)
            problems.append(f"{key_path}.{index}: {pattern!r} matches " +
                            ("only frozen parameters (arch.freeze)" if frozen else
                             f"no parameter{did_you_mean(pattern, everything)}"))
        found += [name for name in hits if name not in found]
    return found, problems


def freeze(model: nn.Module, patterns: Sequence[str], key_path: str = "arch.freeze") -> list[str]:
    """`requires_grad=False` for every parameter a pattern matches; their names. A pattern that
    matches nothing raises after the others are applied (so later checks see them frozen)."""
    parameters = dict(model.named_parameters())
    frozen, problems = matching(list(parameters), patterns, key_path)
    for name in frozen:
        parameters[name].requires_grad_(False)
    if problems:
        raise ConfigError(*problems)
    return frozen


def parameter_groups(model: nn.Module, groups: Sequence[dict],
                     key_path: str = "optimizer.param_groups") -> list[dict]:
    """The optimizer's parameter groups: first the trainable parameters no group names (the
    optimizer's own args apply; left out when empty), then each configured group with its
    options. `params` is a glob pattern or a list of them; a parameter in two groups, or a
    pattern matching no trainable parameter, is a `ConfigError`."""
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    claimed: dict[str, int] = {}
    built, problems = [], []
    for index, group in enumerate(groups):
        patterns = group["params"] if isinstance(group["params"], list) else [group["params"]]
        names, unmatched = trainable_matching(model, patterns, f"{key_path}.{index}.params")
        if unmatched:
            problems += unmatched
            continue
        for name in names:
            if name in claimed:
                problems.append(f"{key_path}.{index}.params: {name} is already in group "
                                f"{claimed[name]}; a parameter may be in one group only")
            claimed.setdefault(name, index)
        built.append({**group, "params": [trainable[name] for name in names]})
    if problems:
        raise ConfigError(*problems)
    rest = [p for name, p in trainable.items() if name not in claimed]
    return ([{"params": rest}] if rest else []) + built


def some_names(names: Sequence[str], shown: int = 6) -> str:
    """`a, b, c, ... 4 more`: the first `shown` names and how many more."""
    listed = ", ".join(names[:shown])
    return listed + (f", ... {len(names) - shown} more" if len(names) > shown else "")
