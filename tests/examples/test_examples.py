"""examples/: five tasks of a user's own (tabular regression, dict batches, a VAE, a GAN, two
heads), each trained, stopped mid-epoch and resumed bit for bit, tested and dry-run through the real CLI."""
import json
import signal
from pathlib import Path

import pytest
import torch

import test as test_script
import train
from tests.conftest import ROOT, from_command_line, run_folders, signal_at
from utils.checkpoint import load_checkpoint
from utils.interrupts import TrainingInterrupted

EXAMPLES = {"tabular": "Diabetes_MLP", "dict_batches": "Digits_Dict", "vae": "Digits_VAE",
            "gan": "Digits_GAN", "two_heads": "Digits_TwoHeads"}
# what each example logs besides the loss, in the epoch table and in test.py's report
LOGGED = {"tabular": ["rmse", "mae", "r2"], "dict_batches": ["accuracy"], "vae": ["recon", "kl"],
          "gan": ["d_loss", "g_loss"], "two_heads": ["digit_acc", "ink_mae"]}


def example_config(tmp_path: Path, example: str, **trainer) -> Path:
    """The example's config, shrunk: 2 epochs, output under `tmp_path`."""
    config = json.loads((ROOT / "examples" / f"{example}.json").read_text())
    config["data_loader"]["args"]["data_dir"] = str(ROOT / "data")
    config["trainer"].update({"epochs": 2, "save_dir": str(tmp_path / "saved"), "verbosity": 1,
                              "tensorboard": False, **trainer})
    path = tmp_path / f"{example}.json"
    path.write_text(json.dumps(config))
    return path


def assert_bit_identical(a: dict, b: dict) -> None:
    assert a["epoch"] == b["epoch"] and a["global_step"] == b["global_step"]
    for key in a["state_dict"]:
        assert torch.equal(a["state_dict"][key], b["state_dict"][key]), key
    optimizers_a, optimizers_b = a["optimizer"], b["optimizer"]
    if "state" in optimizers_a:  # one optimizer; else several by name
        optimizers_a, optimizers_b = {"": optimizers_a}, {"": optimizers_b}
    assert optimizers_a.keys() == optimizers_b.keys()
    for name in optimizers_a:
        state_a, state_b = optimizers_a[name]["state"], optimizers_b[name]["state"]
        for index in state_a:
            for key in state_a[index]:
                assert torch.equal(state_a[index][key], state_b[index][key]), (name, index, key)
    assert a["lr_scheduler"] == b["lr_scheduler"]
    assert a["best_log"] == b["best_log"] and a["monitor_best"] == b["monitor_best"]


@pytest.mark.slow
@pytest.mark.parametrize("example", list(EXAMPLES))
def test_an_example_stopped_mid_epoch_resumes_bit_for_bit_and_tests(tmp_path, example, capsys):
    config = example_config(tmp_path, example, monitor="min val_loss")  # best_log: every value
    train.main(["-c", str(config), "--run-id", "straight"])
    with pytest.raises(TrainingInterrupted) as stopped:
        train.main(["-c", str(config), "--run-id", "stopped"],
                   callbacks=[signal_at(3, signal.SIGINT)])
    assert stopped.value.exit_code == 130
    runs = tmp_path / "saved" / "models" / EXAMPLES[example]
    assert load_checkpoint(runs / "stopped" / "checkpoint-interrupted.pth")["epoch_step"] == 3
    train.main(["-r", str(runs / "stopped")])
    for epoch in (1, 2):  # the interrupted epoch's values too (best_log: all of epoch 1's)
        name = f"checkpoint-epoch{epoch}.pth"
        assert_bit_identical(load_checkpoint(runs / "straight" / name),
                             load_checkpoint(runs / "stopped" / name))
    first = load_checkpoint(runs / "straight" / "checkpoint-epoch1.pth")
    assert list(first["best_log"]) == ["loss", *LOGGED[example], "val_loss",
                                       *(f"val_{key}" for key in LOGGED[example])]
    capsys.readouterr()
    results = test_script.main(["-r", str(runs / "straight" / "checkpoint-epoch2.pth")])
    assert list(results) == ["loss", *LOGGED[example], "n_samples"]
    report = json.loads((runs / "straight" / "checkpoint-epoch2.test.json").read_text())
    # classifiers only; of two heads, the one the first metric naming an output reads
    assert ("per_class_accuracy" in report) == (example in ("dict_batches", "two_heads"))
    out = capsys.readouterr().out
    assert all(f"  {key} " in out for key in LOGGED[example])


@pytest.mark.parametrize("example", list(EXAMPLES))
def test_an_example_dry_runs_writing_nothing(tmp_path, example, capsys):
    train.main(["-c", str(example_config(tmp_path, example, log_images=True)), "--dry-run"])
    out = capsys.readouterr().out
    assert "The config is ready to train." in out and not (tmp_path / "saved").exists()
    dry_run = next(line for line in out.splitlines() if line.startswith("Dry run: 2 training"))
    assert all(f" {key} " in dry_run for key in LOGGED[example])
    images = "a grid of 16 images" if example != "tabular" else "needs image batches"
    assert images in out


@pytest.mark.slow
def test_the_vae_logs_its_loss_parts_to_tensorboard(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train.main(["-c", str(example_config(tmp_path, "vae", tensorboard=True, monitor="min val_kl")),
                "--run-id", "r"])
    events = EventAccumulator(str(tmp_path / "saved" / "log" / "Digits_VAE" / "r"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"recon/train", "recon/valid", "kl/train", "kl/valid", "loss/train"} <= tags
    best = load_checkpoint(tmp_path / "saved" / "models" / "Digits_VAE" / "r" / "model_best.pth")
    kl = [event.value for event in events.Scalars("kl/valid")]
    assert best["monitor_best"] == pytest.approx(min(kl), rel=1e-6)  # monitored: a loss part


def test_the_vae_trainer_option_is_checked_and_set_from_the_command_line(tmp_path, capsys):
    from utils.errors import ConfigError

    config = str(example_config(tmp_path, "vae"))
    with pytest.raises(ConfigError) as error:
        train.main(["-c", config, "-o", "trainer.args.kl_warmup_epoch=5", "-o",
                    "trainer.args.kl_warmup_epochs=\"5\"", "--dry-run"])
    assert str(error.value).splitlines() == [
        "trainer.args.kl_warmup_epochs: expected an integer, got \"5\"",
        "trainer.args: unexpected argument 'kl_warmup_epoch' for VAETrainer (its options: "
        "kl_warmup_epochs, target_key) (did you mean 'kl_warmup_epochs'?)"]
    trainer = train.prepare(_parsed(config, "-o", "trainer.args.kl_warmup_epochs=4"), None)
    assert trainer.kl_warmup_epochs == 4
    trainer.epoch = 1
    assert trainer.kl_weight() == 0.25


def _parsed(*argv):
    config = from_command_line(["-c", *argv], train.OPTIONS)
    config.validate(train.blocks())
    return config


def test_the_gan_steps_each_optimizer_once_per_step_also_accumulating(tmp_path):
    train.main(["-c", str(example_config(tmp_path, "gan", grad_accum_steps=2)), "--run-id", "r"])
    checkpoint = load_checkpoint(tmp_path / "saved/models/Digits_GAN/r/checkpoint-epoch2.pth")
    assert checkpoint["global_step"] == 2 * 11  # ceil(21 micro-batches / 2) steps an epoch
    for name in ("generator", "discriminator"):
        states = checkpoint["optimizer"][name]["state"]
        assert {int(state["step"]) for state in states.values()} == {22}, name
    assert checkpoint["lr_scheduler"]["generator"]["last_epoch"] == 2
    assert checkpoint["lr_scheduler"]["discriminator"] is None
    assert checkpoint["param_group_names"]["generator"][0][0].startswith("generator.")
    assert run_folders(tmp_path / "saved", "Digits_GAN")[0].name == "r"


def test_the_dict_batch_examples_folds_are_stratified_by_its_targets():
    """Its data set names its labels `targets`, so `--folds K` deals each class into each
    fold in its share."""
    from base.base_data_loader import split_indices
    from base.folds import class_labels
    from examples.dict_batches import DigitsWithFeatures

    dataset = DigitsWithFeatures(str(ROOT / "data"), training=True)
    labels = class_labels(dataset)
    assert labels is not None and torch.equal(labels, torch.stack(
        [dataset[index]["label"] for index in range(len(dataset))]))
    shares = torch.bincount(labels, minlength=10) / 3
    for fold in (1, 2, 3):
        _, valid = split_indices(len(dataset), {"fold": fold, "folds": 3}, 0, labels)
        assert (torch.bincount(labels[valid], minlength=10) - shares).abs().max() < 1


@pytest.mark.slow
def test_the_two_heads_metrics_are_each_of_their_own_head_over_the_whole_test_set(tmp_path):
    """test.py's `digit_acc` and `ink_mae` equal the two heads' accuracy and mean absolute error
    computed by hand from the checkpoint's model on the whole test set; its per-class report is
    of the digit head."""
    from data_loader.datasets import digits_dataset
    from examples.two_heads import DigitAndInk

    train.main(["-c", str(example_config(tmp_path, "two_heads")), "--run-id", "r"])
    run = tmp_path / "saved/models/Digits_TwoHeads/r"
    results = test_script.main(["-r", str(run / "checkpoint-epoch2.pth")])
    model = DigitAndInk(channels=16)
    model.load_state_dict(load_checkpoint(run / "checkpoint-epoch2.pth")["state_dict"])
    images, labels = digits_dataset(str(ROOT / "data"), training=False).tensors
    with torch.no_grad():
        output = model.eval()(images)
    assert results["n_samples"] == len(labels)
    assert results["digit_acc"] == pytest.approx(
        (output["digit"].argmax(1) == labels).double().mean().item(), abs=1e-6)  # float32 sums
    assert results["ink_mae"] == pytest.approx(
        (output["ink"] - images.mean(dim=(1, 2, 3))).abs().mean().item(), rel=1e-5)
    report = json.loads((run / "checkpoint-epoch2.test.json").read_text())
    assert report["output"] == "digit" and len(report["confusion_matrix"]["counts"]) == 10
