"""The concrete Trainer, driven through `train.main` in this process (fast) on the real data."""
import json
import signal

import pytest
import torch

import train
from base.base_data_loader import sample_count
from parse_config import ConfigParser
from tests.conftest import from_command_line, run_folders, signal_at, small_config
from utils.checkpoint import load_checkpoint
from utils.errors import ConfigError


def write_config(tmp_path, name="c.json", **trainer):
    path = tmp_path / name
    path.write_text(json.dumps(small_config(tmp_path / "saved", **trainer)))
    return path


def assert_same_training_state(a: dict, b: dict) -> None:
    assert a["epoch"] == b["epoch"] and a["global_step"] == b["global_step"]
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    state_a, state_b = a["optimizer"]["state"], b["optimizer"]["state"]
    assert state_a.keys() == state_b.keys()
    for index in state_a:
        for key in state_a[index]:
            assert torch.equal(state_a[index][key], state_b[index][key]), (index, key)
    assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]
    assert a["lr_scheduler"] == b["lr_scheduler"]
    assert (a["monitor_best"], a["not_improved_count"]) == (b["monitor_best"], b["not_improved_count"])


@pytest.mark.slow
@pytest.mark.parametrize("extra", [[], ["-o", "trainer.len_epoch=30"],
                                   ["-o", "data_loader.args.num_workers=2"]],
                         ids=["epochs", "iteration_based", "workers"])
def test_resume_reproduces_the_uninterrupted_run_bit_for_bit(tmp_path, extra):
    config = write_config(tmp_path, epochs=4)
    train.main(["-c", str(config), "--run-id", "straight", *extra])
    train.main(["-c", str(config), "--run-id", "short", "--epochs", "2", *extra])
    runs = tmp_path / "saved" / "models" / "Digits_CNN"
    train.main(["-r", str(runs / "short" / "checkpoint-epoch2.pth"), "--epochs", "4"])
    straight = load_checkpoint(runs / "straight" / "checkpoint-epoch4.pth")
    resumed = load_checkpoint(runs / "short" / "checkpoint-epoch4.pth")
    assert_same_training_state(straight, resumed)
    assert resumed["config"]["trainer"]["epochs"] == 4


@pytest.mark.slow
def test_iteration_based_epoch_runs_exactly_len_epoch_steps(tmp_path):
    config = write_config(tmp_path, epochs=2, len_epoch=30)   # 21 batches in one pass
    train.main(["-c", str(config)])
    run, = run_folders(tmp_path / "saved")
    assert load_checkpoint(run / "checkpoint-epoch1.pth")["global_step"] == 30
    assert load_checkpoint(run / "checkpoint-epoch2.pth")["global_step"] == 60


def test_one_pass_epoch_counts_optimizer_steps(tmp_path):
    train.main(["-c", str(write_config(tmp_path, epochs=1)), "--bs", "100"])
    run, = run_folders(tmp_path / "saved")
    assert load_checkpoint(run / "checkpoint-epoch1.pth")["global_step"] == 13  # ceil(1295 / 100)


@pytest.mark.slow
def test_fine_tuning_takes_weights_only_into_a_new_run(tmp_path):
    config = write_config(tmp_path, epochs=2)
    train.main(["-c", str(config), "--run-id", "base"])
    base = tmp_path / "saved" / "models" / "Digits_CNN" / "base"
    tuned_config = write_config(tmp_path, name="tune.json", epochs=1)
    trainer = train.build_trainer(from_command_line(
        ["-c", str(tuned_config), "-r", str(base / "checkpoint-epoch2.pth")]))
    trainer.load_weights(base / "checkpoint-epoch2.pth")
    weights = load_checkpoint(base / "checkpoint-epoch2.pth")["state_dict"]
    assert all(torch.equal(v, trainer.model.state_dict()[k]) for k, v in weights.items())
    assert trainer.start_epoch == 1 and trainer.global_step == 0
    assert trainer.optimizer.state_dict()["state"] == {}
    assert trainer.checkpoint_dir != base


def test_validation_metrics_cover_the_whole_validation_set(tmp_path):
    config = ConfigParser(small_config(tmp_path, epochs=1), run_id="r")
    trainer = train.build_trainer(config)
    assert sample_count(trainer.valid_data_loader) == 143
    log = trainer._valid_epoch(1)
    assert trainer.model.training  # validation leaves the mode as it found it
    trainer.model.eval()
    correct = sum((trainer.model(x).argmax(1) == y).sum().item()
                  for x, y in trainer.valid_data_loader)
    # batch means are float32: a last batch of 15 rounds at ~1e-9; an unweighted mean of the
    # batches would be off by far more
    assert log["accuracy"] == pytest.approx(correct / 143, abs=1e-7)


@pytest.mark.slow
def test_two_runs_with_the_same_run_id_write_into_their_own_folders(tmp_path, capsys):
    config = write_config(tmp_path, epochs=1)
    train.main(["-c", str(config), "--run-id", "same"])
    capsys.readouterr()
    train.main(["-c", str(config), "--run-id", "same", "--lr", "0.01"])
    assert "Warning: --run-id same is taken by an earlier run; this run is same_1." in \
        capsys.readouterr().out.splitlines()
    runs = tmp_path / "saved" / "models" / "Digits_CNN"
    for run_id, lr in (("same", 0.001), ("same_1", 0.01)):
        checkpoint = load_checkpoint(runs / run_id / "checkpoint-epoch1.pth")
        assert checkpoint["optimizer"]["param_groups"][0]["lr"] == lr
        assert json.loads((runs / run_id / "config.json").read_text())["optimizer"]["args"]["lr"] == lr
        assert (tmp_path / "saved" / "log" / "Digits_CNN" / run_id / "info.log").is_file()


@pytest.mark.slow
def test_resumed_tensorboard_curve_keeps_every_epoch_once(tmp_path):
    from tests.test_logger import read_scalars
    config = write_config(tmp_path, epochs=2, tensorboard=True)
    train.main(["-c", str(config), "--run-id", "tb"])
    run = tmp_path / "saved" / "models" / "Digits_CNN" / "tb"
    train.main(["-r", str(run / "checkpoint-epoch2.pth"), "--epochs", "3"])
    steps = [step for step, _ in read_scalars(tmp_path / "saved" / "log" / "Digits_CNN" / "tb")
             ["loss/valid"]]
    assert steps == [21, 42, 63]


@pytest.mark.slow
def test_resuming_an_older_checkpoint_branches_into_a_new_run(tmp_path):
    train.main(["-c", str(write_config(tmp_path, epochs=3)), "--run-id", "orig"])
    runs = tmp_path / "saved" / "models" / "Digits_CNN"
    before = (runs / "orig" / "checkpoint-epoch3.pth").read_bytes()
    train.main(["-r", str(runs / "orig" / "checkpoint-epoch1.pth"), "--lr", "0.01"])
    assert (runs / "orig" / "checkpoint-epoch3.pth").read_bytes() == before
    branch, = [p for p in runs.iterdir() if p.name != "orig"]
    assert load_checkpoint(branch / "checkpoint-epoch3.pth")["optimizer"]["param_groups"][0]["lr"] == 0.01


@pytest.mark.slow
def test_resume_from_a_run_folder_takes_its_newest_checkpoint(tmp_path):
    train.main(["-c", str(write_config(tmp_path, epochs=10)), "--run-id", "r", "--epochs", "2"])
    run = tmp_path / "saved" / "models" / "Digits_CNN" / "r"
    train.main(["-r", str(run), "--epochs", "3"])
    assert load_checkpoint(run / "checkpoint-epoch3.pth")["global_step"] == 63


@pytest.mark.slow
def test_scheduler_args_changed_on_resume_take_effect(tmp_path):
    train.main(["-c", str(write_config(tmp_path, epochs=2)), "--run-id", "r"])
    run = tmp_path / "saved" / "models" / "Digits_CNN" / "r"
    train.main(["-r", str(run / "checkpoint-epoch2.pth"), "--epochs", "3",
                "-o", "lr_scheduler.args.step_size=1"])
    checkpoint = load_checkpoint(run / "checkpoint-epoch3.pth")
    assert checkpoint["lr_scheduler"]["step_size"] == 1
    # StepLR with step_size 1 decays after epoch 3; with the saved step_size (50) it would not
    assert checkpoint["optimizer"]["param_groups"][0]["lr"] == pytest.approx(0.001 * 0.1)


def test_a_data_parallel_trainer_saves_the_bare_model(tmp_path):
    from model.model import DigitsModel
    trainer = train.build_trainer(ConfigParser(small_config(tmp_path, epochs=1), run_id="dp"))
    trainer.model = torch.nn.DataParallel(trainer.model)  # no GPU: it calls the module directly
    trainer._train_epoch(1)
    state_dict = trainer.state(1)["state_dict"]
    assert not any(key.startswith("module.") for key in state_dict)
    DigitsModel().load_state_dict(state_dict)  # strict: every key fits the bare model


@pytest.mark.slow
def test_a_real_checkpoint_loads_where_the_project_is_not_importable(tmp_path):
    import subprocess
    import sys
    train.main(["-c", str(write_config(tmp_path, epochs=1)), "--run-id", "r"])
    run = tmp_path / "saved" / "models" / "Digits_CNN" / "r"
    script = ("import importlib.util, sys, torch; assert importlib.util.find_spec('trainer') is None; "
              "c = torch.load(sys.argv[1], weights_only=True); print(' '.join(sorted(c)))")
    for name in ("checkpoint-epoch1.pth", "model_best.pth"):
        result = subprocess.run([sys.executable, "-I", "-c", script, str(run / name)],
                                cwd=tmp_path, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        assert set(result.stdout.split()) >= {
            "arch", "epoch", "global_step", "state_dict", "optimizer", "lr_scheduler",
            "monitor_best", "not_improved_count", "rng_state", "config", "format_version"}


ONE_CYCLE = json.dumps({"type": "OneCycleLR", "interval": "step",
                        "args": {"max_lr": 0.01, "total_steps": 63}})


@pytest.mark.slow
@pytest.mark.parametrize("extra, stop_at", [
    ([], 30), (["-o", "trainer.len_epoch=30"], 55), (["-o", "data_loader.args.num_workers=2"], 25),
    (["-o", "trainer.grad_accum_steps=3", "-o", "trainer.len_epoch=10"], 17),
    (["-o", "trainer.grad_accum_steps=4"], 8),
    (["-o", f"lr_scheduler={ONE_CYCLE}", "-o", "trainer.amp=bf16"], 33)],
    ids=["epochs", "iteration_based_second_pass", "workers", "accumulation_iteration_based",
         "accumulation", "step_scheduler_bf16"])
def test_a_run_stopped_mid_epoch_resumes_bit_for_bit(tmp_path, monkeypatch, extra, stop_at):
    """The signal arrives (in this process: set by the step) at `stop_at`; the stopped run,
    resumed from its folder, ends exactly where the straight run does."""
    from utils.interrupts import TrainingInterrupted

    config = write_config(tmp_path, epochs=3)
    train.main(["-c", str(config), "--run-id", "straight", *extra])
    with pytest.raises(TrainingInterrupted) as stopped:
        train.main(["-c", str(config), "--run-id", "stopped", *extra],
                   callbacks=[signal_at(stop_at, signal.SIGTERM)])
    assert stopped.value.exit_code == 143
    runs = tmp_path / "saved" / "models" / "Digits_CNN"
    assert load_checkpoint(runs / "stopped" / "checkpoint-interrupted.pth")["global_step"] == stop_at
    refused = r"^lr_scheduler\.args\.total_steps: the schedule has 63 steps but training runs" \
        if any("OneCycleLR" in arg for arg in extra) else \
        r"^data_loader\.args\.batch_size: the checkpoint stopped mid-epoch with batch_size 64"
    with pytest.raises(ConfigError, match=refused):  # half the batch: twice the steps
        train.main(["-r", str(runs / "stopped"), "--bs", "32"])
    train.main(["-r", str(runs / "stopped")])
    assert_same_training_state(load_checkpoint(runs / "straight" / "checkpoint-epoch3.pth"),
                               load_checkpoint(runs / "stopped" / "checkpoint-epoch3.pth"))


@pytest.mark.slow
def test_keep_last_leaves_the_newest_epoch_checkpoints_and_the_best(tmp_path):
    train.main(["-c", str(write_config(tmp_path, epochs=4, keep_last=2, monitor="max accuracy"))])
    run, = run_folders(tmp_path / "saved")
    assert sorted(p.name for p in run.glob("*.pth")) == [
        "checkpoint-epoch3.pth", "checkpoint-epoch4.pth", "model_best.pth"]
    best = load_checkpoint(run / "model_best.pth")  # a hard link, outliving a pruned epoch file
    if best["epoch"] >= 3:
        assert (run / "model_best.pth").samefile(run / f"checkpoint-epoch{best['epoch']}.pth")
    manifest = json.loads((run / "manifest.json").read_text())
    session, = manifest["sessions"]
    assert session["config"]["trainer"]["keep_last"] == 2 and session["seed"] == 123
    assert session["torch"] == torch.__version__ and session["command"][1:3] == ["-c", str(
        tmp_path / "c.json")]
    assert session["git"] is None or len(session["git"]["commit"]) == 40


@pytest.mark.slow
def test_nothing_to_train_writes_nothing(tmp_path, capsys):
    train.main(["-c", str(write_config(tmp_path, epochs=3))])
    run, = run_folders(tmp_path / "saved")
    before = sorted(p.name for p in run.iterdir())
    train.main(["-r", str(run / "checkpoint-epoch2.pth"), "--epochs", "2"])  # would branch off
    assert "Nothing to train" in capsys.readouterr().out
    assert run_folders(tmp_path / "saved") == [run] and sorted(p.name for p in run.iterdir()) == before
