"""utils/weights.py: the bare model inside its wrappers."""
import pytest
from torch import nn

from utils.weights import unwrap_model


@pytest.mark.slow  # nn.Module.compile imports torch._dynamo: seconds
def test_the_bare_model_is_found_inside_data_parallel_and_a_compiled_model_is_itself():
    model = nn.Linear(2, 1)
    assert unwrap_model(nn.DataParallel(nn.DataParallel(model))) is model
    model.compile(backend="eager")  # in place, as the trainer compiles: no wrapper to unwrap
    assert unwrap_model(model) is model and list(model.state_dict()) == ["weight", "bias"]
