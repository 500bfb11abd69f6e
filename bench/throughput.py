"""Training samples per second of the template's Trainer for a config, per setting.

    python bench/throughput.py [-c config.json] [--epochs 3] [-o key.path=value ...]
                               [--setting '{"trainer key": value, ...}' ...]

On the CPU it measures the config as given and with `trainer.amp` bf16; with CUDA also fp16
and `trainer.compile`, each alone and together (on the CPU, add `-o trainer.compile=true` to
measure compile). `--setting` measures the given `trainer` keys instead, each against the config
as given (e.g. `--setting '{"tensorboard": true, "watch": {"grad_norm": true}}'`; TensorBoard is
off unless a setting turns it on). A timed epoch is what an epoch costs a user — training, validation and the
epoch's checkpoint — and the rate counts the training samples. The first epoch of each setting
warms up (compilation, cuDNN autotuning) and is not counted.
"""
import argparse
import dataclasses
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import train  # noqa: E402
from base.base_data_loader import batch_size_of, sample_count  # noqa: E402
from config.key_paths import parse_overrides  # noqa: E402
from parse_config import ConfigParser  # noqa: E402
from utils.seeding import seed_everything  # noqa: E402
from utils.util import read_json  # noqa: E402


def settings(given: list[str]) -> list[dict]:
    """The `trainer` keys of each measured setting: `given` (JSON objects) or the defaults."""
    if given:
        return [{}, *map(json.loads, given)]
    measured = [{}, {"amp": "bf16"}]
    if torch.cuda.is_available():
        measured += [{"amp": "fp16"}, {"compile": True}, {"amp": "bf16", "compile": True}]
    return measured


def samples_per_second(config: dict, epochs: int, trainer_keys: dict) -> float:
    with tempfile.TemporaryDirectory() as save_dir:
        modification = {"trainer.save_dir": save_dir, "trainer.epochs": 1,
                        "trainer.tensorboard": False}
        modification.update({f"trainer.{key}": value for key, value in trainer_keys.items()})
        parsed = ConfigParser(config, modification=modification)
        parsed.validate(train.blocks())
        seed_everything(parsed.get("seed", 0))
        trainer = train.build_trainer(parsed)
        parsed.make_run_dirs()
        trainer.train()  # warm-up epoch
        trainer.settings = dataclasses.replace(trainer.settings, epochs=1 + epochs)
        trainer.start_epoch = 2
        if trainer.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        trainer.train()
        if trainer.device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    if trainer.batches.iteration_based:
        n_samples = trainer.len_epoch * trainer.batches.accum * batch_size_of(trainer.data_loader)
    else:
        n_samples = sample_count(trainer.data_loader)
    return epochs * n_samples / seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-c", "--config", default=str(ROOT / "config.json"))
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("-o", "--override", action="append", default=[])
    parser.add_argument("--setting", action="append", default=[],
                        help="trainer keys to measure, as a JSON object; repeatable")
    args = parser.parse_args()
    logging.disable(logging.INFO)
    config = read_json(args.config)
    config = ConfigParser(config, modification=parse_overrides(args.override)).config
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else \
        f"CPU ({torch.get_num_threads()} threads)"
    print(f"{args.config}, torch {torch.__version__} on {device}, {args.epochs} timed epochs")
    for keys in settings(args.setting):
        rate = samples_per_second(config, args.epochs, keys)
        print(f"  {json.dumps(keys) if keys else 'as configured':32s} {rate:10.0f} samples/s")
    print("reproduce: python bench/throughput.py " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    main()
