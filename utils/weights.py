"""Weights in and out of a model, whatever wraps it (DataParallel, DDP)."""
import os

from torch import nn

from utils.errors import CheckpointError

_MAX_LISTED = 5


def unwrap_model(model: nn.Module) -> nn.Module:
    """The bare model inside DataParallel / DistributedDataParallel wrappers (the trainer
    compiles a model in place, `nn.Module.compile`: no wrapper)."""
    while isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        model = model.module
    return model


def load_model_state(model: nn.Module, state_dict: dict, path: str | os.PathLike,
                     strict: bool = True) -> tuple[int, list[str]]:
    """Load `state_dict` into `model`, its names first aligned with the model's (a wrapper's
    `module.` / `_orig_mod.` prefix dropped, a wrapping model's `network.` added). Strict: a
    mismatch is a `CheckpointError` listing the keys. Not strict: the keys that fit are loaded
    (none fitting is an error). Returns the number of tensors loaded and the mismatches as
    report lines (missing, unexpected, shape or dtype mismatch)."""
    own = unwrap_model(model).state_dict()
    state_dict = _aligned(state_dict, own)
    missing = [key for key in own if key not in state_dict]
    unexpected = [key for key in state_dict if key not in own]
    reshaped = [key for key in own if key in state_dict and state_dict[key].shape != own[key].shape]
    shapes = [f"{key} {tuple(state_dict[key].shape)} vs {tuple(own[key].shape)}"
              for key in reshaped]
    # another dtype would be cast silently by load_state_dict
    recast = [key for key in own if key in state_dict and key not in reshaped and
              state_dict[key].dtype != own[key].dtype]
    dtypes = [f"{key} {state_dict[key].dtype} vs {own[key].dtype}" for key in recast]
    reshaped += recast
    problems = [f"{label}: {_listing(keys)}" for label, keys in
                (("missing keys", missing), ("unexpected keys", unexpected),
                 ("shape mismatch (file vs model)", shapes),
                 ("dtype mismatch (file vs model)", dtypes)) if keys]
    if problems and strict:
        raise CheckpointError(f"{path}: weights do not fit {type(unwrap_model(model)).__name__} "
                              f"({'; '.join(problems)})")
    fitting = {key: value for key, value in state_dict.items()
               if key in own and key not in reshaped}
    if not fitting:
        raise CheckpointError(f"{path}: no tensor fits {type(unwrap_model(model)).__name__} "
                              f"(the file's names are like {next(iter(state_dict), '-')!r}, the "
                              f"model's like {next(iter(own), '-')!r})")
    unwrap_model(model).load_state_dict(fitting, strict=not problems)
    return len(fitting), problems


def _aligned(state_dict: dict, own: dict) -> dict:
    """`state_dict` with a name prefix dropped or added where that makes more names match the
    model's `own`: `module.` (DataParallel), `_orig_mod.` (torch.compile), or the attribute a
    wrapping model keeps the network in (`network.conv1.weight` for `conv1.weight`)."""
    def fits(candidate: dict) -> int:
        return sum(key in own for key in candidate)

    best, best_fit = state_dict, fits(state_dict)
    if best_fit == len(own):
        return state_dict
    samples = list(state_dict)[:5]
    dropped = {key[:key.index(".") + 1] for key in samples if "." in key}
    dropped |= {prefix + "_orig_mod." for prefix in dropped}
    added = {own_key[:-len(key)] for key in samples for own_key in own
             if own_key.endswith("." + key)}
    candidates = [{key.removeprefix(prefix): value for key, value in state_dict.items()}
                  for prefix in dropped]
    candidates += [{prefix + key: value for key, value in state_dict.items()} for prefix in added]
    for candidate in candidates:  # a renaming must make most of the file's names fit
        if fits(candidate) > best_fit and 2 * fits(candidate) >= len(state_dict):
            best, best_fit = candidate, fits(candidate)
    return best


def _listing(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_LISTED])
    return shown + (f" and {len(keys) - _MAX_LISTED} more" if len(keys) > _MAX_LISTED else "")
