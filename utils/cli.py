"""The edge between a command-line entry point and the user."""
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

