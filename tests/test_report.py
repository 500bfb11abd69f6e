"""test.py's report: table, JSON, per-class accuracy, confusion matrix, TensorBoard image."""
import json

import pytest

import test as test_script
import train
from logger.test_report import class_report, confusion_image, report_lines, run_log_dir
from tests.conftest import ROOT, run_folders, small_config
from tests.test_logger import read_events


def test_class_report_gives_per_class_accuracy_and_names():
    report = class_report([[3, 1], [0, 0]], ["cat", "dog"])
    assert report["per_class_accuracy"] == {"cat": 0.75, "dog": None}  # no dog in the test set
    assert report["confusion_matrix"]["classes"] == ["cat", "dog"]
    assert class_report([[1]], ["a", "b"])["confusion_matrix"]["classes"] == ["0"]  # mismatch


def test_report_lines_align_metrics_classes_and_the_matrix(tmp_path):
    classes = class_report([[5, 0], [2, 13]])
    lines = report_lines(tmp_path / "m.pth", 7, {"loss": 0.25, "accuracy": 0.9, "n_samples": 20},
                         classes)
    assert lines[0] == f"Test results of {tmp_path / 'm.pth'} (epoch 7), 20 samples:"
    assert lines[1:3] == ["  loss      0.250000", "  accuracy  0.900000"]
    assert [line.split() for line in lines[5:7]] == [["0", "1.0000", "5"], ["1", "0.8667", "15"]]
    assert [line.split() for line in lines[-3:]] == [["0", "1"], ["0", "5", "0"], ["1", "2", "13"]]


def test_confusion_image_is_white_for_none_and_dark_for_all():
    image = confusion_image([[4, 0], [1, 1]], cell_pixels=2)
    assert image.shape == (3, 4, 4) and 0 <= image.min() and image.max() <= 1
    assert image[:, 0, 2].tolist() == [1.0, 1.0, 1.0]                      # 0 of 4
    assert image[:, 0, 0].tolist() == pytest.approx([0.03, 0.19, 0.42])   # 4 of 4
    assert image[2, 2, 0] > image[2, 0, 0]                                 # half is lighter


def test_run_log_dir_follows_the_run_layout(tmp_path):
    checkpoint = tmp_path / "saved" / "models" / "Digits_CNN" / "run1" / "model_best.pth"
    assert run_log_dir(checkpoint) == tmp_path / "saved" / "log" / "Digits_CNN" / "run1"
    assert run_log_dir(tmp_path / "model_best.pth") is None


@pytest.mark.slow
def test_test_py_reports_per_class_accuracy_and_the_confusion_matrix(tmp_path, capsys):
    config = small_config(tmp_path / "saved", epochs=1, tensorboard=True)
    (tmp_path / "c.json").write_text(json.dumps(config))
    train.main(["-c", str(tmp_path / "c.json")])
    run, = run_folders(tmp_path / "saved")
    results = test_script.main(["-r", str(run / "model_best.pth")])
    out = capsys.readouterr().out

    report = json.loads((run / "model_best.test.json").read_text())
    matrix = report["confusion_matrix"]["counts"]
    assert len(matrix) == 10 and sum(map(sum, matrix)) == report["n_samples"] == 359
    correct = sum(matrix[i][i] for i in range(10))
    assert report["accuracy"] == pytest.approx(correct / 359)  # the metric agrees with the matrix
    assert report["per_class_accuracy"]["3"] == pytest.approx(matrix[3][3] / sum(matrix[3]))
    assert results["accuracy"] == report["accuracy"] and report["epoch"] == 1
    assert "Confusion matrix (rows: true class, columns: predicted class):" in out
    assert f"  accuracy   {report['accuracy']:.6f}" in out.splitlines()

    test_dir = tmp_path / "saved" / "log" / "Digits_CNN" / run.name / "test-model_best"
    test_script.main(["-r", str(run / "model_best.pth")])  # again: replaces, does not add
    image, = read_events(test_dir).Images("test/confusion_matrix")
    assert image.width == image.height == 10 * 25 and image.step == 1  # at the epoch


@pytest.mark.slow
def test_without_tensorboard_test_py_writes_only_the_json(tmp_path):
    config = small_config(tmp_path / "saved", epochs=1)  # tensorboard off
    (tmp_path / "c.json").write_text(json.dumps(config))
    train.main(["-c", str(tmp_path / "c.json")])
    run, = run_folders(tmp_path / "saved")
    before = sorted(p.name for p in (tmp_path / "saved" / "log" / "Digits_CNN" / run.name).iterdir())
    test_script.main(["-r", str(run / "model_best.pth")])
    assert sorted(p.name for p in (tmp_path / "saved" / "log" / "Digits_CNN" / run.name).iterdir()) \
        == before
    assert (run / "model_best.test.json").is_file()


def test_results_are_printed_before_a_report_that_cannot_be_written(tmp_path, capsys):
    from parse_config import ConfigParser
    from utils.errors import WriteError

    (tmp_path / "model_best.test.json").mkdir()  # the report's place is taken by a folder
    config = ConfigParser(small_config(tmp_path), resume=tmp_path / "model_best.pth")
    with pytest.raises(WriteError, match=r"model_best\.test\.json: cannot be written \("):
        test_script.write_report(config, {"loss": 0.25, "n_samples": 3}, 4, None)
    assert "0.250000" in capsys.readouterr().out
    assert not [path for path in tmp_path.iterdir() if path.suffix == ".tmp"]


def test_results_are_printed_before_a_report_the_user_may_not_write(shared_tmp):
    """The checkpoint lies in a folder the user may only read (really: root's powers
    dropped): the results are on the screen, then one line says why the JSON is missing."""
    import contextlib
    import io

    from parse_config import ConfigParser
    from tests.conftest import as_unprivileged, read_only
    from utils.errors import WriteError

    folder = read_only(shared_tmp / "run")
    config = ConfigParser(small_config(shared_tmp), resume=folder / "model_best.pth")

    def report():
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            try:
                test_script.write_report(config, {"loss": 0.25, "n_samples": 3}, 4, None)
            except WriteError as error:
                return printed.getvalue(), str(error)
        return printed.getvalue(), None
    printed, error = as_unprivileged(report)
    assert "0.250000" in printed
    assert error is not None and "model_best.test.json: cannot be written (Permission denied)" \
        in error, error
    assert list(folder.iterdir()) == []


@pytest.mark.slow
def test_compare_evaluates_several_runs_into_one_table_and_json(tmp_path, capsys):
    pytest.importorskip("search", reason="made without the search leaf")
    config = small_config(tmp_path / "saved", epochs=2)
    (tmp_path / "c.json").write_text(json.dumps(config))
    for run_id, lr in (("a", "0.01"), ("b", "0.0001")):
        train.main(["-c", str(tmp_path / "c.json"), "--run-id", run_id, "--lr", lr])
    run_a, run_b = run_folders(tmp_path / "saved")
    capsys.readouterr()
    out_file = tmp_path / "cmp.json"
    results = test_script.main(["--compare", str(run_a), str(run_b / "checkpoint-epoch1.pth"),
                                "--json", str(out_file)])
    out = capsys.readouterr().out.splitlines()
    table = out[next(i for i, line in enumerate(out) if line.startswith("checkpoint")):]
    assert table[0].split() == ["checkpoint", "epoch", "loss", "accuracy", "top_k_acc",
                                "n_samples"]
    assert table[1].split()[:2] == [str(run_a / "model_best.pth"), "2"]
    assert table[2].split()[:2] == [str(run_b / "checkpoint-epoch1.pth"), "1"]
    assert json.loads(out_file.read_text()) == results
    single = test_script.main(["-r", str(run_b / "checkpoint-epoch1.pth")])
    assert results[1]["results"] == single  # the same numbers as test.py -r gives
    assert results[0]["results"]["accuracy"] > results[1]["results"]["accuracy"]
    with_r = test_script.main(["-r", str(run_b / "checkpoint-epoch1.pth"), "--compare",
                               str(run_a), "--json", str(out_file)])  # -r is compared first
    assert [result["checkpoint"] for result in with_r] == [
        str(run_b / "checkpoint-epoch1.pth"), str(run_a / "model_best.pth")]


def test_compare_checks_every_checkpoint_before_evaluating_any(tmp_path, capsys):
    pytest.importorskip("search", reason="made without the search leaf")
    from utils.errors import UserError

    missing = tmp_path / "nothing.pth"
    with pytest.raises(UserError) as raised:
        test_script.main(["--compare", str(ROOT / "data"), str(missing), "--json",
                          str(tmp_path / "cmp.json")])
    assert raised.value.problems == [
        f"{ROOT / 'data'}: a folder with no loadable checkpoint-epochN.pth or "
        f"checkpoint-interrupted.pth in it", f"{missing}: no such checkpoint file"]
    assert not (tmp_path / "cmp.json").exists()


@pytest.mark.slow
def test_a_checkpoint_with_nan_weights_is_one_line_and_no_report(tmp_path):
    from utils.checkpoint import load_checkpoint, save_checkpoint
    from utils.errors import UserError

    config = small_config(tmp_path / "saved", epochs=1)
    (tmp_path / "c.json").write_text(json.dumps(config))
    train.main(["-c", str(tmp_path / "c.json")])
    run, = run_folders(tmp_path / "saved")
    state = load_checkpoint(run / "checkpoint-epoch1.pth")
    state["state_dict"]["fc2.bias"][0] = float("nan")
    save_checkpoint(state, run / "checkpoint-epoch1.pth")
    with pytest.raises(UserError, match=r"checkpoint-epoch1\.pth: its weights hold NaN or "
                                        r"infinite values \(fc2\.bias\)"):
        test_script.main(["-r", str(run / "checkpoint-epoch1.pth")])
    assert not (run / "checkpoint-epoch1.test.json").exists()
