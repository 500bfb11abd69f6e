import pickle
import subprocess
import sys

import pytest
import torch
from torch import nn

from model.model import DigitsModel
from utils.checkpoint import FORMAT_VERSION, load_checkpoint, save_checkpoint
from utils.errors import CheckpointError
from utils.weights import load_model_state, unwrap_model


def minimal_checkpoint(model: nn.Module) -> dict:
    return {"format_version": FORMAT_VERSION, "arch": "DigitsModel", "epoch": 1,
            "state_dict": unwrap_model(model).state_dict(), "config": {"name": "x"}}


def test_data_parallel_checkpoint_has_no_module_prefix(tmp_path):
    model = nn.DataParallel(DigitsModel())
    save_checkpoint(minimal_checkpoint(model), tmp_path / "c.pth")
    keys = load_checkpoint(tmp_path / "c.pth")["state_dict"].keys()
    assert keys and not any(key.startswith("module.") for key in keys)


@pytest.mark.slow
def test_checkpoint_loads_where_the_project_is_not_importable(tmp_path):
    save_checkpoint(minimal_checkpoint(DigitsModel()), tmp_path / "c.pth")
    script = ("import importlib.util, torch; assert importlib.util.find_spec('trainer') is None; "
              "c = torch.load('c.pth', weights_only=True); print(c['arch'], c['epoch'])")
    result = subprocess.run([sys.executable, "-I", "-c", script], cwd=tmp_path,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["DigitsModel", "1"]


class CreatesFile:
    """Unpickling this would create a file: the classic checkpoint exploit."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.mark.parametrize("kind", ["random", "truncated", "exploit", "raw_pickle_exploit",
                                  "not_dict", "foreign_dict", "missing"])
def test_bad_files_are_one_clear_error_naming_the_file(tmp_path, kind):
    path = tmp_path / f"{kind}.pth"
    marker = tmp_path / "pwned"
    if kind == "random":
        path.write_bytes(bytes(range(256)) * 10)
    elif kind == "truncated":
        save_checkpoint(minimal_checkpoint(DigitsModel()), path)
        path.write_bytes(path.read_bytes()[:5000])
    elif kind == "exploit":
        torch.save({"format_version": 1, "state_dict": CreatesFile(str(marker))}, path)
    elif kind == "raw_pickle_exploit":
        with open(path, "wb") as file:
            pickle.dump({"state_dict": CreatesFile(str(marker))}, file, protocol=2)
    elif kind == "not_dict":
        torch.save([1, 2, 3], path)
    elif kind == "foreign_dict":
        torch.save(DigitsModel().state_dict(), path)
    with pytest.raises(CheckpointError) as error:
        load_checkpoint(path)
    message = str(error.value)
    assert message.startswith(str(path)) and "\n" not in message and "\x1b" not in message
    assert "weights_only" not in message   # never advise the unsafe way out
    assert not marker.exists()


def test_newer_format_is_refused(tmp_path):
    checkpoint = minimal_checkpoint(DigitsModel())
    checkpoint["format_version"] = FORMAT_VERSION + 1
    save_checkpoint(checkpoint, tmp_path / "new.pth")
    with pytest.raises(CheckpointError, match="newer"):
        load_checkpoint(tmp_path / "new.pth")


def test_weights_of_another_architecture_are_listed(tmp_path):
    state = DigitsModel(channels=16).state_dict()
    state["extra.weight"] = torch.zeros(1)
    del state["fc2.bias"]
    with pytest.raises(CheckpointError) as error:
        load_model_state(DigitsModel(channels=32), state, tmp_path / "c.pth")
    message = str(error.value)
    assert "missing keys: fc2.bias" in message and "unexpected keys: extra.weight" in message
    assert "conv1.weight (16, 1, 3, 3) vs (32, 1, 3, 3)" in message


def test_loading_into_a_wrapped_model(tmp_path):
    source = DigitsModel()
    target = nn.DataParallel(DigitsModel())
    load_model_state(target, source.state_dict(), tmp_path / "c.pth")
    assert torch.equal(target.module.fc2.weight, source.fc2.weight)


def test_messages_say_what_kind_of_bad_file_it_is(tmp_path):
    text = tmp_path / "notes.pth"
    text.write_text("hello")
    with pytest.raises(CheckpointError, match="not a file written by torch.save"):
        load_checkpoint(text)
    exploit = tmp_path / "exploit.pth"
    torch.save({"state_dict": CreatesFile(str(tmp_path / "x"))}, exploit)
    with pytest.raises(CheckpointError, match="pickled objects, which are refused"):
        load_checkpoint(exploit)
