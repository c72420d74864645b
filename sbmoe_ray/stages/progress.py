"""Progress of a stage in the terminal: one line per finished trial, with an estimate of the time left."""

from __future__ import annotations

import os
import time

from ray import tune

VERBOSE_ENV = "SBMOE_VERBOSE"      # `sbmoe study --verbose` sets it: Ray Tune's own trial tables come back


def tune_verbosity() -> int:
    """Ray Tune's output: silent (the study prints its own progress lines), or its trial tables (``--verbose``)."""
    return 2 if os.environ.get(VERBOSE_ENV) == "1" else 0


class ProgressCallback(tune.Callback):
    """``[proxy] 12/72 trials done in 1.3 min; ~6.4 min left``. Tune pickles its callbacks with the experiment:
    a copy restored in a later command counts the trials finished before it and times only its own."""

    def __init__(self, stage: str, total: int) -> None:
        self.stage, self.total = stage, total
        self._start()

    def _start(self) -> None:
        self.started, self.done, self.done_here = time.monotonic(), 0, 0

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self._start()

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        # This trial is not yet TERMINATED when Tune calls back; trials finished before a resume are.
        self.done = max(self.done + 1, sum(t.status == "TERMINATED" for t in trials) + 1)
        self.done_here += 1
        elapsed = time.monotonic() - self.started
        left = elapsed / self.done_here * (self.total - self.done)
        print(f"[{self.stage}] {self.done}/{self.total} trials done in {elapsed / 60:.1f} min; "
              f"~{left / 60:.1f} min left", flush=True)
