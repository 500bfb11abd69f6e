"""Seeding and the random-number-generator states a checkpoint carries.

`seed_everything` is for entry points (`train.py`); library code never reseeds the global
generators, it uses its own `torch.Generator`.
"""
import os
import random

import numpy as np
import torch

from utils.plain_data import kind_problem


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (CUDA's included)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # NumPy's legacy seed is 32 bits
    torch.manual_seed(seed)


def derive_seed(*entropy: int) -> int:
    """A 64-bit seed that depends on every number in `entropy` (and on nothing else)."""
    words = [int(value) % 2**64 for value in entropy]
    return int(np.random.SeedSequence(words).generate_state(1, np.uint64)[0])


def get_rng_state() -> dict:
    """Every global generator's state, as plain data (loads with `weights_only=True`)."""
    version, internal, gauss = random.getstate()
    numpy_state = np.random.get_state(legacy=False)
    return {
        "python": {"version": version, "state": list(internal), "gauss": gauss},
        "numpy": {
            "bit_generator": numpy_state["bit_generator"],
            "key": torch.from_numpy(numpy_state["state"]["key"].astype(np.int64)),
            "pos": int(numpy_state["state"]["pos"]),
            "has_gauss": int(numpy_state["has_gauss"]),
            "cached_gaussian": float(numpy_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def rng_state_problem(state, where: str) -> str | None:
    """What keeps `state` from being one `get_rng_state` returns (its generators' states of
    their size and type; any number of CUDA devices), or None."""
    if not isinstance(state, dict) or set(state) != {"python", "numpy", "torch", "cuda"}:
        return f"{where} is not a dict of python, numpy, torch and cuda states"
    fresh = get_rng_state()
    cuda = state["cuda"]
    if not isinstance(cuda, list) or not all(
            isinstance(item, torch.Tensor) and item.dtype == torch.uint8 for item in cuda):
        return f"{where}.cuda is not a list of CUDA generator states"
    fresh["python"]["gauss"] = None  # a float only once random.gauss ran: either is fine
    return kind_problem({**fresh, "cuda": None}, state, where)


def set_rng_state(state: dict) -> None:
    """Restore what `get_rng_state` returned."""
    python = state["python"]
    random.setstate((python["version"], tuple(python["state"]), python["gauss"]))
    numpy_state = state["numpy"]
    np.random.set_state({
        "bit_generator": numpy_state["bit_generator"],
        "state": {"key": numpy_state["key"].numpy().astype(np.uint32), "pos": numpy_state["pos"]},
        "has_gauss": numpy_state["has_gauss"],
        "gauss": numpy_state["cached_gaussian"],
    })
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        if len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])
        else:  # a different number of GPUs: each device gets the first one's stream
            for index in range(torch.cuda.device_count()):
                torch.cuda.set_rng_state(state["cuda"][0], index)


def configure_backends(cudnn_benchmark: bool, deterministic: bool) -> None:
    """Process-wide kernel choices, set by train.py before anything is built: cuDNN autotuning,
    or deterministic algorithms everywhere (which rules autotuning out)."""
    torch.backends.cudnn.benchmark = cudnn_benchmark and not deterministic
    torch.backends.cudnn.deterministic = deterministic
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS needs it to be
    torch.use_deterministic_algorithms(deterministic)
