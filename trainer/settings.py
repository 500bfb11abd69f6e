"""The `trainer` section of the config as typed settings, and the monitored-metric rule."""
import dataclasses
import json
import math
from dataclasses import dataclass

from utils.errors import ConfigError
from utils.names import did_you_mean


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
    save_dir: str               # runs go to <save_dir>/models and <save_dir>/log
    save_period: int = 1        # write checkpoint-epochN.pth every this many epochs
    verbosity: int = 2          # 0 warnings, 1 info, 2 debug
    monitor: str = "off"
    early_stop: int = 0         # stop after this many epochs without improvement; 0 never
    tensorboard: bool = False
    len_epoch: int | None = None  # optimizer steps per epoch (iteration-based training)
    log_step: int = 10          # read the loss back and log it every this many steps
    keep_last: int | None = None  # keep only the newest N checkpoint-epochN.pth; null keeps all
    nan_policy: str = "stop"    # a non-finite loss: "stop" the run, or "skip" that step
    amp: str | None = None      # mixed precision: null, "bf16" or "fp16" (with a grad scaler)
    grad_accum_steps: int = 1   # micro-batches per optimizer step
    grad_clip_norm: float | None = None  # clip the global gradient norm to this
    compile: bool | dict = False  # torch.compile the model: true, or its keyword arguments
    cudnn_benchmark: bool = True  # let cuDNN pick the fastest kernels (off when deterministic)
    deterministic: bool = False   # torch.use_deterministic_algorithms(True)
    progress_bar: bool | str = "auto"  # tqdm bars: "auto" (when stdout is a terminal), true, false
    log_images: bool = False      # TensorBoard: a grid of the first training batch each epoch
    log_histograms: int = 0       # TensorBoard: weight and gradient histograms every N epochs
    watch: dict | None = None     # TensorBoard at log steps: grad_norm, activations, grad_stats
    type: str = "Trainer"         # the trainer class: a Trainer subclass (trainer/ or examples/)
    args: dict | None = None      # that class's own options (checked against its signature)

    @classmethod
    def from_config(cls, section: dict) -> "TrainerSettings":
        """The settings of a checked `trainer` section; a `ConfigError` lists every problem."""
        problems = cls.problems(section)
        if problems:
            raise ConfigError("\n".join(problems))
        return cls(**section)

    @classmethod
    def known_keys(cls) -> list[str]:
        return [field.name for field in dataclasses.fields(cls)]

    @classmethod
    def problems(cls, section: dict) -> list[str]:
        """Every problem in a `trainer` section, each a line starting with its key path."""
        names = cls.known_keys()
        problems = [f"trainer.{key}: unknown key{did_you_mean(key, names)}"
                    for key in section if key not in names]
        problems += [f"trainer.{key}: missing from the config" for key in ("epochs", "save_dir")
                     if key not in section]
        problems += [problem for key, value in section.items()
                     if key in names and (problem := _value_problem(key, value))]
        from trainer.watch import watch_problems
        problems += watch_problems(section.get("watch"))
        if isinstance(section.get("monitor"), str):
            try:
                Monitor.parse(section["monitor"])
            except ConfigError as error:
                problems.append(str(error))
        return problems

    @property
    def parsed_monitor(self) -> Monitor:
        return Monitor.parse(self.monitor)


# key: (smallest, largest) allowed integer, or a type for non-integers; whether null is allowed
_RULES = {"epochs": ((1, None), False), "save_period": ((1, None), False),
          "early_stop": ((0, None), False), "len_epoch": ((1, None), True),
          "log_step": ((1, None), False), "verbosity": ((0, 2), False),
          "tensorboard": (bool, False), "save_dir": (str, False), "monitor": (str, False),
          "keep_last": ((1, None), True), "nan_policy": (("stop", "skip"), False),
          "amp": (("bf16", "fp16"), True), "grad_accum_steps": ((1, None), False),
          "grad_clip_norm": (float, True), "compile": (dict, False),
          "cudnn_benchmark": (bool, False), "deterministic": (bool, False),
          "progress_bar": (("auto", True, False), False), "log_images": (bool, False),
          "log_histograms": ((0, None), False), "watch": (None, True),
          "type": (str, False), "args": (None, True)}
# What `trainer.compile` may pass to torch.compile.
COMPILE_OPTIONS = ("mode", "backend", "fullgraph", "dynamic")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def _value_problem(key: str, value) -> str | None:
    rule, nullable = _RULES.get(key, (None, True))
    if rule is None or (value is None and nullable):
        return None
    if isinstance(rule, tuple) and isinstance(rule[0], str):  # one of a few words (or true/false)
        if not any(value is choice or isinstance(choice, str) and value == choice
                   for choice in rule):
            choices = [choice if isinstance(choice, str) else json.dumps(choice) for choice in rule]
            return (f"trainer.{key}: expected one of {', '.join(map(json.dumps, rule))}, "
                    f"got {json.dumps(value)}{did_you_mean(str(value), choices)}")
        return None
    if rule is float:  # a positive number
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0 or \
                value == float("inf"):
            return f"trainer.{key}: expected a number > 0, got {json.dumps(value)}"
        return None
    if rule is dict:  # compile: true / false, or torch.compile's options
        if isinstance(value, bool):
            return None
        if not isinstance(value, dict):
            return (f"trainer.{key}: expected true, false or an object of "
                    f"{', '.join(COMPILE_OPTIONS)}, got {json.dumps(value)}")
        unknown = [k for k in value if k not in COMPILE_OPTIONS]
        if unknown:
            return (f"trainer.{key}.{unknown[0]}: unknown key (one of "
                    f"{', '.join(COMPILE_OPTIONS)}){did_you_mean(unknown[0], COMPILE_OPTIONS)}")
        return _compile_option_problem(value)
    if isinstance(rule, type):
        if not isinstance(value, rule) or value == "":
            return (f"trainer.{key}: expected {'true or false' if rule is bool else 'a string'}, "
                    f"got {json.dumps(value)}")
        return None
    smallest, largest = rule
    if isinstance(value, bool) or not isinstance(value, int) or value < smallest or \
            (largest is not None and value > largest):
        wanted = f"an integer >= {smallest}" if largest is None else \
            f"an integer from {smallest} to {largest}"
        return f"trainer.{key}: expected {wanted}, got {json.dumps(value)}"
    return None


def _compile_option_problem(options: dict) -> str | None:
    """The first bad value among torch.compile's options, or None."""
    mode, backend = options.get("mode", "default"), options.get("backend", "inductor")
    if mode not in COMPILE_MODES:
        return (f"trainer.compile.mode: expected one of {', '.join(map(json.dumps, COMPILE_MODES))}"
                f", got {json.dumps(mode)}{did_you_mean(str(mode), COMPILE_MODES)}")
    for flag, nullable in (("fullgraph", False), ("dynamic", True)):
        value = options.get(flag, False)
        if not isinstance(value, bool) and not (nullable and value is None):
            return (f"trainer.compile.{flag}: expected true or false"
                    f"{' or null' if nullable else ''}, got {json.dumps(value)}")
    if backend != "inductor":
        import torch._dynamo  # slow import: only when a backend is named

        backends = torch._dynamo.list_backends(exclude_tags=())
        if backend not in backends:
            return (f"trainer.compile.backend: {json.dumps(backend)} is not a torch.compile "
                    f"backend{did_you_mean(str(backend), backends)}")
    return None
