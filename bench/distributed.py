"""One process against torchrun with N processes, on the same global batch.

    python bench/distributed.py [--processes 2] [--epochs 5] [--batch-size 64] [--repeats 2]

Trains the default config (digits, no dropout so both runs compute the same thing) once as
`python train.py` with batch N*B and once as `torchrun --nproc_per_node=N train.py` with
batch B, alternating, median of `--repeats`, and prints wall times (whole command, process
start and imports included), their ratio, the time per optimizer step from the logs, and the
largest weight difference between the two final checkpoints.

On a machine with fewer cores than processes the processes share cores: the ratio then
measures the overhead of the distributed machinery, not a speed-up.
"""
import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from utils.checkpoint import load_checkpoint  # noqa: E402


def write_config(folder: Path, batch_size: int, epochs: int) -> Path:
    config = json.loads((ROOT / "config.json").read_text())
    config["arch"]["args"] = {"dropout": 0.0}
    config["data_loader"]["args"].update({"batch_size": batch_size,
                                          "data_dir": str(ROOT / "data")})
    config["trainer"].update({"epochs": epochs, "save_dir": str(folder / "saved"),
                              "tensorboard": False, "verbosity": 1})
    path = folder / f"config_{batch_size}.json"
    path.write_text(json.dumps(config))
    return path


def training_seconds(log: Path) -> float:
    """From the run folder's first log line to the last: the epochs, without start-up."""
    stamps = [datetime.datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
              for line in log.read_text().splitlines() if line[:4].isdigit()]
    return (stamps[-1] - stamps[0]).total_seconds()


def timed(command: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(command, cwd=ROOT, check=True, capture_output=True,
                   env={**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")})
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=64, help="per process")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    n, batch = args.processes, args.batch_size

    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        single_config = write_config(folder, batch * n, args.epochs)
        ddp_config = write_config(folder, batch, args.epochs)
        times = {"single": [], "torchrun": []}
        training = {"single": [], "torchrun": []}
        for repeat in range(args.repeats):
            # both with OMP_NUM_THREADS=1 per process, as torchrun sets it
            times["single"].append(timed([sys.executable, "train.py", "-c", str(single_config),
                                          "--run-id", f"single{repeat}"]))
            times["torchrun"].append(timed([
                sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc_per_node={n}", "train.py", "-c", str(ddp_config),
                "--run-id", f"ddp{repeat}"]))
            logs = folder / "saved" / "log" / "Digits_CNN"
            training["single"].append(training_seconds(logs / f"single{repeat}" / "info.log"))
            training["torchrun"].append(training_seconds(logs / f"ddp{repeat}" / "info.log"))
        runs = folder / "saved" / "models" / "Digits_CNN"
        final = f"checkpoint-epoch{args.epochs}.pth"
        one = load_checkpoint(runs / "single0" / final)
        two = load_checkpoint(runs / "ddp0" / final)
        difference = max(float((one["state_dict"][k] - two["state_dict"][k]).abs().max())
                         for k in one["state_dict"])
        steps = one["global_step"]

    print(f"{args.epochs} epochs, {steps} optimizer steps of a global batch of {batch * n}, "
          f"{os.cpu_count()} CPU cores, OMP_NUM_THREADS=1 per process; median of {args.repeats}")
    print(f"{'':34} {'command':>9} {'training':>9}")
    for label, key in ((f"1 process, batch {batch * n}", "single"),
                       (f"{n} processes (torchrun), batch {batch}", "torchrun")):
        print(f"  {label:32} {statistics.median(times[key]):8.2f}s "
              f"{statistics.median(training[key]):8.2f}s")
    ratio = [statistics.median(values["torchrun"]) / statistics.median(values["single"])
             for values in (times, training)]
    print(f"  {'ratio torchrun / single':32} {ratio[0]:8.2f}x {ratio[1]:8.2f}x")
    print(f"  largest weight difference: {difference:.2e}")


if __name__ == "__main__":
    main()
