import pytest
import torch

from base.base_model import BaseModel
from model.loss import cross_entropy, nll_loss
from model.metric import accuracy, top_k_acc
from model.model import DigitsModel, LeNet


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
