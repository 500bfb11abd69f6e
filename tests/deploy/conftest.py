"""What the deploy tests share: a trained run of the default config."""
import json

import pytest

import train
from model.model import DigitsModel
from tests.conftest import small_config
from utils.checkpoint import load_checkpoint


@pytest.fixture(scope="session")
def trained(tmp_path_factory):
    """A run of the default config (2 epochs): its model_best.pth and the model it holds."""
    folder = tmp_path_factory.mktemp("predict")
    (folder / "c.json").write_text(json.dumps(small_config(folder / "saved", epochs=2)))
    train.main(["-c", str(folder / "c.json"), "--run-id", "r"])
    checkpoint = folder / "saved/models/Digits_CNN/r/model_best.pth"
    model = DigitsModel()
    model.load_state_dict(load_checkpoint(checkpoint)["state_dict"])
    return checkpoint, model.eval()
