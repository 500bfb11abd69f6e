"""What exact resume costs in data loading: the template's BaseDataLoader (epoch-seeded sampler,
batches that carry seeds for the workers) against a plain torch DataLoader, one epoch each,
alternating, median of several repeats.

    python bench/data_loading.py [--repeats 5] [--samples 60000] [--workers 0 2]

Prints seconds per epoch for both and their ratio (template / plain; 1.00 = no cost).
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader, TensorDataset

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from base.base_data_loader import BaseDataLoader  # noqa: E402


def epoch_seconds(loader, epoch: int) -> float:
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(epoch)
    start = time.perf_counter()
    for _batch in loader:
        pass
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--samples", type=int, default=60000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    args = parser.parse_args()
    dataset = TensorDataset(torch.rand(args.samples, 1, 28, 28),
                            torch.randint(0, 10, (args.samples,)))
    print(f"MNIST-sized tensors: {args.samples} x 1 x 28 x 28, batch {args.batch_size}, "
          f"median of {args.repeats} epochs, torch {torch.__version__}")
    for workers in args.workers:
        template = BaseDataLoader(dataset, args.batch_size, shuffle=True, validation_split=0,
                                  num_workers=workers, seed=1)
        plain = DataLoader(dataset, args.batch_size, shuffle=True, num_workers=workers,
                           generator=torch.Generator().manual_seed(1))
        times = {"template": [], "plain": []}
        for repeat in range(args.repeats + 1):  # the first round warms up, not counted
            for name, loader in (("template", template), ("plain", plain)):
                seconds = epoch_seconds(loader, repeat)
                if repeat:
                    times[name].append(seconds)
        template_s, plain_s = (statistics.median(times[k]) for k in ("template", "plain"))
        print(f"num_workers={workers}: template {template_s:.3f} s, plain {plain_s:.3f} s, "
              f"ratio {template_s / plain_s:.3f}")
    print("reproduce: python bench/data_loading.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
