"""Training under torchrun: the sampler's split of each global batch, and real 2-process runs
(Gloo on the CPU) checked against a single process."""
import datetime
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import train
from base.samplers import EpochSampler, SeededBatchSampler
from runs.training_state import epoch_state, load_epoch_state
from tests.conftest import ROOT, killed_after, run_folders, run_main, small_config
from utils.checkpoint import load_checkpoint


# ---------------------------------------------------------------- the sampler, in one process
def pieces(n: int, batch_size: int, world: int, drop_last: bool = False, even: bool = True,
           epoch: int = 0, start_batch: int = 0) -> list[list[list[int]]]:
    """For each rank, the batches its SeededBatchSampler yields in `epoch`."""
    result = []
    for rank in range(world):
        sampler = EpochSampler(range(n), shuffle=True, seed=5)
        batches = SeededBatchSampler(sampler, batch_size, drop_last, seed=5, rank=rank,
                                     world_size=world, even=even)
        sampler.set_position(epoch, 0, start_batch * batch_size * world)
        result.append([list(batch) for batch in batches])
        assert len(batches) == len(result[-1]) or start_batch, "len() must match iteration"
    return result


@pytest.mark.parametrize("n", [1295, 1280, 1281, 64, 3])
@pytest.mark.parametrize("world", [2, 3])
@pytest.mark.parametrize("drop_last", [False, True])
def test_the_processes_pieces_make_up_the_single_process_batches(n, world, drop_last):
    batch = 32
    single = pieces(n, batch * world, 1, drop_last)[0]
    ranks = pieces(n, batch, world, drop_last)
    counts = {len(batches) for batches in ranks}
    assert len(counts) == 1, "every process must take part in every step"
    for step, batches in enumerate(zip(*ranks)):
        assert sum(batches, []) == single[step]  # the same samples, in rank order
        sizes = [len(b) for b in batches]
        assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1
    # only a last global batch with fewer samples than processes is left out
    assert len(single) - counts.pop() == (0 < n % (batch * world) < world and not drop_last)


@pytest.mark.parametrize("n", [143, 129, 1, 64])
def test_validation_pieces_cover_every_sample_once(n):
    ranks = pieces(n, 32, 3, even=False)
    seen = [index for batches in ranks for batch in batches for index in batch]
    assert sorted(seen) == list(range(n))
    assert all(batch for batches in ranks for batch in batches)  # no empty batches


def test_a_resumed_epoch_continues_each_process_where_it_stopped():
    full = pieces(1295, 32, 2, epoch=3)
    resumed = pieces(1295, 32, 2, epoch=3, start_batch=7)
    assert [batches[7:] for batches in full] == resumed


def test_augmentation_seeds_differ_between_processes():
    keys = []
    for rank in range(2):
        sampler = EpochSampler(range(100), shuffle=True, seed=5)
        batches = SeededBatchSampler(sampler, 10, False, seed=5, rank=rank, world_size=2)
        keys.append([batch.seed_key for batch in batches])
    assert not set(keys[0]) & set(keys[1])


# ---------------------------------------------------------------- real runs under torchrun
# Largest weight difference allowed between 1 process with batch 2B and 2 with B (SGD, 2
# epochs), where sums run in another order: measured 1.8e-7 (weights are ~0.1), 1.2e-7 when
# the 2 processes stop mid-epoch and 1 process finishes. Not weighting the losses of the
# uneven last batch (8 + 7 samples) gives 4.2e-4 after one epoch.
TOLERANCE = 1e-5
# Later, the rounding differences can flip a ReLU whose input is within rounding of 0 for one
# sample, and that sample's gradient then takes another path: on torch 2.14.1 this happens at
# step 20 of epoch 2 (4.2e-7 before it, 5.8e-5 after it; 3.7e-5 at the end of epoch 2, the
# same with one thread per process). A real error in the weighting is caught in epoch 1.
TOLERANCE_LATER = 2e-4

def torchrun(*args: str, nproc: int = 2, env: dict | None = None, check: bool = True,
             timeout: int = 300, script: str = "train.py") -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc_per_node={nproc}", str(ROOT / script), *args]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                            env={**os.environ, "PYTHONHASHSEED": "0", **(env or {})})
    if check and result.returncode != 0:
        raise AssertionError(f"torchrun exited {result.returncode}\nstdout:\n"
                             f"{result.stdout[-3000:]}\nstderr:\n{result.stderr[-3000:]}")
    return result


def stop_torchrun_at_step(config: Path, run_id: str, step: int) -> str:
    """Run tests/slow_train.py under torchrun and send torchrun SIGTERM once a process has
    finished `step`; torchrun passes it on to every process. The output."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node=2", str(ROOT / "tests" / "slow_train.py"), "-c", str(config),
               "--run-id", run_id]
    # slow from `step` on: the rest of its epoch takes seconds, so the signal lands in it
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True,
                               env={**os.environ, "STEP_DELAY": "0.5",
                                    "STEP_DELAY_FROM": str(step), "PYTHONHASHSEED": "0"})
    seen = []
    with killed_after(process):
        for line in process.stdout:
            seen.append(line)
            if line.strip() == f"STEP {step}":
                process.send_signal(signal.SIGTERM)
                break
    output = "".join(seen) + process.communicate(timeout=120)[0]
    assert process.returncode != 0, output
    return output


def ddp_config(tmp_path: Path, batch_size: int, **trainer) -> Path:
    """The real config without dropout (the only randomness that differs between 1 process
    with batch 2B and 2 with B), at `batch_size` per process."""
    config = small_config(tmp_path / "saved", **{"epochs": 2, **trainer})
    config["arch"]["args"] = {"dropout": 0.0}
    config["data_loader"]["args"]["batch_size"] = batch_size
    # SGD: Adam divides by the root of tiny second moments, where rounding noise can grow to
    # lr-sized steps; SGD keeps the two runs' difference at the size of the rounding
    config["optimizer"] = {"type": "SGD", "args": {"lr": 0.05, "momentum": 0.9}}
    path = tmp_path / f"config_bs{batch_size}.json"
    path.write_text(json.dumps(config))
    return path


def weights(folder: Path, name: str) -> dict[str, torch.Tensor]:
    return load_checkpoint(folder / name)["state_dict"]


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[key] - b[key]).abs().max()) for key in a)


@pytest.mark.slow
def test_two_processes_with_batch_b_train_like_one_with_batch_2b(tmp_path):
    # 1295 training samples: the last global batch of 64 has 15, split 8 + 7 between processes
    run_main("train.py", "-c", str(ddp_config(tmp_path, 64)), "--run-id", "single")
    # the two processes slice their batches from memory (data_loader.args.on_device; the
    # DataLoader path under torchrun: the accumulation-and-workers test)
    result = torchrun("-c", str(ddp_config(tmp_path, 32)), "--run-id", "ddp", "-o",
                      "data_loader.args.on_device=true")
    single, ddp = tmp_path / "saved/models/Digits_CNN/single", tmp_path / "saved/models/Digits_CNN/ddp"
    assert [p.name for p in run_folders(tmp_path / "saved")] == ["ddp", "single"]

    for epoch, tolerance in ((1, TOLERANCE), (2, TOLERANCE_LATER)):
        name = f"checkpoint-epoch{epoch}.pth"
        assert max_difference(weights(single, name), weights(ddp, name)) < tolerance
    one = load_checkpoint(single / "checkpoint-epoch2.pth")
    two = load_checkpoint(ddp / "checkpoint-epoch2.pth")
    assert one["global_step"] == two["global_step"] == 2 * 21  # ceil(1295 / 64) steps an epoch
    assert two["monitor_best"] == pytest.approx(one["monitor_best"], rel=1e-5)  # val_loss, exact set
    assert len(two["rng_states"]) == 2 and one["rng_states"] is None

    # metrics over all samples: the epoch tables agree, validation counts every sample once
    def table(folder: Path) -> list[tuple[str, float]]:
        """Every epoch's `key: value` rows in the run's info.log."""
        text = (tmp_path / "saved/log/Digits_CNN" / folder.name / "info.log").read_text()
        rows = [line.split("trainer - INFO - ")[1].split() for line in text.splitlines()
                if "trainer - INFO -   " in line]  # the epoch table's rows: name, train, valid
        return [(f"{name}/{split}", float(value)) for name, *values in rows
                if name != "train" for split, value in zip(("train", "valid"), values[:2])]
    one_table, two_table = table(single), table(ddp)
    assert [key for key, _ in one_table] == [key for key, _ in two_table]
    assert len(one_table) == 2 * 6
    # accuracy over the 143 validation samples, each counted once: a multiple of 1/143
    for value in (value for key, value in two_table if key == "accuracy/valid"):
        assert abs(value * 143 - round(value * 143)) < 1e-3
    for (key, one_value), (_, two_value) in zip(one_table, two_table):
        assert two_value == pytest.approx(one_value, abs=1e-5), key

    # only rank 0 logs: each epoch is reported once
    assert len(re.findall(r"^Epoch \d/2 ", result.stdout, re.MULTILINE)) == 2
    assert result.stdout.count("Saving checkpoint") == 4 and "[rank 1]" not in result.stderr
    sessions = json.loads((ddp / "manifest.json").read_text())["sessions"]
    assert sessions[0]["processes"] == 2

    # the DDP checkpoint is a plain one: test.py and a single-process resume load it
    report = run_main("test.py", "-r", str(ddp))
    assert "accuracy" in report.stdout
    run_main("train.py", "-r", str(ddp / "checkpoint-epoch2.pth"), "--epochs", "3")
    assert load_checkpoint(ddp / "checkpoint-epoch3.pth")["epoch"] == 3


@pytest.mark.slow
def test_accumulation_and_workers_under_torchrun_match_one_process(tmp_path):
    # 2 micro-batches a step (DDP's no_sync on the first), loaded by a worker process each
    extra = {"grad_accum_steps": 2, "epochs": 1}
    single = ddp_config(tmp_path, 32, **extra)
    ddp = ddp_config(tmp_path, 16, **extra)
    for path in (single, ddp):
        config = json.loads(path.read_text())
        config["data_loader"]["args"]["num_workers"] = 1
        path.write_text(json.dumps(config))
    run_main("train.py", "-c", str(single), "--run-id", "single")
    torchrun("-c", str(ddp), "--run-id", "ddp")
    runs = tmp_path / "saved/models/Digits_CNN"
    name = "checkpoint-epoch1.pth"
    assert max_difference(weights(runs / "single", name), weights(runs / "ddp", name)) < TOLERANCE
    assert load_checkpoint(runs / "ddp" / name)["global_step"] == 21


@pytest.mark.slow
def test_a_signal_stops_every_process_and_the_run_resumes_exactly(tmp_path):
    config = ddp_config(tmp_path, 32, epochs=3)
    torchrun("-c", str(config), "--run-id", "straight")

    # SIGTERM to torchrun mid-epoch 2: it passes it on to both processes, which agree on the
    # step, save one checkpoint and exit
    output = stop_torchrun_at_step(config, "stopped", 30)
    stopped = tmp_path / "saved/models/Digits_CNN/stopped"
    interrupted = load_checkpoint(stopped / "checkpoint-interrupted.pth")
    assert interrupted["epoch"] == 1 and 0 < interrupted["epoch_step"] < 21, output
    assert output.count("Stopped by SIGTERM") == 1

    torchrun("-r", str(stopped))
    straight = tmp_path / "saved/models/Digits_CNN/straight"
    final = "checkpoint-epoch3.pth"
    assert max_difference(weights(straight, final), weights(stopped, final)) == 0.0
    assert load_checkpoint(stopped / final)["global_step"] == 3 * 21


@pytest.mark.slow
def test_workers_whose_torchrun_agent_was_killed_save_and_end_instead_of_training_on(tmp_path):
    config = ddp_config(tmp_path, 32, epochs=3)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node=2", str(ROOT / "tests" / "slow_train.py"), "-c", str(config),
               "--run-id", "orphans"]
    agent = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, start_new_session=True,
                             env={**os.environ, "STEP_DELAY": "0.5", "STEP_DELAY_FROM": "5",
                                  "PYTHONHASHSEED": "0"})
    workers, seen = [], []
    with killed_after(agent):
        for line in agent.stdout:
            seen.append(line)
            if line.startswith("PROCESS "):
                workers.append(int(line.split()[2]))
            if line.strip() == "STEP 5":
                break
    agent.kill()  # SIGKILL: the agent cannot pass anything on to its workers
    agent.wait()
    deadline = time.monotonic() + 90
    while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    seen += agent.stdout.readlines()
    assert len(workers) == 2 and not any(alive(pid) for pid in workers), "".join(seen)
    interrupted = load_checkpoint(tmp_path / "saved/models/Digits_CNN/orphans/"
                                  "checkpoint-interrupted.pth")
    assert 5 <= interrupted["global_step"] < 21, "".join(seen)


@pytest.mark.slow
def test_a_killed_peer_is_one_line_not_a_collectives_traceback(tmp_path):
    config = ddp_config(tmp_path, 32, epochs=3)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node=2", str(ROOT / "tests" / "slow_train.py"), "-c", str(config)]
    agent = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True, start_new_session=True,
                             env={**os.environ, "STEP_DELAY": "0.1"})
    workers = {}
    with killed_after(agent):
        for line in agent.stdout:
            if line.startswith("PROCESS "):
                workers[int(line.split()[1])] = int(line.split()[2])
            if line.strip() == "STEP 5":
                break
    os.kill(workers[1], signal.SIGKILL)  # out of memory, say
    out, err = agent.communicate(timeout=120)
    assert agent.returncode != 0
    # rank 0's collective fails: one line (unless torchrun's SIGTERM ends it first), never the
    # template's traceback
    assert f'File "{ROOT}' not in err, err
    lines = [line for line in err.splitlines() if "another process of this run is gone" in line]
    assert all(re.match(r"(\[rank0\]:)?error: another process of this run is gone, so this "
                        r"one stops too \(.*Connection", line) for line in lines), err


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (exited, not yet reaped by its new parent) is not alive
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


@pytest.mark.slow
def test_a_mid_epoch_stop_of_two_processes_resumes_in_one_with_the_same_global_batch(tmp_path):
    config = ddp_config(tmp_path, 32, epochs=2)
    output = stop_torchrun_at_step(config, "stopped", 25)
    assert load_checkpoint(tmp_path / "saved/models/Digits_CNN/stopped/"
                           "checkpoint-interrupted.pth")["epoch_step"] > 0, output
    stopped = tmp_path / "saved/models/Digits_CNN/stopped"
    # a different global batch cannot continue the epoch
    refused = run_main("train.py", "-r", str(stopped), check=False)
    assert refused.returncode == 2
    assert "global" not in refused.stderr and "batch_size 32 x 2 processes" in refused.stderr
    # one process with batch 64 continues the same global batches
    run_main("train.py", "-r", str(stopped), "--bs", "64")
    run_main("train.py", "-c", str(ddp_config(tmp_path, 64, epochs=2)), "--run-id", "single")
    single = tmp_path / "saved/models/Digits_CNN/single"
    name = "checkpoint-epoch2.pth"
    assert max_difference(weights(single, name), weights(stopped, name)) < TOLERANCE_LATER


@pytest.mark.slow
def test_a_nan_on_one_process_stops_both_without_saving(tmp_path):
    config = ddp_config(tmp_path, 32, epochs=2)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node=2", str(ROOT / "tests" / "slow_train.py"), "-c", str(config),
               "--run-id", "nan"]
    # both stop: rank 0 does not wait forever on rank 1 (the timeout catches a hang)
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120,
                            env={**os.environ, "NAN_AT_STEP": "25", "NAN_RANK": "1"})
    assert result.returncode != 0
    assert "the loss became NaN or infinite at epoch 2, step 4" in result.stderr
    folder = tmp_path / "saved/models/Digits_CNN/nan"
    assert sorted(p.name for p in folder.glob("*.pth")) == ["checkpoint-epoch1.pth",
                                                            "model_best.pth"]


@pytest.mark.slow
def test_early_stopping_stops_every_process(tmp_path):
    # val_loss falls, so "max val_loss" stops improving after epoch 1
    config = ddp_config(tmp_path, 32, epochs=5, monitor="max val_loss", early_stop=1)
    result = torchrun("-c", str(config), "--run-id", "early", timeout=120)
    assert "early stop: val_loss did not improve for 1 epochs." in result.stdout
    folder = tmp_path / "saved/models/Digits_CNN/early"
    assert load_checkpoint(folder / "checkpoint-epoch2.pth")["epoch"] == 2
    assert not (folder / "checkpoint-epoch3.pth").exists()


@pytest.mark.slow
def test_a_config_error_under_torchrun_is_one_line_per_process_and_writes_nothing(tmp_path):
    config = ddp_config(tmp_path, 32)
    result = torchrun("-c", str(config), "--lr", "-1", check=False, timeout=120)
    assert result.returncode != 0
    # each process checks the config and reports; torchrun stops the others as soon as one
    # exits, so a process may be stopped before it prints: at least one line, every line whole
    lines = [line for line in result.stderr.splitlines() if "error: optimizer" in line]
    assert lines and all(re.fullmatch(r"(\[rank 1\] )?error: optimizer\.args: .+", line)
                         for line in lines), result.stderr
    # torchrun's own summary of the failed processes follows; no traceback from the template
    assert f'File "{ROOT}' not in result.stderr
    assert not (tmp_path / "saved").exists()


@pytest.mark.slow
def test_test_py_refuses_torchrun(tmp_path):
    train.main(["-c", str(ddp_config(tmp_path, 64, epochs=1)), "--run-id", "one"])
    result = torchrun("-r", str(tmp_path / "saved/models/Digits_CNN/one"), script="test.py",
                      check=False, timeout=120)
    assert "test.py evaluates in one process" in result.stderr


@pytest.mark.slow
def test_dry_run_under_torchrun_steps_in_every_process_and_writes_nothing(tmp_path):
    result = torchrun("-c", str(ddp_config(tmp_path, 32)), "--dry-run", timeout=120)
    assert not (tmp_path / "saved").exists()
    assert result.stdout.count("Model summary:") == 1  # rank 0 prints
    assert "Dry run: 2 training steps (loss " in result.stdout and "[rank 1]" not in result.stderr


@pytest.mark.slow
def test_a_failure_in_one_process_at_start_stops_all_with_one_line_and_no_run_folder(tmp_path):
    config = ddp_config(tmp_path, 32)
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         str(ROOT / "tests" / "slow_train.py"), "-c", str(config)], cwd=ROOT, capture_output=True,
        text=True, timeout=120, env={**os.environ, "FAIL_START_RANK": "1"})
    assert result.returncode != 0
    assert "[rank 1] error: data_loader: injected failure" in result.stderr
    assert "error: stopped: starting failed in process 1 (its error is above)" in result.stderr
    assert f'File "{ROOT}' not in result.stderr
    assert not (tmp_path / "saved").exists()


@pytest.mark.slow
def test_a_run_folder_rank_0_cannot_make_stops_every_process_with_one_line(tmp_path):
    config = ddp_config(tmp_path, 32)
    result = torchrun("-c", str(config), "-o", "trainer.save_dir=/proc/no/such", check=False,
                      timeout=120)
    assert "error: trainer.save_dir: cannot create /proc/no/such" in result.stderr
    assert "[rank 1] error: stopped: opening the run folder failed in process 0" in result.stderr
    assert f'File "{ROOT}' not in result.stderr


@pytest.mark.slow
def test_a_validation_set_smaller_than_the_processes(tmp_path):
    # one validation sample: process 1 has none, and validation is still over that one
    torchrun("-c", str(ddp_config(tmp_path, 32, epochs=1)), "-o",
             "data_loader.args.validation_split=1", "--run-id", "tiny", timeout=120)
    log = (tmp_path / "saved/log/Digits_CNN/tiny/info.log").read_text()
    accuracy = float(log.split("INFO -   accuracy")[1].split()[1])  # the valid column
    assert accuracy in (0.0, 1.0)


@pytest.mark.slow
def test_a_signal_to_one_process_still_saves_the_checkpoint(tmp_path):
    # (a scheduler signalling one task, kill on one pid): every process stops at the same step,
    # and the one that got the signal waits for rank 0's write in a slow save (torchrun stops
    # the others once one has exited; 30 s later it kills them)
    config = ddp_config(tmp_path, 32)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               "--nproc_per_node=2", str(ROOT / "tests" / "slow_train.py"),
               "-c", str(config), "--run-id", "one"]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True,
                               env={**os.environ, "STEP_DELAY": "0.5", "STEP_DELAY_FROM": "15",
                                    "SAVE_DELAY": "3"})
    seen, pids = [], {}
    with killed_after(process):
        for line in process.stdout:
            seen.append(line)
            if line.startswith("PROCESS "):
                _, rank, pid = line.split()
                pids[rank] = int(pid)
            if line.strip() == "STEP 15":
                os.kill(pids["1"], signal.SIGTERM)
                break
    output = "".join(seen) + process.communicate(timeout=120)[0]
    checkpoint = load_checkpoint(tmp_path / "saved/models/Digits_CNN/one/"
                                 "checkpoint-interrupted.pth")
    assert checkpoint["epoch"] == 0 and checkpoint["epoch_step"] >= 15, output
    assert "[rank 1] SIGTERM received" in output and "Stopped by SIGTERM" in output
    # both ended after the write: torchrun's summary gives each process's exit time
    exits = [datetime.datetime.strptime(line.split(": ", 1)[1].strip(), "%Y-%m-%d_%H:%M:%S")
             for line in output.splitlines() if line.strip().startswith("time      :")]
    assert len(exits) == 2 and abs((exits[0] - exits[1]).total_seconds()) <= 1, output


# ---------------------------------------------------------------- starting, without processes
def test_a_local_rank_without_a_gpu_is_one_clear_error(monkeypatch):
    from utils import distributed
    from utils.errors import UserError

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(UserError, match=r"^LOCAL_RANK 1 has no GPU: this machine has 1; start "
                                        r"at most that many processes per node"):
        distributed.start(use_cuda=True)
    assert not distributed.active()


def test_world_size_without_torchrun_variables_is_one_clear_error(monkeypatch):
    from utils import distributed
    from utils.errors import UserError

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("LOCAL_RANK", raising=False)
    with pytest.raises(UserError, match="RANK and LOCAL_RANK are not: start several processes with "
                                        "torchrun"):
        distributed.start(use_cuda=False)
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(UserError, match="WORLD_SIZE='two'"):
        distributed.launched_world_size()


def test_alone_every_helper_answers_for_one_process():
    from step.metrics import MetricTracker
    from utils import distributed

    assert (distributed.rank(), distributed.world_size(), distributed.is_main()) == (0, 1, True)
    assert distributed.sum_counts([1, 2.5]) == [1.0, 2.5]
    assert distributed.max_value(3) == 3 and distributed.from_main("x") == "x"
    assert distributed.gathered({"a": 1}) == [{"a": 1}]
    tracker = MetricTracker("loss")
    tracker.update("loss", torch.tensor(2.0), 4)
    tracker.all_reduce()
    assert tracker.result() == {"loss": 2.0} and tracker.count("loss") == 4


def test_a_mid_epoch_checkpoint_with_another_pass_length_is_refused(tmp_path):
    # 2 processes x 64 leave out a last global batch of 1 sample that 1 process x 128 trains
    # on: the same global batch, but the positions in the epoch differ
    from parse_config import ConfigParser
    from utils.errors import ConfigError

    trainer = train.build_trainer(ConfigParser(small_config(tmp_path, epochs=1), run_id="r"))
    state = {**epoch_state(trainer), "batches_per_pass": len(trainer.data_loader) - 1}
    with pytest.raises(ConfigError, match=rf"^data_loader\.args\.batch_size: the checkpoint "
                                          rf"stopped mid-epoch with {len(trainer.data_loader) - 1}"
                                          rf" batches per pass over the data, this run makes"):
        load_epoch_state(trainer, state)
    other = {**epoch_state(trainer), "batch_size": 32, "world_size": 1}
    with pytest.raises(ConfigError, match=r"Keep 32 samples per step \(--bs 32 with 1 process\)"):
        load_epoch_state(trainer, other)


def example_ddp_config(tmp_path: Path, example: str, batch_size: int) -> Path:
    """An example's config for comparing 1 process with 2: 1 epoch, SGD, no dropout."""
    config = json.loads((ROOT / "examples" / f"{example}.json").read_text())
    config["data_loader"]["args"].update({"data_dir": str(ROOT / "data"),
                                          "batch_size": batch_size})
    # the diabetes targets are ~100x the digits' labels: so are its gradients
    lr = 0.05 if example == "dict_batches" else 1e-5
    config["optimizer"] = {"type": "SGD", "args": {"lr": lr, "momentum": 0.9}}
    config["trainer"].update({"epochs": 1, "save_dir": str(tmp_path / "saved"), "verbosity": 1,
                              "tensorboard": False})
    path = tmp_path / f"{example}_bs{batch_size}.json"
    path.write_text(json.dumps(config))
    return path


@pytest.mark.slow
@pytest.mark.parametrize("example, name", [("dict_batches", "Digits_Dict"),
                                           ("tabular", "Diabetes_MLP")])
def test_an_example_in_two_processes_trains_like_one_with_the_doubled_batch(tmp_path, example,
                                                                           name):
    """Dict batches through the default step; torchmetrics metrics (RMSE, R²) synchronised
    over the processes: the same weights and the same validation values."""
    pytest.importorskip("examples", reason="made without the examples leaf")
    run_main("train.py", "-c", str(example_ddp_config(tmp_path, example, 64)),
               "--run-id", "single")
    torchrun("-c", str(example_ddp_config(tmp_path, example, 32)), "--run-id", "ddp")
    runs = tmp_path / "saved" / "models" / name
    single, ddp = (load_checkpoint(runs / run / "checkpoint-epoch1.pth") for run in ("single", "ddp"))
    assert max_difference(single["state_dict"], ddp["state_dict"]) < TOLERANCE
    assert single["best_log"].keys() == ddp["best_log"].keys()
    for key, value in single["best_log"].items():
        assert ddp["best_log"][key] == pytest.approx(value, rel=1e-5), key


@pytest.mark.slow
def test_manual_optimization_under_torchrun_is_refused_with_one_line(tmp_path):
    pytest.importorskip("examples", reason="made without the examples leaf")
    config = json.loads((ROOT / "examples" / "gan.json").read_text())
    config["data_loader"]["args"]["data_dir"] = str(ROOT / "data")
    config["trainer"].update({"epochs": 1, "save_dir": str(tmp_path / "saved")})
    path = tmp_path / "gan.json"
    path.write_text(json.dumps(config))
    result = torchrun("-c", str(path), check=False)
    assert result.returncode != 0
    assert f'File "{ROOT}' not in result.stderr  # torchrun's own summary follows; none of ours
    assert "error: trainer.type: GANTrainer steps its optimizers itself (automatic_optimization" \
           " = False), which torchrun does not support" in result.stderr
    assert not (tmp_path / "saved").exists()


@pytest.mark.slow
def test_swa_under_torchrun_recomputes_batch_norm_and_resumes_exactly(tmp_path):
    """SWA's BatchNorm pass runs in every process over its share and averages the statistics
    (an all-reduce in each epoch's end): stopped mid-epoch and resumed, the averaged weights and
    statistics are bit for bit those of a straight run."""
    config = ddp_config(tmp_path, 32, epochs=2, swa={"start_epoch": 1, "lr": 0.01})
    settings = json.loads(config.read_text())
    settings["arch"] = {"type": "TorchvisionClassifier", "args": {
        "name": "mobilenet_v3_small", "num_classes": 10, "in_channels": 1, "weights": None}}
    settings["loss"] = "cross_entropy"
    config.write_text(json.dumps(settings))
    torchrun("-c", str(config), "--run-id", "straight")
    stop_torchrun_at_step(config, "stopped", 30)  # epoch 2, after epoch 1's average
    stopped = tmp_path / "saved/models/Digits_CNN/stopped"
    torchrun("-r", str(stopped))
    straight = load_checkpoint(tmp_path / "saved/models/Digits_CNN/straight/checkpoint-epoch2.pth")
    resumed = load_checkpoint(stopped / "checkpoint-epoch2.pth")
    assert max_difference(straight["state_dict"], resumed["state_dict"]) == 0.0
    assert max_difference(straight["averaging"]["training_state_dict"],
                          resumed["averaging"]["training_state_dict"]) == 0.0
    assert straight["averaging"]["updates"] == 2
    # the statistics were recomputed for the averaged weights, not the training model's
    running = [key for key in straight["state_dict"] if key.endswith("running_mean")]
    assert running and max_difference(
        {key: straight["state_dict"][key] for key in running},
        {key: straight["averaging"]["training_state_dict"][key] for key in running}) > 0
