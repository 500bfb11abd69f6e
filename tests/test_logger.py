import json
import logging
import os

import pytest
import torch

import train
from logger.logger import setup_logging
from logger.visualization import TensorboardWriter, flatten_config
from tests.conftest import run_folders, small_config


def test_log_file_lands_in_the_log_dir_from_any_working_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)   # the logger config is found next to the package, not in cwd
    log_dir = tmp_path / "logs"
    log_dir.mkdir()
    setup_logging(log_dir)
    logging.getLogger("trainer").warning("hello file")
    for handler in logging.getLogger().handlers:
        handler.flush()
    assert "hello file" in (log_dir / "info.log").read_text()


def test_console_only_logging_creates_no_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    setup_logging(None)
    logging.getLogger("trainer").warning("console")
    assert os.listdir(tmp_path) == []


def read_scalars(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(log_dir))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_tensorboard_scalars_are_written_and_read_back(tmp_path):
    writer = TensorboardWriter(tmp_path, enabled=True)
    writer.open()
    writer.add_scalars({"loss/train": 0.5, "loss/valid": 0.7}, step=10)
    writer.add_scalars({"loss/train": 0.25}, step=20)
    writer.close()
    scalars = read_scalars(tmp_path)
    assert scalars["loss/train"] == [(10, 0.5), (20, 0.25)]
    assert scalars["loss/valid"] == [(10, 0.699999988079071)]


def test_disabled_writer_writes_nothing(tmp_path):
    writer = TensorboardWriter(tmp_path / "tb", enabled=False)
    writer.open()
    writer.add_scalars({"loss/train": 1.0}, step=1)
    writer.close()
    assert not (tmp_path / "tb").exists()


def read_events(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0,
                                                           "histograms": 0, "tensors": 0})
    events.Reload()
    return events


@pytest.mark.slow
def test_training_writes_curves_side_by_side_per_step_loss_and_an_hparams_entry(tmp_path):
    """What the TensorBoard tab shows, read back with TensorBoard's own event reader."""
    config = small_config(tmp_path / "saved", epochs=2, tensorboard=True, log_step=10,
                          log_images=True, log_histograms=2)
    (tmp_path / "c.json").write_text(json.dumps(config))
    train.main(["-c", str(tmp_path / "c.json")])
    run, = run_folders(tmp_path / "saved")
    events = read_events(tmp_path / "saved" / "log" / "Digits_CNN" / run.name)
    scalars = {tag: [(e.step, e.value) for e in events.Scalars(tag)]
               for tag in events.Tags()["scalars"]}
    # epoch means of both splits on one global-step axis (21 steps an epoch)
    for name in ("loss", "accuracy", "top_k_acc"):
        assert [step for step, _ in scalars[f"{name}/train"]] == [21, 42]
        assert [step for step, _ in scalars[f"{name}/valid"]] == [21, 42]
    assert [step for step, _ in scalars["loss/train_step"]] == [1, 11, 21, 22, 32, 42]
    assert [step for step, _ in scalars["learning_rate"]] == [1, 11, 21, 22, 32, 42]
    assert all(value == pytest.approx(1e-3) for _, value in scalars["learning_rate"])
    assert all(value > 0 for _, value in scalars["speed/samples_per_s"])
    assert [step for step, _ in scalars["time/epoch_s"]] == [21, 42]
    # the HParams entry: the best epoch's values, and the config in the plugin's data
    best = scalars["loss/valid"][-1][1]
    assert scalars["hparams/val_loss"] == [(42, pytest.approx(best))]
    assert scalars["hparams/epoch"] == [(42, 2.0)]
    hparams = events.PluginTagToContent("hparams")
    # no experiment summary: TensorBoard builds the columns from every run's
    assert set(hparams) == {"_hparams_/session_start_info", "_hparams_/session_end_info"}
    assert b"optimizer.args.lr" in hparams["_hparams_/session_start_info"]
    # an image grid of the first batch each epoch; histograms at epoch 2 only
    assert [image.step for image in events.Images("inputs/train")] == [0, 21]
    assert "weights/conv1.weight" in events.Tags()["histograms"]
    assert [h.step for h in events.Histograms("gradients/fc2.bias")] == [42]
    # the Custom Scalars tab: train and valid of each metric in one chart
    from tensorboard.plugins.custom_scalar import layout_pb2

    stored, = events.Tensors("custom_scalars__config__")
    layout = layout_pb2.Layout.FromString(stored.tensor_proto.string_val[0])
    charts = {chart.title: list(chart.multiline.tag) for chart in layout.category[0].chart}
    assert charts == {name: [f"^{name}/(train|valid|train_step)$"]
                      for name in ("loss", "accuracy", "top_k_acc")}


def test_flatten_config_gives_hparams_plain_values():
    assert flatten_config({"optimizer": {"type": "Adam", "args": {"lr": 0.1, "betas": [0.9, 0.99]}},
                           "lr_scheduler": None, "seed": 3, "trainer": {"amp": None, "x": {}}}) == {
        "optimizer.type": "Adam", "optimizer.args.lr": 0.1, "optimizer.args.betas": "[0.9, 0.99]",
        "lr_scheduler": "null", "seed": 3, "trainer.amp": "null", "trainer.x": "{}"}


def test_image_grid_refuses_batches_that_are_not_images(tmp_path):
    writer = TensorboardWriter(tmp_path, enabled=True)
    writer.open()
    assert not writer.add_image_grid("x", torch.zeros(4, 10), step=0)
    assert not writer.add_image_grid("x", torch.zeros(4, 5, 8, 8), step=0)
    assert writer.add_image_grid("x", torch.rand(40, 3, 8, 8), step=0)
    writer.close()
    image, = read_events(tmp_path).Images("x")
    assert (image.width, image.height) == (4 * 10 + 2, 4 * 10 + 2)  # 16 images, 4 a row, padded


@pytest.mark.slow
def test_tensorboards_import_keeps_boto3_and_fsspec_out_and_importable_after():
    """The writer's import hides boto3 and fsspec from TensorBoard's file layer (a slow start
    where they are installed) and leaves no trace: they import as usual afterwards."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    script = ("import sys\n"
              "from logger.visualization import summary_writer\n"
              "summary_writer()\n"
              "print(sorted(n for n in ('boto3', 'botocore', 'fsspec') if n in sys.modules))\n"
              "import importlib.util\n"
              "for name in ('boto3', 'fsspec'):\n"
              "    if importlib.util.find_spec(name):\n"
              "        __import__(name)\n"
              "print('imported')\n")
    result = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                            text=True, timeout=120)
    assert result.stdout.split("\n")[:2] == ["[]", "imported"], result.stderr
