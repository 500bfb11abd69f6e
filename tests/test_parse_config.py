import json
from pathlib import Path

import pytest
import torch

import model.metric as module_metric
import model.model as module_arch
from parse_config import ConfigParser, CustomArgs
from tests.conftest import from_command_line, mark_run_folder, small_config
from utils.errors import ConfigError, UserError

OPTIONS = [CustomArgs(["--lr", "--learning_rate"], float, "optimizer.args.lr"),
           CustomArgs(["--bs", "--batch_size"], int, "data_loader.args.batch_size")]


def from_argv(*argv: str) -> ConfigParser:
    return from_command_line(list(argv), OPTIONS)


@pytest.fixture
def parser_config(tmp_path: Path) -> ConfigParser:
    return ConfigParser(small_config(tmp_path / "saved"), run_id="run1")


def test_init_obj_passes_config_args_and_code_args(parser_config):
    model = parser_config.init_obj("arch", module_arch)
    assert isinstance(model, module_arch.DigitsModel)
    optimizer = parser_config.init_obj("optimizer", torch.optim, model.parameters())
    assert isinstance(optimizer, torch.optim.Adam)
    assert optimizer.param_groups[0]["lr"] == 0.001 and optimizer.param_groups[0]["amsgrad"]


def test_code_kwargs_may_not_override_config_args(parser_config):
    model = parser_config.init_obj("arch", module_arch)
    with pytest.raises(ConfigError, match=r"^optimizer\.args: 'lr' set in the config"):
        parser_config.init_obj("optimizer", torch.optim, model.parameters(), lr=0.5)


def test_init_ftn_returns_partial_with_config_args(tmp_path):
    config = small_config(tmp_path)
    config["metrics"] = [{"type": "top_k_acc", "args": {"k": 1}}]
    metric = ConfigParser(config).init_ftn("metrics.0", module_metric)
    output = torch.tensor([[0.1, 0.9], [0.8, 0.2]])
    assert metric(output, torch.tensor([0, 0])).item() == 0.5   # k=1 from the config


def test_wrong_type_names_key_path_and_nearest_choice(parser_config):
    config = parser_config.with_modification({"optimizer.type": "Adamm"})
    with pytest.raises(ConfigError, match=r"^optimizer\.type: 'Adamm' is not in torch\.optim "
                                          r"\(did you mean 'Adam'\?\)"):
        config.init_obj("optimizer", torch.optim, [torch.zeros(1, requires_grad=True)])


def test_unknown_argument_is_reported_with_suggestion(parser_config):
    config = parser_config.with_modification({"optimizer.args.lrr": 0.1})
    with pytest.raises(ConfigError, match=r"^optimizer\.args: unexpected argument 'lrr' .*"
                                          r"did you mean 'lr'"):
        config.init_obj("optimizer", torch.optim, [torch.zeros(1, requires_grad=True)])


def test_value_rejected_by_constructor_names_key_path(parser_config):
    config = parser_config.with_modification({"optimizer.args.lr": -1})
    with pytest.raises(ConfigError, match=r"^optimizer\.args: Invalid learning rate"):
        config.init_obj("optimizer", torch.optim, [torch.zeros(1, requires_grad=True)])


def test_constructor_touches_no_disk(tmp_path):
    ConfigParser(small_config(tmp_path / "saved"))
    assert list(tmp_path.iterdir()) == []


def test_run_folders_follow_the_layout(parser_config, tmp_path):
    assert parser_config.save_dir == tmp_path / "saved" / "models" / "Digits_CNN" / "run1"
    assert parser_config.log_dir == tmp_path / "saved" / "log" / "Digits_CNN" / "run1"
    parser_config.make_run_dirs()
    parser_config.write_config()
    saved = json.loads((parser_config.save_dir / "config.json").read_text())
    assert saved == parser_config.config and parser_config.log_dir.is_dir()


def test_two_runs_started_in_the_same_second_both_get_a_folder(tmp_path):
    first = ConfigParser(small_config(tmp_path), run_id="1122_101500")
    second = ConfigParser(small_config(tmp_path), run_id="1122_101500")
    first.make_run_dirs()
    second.make_run_dirs()
    assert first.save_dir != second.save_dir
    assert first.save_dir.is_dir() and second.save_dir.is_dir()
    assert second.run_id == "1122_101500_1" and second.log_dir.is_dir()


def test_registered_options_and_overrides(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps(small_config(tmp_path)))
    config = from_argv("-c", str(path), "--lr", "0.01", "--bs", "32", "-o", "trainer.epochs=7",
                       "-o", "arch.args.dropout=0.5", "-o", "name=Other")
    assert config["optimizer"]["args"]["lr"] == 0.01
    assert config["data_loader"]["args"]["batch_size"] == 32
    assert config["trainer"]["epochs"] == 7 and config["arch"]["args"]["dropout"] == 0.5
    assert config["name"] == "Other" and config.resume is None


def test_override_of_missing_section_suggests_the_key(parser_config):
    with pytest.raises(ConfigError, match=r"^trainr: missing from the config \(did you mean "
                                          r"'trainer'\?\)"):
        parser_config.with_modification({"trainr.epochs": 3}).validate([], trainer=False)


def test_json_syntax_error_gives_file_line_and_column(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{\n  "name": "x",\n  // a comment\n  "n_gpu": 1\n}\n')
    with pytest.raises(ConfigError, match=r"bad\.json:3:3: invalid JSON.*// comments"):
        from_argv("-c", str(path))


def test_missing_config_file_is_a_user_error(tmp_path):
    with pytest.raises(UserError, match=r"nope\.json: no such file"):
        from_argv("-c", str(tmp_path / "nope.json"))


def test_resume_without_config_reads_config_from_checkpoint(tmp_path):
    from utils.checkpoint import FORMAT_VERSION, save_checkpoint
    run = tmp_path / "models" / "Digits_CNN" / "0101_000000"
    mark_run_folder(run)
    stored = small_config(tmp_path)
    save_checkpoint({"format_version": FORMAT_VERSION, "arch": "DigitsModel", "epoch": 2,
                     "state_dict": {}, "config": stored}, run / "checkpoint-epoch2.pth")
    config = from_argv("-r", str(run / "checkpoint-epoch2.pth"), "-o", "trainer.epochs=9")
    assert config["trainer"]["epochs"] == 9 and config["name"] == stored["name"]
    assert config.save_dir == run and not config.fine_tune  # continues in its own run folder

    other = tmp_path / "other.json"
    other.write_text(json.dumps(small_config(tmp_path)))
    tuned = from_argv("-c", str(other), "-r", str(run / "checkpoint-epoch2.pth"))
    assert tuned.fine_tune and tuned.save_dir != run  # fine-tuning is a new run


def test_get_logger_rejects_bad_verbosity(parser_config):
    assert parser_config.get_logger("x", 0).level == 30
    with pytest.raises(ConfigError, match=r"^trainer\.verbosity: 5"):
        parser_config.get_logger("x", 5)


def test_resume_of_an_older_checkpoint_goes_to_a_new_run_folder(tmp_path):
    from utils.checkpoint import FORMAT_VERSION, save_checkpoint
    run = tmp_path / "models" / "Digits_CNN" / "0101_000000"
    mark_run_folder(run)
    for epoch in (1, 2):
        save_checkpoint({"format_version": FORMAT_VERSION, "arch": "DigitsModel", "epoch": epoch,
                         "state_dict": {}, "config": small_config(tmp_path)},
                        run / f"checkpoint-epoch{epoch}.pth")
    assert from_argv("-r", str(run / "checkpoint-epoch1.pth")).save_dir != run
    assert from_argv("-r", str(run / "checkpoint-epoch2.pth")).save_dir == run
    assert from_argv("-r", str(run)).resume == run / "checkpoint-epoch2.pth"


@pytest.mark.parametrize("run_id", ["../escaped", "a/b", ".."])
def test_run_id_must_be_a_plain_name(tmp_path, run_id):
    with pytest.raises(ConfigError, match=r"^--run-id: "):
        ConfigParser(small_config(tmp_path), run_id=run_id)


def test_value_of_the_wrong_type_rejected_by_a_constructor_names_key_path(parser_config):
    config = parser_config.with_modification({"optimizer.args.betas": ["a", "b"]})
    with pytest.raises(ConfigError, match=r"^optimizer\.args: "):
        config.init_obj("optimizer", torch.optim, [torch.zeros(1, requires_grad=True)])


def test_metrics_get_their_own_names_and_duplicates_are_refused(tmp_path):
    config = small_config(tmp_path)
    config["metrics"] = ["accuracy", {"type": "top_k_acc", "args": {"k": 2}, "name": "top2"},
                         {"type": "top_k_acc", "args": {"k": 3}}]
    metrics = ConfigParser(config).init_ftn_list("metrics", module_metric, reserved=["loss"])
    assert [m.__name__ for m in metrics] == ["accuracy", "top2", "top_k_acc"]
    config["metrics"].append({"type": "top_k_acc", "args": {"k": 4}})
    with pytest.raises(ConfigError, match=r'^metrics\.3: the name "top_k_acc" is taken by '
                                          r'metrics\.2'):
        ConfigParser(config).init_ftn_list("metrics", module_metric, reserved=["loss"])
    config["metrics"] = [{"type": "accuracy", "name": "loss"}]
    with pytest.raises(ConfigError, match=r'^metrics\.0: the name "loss" is not usable'):
        ConfigParser(config).init_ftn_list("metrics", module_metric, reserved=["loss"])


def test_a_block_with_an_unknown_key_is_reported(tmp_path):
    raw = small_config(tmp_path)
    raw["optimizer"]["arg"] = {"lr": 0.1}
    config = ConfigParser(raw)
    with pytest.raises(ConfigError, match=r"^optimizer\.arg: unknown key .*did you mean 'args'"):
        config.init_obj("optimizer", torch.optim, [torch.zeros(1, requires_grad=True)])


def test_an_unusable_save_dir_is_a_user_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    config = ConfigParser(small_config(blocker / "saved"))
    with pytest.raises(UserError, match=rf"^trainer\.save_dir: {blocker} is a file, not a "
                                        rf"folder$"):
        config.make_run_dirs()


def test_seed_and_name_flags(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps(small_config(tmp_path)))
    import train
    config = from_command_line(["-c", str(path), "--seed", "9", "--name", "Other"],
                               train.OPTIONS)
    assert config["seed"] == 9 and config.save_dir.parent.name == "Other"


def _raising_init(self, width: int = 4):
    torch.nn.Module.__init__(self)
    raise KeyError("my bug")


def test_an_exception_in_the_users_own_constructor_keeps_its_traceback(tmp_path, monkeypatch,
                                                                        capsys):
    from utils.cli import run_cli
    from utils.errors import BuildError

    # a user's model in model/model.py whose constructor has a bug
    raising_model = type("RaisingModel", (torch.nn.Module,),
                         {"__init__": _raising_init, "__module__": "model.model"})
    monkeypatch.setattr(module_arch, "RaisingModel", raising_model, raising=False)
    config = ConfigParser(small_config(tmp_path), modification={"arch.type": "RaisingModel"})
    with pytest.raises(BuildError, match=r"^arch: building RaisingModel raised KeyError") as error:
        config.init_obj("arch", module_arch)
    assert isinstance(error.value.__cause__, KeyError)
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: config.init_obj("arch", module_arch))
    stderr = capsys.readouterr().err
    assert exit_info.value.code == 1
    assert stderr.startswith("error: arch: building RaisingModel raised KeyError")
    assert "Traceback" in stderr and 'raise KeyError("my bug")' in stderr


def test_a_run_id_whose_log_folder_exists_is_taken(tmp_path):
    """A run whose model folder was deleted still owns its log folder: a new run with its id
    gets a suffix instead of appending to that run's events."""
    (tmp_path / "saved" / "log" / "Digits_CNN" / "run1").mkdir(parents=True)
    config = ConfigParser(small_config(tmp_path / "saved"), run_id="run1")
    config.make_run_dirs()
    assert config.run_id == "run1_1" and config.log_dir.name == "run1_1"
    assert config.save_dir.is_dir() and not (tmp_path / "saved/models/Digits_CNN/run1").exists()


@pytest.mark.parametrize("blocker", ["models/Digits_CNN", "log"])
def test_a_file_where_a_run_folder_goes_is_one_line_and_no_folder_is_left(tmp_path, blocker):
    (tmp_path / "saved" / blocker).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / "saved" / blocker).write_text("not a folder")
    config = ConfigParser(small_config(tmp_path / "saved"), run_id="run1")
    with pytest.raises(UserError, match=rf"^trainer\.save_dir: {tmp_path}/saved/{blocker} is a "
                                        rf"file, not a folder$"):
        config.make_run_dirs()
    assert not (tmp_path / "saved/models/Digits_CNN/run1").exists()


@pytest.mark.parametrize("blocked", ["log/Digits_CNN", "models/Digits_CNN"])
def test_a_folder_without_write_permission_is_one_line_and_no_empty_run_folder_is_left(
        shared_tmp, blocked):
    """As a user that may not write in save_dir/log/<name> (or models/<name>), really: the
    test drops root's powers in a child process."""
    from tests.conftest import as_unprivileged, read_only, writable

    saved = shared_tmp / "saved"
    for folder in ("models/Digits_CNN", "log/Digits_CNN"):
        writable(saved / folder)
        writable((saved / folder).parent)
    read_only(saved / blocked)
    config = ConfigParser(small_config(saved), run_id="run1")
    where = config.log_dir if blocked.startswith("log") else config.save_dir
    with pytest.raises(UserError, match=rf"^trainer\.save_dir: cannot create {where} "
                                        rf"\(Permission denied\)$"):
        as_unprivileged(config.make_run_dirs)
    assert list((saved / "models/Digits_CNN").iterdir()) == []
    assert list((saved / "log/Digits_CNN").iterdir()) == []


WARM_UP_THEN_COSINE = {"type": "SequentialLR", "interval": "step", "args": {
    "schedulers": [{"type": "LinearLR", "args": {"start_factor": 0.1, "total_iters": 5}},
                   {"type": "CosineAnnealingLR", "args": {"T_max": 20}}],
    "milestones": [5]}}


def schedule_of(block: dict, steps: int, lr: float = 0.5) -> list[float]:
    """The learning rates `block` (built through the config) gives the first `steps` steps."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=lr)
    scheduler = ConfigParser({"lr_scheduler": block}).init_scheduler(
        "lr_scheduler", torch.optim.lr_scheduler, optimizer)
    rates = []
    for _ in range(steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


def test_a_composed_schedule_builds_its_nested_blocks_on_the_same_optimizer():
    """Warm-up then cosine, written as SequentialLR with nested blocks (torch alone would say
    "SequentialLR at index 0 should have 'optimizer' as its attribute")."""
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.5)
    expected = torch.optim.lr_scheduler.SequentialLR(optimizer, [
        torch.optim.lr_scheduler.LinearLR(optimizer, start_factor=0.1, total_iters=5),
        torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=20)], milestones=[5])
    reference = []
    for _ in range(25):
        reference.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        expected.step()
    rates = schedule_of(WARM_UP_THEN_COSINE, 25)
    assert rates == reference
    assert rates[0] == pytest.approx(0.05) and max(rates) == pytest.approx(0.5)
    chained = schedule_of({"type": "ChainedScheduler", "args": {"schedulers": [
        {"type": "ConstantLR", "args": {"factor": 0.5, "total_iters": 2}},
        {"type": "ExponentialLR", "args": {"gamma": 0.9}}]}}, 4)
    assert chained == pytest.approx([0.25, 0.225, 0.405, 0.3645])


def test_every_nested_schedule_problem_is_one_line_at_its_key_path():
    block = json.loads(json.dumps(WARM_UP_THEN_COSINE))
    block["args"]["schedulers"][0]["type"] = "LinerLR"
    block["args"]["schedulers"][1]["args"] = {"T_maks": 20}
    with pytest.raises(ConfigError) as raised:
        schedule_of(block, 1)
    assert raised.value.problems == [
        "lr_scheduler.args.schedulers.0.type: 'LinerLR' is not in torch.optim.lr_scheduler "
        "(did you mean 'LinearLR'?)",
        "lr_scheduler.args.schedulers.1.args: unexpected argument 'T_maks' for "
        "torch.optim.lr_scheduler.CosineAnnealingLR (did you mean 'T_max'?)"]
    with pytest.raises(ConfigError, match=r"^lr_scheduler\.args\.schedulers: expected a list of "
                                          r"scheduler blocks \(SequentialLR runs them in turn\)"):
        schedule_of({"type": "SequentialLR", "args": {"milestones": [5]}}, 1)


def test_a_composed_schedule_is_checked_with_the_whole_config(tmp_path):
    """`validate` (train.py, before anything is built) reports the nested blocks' problems."""
    import train

    config = small_config(tmp_path / "saved")
    config["lr_scheduler"] = json.loads(json.dumps(WARM_UP_THEN_COSINE))
    config["lr_scheduler"]["args"]["schedulers"][0]["args"]["start_factor"] = 2  # above 1
    with pytest.raises(ConfigError) as raised:
        ConfigParser(config).validate(train.blocks())
    assert [problem for problem in raised.value.problems if "schedulers" in problem] == [
        "lr_scheduler.args.schedulers.0.args: Starting multiplicative factor expected to be "
        "greater than 0 and less or equal to 1."]
    config["lr_scheduler"]["args"]["schedulers"][0]["args"]["start_factor"] = 0.1
    ConfigParser(config).validate(train.blocks())  # the right one passes
