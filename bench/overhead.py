"""The template's Trainer against a bare hand-written loop doing the same work.

    python bench/overhead.py [--repeats 3] [--mnist-samples 60000] [--mnist-epochs 1]
                             [--digits-epochs 10] [--no-memory]

Both sides train the same model from the same initial weights on the same training samples with
the same optimizer, loss and batch size, validate on the same held-out samples (loss and
accuracy) and save the weights and the optimizer state once an epoch. The template side is what a
user gets from a config:
TensorBoard on, metrics (accuracy, top_k_acc) on, a checkpoint written atomically every epoch,
model_best, logging every `log_step` steps. The bare side is the loop a person would write:
zero_grad / forward / loss / backward / step, an eval pass, torch.save of model and
optimizer (no fsync, no RNG states, no train metrics, no TensorBoard).

Times: in one process, the two sides alternate, median of `--repeats`. Peak memory: each side
once in a fresh child process (peak RSS on the CPU, peak allocated on CUDA). Workloads:
MNIST-sized synthetic tensors (60,000 x 1 x 28 x 28, LeNet) and the default digits config.
"""
import argparse
import copy
import json
import logging
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, SubsetRandomSampler, TensorDataset

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import train  # noqa: E402
from base.base_data_loader import split_indices  # noqa: E402
from data_loader.datasets import digits_dataset  # noqa: E402
from parse_config import ConfigParser  # noqa: E402
from utils.seeding import seed_everything  # noqa: E402


def workload(name: str, args) -> tuple[dict, TensorDataset]:
    """The config and the data set of a workload; the config names the digits loader, the
    data set replaces its data."""
    config = json.loads((ROOT / "config.json").read_text())
    config["data_loader"]["args"]["data_dir"] = str(ROOT / "data")
    config["lr_scheduler"] = None
    if name == "digits":
        config["trainer"]["epochs"] = args.digits_epochs
        return config, digits_dataset(ROOT / "data", training=True)
    config["arch"] = {"type": "LeNet", "args": {}}
    config["trainer"]["epochs"] = args.mnist_epochs
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(args.mnist_samples, 1, 28, 28, generator=generator)
    labels = torch.randint(0, 10, (args.mnist_samples,), generator=generator)
    return config, TensorDataset(images, labels)


def template_run(config: dict, dataset: TensorDataset, save_dir: str) -> float:
    """Seconds for `trainer.train()` of a Trainer built from `config` over `dataset`."""
    import data_loader.data_loaders as module_data

    config = copy.deepcopy(config)
    config["trainer"]["save_dir"] = save_dir
    parsed = ConfigParser(config)
    original = module_data.digits_dataset
    module_data.digits_dataset = lambda data_dir, training: dataset  # the workload's data
    try:
        seed_everything(config["seed"])
        trainer = train.build_trainer(parsed)
    finally:
        module_data.digits_dataset = original
    parsed.make_run_dirs()
    start = time.perf_counter()
    trainer.train()
    return time.perf_counter() - start


def bare_run(config: dict, dataset: TensorDataset, save_dir: str) -> float:
    """Seconds for the same work written by hand."""
    import model.model as module_arch

    seed_everything(config["seed"])
    model = getattr(module_arch, config["arch"]["type"])(**config["arch"]["args"])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(device)
    optimizer = torch.optim.Adam(model.parameters(), **config["optimizer"]["args"])
    loader_args = config["data_loader"]["args"]
    train_idx, valid_idx = split_indices(len(dataset), loader_args["validation_split"],
                                         config["seed"])
    batch_size = loader_args["batch_size"]
    train_loader = DataLoader(dataset, batch_size, sampler=SubsetRandomSampler(train_idx),
                              pin_memory=device.type == "cuda")
    valid_loader = DataLoader(dataset, batch_size, sampler=valid_idx)
    start = time.perf_counter()
    for epoch in range(config["trainer"]["epochs"]):
        model.train()
        for data, target in train_loader:
            data, target = data.to(device, non_blocking=True), target.to(device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            loss = F.nll_loss(model(data), target)
            loss.backward()
            optimizer.step()
        model.eval()
        correct = total = 0
        loss_sum = torch.zeros((), device=device)
        with torch.no_grad():
            for data, target in valid_loader:
                data, target = data.to(device), target.to(device)
                output = model(data)
                loss_sum += F.nll_loss(output, target, reduction="sum")
                correct += (output.argmax(1) == target).sum()
                total += target.size(0)
        print(f"epoch {epoch + 1}: val_loss {float(loss_sum) / total:.4f} "
              f"val_accuracy {float(correct) / total:.4f}", file=sys.stderr)
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict()},
                   Path(save_dir) / f"epoch{epoch + 1}.pth")  # what resuming needs
    return time.perf_counter() - start


def child_peak_memory(name: str, side: str, argv: list[str]) -> float:
    """Peak memory (MiB) of one run of `side` in a fresh process."""
    result = subprocess.run([sys.executable, __file__, *argv, "--child", name, side],
                            capture_output=True, text=True, check=True)
    return float(result.stdout.strip().splitlines()[-1])


def run_child(name: str, side: str, args) -> None:
    config, dataset = workload(name, args)
    with tempfile.TemporaryDirectory() as save_dir:
        (template_run if side == "template" else bare_run)(config, dataset, save_dir)
    if torch.cuda.is_available():
        print(torch.cuda.max_memory_allocated() / 2**20)
    else:
        print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--mnist-samples", type=int, default=60000)
    parser.add_argument("--mnist-epochs", type=int, default=1)
    parser.add_argument("--digits-epochs", type=int, default=10)
    parser.add_argument("--workloads", nargs="+", default=["mnist", "digits"])
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args, _ = parser.parse_known_args()
    logging.disable(logging.INFO)  # the template's per-epoch log lines are not the point here
    if args.child:
        run_child(*args.child, args)
        return
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else \
        f"CPU ({torch.get_num_threads()} threads)"
    print(f"torch {torch.__version__} on {device}; median of {args.repeats} alternating repeats")
    child_argv = [a for a in sys.argv[1:] if a != "--no-memory"]
    for name in args.workloads:
        config, dataset = workload(name, args)
        times = {"template": [], "bare": []}
        with tempfile.TemporaryDirectory() as save_dir:
            for repeat in range(args.repeats + 1):  # round 0 warms up, not counted
                for side, run in (("template", template_run), ("bare", bare_run)):
                    seconds = run(config, dataset, tempfile.mkdtemp(dir=save_dir))
                    if repeat:
                        times[side].append(seconds)
        template_s, bare_s = (statistics.median(times[side]) for side in ("template", "bare"))
        n_train = len(dataset) - len(split_indices(len(dataset), config["data_loader"]["args"][
            "validation_split"], config["seed"])[1])
        line = (f"{name}: {n_train} training samples x {config['trainer']['epochs']} epochs, "
                f"template {template_s:.3f} s, bare {bare_s:.3f} s, time ratio "
                f"{template_s / bare_s:.3f}")
        if not args.no_memory:
            template_mb, bare_mb = (child_peak_memory(name, side, child_argv)
                                    for side in ("template", "bare"))
            line += (f"; peak memory template {template_mb:.0f} MiB, bare {bare_mb:.0f} MiB, "
                     f"ratio {template_mb / bare_mb:.3f}")
        print(line, flush=True)
    print("reproduce: python bench/overhead.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
