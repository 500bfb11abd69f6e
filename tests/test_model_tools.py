"""arch.init / arch.freeze / arch.weights and optimizer.param_groups, from JSON alone."""
import json
import math

import pytest
import torch

import train
from builder.model_tools import freeze, initialise, parameter_groups
from config.model_options import arch_problems, param_group_problems, resolve_init
from model.model import DigitsModel
from parse_config import ConfigParser
from tests.conftest import run_folders, run_main, small_config
from utils.checkpoint import load_checkpoint
from utils.errors import ConfigError
from utils.seeding import seed_everything


def build(tmp_path, **changes):
    """The Trainer `train.py` builds for the small config with `changes` (dotted keys)."""
    config = ConfigParser(small_config(tmp_path / "saved"), modification=changes)
    config.validate(train.blocks())
    seed_everything(config["seed"])  # as train.py does: the same initial weights each time
    return train.build_trainer(config)


def test_init_applies_the_function_to_the_named_layers_and_zeroes_their_biases(tmp_path):
    trainer = build(tmp_path, **{"arch.init": {"type": "kaiming_normal_", "layers": ["Linear"],
                                               "args": {"nonlinearity": "relu"}}})
    model = trainer.model
    fan_in = model.fc1.weight.shape[1]
    # kaiming normal: std sqrt(2 / fan_in); the default init has sqrt(1 / (3 fan_in)), 2.4x less
    assert model.fc1.weight.std().item() == pytest.approx(math.sqrt(2 / fan_in), rel=0.05)
    assert torch.count_nonzero(model.fc1.bias) == 0 and torch.count_nonzero(model.fc2.bias) == 0
    default = build(tmp_path).model
    assert torch.equal(model.conv1.weight, default.conv1.weight)  # not a Linear: untouched
    assert torch.count_nonzero(model.conv1.bias) > 0


def test_init_counts_the_layers_it_visits():
    model = DigitsModel()
    count = initialise(model, torch.nn.init.constant_, {"val": 0.5}, (torch.nn.Conv2d,))
    assert count == 2 and torch.all(model.conv2.weight == 0.5)


@pytest.mark.parametrize("spec, expected", [
    ({"type": "kaiming_normall_"}, "arch.init.type: \"kaiming_normall_\" is not an initialiser "
                                   "in torch.nn.init (one ending in _, such as kaiming_normal_) "
                                   "(did you mean 'kaiming_normal_'?)"),
    ({"type": "normal_", "args": {"sd": 1}}, "arch.init.args: unexpected argument 'sd' for "
                                             "torch.nn.init.normal_ (did you mean 'std'?)"),
    ({"type": "zeros_", "layers": ["Conv2D"]}, "arch.init.layers.0: \"Conv2D\" is not a layer in "
                                               "torch.nn (did you mean 'Conv2d'?)"),
    ({"type": "zeros_", "layer": ["Conv2d"]}, "arch.init.layer: unknown key (one of type, args, "
                                              "layers) (did you mean 'layers'?)"),
])
def test_init_mistakes_are_one_line_with_the_key_path(spec, expected):
    assert arch_problems({"type": "DigitsModel", "init": spec}) == [expected]


def test_init_default_layers_are_convolutions_and_linear_layers():
    _, _, layers = resolve_init({"type": "xavier_uniform_"})
    assert [layer.__name__ for layer in layers] == ["Conv1d", "Conv2d", "Conv3d", "Linear"]


def test_frozen_parameters_are_bit_identical_after_training_and_others_moved(tmp_path):
    start = build(tmp_path).model.state_dict()  # the same seed gives the same initial weights
    config = small_config(tmp_path / "saved", epochs=2)
    config["arch"]["freeze"] = ["conv*"]
    (tmp_path / "c.json").write_text(json.dumps(config))
    train.main(["-c", str(tmp_path / "c.json")])
    run, = run_folders(tmp_path / "saved")
    trained = load_checkpoint(run / "checkpoint-epoch2.pth")
    for name in ("conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias"):
        assert torch.equal(trained["state_dict"][name], start[name]), name
    for name in ("fc1.weight", "fc2.bias"):
        assert not torch.equal(trained["state_dict"][name], start[name]), name
    # the optimizer was given only the trainable ones: 4 of the 8 tensors
    assert len(trained["optimizer"]["param_groups"][0]["params"]) == 4


def test_a_freeze_pattern_matching_nothing_names_the_pattern():
    with pytest.raises(ConfigError) as error:
        freeze(DigitsModel(), ["conv1.*", "feature.*"])
    assert str(error.value).startswith("arch.freeze.1: 'feature.*' matches no parameter")
    assert "conv1.weight" in str(error.value)


def test_param_groups_give_options_by_pattern_and_the_rest_a_default_group():
    model = DigitsModel()
    groups = parameter_groups(model, [{"params": "fc2.*", "lr": 0.01},
                                      {"params": ["conv1.weight"], "weight_decay": 0.1}])
    assert [len(group["params"]) for group in groups] == [5, 2, 1]
    assert groups[1]["lr"] == 0.01 and groups[1]["params"][0] is model.fc2.weight
    with pytest.raises(ConfigError, match=r"^optimizer\.param_groups\.1\.params: fc2\.bias is "
                                          r"already in group 0"):
        parameter_groups(model, [{"params": "fc2.*"}, {"params": "*.bias"}])


def test_param_group_mistakes_name_the_key_path():
    optimizer = {"type": "SGD", "args": {"lr": 0.1},
                 "param_groups": [{"params": "fc.*", "lr": 0.01, "momentun": 0.9}, {"lr": 1}]}
    problems = param_group_problems(optimizer)
    assert problems[0].startswith("optimizer.param_groups.0.momentun: not an option of the "
                                  "optimizer") and problems[0].endswith("(did you mean "
                                                                        "'momentum'?)")
    assert problems[1].startswith("optimizer.param_groups.1.params: expected a parameter name "
                                  "pattern")


@pytest.mark.slow
def test_param_groups_train_and_a_resume_changes_only_what_changed(tmp_path, capsys):
    config = small_config(tmp_path / "saved", epochs=2, verbosity=2)
    config["optimizer"]["param_groups"] = [{"params": "fc2.*", "lr": 0.01}]
    (tmp_path / "c.json").write_text(json.dumps(config))
    train.main(["-c", str(tmp_path / "c.json"), "--epochs", "1"])
    assert "| lr 1.00e-03, 1.00e-02" in capsys.readouterr().out  # every group's rate
    run, = run_folders(tmp_path / "saved")
    groups = load_checkpoint(run / "checkpoint-epoch1.pth")["optimizer"]["param_groups"]
    assert [(len(g["params"]), g["lr"]) for g in groups] == [(6, 0.001), (2, 0.01)]
    train.main(["-r", str(run / "checkpoint-epoch1.pth"), "--epochs", "2", "--lr", "0.0005"])
    groups = load_checkpoint(run / "checkpoint-epoch2.pth")["optimizer"]["param_groups"]
    assert [g["lr"] for g in groups] == [0.0005, 0.01]  # --lr is the default group's


def write_weights(tmp_path, model) -> str:
    path = tmp_path / "weights.pth"
    torch.save(model.state_dict(), path)
    return str(path)


def test_weights_start_from_a_state_dict_and_skip_init(tmp_path):
    source = DigitsModel()
    trainer = build(tmp_path, **{"arch.weights": write_weights(tmp_path, source),
                                 "arch.init": {"type": "zeros_"}})
    for name, value in source.state_dict().items():
        assert torch.equal(trainer.model.state_dict()[name], value), name


def test_a_strict_load_of_mismatched_weights_fails_with_a_readable_report(tmp_path):
    state = DigitsModel(num_classes=5).state_dict()
    del state["fc1.bias"]
    state["head.weight"] = torch.zeros(3)
    path = tmp_path / "weights.pth"
    torch.save(state, path)
    config = small_config(tmp_path / "saved")
    config["arch"]["weights"] = str(path)
    (tmp_path / "c.json").write_text(json.dumps(config))
    result = run_main("train.py", "-c", str(tmp_path / "c.json"), check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [
        f"error: arch.weights: {path}: weights do not fit DigitsModel (missing keys: fc1.bias; "
        f"unexpected keys: head.weight; shape mismatch (file vs model): fc2.weight (5, 128) vs "
        f"(10, 128), fc2.bias (5,) vs (10,))"]
    assert not (tmp_path / "saved").exists()


def test_a_loose_load_takes_what_fits_and_reports_the_rest(tmp_path):
    source = DigitsModel(num_classes=5)
    path = write_weights(tmp_path, source)
    trainer = build(tmp_path, **{"arch.weights": {"path": path, "strict": False}})
    assert torch.equal(trainer.model.fc1.weight, source.fc1.weight)
    assert trainer.model.fc2.weight.shape == (10, 128)  # kept its own
    assert trainer.model_notes == [  # logged to the console and info.log when the run opens
        f"arch.weights: 6 of 8 tensors from {path}",
        "arch.weights: not loaded: shape mismatch (file vs model): fc2.weight (5, 128) vs "
        "(10, 128), fc2.bias (5,) vs (10,)"]


def test_a_file_of_pickled_objects_is_refused(tmp_path):
    path = tmp_path / "model.pth"
    torch.save(DigitsModel(), path)  # the whole module, not its state dict
    with pytest.raises(Exception, match="arch.weights: .*holds pickled objects"):
        build(tmp_path, **{"arch.weights": str(path)})


@pytest.mark.slow
def test_the_fine_tuning_config_trains_on_the_digits(tmp_path):
    """configs/digits_finetune.json: weights of a default run, frozen convolutions, a faster
    head; run from a copy of the project layout's relative paths."""
    run_main("train.py", "-c", "config.json", "--epochs", "1", "--run-id", "pretrained",
               "-o", f"trainer.save_dir={tmp_path}")
    pretrained = tmp_path / "models" / "Digits_CNN" / "pretrained" / "model_best.pth"
    run_main("train.py", "-c", "configs/digits_finetune.json", "--epochs", "2",
               "-o", f"trainer.save_dir={tmp_path}", "-o", f"arch.weights.path={pretrained}")
    run, = run_folders(tmp_path, "Digits_CNN_finetune")
    start, tuned = load_checkpoint(pretrained), load_checkpoint(run / "checkpoint-epoch2.pth")
    assert torch.equal(tuned["state_dict"]["conv2.weight"], start["state_dict"]["conv2.weight"])
    assert not torch.equal(tuned["state_dict"]["fc2.weight"], start["state_dict"]["fc2.weight"])
    assert [g["lr"] for g in tuned["optimizer"]["param_groups"]] == [0.0001, 0.001]
    assert tuned["monitor_best"] < start["monitor_best"]  # went on from the pretrained model


def test_the_checks_that_need_the_model_are_reported_together(tmp_path):
    config = small_config(tmp_path / "saved", watch={"activations": ["conv9"],
                                                     "grad_stats": ["conv1.*"]})
    config["arch"]["freeze"] = ["conv1.*", "feature.*"]
    config["optimizer"]["param_groups"] = [{"params": "conv1.weight", "lr": 0.1}]
    (tmp_path / "c.json").write_text(json.dumps(config))
    result = run_main("train.py", "-c", str(tmp_path / "c.json"), "--dry-run", check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    lines = result.stderr.splitlines()
    assert [line.split(":")[0] for line in lines] == [
        "error", "error", "error", "error"]
    assert [line.split(": ")[1] for line in lines] == [
        "arch.freeze.1", "optimizer.param_groups.0.params.0", "trainer.watch.activations.0",
        "trainer.watch.grad_stats.0"]
    assert "matches only frozen parameters" in lines[1] and "only frozen parameters" in lines[3]


def test_freezing_every_parameter_is_an_error_naming_freeze(tmp_path):
    with pytest.raises(ConfigError, match=r"^arch\.freeze: every parameter is frozen"):
        build(tmp_path, **{"arch.freeze": ["*"]})


@pytest.mark.slow
def test_a_resume_with_other_frozen_parameters_starts_the_optimizer_fresh(tmp_path, capsys):
    config = small_config(tmp_path / "saved", epochs=2)
    (tmp_path / "c.json").write_text(json.dumps(config))
    train.main(["-c", str(tmp_path / "c.json"), "--epochs", "1"])
    run, = run_folders(tmp_path / "saved")
    capsys.readouterr()
    train.main(["-r", str(run / "checkpoint-epoch1.pth"), "--epochs", "2",
                "-o", 'arch.freeze=["conv1.*"]'])
    assert "which parameters it trains in which group (arch.freeze, optimizer.param_groups), " \
           "differs from the checkpoint's; its state is not restored." in capsys.readouterr().out
    resumed = load_checkpoint(run / "checkpoint-epoch2.pth")
    assert resumed["param_group_names"] == [["conv2.weight", "conv2.bias", "fc1.weight",
                                             "fc1.bias", "fc2.weight", "fc2.bias"]]


def test_weights_names_are_aligned_with_the_model(tmp_path):
    """A torch.compile'd model's file, and torchvision's own file for TorchvisionClassifier."""
    from model.model import TorchvisionClassifier
    from utils.weights import load_model_state

    source = DigitsModel()
    compiled = {f"_orig_mod.{key}": value for key, value in source.state_dict().items()}
    target = DigitsModel()
    assert load_model_state(target, compiled, "c.pth") == (8, [])
    assert torch.equal(target.fc1.weight, source.fc1.weight)

    import torchvision
    plain = torchvision.models.resnet18(num_classes=10).state_dict()  # names without network.
    wrapped = TorchvisionClassifier("resnet18", num_classes=10)
    loaded, problems = load_model_state(wrapped, plain, "resnet18.pth")
    assert (loaded, problems) == (len(plain), [])
    assert torch.equal(wrapped.network.layer1[0].conv1.weight, plain["layer1.0.conv1.weight"])


def test_a_loose_load_where_nothing_fits_is_an_error(tmp_path):
    from utils.errors import CheckpointError
    from utils.weights import load_model_state

    with pytest.raises(CheckpointError, match=r"no tensor fits DigitsModel \(the file's names "
                                              r"are like 'head\.weight'"):
        load_model_state(DigitsModel(), {"head.weight": torch.zeros(3)}, "x.pth", strict=False)


def test_weights_that_are_not_a_torch_file_say_so(tmp_path):
    from utils.checkpoint import read_weights
    from utils.errors import CheckpointError

    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x00\x01 not a zip")
    with pytest.raises(CheckpointError, match=r"junk\.pth: not a weights file \(not a file "
                                              r"written by torch\.save\)"):
        read_weights(junk)


def test_names_are_not_renamed_when_that_makes_few_of_them_fit():
    """A DigitsModel file given to a ResNet: the report shows the file's own names."""
    from model.model import TorchvisionClassifier
    from utils.errors import CheckpointError
    from utils.weights import load_model_state

    with pytest.raises(CheckpointError) as error:
        load_model_state(TorchvisionClassifier("resnet18", 10, in_channels=1),
                         DigitsModel().state_dict(), "digits.pth")
    assert "unexpected keys: conv1.weight, conv1.bias" in str(error.value)
