"""Train a model from a config: `python train.py -c config.json`, resume with `-r checkpoint`."""
import argparse
import json
import logging
import sys
import time
from collections.abc import Sequence

from parse_config import ConfigParser, CustomArgs
from utils.cli import run_cli
from utils.config_check import Block
from utils.errors import CheckpointError, ConfigError

# Registered shortcuts for common overrides: (flags, type, config key they set).
OPTIONS = [
    CustomArgs(["--lr", "--learning_rate"], type=float, target="optimizer.args.lr"),
    CustomArgs(["--bs", "--batch_size"], type=int, target="data_loader.args.batch_size"),
    CustomArgs(["--epochs"], type=int, target="trainer.epochs"),
    CustomArgs(["--seed"], type=int, target="seed"),
    CustomArgs(["--name"], type=str, target="name"),
]

# What `build_trainer` passes to the trainer class besides `trainer.args`.
TRAINER_GIVEN = ("model", "criterion", "metric_fns", "optimizer", "config", "device",
                 "data_loader", "valid_data_loader", "lr_scheduler", "len_epoch")

# Where a metric's bare name is looked up when model/metric.py does not have it.
METRIC_MODULES = ("torchmetrics", "torchmetrics.classification", "torchmetrics.regression")

# The blocks `build_trainer` builds, and what it passes to each besides the config's args.
BLOCKS = (
    Block("data_loader", "data_loader.data_loaders", given=("seed",),
          kind="torch.utils.data.DataLoader"),
    Block("arch", "model.model", kind="torch.nn.Module"),
    Block("loss", "model.loss", function=True, required=False),  # null: the step computes it
    Block("metrics", "model.metric", function=True, many=True, kind="torchmetrics.Metric",
          fallback=METRIC_MODULES),
    Block("optimizer", "torch.optim", positional=1, kind="torch.optim.Optimizer",
          dry_run="parameters"),
    Block("lr_scheduler", "torch.optim.lr_scheduler", positional=1, required=False,
          kind="torch.optim.lr_scheduler.LRScheduler", dry_run="optimizer"),
    Block("trainer", "trainer.trainer", kind="trainer.trainer.Trainer", given=TRAINER_GIVEN),
)


def build_trainer(config: ConfigParser, device=None, training: bool = True):
    """Every object the config describes, wired into its trainer class; touches no file.
    `device`: this process's device under torchrun (the Trainer wraps the model in DDP); None
    picks one from `n_gpu`, with DataParallel over several GPUs. Without `training` (test.py):
    no optimizer, no validation split, one device."""
    import torch

    import data_loader.data_loaders as module_data
    import model.loss as module_loss
    import model.metric as module_metric
    import model.model as module_arch
    import trainer.trainer as module_trainer
    from utils.util import prepare_device

    seed = config.get("seed", 0)
    data_loader = config.init_obj("data_loader", module_data, seed=seed)
    valid_data_loader = data_loader.split_validation() if training else None

    model = config.init_obj("arch", module_arch)
    parameters, notes = set_up_model(config, model) if training else (None, [])
    device_ids = []
    if device is None:
        device, device_ids = prepare_device(config.get("n_gpu", 1) if training else
                                            min(config.get("n_gpu", 1), 1))
    model = model.to(device)  # in place: the parameters stay the same objects
    if len(device_ids) > 1:  # one process, several GPUs
        model = torch.nn.DataParallel(model, device_ids=device_ids)

    criterion = config.init_ftn("loss", module_loss) if config.get("loss") is not None else None
    metrics = config.init_ftn_list("metrics", module_metric, reserved=["loss"],
                                   kind="torchmetrics.Metric", fallback=METRIC_MODULES)
    optimizer, lr_scheduler = build_optimizers(config, parameters) if training else (None, None)
    trainer_class, options = config.trainer_class(module_trainer, module_trainer.Trainer,
                                                  TRAINER_GIVEN)
    trainer = trainer_class(model=model, criterion=criterion, metric_fns=metrics,
                            optimizer=optimizer, config=config, device=device,
                            data_loader=data_loader, valid_data_loader=valid_data_loader,
                            lr_scheduler=lr_scheduler, **options)
    trainer.model_notes = notes  # logged once the run's log file exists
    return trainer


def build_optimizers(config: ConfigParser, parameters):
    """The optimizer and its scheduler (None without one); with `optimizers` in the config,
    both by name (`parameters`: the trainable ones, by name)."""
    import torch

    if config.get("optimizers") is None:
        optimizer = config.init_obj("optimizer", torch.optim, parameters)
        scheduler = config.init_obj("lr_scheduler", torch.optim.lr_scheduler, optimizer) \
            if config.get("lr_scheduler") else None
        return optimizer, scheduler
    optimizers, schedulers = {}, {}
    for name, selected in parameters.items():
        optimizers[name] = config.init_obj(f"optimizers.{name}", torch.optim, selected)
        if config["optimizers"][name].get("lr_scheduler"):
            schedulers[name] = config.init_obj(f"optimizers.{name}.lr_scheduler",
                                               torch.optim.lr_scheduler, optimizers[name])
    return optimizers, schedulers


def set_up_model(config: ConfigParser, model) -> tuple[list, list[str]]:
    """`arch.weights` or else `arch.init` (on a fresh start: a resume or fine-tune loads the
    checkpoint's weights instead), then `arch.freeze`; the parameters for the optimizer (its
    `param_groups`, or the trainable ones) and notes for the log. The checks that need the
    model (freeze, param_groups and watch names) are reported together."""
    from base.model_tools import freeze, parameter_groups
    from trainer.watch import watch_targets

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
        problems += str(error).splitlines()
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
            problems += str(error).splitlines()
    problems += watch_targets(model, config["trainer"].get("watch"))[2]
    if problems:
        raise ConfigError("\n".join(problems))
    return parameters, notes


def named_parameters(model, optimizers: dict, problems: list[str]) -> dict[str, list]:
    """The trainable parameters each named optimizer's `params` patterns select (all of them
    without `params`); a pattern matching nothing, or a parameter two optimizers would step, is
    added to `problems`. A trainable parameter no optimizer holds is logged as a warning."""
    from base.model_tools import some_names, trainable_matching

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
    from base.model_tools import initialise
    from trainer.checkpoint import load_model_state, read_weights
    from utils.model_options import resolve_init, weights_spec

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


def main(argv=None, callbacks: Sequence = ()) -> None:
    """The command line; `callbacks`: `trainer.trainer.Callback`s the trainer calls."""
    parser = argparse.ArgumentParser(description="Train a model from a JSON config.")
    parser.add_argument("--print-config", action="store_true",
                        help="print the effective config (file + overrides) and exit")
    parser.add_argument("--dry-run", action="store_true",
                        help="check the config in seconds: build everything, run 2 training "
                             "steps and 2 validation batches, print the model summary and the "
                             "effective config; writes nothing")
    started = time.monotonic()
    config = ConfigParser.from_args(parser, OPTIONS, argv)
    config.validate(BLOCKS)  # every problem at once, before anything is built or written
    if config.cli_args.print_config:
        print(json.dumps(config.config, indent=4))
        return

    from logger.logger import setup_logging
    from utils import distributed

    setup_logging(None)  # console only until the run folder exists
    device = start_processes(config) if distributed.launched_world_size() > 1 else None
    try:
        if config.cli_args.dry_run:
            dry_run(config, device, started)
        else:
            train(config, device, list(argv if argv is not None else sys.argv[1:]), callbacks)
    finally:  # also on errors and signals
        distributed.stop()


def start_processes(config: ConfigParser):
    """Under torchrun: join the other processes; this one's device. Only rank 0 logs."""
    import torch

    from utils import distributed

    use_cuda = config.get("n_gpu", 1) > 0 and torch.cuda.is_available()
    if config.get("n_gpu", 1) > 0 and not use_cuda and distributed.launched_rank() == 0:
        logging.getLogger("train").warning("Warning: n_gpu is %d but no CUDA GPU is available; "
                                           "each process runs on the CPU.", config["n_gpu"])
    device = distributed.start(use_cuda)
    if not distributed.is_main():  # the other ranks report errors only
        for handler in logging.getLogger().handlers:
            handler.setLevel(logging.ERROR)
    return device


def train(config: ConfigParser, device, argv: list[str], callbacks: Sequence = ()) -> None:
    """Build, check, resume if asked, open the run folder and train (on every process)."""
    from utils import distributed

    trainer = prepare(config, device)
    trainer.callbacks = list(callbacks)
    if trainer.nothing_to_train():  # before a run folder is made for nothing
        return
    with distributed.all_or_none("opening the run folder"):
        if distributed.is_main():
            open_run(config, trainer, argv)
    config.run_id = distributed.from_main(config.run_id)  # the folder rank 0 made
    trainer.train()


def dry_run(config: ConfigParser, device, started: float) -> None:
    """`--dry-run`: everything `train` does before its first write, then two training steps
    and two validation batches; prints the effective config and the model summary."""
    from logger.progress import format_value
    from utils import distributed

    trainer = prepare(config, device)
    main_process = distributed.is_main()
    if main_process:
        print("Effective config:")
        print(json.dumps(config.config, indent=4))
        print("\nModel summary:")
        print("\n".join([*trainer.model_notes, *summary_lines(trainer)]))
    result = trainer.dry_run(steps=2, batches=2)
    losses, log = result.losses, result.log
    if not main_process:
        return
    for note in result.notes:
        print(note)
    if trainer.start_epoch > trainer.settings.epochs:
        print(f"\nNote: the checkpoint is at epoch {trainer.start_epoch - 1} and trainer.epochs "
              f"is {trainer.settings.epochs}: training would have nothing to do (raise it with "
              f"--epochs).")
    steps = f"{len(losses)} training step{'s' if len(losses) != 1 else ''}"
    if losses:
        steps += f" (loss {', '.join(map(format_value, losses))})"
    if log:
        batches = min(2, len(trainer.valid_data_loader))
        steps += (f", validation on {batches} batch{'es' if batches != 1 else ''} (" +
                  ", ".join(f"{key} {format_value(value)}" for key, value in log.items()) + ")")
    print(f"\nDry run: {steps}; {time.monotonic() - started:.1f} s in all.")
    print("The config is ready to train. Nothing was written; train with the same command "
          "without --dry-run.")


def prepare(config: ConfigParser, device):
    """The trainer, built, checked on a first batch and resumed if asked: everything before
    the first write (under torchrun every process, or none, gets through)."""
    from trainer.precision import configure_backends
    from utils import distributed
    from utils.seeding import derive_seed, seed_everything

    trainer_section = config["trainer"]
    configure_backends(trainer_section.get("cudnn_benchmark", True),
                       trainer_section.get("deterministic", False))
    seed = config.get("seed", 0)
    # under torchrun: no run folder unless every process built and checked everything
    with distributed.all_or_none("starting"):
        seed_everything(seed)  # the same initial weights in every process
        trainer = build_trainer(config, device)
        if distributed.rank() > 0:  # dropout and augmentation differ between processes
            seed_everything(derive_seed(seed, distributed.rank()))
        trainer.check_first_batch()  # before the resume restores the RNG: resume stays exact
        if config.resume is not None:  # load before creating anything: a bad file writes nothing
            (trainer.load_weights if config.fine_tune else trainer.resume)(config.resume)
    return trainer


def log_model(logger, trainer) -> None:
    """The model's class and parameter counts; at verbosity 2 its summary table."""
    from base.model_summary import totals_line
    from trainer.checkpoint import unwrap_model

    model = unwrap_model(trainer.eval_model)
    if logger.isEnabledFor(logging.DEBUG):
        logger.info("Model: %s", type(model).__name__)
        logger.debug("\n".join(summary_lines(trainer)))  # ends with the totals
    else:
        logger.info("Model: %s. %s", type(model).__name__, totals_line(model))


def summary_lines(trainer) -> list[str]:
    """The model's summary table, from two samples of the first batch; the totals alone when
    the model cannot be run on the batches' inputs by the default convention (a custom
    step)."""
    from base.model_summary import summarize, totals_line
    from trainer.checkpoint import unwrap_model

    from trainer.batches import call_model

    model = unwrap_model(trainer.eval_model)
    if trainer.first_inputs is None:
        return ["(no table: the batches do not follow the default unpacking into (inputs, "
                "target); for a dict batch, trainer.args.target_key names the target key)",
                totals_line(model)]
    try:
        return summarize(model, trainer.first_inputs, call=call_model)
    except (RuntimeError, TypeError, ValueError, IndexError, KeyError) as error:
        return [f"(no table: the model does not take the batches' inputs as they are: "
                f"{type(error).__name__})", totals_line(model)]


def open_run(config: ConfigParser, trainer, argv: list[str]) -> None:
    """Create the run folder (or reopen it, resuming), write the effective config, add this
    session to the manifest, start the log file and say where training starts."""
    from logger.logger import setup_logging
    from utils import distributed
    from utils.manifest import add_session, session_record

    config.make_run_dirs()
    config.write_config()
    resumed_from = str(config.resume) if config.resume is not None else None
    add_session(config.save_dir, session_record(argv, config.config, resumed_from))
    setup_logging(config.log_dir)
    logger = config.get_logger("train", config["trainer"].get("verbosity", 2))
    logger.info("Run folder: %s", config.save_dir)
    requested = getattr(config.cli_args, "run_id", None)
    if requested and config.run_id != requested:
        logger.warning("Warning: --run-id %s is taken by an earlier run; this run is %s.",
                       requested, config.run_id)
    if distributed.active():
        logger.info("%d processes (torchrun), global batch %d = %d per process x %d",
                    distributed.world_size(),
                    trainer.data_loader.batch_size * distributed.world_size(),
                    trainer.data_loader.batch_size, distributed.world_size())
    for note in trainer.model_notes:
        logger.info(note)
    log_model(logger, trainer)
    if config.resume is None:
        return
    where = f"epoch {trainer.start_epoch}"
    if trainer.start_step >= getattr(trainer, "len_epoch", trainer.start_step + 1):
        where += "'s validation (its training steps were done)"
    elif trainer.start_step:
        where += f", step {trainer.start_step + 1}"
    logger.info("%s %s; training from %s.", "Fine-tuning weights from" if config.fine_tune
                else "Resumed from", config.resume, where)
    if not config.fine_tune and config.save_dir != config.resume.parent:
        logger.info("The checkpoint is not the newest of its run: this run branches off into a "
                    "new run folder and leaves the old one as it was.")


if __name__ == "__main__":
    run_cli(main)
