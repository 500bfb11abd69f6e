"""config/checks.py: the whole config checked up front, every problem at once.

The table drives the real `train.main` / `test.main` through `run_cli` in this process (the CLI's
own exit path), so each broken config costs milliseconds; test_train_cli.py runs a few of them
in fresh processes as a user does.
"""
import json
from pathlib import Path

import pytest
import torch

import test as test_script
import train
from config.checks import find_problems
from parse_config import ConfigParser
from tests.conftest import small_config
from utils.cli import run_cli
from utils.errors import ConfigError


def write(tmp_path: Path, mutate=None, text: str | None = None, name="bad.json") -> str:
    """A config file under `tmp_path`: the shrunk real config changed by `mutate`, or `text`."""
    config = small_config(tmp_path / "saved")
    if mutate is not None:
        mutate(config)
    path = tmp_path / name
    path.write_text(text if text is not None else json.dumps(config))
    return str(path)


def change(path: str, value) -> callable:
    """A `mutate` that sets the dotted key `path` (creating nothing but the leaf)."""
    def mutate(config):
        *parents, leaf = path.split(".")
        node = config
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        node[int(leaf) if isinstance(node, list) else leaf] = value
    return mutate


def remove(path: str) -> callable:
    def mutate(config):
        *parents, leaf = path.split(".")
        node = config
        for key in parents:
            node = node[key]
        del node[leaf]
    return mutate


def junk_checkpoint(tmp_path: Path) -> str:
    (tmp_path / "junk.pth").write_bytes(b"\x00not a checkpoint at all")
    return str(tmp_path / "junk.pth")


def foreign_checkpoint(tmp_path: Path) -> str:
    torch.save({"model": {"w": torch.zeros(2)}}, tmp_path / "other.pth")  # a valid torch file
    return str(tmp_path / "other.pth")


def empty_folder(tmp_path: Path) -> Path:
    (tmp_path / "empty_run").mkdir()
    return tmp_path / "empty_run"


C = ["-c"]  # most cases pass a config file
CASES = [
    # ---- the file itself
    ("json_comment", lambda t: C + [write(t, text='{\n  // my run\n  "name": "x"\n}')],
     ["bad.json:2:3: invalid JSON", "// comments"]),
    ("trailing_comma", lambda t: C + [write(t, text='{"name": "x",\n}')],
     ["bad.json:2:1: invalid JSON", "trailing commas"]),
    ("single_quotes", lambda t: C + [write(t, text="{'name': 'x'}")],
     ["bad.json:1:2: invalid JSON", "single quotes"]),
    ("missing_file", lambda t: C + [str(t / "nope.json")], ["nope.json: no such file"]),
    ("not_an_object", lambda t: C + [write(t, text="[1, 2]")],
     ["bad.json: the config must be a JSON object"]),
    # ---- top level
    ("missing_name", lambda t: C + [write(t, remove("name"))], ["name: expected a plain folder"]),
    ("name_with_slash", lambda t: C + [write(t, change("name", "a/b"))],
     ["name: expected a plain folder name"]),
    ("negative_seed", lambda t: C + [write(t, change("seed", -1))],
     ["seed: expected an integer from 0 to 4294967295, got -1"]),
    ("n_gpu_text", lambda t: C + [write(t, change("n_gpu", "one"))],
     ['n_gpu: expected an integer from 0 to 1024, got "one"']),
    ("section_typo", lambda t: C + [write(t, lambda c: c.update(lr_schedular=c.pop("lr_scheduler")))],
     ["lr_schedular: unknown key (did you mean 'lr_scheduler'?)"]),
    ("missing_arch", lambda t: C + [write(t, remove("arch"))], ["arch: missing from the config"]),
    ("missing_trainer", lambda t: C + [write(t, remove("trainer"))], ["trainer: missing"]),
    # ---- names and arguments
    ("arch_typo", lambda t: C + [write(t, change("arch.type", "DigitsModle"))],
     ["arch.type: 'DigitsModle' is not in model.model (did you mean 'DigitsModel'?)"]),
    ("arch_unknown_arg", lambda t: C + [write(t, change("arch.args.dropuot", 0.1))],
     ["arch.args: unexpected argument 'dropuot'", "did you mean 'dropout'"]),
    ("block_key_typo", lambda t: C + [write(t, change("optimizer.arsg", {}))],
     ["optimizer.arsg: unknown key", "did you mean 'args'"]),
    ("loader_typo", lambda t: C + [write(t, change("data_loader.type", "DigitLoader"))],
     ["data_loader.type: 'DigitLoader' is not in data_loader.data_loaders (did you mean"]),
    ("optimizer_typo", lambda t: C + [write(t, change("optimizer.type", "Adamm"))],
     ["optimizer.type: 'Adamm' is not in torch.optim (did you mean 'Adam'?)"]),
    ("optimizer_arg_typo", lambda t: C + [write(t, change("optimizer.args.lrr", 0.1))],
     ["optimizer.args: unexpected argument 'lrr' for torch.optim.Adam (did you mean 'lr'?)"]),
    ("lr_as_text", lambda t: C + [write(t, change("optimizer.args.lr", "1e-3"))],
     ['optimizer.args.lr: expected a number, got "1e-3"']),
    ("lr_negative", lambda t: C + [write(t, change("optimizer.args.lr", -1))],
     ["optimizer.args: Invalid learning rate: -1"]),
    ("scheduler_missing_arg", lambda t: C + [write(t, remove("lr_scheduler.args.step_size"))],
     ["lr_scheduler.args: missing a required argument: 'step_size' for "
      "torch.optim.lr_scheduler.StepLR"]),
    ("scheduler_typo", lambda t: C + [write(t, change("lr_scheduler.type", "StepLr"))],
     ["lr_scheduler.type: 'StepLr' is not in torch.optim.lr_scheduler (did you mean 'StepLR'?)"]),
    ("loss_typo", lambda t: C + [write(t, change("loss", "nll"))],
     ["loss: 'nll' is not in model.loss (did you mean 'nll_loss'?)"]),
    ("metric_typo", lambda t: C + [write(t, change("metrics.0", "acuracy"))],
     ["metrics.0: 'acuracy' is not in model.metric (nor in torchmetrics) (did you mean "
      "'accuracy'?)"]),
    ("metric_twice", lambda t: C + [write(t, change("metrics", ["accuracy", "accuracy"]))],
     ['metrics.1: the name "accuracy" is taken by metrics.0']),
    ("metrics_not_a_list", lambda t: C + [write(t, change("metrics", "accuracy"))],
     ['metrics: expected a list, got "accuracy"']),
    # ---- safe names
    ("os_system", lambda t: C + [write(t, change("arch.type", "os.system"))],
     ["arch.type: 'os.system' is outside the modules a config may use (torch.nn, "]),
    ("builtins_eval", lambda t: C + [write(t, change("loss", "builtins.eval"))],
     ["loss: 'builtins.eval' is outside the modules"]),
    ("torch_hub", lambda t: C + [write(t, change("arch.type", "torch.hub.load"))],
     ["arch.type: 'torch.hub.load' is outside the modules"]),
    ("private_name", lambda t: C + [write(t, change("arch.type", "torch._C._nn"))],
     ["arch.type: 'torch._C._nn' is not allowed (private or invalid name '_C')"]),
    ("collect_env_run", lambda t: C + [write(t, change("arch.type", "torch.utils.collect_env.run"))],
     ["arch.type: 'torch.utils.collect_env.run' is outside the modules a config may use"]),
    ("through_a_module", lambda t: C + [write(t, change("loss", "torch.nn.functional.torch.load"))],
     ["loss: torch.nn.functional.torch is the module torch, outside the modules"]),
    ("project_writer", lambda t: C + [write(t, change("loss", "utils.checkpoint.save_checkpoint"))],
     ["loss: 'utils.checkpoint.save_checkpoint' is outside the modules"]),
    ("import_in_own_module", lambda t: C + [write(t, change("data_loader.type", "UserError"))],
     ["data_loader.type: data_loader.data_loaders.UserError comes from utils.errors, outside"]),
    ("arch_not_a_module", lambda t: C + [write(t, change("arch.type", "torch.optim.Adam"))],
     ["arch.type: 'torch.optim.Adam' is not a subclass of Module (it is a Optimizer subclass)"]),
    ("optimizer_not_an_optimizer", lambda t: C + [write(t, change("optimizer.type", "torch.nn.Linear"))],
     ["optimizer.type: 'torch.nn.Linear' is not a subclass of Optimizer"]),
    ("no_forbidden_suggestion", lambda t: C + [write(t, change("data_loader.type", "UserErr"))],
     ["data_loader.type: 'UserErr' is not in data_loader.data_loaders\n"]),
    ("suggest_by_prefix", lambda t: C + [write(t, change("lr_scheduler.type", "Cosine"))],
     ["(did you mean 'CosineAnnealingLR'?)"]),
    ("loss_class_arg_typo", lambda t: C + [write(t, change("loss", {
        "type": "torch.nn.CrossEntropyLoss", "args": {"label_smothing": 0.1}}))],
     ["loss.args: unexpected argument 'label_smothing' for torch.nn.CrossEntropyLoss (did you "
      "mean 'label_smoothing'?)"]),
    # ---- values
    ("batch_size_zero", lambda t: C + [write(t, change("data_loader.args.batch_size", 0))],
     ["data_loader.args.batch_size: expected an integer >= 1, got 0"]),
    ("batch_size_text", lambda t: C + [write(t, change("data_loader.args.batch_size", "64"))],
     ['data_loader.args.batch_size: expected an integer, got "64"']),
    ("workers_negative", lambda t: C + [write(t, change("data_loader.args.num_workers", -2))],
     ["data_loader.args.num_workers: expected an integer >= 0, got -2"]),
    ("split_fraction", lambda t: C + [write(t, change("data_loader.args.validation_split", 1.5))],
     ["data_loader.args.validation_split: expected a fraction in [0, 1), got 1.5"]),
    ("split_count", lambda t: C + [write(t, change("data_loader.args.validation_split", 5000))],
     ["data_loader.args.validation_split: expected a sample count in [0, 1438) (the data set "
      "has 1438 samples), got 5000"]),
    ("epochs_zero", lambda t: C + [write(t, change("trainer.epochs", 0))],
     ["trainer.epochs: expected an integer >= 1, got 0"]),
    ("missing_epochs", lambda t: C + [write(t, remove("trainer.epochs"))],
     ["trainer.epochs: missing from the config"]),
    ("missing_save_dir", lambda t: C + [write(t, remove("trainer.save_dir"))],
     ["trainer.save_dir: missing from the config"]),
    ("trainer_typo", lambda t: C + [write(t, change("trainer.erly_stop", 3))],
     ["trainer.erly_stop: unknown key (did you mean 'early_stop'?)"]),
    ("save_period_zero", lambda t: C + [write(t, change("trainer.save_period", 0))],
     ["trainer.save_period: expected an integer >= 1, got 0"]),
    ("early_stop_negative", lambda t: C + [write(t, change("trainer.early_stop", -1))],
     ["trainer.early_stop: expected an integer >= 0, got -1"]),
    ("verbosity_five", lambda t: C + [write(t, change("trainer.verbosity", 5))],
     ["trainer.verbosity: expected an integer from 0 to 2, got 5"]),
    ("monitor_malformed", lambda t: C + [write(t, change("trainer.monitor", "minimum val_loss"))],
     ['trainer.monitor: expected "off" or "min|max <metric>"']),
    ("monitor_unknown", lambda t: C + [write(t, change("trainer.monitor", "max val_acc"))],
     ["trainer.monitor: 'val_acc' is not a logged value", "did you mean 'val_accuracy'?"]),
    ("monitor_without_validation",
     lambda t: C + [write(t, change("data_loader.args.validation_split", 0))],
     ["trainer.monitor: 'val_loss' is not a logged value (one of: loss, accuracy, top_k_acc)"]),
    ("model_does_not_fit_data", lambda t: C + [write(t, change("arch.args.num_classes", 5))],
     ["the first batch does not go through model, loss and metrics: IndexError"]),
    ("huge_seed", lambda t: C + [write(t, change("seed", 2**32))],
     ["seed: expected an integer from 0 to 4294967295, got 4294967296"]),
    ("split_text_once", lambda t: C + [write(t, change("data_loader.args.validation_split", "x"))],
     ['data_loader.args.validation_split: expected a fraction in [0, 1), a sample count or '
      '{"fold": k, "folds": K}, got "x"\n']),
    ("missing_metrics", lambda t: C + [write(t, remove("metrics"))],
     ['metrics: missing from the config ("metrics": ["accuracy"], or [] for none)']),
    ("loader_is_text", lambda t: C + [write(t, change("data_loader", "DigitsDataLoader"))],
     ["data_loader.args: missing a required argument: 'data_dir'"]),
    ("loader_args_a_list", lambda t: C + [write(t, change("data_loader.args", [64]))],
     ["data_loader.args: expected a JSON object, got [64]"]),
    ("two_block_key_typos", lambda t: C + [write(t, lambda c: c["arch"].update(tpye=1, agrs={}))],
     ["arch.tpye: unknown key", "arch.agrs: unknown key"]),
    ("trainer_not_an_object", lambda t: C + [write(t, change("trainer", 5))],
     ["trainer: expected a JSON object, got 5"]),
    ("epochs_at_top_level", lambda t: C + [write(t, change("epochs", 5))],
     ["epochs: not read at the top level (did you mean 'trainer.epochs'?)"]),
    ("duplicate_key", lambda t: C + [write(t, text='{"name": "a", "seed": 1, "name": "b"}')],
     ["bad.json: key 'name' appears twice in one object"]),
    ("val_monitor_needs_a_split", lambda t: C + [write(t, lambda c: (
        change("data_loader.args.validation_split", 0)(c), change("trainer.monitor", "min val_los")(c)))],
     ["val_ values exist only when data_loader.args.validation_split holds some data back"]),
    ("infinite_number", lambda t: C + [write(t, text='{"name": "x",\n "seed": Infinity}')],
     ["bad.json:2:10: invalid JSON: Infinity is not a number JSON allows"]),
    ("unknown_weights", lambda t: C + [write(t, change("arch", {
        "type": "torchvision.models.resnet18", "args": {"weights": "IMAGENET", "num_classes": 10}}))],
     ["arch.args: "]),
    ("loss_with_a_name", lambda t: C + [write(t, change("loss", {"type": "nll_loss", "name": "n"}))],
     ["loss.name: unknown key"]),
    ("nested_args", lambda t: C + [write(t, change("optimizer.args", {"args": {"lr": 0.1}}))],
     ["optimizer.args: unexpected argument 'args' for torch.optim.Adam\n"]),
    ("values_only_the_constructor_checks", lambda t: C + [write(t), "--lr", "-1", "--epochs", "0"],
     ["optimizer.args: Invalid learning rate: -1.0", "trainer.epochs: expected an integer >= 1"]),
    ("scheduler_value", lambda t: C + [write(t, change("lr_scheduler", {
        "type": "OneCycleLR", "args": {"max_lr": 0.1}}))],
     ["lr_scheduler.args: You must define either total_steps OR (epochs AND steps_per_epoch)"]),
    ("name_as_number", lambda t: C + [write(t), "-o", "name=2024"],
     ['name: expected a folder name as a string, got the number 2024; write "2024"']),
    ("infinite_override", lambda t: C + [write(t), "-o", "optimizer.args.lr=Infinity"],
     ['optimizer.args.lr: expected a number, got "Infinity"']),
    ("override_into_null", lambda t: C + [write(t, change("lr_scheduler", None)),
                                          "-o", "lr_scheduler.args.gamma=0.5"],
     ["lr_scheduler: is null, not a JSON object; set the whole value instead"]),
    ("amp_word", lambda t: C + [write(t, change("trainer.amp", "fp32"))],
     ['trainer.amp: expected one of "bf16", "fp16", got "fp32"']),
    ("accumulation_zero", lambda t: C + [write(t, change("trainer.grad_accum_steps", 0))],
     ["trainer.grad_accum_steps: expected an integer >= 1, got 0"]),
    ("clip_negative", lambda t: C + [write(t, change("trainer.grad_clip_norm", -1))],
     ["trainer.grad_clip_norm: expected a number > 0, got -1"]),
    ("compile_option_typo", lambda t: C + [write(t, change("trainer.compile", {"mod": "max"}))],
     ["trainer.compile.mod: unknown key (one of mode, backend, fullgraph, dynamic) (did you "
      "mean 'mode'?)"]),
    ("interval_word", lambda t: C + [write(t, change("lr_scheduler.interval", "batch"))],
     ['lr_scheduler.interval: expected one of "epoch", "step", got "batch"']),
    ("interval_typo", lambda t: C + [write(t, change("lr_scheduler.intervall", "step"))],
     ["lr_scheduler.intervall: unknown key", "(did you mean 'interval'?)"]),
    ("plateau_per_step", lambda t: C + [write(t, change("lr_scheduler", {
        "type": "ReduceLROnPlateau", "interval": "step"}))],
     ["lr_scheduler.interval: ReduceLROnPlateau steps on a validation value once an epoch"]),
    ("one_cycle_too_short", lambda t: C + [write(t, change("lr_scheduler", {
        "type": "OneCycleLR", "interval": "step", "args": {"max_lr": 0.01, "total_steps": 25}}))],
     ["lr_scheduler.args.total_steps: the schedule has 25 steps but training runs 63 (3 epochs "
      "x 21 optimizer steps); set total_steps to 63"]),
    # ---- the command line
    ("override_typo", lambda t: C + [write(t), "-o", "optimzer.args.lr=0.1"],
     ["optimzer: missing from the config (did you mean 'optimizer'?)"]),
    ("override_new_key_outside_args", lambda t: C + [write(t), "-o", "arch.dropout=0.1"],
     ["arch.dropout: not in the config; new keys can only be added inside an args block, in "
      "trainer, as a section or as a block's option (arch.init, arch.freeze, "
      "optimizer.param_groups, ...)"]),
    ("override_without_equals", lambda t: C + [write(t), "-o", "trainer.epochs"],
     ["-o 'trainer.epochs': expected key.path=value"]),
    ("override_arg_typo", lambda t: C + [write(t), "-o", "data_loader.args.shufle=false"],
     ["data_loader.args: unexpected argument 'shufle'", "did you mean 'shuffle'"]),
    ("run_id_path", lambda t: C + [write(t), "--run-id", "../elsewhere"],
     ["--run-id: '../elsewhere' must be a plain folder name"]),
    ("run_id_too_long", lambda t: C + [write(t), "--run-id", "r" * 300],
     ["--run-id: 'rrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrrr'... must be a plain folder name",
      "at most 100 characters"]),
    ("resume_missing", lambda t: ["-r", str(t / "gone.pth")], ["gone.pth"]),
    ("resume_junk", lambda t: ["-r", junk_checkpoint(t)], ["junk.pth"]),
    ("resume_foreign", lambda t: ["-r", foreign_checkpoint(t)],
     ["other.pth", "not a checkpoint of this template"]),
    ("resume_empty_folder", lambda t: ["-r", str(empty_folder(t))], ["empty_run"]),
    ("nothing_given", lambda t: [], ["give a config with -c config.json"]),
]


def run_main(main, argv, capsys) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: main(argv))
    return exit_info.value.code, capsys.readouterr().err


@pytest.mark.parametrize("case, make_argv, expected", CASES, ids=[case[0] for case in CASES])
def test_broken_configs_and_command_lines_exit_2_naming_the_problem(
        case, make_argv, expected, tmp_path, capsys):
    argv = make_argv(tmp_path)
    before = sorted(tmp_path.rglob("*"))
    code, stderr = run_main(train.main, argv, capsys)
    assert code == 2, stderr
    assert stderr.startswith("error: ") and "Traceback" not in stderr
    assert all(line.startswith("error: ") for line in stderr.splitlines()), stderr
    for text in expected:
        assert text in stderr, stderr
    assert sorted(tmp_path.rglob("*")) == before  # nothing created: no run folder, no log


def test_every_problem_is_reported_at_once(tmp_path, capsys):
    def many_mistakes(config):
        config["optimizer"]["type"] = "Adamm"
        config["arch"]["args"]["dropuot"] = 0.5
        config["trainer"]["epochs"] = 0
        config["trainer"]["erly_stop"] = 1
        config["data_loader"]["args"]["batch_size"] = 0
        config["metrics"] = ["acuracy"]
    code, stderr = run_main(train.main, ["-c", write(tmp_path, many_mistakes)], capsys)
    assert code == 2
    assert [line.split(":")[1].strip() for line in stderr.splitlines()] == [
        "arch.args", "metrics.0", "optimizer.type", "data_loader.args.batch_size",
        "trainer.erly_stop", "trainer.epochs"]
    assert not (tmp_path / "saved").exists()


def test_test_py_checks_the_config_before_loading_anything(tmp_path, capsys):
    code, stderr = run_main(test_script.main, ["-r", junk_checkpoint(tmp_path), "-c",
                                               write(tmp_path, change("loss", "nll"))], capsys)
    assert code == 2 and stderr.startswith("error: ")
    code, stderr = run_main(test_script.main, ["-r", str(tmp_path / "gone.pth")], capsys)
    assert code == 2 and "gone.pth" in stderr


def test_the_shipped_config_has_no_problems(tmp_path):
    config = ConfigParser(small_config(tmp_path))
    assert find_problems(config, train.blocks()) == []
    assert find_problems(config, train.blocks(training=False), trainer=False) == []


def test_test_py_needs_no_trainer_or_optimizer(tmp_path):
    raw = small_config(tmp_path)
    for key in ("trainer", "optimizer", "lr_scheduler"):
        del raw[key]
    assert find_problems(ConfigParser(raw), train.blocks(training=False), trainer=False) == []
    assert "trainer: missing" in "\n".join(find_problems(ConfigParser(raw), train.blocks()))


def test_a_user_key_that_resembles_no_section_is_kept(tmp_path):
    raw = small_config(tmp_path)
    raw["notes"] = "my own bookkeeping"
    config = ConfigParser(raw)
    config.validate(train.blocks())
    assert config["notes"] == "my own bookkeeping"


def test_a_named_metric_can_be_monitored(tmp_path):
    raw = small_config(tmp_path, monitor="max val_top3")
    raw["metrics"] = ["accuracy", {"type": "top_k_acc", "args": {"k": 3}, "name": "top3"}]
    ConfigParser(raw).validate(train.blocks())
    raw["trainer"]["monitor"] = "max val_top_k_acc"
    with pytest.raises(ConfigError, match=r"^trainer\.monitor: 'val_top_k_acc' is not a logged"):
        ConfigParser(raw).validate(train.blocks())


def test_validation_is_quick_and_builds_nothing(tmp_path, monkeypatch):
    import data_loader.data_loaders as module_data
    import model.model as module_arch

    def refuse(*args, **kwargs):
        raise AssertionError("validation must not build anything")
    monkeypatch.setattr(module_data.DigitsDataLoader, "__init__", refuse)
    monkeypatch.setattr(module_arch.DigitsModel, "__init__", refuse)
    ConfigParser(small_config(tmp_path)).validate(train.blocks())


# ------------------------------------------------------------------ nothing dangerous ever runs
def dangerous_blocks(marker: Path) -> list[tuple[str, dict]]:
    """Config blocks that would create `marker` (a file or a folder) if their type were called."""
    return [
        ("arch", {"type": "torch.utils.collect_env.run", "args": {"command": f"touch {marker}"}}),
        ("arch", {"type": "torch.nn.functional.torch.utils.collect_env.run",
                  "args": {"command": f"touch {marker}"}}),
        ("arch", {"type": "torch.utils.tensorboard.SummaryWriter", "args": {"log_dir": str(marker)}}),
        ("loss", {"type": "utils.checkpoint.save_checkpoint",
                  "args": {"state": {}, "path": str(marker)}}),
        ("loss", {"type": "utils.util.write_json", "args": {"content": {}, "path": str(marker)}}),
        ("data_loader", {"type": "torchvision.datasets.FakeData", "args": {}}),
        ("arch", {"type": "model.model.torch.save", "args": {"obj": 1, "f": str(marker)}}),
        # a bound method of an enum member, which would call torch.hub's downloader and loader
        ("arch", {"type": "torchvision.models.ResNet18_Weights.DEFAULT.get_state_dict",
                  "args": {"model_dir": str(marker), "file_name": "x.pth"}}),
    ]


@pytest.mark.parametrize("index", range(len(dangerous_blocks(Path("x")))))
def test_a_config_cannot_run_anything_outside_the_building_blocks(index, tmp_path, capsys):
    marker = tmp_path / "marker"
    key, block = dangerous_blocks(marker)[index]
    code, stderr = run_main(train.main, ["-c", write(tmp_path, change(key, block))], capsys)
    assert code == 2 and stderr.startswith(f"error: {key}"), stderr
    assert not marker.exists()


def test_a_checkpoint_carrying_a_dangerous_config_runs_nothing(tmp_path, capsys):
    """test.py and train.py -r take the config stored in the checkpoint: it is checked the same."""
    from model.model import DigitsModel
    from utils.checkpoint import FORMAT_VERSION

    marker = tmp_path / "marker"
    config = small_config(tmp_path / "saved")
    config["arch"] = {"type": "torch.utils.collect_env.run", "args": {"command": f"touch {marker}"}}
    path = tmp_path / "model_best.pth"
    torch.save({"format_version": FORMAT_VERSION, "arch": "DigitsModel", "epoch": 1,
                "state_dict": DigitsModel().state_dict(), "config": config}, path)
    for main in (test_script.main, train.main):
        code, stderr = run_main(main, ["-r", str(path)], capsys)
        assert code == 2 and "arch.type: 'torch.utils.collect_env.run' is outside" in stderr
    assert not marker.exists() and not (tmp_path / "saved").exists()


# ------------------------------------------------------------------ problems reported together
def test_command_line_problems_come_with_the_config_problems(tmp_path, capsys):
    argv = ["-c", write(tmp_path, change("optimizer.type", "Adamm")), "-o", "optimzer.args.lr=1",
            "--run-id", "a/b", "-r", junk_checkpoint(tmp_path)]
    code, stderr = run_main(train.main, argv, capsys)
    assert code == 2
    assert [line.split(":")[1].strip() for line in stderr.splitlines()] == [
        "-r " + str(tmp_path / "junk.pth"), "optimzer", "--run-id", "optimizer.type"], stderr


def test_a_broken_metric_does_not_hide_a_monitor_typo(tmp_path, capsys):
    def mistakes(config):
        config["metrics"] = ["acuracy", {"type": "top_k_acc", "args": {"kk": 3}, "name": "top3"}]
        config["trainer"]["monitor"] = "max val_top4"
    code, stderr = run_main(train.main, ["-c", write(tmp_path, mistakes)], capsys)
    assert code == 2
    assert "metrics.0: 'acuracy'" in stderr and "metrics.1.args: unexpected argument 'kk'" in stderr
    assert "trainer.monitor: 'val_top4' is not a logged value" in stderr
    assert "(did you mean 'val_top3'?)" in stderr


CLOSURE = ("LBFGS needs a closure that re-evaluates the loss several times per step, which the "
           "template's training step does not give; use another optimizer (Adam, SGD, ...)")


def lbfgs_as_named_optimizer(config):
    del config["optimizer"], config["lr_scheduler"]
    config["optimizers"] = {"main": {"type": "LBFGS", "args": {"lr": 0.1},
                                     "lr_scheduler": {"type": "StepLR", "args": {"step_sze": 1}}}}


@pytest.mark.parametrize("mutate, argv, key", [
    (None, ["-o", 'optimizer={"type": "LBFGS", "args": {"lr": 0.1}}'], "optimizer.type"),
    (change("optimizer", "LBFGS"), [], "optimizer"),
    (lbfgs_as_named_optimizer, [], "optimizers.main.type"),
], ids=["optimizer", "optimizer_as_a_name", "named_optimizer"])
def test_an_optimizer_needing_a_closure_is_refused_with_the_other_problems(
        mutate, argv, key, tmp_path, capsys):
    def mistakes(config):
        config["arch"]["type"] = "DigitsModle"
        if mutate is not None:
            mutate(config)
    code, stderr = run_main(train.main, ["-c", write(tmp_path, mistakes), *argv], capsys)
    assert code == 2 and "Traceback" not in stderr
    assert f"error: {key}: {CLOSURE}\n" in stderr
    assert "error: arch.type: 'DigitsModle' is not in model.model" in stderr
    if mutate is lbfgs_as_named_optimizer:  # its scheduler is still checked, on a stand-in
        assert "optimizers.main.lr_scheduler.args: unexpected argument 'step_sze'" in stderr
    assert not (tmp_path / "saved").exists()


def test_a_required_closure_is_found_in_the_signature_not_the_name():
    from config.model_options import closure_problem

    class Reevaluating(torch.optim.SGD):
        def step(self, closure):
            return super().step(closure)

    class OptionalClosure(torch.optim.SGD):
        def step(self, closure=None, *args, **kwargs):
            return super().step(closure)

    assert closure_problem(Reevaluating, "optimizers.x.type") == \
        f"optimizers.x.type: {CLOSURE.replace('LBFGS', 'Reevaluating')}"
    assert closure_problem(OptionalClosure, "optimizer.type") is None
    assert closure_problem(torch.optim.Adam, "optimizer.type") is None


# ------------------------------------------------------------------ what is accepted
def test_no_lr_scheduler_is_null_or_absent(tmp_path):
    raw = small_config(tmp_path)
    for config in (ConfigParser(raw, modification={"lr_scheduler": None}),
                   ConfigParser({k: v for k, v in raw.items() if k != "lr_scheduler"})):
        config.validate(train.blocks())
        assert train.build_trainer(config).lr_scheduler is None


def test_a_torch_loss_class_is_checked_and_instantiated(tmp_path):
    import model.loss as module_loss

    loss = {"type": "torch.nn.CrossEntropyLoss", "args": {"label_smoothing": 0.1}}
    config = ConfigParser(small_config(tmp_path), modification={"loss": loss})
    config.validate(train.blocks())
    criterion = config.init_ftn("loss", module_loss)
    output, target = torch.randn(6, 10), torch.arange(6)
    assert torch.equal(criterion(output, target),
                       torch.nn.functional.cross_entropy(output, target, label_smoothing=0.1))


def test_test_py_prints_the_config_it_would_evaluate_with(tmp_path, capsys):
    from model.model import DigitsModel
    from utils.checkpoint import FORMAT_VERSION

    path = tmp_path / "model_best.pth"
    torch.save({"format_version": FORMAT_VERSION, "arch": "DigitsModel", "epoch": 1,
                "state_dict": DigitsModel().state_dict(),
                "config": small_config(tmp_path / "saved")}, path)
    assert test_script.main(["-r", str(path), "--print-config", "-o", "metrics=[]"]) == {}
    printed = json.loads(capsys.readouterr().out)
    assert printed["metrics"] == [] and printed["arch"]["type"] == "DigitsModel"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model_best.pth"]  # no report written


def test_a_checkpoint_without_a_config_object_is_named(tmp_path, capsys):
    from model.model import DigitsModel
    from utils.checkpoint import FORMAT_VERSION

    path = tmp_path / "noconf.pth"
    torch.save({"format_version": FORMAT_VERSION, "arch": "DigitsModel", "epoch": 1,
                "state_dict": DigitsModel().state_dict(), "config": None}, path)
    for main in (test_script.main, train.main):
        code, stderr = run_main(main, ["-r", str(path)], capsys)
        assert code == 2 and stderr == f"error: {path}: not a checkpoint of this template " \
                                       f"(config must be a dict)\n"


def test_blocks_may_be_names_and_leave_out_args(tmp_path, capsys):
    raw = small_config(tmp_path / "saved", epochs=1)
    raw["arch"], raw["optimizer"] = "DigitsModel", {"type": "Adam"}
    config = ConfigParser(raw, modification={"optimizer.args.lr": 0.01})
    config.validate(train.blocks())
    trainer = train.build_trainer(config)
    assert trainer.optimizer.param_groups[0]["lr"] == 0.01
    assert trainer.state(1)["arch"] == "DigitsModel"
    # test.py on a data loader without args reports what is missing with everything else
    raw["data_loader"] = {"type": "DigitsDataLoader"}
    raw["metrics"] = ["acuracy"]
    (tmp_path / "c.json").write_text(json.dumps(raw))
    code, stderr = run_main(test_script.main, ["-r", junk_checkpoint(tmp_path), "-c",
                                               str(tmp_path / "c.json")], capsys)
    assert code == 2
    assert "data_loader.args: missing a required argument: 'data_dir'" in stderr
    assert "metrics.0: 'acuracy' is not in model.metric" in stderr and "junk.pth" in stderr


def test_a_schedule_longer_than_the_run_or_setting_the_rate_itself_is_a_warning(tmp_path,
                                                                                  caplog):
    """OneCycleLR with 88 steps in a run of 63: it would stop before its end (under --folds a
    fold's fewer steps make it so); and it sets the rate from max_lr, so optimizer.args.lr
    (and --lr) change nothing: both said before training, with the numbers to write."""
    from tests.conftest import build

    trainer = build(tmp_path, {"lr_scheduler": {"type": "OneCycleLR", "interval": "step",
                                                "args": {"max_lr": 0.01, "total_steps": 88}}})
    trainer.check_first_batch()
    assert ("Warning: lr_scheduler.args.total_steps: the schedule has 88 steps but training "
            "runs 63 (3 epochs x 21 optimizer steps): it stops at step 63 of its 88, before its "
            "end; set total_steps to 63.") in caplog.text
    assert ("Warning: optimizer.args.lr (0.001) is not used: OneCycleLR sets the learning rate "
            "from lr_scheduler.args.max_lr; change (or search) that instead.") in caplog.text

