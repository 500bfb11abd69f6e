"""A sweep's search space: config key paths (the paths `-o` takes) to the values a trial may
give them, read from a JSON file:

    {"optimizer.args.lr": {"float": [1e-4, 0.1], "log": true},
     "data_loader.args.batch_size": {"int": [32, 128], "step": 32},
     "arch.args.dropout": {"choice": [0.0, 0.25, 0.5]}}

`float` and `int` take [low, high] (both included) with an optional `log` (sampled evenly in
log space) or `step`; `choice` takes a list of any JSON values (a whole scheduler block too).
"""
import json
import math
from typing import Any

from config.key_paths import apply_modifications
from utils.errors import did_you_mean

_OPTIONS = {"float": ("log", "step"), "int": ("log", "step"), "choice": ()}


def space_problems(space: Any, config: dict) -> list[str]:
    """Every problem of `space` against `config`, a line each naming the key path."""
    if not isinstance(space, dict) or not space:
        return ["expected a JSON object of config key paths, e.g. "
                "{\"optimizer.args.lr\": {\"float\": [0.0001, 0.1], \"log\": true}}"]
    problems = []
    for path, spec in space.items():
        if path.split(".")[:2] == ["trainer", "save_dir"] or path == "trainer":
            problems.append(f"{path}: a sweep decides where its trials are saved (its own "
                            f"folder); it cannot be searched")
            continue
        owner = _rate_owner(config, path)
        if owner:
            problems.append(f"{path}: is not used: {owner}; search that instead")
            continue
        problem = _spec_problem(spec)
        if problem:
            problems.append(f"{path}: {problem}")
            continue
        found: list[str] = []
        apply_modifications(config, {path: candidates(spec)[0]}, found)
        problems += found
    return problems


def _rate_owner(config: dict, path: str) -> str | None:
    """Why the optimizer's learning rate at `path` (`optimizer.args.lr`,
    `optimizers.NAME.args.lr`) does nothing in `config`: its scheduler sets the rate itself."""
    from step.first_batch import RATE_FROM

    parts = path.split(".")
    if parts[-2:] != ["args", "lr"] or parts[0] not in ("optimizer", "optimizers"):
        return None
    block = config.get("lr_scheduler") if parts[0] == "optimizer" else \
        ((config.get("optimizers") or {}).get(parts[1]) or {}).get("lr_scheduler")
    kind = str((block or {}).get("type", "")).rsplit(".", 1)[-1] if isinstance(block, dict) \
        else ""
    if kind not in RATE_FROM:
        return None
    where = "lr_scheduler" if parts[0] == "optimizer" else f"optimizers.{parts[1]}.lr_scheduler"
    return f"{kind} sets the learning rate from {where}.args.{RATE_FROM[kind]}"


def _spec_problem(spec: Any) -> str | None:
    kinds = [kind for kind in _OPTIONS if isinstance(spec, dict) and kind in spec]
    if len(kinds) != 1:
        return (f"expected one of {{\"float\": [low, high]}}, {{\"int\": [low, high]}} or "
                f"{{\"choice\": [...]}}, got {json.dumps(spec)}")
    kind = kinds[0]
    for key in spec:
        if key != kind and key not in _OPTIONS[kind]:
            allowed = ", ".join(_OPTIONS[kind]) or "no options"
            return (f"unknown option {key!r} for {kind} ({allowed})"
                    f"{did_you_mean(key, _OPTIONS[kind])}")
    if kind == "choice":
        choices = spec["choice"]
        return None if isinstance(choices, list) and choices else \
            f"choice: expected a non-empty list of values, got {json.dumps(choices)}"
    return _range_problem(kind, spec)


def _range_problem(kind: str, spec: dict) -> str | None:
    bounds, log, step = spec[kind], spec.get("log", False), spec.get("step")
    number = int if kind == "int" else (int, float)
    if not isinstance(bounds, list) or len(bounds) != 2 or not all(
            isinstance(bound, number) and not isinstance(bound, bool) for bound in bounds):
        return f"{kind}: expected [low, high] of {'integers' if kind == 'int' else 'numbers'}, " \
               f"got {json.dumps(bounds)}"
    low, high = bounds
    if not all(math.isfinite(bound) for bound in bounds):  # JSON's Infinity, NaN
        return f"{kind}: bounds must be finite numbers, got {json.dumps(bounds)}"
    if not low < high:
        return f"{kind}: low {low} must be below high {high}"
    if not isinstance(log, bool):
        return f"log: expected true or false, got {json.dumps(log)}"
    if log and low <= 0:
        return f"log: needs a low above 0, got {low}"
    if step is not None:
        if log:
            return "step and log cannot be combined"
        if isinstance(step, bool) or not isinstance(step, number) or step <= 0:
            return f"step: expected a positive {'integer' if kind == 'int' else 'number'}, " \
                   f"got {json.dumps(step)}"
    return None


def candidates(spec: dict) -> list:
    """The values of `spec` the config is checked with before the sweep starts: a range's
    ends, every choice."""
    return list(spec["choice"]) if "choice" in spec else list(spec.get("float", spec.get("int")))


def sample(trial, space: dict) -> dict[str, Any]:
    """`{key.path: value}` of an Optuna `trial` for `space`. Choices that are not plain
    numbers, strings, booleans or null (a scheduler block) are sampled as their JSON text."""
    values = {}
    for path, spec in space.items():
        if "choice" in spec:
            choices = spec["choice"]
            plain = _plain(choices)
            picked = trial.suggest_categorical(path, choices if plain else
                                               [json.dumps(choice) for choice in choices])
            values[path] = picked if plain else json.loads(picked)
        else:
            kind = "float" if "float" in spec else "int"
            low, high = spec[kind]
            suggest = trial.suggest_float if kind == "float" else trial.suggest_int
            options = {"log": spec.get("log", False)}
            if spec.get("step") is not None:
                options["step"] = spec["step"]
            values[path] = suggest(path, low, high, **options)
    return values


def trial_values(params: dict, space: dict) -> dict[str, Any]:
    """A trial's stored `params` (Optuna's) as config values (JSON text decoded)."""
    values = {}
    for path, value in params.items():
        spec = space.get(path, {})
        encoded = "choice" in spec and not _plain(spec["choice"])
        values[path] = json.loads(value) if encoded else value
    return values


def _plain(choices: list) -> bool:
    """Whether Optuna stores these choices as they are (else as JSON text)."""
    return all(choice is None or isinstance(choice, (bool, int, float, str)) for choice in choices)


def enqueued_params(config: dict, space: dict, where: str) -> tuple[dict[str, Any], list[str]]:
    """The Optuna params of a known configuration (`sweep.py --enqueue CONFIG`): its values at
    the space's key paths, each within the space (a choice given as Optuna stores it); and the
    problems, each a line naming `where` and the key path."""
    from config.key_paths import get_by_path
    from utils.errors import ConfigError

    params, problems = {}, []
    for path, spec in space.items():
        try:
            value = get_by_path(config, path)
        except ConfigError as error:
            problems.append(f"{where}: {error.problems[0]} (an enqueued config sets every key "
                            f"the space searches)")
            continue
        if "choice" in spec:
            matches = [choice for choice in spec["choice"] if _same_value(choice, value)]
            if not matches:
                problems.append(f"{where}: {path} is {json.dumps(value)}, not one of the space's "
                                f"choices")
                continue
            params[path] = matches[0] if _plain(spec["choice"]) else json.dumps(matches[0])
            continue
        kind = "float" if "float" in spec else "int"
        low, high = spec[kind]
        if kind == "int" and isinstance(value, float) and value.is_integer():
            value = int(value)  # 64.0 in a config is the integer 64
        wrong_type = isinstance(value, bool) or not isinstance(
            value, (int, float) if kind == "float" else int)
        if wrong_type or not low <= value <= high:
            problems.append(f"{where}: {path} is {json.dumps(value)}, outside the space's "
                            f"{kind} range [{low}, {high}]")
            continue
        step = spec.get("step")
        if step and abs((value - low) / step - round((value - low) / step)) > 1e-9:
            problems.append(f"{where}: {path} is {json.dumps(value)}, not on the space's steps "
                            f"of {step} from {low}")
            continue
        params[path] = float(value) if kind == "float" else value
    return params, problems


def _same_value(choice: Any, value: Any) -> bool:
    """A config value as a choice: numbers by value (0 is the choice 0.0), the rest as JSON
    (a block whatever the order of its keys)."""
    numbers = [isinstance(item, (int, float)) and not isinstance(item, bool)
               for item in (choice, value)]
    if all(numbers):
        return choice == value
    return json.dumps(choice, sort_keys=True) == json.dumps(value, sort_keys=True)
