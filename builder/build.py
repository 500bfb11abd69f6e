"""From a checked config to a ready trainer: the data loaders, the model (weights, init,
freeze), loss, metrics, optimizers and schedulers, wired into the configured trainer class.
Touches no file; `train.py` and `test.py` call it. Imports torch only when building, so that
`train.py --help` starts fast."""
import logging
from dataclasses import dataclass
from types import ModuleType

from config.checks import Block
from utils.errors import BuildError, CheckpointError, ConfigError, UserError

# What `build_trainer` passes to the trainer class besides `trainer.args`.
TRAINER_GIVEN = ("model", "criterion", "metric_fns", "optimizer", "config", "device",
                 "data_loader", "valid_data_loader", "lr_scheduler", "len_epoch")

# Where a metric's bare name is looked up when model/metric.py does not have it.
METRIC_MODULES = ("torchmetrics", "torchmetrics.classification", "torchmetrics.regression")


@dataclass(frozen=True)
class UserModules:
    """The user's modules where a config's bare `type` names resolve, imported by the entry
    script (train.py's `user_modules`) and handed to the builder, which imports none itself."""

    data: ModuleType      # data_loader.type: data_loader/data_loaders.py
    arch: ModuleType      # arch.type: model/model.py
    loss: ModuleType      # loss: model/loss.py
    metric: ModuleType    # metrics: model/metric.py
    trainer: ModuleType   # trainer.type: trainer/trainer.py (its `Trainer` is the base class)


def blocks(modules: UserModules, training: bool = True) -> tuple[Block, ...]:
    """The config blocks `build_trainer` builds, and what it passes to each besides the
    config's args; without `training` (test.py) no optimizer and no scheduler."""
    from base.base_data_loader import loader_args_problems
    from base.settings import TrainerSettings

    built = (
        Block("data_loader", modules.data, given=("seed",), kind="torch.utils.data.DataLoader",
              check_args=loader_args_problems),
        Block("arch", modules.arch, kind="torch.nn.Module"),
        Block("loss", modules.loss, function=True, required=False),  # null: the step computes it
        Block("metrics", modules.metric, function=True, many=True, kind="torchmetrics.Metric",
              fallback=METRIC_MODULES),
        Block("optimizer", "torch.optim", positional=1, kind="torch.optim.Optimizer",
              dry_run="parameters"),
        Block("lr_scheduler", "torch.optim.lr_scheduler", positional=1, required=False,
              kind="torch.optim.lr_scheduler.LRScheduler", dry_run="optimizer"),
        Block("trainer", modules.trainer, kind=modules.trainer.Trainer, given=TRAINER_GIVEN,
              settings=TrainerSettings),
    )
    return built if training else tuple(block for block in built
                                        if block.key not in ("optimizer", "lr_scheduler"))


def build_trainer(config, modules: UserModules, device=None, training: bool = True):
    """Every object the config describes, wired into its trainer class; touches no file.
    `modules`: where the user's names resolve. `device`: this process's device under torchrun
    (the Trainer wraps the model in DDP); None picks one from `n_gpu`, with DataParallel over
    several GPUs. Without `training` (test.py): no optimizer, no validation split, one
    device."""
    import torch

    from utils.util import prepare_device

    seed = config.get("seed", 0)
    data_loader = config.init_obj("data_loader", modules.data, seed=seed)
    valid_data_loader = data_loader.split_validation() if training else None

    model = config.init_obj("arch", modules.arch)
    if not isinstance(model, torch.nn.Module):  # a function named as arch.type returned another
        arch = config["arch"]["type"] if isinstance(config["arch"], dict) else config["arch"]
        raise ConfigError(f"arch.type: {arch!r} returned a {type(model).__name__}, not a "
                          f"torch.nn.Module")
    parameters, notes = set_up_model(config, model) if training else (None, [])
    device_ids = []
    if device is None:
        device, device_ids = prepare_device(config.get("n_gpu", 1) if training else
                                            min(config.get("n_gpu", 1), 1))
    model = model.to(device)  # in place: the parameters stay the same objects
    for loader in (data_loader, valid_data_loader):  # data_loader.args.on_device
        if hasattr(loader, "place"):
            loader.place(device)
    if len(device_ids) > 1:  # one process, several GPUs
        model = torch.nn.DataParallel(model, device_ids=device_ids)

    criterion = config.init_ftn("loss", modules.loss) if config.get("loss") is not None else None
    metrics = config.init_ftn_list("metrics", modules.metric, reserved=["loss"],
                                   kind="torchmetrics.Metric", fallback=METRIC_MODULES)
    optimizer, lr_scheduler = build_optimizers(config, parameters) if training else (None, None)
    trainer_class, options = config.trainer_class(modules.trainer, modules.trainer.Trainer,
                                                  TRAINER_GIVEN)
    try:
        trainer = trainer_class(model=model, criterion=criterion, metric_fns=metrics,
                                optimizer=optimizer, config=config, device=device,
                                data_loader=data_loader, valid_data_loader=valid_data_loader,
                                lr_scheduler=lr_scheduler, **options)
    except UserError:
        raise
    except Exception as error:  # the user's own constructor (a teacher's weights file, ...)
        raise BuildError(f"trainer.type: building {trainer_class.__name__} raised "
                         f"{type(error).__name__}; the traceback from its code:") from error
    trainer.model_notes = notes  # logged once the run's log file exists
    if training and (trainer.settings.ema is not None or trainer.settings.swa is not None):
        from step.averaging import averaging_callbacks  # only then: a plain run imports none

        trainer.callbacks = averaging_callbacks(trainer.settings)
        problems = [callback.problem(trainer) for callback in trainer.callbacks]
        if any(problems):
            raise ConfigError(*filter(None, problems))
    return trainer


def build_optimizers(config, parameters):
    """The optimizer and its scheduler (None without one); with `optimizers` in the config,
    both by name (`parameters`: the trainable ones, by name)."""
    import torch

    if config.get("optimizers") is None:
        optimizer = config.init_obj("optimizer", torch.optim, parameters)
        scheduler = config.init_scheduler("lr_scheduler", torch.optim.lr_scheduler, optimizer) \
            if config.get("lr_scheduler") else None
        return optimizer, scheduler
    optimizers, schedulers = {}, {}
    for name, selected in parameters.items():
        optimizers[name] = config.init_obj(f"optimizers.{name}", torch.optim, selected)
        if config["optimizers"][name].get("lr_scheduler"):
            schedulers[name] = config.init_scheduler(f"optimizers.{name}.lr_scheduler",
                                                     torch.optim.lr_scheduler, optimizers[name])
    return optimizers, schedulers


def set_up_model(config, model) -> tuple[list, list[str]]:
    """`arch.weights` or else `arch.init` (on a fresh start: a resume or fine-tune loads the
    checkpoint's weights instead), then `arch.freeze`; the parameters for the optimizer (its
    `param_groups`, or the trainable ones) and notes for the log. The checks that need the
    model (freeze, param_groups and watch names) are reported together."""
    from builder.model_tools import freeze, parameter_groups
    from step.watch import watch_targets

    arch = config["arch"] if isinstance(config["arch"], dict) else {}
    if config.resume is None:
        notes = start_weights(arch, model)
    else:
        unused = [f"arch.{key}" for key in ("weights", "init") if arch.get(key) is not None]
        notes = [f"{' and '.join(unused)}: not used, the weights come from {config.resume}"] \
            if unused else []
    problems = []
    try:
        if arch.get("freeze"):
            notes.append(f"arch.freeze: {len(freeze(model, arch['freeze']))} parameter tensors "
                         f"frozen")
    except ConfigError as error:
        problems += error.problems
    parameters = [p for p in model.parameters() if p.requires_grad]
    if not parameters and not problems:
        problems.append("arch.freeze: every parameter is frozen; nothing would train")
    if config.get("optimizers") is not None:
        parameters = named_parameters(model, config["optimizers"], problems)
    else:
        groups = config["optimizer"].get("param_groups")
        try:
            parameters = parameter_groups(model, groups) if groups else parameters
        except ConfigError as error:
            problems += error.problems
    problems += watch_targets(model, config["trainer"].get("watch"))[2]
    if problems:
        raise ConfigError(*problems)
    return parameters, notes


def named_parameters(model, optimizers: dict, problems: list[str]) -> dict[str, list]:
    """The trainable parameters each named optimizer's `params` patterns select (all of them
    without `params`); a pattern matching nothing, or a parameter two optimizers would step, is
    added to `problems`. A trainable parameter no optimizer holds is logged as a warning."""
    from builder.model_tools import some_names, trainable_matching

    trainable = dict((name, p) for name, p in model.named_parameters() if p.requires_grad)
    selected, owner = {}, {}
    for name, block in optimizers.items():
        patterns = block.get("params")
        patterns = ["*"] if patterns is None else [patterns] if isinstance(patterns, str) \
            else patterns
        names, unmatched = trainable_matching(model, patterns, f"optimizers.{name}.params")
        problems += unmatched
        for other in dict.fromkeys(owner[found] for found in names if found in owner):
            shared = [found for found in names if owner.get(found) == other]
            problems.append(f"optimizers.{name}.params: {some_names(shared, 4)} also in "
                            f"optimizer {other!r}; a parameter may be in one optimizer only")
        owner.update({found: name for found in names if found not in owner})
        selected[name] = [trainable[found] for found in names]
    left = [name for name in trainable if name not in owner]
    if left and not problems:
        logging.getLogger("train").warning(
            "Warning: no optimizer trains %s (optimizers.*.params); they stay as they are.",
            some_names(left, 4))
    return selected


def start_weights(arch: dict, model) -> list[str]:
    """`arch.weights` loaded, or `arch.init` applied; notes for the log."""
    from builder.model_tools import initialise
    from config.model_options import resolve_init, weights_spec
    from utils.checkpoint import read_weights
    from utils.weights import load_model_state

    if arch.get("weights") is not None:
        path, strict = weights_spec(arch["weights"])
        try:
            loaded, mismatches = load_model_state(model, read_weights(path), path, strict)
        except CheckpointError as error:
            raise CheckpointError(f"arch.weights: {error}") from None
        total = len(model.state_dict())
        return [f"arch.weights: {loaded} of {total} tensors from {path}"] + \
            [f"arch.weights: not loaded: {line}" for line in mismatches]
    if arch.get("init") is None:
        return []
    init_fn, args, layer_types = resolve_init(arch["init"])
    try:
        count = initialise(model, init_fn, args, layer_types)
    except (ValueError, TypeError, RuntimeError) as error:  # a value torch.nn.init rejects
        raise ConfigError(f"arch.init: {init_fn.__name__} failed: {error}") from None
    return [f"arch.init: {init_fn.__name__} on {count} layers "
            f"({', '.join(layer.__name__ for layer in layer_types)}), biases zeroed"]
