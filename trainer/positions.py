"""Where a run stopped inside an epoch, and whether a resumed run can continue from there:
the same batches need the same global batch size, pass length, epoch length and accumulation."""
from utils.errors import ConfigError


def position(batch_size: int, world_size: int, batches_per_pass: int, len_epoch: int,
             grad_accum_steps: int) -> dict:
    """What a mid-epoch position means, saved with it (plain data)."""
    return {"batch_size": batch_size, "world_size": world_size,
            "batches_per_pass": batches_per_pass, "len_epoch": len_epoch,
            "grad_accum_steps": grad_accum_steps}


def check_position(saved: dict, now: dict) -> None:
    """Raise a `ConfigError` naming the config key when a position saved as `saved` does not
    mean the same batches in a run described by `now` (both from `position`; an older
    checkpoint may lack keys: they are taken as unchanged)."""
    saved = {key: saved.get(key, value) for key, value in now.items()}
    before = (saved["batch_size"], saved["world_size"])
    after = (now["batch_size"], now["world_size"])
    if before[0] * before[1] != after[0] * after[1]:
        raise ConfigError(
            f"data_loader.args.batch_size: the checkpoint stopped mid-epoch with "
            f"{_batch_text(*before)}; resuming with {_batch_text(*after)} would not continue the "
            f"same epoch. Keep {before[0] * before[1]} samples per step{_bs_hint(before, after)}, "
            f"or resume from an epoch checkpoint")
    if saved["batches_per_pass"] != now["batches_per_pass"]:  # only a left-out batch differs
        raise ConfigError(
            f"data_loader.args.batch_size: the checkpoint stopped mid-epoch with "
            f"{saved['batches_per_pass']} batches per pass over the data, this run makes "
            f"{now['batches_per_pass']} (with several processes a last global batch of fewer "
            f"samples than processes is left out); resume from an epoch checkpoint, or with as "
            f"many processes")
    for key, path in (("len_epoch", "trainer.len_epoch"),
                      ("grad_accum_steps", "trainer.grad_accum_steps")):
        if saved[key] != now[key]:
            raise ConfigError(f"{path}: the checkpoint stopped mid-epoch with {key} "
                              f"{saved[key]}; resuming with {now[key]} would not continue the "
                              f"same epoch. Keep {saved[key]}, or resume from an epoch "
                              f"checkpoint")


def _bs_hint(saved: tuple[int, int], now: tuple[int, int]) -> str:
    """` (--bs 32 with 2 processes)`: the per-process batch size that keeps the global one."""
    total, processes = saved[0] * saved[1], now[1]
    return f" (--bs {total // processes} with {processes} process" \
           f"{'es' if processes > 1 else ''})" if total % processes == 0 else ""


def _batch_text(batch_size: int, processes: int) -> str:
    """`batch_size 64`, or `batch_size 32 x 2 processes`."""
    return f"batch_size {batch_size}" + (f" x {processes} processes" if processes > 1 else "")
