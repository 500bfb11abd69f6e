"""The user's seam of trainer/trainer.py: a Trainer subclass overriding `training_step` (and
friends), named by `trainer.type`, and the clear errors the first batch gives."""
import json

import pytest
import torch
import torch.nn.functional as F

import train
import trainer.trainer as module_trainer
from tests.conftest import ROOT, run_folders, small_config
from trainer.trainer import Trainer
from utils.checkpoint import load_checkpoint
from utils.errors import ConfigError, TrainingDiverged, UserError


@pytest.fixture
def register(monkeypatch):
    """Make a Trainer subclass defined in a test nameable by `trainer.type` (as if it were
    written in trainer/trainer.py)."""
    def add(cls):
        cls.__module__ = "trainer.trainer"
        monkeypatch.setattr(module_trainer, cls.__name__, cls, raising=False)
        return cls
    return add


def write(tmp_path, modification=None, **trainer):
    config = small_config(tmp_path / "saved", **{"epochs": 2, **trainer})
    for key, value in (modification or {}).items():
        *parents, leaf = key.split(".")
        node = config
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    path = tmp_path / "c.json"
    path.write_text(json.dumps(config))
    return str(path)


class LossParts(Trainer):
    """The default classifier, with the loss split into two logged parts and an option."""

    def __init__(self, *args, part_weight: float = 0.5, **kwargs):
        super().__init__(*args, **kwargs)
        self.part_weight = part_weight

    def training_step(self, batch):
        images, labels = batch
        output = self.model(images)
        nll = F.nll_loss(output, labels)
        entropy = -(output.exp() * output).sum(1).mean()
        return {"loss": nll + 0.0 * entropy, "output": output, "target": labels,
                "nll": nll, "entropy": entropy * self.part_weight}


@pytest.mark.slow
def test_a_subclassed_step_trains_exactly_like_the_default_and_logs_its_parts(tmp_path, register,
                                                                               capsys):
    register(LossParts)
    train.main(["-c", write(tmp_path), "--run-id", "default"])
    train.main(["-c", write(tmp_path, {"trainer.type": "LossParts",
                                       "trainer.args": {"part_weight": 1.0}},
                            monitor="max val_entropy"), "--run-id", "parts"])
    runs = tmp_path / "saved" / "models" / "Digits_CNN"
    default = load_checkpoint(runs / "default" / "checkpoint-epoch2.pth")
    parts = load_checkpoint(runs / "parts" / "checkpoint-epoch2.pth")
    for key in default["state_dict"]:  # the same loss: bit-identical training
        assert torch.equal(default["state_dict"][key], parts["state_dict"][key]), key
    log = parts["best_log"]
    assert list(log) == ["loss", "nll", "entropy", "accuracy", "top_k_acc", "val_loss", "val_nll",
                         "val_entropy", "val_accuracy", "val_top_k_acc"]
    assert log["nll"] == pytest.approx(log["loss"], rel=1e-6)
    assert parts["monitor_best"] == log["val_entropy"]  # a loss part can be monitored
    table = capsys.readouterr().out
    assert "  entropy " in table and "  nll " in table


def test_a_dict_batch_without_a_target_the_step_knows_is_one_line_and_writes_nothing(tmp_path):
    pytest.importorskip("examples", reason="made without the examples leaf")
    from tests.conftest import run_main

    config = json.loads((ROOT / "examples" / "dict_batches.json").read_text())
    config["data_loader"]["args"]["data_dir"] = str(ROOT / "data")
    config["trainer"].update({"save_dir": str(tmp_path / "saved"), "epochs": 1})
    path = tmp_path / "dict.json"
    path.write_text(json.dumps(config))
    result = run_main("train.py", "-c", str(path), "-o", "trainer.args.target_key=digit",
                        check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "error: batches are a dict with keys ['image', 'features', 'label'], without the key "
        "'digit' (trainer.args.target_key); name the target key with -o "
        "trainer.args.target_key=KEY, or override training_step(batch) in a Trainer subclass")
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "saved").exists()


class NonScalarLoss(Trainer):
    def training_step(self, batch):
        images, labels = batch
        return F.nll_loss(self.model(images), labels, reduction="none")


class OnlyTheLoss(Trainer):
    def training_step(self, batch):
        images, labels = batch
        return F.nll_loss(self.model(images), labels)


class ValidationOnly(NonScalarLoss):
    """A correct validation_step does not hide a wrong training_step."""

    def validation_step(self, batch):
        return super().training_step(batch).mean()


class OtherParts(Trainer):
    def training_step(self, batch):
        images, labels = batch
        loss = F.nll_loss(self.model(images), labels)
        return {"loss": loss, "nll": loss}

    def validation_step(self, batch):
        return super().training_step(batch)["loss"]


class VaryingParts(Trainer):
    def training_step(self, batch):
        images, labels = batch
        loss = F.nll_loss(self.model(images), labels)
        return {"loss": loss, **({"odd": loss} if self.global_step % 2 else {})}


def test_a_step_whose_parts_change_is_stopped_with_one_line(tmp_path, register):
    register(VaryingParts)
    with pytest.raises(UserError, match=r"^the step returned the loss parts \['odd'\], its first "
                                        r"batch \[\]; a step must return the same parts every "
                                        r"time"):
        train.main(["-c", write(tmp_path, {"trainer.type": "VaryingParts", "metrics": []},
                                monitor="off")])


class ColumnOutput(Trainer):
    """A regression-style mistake: a (B, 1) output against a (B,) float target."""

    def training_step(self, batch):
        images, labels = batch
        output = self.model(images)[:, :1]                # (B, 1)
        target = labels.float()                           # (B,)
        return {"loss": F.mse_loss(output, target), "output": output, "target": target}


@pytest.mark.parametrize("cls, metrics, expected", [
    (NonScalarLoss, [], "training_step returned as \"loss\" a tensor of shape (64,); it must be "
                        "a scalar tensor (reduce it, e.g. with .mean())"),
    (OnlyTheLoss, ["accuracy"], "metrics accuracy need the step's \"output\" and \"target\", and "
                                "training_step returned only the loss; return them in the step's "
                                "dict, or set \"metrics\": []"),
    (ValidationOnly, [], "training_step returned as \"loss\" a tensor of shape (64,); it must "
                         "be a scalar tensor (reduce it, e.g. with .mean())"),
    (OtherParts, [], "training_step returns the loss parts ['nll'], validation_step []; both "
                     "must return the same"),
])
def test_a_step_the_machinery_cannot_use_is_reported_before_anything_is_written(
        tmp_path, register, cls, metrics, expected):
    register(cls)
    with pytest.raises(UserError) as error:
        train.main(["-c", write(tmp_path, {"trainer.type": cls.__name__, "metrics": metrics},
                                monitor="off")])
    assert str(error.value) == expected
    assert not (tmp_path / "saved").exists()


class CountsSteps(Trainer):
    """A user's subclass that names a counter of its own like the trainer's `step(name)`."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.step = 0


@pytest.mark.slow
def test_an_attribute_hiding_a_trainer_method_is_one_line_before_anything_is_written(
        tmp_path, register):
    register(CountsSteps)
    with pytest.raises(UserError) as error:
        train.main(["-c", write(tmp_path, {"trainer.type": "CountsSteps"})])
    assert str(error.value) == ("trainer.type: CountsSteps sets self.step, which hides the "
                                "trainer's step(); give the attribute another name")
    assert not (tmp_path / "saved").exists()


class FlattensTheImages(Trainer):
    """A user's step with a bug: the model gets flat rows, not images."""

    def training_step(self, batch):
        images, labels = batch
        output = self.model(images.flatten(1))  # the bug
        return {"loss": F.nll_loss(output, labels), "output": output, "target": labels}


@pytest.mark.slow
def test_an_error_in_a_users_step_names_where_it_broke_and_the_steps_line(tmp_path, register):
    register(FlattensTheImages)
    with pytest.raises(UserError) as error:
        train.main(["-c", write(tmp_path, {"trainer.type": "FlattensTheImages"})])
    message = str(error.value)
    assert message.startswith("the first batch does not go through model, loss and metrics: ")
    assert "(at model/model.py:" in message and ", from tests/test_training_step.py:" in message
    assert not (tmp_path / "saved").exists()


class KeepsItsBest(Trainer):
    """A user's subclass that keeps a number under the name of one of the loop's parts."""

    def training_step(self, batch):
        self.best = 0.9
        return super().training_step(batch)


@pytest.mark.slow
def test_an_attribute_replacing_a_part_of_the_loop_is_one_line(tmp_path, register):
    register(KeepsItsBest)
    with pytest.raises(UserError, match=r"^trainer\.type: KeepsItsBest sets self\.best, which "
                                        r"is the trainer's own BestTracker"):
        train.main(["-c", write(tmp_path, {"trainer.type": "KeepsItsBest"})])
    assert not (tmp_path / "saved").exists()


@pytest.mark.filterwarnings("ignore:Using a target size")  # torch's own, from the user's step
def test_a_dry_run_warns_when_output_and_target_broadcast(tmp_path, register, capsys):
    register(ColumnOutput)
    train.main(["-c", write(tmp_path, {"trainer.type": "ColumnOutput", "metrics": []},
                            monitor="off"), "--dry-run"])
    out, err = capsys.readouterr()
    assert "Warning: the output (64, 1) and the target (64,) differ in shape and broadcast to " \
           "(64, 64)" in out + err


def test_a_monitored_part_the_step_does_not_log_is_one_line_before_the_run_folder(tmp_path,
                                                                                   register):
    register(LossParts)
    with pytest.raises(ConfigError, match=r"^trainer\.monitor: 'val_entrpy' is not a logged value "
                                          r"\(one of: loss, nll, entropy, accuracy"):
        train.main(["-c", write(tmp_path, {"trainer.type": "LossParts"},
                                monitor="max val_entrpy")])
    assert run_folders(tmp_path / "saved") == []


@pytest.mark.parametrize("trainer_type, expected", [
    ("Trainr", "trainer.type: 'Trainr' is not in trainer.trainer (did you mean 'Trainer'?)"),
    ("model.model.DigitsModel",
     "trainer.type: 'model.model.DigitsModel' is not a subclass of Trainer"),
    ("os.system", "trainer.type: 'os.system' is outside the modules a config may use"),
])
def test_a_wrong_trainer_type_is_a_config_error(tmp_path, trainer_type, expected):
    with pytest.raises(ConfigError) as error:
        train.main(["-c", write(tmp_path, {"trainer.type": trainer_type}), "--print-config"])
    assert str(error.value).startswith(expected)


def test_several_optimizers_need_a_manual_step(tmp_path):
    optimizers = {"first": {"type": "Adam", "args": {"lr": 0.001}, "params": ["conv*"]},
                  "second": {"type": "SGD", "args": {"lr": 0.1}, "params": ["fc*"]}}
    config = small_config(tmp_path / "saved", epochs=1)
    del config["optimizer"], config["lr_scheduler"]
    config["optimizers"] = optimizers
    path = tmp_path / "c.json"
    path.write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=r"^optimizers: 2 optimizers need a training_step that "
                                          r"steps them: set automatic_optimization = False"):
        train.main(["-c", str(path)])
    config["optimizers"]["second"]["params"] = ["fc9*"]
    config["optimizers"]["first"]["lr_scheduler"] = {"type": "StepLr", "args": {"step_size": 1}}
    config["optimizer"] = {"type": "Adam", "args": {}}
    path.write_text(json.dumps(config))
    with pytest.raises(ConfigError) as error:
        train.main(["-c", str(path)])
    lines = str(error.value).splitlines()
    assert "optimizer: set either optimizer/lr_scheduler or optimizers, not both" in lines
    assert any(line.startswith("optimizers.first.lr_scheduler.type: 'StepLr' is not in "
                               "torch.optim.lr_scheduler (did you mean 'StepLR'?)")
               for line in lines), lines


class ManualSkip(Trainer):
    """One optimizer stepped by hand, a NaN loss at the second step."""

    automatic_optimization = False

    def training_step(self, batch):
        images, labels = batch
        loss = F.nll_loss(self.model(images), labels)
        if self.global_step == 1:
            loss = loss * float("nan")
        self.backward(loss)
        self.step()
        return loss


@pytest.mark.slow
def test_manual_optimization_keeps_the_nan_policy(tmp_path, register, capsys):
    register(ManualSkip)
    train.main(["-c", write(tmp_path, {"trainer.type": "ManualSkip", "metrics": []},
                            nan_policy="skip", monitor="off", epochs=1), "--run-id", "r"])
    assert "Skipped step 2: the loss is not finite (nan)." in capsys.readouterr().out
    checkpoint = load_checkpoint(tmp_path / "saved/models/Digits_CNN/r/checkpoint-epoch1.pth")
    assert checkpoint["global_step"] == 21
    assert {int(state["step"]) for state in checkpoint["optimizer"]["state"].values()} == {20}
    assert all(torch.isfinite(value).all() for value in checkpoint["state_dict"].values())
    with pytest.raises(TrainingDiverged, match=r"the loss became NaN or infinite at epoch 1, "
                                               r"step 2"):
        train.main(["-c", write(tmp_path, {"trainer.type": "ManualSkip", "metrics": []},
                                monitor="off", epochs=1)])


def test_a_fixed_length_schedule_stepped_per_epoch_is_warned_about(tmp_path, capsys):
    scheduler = {"type": "OneCycleLR", "args": {"max_lr": 0.01, "total_steps": 2}}
    train.main(["-c", write(tmp_path, {"lr_scheduler": scheduler}), "--dry-run"])
    out, err = capsys.readouterr()
    assert ("Warning: lr_scheduler.type OneCycleLR has a fixed length (2 steps) and steps once "
            "per epoch here; it is meant to step after every optimizer step: set "
            "lr_scheduler.interval to \"step\" (and total_steps to 42).") in out + err


def test_a_dry_run_exercises_watch_and_image_logging(tmp_path, capsys):
    watch = {"grad_norm": True, "activations": ["fc1"]}
    train.main(["-c", write(tmp_path, tensorboard=True, watch=watch, log_images=True),
                "--dry-run"])
    out = capsys.readouterr().out
    assert "trainer.log_images: a grid of 16 images per epoch" in out
    assert "trainer.watch: recorded on the first step: watch/activations/fc1/mean, " \
           "watch/activations/fc1/std, watch/grad_norm" in out
    assert not (tmp_path / "saved").exists()


class TwoParts(Trainer):
    """Two optimizers on disjoint parameters; the head's loss reaches the features too, unless
    `isolate` keeps it from them. The features' update must never include the head's loss."""

    automatic_optimization = False

    def __init__(self, *args, isolate: bool = False, **kwargs):
        super().__init__(*args, **kwargs)
        self.isolate = isolate

    def training_step(self, batch):
        images, labels = batch
        loss_a = F.nll_loss(self.model(images), labels)
        self.backward(loss_a)
        self.step("features")
        features = [self.module.conv1.weight, self.module.conv1.bias, self.module.conv2.weight,
                    self.module.conv2.bias]
        for parameter in features if self.isolate else ():
            parameter.requires_grad_(False)
        loss_b = F.nll_loss(self.model(images), labels)
        for parameter in features:
            parameter.requires_grad_(True)
        self.backward(loss_b)
        self.step("head")
        return {"loss": loss_a + loss_b, "a": loss_a, "b": loss_b}


def two_optimizer_config(tmp_path, **changes):
    config = small_config(tmp_path / "saved", epochs=1, monitor="off")
    del config["optimizer"], config["lr_scheduler"]
    config["optimizers"] = {"features": {"type": "SGD", "args": {"lr": 0.05}, "params": "conv*"},
                            "head": {"type": "SGD", "args": {"lr": 0.05}, "params": "fc*",
                                     "lr_scheduler": {"type": "StepLR", "interval": "step",
                                                      "args": {"step_size": 5}}}}
    config["trainer"]["type"] = "TwoParts"
    config["metrics"] = []
    for key, value in changes.items():
        config["trainer"][key] = value
    path = tmp_path / "two.json"
    path.write_text(json.dumps(config))
    return str(path)


@pytest.mark.slow
def test_manual_accumulation_steps_each_optimizer_on_its_own_losses_only(tmp_path, register):
    register(TwoParts)
    config = two_optimizer_config(tmp_path, grad_accum_steps=2)
    train.main(["-c", config, "--run-id", "leaky"])
    train.main(["-c", config, "--run-id", "isolated", "-o", "trainer.args.isolate=true"])
    runs = tmp_path / "saved" / "models" / "Digits_CNN"
    leaky, isolated = (load_checkpoint(runs / run / "checkpoint-epoch1.pth")
                       for run in ("leaky", "isolated"))
    for key in leaky["state_dict"]:
        assert torch.equal(leaky["state_dict"][key], isolated["state_dict"][key]), key
    assert leaky["global_step"] == 11  # ceil(21 micro-batches / 2)
    assert leaky["lr_scheduler"]["head"]["last_epoch"] == 11  # stepped with its optimizer
    assert leaky["lr_scheduler"]["features"] is None


class TwiceStepped(TwoParts):
    def training_step(self, batch):
        result = super().training_step(batch)
        self.step("head")
        return result


class MisnamedStep(Trainer):
    automatic_optimization = False

    def training_step(self, batch):
        images, labels = batch
        loss = F.nll_loss(self.model(images), labels)
        self.backward(loss)
        self.step("generatr")
        return loss


def test_stepping_a_wrong_or_twice_named_optimizer_is_one_line_before_the_run_folder(
        tmp_path, register):
    register(MisnamedStep)
    with pytest.raises(UserError, match=r"^step\('generatr'\): no such optimizer \(the "
                                        r"config's: ''\)"):
        train.main(["-c", write(tmp_path, {"trainer.type": "MisnamedStep", "metrics": []},
                                monitor="off")])
    assert not (tmp_path / "saved").exists()
    register(TwiceStepped)
    with pytest.raises(UserError, match=r"^step\('head'\) was called twice in one "
                                        r"training_step"):
        train.main(["-c", two_optimizer_config(tmp_path).replace("TwoParts", "TwiceStepped"),
                    "-o", "trainer.type=TwiceStepped"])


def test_one_named_optimizer_trains_with_the_default_step(tmp_path):
    config = small_config(tmp_path / "saved", epochs=1)
    del config["optimizer"], config["lr_scheduler"]
    config["optimizers"] = {"main": {"type": "Adam", "args": {"lr": 0.001}}}
    path = tmp_path / "one.json"
    path.write_text(json.dumps(config))
    train.main(["-c", str(path), "--run-id", "r"])
    checkpoint = load_checkpoint(tmp_path / "saved/models/Digits_CNN/r/checkpoint-epoch1.pth")
    assert {int(state["step"]) for state in checkpoint["optimizer"]["main"]["state"].values()} \
        == {21}


class NanAtSecondStep(Trainer):
    def training_step(self, batch):
        result = super().training_step(batch)
        if self.global_step == 1:
            result["loss"] = result["loss"] * float("nan")
        return result


@pytest.mark.slow
def test_fp16_with_a_skipped_step_goes_on(tmp_path, register, capsys):
    register(NanAtSecondStep)
    train.main(["-c", write(tmp_path, {"trainer.type": "NanAtSecondStep"}, amp="fp16",
                            nan_policy="skip", epochs=1), "--run-id", "r"])
    assert "Skipped step 2: the loss is not finite (nan)." in capsys.readouterr().out
    checkpoint = load_checkpoint(tmp_path / "saved/models/Digits_CNN/r/checkpoint-epoch1.pth")
    assert checkpoint["global_step"] == 21 and checkpoint["scaler"] is not None
    assert all(torch.isfinite(value).all() for value in checkpoint["state_dict"].values())
    assert checkpoint["best_log"]["loss"] == checkpoint["best_log"]["loss"]  # not NaN


@pytest.mark.parametrize("metric, expected", [
    ("torchmetrics.text.SacreBLEUScore", "metrics.0.type: torchmetrics.text.SacreBLEUScore is "
                                         "not allowed in a config"),
    ("CLIPScore", "metrics.0.type: "),
    ("torchmetrics.functional.mean_squared_error", "metrics.0.type: "
                                                   "torchmetrics.functional.mean_squared_error is "
                                                   "not allowed in a config"),
])
def test_torchmetrics_that_load_models_or_data_are_refused(tmp_path, metric, expected):
    with pytest.raises(ConfigError) as error:
        train.main(["-c", write(tmp_path, {"metrics": [{"type": metric}]}), "--print-config"])
    assert str(error.value).startswith(expected)
    assert "not allowed" in str(error.value) or "is not in" in str(error.value)


class LoadsATeacher(Trainer):
    """A user's constructor that loads a helper model's weights from `trainer.args`."""

    def __init__(self, *args, teacher: str = "teacher.pth", **kwargs):
        super().__init__(*args, **kwargs)
        self.teacher = torch.load(teacher, weights_only=True)


def test_an_error_in_a_trainers_own_constructor_names_the_block_above_its_traceback(
        tmp_path, register):
    """Like every other block's: a line naming `trainer.type` and the class, then the user's
    traceback (where the missing file is named)."""
    from utils.errors import BuildError

    register(LoadsATeacher)
    missing = tmp_path / "teacher.pth"
    with pytest.raises(BuildError, match=r"^trainer\.type: building LoadsATeacher raised "
                                         r"FileNotFoundError; the traceback from its code:$") as raised:
        train.main(["-c", write(tmp_path, {"trainer.type": "LoadsATeacher",
                                           "trainer.args": {"teacher": str(missing)}})])
    assert str(missing) in str(raised.value.__cause__)
    assert not (tmp_path / "saved").exists()


class TwoHeads(Trainer):
    """A step with two outputs: the digit, and its parity (from the same log-probabilities)."""

    def training_step(self, batch):
        images, labels = batch
        digit = self.model(images)
        parity = torch.stack([digit[:, 0::2].logsumexp(1), digit[:, 1::2].logsumexp(1)], 1)
        return {"loss": F.nll_loss(digit, labels),
                "output": {"digit": digit, "parity": parity},
                "target": {"digit": labels, "parity": labels % 2}}


@pytest.mark.slow
def test_metrics_read_the_output_and_target_their_block_names(tmp_path, register):
    """`"output": "parity"` picks that head (and the target of the same key): the digit's
    accuracy equals the default step's, bit for bit; the parity's is its own, and a torchmetrics
    class reads its head the same way."""
    register(TwoHeads)
    metrics = [{"type": "accuracy", "name": "digit_acc", "output": "digit"},
               {"type": "accuracy", "name": "parity_acc", "output": "parity"},
               {"type": "torchmetrics.classification.MulticlassAccuracy", "name": "parity_tm",
                "args": {"num_classes": 2, "average": "micro"}, "output": "parity",
                "target": "parity"}]
    pytest.importorskip("torchmetrics")
    train.main(["-c", write(tmp_path, {"trainer.type": "TwoHeads", "metrics": metrics},
                            epochs=1), "--run-id", "heads"])
    train.main(["-c", write(tmp_path, epochs=1), "--run-id", "plain"])
    runs = tmp_path / "saved/models/Digits_CNN"
    heads = load_checkpoint(runs / "heads/checkpoint-epoch1.pth")["best_log"]
    plain = load_checkpoint(runs / "plain/checkpoint-epoch1.pth")["best_log"]
    assert heads["val_digit_acc"] == plain["val_accuracy"]
    assert heads["val_parity_acc"] == pytest.approx(heads["val_parity_tm"], abs=1e-6)
    assert heads["val_parity_acc"] != heads["val_digit_acc"]


def test_a_metric_reading_an_output_the_step_does_not_have_is_one_line(tmp_path, register):
    register(TwoHeads)
    with pytest.raises(UserError) as raised:
        train.main(["-c", write(tmp_path, {"trainer.type": "TwoHeads", "metrics": [
            {"type": "accuracy", "name": "acc", "output": "digits"}]})])
    assert str(raised.value) == ("metrics: acc reads the step's output 'digits', but the "
                                 "step's output has keys 'digit', 'parity'")
    assert not (tmp_path / "saved").exists()


@pytest.mark.slow
def test_test_py_reports_classes_of_the_head_a_metric_names_or_says_why_not(tmp_path, register,
                                                                            capsys):
    import test as test_script

    register(TwoHeads)
    config = write(tmp_path, {"trainer.type": "TwoHeads", "metrics": [
        {"type": "accuracy", "name": "parity_acc", "output": "parity"}]}, epochs=1)
    train.main(["-c", config, "--run-id", "named"])
    runs = tmp_path / "saved/models/Digits_CNN"
    capsys.readouterr()
    test_script.main(["-r", str(runs / "named")])
    out = capsys.readouterr().out
    assert "Per class, of the output 'parity':" in out
    report = json.loads((runs / "named/model_best.test.json").read_text())
    assert report["output"] == "parity" and len(report["confusion_matrix"]["counts"]) == 2
    train.main(["-c", write(tmp_path, {"trainer.type": "TwoHeads", "metrics": []}, epochs=1),
                "--run-id", "unnamed"])
    capsys.readouterr()
    test_script.main(["-r", str(runs / "unnamed")])
    assert ("No per-class report: the step's output is a dict, not one (N, C) tensor of class "
            "scores") in capsys.readouterr().out


class Distills(Trainer):
    """Distillation: a frozen teacher built in the constructor from a weights file named in
    trainer.args — out of the optimizer (built before it) and of the checkpoints (only
    `self.model` is saved) — recorded as a helper file."""

    def __init__(self, *args, teacher: str = "", **kwargs):
        super().__init__(*args, **kwargs)
        from model.model import DigitsModel

        self.teacher = DigitsModel().to(self.device).eval().requires_grad_(False)
        self.teacher.load_state_dict(load_checkpoint(self.helper_file("teacher", teacher))[
            "state_dict"])

    def training_step(self, batch):
        images, labels = batch
        output = self.model(images)
        with torch.no_grad():
            soft = self.teacher(images).exp()
        loss = F.nll_loss(output, labels) - (soft * output).sum(1).mean()
        return {"loss": loss, "output": output, "target": labels}


@pytest.mark.slow
def test_a_frozen_teacher_is_a_recorded_helper_file_and_a_changed_one_is_said(tmp_path,
                                                                              register, capsys):
    from runs.manifest import read_manifest
    from utils.checkpoint import save_checkpoint

    register(Distills)
    train.main(["-c", write(tmp_path, epochs=1), "--run-id", "teacher"])
    runs = tmp_path / "saved/models/Digits_CNN"
    teacher = runs / "teacher/checkpoint-epoch1.pth"
    train.main(["-c", write(tmp_path, {"trainer.type": "Distills",
                                       "trainer.args": {"teacher": str(teacher)}}, epochs=1),
                "--run-id", "student"])
    student = load_checkpoint(runs / "student/checkpoint-epoch1.pth")
    assert not any(key.startswith("teacher") for key in student["state_dict"])
    assert len(student["optimizer"]["param_groups"][0]["params"]) == 8  # the student's own
    session = read_manifest(runs / "student")["sessions"][0]
    assert session["helper_files"]["teacher"]["path"] == str(teacher.resolve())
    changed = load_checkpoint(teacher)
    changed["state_dict"]["fc2.bias"] += 1
    save_checkpoint(changed, teacher)
    said = f"Warning: the helper file 'teacher' ({teacher.resolve()}) is not the one this run " \
           f"was trained with"
    import test as test_script

    capsys.readouterr()
    test_script.main(["-r", str(runs / "student")])
    assert said in capsys.readouterr().out
    train.main(["-r", str(runs / "student"), "--epochs", "2"])
    assert said in (tmp_path / "saved/log/Digits_CNN/student/info.log").read_text()
