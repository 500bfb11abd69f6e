"""The edge between a command-line entry point and the user."""
import os
import re
import sys
import traceback
from typing import Callable

from utils.errors import BuildError, TrainingDiverged, UserError
from utils.interrupts import TrainingInterrupted, process_prefix


def run_cli(main: Callable[[], object]) -> None:
    """Run `main`. A `UserError` becomes one `error:` line per problem on stderr and exit code 2;
    a `BuildError` shows the user's traceback under a line naming the config block, exit code 1."""
    try:
        main()
    except BrokenPipeError:  # `train.py --print-config | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
        sys.exit(0)
    except UserError as error:
        for line in error.problems or [type(error).__name__]:
            print(f"{process_prefix()}error: {line}", file=sys.stderr)
        sys.exit(2)
    except TrainingInterrupted as error:  # the trainer has logged where it stopped
        sys.exit(error.exit_code)
    except TrainingDiverged as error:
        print(f"{process_prefix()}error: {error}", file=sys.stderr)
        sys.exit(1)
    except BuildError as error:
        print(f"{process_prefix()}error: {error}", file=sys.stderr)
        traceback.print_exception(error.__cause__, file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print(f"{process_prefix()}interrupted", file=sys.stderr)
        sys.exit(130)
    except RuntimeError as error:
        if not lost_peer(error):
            raise
        print(f"{process_prefix()}error: another process of this run is gone, so this one stops "
              f"too ({_first_line(error)}); the run folder's newest checkpoint is intact: "
              f"resume from it", file=sys.stderr)
        sys.exit(1)


def lost_peer(error: BaseException) -> bool:
    """Whether `error` is a collective that failed because another torchrun process is gone
    (killed, crashed): Gloo's and NCCL's connection errors, torch's DistBackendError."""
    if os.environ.get("WORLD_SIZE", "1") == "1":
        return False
    text = str(error).lower()
    return type(error).__name__ in ("DistBackendError", "DistNetworkError") or \
        any(word in text for word in ("gloo", "nccl", "connection reset", "connection closed"))


def _first_line(error: BaseException) -> str:
    """The error's first line without Gloo's source location (`[.../pair.cc:545] `)."""
    line = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return re.sub(r"^\[[^\]]*\.(cc|cpp|h):\d+\]\s*", "", line).split(". This is")[0]



def leaf_note(package: str) -> str:
    """What an option's help adds when the optional package it needs is not in this project."""
    import importlib.util

    if importlib.util.find_spec(package) is not None:
        return ""
    return f" (needs the {package}/ package: python new_project.py DEST --with {package})"


def optional_leaf(module: str, option: str):
    """The optional package module `module` that `option` needs; a `UserError` naming the
    option when this project was made without it (new_project.py leaves it out unless asked)."""
    import importlib

    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as error:
        if error.name is None or not module.startswith(error.name):
            raise
        raise UserError(f"{option} needs the package {module.split('.')[0]}/, which this project "
                        f"was made without (python new_project.py DEST --with {module.split('.')[0]})") \
            from None
