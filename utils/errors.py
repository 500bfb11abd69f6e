"""Exceptions for the user's mistakes.

Every one of them is turned into a single line on stderr and exit code 2 by
`utils.cli.run_cli`; anything else is a bug in this project and keeps its traceback.
"""
import difflib
from typing import Any


class UserError(Exception):
    """A mistake the user can fix: a bad config, a missing file, a wrong checkpoint.

    `problems`: one line each (a config check reports every problem at once); the message is
    those lines joined.
    """

    def __init__(self, *problems: str):
        super().__init__("\n".join(problems))
        self.problems = [line for problem in problems for line in problem.splitlines()]


class ConfigError(UserError, ValueError):
    """A problem in the user's config; the message starts with the key path."""


class CheckpointError(UserError):
    """A file given as a checkpoint that cannot be used; the message names the file."""


class WriteError(UserError):
    """A file could not be written (no space left, no permission, not a folder); `no_room`:
    the disk or the quota is full. Nothing half-written is left in its place."""

    def __init__(self, *problems: str, no_room: bool = False):
        super().__init__(*problems)
        self.no_room = no_room


class BuildError(Exception):
    """The user's own code (a model, a data loader) raised while a config block was built.

    That is a bug to fix in their code, so the CLI shows its traceback, introduced by this
    message naming the block; `__cause__` is the original exception.
    """


class TrainingDiverged(Exception):
    """The loss became NaN or infinite; the run stopped without saving. One line, exit code 1."""


def did_you_mean(word: str, choices: Any) -> str:
    """` (did you mean 'x'?)` for the closest of `choices`, or an empty string."""
    if not isinstance(choices, (dict, list, tuple, set)):
        return ""
    names = [str(choice) for choice in choices]
    close = ([name for name in names if name.lower() == word.lower()]
             or difflib.get_close_matches(word, names, n=1, cutoff=0.75)
             or [name for name in names if len(word) >= 3 and word.lower() in name.lower()]
             or difflib.get_close_matches(word, names, n=1, cutoff=0.6))
    return f" (did you mean {close[0]!r}?)" if close else ""
