"""logger/model_summary.py: the table --dry-run prints."""
import torch
from torch import nn

from logger.model_summary import summarize
from model.model import DigitsModel


def test_summary_of_the_default_model_has_the_right_shapes_and_counts():
    model = DigitsModel()
    lines = summarize(model, torch.zeros(64, 1, 8, 8))
    rows = {line.split()[0]: line.split() for line in lines[2:7]}
    assert rows["conv1"] == ["conv1", "Conv2d", "(64,", "32,", "8,", "8)", "320", "yes"]
    assert rows["conv2"][2:6] == ["(64,", "64,", "8,", "8)"] and rows["conv2"][6] == "18,496"
    assert rows["fc1"][2:4] == ["(64,", "128)"] and rows["fc1"][4] == "131,200"
    assert rows["fc2"][2:6] == ["(64,", "10)", "1,290", "yes"]
    assert rows["dropout"][2:] == ["(64,", "128)", "(2", "calls)"]  # used twice in forward
    assert lines[-2] == "Input (64, 1, 8, 8) -> output (64, 10)"
    assert lines[-1] == "Parameters: 151,306 trainable, 0 frozen; buffers: 0 values"


def test_summary_leaves_no_hook_and_restores_the_mode():
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.ReLU())
    model[0].weight.requires_grad_(False)
    model.train()
    lines = summarize(model, torch.randn(5, 4))
    assert model.training
    assert all(not module._forward_hooks for module in model.modules())
    assert lines[2].split()[-1] == "partly" and lines[3].split()[-1] == "yes"
    assert lines[-1] == "Parameters: 9 trainable, 12 frozen; buffers: 7 values"
