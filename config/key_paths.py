"""Dotted key paths into a config (`optimizer.args.lr`, `metrics.0`): reading, setting, and
the `-o key.path=value` overrides of the command line."""
import copy
import json
from collections.abc import Iterable
from typing import Any

from config.checks import block_options
from config.sections import KNOWN_SECTIONS
from utils.errors import ConfigError, did_you_mean


def parse_overrides(overrides: Iterable[str]) -> dict[str, Any]:
    """`["trainer.epochs=3", "name=x"]` -> `{"trainer.epochs": 3, "name": "x"}`."""
    result = {}
    for override in overrides:
        key, sep, text = override.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"-o {override!r}: expected key.path=value, e.g. -o trainer.epochs=3")
        try:
            value = json.loads(text, parse_constant=_not_a_number)
        except (json.JSONDecodeError, ValueError):
            value = text  # a bare word is a string: -o name=Digits2
        result[key.strip()] = value
    return result


def _not_a_number(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def get_by_path(tree: dict, path: str) -> Any:
    """The value at a dotted key path; a list element is addressed by its index (`metrics.0`)."""
    node = tree
    for depth, key in enumerate(path.split(".")):
        if isinstance(node, list) and key.isdigit() and int(key) < len(node):
            node = node[int(key)]
            continue
        keys = path.split(".")
        if not isinstance(node, (dict, list)):
            where = ".".join(keys[:depth])
            raise ConfigError(f"{where}: is {json.dumps(node)}, not a JSON object; set the whole "
                              f"value instead (e.g. -o '{where}={{...}}')")
        if not isinstance(node, dict) or key not in node:
            where = ".".join(keys[:depth + 1])
            raise ConfigError(f"{where}: missing from the config{did_you_mean(key, node)}")
        node = node[key]
    return node


def apply_modifications(config: dict, modification: dict[str, Any],
                        problems: list[str] | None = None) -> dict:
    """A deep copy of `config` with every `{dotted.key: value}` set.

    The parents must exist. A new key may be added inside an `args` block, in `trainer` (whose
    keys are checked against the known ones) or as a known top-level section; anywhere else a
    missing key is a likely typo, reported with the nearest existing one. Problems are added to
    `problems` when it is given (the other keys are still set), else raised together.
    """
    config = copy.deepcopy(config)
    found = []
    for path, value in modification.items():
        try:
            _set_by_path(config, path, value)
        except ConfigError as error:
            found.append(str(error))
    if found and problems is None:
        raise ConfigError(*found)
    if problems is not None:
        problems += found
    return config


def _set_by_path(config: dict, path: str, value: Any) -> None:
    *parents, leaf = path.split(".")
    if parents and parents[-1] == "args":  # a block may leave out its args: --lr on {"type": "Adam"}
        block = get_by_path(config, ".".join(parents[:-1])) if parents[:-1] else config
        if isinstance(block, dict) and ("type" in block or parents[:-1] == ["trainer"]) and \
                "args" not in block:
            block["args"] = {}
    option = ".".join(parents[:2])
    if len(parents) >= 2 and parents[1] in block_options(parents[0]) and \
            isinstance(config.get(parents[0]), dict) and parents[1] not in config[parents[0]]:
        raise ConfigError(f"{path}: {option} is not in the config; set the whole block, e.g. "
                          f"-o '{option}={{...}}'")  # -o arch.init.type=... without arch.init
    if len(parents) == 2 and parents[0] == "trainer" and \
            parents[1] not in (config.get("trainer") or {}):  # -o trainer.ema.decay=0.99
        raise ConfigError(f"{path}: trainer.{parents[1]} is not in the config; set the whole "
                          f"block, e.g. -o 'trainer.{parents[1]}={{\"{leaf}\": ...}}'")
    node = get_by_path(config, ".".join(parents)) if parents else config
    if isinstance(node, list):
        if leaf.isdigit() and int(leaf) < len(node):
            node[int(leaf)] = value  # -o metrics.1=top_k_acc
            return
        raise ConfigError(f"{path}: the list has {len(node)} entries (indices 0 to "
                          f"{len(node) - 1}); to change its length set the whole list, e.g. "
                          f"-o '{'.'.join(parents)}=[...]'")
    if not isinstance(node, dict):
        raise ConfigError(f"{'.'.join(parents)}: is {json.dumps(node)}, not a JSON object; cannot "
                          f"set {leaf!r} in it")
    if leaf not in node and not _may_add(parents, leaf):
        raise ConfigError(f"{path}: not in the config{did_you_mean(leaf, node)}; new keys can "
                          f"only be added inside an args block, in trainer, as a section or as "
                          f"a block's option (arch.init, arch.freeze, optimizer.param_groups, "
                          f"...)")
    node[leaf] = value


def _may_add(parents: list[str], leaf: str) -> bool:
    if not parents:
        return leaf in KNOWN_SECTIONS
    if leaf in block_options(".".join(parents)):  # -o arch.freeze=[...]
        return True
    return parents[-1] == "args" or parents == ["trainer"]
