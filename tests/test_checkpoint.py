import pickle
import re
import subprocess
import sys
import zipfile

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


def flip_a_tensor_byte(path) -> None:
    """Flip one bit inside the first tensor record of the checkpoint at `path`, as a failing
    disk or a bad copy does: the archive stays a valid zip and torch.load still reads it."""
    with zipfile.ZipFile(path) as archive:
        record = next(info for info in archive.infolist() if "/data/" in info.filename)
    data = bytearray(path.read_bytes())
    start = record.header_offset + 30 + len(record.filename.encode()) + len(record.extra)
    data[start + record.file_size // 2] ^= 0x10
    path.write_bytes(bytes(data))


def test_a_flipped_bit_is_a_damaged_checkpoint_not_garbage(tmp_path):
    path = tmp_path / "c.pth"
    save_checkpoint(minimal_checkpoint(DigitsModel()), path)
    flip_a_tensor_byte(path)
    torch.load(path, weights_only=True)  # torch alone does not notice
    with pytest.raises(CheckpointError, match=rf"^{re.escape(str(path))}: damaged checkpoint "
                                              rf"\(record .*/data/\d+ fails its checksum\)"):
        load_checkpoint(path)


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


@pytest.mark.parametrize("key, value, message", [
    ("global_step", -3, "global_step must be a count"),
    ("epoch", 10 ** 30, "epoch must be a count"),
    pytest.param("state_dict", {"w": torch.ones(3).to_sparse()},
                 "state_dict must be names to (dense) tensors",
                 marks=pytest.mark.filterwarnings("ignore:Validating sparse")),  # torch's own
    ("monitor_best", float("nan"), "monitor_best must be a number (not NaN)"),
    ("best_log", {"val_loss": "low"}, "best_log must be names to numbers"),
    ("best_epoch", "two", "best_epoch must be a count or null"),
    ("optimizer", [1, 2], "optimizer must be a state dict or null"),
    ("lr_scheduler", "StepLR", "lr_scheduler must be a state dict or null"),
    ("rng_states", [1], "rng_states must be a list of generator states or null"),
    ("epoch_state", 5, "epoch_state must be a dict or null"),
])
def test_every_field_is_checked_before_anything_is_built_from_it(tmp_path, key, value, message):
    path = tmp_path / "c.pth"
    save_checkpoint({**minimal_checkpoint(DigitsModel()), key: value}, path)
    with pytest.raises(CheckpointError, match=rf"^{re.escape(str(path))}: not a checkpoint of "
                                              rf"this template \({re.escape(message)}\)$"):
        load_checkpoint(path)


def test_a_config_nested_thousands_deep_is_refused_without_a_recursion_error(tmp_path):
    deep: dict = {}
    for _ in range(3000):
        deep = {"x": deep}
    path = tmp_path / "c.pth"
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(20_000)  # pickling it needs the depth; loading it must not
    try:
        torch.save({**minimal_checkpoint(DigitsModel()), "config": deep}, path)
    finally:
        sys.setrecursionlimit(limit)
    with pytest.raises(CheckpointError, match="config is nested more than 64 levels deep"):
        load_checkpoint(path)


def test_weights_of_another_dtype_are_listed_not_cast(tmp_path):
    state = {key: value.double() if value.is_floating_point() else value
             for key, value in DigitsModel().state_dict().items()}
    with pytest.raises(CheckpointError, match=r"dtype mismatch \(file vs model\): conv1\.weight "
                                              r"torch\.float64 vs torch\.float32"):
        load_model_state(DigitsModel(), state, tmp_path / "c.pth")


def test_a_flipped_compression_field_in_the_zip_directory_is_a_damaged_checkpoint(tmp_path):
    """A bit flip that turns a record's compression method into deflate makes the archive
    test raise zlib.error: that is a damaged file (one line, -r falls back), not a traceback."""
    from utils.checkpoint import load_checkpoint
    from utils.errors import CheckpointError

    path = tmp_path / "checkpoint-epoch1.pth"
    torch.save({"epoch": 1, "state_dict": {"w": torch.ones(64)}}, path)
    data = bytearray(path.read_bytes())
    directory = data.index(b"PK\x01\x02")  # the first central directory entry
    data[directory + 10:directory + 12] = (8).to_bytes(2, "little")  # method: deflate
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=rf"^{path}: damaged checkpoint \(unreadable "
                                              rf"archive: "):
        load_checkpoint(path)
