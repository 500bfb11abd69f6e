"""utils/weights.py: the bare model inside its wrappers (one private torch name, checked here)."""
import pytest
import torch
from torch import nn

from utils.weights import unwrap_model


@pytest.mark.slow  # torch.compile's first import takes seconds
def test_the_bare_model_is_found_inside_torch_compile_and_data_parallel():
    model = nn.Linear(2, 1)
    compiled = torch.compile(nn.DataParallel(model), backend="eager")  # compiles on first call
    assert unwrap_model(compiled) is model and unwrap_model(model) is model
    # the one private name unwrap_model reads: a torch release that renames it fails here
    assert compiled._orig_mod.module is model
