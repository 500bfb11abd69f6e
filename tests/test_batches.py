"""step/batches.py: batches of any structure moved, counted and split by the default step."""
from collections import namedtuple
from dataclasses import dataclass

import pytest
import torch

from step.batches import (
    call_model,
    leading_size,
    map_tensors,
    move_to_device,
    split_batch,
)
from utils.errors import UserError

Pair = namedtuple("Pair", "inputs target")


@dataclass
class Sample:
    image: torch.Tensor
    name: str


def test_every_tensor_inside_nested_structures_is_moved_and_the_rest_kept():
    batch = {"a": (torch.ones(2), [torch.zeros(2, 3)]), "pair": Pair(torch.ones(1), 5),
             "sample": Sample(torch.ones(4), "x"), "id": "batch-1"}
    moved = move_to_device(batch, torch.device("meta"))
    assert moved["a"][0].device.type == "meta" and moved["a"][1][0].shape == (2, 3)
    assert isinstance(moved["a"], tuple) and isinstance(moved["a"][1], list)
    assert isinstance(moved["pair"], Pair) and moved["pair"].target == 5
    assert isinstance(moved["sample"], Sample) and moved["sample"].image.device.type == "meta"
    assert moved["sample"].name == "x" and moved["id"] == "batch-1"
    assert batch["a"][0].device.type == "cpu"  # the original is left as it was


def test_the_sample_count_is_dim_0_of_the_first_tensor():
    assert leading_size({"ids": ["a", "b"], "image": torch.zeros(3, 1, 8, 8)}) == 3
    assert leading_size((torch.zeros(5, 2), torch.zeros(5))) == 5
    with pytest.raises(UserError, match=r"cannot count the samples of a batch of a dict with keys "
                                        r"\['text'\].*override batch_size\(batch\)"):
        leading_size({"text": ["a", "b"]})


def test_the_default_split_of_pairs_tuples_and_dicts():
    x, y, z = torch.zeros(2, 3), torch.zeros(2, 4), torch.zeros(2)
    assert split_batch((x, z)) == (x, z)
    inputs, target = split_batch([x, y, z])
    assert inputs == (x, y) and target is z
    inputs, target = split_batch({"image": x, "features": y, "label": z})
    assert list(inputs) == ["image", "features"] and target is z
    inputs, target = split_batch({"image": x, "y_true": z}, target_key="y_true")
    assert list(inputs) == ["image"] and target is z


def test_a_batch_the_default_step_cannot_split_says_what_it_is_and_what_to_do():
    with pytest.raises(UserError) as error:
        split_batch({"image": torch.zeros(2), "features": torch.zeros(2), "cls": torch.zeros(2)})
    assert str(error.value) == (
        "batches are a dict with keys ['image', 'features', 'cls'], without a target key "
        "(target, targets, label, labels, y); name the target key with -o "
        "trainer.args.target_key=KEY, or override training_step(batch) in a Trainer subclass")
    with pytest.raises(UserError, match=r"batches are a tensor \(4, 3\); the default training "
                                        r"step takes \(inputs, target\) pairs"):
        split_batch(torch.zeros(4, 3))
    with pytest.raises(UserError, match=r"without the key 'label_id' \(trainer.args.target_key\)"):
        split_batch({"label": torch.zeros(2)}, target_key="label_id")


def test_the_model_is_called_with_keywords_for_dict_inputs_and_positions_for_tuples():
    def model(*args, **kwargs):
        return args, kwargs
    assert call_model(model, {"image": 1, "features": 2}) == ((), {"image": 1, "features": 2})
    assert call_model(model, (1, 2)) == ((1, 2), {})
    assert call_model(model, [1, 2]) == (([1, 2],), {})  # a list is one input


def test_map_tensors_keeps_the_structure():
    doubled = map_tensors({"a": [torch.ones(1)], "b": 3}, lambda t: t * 2)
    assert doubled["a"][0].item() == 2 and doubled["b"] == 3
