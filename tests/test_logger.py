import logging
import os

from logger.logger import setup_logging
from logger.visualization import TensorboardWriter


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
