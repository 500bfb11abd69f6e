"""search/search_space.py: a sweep's search space over config key paths."""
import json

import optuna
import pytest

from search.search_space import sample, space_problems, trial_values
from tests.conftest import ROOT

CONFIG = json.loads((ROOT / "config.json").read_text())


@pytest.mark.parametrize("name", sorted(path.name for path in ROOT.glob("configs/search_*.json")))
def test_the_shipped_spaces_fit_the_shipped_config(name):
    space = json.loads((ROOT / "configs" / name).read_text())
    assert space_problems(space, CONFIG) == []


@pytest.mark.parametrize("space, problem", [
    ([], "expected a JSON object of config key paths"),
    ({"optimizer.args.lr": {"float": [0.1, 0.01]}}, "optimizer.args.lr: float: low 0.1 must be "
                                                    "below high 0.01"),
    ({"optimizer.args.lr": {"float": [0, 0.1], "log": True}},
     "optimizer.args.lr: log: needs a low above 0, got 0"),
    ({"optimizer.args.lr": {"float": [0.1, 1], "lgo": True}},
     "optimizer.args.lr: unknown option 'lgo' for float (log, step) (did you mean 'log'?)"),
    ({"data_loader.args.batch_size": {"int": [32.5, 128]}},
     "data_loader.args.batch_size: int: expected [low, high] of integers, got [32.5, 128]"),
    ({"data_loader.args.batch_size": {"int": [32, 128], "step": 0}},
     "data_loader.args.batch_size: step: expected a positive integer, got 0"),
    ({"arch.args.dropout": {"choice": []}},
     "arch.args.dropout: choice: expected a non-empty list of values, got []"),
    ({"arch.args.dropout": [0.1, 0.2]}, "arch.args.dropout: expected one of"),
    ({"optimiser.args.lr": {"float": [0.1, 1]}}, "optimiser: missing from the config"),
    ({"trainer.epoch": {"int": [1, 3]}}, None),  # trainer keys may be added, as with -o
])
def test_each_problem_of_a_space_is_one_line_naming_the_key_path(space, problem):
    problems = space_problems(space, CONFIG)
    if problem is None:
        assert problems == []
    else:
        assert len(problems) == 1 and problems[0].startswith(problem), problems


def test_every_problem_is_reported_at_once():
    space = {"optimizer.args.lr": {"float": [1, 0]}, "arch.args.dropout": {"choice": 0.5}}
    assert len(space_problems(space, CONFIG)) == 2


def test_samples_are_within_the_space_and_blocks_come_back_as_json():
    block = {"type": "StepLR", "args": {"step_size": 5}}
    space = {"optimizer.args.lr": {"float": [1e-4, 0.1], "log": True},
             "data_loader.args.batch_size": {"int": [32, 128], "step": 32},
             "lr_scheduler": {"choice": [block, None]}}
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = []
    for _ in range(12):
        trial = study.ask()
        values = sample(trial, space)
        assert 1e-4 <= values["optimizer.args.lr"] <= 0.1
        assert values["data_loader.args.batch_size"] in (32, 64, 96, 128)
        assert values["lr_scheduler"] in (block, None)
        assert trial_values(trial.params, space) == values  # what the study stores, decoded
        seen.append(json.dumps(values["lr_scheduler"]))
        study.tell(trial, 0.0)
    assert len(set(seen)) == 2


def test_an_infinite_bound_and_the_save_dir_are_refused_in_one_line_each():
    from search.search_space import space_problems

    config = {"optimizer": {"type": "Adam", "args": {"lr": 0.001}},
              "trainer": {"save_dir": "saved/", "epochs": 1}}
    assert space_problems({"optimizer.args.lr": {"float": [0.0, float("inf")]},
                           "trainer.save_dir": {"choice": ["a", "b"]}}, config) == [
        "optimizer.args.lr: float: bounds must be finite numbers, got [0.0, Infinity]",
        "trainer.save_dir: a sweep decides where its trials are saved (its own folder); it "
        "cannot be searched"]


def test_a_search_over_a_rate_the_schedule_sets_is_refused():
    from search.search_space import space_problems
    from tests.conftest import small_config

    config = small_config("saved")
    config["lr_scheduler"] = {"type": "OneCycleLR", "interval": "step",
                              "args": {"max_lr": 0.01, "total_steps": 63}}
    assert space_problems({"optimizer.args.lr": {"float": [0.001, 0.1], "log": True}},
                          config) == [
        "optimizer.args.lr: is not used: OneCycleLR sets the learning rate from "
        "lr_scheduler.args.max_lr; search that instead"]
    assert space_problems({"lr_scheduler.args.max_lr": {"float": [0.001, 0.1]}}, config) == []
