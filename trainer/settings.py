"""The concrete trainer's own settings in the `trainer` section: the step machinery's (precision,
accumulation, clipping, NaN policy, compile, progress, TensorBoard extras) on top of the loop's."""
import json
from dataclasses import dataclass

from base.settings import LoopSettings, flag, integer, one_of, positive_number, setting, text
from config.names import did_you_mean
from trainer.watch import watch_problems

# What `trainer.compile` may pass to torch.compile.
COMPILE_OPTIONS = ("mode", "backend", "fullgraph", "dynamic")
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass(frozen=True)
class TrainerSettings(LoopSettings):
    """Everything `Trainer` reads from `config["trainer"]`: the loop's settings and its own."""

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
    # the trainer class: a Trainer subclass (trainer/ or examples/)
    type: str = setting("Trainer", text)
    args: dict | None = setting(None, nullable=True)  # that class's own options

    @classmethod
    def own_problems(cls, section: dict) -> list[str]:
        problems = watch_problems(section.get("watch"))
        problem = compile_problem(section.get("compile", False))
        return problems + ([problem] if problem else [])


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
