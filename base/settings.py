"""The `trainer` section of the config as typed settings, and the monitored-metric rule.

`TrainerSettings` holds what the trainer reads, loop and step alike. Each field carries its
rule: a small function from a value to a problem (or None), so a check reads like the field it
checks.
"""
import dataclasses
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from step.watch import watch_problems
from utils.errors import ConfigError, did_you_mean

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
class TrainerSettings:
    """Everything the trainer reads from `config["trainer"]`, with the template's defaults: the
    loop's (epochs, checkpoints, monitor, early stop) and the step's (precision, accumulation,
    clipping, NaN policy, compile, progress, TensorBoard extras)."""

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
    # optimizer steps per epoch (iteration-based training)
    len_epoch: int | None = setting(None, integer(1), nullable=True)
    log_step: int = setting(10, integer(1))  # read the loss back and log it every N steps
    # a non-finite loss: "stop" the run, or "skip" that step
    nan_policy: str = setting("stop", one_of("stop", "skip"))
    # mixed precision: null, "bf16" or "fp16" (with a grad scaler)
    amp: str | None = setting(None, one_of("bf16", "fp16"), nullable=True)
    grad_accum_steps: int = setting(1, integer(1))  # micro-batches per optimizer step
    # clip the global gradient norm to this
    grad_clip_norm: float | None = setting(None, positive_number, nullable=True)
    compile: bool | dict = setting(False)  # torch.compile the model: true, or its options
    # let cuDNN pick the fastest kernels (off when deterministic)
    cudnn_benchmark: bool = setting(True, flag)
    deterministic: bool = setting(False, flag)  # torch.use_deterministic_algorithms(True)
    # tqdm bars: "auto" (when stdout is a terminal), true, false
    progress_bar: bool | str = setting("auto", one_of("auto", True, False))
    log_images: bool = setting(False, flag)  # TensorBoard: the first training batch each epoch
    # TensorBoard at log steps: grad_norm, activations, grad_stats
    watch: dict | None = setting(None, nullable=True)
    # averaged weights, validated and saved as the run's model (step/averaging.py): an
    # exponential moving average, or stochastic weight averaging from an epoch on
    ema: dict | None = setting(None, nullable=True)
    swa: dict | None = setting(None, nullable=True)
    # MLflow tracking beside TensorBoard (the tracking leaf): tracking_uri, experiment, ...
    mlflow: dict | None = setting(None, nullable=True)
    # the trainer class: a Trainer subclass (trainer/ or examples/)
    type: str = setting("Trainer", text)
    args: dict | None = setting(None, nullable=True)  # that class's own options


    @classmethod
    def from_config(cls, section: dict) -> "TrainerSettings":
        """The settings of a `trainer` section; a `ConfigError` lists every problem with its
        fields (an unknown key is the whole-config check's to report, with the others)."""
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
        """The checks beyond one rule per field (nested blocks)."""
        problems = watch_problems(section.get("watch")) + option_block_problems(section)
        problem = compile_problem(section.get("compile", False))
        return problems + ([problem] if problem else [])


    @property
    def parsed_monitor(self) -> Monitor:
        return Monitor.parse(self.monitor)

    @staticmethod
    def monitor_of(text: str) -> Monitor:
        """`text` as a `Monitor` (the config check, handed this class, knows no `Monitor`)."""
        return Monitor.parse(text)


def fraction(value) -> str | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        return "a number between 0 and 1"
    return None


# The option blocks: each key's default (MISSING: required) and rule, and an example;
# step/averaging.py and the tracking leaf read the defaults.
EMA_OPTIONS = {"decay": (0.999, fraction), "warmup": (True, flag), "every": (1, integer(1))}
SWA_OPTIONS = {"start_epoch": (dataclasses.MISSING, integer(1)), "lr": (None, positive_number),
               "anneal_epochs": (5, integer(0)), "bn_update": (True, flag)}
MLFLOW_OPTIONS = {"tracking_uri": (None, text), "experiment": (None, text),
                  "artifact_location": (None, text), "log_checkpoint": (True, flag)}
BLOCKS = {"ema": (EMA_OPTIONS, '{"decay": 0.999}'),
          "swa": (SWA_OPTIONS, '{"start_epoch": 15, "lr": 0.01}'),
          "mlflow": (MLFLOW_OPTIONS, '{"tracking_uri": "sqlite:///saved/mlflow.db"}')}


def block_problems(name: str, block) -> list[str]:
    """The problems of the option block `trainer.<name>` (null: off): an object of known keys,
    each with its rule."""
    options, example = BLOCKS[name]
    if block is None:
        return []
    if not isinstance(block, dict):
        return [f"trainer.{name}: expected an object such as {example}, or null, got "
                f"{json.dumps(block)}"]
    problems = [f"trainer.{name}.{key}: unknown key (one of {', '.join(options)})"
                f"{did_you_mean(key, list(options))}" for key in block if key not in options]
    for key, (default, rule) in options.items():
        if key not in block:
            if default is dataclasses.MISSING:
                problems.append(f"trainer.{name}.{key}: missing (e.g. {example})")
        elif not (block[key] is None and default is None):  # null: the default, off
            wanted = rule(block[key])
            if wanted is not None:
                problems.append(f"trainer.{name}.{key}: expected {wanted}, got "
                                f"{json.dumps(block[key])}")
    return problems


def option_block_problems(section: dict) -> list[str]:
    """The problems of `trainer.ema`, `trainer.swa` and `trainer.mlflow`, and of the averaging
    blocks together (one of them; SWA starting within the run)."""
    problems = [problem for name in BLOCKS for problem in block_problems(name, section.get(name))]
    if section.get("ema") is not None and section.get("swa") is not None:
        problems.append("trainer.ema, trainer.swa: one kind of averaged weights at a time; set "
                        "the other to null")
    start, epochs = (section.get("swa") or {}).get("start_epoch"), section.get("epochs")
    if isinstance(start, int) and isinstance(epochs, int) and not isinstance(start, bool) and \
            start > epochs:
        problems.append(f"trainer.swa.start_epoch: {start} is after the run's last epoch "
                        f"(trainer.epochs {epochs}): nothing would be averaged")
    return problems


# What `trainer.compile` may pass to torch.compile.
COMPILE_OPTIONS = ("mode", "backend", "fullgraph", "dynamic")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def compile_problem(value) -> str | None:
    """What is wrong with `trainer.compile` (true, false, or torch.compile's options), or None."""
    if isinstance(value, bool):
        return None
    if not isinstance(value, dict):
        return (f"trainer.compile: expected true, false or an object of "
                f"{', '.join(COMPILE_OPTIONS)}, got {json.dumps(value)}")
    unknown = [key for key in value if key not in COMPILE_OPTIONS]
    if unknown:
        return (f"trainer.compile.{unknown[0]}: unknown key (one of "
                f"{', '.join(COMPILE_OPTIONS)}){did_you_mean(unknown[0], COMPILE_OPTIONS)}")
    mode, backend = value.get("mode", "default"), value.get("backend", "inductor")
    if mode not in COMPILE_MODES:
        return (f"trainer.compile.mode: expected one of {', '.join(map(json.dumps, COMPILE_MODES))}"
                f", got {json.dumps(mode)}{did_you_mean(str(mode), COMPILE_MODES)}")
    for name, nullable in (("fullgraph", False), ("dynamic", True)):
        option = value.get(name, False)
        if not isinstance(option, bool) and not (nullable and option is None):
            return (f"trainer.compile.{name}: expected true or false"
                    f"{' or null' if nullable else ''}, got {json.dumps(option)}")
    if backend != "inductor":
        import torch.compiler  # only when a backend is named

        backends = torch.compiler.list_backends(exclude_tags=())
        if backend not in backends:
            return (f"trainer.compile.backend: {json.dumps(backend)} is not a torch.compile "
                    f"backend{did_you_mean(str(backend), backends)}")
    return None
