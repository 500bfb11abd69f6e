"""The command line of train.py and test.py: the standard options, registered shortcuts
(`CustomArgs`) and the checks that need no config."""
import argparse
import os
from collections import namedtuple
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from utils.errors import UserError

# `flags` as argparse takes them, `type` the value's type, `target` the dotted config key it sets.
CustomArgs = namedtuple("CustomArgs", "flags type target")


@dataclass
class Resume:
    """What `-r` came to, resolved by the entry script (`runs.run_folder.resolve_resume`)."""

    path: Path                  # the checkpoint file (the newest in a run folder)
    config: dict | None = None  # the config stored in it, when no -c was given
    continue_run: bool = False  # write on in its own run folder (it is the run's newest)
    log_dir: Path | None = None  # the log folder that run's manifest binds to it
    problems: list[str] = field(default_factory=list)  # reported with the config's problems


def parse_command_line(parser: argparse.ArgumentParser, options: Iterable[CustomArgs] = (),
                       argv: Sequence[str] | None = None,
                       evaluating: bool = False) -> argparse.Namespace:
    """Add the standard and the registered options to `parser` and parse `argv`; `evaluating`:
    test.py's command line (`-r` required, no `--run-id`)."""
    add_standard_args(parser, evaluating)
    for option in options:
        parser.add_argument(*option.flags, type=option.type, default=None,
                            help=f"sets {option.target}")
    args = parser.parse_args(argv)
    if args.device is not None:  # must happen before CUDA is first touched
        os.environ["CUDA_VISIBLE_DEVICES"] = args.device
    comparing = bool(getattr(args, "compare", None))  # test.py --compare: the checkpoints
    if evaluating and args.resume is None and not comparing:
        raise UserError("give the checkpoint to evaluate with -r path/to/model_best.pth")
    if args.config is None and args.resume is None and not comparing:
        raise UserError("give a config with -c config.json, or a checkpoint to resume with -r")
    return args


def add_standard_args(parser: argparse.ArgumentParser, evaluating: bool = False) -> None:
    parser.add_argument("-c", "--config", default=None,
                        help="config file (default for -r: the config stored in the checkpoint)")
    parser.add_argument("-r", "--resume", default=None,
                        help="checkpoint to evaluate (or run folder: its model_best.pth)"
                        if evaluating else
                        "checkpoint (or run folder: its newest checkpoint) to resume from; "
                        "or a k-fold run's <run id>-folds.json to go on with its folds")
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
