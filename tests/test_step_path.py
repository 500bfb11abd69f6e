"""One training step reads top to bottom in a few files (docs/DESIGN.md, "The path of one
step"): the project files and functions that run between two `optimizer.step()` returns of a
steady-state step of the default config, with the call stack at the step, stay within the
goal, and a plain run passes through no search or k-fold code."""
import sys
from pathlib import Path

import torch

from tests.conftest import ROOT, build

MAX_FILES = 8
MAX_FUNCTIONS = 35
# the user's rooms and the tests are not the template's machinery
NOT_COUNTED = ("model", "data_loader", "tests")
LEAVES = ("search", "sweep.py", "bench", "examples")


def project_place(filename: str) -> str | None:
    """`filename` relative to the project, or None for a file outside it (torch, Python) or
    in the user's rooms and the tests."""
    path = Path(filename)
    if not path.is_absolute() or ROOT not in path.parents:
        return None
    relative = path.relative_to(ROOT)
    return None if relative.parts[0] in NOT_COUNTED else relative.as_posix()


def trace_one_step(trainer, step: int) -> tuple[set[str], set[tuple[str, str]]]:
    """The project files and (file, function) pairs that run from the return of optimizer
    step `step` to the return of step `step + 1`, and the call stack at that second step."""
    files, functions = set(), set()
    state = {"steps": 0, "recording": False}

    def profile(frame, event, arg):
        if state["recording"] and event == "call":
            place = project_place(frame.f_code.co_filename)
            if place is not None:
                files.add(place)
                functions.add((place, frame.f_code.co_qualname))

    def after_step(optimizer, args, kwargs):
        state["steps"] += 1
        if state["steps"] == step:
            state["recording"] = True
        elif state["steps"] == step + 1 and state["recording"]:
            state["recording"] = False
            frame = sys._getframe()
            while frame is not None:
                place = project_place(frame.f_code.co_filename)
                if place is not None:
                    files.add(place)
                    functions.add((place, frame.f_code.co_qualname))
                frame = frame.f_back
            raise _Traced

    handle = trainer.optimizer.register_step_post_hook(after_step)
    sys.setprofile(profile)
    try:
        trainer.train()
    except _Traced:
        pass
    finally:
        sys.setprofile(None)
        handle.remove()
    return files, functions


class _Traced(Exception):
    """Ends training once the step is traced."""


def test_one_steady_state_step_crosses_a_few_files_and_functions(tmp_path):
    trainer = build(tmp_path, epochs=1)
    trainer.check_first_batch()
    trainer.config.make_run_dirs()
    torch.manual_seed(0)
    files, functions = trace_one_step(trainer, step=3)  # steps 4 and 5: not log steps
    listed = "\n".join(sorted(f"{file}:{name}" for file, name in functions))
    assert "base/base_trainer.py" in files and "step/engine.py" in files and \
        "trainer/trainer.py" in files, listed  # the trace saw the loop, the engine, the seam
    assert len(files) <= MAX_FILES, f"{len(files)} files:\n{listed}"
    assert len(functions) <= MAX_FUNCTIONS, f"{len(functions)} functions:\n{listed}"
    assert not [file for file in files if file.startswith(LEAVES)], listed
