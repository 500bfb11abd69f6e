"""Resume reconciliation: a checkpoint's optimizer, scheduler and generator states put into a
run whose config may have changed since (`--lr` on resume, a longer schedule, other frozen
parameters, another number of processes). Each decision is logged; none is silent."""
import logging

import torch
from torch import nn

from config.blocks import is_composed_schedule
from utils import distributed
from utils.errors import CheckpointError
from utils.plain_data import describe, is_number, kind_problem
from utils.seeding import derive_seed, rng_state_problem, seed_everything, set_rng_state

# A scheduler's progress in its state_dict. No public API moves a scheduler to a step of
# another's; `_step_count` and `_last_lr` are torch's private names (tests/test_resume.py fails
# loudly when a torch release renames them).
SCHEDULE_PROGRESS = ("last_epoch", "_step_count", "_last_lr")


def optimizer_block(config: dict, name: str, part: str = "") -> dict | None:
    """The config block of optimizer `name` ("" for the one `optimizer` block), or with `part`
    ("lr_scheduler") the block of its scheduler; None when absent."""
    if not name:
        block = config.get(part or "optimizer")
    else:
        block = (config.get("optimizers") or {}).get(name)
        block = block.get(part) if part and isinstance(block, dict) else block
    return block if isinstance(block, dict) else None


def changed_args_of(block: dict, saved_block: dict) -> dict:
    """The `args` of `block` whose values differ from those of `saved_block`."""
    saved_args = saved_block.get("args", {})
    return {key: value for key, value in block.get("args", {}).items()
            if saved_args.get(key) != value}


def entry(value, name: str):
    """A checkpoint entry for optimizer `name`: the value itself for the one optimizer ("")
    of a checkpoint that has one, else the value under `name`."""
    if not name:
        return value
    return value.get(name) if isinstance(value, dict) else None


def by_name(values: dict):
    """A checkpoint entry: the one optimizer's value, or several optimizers' by name."""
    return values[""] if list(values) == [""] else (values or None)


def param_group_names(model: nn.Module, optimizer: torch.optim.Optimizer) -> list[list[str]]:
    """The names of the parameters in each group of `optimizer` (what `arch.freeze` and
    `optimizer.param_groups` decide), saved so that a resume can tell they still match."""
    names = {id(p): name for name, p in model.named_parameters()}
    return [[names.get(id(p), "?") for p in group["params"]] for group in optimizer.param_groups]


def restore_optimizer(name: str, optimizer: torch.optim.Optimizer, checkpoint: dict,
                      config: dict, group_names: list[list[str]],
                      logger: logging.Logger) -> None:
    """The checkpoint's state of optimizer `name` when it fits (same type, the same
    parameters in the same groups: `group_names` now), then the args `config` changed since:
    `optimizer.args` in every group that does not set them itself, a group's own options in
    that group (`--lr` on resume wins)."""
    state = entry(checkpoint.get("optimizer"), name)
    block = optimizer_block(config, name)
    saved_block = optimizer_block(checkpoint["config"], name) or {}
    saved_names = entry(checkpoint.get("param_group_names"), name)  # older: group sizes
    same_groups = state is not None and (
        saved_names == group_names if saved_names is not None else
        _group_sizes(state) == [len(group["params"]) for group in optimizer.param_groups])
    if saved_block.get("type") != block["type"] or not same_groups:
        logger.warning("Warning: the %s type, or which parameters it trains in which group "
                       "(arch.freeze, optimizer.param_groups), differs from the checkpoint's; "
                       "its state is not restored.",
                       f"optimizer {name!r}" if name else "optimizer")
        return
    which = f"optimizer {name!r}" if name else "optimizer"
    fresh_groups = [{key: value for key, value in group.items() if key != "params"}
                    for group in optimizer.param_groups]
    problem = _optimizer_state_problem(optimizer, state)
    if problem is None:
        try:
            optimizer.load_state_dict(state)
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as error:
            problem = f"{type(error).__name__}: {error}"
    problem = problem or _groups_problem(fresh_groups, optimizer.param_groups)
    if problem:
        raise CheckpointError(f"its {which} state does not fit this run's optimizer ({problem})")
    _apply_changed_args(name, optimizer, block, saved_block, logger)


def _group_sizes(state) -> list[int] | None:
    """How many parameters each group of an optimizer state has (None when malformed)."""
    groups = state.get("param_groups") if isinstance(state, dict) else None
    if not isinstance(groups, list) or not all(
            isinstance(group, dict) and isinstance(group.get("params"), list) for group in groups):
        return None
    return [len(group["params"]) for group in groups]


def _optimizer_state_problem(optimizer: torch.optim.Optimizer, state) -> str | None:
    """What keeps `state` from being `optimizer`'s: its structure, the parameter ids of its
    groups, and each parameter's state — plain values, tensors of a shape derived from their
    parameter's (torch's optimizers: elementwise states, Adafactor's factored rows and
    columns); None when it fits."""
    if not isinstance(state, dict) or not isinstance(state.get("state"), dict) or \
            not isinstance(state.get("param_groups"), list):
        return "it needs a dict of per-parameter state and a list of param_groups"
    live = optimizer.param_groups
    if _group_sizes(state) != [len(group["params"]) for group in live]:
        return "its param_groups are not the optimizer's groups of parameters"
    ids = [index for group in state["param_groups"] for index in group["params"]]
    if len(set(ids)) != len(ids) or not all(isinstance(i, int) for i in ids):
        return "the parameter ids of its param_groups are not distinct integers"
    # ids map to parameters in order, as torch's load_state_dict maps them
    parameters = dict(zip(ids, (p for group in live for p in group["params"])))
    checked = type(optimizer).__module__.startswith("torch.optim")  # others: their own make
    for index, values in state["state"].items():
        if index not in parameters:
            return f"state for parameter {index!r}, which the optimizer does not have"
        parameter = parameters[index]
        problem = _parameter_state_problem(values, parameter, checked)
        if problem:
            return problem.format(index=index)
    return None


def _parameter_state_problem(values, parameter: torch.Tensor, shapes: bool) -> str | None:
    """What is wrong with one parameter's state `values` (with `{index}` for its number):
    plain numbers and tensors, whose shape `_fits` when `shapes` (torch's optimizers); without
    `shapes` (another optimizer, whose state is its own make), lists of tensors too."""
    if not isinstance(values, dict):
        return f"the state of parameter {{index}} is {describe(values)}, not a dict"
    for key, value in values.items():
        if isinstance(value, torch.Tensor):
            if shapes and not _fits(key, value, parameter):
                return (f"{key} of parameter {{index}} is {tuple(value.shape)}, the parameter "
                        f"{tuple(parameter.shape)}")
        elif not (value is None or is_number(value) or not shapes and isinstance(value, list)
                  and all(item is None or isinstance(item, torch.Tensor) for item in value)):
            return f"{key} of parameter {{index}} is {describe(value)}"
    return None


# The per-parameter states torch's optimizers keep as single numbers (tensors of no dimension);
# tests/test_resume.py steps every torch optimizer and fails if one keeps another.
SCALAR_STATE = ("step", "mu_product", "eta", "mu")


def _fits(key: str, value: torch.Tensor, parameter: torch.Tensor) -> bool:
    """A number torch keeps as a 0-dim tensor, or a state that broadcasts to its parameter (of
    its number of dimensions, each the parameter's or 1: elementwise states, Adafactor's
    factored rows and columns)."""
    return value.dim() == 0 and key in SCALAR_STATE or value.dim() == parameter.dim() and all(
        size in (1, wanted) for size, wanted in zip(value.shape, parameter.shape))


def _groups_problem(fresh_groups: list[dict], groups: list[dict]) -> str | None:
    """A loaded param group without an option the optimizer's own groups have, or with one
    of another kind (a string for a learning rate); None when they fit."""
    for index, (fresh, group) in enumerate(zip(fresh_groups, groups)):
        missing = [key for key in fresh if key not in group]
        if missing:
            return f"param_groups[{index}] lacks {', '.join(missing)}"
        problem = kind_problem(fresh, {key: group[key] for key in fresh},
                               f"param_groups[{index}]")
        if problem:
            return problem
    return None


def _apply_changed_args(name: str, optimizer: torch.optim.Optimizer, block: dict,
                        saved_block: dict, logger: logging.Logger) -> None:
    groups = block.get("param_groups") or []
    saved_groups = saved_block.get("param_groups") or []
    changed_args = changed_args_of(block, saved_block)
    first = len(optimizer.param_groups) - len(groups)  # 1 with a default group
    for index, group in enumerate(optimizer.param_groups):
        own = groups[index - first] if index >= first else {}
        before = saved_groups[index - first] if 0 <= index - first < len(saved_groups) else {}
        changed = {key: value for key, value in changed_args.items() if key not in own}
        changed.update({key: value for key, value in own.items()
                        if key != "params" and before.get(key) != value})
        changed = {key: value for key, value in changed.items() if key in group}
        group.update(changed)
        if changed:
            where = [f"optimizer {name!r}"] if name else []
            if len(optimizer.param_groups) > 1:
                where.append(f"group {index}")
            logger.info("optimizer args changed since the checkpoint: %s%s", changed,
                        f" ({', '.join(where)})" if where else "")


def restore_scheduler(name: str, scheduler, checkpoint: dict, config: dict,
                      logger: logging.Logger, steps: int | None = None) -> None:
    """The checkpoint's state of the scheduler of optimizer `name`, when it is of the same
    type; with args changed since (`total_steps` raised on resume), the scheduler built from
    the new args continues from the checkpoint's step instead: schedules such as OneCycleLR
    derive their phases from their args. `steps`: how often it can have stepped by then (the
    checkpoint's epochs or optimizer steps); a state that says otherwise would restart or
    skip the schedule: a `CheckpointError`."""
    state = entry(checkpoint.get("lr_scheduler"), name)
    block = optimizer_block(config, name, "lr_scheduler")
    saved_block = optimizer_block(checkpoint["config"], name, "lr_scheduler") or {}
    if state is None:
        return
    which = f"lr_scheduler {name!r}" if name else "lr_scheduler"
    before, now = [(part.get("type"), part.get("interval", "epoch"))
                   for part in (saved_block, block)]
    if before != now:
        logger.warning("Warning: the %s was %s once every %s in the checkpoint, now %s once "
                       "every %s: its state is not restored, the schedule starts from its first "
                       "step.", which, *before, *now)
        return
    last = state.get("last_epoch") if isinstance(state, dict) else None
    if not isinstance(last, int) or isinstance(last, bool) or last < 0 or \
            (steps is not None and last > steps):
        raise CheckpointError(f"its {which} state has last_epoch {last!r}, which "
                              f"is not a step count of this run (0 to {steps}): resuming would "
                              f"restart or skip the schedule")
    changed = changed_args_of(block, saved_block)
    if changed and is_composed_schedule(block):  # its nested schedules would start over
        raise CheckpointError(f"its {which} is a {block['type']} whose args changed since "
                              f"({', '.join(changed)}); a composed schedule resumes only as it was "
                              f"saved: undo the change, or start a new schedule with -c "
                              f"(fine-tuning)")
    loaded = {key: state[key] for key in SCHEDULE_PROGRESS if key in state} if changed else state
    problem = kind_problem(scheduler.state_dict(), loaded, which)
    if problem:
        raise CheckpointError(f"its {which} state does not fit this run's scheduler ({problem})")
    if not changed:
        scheduler.load_state_dict(state)
        return
    continue_schedule(scheduler, state)
    logger.info("lr_scheduler args changed since the checkpoint: %s; the schedule continues "
                "from step %s with them.", changed, state.get("last_epoch"))


def continue_schedule(scheduler, saved_state: dict) -> None:
    """`scheduler` (built from new args) at the step `saved_state` (another scheduler's)
    reached: its own state with the saved progress, through the public `load_state_dict`."""
    state = scheduler.state_dict()
    state.update({key: saved_state[key] for key in SCHEDULE_PROGRESS if key in saved_state})
    scheduler.load_state_dict(state)


def restore_scaler(scaler, state) -> None:
    """The grad scaler's saved scale and growth tracker (fp16)."""
    problem = kind_problem(scaler.state_dict(), state, "scaler")
    if problem:
        raise CheckpointError(f"its grad scaler state does not fit ({problem})")
    scaler.load_state_dict(state)


def restore_rng(checkpoint: dict, seed: int, global_step: int) -> None:
    """This process's generators as the checkpoint saved them: by rank when it was taken
    with as many processes; with another number of processes rank 0 takes the saved first
    state and the others fresh streams derived from the seed, rank and step."""
    states = checkpoint.get("rng_states") or [checkpoint.get("rng_state")]
    if states[0] is None:
        logging.getLogger("trainer").warning(
            "Warning: the checkpoint holds no random generator states: the resumed run goes on "
            "from the generators as they are, so it does not repeat an uninterrupted run exactly.")
    for index, state in enumerate(states):
        problem = state is not None and rng_state_problem(state, f"rng_states[{index}]")
        if problem:
            raise CheckpointError(f"its random generator states are damaged ({problem})")
    rank = distributed.rank()
    if len(states) != distributed.world_size() and rank > 0:
        seed_everything(derive_seed(seed, rank, global_step))
        return
    state = states[rank] if len(states) == distributed.world_size() else states[0]
    if state is not None:
        set_rng_state(state)
