"""The edge between a command-line entry point and the user."""
import sys
from typing import Callable

from utils.errors import UserError


def run_cli(main: Callable[[], object]) -> None:
    """Run `main`; a `UserError` becomes one line on stderr and exit code 2."""
    try:
        main()
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
