"""Several processes training one model: `torchrun` starts them, this module connects them.

`torchrun` sets `WORLD_SIZE`, `RANK` and `LOCAL_RANK` in each process's environment; `start()`
then joins the process group (NCCL on CUDA, Gloo on the CPU) and picks the process's device.
Everything else asks `rank()`, `world_size()` and `is_main()`, which answer 0, 1 and True in
a single process, so code written for one process runs unchanged.

Decisions every process must take together (stop on a signal, stop early, the run folder's
name) go through the small host-side helpers here, on a Gloo group: they never wait for a GPU.
"""
import contextlib
import gc
import os
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.distributed as dist

from utils.errors import UserError

_ENV = ("WORLD_SIZE", "RANK", "LOCAL_RANK")
_cpu_group = None  # Gloo group for host-side values; the default group when that is Gloo


def launched_world_size() -> int:
    """The number of processes `torchrun` started (1 when not started by it)."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1"))
    except ValueError:
        raise UserError(f"WORLD_SIZE={os.environ['WORLD_SIZE']!r} in the environment is not a "
                        f"number") from None


def launched_rank() -> int:
    """This process's rank by the environment, before the process group exists (0 alone)."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def start(use_cuda: bool) -> torch.device:
    """Join the process group `torchrun` set up; this process's device (`cuda:LOCAL_RANK`
    with `use_cuda`, else the CPU)."""
    global _cpu_group
    missing = [name for name in _ENV if name not in os.environ]
    if missing:
        raise UserError(f"WORLD_SIZE is set but {' and '.join(missing)} "
                        f"{'is' if len(missing) == 1 else 'are'} not: start several processes "
                        f"with torchrun (see docs/distributed.md)")
    local_rank = int(os.environ["LOCAL_RANK"])
    if use_cuda:
        if local_rank >= torch.cuda.device_count():
            raise UserError(f"LOCAL_RANK {local_rank} has no GPU: this machine has "
                            f"{torch.cuda.device_count()}; start at most that many processes "
                            f"per node (--nproc_per_node)")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
        dist.init_process_group("nccl", device_id=device)
        _cpu_group = dist.new_group(backend="gloo")
    else:
        device = torch.device("cpu")
        dist.init_process_group("gloo")
        _cpu_group = None
    return device


def stop() -> None:
    """Leave the process group (after training, an error or a signal); harmless when alone."""
    global _cpu_group
    if dist.is_available() and dist.is_initialized():
        gc.collect()  # what still holds the group (a trainer in a reference cycle) goes first
        dist.destroy_process_group()
    _cpu_group = None


def active() -> bool:
    """Whether this process trains together with others."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Rank 0: the process that logs and writes files."""
    return rank() == 0


def sum_counts(values: Sequence[int | float]) -> list[float]:
    """`values` summed element-wise over all processes (on the host, exact for counts)."""
    if not active():
        return [float(v) for v in values]
    tensor = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(tensor, group=_cpu_group)
    return tensor.tolist()


def max_value(value: int) -> int:
    """The largest `value` any process has (a signal number, a flag)."""
    if not active():
        return value
    tensor = torch.tensor([value], dtype=torch.int64)
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX, group=_cpu_group)
    return int(tensor.item())


def from_main(value: Any) -> Any:
    """Rank 0's `value`, on every process (a run id, a decision)."""
    if not active():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0, group=_cpu_group)
    return box[0]


def gathered(value: Any) -> list[Any]:
    """Every process's `value`, in rank order (on every process)."""
    if not active():
        return [value]
    values = [None] * world_size()
    dist.all_gather_object(values, value, group=_cpu_group)
    return values


@contextlib.contextmanager
def all_or_none(what: str) -> Iterator[None]:
    """Run the block in every process and end it together: when it raised in any process,
    that one goes on with its own error and the others stop with one line naming it — instead
    of waiting in their next collective for a process that has gone. The block itself must
    not call collectives (a process that failed before one would leave the others in it)."""
    try:
        yield
    except Exception:
        ranks_where(True)
        raise
    failed = ranks_where(False)
    if failed:
        ranks = ", ".join(map(str, failed))
        raise UserError(f"stopped: {what} failed in process {ranks} (its error is above)")


def ranks_where(flag: bool) -> list[int]:
    """The ranks of the processes whose `flag` is true, told to every process."""
    flags = sum_counts([float(flag and r == rank()) for r in range(world_size())])
    return [r for r, value in enumerate(flags) if value]
