"""The `trainer` section of the config as typed settings, and the monitored-metric rule.

`LoopSettings` holds what the epoch loop (`BaseTrainer`) reads; a trainer adds its own fields
in a subclass (`trainer.settings.TrainerSettings`). Each field carries its rule: a small
function from a value to a problem (or None), so a check reads like the field it checks.
"""
import dataclasses
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from config.names import did_you_mean
from utils.errors import ConfigError

Rule = Callable[[Any], str | None]  # a value -> what is wrong with it, after "expected"


def integer(smallest: int, largest: int | None = None) -> Rule:
    def check(value):
        if isinstance(value, bool) or not isinstance(value, int) or value < smallest or \
                (largest is not None and value > largest):
            return f"an integer >= {smallest}" if largest is None else \
                f"an integer from {smallest} to {largest}"
        return None
    return check


def positive_number(value) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or \
            value == math.inf:
        return "a number > 0"
    return None


def flag(value) -> str | None:
    return None if isinstance(value, bool) else "true or false"


def text(value) -> str | None:
    return None if isinstance(value, str) and value else "a string"


def one_of(*choices) -> Rule:
    """One of a few words (or `true` / `false`: compared by identity, 1 is not true)."""
    def check(value):
        if any(value is choice or isinstance(choice, str) and value == choice
               for choice in choices):
            return None
        return f"one of {', '.join(map(json.dumps, choices))}"
    check.choices = [c if isinstance(c, str) else json.dumps(c) for c in choices]
    return check


def setting(default=dataclasses.MISSING, rule: Rule | None = None, nullable: bool = False):
    """A settings field: its default, its rule, and whether `null` is allowed."""
    return field(default=default, metadata={"rule": rule, "nullable": nullable})


@dataclass(frozen=True)
class Monitor:
    """`"min val_loss"`, `"max val_accuracy"` or `"off"`: which value marks the best model."""

    mode: str = "off"  # "off" | "min" | "max"
    metric: str = ""

    @classmethod
    def parse(cls, text: str) -> "Monitor":
        words = text.split() if isinstance(text, str) else []
        if words == ["off"]:
            return cls()
        if len(words) != 2 or words[0] not in ("min", "max"):
            raise ConfigError(f"trainer.monitor: expected \"off\" or \"min|max <metric>\", "
                              f"got {text!r}")
        return cls(words[0], words[1])

    @property
    def enabled(self) -> bool:
        return self.mode != "off"

    @property
    def worst(self) -> float:
        return math.inf if self.mode == "min" else -math.inf

    def improved(self, value: float, best: float) -> bool:
        """Strictly better than `best`: a tie is not an improvement."""
        if self.mode == "min":
            return value < best
        if self.mode == "max":
            return value > best
        return False

    def unlogged_problem(self, logged: Sequence[str], hint: str | None = None) -> str | None:
        """The problem when the monitored value is not among the `logged` keys, or None."""
        if not self.enabled or self.metric in logged:
            return None
        hint = hint if hint is not None else did_you_mean(self.metric, list(logged))
        return (f"trainer.monitor: {self.metric!r} is not a logged value (one of: "
                f"{', '.join(logged)}){hint}")


@dataclass(frozen=True)
class LoopSettings:
    """What `BaseTrainer` reads from `config["trainer"]`, with the template's defaults."""

    epochs: int = setting(rule=integer(1))
    save_dir: str = setting(rule=text)  # runs go to <save_dir>/models and <save_dir>/log
    # write checkpoint-epochN.pth every this many epochs
    save_period: int = setting(1, integer(1))
    verbosity: int = setting(2, integer(0, 2))  # 0 warnings, 1 info, 2 debug
    monitor: str = setting("off", text)
    # stop after this many epochs without improvement; 0 never
    early_stop: int = setting(0, integer(0))
    tensorboard: bool = setting(False, flag)
    # keep only the newest N checkpoint-epochN.pth; null keeps all
    keep_last: int | None = setting(None, integer(1), nullable=True)
    # TensorBoard: weight and gradient histograms every N epochs
    log_histograms: int = setting(0, integer(0))

    @classmethod
    def from_config(cls, section: dict) -> "LoopSettings":
        """The settings of a `trainer` section; a `ConfigError` lists every problem with this
        class's fields. Keys of other settings are left to their class (a trainer built on
        `BaseTrainer` alone ignores the step's); the config check (`problems`) knows them all."""
        problems = cls.problems(section, complete=False)
        if problems:
            raise ConfigError(*problems)
        return cls(**{key: value for key, value in section.items() if key in cls.known_keys()})

    @classmethod
    def known_keys(cls) -> list[str]:
        return [each.name for each in dataclasses.fields(cls)]

    @classmethod
    def problems(cls, section: dict, complete: bool = True) -> list[str]:
        """Every problem in a `trainer` section, each a line starting with its key path;
        `complete`: this class reads the whole section (a key it lacks is unknown)."""
        fields = {each.name: each for each in dataclasses.fields(cls)}
        problems = [f"trainer.{key}: unknown key{did_you_mean(key, list(fields))}"
                    for key in section if key not in fields and complete]
        problems += [f"trainer.{key}: missing from the config" for key, each in fields.items()
                     if each.default is dataclasses.MISSING and key not in section]
        for key, value in section.items():
            metadata = fields[key].metadata if key in fields else {}
            if metadata.get("rule") is None or (value is None and metadata["nullable"]):
                continue
            wanted = metadata["rule"](value)
            if wanted is not None:
                close = did_you_mean(str(value), getattr(metadata["rule"], "choices", None))
                problems.append(f"trainer.{key}: expected {wanted}, got {json.dumps(value)}"
                                f"{close}")
        if isinstance(section.get("monitor"), str):
            try:
                Monitor.parse(section["monitor"])
            except ConfigError as error:
                problems += error.problems
        return problems + cls.own_problems(section)

    @classmethod
    def own_problems(cls, section: dict) -> list[str]:
        """A subclass's checks beyond one rule per field (nested blocks)."""
        return []

    @property
    def parsed_monitor(self) -> Monitor:
        return Monitor.parse(self.monitor)

    parse_monitor = staticmethod(Monitor.parse)  # for checks handed this class
