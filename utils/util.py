"""Small helpers shared by every layer: devices (file I/O is in `utils.files`, re-exported
here)."""
import logging

import torch

from utils.files import atomic_link, atomic_write, read_json, write_json

__all__ = ["prepare_device", "read_json", "write_json", "atomic_write",
           "atomic_link"]


def prepare_device(n_gpu_use: int) -> tuple[torch.device, list[int]]:
    """Pick the device: CUDA when asked for and present, else the CPU, with a warning on a shortfall."""
    logger = logging.getLogger("utils")
    n_gpu = torch.cuda.device_count()
    if n_gpu_use > 0 and n_gpu == 0:
        logger.warning("Warning: n_gpu is %d but no CUDA GPU is available; running on the CPU.",
                       n_gpu_use)
        n_gpu_use = 0
    if n_gpu_use > n_gpu:
        logger.warning("Warning: n_gpu is %d but only %d GPUs are available; using %d.",
                       n_gpu_use, n_gpu, n_gpu)
        n_gpu_use = n_gpu
    device = torch.device("cuda:0" if n_gpu_use > 0 else "cpu")
    return device, list(range(n_gpu_use))
