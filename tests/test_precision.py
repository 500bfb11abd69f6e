"""Mixed precision, gradient accumulation, clipping, compile, step-wise schedulers and kernel
settings: each on the CPU through the real `train.main`; the CUDA-only paths skip without a GPU."""
import json
import logging
import types

import pytest
import torch
from torch import nn

import train
from step.engine import StepEngine
from tests.conftest import run_folders, small_config
from utils.checkpoint import load_checkpoint
from utils.seeding import configure_backends

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def train_run(tmp_path, run_id: str, *argv: str, epochs: int = 1, **trainer) -> dict:
    """Train the shrunk real config (no dropout, so runs can be compared) and return its last
    checkpoint."""
    config = small_config(tmp_path / "saved", epochs=epochs, **trainer)
    config["arch"]["args"]["dropout"] = 0.0
    path = tmp_path / f"{run_id}.json"
    path.write_text(json.dumps(config))
    train.main(["-c", str(path), "--run-id", run_id, *argv])
    return load_checkpoint(tmp_path / "saved" / "models" / "Digits_CNN" / run_id /
                           f"checkpoint-epoch{epochs}.pth")


def step_engine(optimizer, amp=None, grad_clip_norm=None) -> StepEngine:
    """A step engine with these settings (the others the defaults), on the CPU."""
    settings = types.SimpleNamespace(nan_policy="stop", log_step=10, amp=amp,
                                     grad_clip_norm=grad_clip_norm)
    return StepEngine({"": optimizer}, torch.device("cpu"), settings, True,
                      logging.getLogger("test"))


@pytest.mark.slow
def test_bf16_autocast_trains_on_the_cpu(tmp_path):
    model = nn.Linear(4, 2)
    mechanics = step_engine(torch.optim.SGD(model.parameters(), lr=0.1), amp="bf16")
    with mechanics.autocast():
        assert model(torch.randn(3, 4)).dtype == torch.bfloat16
    full = train_run(tmp_path, "fp32")
    bf16 = train_run(tmp_path, "bf16", "-o", "trainer.amp=bf16")
    weights = bf16["state_dict"]["fc2.weight"]
    assert weights.dtype == torch.float32 and torch.isfinite(weights).all()
    assert not torch.equal(weights, full["state_dict"]["fc2.weight"])  # autocast did something
    assert torch.allclose(weights, full["state_dict"]["fc2.weight"], atol=0.05)
    assert bf16["scaler"] is None


@pytest.mark.slow
def test_fp16_keeps_its_grad_scaler_in_checkpoints_and_resumes_exactly(tmp_path):
    straight = train_run(tmp_path, "straight", "-o", "trainer.amp=fp16", epochs=2)
    assert straight["scaler"]["scale"] > 0 and straight["scaler"]["_growth_tracker"] > 0
    train_run(tmp_path, "resumed", "-o", "trainer.amp=fp16", epochs=1)
    runs = tmp_path / "saved" / "models" / "Digits_CNN"
    train.main(["-r", str(runs / "resumed" / "checkpoint-epoch1.pth"), "--epochs", "2"])
    resumed = load_checkpoint(runs / "resumed" / "checkpoint-epoch2.pth")
    assert resumed["scaler"] == straight["scaler"]
    for key, tensor in straight["state_dict"].items():
        assert torch.equal(resumed["state_dict"][key], tensor), key


@pytest.mark.slow
def test_accumulating_n_micro_batches_steps_like_one_batch_of_n_times_the_size(tmp_path):
    whole = train_run(tmp_path, "whole", "--bs", "64", "-o", "optimizer.type=SGD",
                      "-o", "optimizer.args={\"lr\": 0.05}")
    micro = train_run(tmp_path, "micro", "--bs", "16", "-o", "optimizer.type=SGD",
                      "-o", "optimizer.args={\"lr\": 0.05}", grad_accum_steps=4)
    assert whole["global_step"] == micro["global_step"] == 21  # ceil(1295 / 64)
    for key, tensor in whole["state_dict"].items():
        assert torch.allclose(micro["state_dict"][key], tensor, atol=1e-5), key
    assert not torch.equal(micro["state_dict"]["fc2.weight"], whole["state_dict"]["fc2.weight"])


@pytest.mark.parametrize("amp", [None, "fp16"])
def test_clipping_bounds_the_global_gradient_norm(amp):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 50), nn.ReLU(), nn.Linear(50, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: the step leaves grads be
    mechanics = step_engine(optimizer, amp=amp, grad_clip_norm=0.01)
    with mechanics.autocast():
        loss = model(torch.randn(32, 10) * 3).float().pow(2).mean()
    (mechanics.scaler.scale(loss) if mechanics.scaler is not None else loss).backward()
    scale = mechanics.scaler.get_scale() if mechanics.scaler is not None else 1.0
    unclipped = grad_norm(model) / scale  # fp16: the grads are scaled until apply() unscales
    mechanics.apply(optimizer)
    assert 1.0 < unclipped < float("inf")
    assert grad_norm(model) <= 0.01 * (1 + 1e-4)


def grad_norm(model: nn.Module) -> float:
    return float(torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad.float())
                                                       for p in model.parameters()])))


@pytest.mark.slow
def test_a_compiled_model_trains_and_checkpoints_plain_keys(tmp_path):
    checkpoint = train_run(tmp_path, "compiled", "-o", 'trainer.compile={"backend": "eager"}')
    assert set(checkpoint["state_dict"]) == {f"{layer}.{kind}" for layer in
                                             ("conv1", "conv2", "fc1", "fc2")
                                             for kind in ("weight", "bias")}


def test_a_step_wise_scheduler_steps_every_optimizer_step(tmp_path):
    scheduler = json.dumps({"type": "OneCycleLR", "interval": "step",
                            "args": {"max_lr": 0.01, "total_steps": 42}})
    checkpoint = train_run(tmp_path, "onecycle", "-o", f"lr_scheduler={scheduler}", epochs=2)
    assert checkpoint["lr_scheduler"]["last_epoch"] == 42 == checkpoint["global_step"]


def test_deterministic_turns_on_deterministic_algorithms_and_off_autotuning(tmp_path):
    try:
        train_run(tmp_path, "det", deterministic=True)
        assert torch.are_deterministic_algorithms_enabled()
        assert not torch.backends.cudnn.benchmark
    finally:
        configure_backends(cudnn_benchmark=True, deterministic=False)
    assert not torch.are_deterministic_algorithms_enabled() and torch.backends.cudnn.benchmark
    assert not torch.backends.cudnn.deterministic  # nothing left over for the next run


@cuda
def test_fp16_on_the_gpu_trains_with_a_scaler(tmp_path):
    checkpoint = train_run(tmp_path, "gpu", "-o", "trainer.amp=fp16", "-o", "n_gpu=1")
    assert checkpoint["scaler"]["scale"] > 0
    assert all(torch.isfinite(t).all() for t in checkpoint["state_dict"].values())


@cuda
def test_loaders_pin_memory_on_a_gpu_machine(tmp_path):
    import data_loader.data_loaders as module_data
    from tests.conftest import ROOT

    loader = module_data.DigitsDataLoader(str(ROOT / "data"), batch_size=8)
    assert loader.pin_memory
    data, _ = next(iter(loader))
    assert data.is_pinned()


def test_run_folders_helper_still_sees_one_run(tmp_path):
    train_run(tmp_path, "only")
    assert [p.name for p in run_folders(tmp_path / "saved")] == ["only"]


@pytest.mark.slow
def test_an_empty_compile_object_compiles_with_the_defaults(tmp_path):
    from parse_config import ConfigParser

    config = ConfigParser(small_config(tmp_path), modification={"trainer.compile": {}})
    model = train.build_trainer(config).model
    assert model._compiled_call_impl is not None  # compiled in place: lazily, at its first call
    assert not hasattr(model, "_orig_mod")  # no wrapper: checkpoints and hooks see the model
    config = ConfigParser(small_config(tmp_path), modification={"trainer.compile": True})
    assert train.build_trainer(config).model._compiled_call_impl is not None  # true: defaults
    config = ConfigParser(small_config(tmp_path), modification={"trainer.compile": False})
    assert train.build_trainer(config).model._compiled_call_impl is None


@pytest.mark.slow
def test_a_longer_one_cycle_on_resume_continues_on_the_new_schedule(tmp_path):
    def one_cycle(total: int) -> str:
        return json.dumps({"type": "OneCycleLR", "interval": "step",
                           "args": {"max_lr": 0.01, "total_steps": total}})
    straight = train_run(tmp_path, "straight", "-o", f"lr_scheduler={one_cycle(63)}", epochs=2)
    train_run(tmp_path, "short", "-o", f"lr_scheduler={one_cycle(21)}", epochs=1)
    runs = tmp_path / "saved" / "models" / "Digits_CNN"
    train.main(["-r", str(runs / "short" / "checkpoint-epoch1.pth"), "--epochs", "2",
                "-o", "lr_scheduler.args.total_steps=63"])
    resumed = load_checkpoint(runs / "short" / "checkpoint-epoch2.pth")
    assert resumed["lr_scheduler"]["total_steps"] == 63 and resumed["global_step"] == 42
    assert resumed["optimizer"]["param_groups"][0]["lr"] == \
        straight["optimizer"]["param_groups"][0]["lr"]  # step 42 of the 63-step cycle
