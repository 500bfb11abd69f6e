"""The real `train.py` and `test.py`, run as a user runs them, in fresh processes."""
import json
import shutil
import signal
import subprocess
import sys

import pytest
import torch

import train
from tests.conftest import (
    ROOT,
    from_command_line,
    killed_after,
    run_folders,
    run_main,
    run_script,
    small_config,
)
from utils.checkpoint import load_checkpoint


@pytest.mark.slow
def test_default_config_trains_offline_and_tests_above_97_percent(tmp_path):
    """The README's promise: `python train.py -c config.json`, then `test.py` on model_best."""
    run_script("train.py", "-c", "config.json", "-o", f"trainer.save_dir={tmp_path}")
    run, = run_folders(tmp_path)
    assert (run / "model_best.pth").is_file() and (run / "config.json").is_file()
    log_dir = tmp_path / "log" / "Digits_CNN" / run.name
    assert (log_dir / "info.log").is_file() and list(log_dir.glob("events.out.tfevents.*"))

    result = run_script("test.py", "-r", str(run / "model_best.pth"))
    report = json.loads((run / "model_best.test.json").read_text())
    assert report["accuracy"] >= 0.97 and report["n_samples"] == 359
    assert "accuracy" in result.stdout


@pytest.mark.slow
def test_train_test_resume_end_to_end(config_file, tmp_path):
    run_script("train.py", "-c", str(config_file))
    run, = run_folders(tmp_path / "saved")
    final = load_checkpoint(run / "checkpoint-epoch3.pth")
    shutil.move(run / "checkpoint-epoch3.pth", tmp_path / "epoch3-straight.pth")

    result = run_script("train.py", "-r", str(run / "checkpoint-epoch2.pth"))
    assert "Resumed from" in result.stdout
    assert run_folders(tmp_path / "saved") == [run]          # same run folder
    resumed = load_checkpoint(run / "checkpoint-epoch3.pth")
    for key, value in final["state_dict"].items():
        assert torch.equal(value, resumed["state_dict"][key]), key

    run_script("test.py", "-r", str(run / "checkpoint-epoch3.pth"))
    assert json.loads((run / "checkpoint-epoch3.test.json").read_text())["epoch"] == 3


def bad_config(tmp_path, mutate) -> str:
    config = small_config(tmp_path / "saved")
    mutate(config)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(config))
    return str(path)


@pytest.mark.slow
def test_config_mistakes_in_a_real_process_exit_2_with_a_line_each_and_write_nothing(tmp_path):
    """The full table is in test_checks.py; this is the same path in a fresh process."""
    def mistakes(config):
        config["optimizer"]["type"] = "Adamm"
        config["trainer"]["erly_stop"] = 3
    result = run_script("train.py", "-c", bad_config(tmp_path, mistakes), "-o",
                        "arch.type=os.system", check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [
        "error: arch.type: 'os.system' is outside the modules a config may use (torch.nn, "
        "torch.optim, torchvision.models, torchvision.transforms, torchvision.ops, torchmetrics, "
        "model, data_loader, trainer, examples; code of your own goes in model/, data_loader/, "
        "trainer/, examples/, or a package named in train.py's USER_PACKAGES)",
        "error: optimizer.type: 'Adamm' is not in torch.optim (did you mean 'Adam'?)",
        "error: trainer.erly_stop: unknown key (did you mean 'early_stop'?)"]
    assert not (tmp_path / "saved").exists()


def test_print_config_shows_the_effective_config_and_writes_nothing(config_file, tmp_path):
    result = run_main("train.py", "-c", str(config_file), "--print-config", "--lr", "0.01",
                        "--seed", "7", "-o", "trainer.len_epoch=5")
    printed = json.loads(result.stdout)
    assert printed["optimizer"]["args"]["lr"] == 0.01 and printed["seed"] == 7
    assert printed["trainer"]["len_epoch"] == 5
    assert not (tmp_path / "saved").exists()


@pytest.mark.parametrize("script", ["train.py", "test.py"])
@pytest.mark.parametrize("kind", ["junk", "exploit"])
def test_bad_checkpoint_exits_2_naming_the_file(tmp_path, script, kind):
    import torch

    from tests.test_checkpoint import CreatesFile

    path, marker = tmp_path / f"{kind}.pth", tmp_path / "pwned"
    if kind == "junk":
        path.write_bytes(b"not a checkpoint")
    else:  # unpickled without weights_only, this creates `marker` (tests/ is importable there)
        torch.save({"format_version": 1, "arch": "x", "epoch": 1, "config": {},
                    "state_dict": CreatesFile(str(marker))}, path)
    result = run_main(script, "-r", str(path), check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert str(path) in result.stderr and result.stderr.count("\n") == 1
    assert not marker.exists()


def test_checkpoint_of_another_architecture_exits_2(config_file, tmp_path):
    train.main(["-c", str(config_file), "--epochs", "1"])  # in-process: only its checkpoint counts
    run, = run_folders(tmp_path / "saved")
    result = run_main("test.py", "-r", str(run / "model_best.pth"), "-c", str(config_file),
                        "-o", "arch.args.channels=8", check=False)
    assert result.returncode == 2 and "shape mismatch" in result.stderr


@pytest.mark.parametrize("config_path", sorted(  # search_*.json: sweep.py's search spaces
    p.relative_to(ROOT).as_posix() for p in [ROOT / "config.json", *ROOT.glob("configs/*.json")]
    if not p.name.startswith("search_")))
def test_every_shipped_config_builds(config_path, tmp_path, monkeypatch):
    """Every object of every shipped config is built (downloadable data replaced by tiny files,
    pretrained weights by a saved model of the right kind)."""
    import torchvision.datasets.cifar

    from model.model import DigitsModel
    from tests.test_data_loaders import write_tiny_cifar10, write_tiny_mnist

    config = from_command_line([
        "-c", str(ROOT / config_path), "-o", f"trainer.save_dir={tmp_path}"])
    if config["data_loader"]["type"] == "MnistDataLoader":
        write_tiny_mnist(tmp_path, n_train=300)
        config = config.with_modification({"data_loader.args.data_dir": str(tmp_path)})
    elif config["data_loader"]["type"] == "Cifar10DataLoader":
        write_tiny_cifar10(tmp_path, per_batch=60)
        # torchvision checks the real files' md5 sums; tiny test files cannot match them
        monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *args: True)
        config = config.with_modification({"data_loader.args.data_dir": str(tmp_path),
                                           "data_loader.args.validation_split": 100,
                                           "data_loader.args.num_workers": 0})
    elif "data_dir" in config["data_loader"]["args"]:
        monkeypatch.chdir(ROOT)
    if config["arch"].get("weights"):  # a run of the default config, in the real recipe
        torch.save(DigitsModel().state_dict(), tmp_path / "pretrained.pth")
        config = config.with_modification({"arch.weights.path": str(tmp_path / "pretrained.pth")})
    config.validate(train.blocks())
    trainer = train.build_trainer(config)
    data, target = next(iter(trainer.data_loader))
    assert trainer.model(data.to(trainer.device)).shape[0] == target.shape[0]


def test_dry_run_checks_a_config_in_seconds_and_writes_nothing(config_file, tmp_path):
    before = sorted(p.name for p in tmp_path.iterdir())
    result = run_main("train.py", "-c", str(config_file), "--dry-run")
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no saved/, no run folder
    out = result.stdout
    assert json.loads(out.split("Effective config:\n")[1].split("\n\nModel summary:")[0]) == \
        json.loads(config_file.read_text())
    assert "conv1    Conv2d   (2, 32, 8, 8)" in out  # two samples of the first batch
    assert "Dry run: 2 training steps (loss " in out and "validation on 2 batches (loss " in out
    assert out.rstrip().endswith("Nothing was written; train with the same command without "
                                 "--dry-run.")


@pytest.mark.slow
def test_dry_run_of_a_resume_and_of_a_broken_model(config_file, tmp_path):
    train.main(["-c", str(config_file), "--epochs", "1"])
    run, = run_folders(tmp_path / "saved")
    files = sorted(p.name for p in run.iterdir())
    result = run_main("train.py", "-r", str(run), "--dry-run", "--epochs", "2")
    assert "Dry run: 2 training steps" in result.stdout
    assert sorted(p.name for p in run.iterdir()) == files

    broken = run_main("train.py", "-c", str(config_file), "--dry-run", "-o",
                        "arch.args.num_classes=5", check=False)  # the data has 10 classes
    assert broken.returncode == 2 and "Traceback" not in broken.stderr
    assert broken.stderr.startswith("error: the first batch does not go through model, loss")


@pytest.mark.parametrize("script, expected", [
    ("train.py", ["--dry-run", "--lr LR, --learning_rate LR", "sets optimizer.args.lr",
                  "sets data_loader.args.batch_size", "--run-id"]),
    ("test.py", ["-r RESUME", "--print-config"]),
    ("new_project.py", ["path"]),
    pytest.param("sweep.py", ["--trials TRIALS", "--storage STORAGE", "--report FOLDER",
                              "--folds K"], marks=pytest.mark.skipif(
        not (ROOT / "sweep.py").exists(), reason="made without the search leaf")),
])
def test_help_lists_every_flag_and_imports_no_torch(script, expected):
    """`--help` answers at once: torch is imported only after the arguments are parsed."""
    probe = ("import runpy, sys\n"
             f"sys.argv = [{script!r}, '--help']\n"
             "try:\n"
             f"    runpy.run_path({str(ROOT / script)!r}, run_name='__main__')\n"
             "except SystemExit:\n"
             "    pass\n"
             "print('torch imported:', 'torch' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True,
                            text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.rstrip().endswith("torch imported: False")
    help_text = " ".join(result.stdout.split())
    for text in expected:
        assert " ".join(text.split()) in help_text, text


def test_a_signal_while_the_run_folder_opens_leaves_a_resumable_checkpoint(tmp_path,
                                                                          monkeypatch):
    import signal

    from utils.interrupts import TrainingInterrupted

    opened = train.open_run

    def open_then_signal(*args):
        lock = opened(*args)
        signal.raise_signal(signal.SIGTERM)  # after the folder exists, before training
        return lock
    monkeypatch.setattr(train, "open_run", open_then_signal)
    (tmp_path / "c.json").write_text(json.dumps(small_config(tmp_path / "saved")))
    with pytest.raises(TrainingInterrupted):
        train.main(["-c", str(tmp_path / "c.json"), "--run-id", "r"])
    checkpoint = load_checkpoint(tmp_path / "saved/models/Digits_CNN/r/checkpoint-interrupted.pth")
    assert (checkpoint["epoch"], checkpoint["epoch_step"]) == (0, 1)


@pytest.mark.slow
def test_a_ctrl_c_after_training_finished_leaves_the_exit_code_0(tmp_path):
    """The interpreter takes a while to shut down after the summary; Ctrl-C then must not turn a
    finished, saved run into an exit code of 130 (or a death by SIGINT)."""
    config = tmp_path / "config.json"
    config.write_text(json.dumps(small_config(tmp_path / "saved", epochs=1)))
    # train.py run as `python train.py` runs it, then held where the interpreter would shut
    # down until the test closes stdin: the signal lands there for certain, not before the
    # run ended nor after the process exited (a sleep could do either)
    probe = ("import runpy, sys\n"
             f"sys.argv = ['train.py', '-c', {str(config)!r}]\n"
             f"runpy.run_path({str(ROOT / 'train.py')!r}, run_name='__main__')\n"
             "print('TRAIN.PY DONE', flush=True)\n"
             "sys.stdin.read()\n")
    process = subprocess.Popen([sys.executable, "-c", probe], cwd=ROOT, stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    with killed_after(process):
        for line in process.stdout:
            if line.strip() == "TRAIN.PY DONE":
                break
        else:
            raise AssertionError(f"train.py did not finish: {process.stderr.read()[-3000:]}")
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=120)  # closes stdin: the process goes on to exit
    assert process.returncode == 0, err
    run, = run_folders(tmp_path / "saved")
    assert (run / "checkpoint-epoch1.pth").is_file()
