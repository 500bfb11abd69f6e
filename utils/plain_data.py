"""Whether a state read from a file has the make of the state this run's own object gives.

The check before `load_state_dict` of an optimizer, a scheduler, a grad scaler or the random
generators: a damaged or hand-edited checkpoint is then one line naming the field, not a
traceback from inside torch in the middle of a run.
"""
import torch


def kind_problem(fresh, saved, where: str) -> str | None:
    """Where `saved` is not of the kind of `fresh` (what this run's object gives now), or None.

    A number for a number (a 0-dim tensor counts as one), true/false for true/false, a string
    for a string, a list or tuple of as many items, a dict whose keys it shares with `fresh`
    are of their kinds (keys `saved` lacks are not compared), a tensor of the same shape and
    dtype. Whatever `fresh` holds as None is not compared. `where`: `saved`'s name in the
    message (`lr_scheduler.base_lrs`).
    """
    stack = [(fresh, saved, where)]
    while stack:
        fresh, saved, where = stack.pop()
        if fresh is None or is_number(fresh) and is_number(saved) or \
                isinstance(fresh, bool) and isinstance(saved, bool) or \
                isinstance(fresh, str) and isinstance(saved, str):
            continue
        if isinstance(fresh, torch.Tensor) and fresh.dim() > 0:
            if not isinstance(saved, torch.Tensor) or saved.shape != fresh.shape or \
                    saved.dtype != fresh.dtype:
                return f"{where} is {describe(saved)}, not {describe(fresh)}"
        elif isinstance(fresh, (list, tuple)) and isinstance(saved, (list, tuple)) and \
                len(fresh) == len(saved):
            stack.extend((f, s, f"{where}[{i}]") for i, (f, s) in enumerate(zip(fresh, saved)))
        elif isinstance(fresh, dict) and isinstance(saved, dict):
            stack.extend((fresh[key], saved[key], f"{where}.{key}") for key in fresh
                         if key in saved)
        elif is_number(fresh) or isinstance(fresh, (bool, str, list, tuple, dict, torch.Tensor)):
            return f"{where} is {describe(saved)}, not {describe(fresh)}"
    return None


def describe(value) -> str:
    """`a number`, `a list of 3`, `a tensor of shape (624,) torch.int64`: for messages."""
    if isinstance(value, bool):
        return "true/false"
    if is_number(value):
        return "a number"
    if isinstance(value, torch.Tensor):
        return f"a tensor of shape {tuple(value.shape)} {value.dtype}"
    if isinstance(value, (list, tuple)):
        return f"a list of {len(value)}"
    if value is None:
        return "null"
    return {str: "a string", dict: "a dict"}.get(type(value), type(value).__name__)


def is_number(value) -> bool:
    """A plain number (not true/false) or a 0-dim tensor."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) or \
        isinstance(value, torch.Tensor) and value.dim() == 0
