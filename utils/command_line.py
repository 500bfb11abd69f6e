"""The command line of train.py and test.py: the standard options, registered shortcuts
(`CustomArgs`) and the checks that need no config."""
import argparse
import os
from collections import namedtuple
from collections.abc import Iterable, Sequence
from pathlib import Path

from utils.errors import UserError

# `flags` as argparse takes them, `type` the value's type, `target` the dotted config key it sets.
CustomArgs = namedtuple("CustomArgs", "flags type target")


def parse_command_line(parser: argparse.ArgumentParser, options: Iterable[CustomArgs],
                        argv: Sequence[str] | None, evaluating: bool) -> argparse.Namespace:
    add_standard_args(parser, evaluating)
    for option in options:
        parser.add_argument(*option.flags, type=option.type, default=None,
                            help=f"sets {option.target}")
    args = parser.parse_args(argv)
    if args.device is not None:  # must happen before CUDA is first touched
        os.environ["CUDA_VISIBLE_DEVICES"] = args.device
    if evaluating and args.resume is None:
        raise UserError("give the checkpoint to evaluate with -r path/to/model_best.pth")
    if args.config is None and args.resume is None:
        raise UserError("give a config with -c config.json, or a checkpoint to resume with -r")
    return args


def checked_checkpoint(path: str, problems: list[str], prefer_best: bool = False) -> Path:
    """The checkpoint `-r path` names (the newest in a run folder), loaded once to check it: a
    problem is added to `problems` so that it is reported with the config's."""
    from trainer.checkpoint import find_checkpoint, load_checkpoint

    try:
        resume = find_checkpoint(path, prefer_best)
        load_checkpoint(resume, mmap=True)
    except UserError as error:
        problems.append(f"-r {error}")
        return Path(path)
    return resume


def add_standard_args(parser: argparse.ArgumentParser, evaluating: bool = False) -> None:
    parser.add_argument("-c", "--config", default=None,
                        help="config file (default for -r: the config stored in the checkpoint)")
    parser.add_argument("-r", "--resume", default=None,
                        help="checkpoint to evaluate (or run folder: its model_best.pth)"
                        if evaluating else
                        "checkpoint (or run folder: its newest checkpoint) to resume from")
    parser.add_argument("-d", "--device", default=None,
                        help="GPU indices to use, e.g. 0,1 (sets CUDA_VISIBLE_DEVICES)")
    parser.add_argument("-o", "--override", action="append", default=[], metavar="KEY=VALUE",
                        help="set any config key, e.g. -o trainer.epochs=3 (value parsed as JSON "
                             "when it can be); may be repeated")
    if not evaluating:
        parser.add_argument("--run-id", default=None,
                            help="name of the run folder (default: a timestamp)")


def option_dest(flags: Sequence[str]) -> str:
    long_flags = [flag for flag in flags if flag.startswith("--")]
    return (long_flags or flags)[0].lstrip("-").replace("-", "_")
