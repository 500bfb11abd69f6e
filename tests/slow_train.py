"""`python tests/slow_train.py <train.py arguments>`: the real train.py, slowed down so that a
test can send it signals at known points.

Environment:
  STEP_DELAY   seconds to sleep before each optimizer step (default 0)
  STEP_DELAY_FROM  only from this global step on (default 0: every step)
  SAVE_DELAY   seconds to sleep in the middle of writing each checkpoint (default 0)
  SAVE_DELAY_FILE  only when writing the checkpoint of this name (default: every one)
  KILL_WHILE_SAVING  SIGKILL this process in the middle of writing the checkpoint of this name
  NAN_AT_STEP  make the loss NaN at this global step (default: never)
  NAN_RANK     under torchrun, only in this process (default: in every one)
  FAIL_START_RANK  under torchrun, make building the trainer fail in this process only (it
               exits 2 s after saying so)
  SIGTERM_IN_VALIDATION  send this process SIGTERM after the first batch of this validation
               (1 = the first epoch's); default: never

Prints `PROCESS <rank> <pid>` at the start, `STEP <global step>` after each step and
`SAVING <file>` when a checkpoint write is half done, flushed, so the test can wait for them on stdout.
"""
import atexit
import os
import signal
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import tests.noisy_data  # noqa: E402,F401  (a config may name NoisyDigitsDataLoader)
import train  # noqa: E402
import trainer.trainer as module_trainer  # noqa: E402
import utils.util as module_util  # noqa: E402
from utils import distributed  # noqa: E402
from utils.cli import run_cli  # noqa: E402

STEP_DELAY = float(os.environ.get("STEP_DELAY", 0))
STEP_DELAY_FROM = int(os.environ.get("STEP_DELAY_FROM", 0))
SAVE_DELAY = float(os.environ.get("SAVE_DELAY", 0))
SAVE_DELAY_FILE = os.environ.get("SAVE_DELAY_FILE")
KILL_WHILE_SAVING = os.environ.get("KILL_WHILE_SAVING")
NAN_AT_STEP = int(os.environ.get("NAN_AT_STEP", -1))
NAN_RANK = int(os.environ["NAN_RANK"]) if "NAN_RANK" in os.environ else None
SIGTERM_IN_VALIDATION = int(os.environ.get("SIGTERM_IN_VALIDATION", -1))
FAIL_START_RANK = int(os.environ.get("FAIL_START_RANK", -1))


class Slowed(module_trainer.Callback):
    """Sleeps before each step, makes the loss NaN at NAN_AT_STEP (through a forward hook on
    the model: any step, any batch), prints the steps, signals during a validation."""

    def __init__(self):
        self.nan_hook = None
        self.validations, self.last_validated_epoch = 0, None

    def on_step_start(self, trainer):
        if trainer.global_step >= STEP_DELAY_FROM:
            time.sleep(STEP_DELAY)
        if trainer.global_step + 1 == NAN_AT_STEP and NAN_RANK in (None, distributed.rank()):
            self.nan_hook = trainer.module.register_forward_hook(
                lambda module, inputs, output: output * float("nan"))

    def on_step_end(self, trainer):
        if self.nan_hook is not None:
            self.nan_hook.remove()
            self.nan_hook = None
        print(f"STEP {trainer.global_step}\n", end="", flush=True)  # one write: no interleaving

    def on_validation_batch_end(self, trainer):
        if trainer.epoch != self.last_validated_epoch and not distributed.active():  # its first
            self.last_validated_epoch = trainer.epoch
            self.validations += 1
            if self.validations == SIGTERM_IN_VALIDATION:
                os.kill(os.getpid(), signal.SIGTERM)


def slow_write(original):
    def atomic_write(path, write):
        name = Path(path).name
        delay = SAVE_DELAY if SAVE_DELAY_FILE in (None, name) else 0
        kill = KILL_WHILE_SAVING == name
        if not (delay or kill):
            return original(path, write)

        def half_then_wait(file):
            buffer = __import__("io").BytesIO()
            write(buffer)
            data = buffer.getvalue()
            file.write(data[:len(data) // 2])
            file.flush()
            print(f"SAVING {name}\n", end="", flush=True)
            if kill:  # a torn write for certain, not a race with the test's kill
                os.kill(os.getpid(), signal.SIGKILL)
            time.sleep(delay)
            file.write(data[len(data) // 2:])
        return original(path, half_then_wait)
    return atomic_write


import utils.checkpoint as module_checkpoint  # noqa: E402

module_checkpoint.atomic_write = slow_write(module_util.atomic_write)


def failing_build(original):
    def build_trainer(config, device=None):
        if distributed.rank() == FAIL_START_RANK:
            # torchrun stops the other processes once one has exited: this one exits 2 s after
            # its error line, so the others' lines do not race torchrun's SIGTERM
            atexit.register(time.sleep, 2)
            raise module_errors.UserError("data_loader: injected failure")
        return original(config, device)
    return build_trainer


import utils.errors as module_errors  # noqa: E402

train.build_trainer = failing_build(train.build_trainer)

if __name__ == "__main__":
    # as if started from a terminal, also when the tests run under nohup or in a shell's
    # background, which start them with SIGINT and SIGHUP ignored (and the run keeps an ignored
    # signal ignored: tests/test_interrupts.py tests that on its own)
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)
    print(f"PROCESS {os.environ.get('RANK', 0)} {os.getpid()}\n", end="", flush=True)
    run_cli(lambda: train.main(sys.argv[1:], callbacks=[Slowed()]))
