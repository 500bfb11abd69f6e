import pytest
import torch

from base.base_model import BaseModel
from model.loss import cross_entropy, nll_loss
from model.metric import accuracy, top_k_acc
from model.model import DigitsModel, LeNet, TorchvisionClassifier


def test_digits_model_gives_log_probabilities_per_class():
    output = DigitsModel().eval()(torch.rand(5, 1, 8, 8))
    assert output.shape == (5, 10)
    assert torch.allclose(output.exp().sum(dim=1), torch.ones(5), atol=1e-5)


def test_lenet_takes_mnist_images():
    assert LeNet(num_classes=7)(torch.rand(2, 1, 28, 28)).shape == (2, 7)


def test_base_model_is_abstract_and_prints_trainable_count():
    class NoForward(BaseModel):
        pass

    with pytest.raises(TypeError, match="abstract"):
        NoForward()
    model = DigitsModel()
    model.fc2.weight.requires_grad_(False)
    expected = sum(p.numel() for p in model.parameters()) - model.fc2.weight.numel()
    assert str(model).endswith(f"Trainable parameters: {expected:,}")


def test_accuracy_and_top_k():
    output = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.2, 0.7], [0.3, 0.4, 0.3]])
    target = torch.tensor([0, 1, 2])
    assert accuracy(output, target).item() == pytest.approx(1 / 3)
    assert top_k_acc(output, target, k=2).item() == pytest.approx(2 / 3)
    assert top_k_acc(output, target, k=5).item() == 1.0   # k capped at the class count


def test_losses_match_torch():
    logits, target = torch.randn(4, 3), torch.tensor([0, 2, 1, 1])
    assert torch.allclose(nll_loss(logits.log_softmax(1), target), cross_entropy(logits, target))


def test_base_model_summary_shapes_for_the_default_model():
    lines = DigitsModel().summary((1, 8, 8)).splitlines()
    column = lines[0].index("output shape")
    shapes = {line.split()[0]: line[column:].split("  ")[0] for line in lines[2:7]}
    assert shapes == {"conv1": "(2, 32, 8, 8)", "conv2": "(2, 64, 8, 8)",
                      "dropout": "(2, 128) (2 calls)", "fc1": "(2, 128)", "fc2": "(2, 10)"}
    assert lines[-2] == "Input (2, 1, 8, 8) -> output (2, 10)"


@pytest.mark.parametrize("name, in_channels, size", [("resnet18", 1, 8),
                                                     ("mobilenet_v3_small", 3, 32)])
def test_torchvision_classifier_replaces_the_head_and_adapts_the_input(name, in_channels, size):
    model = TorchvisionClassifier(name, num_classes=7, in_channels=in_channels)
    assert model(torch.rand(2, in_channels, size, size)).shape == (2, 7)
    first_conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert first_conv.in_channels == in_channels


def test_torchvision_classifier_spreads_pretrained_filters_over_new_channels():
    import torch.nn as nn

    from model.model import _adapted_conv

    rgb = nn.Conv2d(3, 4, 3)
    gray = _adapted_conv(rgb, 1)
    image = torch.rand(1, 1, 5, 5)
    # a grayscale image through the new filter == the same image in all three RGB channels
    assert torch.allclose(gray(image), rgb(image.repeat(1, 3, 1, 1)), atol=1e-6)


def test_torchvision_classifier_names_a_wrong_model():
    from utils.errors import ConfigError

    with pytest.raises(ConfigError, match="'resnt18' is not a torchvision classification model "
                                          r"\(did you mean 'resnet18'\?\)"):
        TorchvisionClassifier("resnt18", num_classes=10)


@pytest.mark.slow
def test_an_arch_type_that_returns_no_module_is_one_line(tmp_path, monkeypatch):
    """A function named as arch.type (a factory) must return a model; anything else is the
    config's mistake, named before anything is written."""
    import json

    import model.model as module_arch
    import train
    from tests.conftest import small_config
    from utils.errors import ConfigError

    def layer_sizes():
        return [64, 32, 10]
    layer_sizes.__module__ = "model.model"  # as if written there
    monkeypatch.setattr(module_arch, "layer_sizes", layer_sizes, raising=False)
    config = small_config(tmp_path / "saved")
    config["arch"] = {"type": "layer_sizes", "args": {}}
    (tmp_path / "c.json").write_text(json.dumps(config))
    with pytest.raises(ConfigError, match=r"^arch\.type: 'layer_sizes' returned a list, not a "
                                          r"torch\.nn\.Module$"):
        train.main(["-c", str(tmp_path / "c.json")])
    assert not (tmp_path / "saved").exists()
