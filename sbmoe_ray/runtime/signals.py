"""Ctrl-C and SIGTERM stop a study within seconds, wherever it is, and the same command resumes it.

Ray Tune's own SIGINT handler stops only the running ``Tuner.fit`` (gracefully, then returns as if it had
finished), so a study went on to its next stage; and SIGTERM's default ends the driver at once, its MLflow
runs left RUNNING. While :func:`stopping_on_signals` is active, both raise :class:`Stopped` in the driver's
main thread (Tune's handler is switched off with its documented ``TUNE_DISABLE_SIGINT_HANDLER``); the study
then ends its runs as KILLED and shuts down the Ray it started (:func:`sbmoe_ray.stages.pipeline.run`).
"""

from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Stopped(KeyboardInterrupt):
    """A study asked to stop by a signal; ``exit_code`` is the shell's 128 + signal number."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum, self.exit_code = signum, 128 + signum


@contextmanager
def stopping_on_signals() -> Iterator[None]:
    """SIGINT and SIGTERM raise :class:`Stopped` in the main thread while the block runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum, _frame) -> None:
        raise Stopped(signum)

    before = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    previous = {s: signal.signal(s, stop) for s in SIGNALS}
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if before is None:
            os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
        else:
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = before
