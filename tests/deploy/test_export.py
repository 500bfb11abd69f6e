"""export.py: a checkpoint's model exported with torch.export or to ONNX, its batch size
dynamic, verified against the eager model before it is written; a model torch.export refuses,
a mismatch and a missing optional package each one line, with nothing written."""
import importlib.util
import inspect
import json

import pytest
import torch

import export
import model.model as module_model
import train
from data_loader.datasets import digits_dataset
from examples.dict_batches import DigitsWithFeatures, ImageAndFeatures
from model.model import DigitsModel
from tests.conftest import ROOT, run_main
from utils.checkpoint import load_checkpoint
from utils.errors import UserError

pytestmark = pytest.mark.slow  # each needs a trained run (conftest.py) and an export (~1 s)


def digits(count: int) -> torch.Tensor:
    """The first `count` test images, (count, 1, 8, 8)."""
    return digits_dataset(str(ROOT / "data"), training=False).tensors[0][:count]


def test_torch_export_of_the_digits_cnn_runs_as_the_eager_model_at_any_batch_size(trained):
    checkpoint, model = trained
    result = run_main("export.py", "-r", str(checkpoint))
    written = checkpoint.with_name("model_best.pt2")
    assert result.stdout.splitlines()[-1].startswith(f"Exported to {written} (")
    assert [line.split(": ")[0] for line in result.stdout.splitlines()[:2]] == [
        "torch.export", "torch.export"]  # one line per check
    loaded = torch.export.load(written).module()
    for count in (5, 17):
        images = digits(count)
        with torch.no_grad():
            torch.testing.assert_close(loaded(images), model(images), atol=1e-5, rtol=1e-4)


@pytest.fixture(scope="module")
def trained_dict(tmp_path_factory):
    """A short run of examples/dict_batches.json: its model_best.pth and the model it holds."""
    folder = tmp_path_factory.mktemp("dict")
    config = json.loads((ROOT / "examples/dict_batches.json").read_text())
    config["data_loader"]["args"]["data_dir"] = str(ROOT / "data")
    config["trainer"].update(epochs=1, len_epoch=3, save_dir=str(folder / "saved"),
                             tensorboard=False, verbosity=1)
    (folder / "c.json").write_text(json.dumps(config))
    train.main(["-c", str(folder / "c.json"), "--run-id", "r"])
    checkpoint = folder / "saved/models/Digits_Dict/r/model_best.pth"
    model = ImageAndFeatures()
    model.load_state_dict(load_checkpoint(checkpoint)["state_dict"])
    return checkpoint, model.eval()


def dict_inputs(count: int) -> dict[str, torch.Tensor]:
    """The model's keyword arguments for the first `count` test samples of the example."""
    data = DigitsWithFeatures(str(ROOT / "data"), training=False)
    return {"image": data.images[:count], "features": data.features[:count]}


def test_a_model_taking_a_dict_batch_as_keyword_arguments_is_exported_and_verified(
        trained_dict, tmp_path):
    checkpoint, model = trained_dict
    run_main("export.py", "-r", str(checkpoint), "--output", str(tmp_path / "dict.pt2"))
    loaded = torch.export.load(tmp_path / "dict.pt2").module()
    for count in (5, 17):
        inputs = dict_inputs(count)
        with torch.no_grad():
            torch.testing.assert_close(loaded(**inputs), model(**inputs), atol=1e-5, rtol=1e-4)


def test_onnx_of_the_digits_cnn_runs_in_onnxruntime_as_the_eager_model(trained, tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    checkpoint, model = trained
    result = run_main("export.py", "-r", str(checkpoint), "--format", "onnx",
                      "--output", str(tmp_path / "digits.onnx"))
    assert [line.split(": ")[0] for line in result.stdout.splitlines()[:2]] == ["onnx", "onnx"]
    session = onnxruntime.InferenceSession(str(tmp_path / "digits.onnx"),
                                           providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    for count in (5, 17):
        images = digits(count)
        (output,) = session.run(None, {name: images.numpy()})
        with torch.no_grad():
            torch.testing.assert_close(torch.from_numpy(output), model(images), atol=1e-5,
                                       rtol=1e-4)


def test_onnx_of_a_dict_batch_model_takes_its_inputs_by_name(trained_dict, tmp_path):
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    checkpoint, model = trained_dict
    run_main("export.py", "-r", str(checkpoint), "--format", "onnx",
             "--output", str(tmp_path / "dict.onnx"))
    session = onnxruntime.InferenceSession(str(tmp_path / "dict.onnx"),
                                           providers=["CPUExecutionProvider"])
    inputs = dict_inputs(17)
    (output,) = session.run(None, {name: value.numpy() for name, value in inputs.items()})
    with torch.no_grad():
        torch.testing.assert_close(torch.from_numpy(output), model(**inputs), atol=1e-5,
                                   rtol=1e-4)


class BranchingDigits(DigitsModel):
    """The digits CNN with a Python branch on a tensor's value, which torch.export refuses."""

    def forward(self, x):
        if x.sum() > 0:
            return super().forward(x)
        return super().forward(-x)


class CountingDigits(DigitsModel):
    """The digits CNN adding how often it was called: the export freezes the count."""

    calls = 0

    def forward(self, x):
        type(self).calls += 1
        return super().forward(x) + type(self).calls


def register_model(monkeypatch, model_class) -> list[str]:
    """`model_class` nameable by `arch.type` (as if written in model/model.py); the override
    that names it."""
    model_class.__module__ = "model.model"
    monkeypatch.setattr(module_model, model_class.__name__, model_class, raising=False)
    return ["-o", f"arch.type={model_class.__name__}"]


def test_a_model_torch_export_refuses_is_one_line_naming_the_line_and_writes_nothing(
        trained, monkeypatch):
    checkpoint, _ = trained
    before = sorted(path.name for path in checkpoint.parent.iterdir())
    result = run_main("export.py", "-r", str(checkpoint), *register_model(
        monkeypatch, BranchingDigits), check=False)
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1, result.stderr
    line = result.stderr.strip()
    assert line.startswith("error: the model cannot be exported: Could not guard on "
                           "data-dependent expression"), line
    branch = inspect.getsourcelines(BranchingDigits.forward)[1] + 1
    assert line.endswith(f"test_export.py:{branch} in forward: if x.sum() > 0:"), line
    assert sorted(path.name for path in checkpoint.parent.iterdir()) == before


def test_outputs_that_differ_from_the_eager_model_are_exit_code_1_and_nothing_written(
        trained, monkeypatch, tmp_path):
    checkpoint, _ = trained
    result = run_main("export.py", "-r", str(checkpoint), "--output", str(tmp_path / "m.pt2"),
                      *register_model(monkeypatch, CountingDigits), check=False)
    assert result.returncode == 1
    (line,) = result.stderr.splitlines()
    assert line.startswith("error: the exported model's output 0 on a batch of 64 differs "
                           "from the eager model's by up to "), line
    assert "too far" in result.stdout
    assert list(tmp_path.iterdir()) == []


def test_onnx_without_its_packages_is_one_line_before_anything_is_built(trained, monkeypatch):
    checkpoint, _ = trained
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *args: None if name == "onnxruntime" else
                        find_spec(name, *args))
    monkeypatch.setattr(train, "build_trainer", None)  # anything built would fail otherwise
    with pytest.raises(UserError) as raised:
        export.main(["-r", str(checkpoint), "--format", "onnx"])
    assert str(raised.value) == (
        "--format onnx needs the packages onnx, onnxscript, onnxruntime (not installed: "
        "onnxruntime): pip install onnx onnxscript onnxruntime")


def test_bad_command_lines_are_one_line(trained, tmp_path, monkeypatch):
    checkpoint, _ = trained
    cases = {
        ("-r", str(tmp_path / "none.pth")): f"{tmp_path / 'none.pth'}",
        ("-r", str(checkpoint), "--output", str(tmp_path / "m.onnx")):
            f"--output {tmp_path / 'm.onnx'}: --format torch.export writes a .pt2 file",
        ("-r", str(checkpoint), "--atol", "-1"): "--atol: expected a number >= 0, got -1.0"}
    for arguments, message in cases.items():
        with pytest.raises(UserError) as raised:
            export.main(list(arguments))
        assert message in str(raised.value) and "\n" not in str(raised.value)
    result = run_main("export.py", "-r", str(checkpoint), "--format", "tflite", check=False)
    assert result.returncode == 2 and "invalid choice: 'tflite'" in result.stderr
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(UserError, match="export.py exports in one process"):
        export.main(["-r", str(checkpoint)])
