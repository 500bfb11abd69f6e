"""The configs shipped in configs/ train (offline, on tiny data); test_train_cli.py builds
every one."""
import json

import pytest

import train
from tests.conftest import ROOT, run_folders, run_main
from tests.test_data_loaders import write_tiny_cifar10


@pytest.mark.slow
def test_torchvision_resnet18_trains_on_the_shipped_digits(tmp_path):
    """configs/digits_resnet18.json, cut to a few steps; then test.py on what it saved."""
    run_main("train.py", "-c", "configs/digits_resnet18.json", "--epochs", "2",
               "-o", "trainer.len_epoch=4", "-o", f"trainer.save_dir={tmp_path}")
    run, = run_folders(tmp_path, "Digits_ResNet18")
    run_main("test.py", "-r", str(run / "model_best.pth"))
    report = json.loads((run / "model_best.test.json").read_text())
    assert report["n_samples"] == 359 and len(report["confusion_matrix"]["counts"]) == 10


@pytest.mark.slow
def test_cifar10_config_runs_on_tiny_files(tmp_path, monkeypatch, capsys):
    import torchvision.datasets.cifar

    write_tiny_cifar10(tmp_path, per_batch=8)
    monkeypatch.setattr(torchvision.datasets.cifar, "check_integrity", lambda *args: True)
    train.main(["-c", str(ROOT / "configs" / "cifar10_resnet18.json"), "--dry-run",
                "-o", f"data_loader.args.data_dir={tmp_path}", "--bs", "4",
                "-o", "data_loader.args.validation_split=8", "-o", "data_loader.args.num_workers=0"])
    out = capsys.readouterr().out
    assert "Input (2, 3, 32, 32) -> output (2, 10)" in out and "Dry run: 2 training steps" in out
