"""The sections of a config that are not `{"type", "args"}` blocks: `name`, `seed`, `n_gpu`,
likely typos of section names, and whether `trainer.monitor` names a value that is logged."""
import difflib
import json
import re
from collections.abc import Sequence
from typing import Any

from utils.errors import ConfigError

# Every top-level key the template reads; another key close to one of these is a likely typo.
KNOWN_SECTIONS = ("name", "n_gpu", "seed", "arch", "data_loader", "optimizer", "optimizers",
                  "loss", "metrics", "lr_scheduler", "trainer")


# Top-level integers and their ranges (a seed feeds NumPy, which takes 32 bits).
_TOP_LEVEL_RANGES = {"seed": (0, 2**32 - 1), "n_gpu": (0, 1024)}


def metric_labels(entries: Any) -> list[str]:
    """The names the configured metrics will be logged under, read from the config alone (for
    checking `monitor` when a metric itself has a problem)."""
    labels = []
    for entry in entries if isinstance(entries, list) else []:
        label = entry.get("name") or entry.get("type") if isinstance(entry, dict) else entry
        if isinstance(label, str):
            labels.append(label.rsplit(".", 1)[-1])
    return labels


def top_level_problems(config: dict, trainer: bool = True,
                       trainer_keys: Sequence[str] = ()) -> list[str]:
    """`name`, `seed`, `n_gpu`, the `trainer` section and likely typos of section names
    (`trainer_keys`: the keys of the trainer section, misplaced at the top level)."""
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
    for key in config:
        close = difflib.get_close_matches(key, KNOWN_SECTIONS, n=1, cutoff=0.75)
        if key in KNOWN_SECTIONS:
            continue
        if close:  # other keys may be the user's own
            problems.append(f"{key}: unknown key (did you mean {close[0]!r}?)")
        elif key in trainer_keys:
            problems.append(f"{key}: not read at the top level (did you mean 'trainer.{key}'?)")
    if trainer and "trainer" not in config:
        problems.append("trainer: missing from the config (needs at least epochs and save_dir)")
    elif trainer and not isinstance(config["trainer"], dict):
        problems.append(f"trainer: expected a JSON object, got {json.dumps(config['trainer'])}")
    return problems


def monitor_problems(config: dict, metric_names: Sequence[str], settings: type) -> list[str]:
    """`trainer.monitor` must name a value the trainer logs: `loss`, a metric, or `val_` + one
    of those when the data loader keeps a validation split."""
    try:
        monitor = settings.monitor_of(config["trainer"].get("monitor", "off"))
    except ConfigError:
        return []  # reported with the other trainer problems
    keys = ["loss", *metric_names]
    section = config["trainer"]
    if section.get("type", "Trainer") not in ("Trainer", "trainer.trainer.Trainer"):
        return []  # a trainer of the user's logs loss parts too: checked on the first batch
    validating = bool(loader_args(config).get("validation_split", 0.0))
    if validating:
        keys += [f"val_{key}" for key in keys]
    hint = None
    if monitor.metric.startswith("val_") and not validating:
        hint = (" (val_ values exist only when data_loader.args.validation_split holds some "
                "data back)")
    problem = monitor.unlogged_problem(keys, hint)
    return [problem] if problem else []


def loader_args(config: dict) -> dict:
    """`data_loader.args` when it is an object, else an empty one (reported elsewhere)."""
    loader = config.get("data_loader")
    args = loader.get("args") if isinstance(loader, dict) else None
    return args if isinstance(args, dict) else {}


# The longest name a run id, study or run name may have: a file system allows 255 bytes, and
# the template adds to it (`-fold12_3`, `-folds_1.json`, `.checkpoint-epoch99.pth.x.tmp`).
MAX_NAME = 100


def is_plain_name(name: str) -> bool:
    """A folder name without path separators, of at most `MAX_NAME` characters: letters,
    digits, `-`, `_`, `.`."""
    return bool(re.fullmatch(r"[A-Za-z0-9_.-]+", name)) and name not in (".", "..") and \
        len(name) <= MAX_NAME
