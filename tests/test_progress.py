"""What a person sees in the terminal: bars or periodic lines, the epoch table, the end summary."""
import io
import json
import os
import re
import warnings

import pytest

import train
from logger.progress import bars_wanted, epoch_table, format_duration, format_value
from tests.conftest import run_folders, small_config
from utils.checkpoint import load_checkpoint


class FakeStream(io.StringIO):
    def __init__(self, tty: bool):
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


def test_auto_shows_bars_only_on_a_terminal():
    assert bars_wanted("auto", FakeStream(True))
    assert not bars_wanted("auto", FakeStream(False))
    assert bars_wanted(True, FakeStream(False)) and not bars_wanted(False, FakeStream(True))
    assert not bars_wanted("maybe", FakeStream(True))  # test.py does not validate the key


def test_a_terminal_without_a_width_gets_lines_instead_of_an_empty_bar():
    import fcntl
    import struct
    import termios

    controller, terminal = os.openpty()
    with os.fdopen(terminal, "w") as stream:
        fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 0, 0, 0, 0))
        assert stream.isatty() and not bars_wanted("auto", stream)
        fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 0, 100, 0, 0))
        assert not bars_wanted("auto", stream)  # no rows: tqdm would hide the bar
        fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 80, 0, 0))
        assert bars_wanted("auto", stream)
    os.close(controller)


def test_epoch_table_puts_train_and_valid_side_by_side_and_marks_the_improved_value():
    log = {"loss": 1.013617, "accuracy": 0.75, "val_loss": 0.428506, "val_accuracy": 0.874126}
    header, loss, accuracy = epoch_table(log, "val_loss", improved=True)
    assert header.split() == ["train", "valid"]
    assert loss.split() == ["loss", "1.013617", "0.428506", "*", "best", "valid"]
    assert accuracy.split() == ["accuracy", "0.750000", "0.874126"]
    # the columns line up under their headers
    assert header.index("train") + len("train") == loss.index("1.013617") + len("1.013617")
    assert header.index("valid") + len("valid") == accuracy.index("0.874126") + len("0.874126")
    assert "*" not in "".join(epoch_table(log, "val_loss", improved=False))


def test_epoch_table_without_validation_and_with_tiny_values():
    header, loss = epoch_table({"loss": 1.5e-8}, "loss", improved=True)
    assert header.split() == ["train"]
    assert loss.split() == ["loss", "1.500000e-08", "*", "best"]
    only_valid = epoch_table({"loss": 1.0, "val_top5": 0.5})
    assert only_valid[2].split() == ["top5", "-", "0.500000"]


@pytest.mark.parametrize("value, text", [(0.5, "0.500000"), (0.0, "0.000000"),
                                         (2e-5, "2.000000e-05"), (float("nan"), "nan")])
def test_format_value(value, text):
    assert format_value(value) == text


def test_format_duration():
    assert [format_duration(s) for s in (0.42, 59.94, 245, 7400)] == \
        ["0.4 s", "59.9 s", "4m 05s", "2h 03m"]


def write_config(tmp_path, **trainer) -> str:
    path = tmp_path / "c.json"
    path.write_text(json.dumps(small_config(tmp_path / "saved", verbosity=2, **trainer)))
    return str(path)


@pytest.mark.slow
def test_without_a_terminal_the_log_has_a_line_every_log_step_a_table_and_a_summary(
        tmp_path, capsys):
    train.main(["-c", write_config(tmp_path, epochs=2, log_step=10, progress_bar="auto")])
    run, = run_folders(tmp_path / "saved")
    out = capsys.readouterr().out
    assert "\r" not in out  # not a terminal: no bar redraws
    lines = out.splitlines()
    # verbosity 2: the model summary at the start
    assert "Model: DigitsModel" in lines and "conv1    Conv2d   (2, 32, 8, 8)" in out
    steps = [line for line in lines if line.startswith("Train epoch 1 ")]
    assert [line.split("]")[0] for line in steps] == \
        ["Train epoch 1 [1/21 (5%)", "Train epoch 1 [11/21 (52%)", "Train epoch 1 [21/21 (100%)"]
    assert re.fullmatch(r"Train epoch 1 \[1/21 \(5%\)\] loss \d\.\d{6} \| [\d,]+ samples/s \| "
                        r"lr 1\.00e-03", steps[0])
    header = lines.index(next(line for line in lines if line.startswith("Epoch 2/2 ")))
    assert re.fullmatch(r"Epoch 2/2  \d+\.\d s, [\d,]+ samples/s", lines[header])
    assert [row.split()[0] for row in lines[header + 2:header + 5]] == \
        ["loss", "accuracy", "top_k_acc"]
    best = load_checkpoint(run / "model_best.pth")
    assert f"Best val_loss: {best['monitor_best']:.6f} at epoch {best['epoch']}, saved as " \
           f"{run / 'model_best.pth'}" in lines
    assert lines[-1] == f"Test it with: python test.py -r {run / 'model_best.pth'}"
    log_file = (tmp_path / "saved" / "log" / "Digits_CNN" / run.name / "info.log").read_text()
    assert "Best val_loss" in log_file and "* best valid" in log_file  # the table is kept


def test_bars_replace_the_step_lines_and_keep_log_lines_whole(tmp_path, capsys):
    """With bars, a warning logged mid-epoch (a skipped step) prints above the bar, whole."""
    from trainer.trainer import Callback

    class Warner(Callback):
        def on_step_start(self, trainer):
            if trainer.global_step == 5:
                trainer.logger.warning("a warning in the middle of an epoch")
            if trainer.global_step == 9:
                warnings.warn("a library's warning", stacklevel=1)

    train.main(["-c", write_config(tmp_path, epochs=1, progress_bar=True), "--bs", "16"],
               callbacks=[Warner()])
    out, err = capsys.readouterr()
    bar = next(line for line in re.split(r"[\r\n]", out) if line.startswith("epoch 1/1 ") and
               "samples/s" in line)  # the bar, with its postfix
    assert re.fullmatch(r"epoch 1/1 +\d+%\|.*\| \d+/81 \[\d\d:\d\d<\d\d:\d\d, loss \d\.\d{6} \| "
                        r"[\d,]+ samples/s \| lr 1\.00e-03\]", bar.rstrip()), bar
    screen_lines = re.split(r"[\r\n]", out)
    assert not [line for line in screen_lines if line.startswith("Train epoch")]
    assert "a warning in the middle of an epoch" in screen_lines
    assert any(line.endswith("UserWarning: a library's warning") for line in
               re.split(r"[\r\n]", err))  # on a line of its own, above the bar
    assert any(line.startswith("Epoch 1/1 ") for line in screen_lines)


@pytest.mark.slow
def test_the_end_summary_names_the_best_epoch_across_a_resume(tmp_path, capsys):
    config = write_config(tmp_path, epochs=3, monitor="max val_accuracy")
    train.main(["-c", config, "--epochs", "2"])
    run, = run_folders(tmp_path / "saved")
    capsys.readouterr()
    # with lr 0 epoch 3 cannot improve: the best epoch is known only from the checkpoint
    train.main(["-r", str(run / "checkpoint-epoch2.pth"), "--epochs", "3", "--lr", "0"])
    best = load_checkpoint(run / "model_best.pth")
    assert best["best_epoch"] == best["epoch"] <= 2 and best["best_log"]["val_accuracy"] == \
        best["monitor_best"]
    lines = capsys.readouterr().out.splitlines()
    assert "Finished training (epoch 3) in" in next(line for line in lines
                                                    if line.startswith("Finished"))
    assert any(line.startswith(f"Best val_accuracy: {best['monitor_best']:.6f} at epoch "
                               f"{best['epoch']},") for line in lines)


@pytest.mark.slow
def test_a_branched_run_that_never_improves_names_no_model_best_it_lacks(tmp_path, capsys):
    config = write_config(tmp_path, epochs=2, monitor="max val_accuracy")
    train.main(["-c", config, "--run-id", "first"])
    first = tmp_path / "saved/models/Digits_CNN/first"
    capsys.readouterr()
    # an older checkpoint: a new run folder, which lr 0 never gives a better epoch
    train.main(["-r", str(first / "checkpoint-epoch1.pth"), "--epochs", "2", "--lr", "0"])
    (branch,) = [run for run in run_folders(tmp_path / "saved") if run.name != "first"]
    lines = capsys.readouterr().out.splitlines()
    assert not (branch / "model_best.pth").exists()
    assert lines[-1] == f"Test it with: python test.py -r {branch / 'checkpoint-epoch2.pth'}"


def test_without_a_monitor_the_summary_points_at_the_last_checkpoint(tmp_path, capsys):
    train.main(["-c", write_config(tmp_path, epochs=2, monitor="off", early_stop=0)])
    run, = run_folders(tmp_path / "saved")
    lines = capsys.readouterr().out.splitlines()
    assert f"Last checkpoint: {run / 'checkpoint-epoch2.pth'}" in lines
    assert lines[-1] == f"Test it with: python test.py -r {run / 'checkpoint-epoch2.pth'}"


@pytest.mark.slow
def test_a_checkpoint_without_best_epoch_still_points_at_model_best(tmp_path, capsys):
    """Checkpoints written before best_epoch existed: the summary names model_best.pth."""
    import torch

    train.main(["-c", write_config(tmp_path, epochs=3), "--epochs", "2"])
    run, = run_folders(tmp_path / "saved")
    old = load_checkpoint(run / "checkpoint-epoch2.pth")
    del old["best_epoch"], old["best_log"]
    torch.save(old, run / "checkpoint-epoch2.pth")
    capsys.readouterr()
    train.main(["-r", str(run / "checkpoint-epoch2.pth"), "--epochs", "3", "--lr", "0"])
    lines = capsys.readouterr().out.splitlines()
    assert f"Best val_loss: {old['monitor_best']:.6f}, saved as {run / 'model_best.pth'}" in lines
    assert lines[-1] == f"Test it with: python test.py -r {run / 'model_best.pth'}"


def test_the_learning_rate_shown_is_the_one_the_step_used(tmp_path):
    """A step-wise schedule: the rate at a log step is the one before that step's
    scheduler step, on the bar, in the lines and in TensorBoard."""
    from tests.test_logger import read_events

    config = small_config(tmp_path / "saved", epochs=1, tensorboard=True, log_step=10)
    config["lr_scheduler"] = {"type": "StepLR", "args": {"step_size": 5, "gamma": 0.5},
                              "interval": "step"}
    (tmp_path / "c.json").write_text(json.dumps(config))
    train.main(["-c", str(tmp_path / "c.json")])
    run, = run_folders(tmp_path / "saved")
    events = read_events(tmp_path / "saved" / "log" / "Digits_CNN" / run.name)
    rates = [(event.step, event.value) for event in events.Scalars("learning_rate")]
    # steps 1, 11, 21 run after 0, 10, 20 scheduler steps: 1e-3 halved every 5
    assert rates == [(1, pytest.approx(1e-3)), (11, pytest.approx(2.5e-4)),
                     (21, pytest.approx(6.25e-5))]


@pytest.mark.slow
def test_under_accumulation_the_counter_says_it_counts_optimizer_steps(tmp_path, capsys):
    """21 batches an epoch in steps of 2: the counter goes to 11 and says what it counts."""
    train.main(["-c", write_config(tmp_path, epochs=1, log_step=10, progress_bar=False,
                                   grad_accum_steps=2, len_epoch=None)])
    steps = [line.split("]")[0] for line in capsys.readouterr().out.splitlines()
             if line.startswith("Train epoch 1 ")]
    assert steps == ["Train epoch 1 [1/11 steps of 2 batches (9%)",
                     "Train epoch 1 [11/11 steps of 2 batches (100%)"]
