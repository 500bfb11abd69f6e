"""The template's Trainer against a bare hand-written loop doing the same work.

    python bench/overhead.py [--repeats 5] [--workloads digits mnist resnet18 [mnist10x]]
                             [--whole-process] [--fixed-costs] [--no-memory]

Both sides train the same model from the same initial weights on the same training samples with
the same optimizer, loss and batch size, validate on the same held-out samples (loss and
accuracy) and save the weights and the optimizer state once an epoch. The template side is what a
user gets from a config:
TensorBoard on, metrics (accuracy, top_k_acc) on, a checkpoint written atomically every epoch,
model_best, logging every `log_step` steps. The bare side is the loop a person would write:
a plain DataLoader (a sample at a time, `default_collate`), zero_grad / forward / loss /
backward / step, an eval pass, torch.save of model and optimizer (no fsync, no RNG states, no
train metrics, no TensorBoard).

Times: in one process, the two sides alternate, median of `--repeats`. Peak memory: each side
once in a fresh child process (peak RSS on the CPU, peak allocated on CUDA). Workloads: the
default digits config; MNIST-sized synthetic tensors (60,000 x 1 x 28 x 28, LeNet) and ten times
as many (`mnist10x`, 1.9 GB); a ResNet-18 on 32 x 32 colour images (synthetic). On CUDA each
workload is also run the way the device is fastest (`on_device`, bf16 autocast) beside the
default template side.

`--whole-process`: `python train.py -c config.json --epochs 40` against `python
bench/bare_loop.py --epochs 40` as whole processes (start, imports, checks, training), alternating.
`--fixed-costs`: what the template adds per optimizer step (us; the digits, batch 8, one epoch)
and per epoch (ms; `--fixed-epochs` 40 of one step each: validation, checkpoint, TensorBoard,
logs).
"""
import argparse
import copy
import functools
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
from torch.utils.data import TensorDataset

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import train  # noqa: E402
from base.base_data_loader import split_indices  # noqa: E402
from bench.bare_loop import plain_loaders, train_epochs  # noqa: E402
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
    generator = torch.Generator().manual_seed(0)
    if name == "resnet18":
        config["arch"] = {"type": "TorchvisionClassifier",
                          "args": {"name": "resnet18", "num_classes": 10}}
        config["loss"] = "cross_entropy"
        config["trainer"]["epochs"] = args.resnet_epochs
        images = torch.rand(args.resnet_samples, 3, 32, 32, generator=generator)
    else:
        config["arch"] = {"type": "LeNet", "args": {}}
        config["trainer"]["epochs"] = args.mnist_epochs
        samples = args.mnist_samples * (10 if name == "mnist10x" else 1)
        images = torch.rand(samples, 1, 28, 28, generator=generator)
    labels = torch.randint(0, 10, (len(images),), generator=generator)
    return config, TensorDataset(images, labels)


def device_path(config: dict) -> dict:
    """The config the way a GPU is fastest: the data on the device, bf16 autocast."""
    config = copy.deepcopy(config)
    config["data_loader"]["args"]["on_device"] = True
    config["trainer"]["amp"] = "bf16"
    return config


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


def bare_run(config: dict, dataset: TensorDataset, save_dir: str,
             steps_per_epoch: int | None = None) -> float:
    """Seconds for the same work written by hand (`steps_per_epoch`: as `trainer.len_epoch`)."""
    import model.model as module_arch

    seed_everything(config["seed"])
    model = getattr(module_arch, config["arch"]["type"])(**config["arch"]["args"])
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(device)
    criterion = getattr(F, config["loss"])
    optimizer = torch.optim.Adam(model.parameters(), **config["optimizer"]["args"])
    train_loader, valid_loader = plain_loaders(dataset, config, device)
    start = time.perf_counter()
    train_epochs(model, criterion, optimizer, train_loader, valid_loader,
                 config["trainer"]["epochs"], Path(save_dir), device,
                 steps_per_epoch=steps_per_epoch)
    return time.perf_counter() - start


def alternating(runs: dict, repeats: int, warm_up: bool = True) -> dict[str, float]:
    """The median seconds of each of `runs` (name: a function of a fresh folder), the runs
    alternating, after one round that warms up and is not counted (in-process runs: the first
    run of a process pays for lazy initialisation)."""
    times = {name: [] for name in runs}
    with tempfile.TemporaryDirectory() as save_dir:
        for repeat in range(repeats + warm_up):
            for name, run in runs.items():
                seconds = run(tempfile.mkdtemp(dir=save_dir))
                if repeat or not warm_up:
                    times[name].append(seconds)
    return {name: statistics.median(values) for name, values in times.items()}


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


def workloads(args, child_argv: list[str]) -> None:
    """Each workload in one process: the template against the bare loop."""
    for name in args.workloads:
        config, dataset = workload(name, args)
        runs = {"template": functools.partial(template_run, config, dataset),
                "bare": functools.partial(bare_run, config, dataset)}
        if torch.cuda.is_available():
            runs["device path"] = functools.partial(template_run, device_path(config), dataset)
        median = alternating(runs, args.repeats)
        n_train = len(dataset) - len(split_indices(len(dataset), config["data_loader"]["args"][
            "validation_split"], config["seed"])[1])
        line = (f"{name}: {n_train} training samples x {config['trainer']['epochs']} epochs, "
                f"template {median['template']:.3f} s, bare {median['bare']:.3f} s, time ratio "
                f"{median['template'] / median['bare']:.3f}")
        if "device path" in median:
            line += (f"; device path (on_device, bf16) {median['device path']:.3f} s, ratio "
                     f"{median['device path'] / median['bare']:.3f}")
        if not args.no_memory:
            template_mb, bare_mb = (child_peak_memory(name, side, child_argv)
                                    for side in ("template", "bare"))
            line += (f"; peak memory template {template_mb:.0f} MiB, bare {bare_mb:.0f} MiB, "
                     f"ratio {template_mb / bare_mb:.3f}")
        print(line, flush=True)


def whole_process(args) -> None:
    """`train.py` on the default config against `bench/bare_loop.py`, as whole processes."""
    def timed(command: list[str]) -> float:
        start = time.perf_counter()
        subprocess.run(command, check=True, cwd=ROOT, capture_output=True)
        return time.perf_counter() - start

    epochs = str(args.whole_epochs)
    median = alternating({
        "template": lambda folder: timed([sys.executable, "train.py", "-c", "config.json",
                                          "--epochs", epochs, "-o",
                                          f"trainer.save_dir={folder}"]),
        "bare": lambda folder: timed([sys.executable, "bench/bare_loop.py", "--epochs", epochs,
                                      "--save-dir", folder])}, args.repeats, warm_up=False)
    print(f"whole process, default config, {epochs} epochs: train.py {median['template']:.2f} s, "
          f"bare loop {median['bare']:.2f} s, time ratio "
          f"{median['template'] / median['bare']:.3f}", flush=True)


def fixed_costs(args) -> None:
    """What the template adds per optimizer step and per epoch, on the digits: each from two
    runs that differ only in the number of steps (or epochs), so what a run pays once (opening
    TensorBoard, the summary at the end) cancels out."""
    config, dataset = workload("digits", args)

    def added(runs: dict[str, tuple[dict, int | None]], counts: tuple[int, int]) -> float:
        """(template - bare) seconds per unit between the long and the short run."""
        timed = {}
        for name, (run_config, steps) in runs.items():
            timed[name] = functools.partial(template_run, run_config, dataset) \
                if name.startswith("template") else \
                functools.partial(bare_run, run_config, dataset, steps_per_epoch=steps)
        median = alternating(timed, args.repeats)
        long, short = counts
        return ((median["template long"] - median["template short"])
                - (median["bare long"] - median["bare short"])) / (long - short)

    steps = copy.deepcopy(config)  # one epoch of batch 8: all its steps, or the first 20
    steps["data_loader"]["args"]["batch_size"] = 8
    steps["trainer"]["epochs"] = 1
    few = copy.deepcopy(steps)
    few["trainer"]["len_epoch"] = 20
    n_steps = -(-len(split_indices(len(dataset), 0.1, config["seed"])[0]) // 8)
    per_step = added({"template long": (steps, None), "bare long": (steps, None),
                      "template short": (few, None), "bare short": (few, 20)}, (n_steps, 20))
    many, fewer = copy.deepcopy(config), copy.deepcopy(config)  # epochs of one step each
    many["trainer"].update(epochs=args.fixed_epochs, len_epoch=1)
    fewer["trainer"].update(epochs=max(1, args.fixed_epochs // 4), len_epoch=1)
    per_epoch = added({"template long": (many, None), "bare long": (many, 1),
                       "template short": (fewer, None), "bare short": (fewer, 1)},
                      (args.fixed_epochs, max(1, args.fixed_epochs // 4))) - per_step
    print(f"fixed costs (digits): {per_step * 1e6:.0f} us per optimizer step (batch 8), "
          f"{per_epoch * 1e3:.1f} ms per epoch (validation, checkpoint, TensorBoard, log) over "
          f"the bare loop's", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--mnist-samples", type=int, default=60000)
    parser.add_argument("--mnist-epochs", type=int, default=1)
    parser.add_argument("--digits-epochs", type=int, default=10)
    parser.add_argument("--resnet-samples", type=int, default=512)
    parser.add_argument("--resnet-epochs", type=int, default=3)
    parser.add_argument("--whole-epochs", type=int, default=40)
    parser.add_argument("--fixed-epochs", type=int, default=40)
    parser.add_argument("--workloads", nargs="*", default=["digits", "mnist", "resnet18"],
                        choices=["digits", "mnist", "mnist10x", "resnet18"])
    parser.add_argument("--whole-process", action="store_true")
    parser.add_argument("--fixed-costs", action="store_true")
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
    if args.whole_process:
        whole_process(args)
    if args.fixed_costs:
        fixed_costs(args)
    workloads(args, child_argv)
    print("reproduce: python bench/overhead.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
