"""utils/plain_data.py: a state read from a file checked against the make of this run's own."""
import pytest
import torch

from utils.plain_data import describe, kind_problem


@pytest.mark.parametrize("fresh, saved", [
    (0.1, 1), (3, 2.5), (0.1, torch.tensor(0.5)), (torch.tensor(1.0), 2.0), (True, False),
    ("min", "max"), ([1, 2], (3.0, 4.0)), ({"a": 1, "b": [1.0]}, {"a": 2}),  # keys it lacks
    (None, "anything"), (torch.zeros(3), torch.ones(3)), ({"a": None}, {"a": [1], "extra": "x"}),
])
def test_states_of_the_same_make_fit(fresh, saved):
    assert kind_problem(fresh, saved, "s") is None


@pytest.mark.parametrize("fresh, saved, message", [
    (0.1, "0.1", "s is a string, not a number"),
    (0.1, True, "s is true/false, not a number"),
    (True, 1, "s is a number, not true/false"),
    ([0.1], [], "s is a list of 0, not a list of 1"),
    ({"base_lrs": [0.1, 0.2]}, {"base_lrs": [0.1, "x"]}, "s.base_lrs[1] is a string, not a number"),
    (torch.zeros(5, dtype=torch.uint8), torch.zeros(3, dtype=torch.uint8),
     "s is a tensor of shape (3,) torch.uint8, not a tensor of shape (5,) torch.uint8"),
    (torch.zeros(5), torch.zeros(5, dtype=torch.float64), "torch.float64, not a tensor"),
    ({"a": {"b": 1}}, {"a": None}, "s.a is null, not a dict"),
])
def test_a_state_of_another_make_is_named_by_its_path(fresh, saved, message):
    assert message in kind_problem(fresh, saved, "s")


def test_a_deeply_nested_state_is_checked_without_recursion():
    fresh: list = [1.0]
    saved: list = ["x"]
    for _ in range(5000):
        fresh, saved = [fresh], [saved]
    assert kind_problem(fresh, saved, "s").endswith("is a string, not a number")


def test_describe_names_kinds_for_messages():
    assert describe(torch.zeros(2, 3)) == "a tensor of shape (2, 3) torch.float32"
    assert [describe(v) for v in (None, "x", {}, (1, 2), 1.5, False)] == \
        ["null", "a string", "a dict", "a list of 2", "a number", "true/false"]
