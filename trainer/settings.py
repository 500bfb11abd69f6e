"""The `trainer` section of the config as typed settings, and the monitored-metric rule."""
import dataclasses
import difflib
import json
import math
from dataclasses import dataclass

from utils.errors import ConfigError


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


@dataclass(frozen=True)
class TrainerSettings:
    """What `BaseTrainer` reads from `config["trainer"]`, with the template's defaults."""

    epochs: int
    save_dir: str = "saved/"
    save_period: int = 1        # write checkpoint-epochN.pth every this many epochs
    verbosity: int = 2          # 0 warnings, 1 info, 2 debug
    monitor: str = "off"
    early_stop: int = 0         # stop after this many epochs without improvement; 0 never
    tensorboard: bool = False
    len_epoch: int | None = None  # optimizer steps per epoch (iteration-based training)
    log_step: int = 10          # read the loss back and log it every this many steps

    @classmethod
    def from_config(cls, section: dict) -> "TrainerSettings":
        names = [field.name for field in dataclasses.fields(cls)]
        for key in section:
            if key not in names:
                close = difflib.get_close_matches(key, names, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ConfigError(f"trainer.{key}: unknown key{hint}")
        if "epochs" not in section:
            raise ConfigError("trainer.epochs: missing from the config")
        for key, value in section.items():
            _check_value(key, value)
        settings = cls(**section)
        settings.parsed_monitor  # raises on a malformed monitor
        return settings

    @property
    def parsed_monitor(self) -> Monitor:
        return Monitor.parse(self.monitor)


# key: (smallest allowed integer, or a type for non-integers; whether null is allowed)
_RULES = {"epochs": (1, False), "save_period": (1, False), "early_stop": (0, False),
          "len_epoch": (1, True), "log_step": (1, False), "tensorboard": (bool, False),
          "save_dir": (str, False), "monitor": (str, False), "verbosity": (0, False)}


def _check_value(key: str, value) -> None:
    rule, nullable = _RULES.get(key, (None, True))
    if rule is None or (value is None and nullable):
        return
    if isinstance(rule, type):
        if not isinstance(value, rule) or value == "":
            raise ConfigError(f"trainer.{key}: expected a {'boolean' if rule is bool else 'string'}"
                              f", got {json.dumps(value)}")
    elif isinstance(value, bool) or not isinstance(value, int) or value < rule:
        raise ConfigError(f"trainer.{key}: expected an integer >= {rule}, got {json.dumps(value)}")
