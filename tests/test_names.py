"""config/names.py: config `type` names to callables, safely, and their arguments checked."""
import pytest
import torch
import torchvision

import model.model as module_arch
from config.names import resolve_type
from config.signatures import check_signature
from parse_config import ConfigParser
from tests.conftest import small_config
from utils.errors import ConfigError


def test_dotted_type_inside_allow_list_resolves():
    assert resolve_type("torch.nn.CrossEntropyLoss", torch.optim, "loss") is torch.nn.CrossEntropyLoss
    assert resolve_type("torchvision.models.resnet18", module_arch, "arch.type") is \
        torchvision.models.resnet18


@pytest.mark.parametrize("name", ["os.system", "subprocess.run", "builtins.eval", "eval",
                                  "torch.os.system", "torch._C._nn", "model.model.__class__",
                                  "__import__", "torch.hub.load", "torch.load",
                                  "torch.serialization.load", "torch.jit.load",
                                  "torchvision.io.write_png", "torch.utils.cpp_extension.load"])
def test_unsafe_names_are_refused_without_running(name, tmp_path):
    marker = tmp_path / "ran"
    config = small_config(tmp_path)
    config["arch"] = {"type": name, "args": {}}
    with pytest.raises(ConfigError, match=r"^arch\.type: "):
        ConfigParser(config).init_obj("arch", module_arch, f"touch {marker}")
    assert not marker.exists()


def test_a_name_missing_from_its_module_suggests_the_nearest():
    with pytest.raises(ConfigError, match=r"^optimizer\.type: 'SDG' is not in torch\.optim "
                                          r"\(did you mean 'SGD'\?\)"):
        resolve_type("SDG", torch.optim, "optimizer.type")


@pytest.mark.parametrize("args, message", [
    ({"step_size": "abc"}, r"^lr_scheduler\.args\.step_size: expected an integer, got \"abc\""),
    ({"step_size": 1.5}, r"^lr_scheduler\.args\.step_size: expected an integer, got 1\.5"),
    ({"step_size": 2, "gamma": "0.1"}, r"^lr_scheduler\.args\.gamma: expected a number"),
    ({"step_size": 2, "gamma": True}, r"^lr_scheduler\.args\.gamma: expected a number"),
])
def test_json_values_of_the_wrong_type_are_refused_before_the_call(args, message):
    with pytest.raises(ConfigError, match=message):
        check_signature(torch.optim.lr_scheduler.StepLR, (None,), args, "lr_scheduler.args")


def test_values_of_the_right_type_pass_the_check():
    check_signature(torch.optim.lr_scheduler.StepLR, (None,), {"step_size": 2, "gamma": 1},
                    "lr_scheduler.args")  # an integer is a fine float
    check_signature(torch.optim.Adam, (None,), {"lr": 0.01, "amsgrad": True, "fused": None},
                    "optimizer.args")


def test_a_missing_required_argument_names_the_key_path():
    with pytest.raises(ConfigError, match=r"^lr_scheduler\.args: missing a required argument: "
                                          r"'step_size'"):
        check_signature(torch.optim.lr_scheduler.StepLR, (None,), {}, "lr_scheduler.args")
