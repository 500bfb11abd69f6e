"""predict.py: a trained model on new data — the test split or a `--input` file — through the
trainer's predict_step, written in order as CSV (or .pt); a user's own predict_step; torchrun."""
import csv
import os
import subprocess
import sys

import pytest
import torch

import predict
import trainer.trainer as module_trainer
from data_loader.datasets import digits_dataset
from tests.conftest import ROOT
from utils.errors import UserError

pytestmark = pytest.mark.slow  # each needs the trained run (2 epochs: conftest.py)


def read_csv(path):
    with open(path, newline="") as file:
        return list(csv.reader(file))


def test_the_test_split_is_predicted_in_order_with_each_class(trained):
    checkpoint, model = trained
    written = predict.main(["-r", str(checkpoint)])
    assert written == checkpoint.with_name("model_best.predictions.csv")
    rows = read_csv(written)
    assert rows[0] == ["index", "class", *(f"output_{k}" for k in range(10))]
    images, labels = digits_dataset(str(ROOT / "data"), training=False).tensors
    with torch.no_grad():
        expected = model(images)
    assert len(rows) - 1 == len(labels) == 359
    got = torch.tensor([[float(cell) for cell in row[2:]] for row in rows[1:]])
    assert torch.allclose(got, expected, atol=1e-5)  # the model's own outputs, in order
    classes = torch.tensor([int(row[1]) for row in rows[1:]])
    assert torch.equal(classes, expected.argmax(1))
    assert (classes == labels).float().mean() > 0.5  # a trained model, on the right samples


def test_an_input_file_of_new_samples_needs_no_labels(trained, tmp_path):
    checkpoint, model = trained
    images = torch.rand(5, 1, 8, 8)
    torch.save(images, tmp_path / "new.pt")
    written = predict.main(["-r", str(checkpoint), "--input", str(tmp_path / "new.pt"),
                            "--output", str(tmp_path / "out.csv")])
    rows = read_csv(written)
    assert written == tmp_path / "out.csv" and len(rows) == 6
    with torch.no_grad():
        assert [int(row[1]) for row in rows[1:]] == model(images).argmax(1).tolist()


class TwoOutputs(module_trainer.Trainer):
    """A user's own predict_step on dict inputs: the class and its log-probability."""

    def predict_step(self, batch):
        output = self.model(batch["pixels"].view(-1, 1, 8, 8))
        best = output.max(1)
        return {"class": best.indices, "log_prob": best.values}


def test_a_users_own_predict_step_on_dict_inputs_is_written_as_pt(trained, tmp_path,
                                                                   monkeypatch):
    checkpoint, model = trained
    TwoOutputs.__module__ = "trainer.trainer"
    monkeypatch.setattr(module_trainer, "TwoOutputs", TwoOutputs, raising=False)
    pixels = torch.rand(70, 64)  # two batches of the config's 64
    torch.save({"pixels": pixels}, tmp_path / "new.pt")
    written = predict.main(["-r", str(checkpoint), "-o", "trainer.type=TwoOutputs",
                            "--input", str(tmp_path / "new.pt")])
    assert written == checkpoint.with_name("model_best.predictions.pt")
    saved = torch.load(written, weights_only=True)
    with torch.no_grad():
        best = model(pixels.view(-1, 1, 8, 8)).max(1)
    assert torch.equal(saved["class"], best.indices)
    assert torch.allclose(saved["log_prob"], best.values, atol=1e-6)


def test_bad_inputs_and_outputs_are_one_line_and_write_nothing(trained, tmp_path):
    checkpoint, _ = trained
    before = sorted(path.name for path in checkpoint.parent.iterdir())
    torch.save({"a": torch.zeros(3, 2), "b": torch.zeros(4, 2)}, tmp_path / "uneven.pt")
    (tmp_path / "text.pt").write_text("not a tensor")
    cases = {
        ("--input", str(tmp_path / "none.pt")): f"--input {tmp_path / 'none.pt'}: no such file",
        ("--input", str(tmp_path / "uneven.pt")): f"--input {tmp_path / 'uneven.pt'}: its "
                                                  f"tensors have different numbers of rows "
                                                  f"(a: 3, b: 4)",
        ("--input", str(tmp_path / "text.pt")): f"--input {tmp_path / 'text.pt'}: not a file "
                                                f"torch.load reads",
        ("--output", str(tmp_path / "p.txt")): f"--output {tmp_path / 'p.txt'}: expected a "
                                               f".csv or .pt file name"}
    for arguments, message in cases.items():
        with pytest.raises(UserError) as raised:
            predict.main(["-r", str(checkpoint), *arguments])
        assert str(raised.value).startswith(message), str(raised.value)
    assert sorted(path.name for path in checkpoint.parent.iterdir()) == before


def test_under_torchrun_each_process_predicts_its_share_and_rank_0_writes_all_in_order(
        trained, tmp_path):
    checkpoint, model = trained
    images = torch.rand(200, 1, 8, 8)  # 4 batches: 2 for each process
    torch.save(images, tmp_path / "new.pt")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node=2", str(ROOT / "predict.py"), "-r", str(checkpoint),
               "--input", str(tmp_path / "new.pt"), "--output", str(tmp_path / "two.csv")]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    rows = read_csv(tmp_path / "two.csv")
    with torch.no_grad():
        expected = model(images)
    got = torch.tensor([[float(cell) for cell in row[2:]] for row in rows[1:]])
    assert [int(row[0]) for row in rows[1:]] == list(range(200))
    assert torch.allclose(got, expected, atol=1e-5)
    assert result.stdout.count("Predictions of ") == 1  # rank 0 writes
