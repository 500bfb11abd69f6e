"""config/key_paths.py: dotted key paths and the `-o key.path=value` overrides."""
import pytest

from config.key_paths import apply_modifications, get_by_path, parse_overrides
from parse_config import ConfigParser
from tests.conftest import small_config
from utils.errors import ConfigError


def test_override_values_parse_as_json_when_they_can():
    assert parse_overrides(["a=3", "b=0.5", "c=true", "d=null", "e=[1, 2]", "f=word"]) == \
        {"a": 3, "b": 0.5, "c": True, "d": None, "e": [1, 2], "f": "word"}
    with pytest.raises(ConfigError, match="expected key.path=value"):
        parse_overrides(["trainer.epochs"])


def test_overrides_may_add_keys_inside_args_and_in_trainer_only(tmp_path):
    config = ConfigParser(small_config(tmp_path), modification={
        "optimizer.args.weight_decay": 0.1, "arch.args.dropout": 0.2, "trainer.len_epoch": 7,
        "metrics.1": "accuracy"})
    assert config["optimizer"]["args"]["weight_decay"] == 0.1
    assert config["arch"]["args"]["dropout"] == 0.2 and config["trainer"]["len_epoch"] == 7
    assert config["metrics"] == ["accuracy", "accuracy"]
    with pytest.raises(ConfigError) as error:
        ConfigParser(small_config(tmp_path), modification={"arch.tpye": "X", "trainr.epochs": 1})
    assert str(error.value).splitlines() == [
        "arch.tpye: not in the config (did you mean 'type'?); new keys can only be added inside "
        "an args block, in trainer, as a section or as a block's option (arch.init, arch.freeze, "
        "optimizer.param_groups, ...)",
        "trainr: missing from the config (did you mean 'trainer'?)"]


def test_an_override_past_the_end_of_a_list_or_into_a_value_says_what_to_do(tmp_path):
    with pytest.raises(ConfigError) as error:
        ConfigParser(small_config(tmp_path), modification={"metrics.5": "accuracy",
                                                           "name.x": 1})
    assert str(error.value).splitlines() == [
        "metrics.5: the list has 2 entries (indices 0 to 1); to change its length set the whole "
        "list, e.g. -o 'metrics=[...]'",
        "name: is \"Digits_CNN\", not a JSON object; cannot set 'x' in it"]


def test_get_by_path_reads_list_elements_and_names_the_missing_key():
    config = {"metrics": ["accuracy", {"type": "top_k_acc"}], "trainer": {"epochs": 3}}
    assert get_by_path(config, "metrics.1.type") == "top_k_acc"
    with pytest.raises(ConfigError, match=r"^trainer\.epoch: missing from the config \(did you "
                                          r"mean 'epochs'\?\)"):
        get_by_path(config, "trainer.epoch")


def test_apply_modifications_leaves_the_original_untouched():
    config = {"trainer": {"epochs": 3}}
    changed = apply_modifications(config, {"trainer.epochs": 5})
    assert changed["trainer"]["epochs"] == 5 and config["trainer"]["epochs"] == 3


def test_a_key_inside_an_absent_block_option_says_to_set_the_whole_block(tmp_path):
    with pytest.raises(ConfigError, match=r"^arch\.init\.type: arch\.init is not in the config; "
                                          r"set the whole block, e\.g\. -o 'arch\.init=\{\.\.\.\}'"):
        ConfigParser(small_config(tmp_path), modification={"arch.init.type": "zeros_"})
    # a trainer option block (trainer.ema, trainer.watch, ...) set key by key
    with pytest.raises(ConfigError, match=r"^trainer\.ema\.decay: trainer\.ema is not in the "
                                          r"config; set the whole block, e\.g\. "
                                          r"-o 'trainer\.ema=\{\"decay\": \.\.\.\}'$"):
        ConfigParser(small_config(tmp_path), modification={"trainer.ema.decay": 0.99})
