"""Ctrl-C and SIGTERM stop a study within seconds, wherever it is, and the same command resumes it.

Ray Tune's own SIGINT handler stops only the running ``Tuner.fit`` (gracefully, then returns as if it had
finished), so a study went on to its next stage; and SIGTERM's default ends the driver at once, its MLflow
runs left RUNNING. While :func:`stopping_on_signals` is active, both raise :class:`Stopped` in the driver's
main thread (Tune's handler is switched off with its documented ``TUNE_DISABLE_SIGINT_HANDLER``); the study
then ends its runs as KILLED and shuts down the Ray it started (:func:`sbmoe_ray.stages.pipeline.run`).
"""

from __future__ import annotations

import gc
import os
import signal
import threading
import traceback
from collections.abc import Iterator
from contextlib import contextmanager

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Stopped(KeyboardInterrupt):
    """A study asked to stop by a signal; ``exit_code`` is the shell's 128 + signal number."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum, self.exit_code = signum, 128 + signum


_RECEIVED: list[int] = []       # the signals the handler saw (Ray's C code turns its exception into a plain one)


def stopped(exc: KeyboardInterrupt) -> Stopped:
    """The :class:`Stopped` behind a KeyboardInterrupt: Ray's blocking calls (``ray.wait``, ``ray.get``) raise a
    plain ``KeyboardInterrupt`` of their own when a signal interrupts them, whatever the handler raised."""
    if isinstance(exc, Stopped):
        return exc
    return Stopped(_RECEIVED[-1] if _RECEIVED else signal.SIGINT)


def _stop(signum, _frame) -> None:
    _RECEIVED.append(signum)
    raise Stopped(signum)


def release(exc: BaseException) -> None:
    """Let go of what the code a signal unwound still holds. A store write the signal cut short keeps its
    database session, and SQLite's write lock with it, alive in the frames of the exception's traceback: marking
    the study's runs KILLED afterwards then waits on its own lock ("database is locked", every retry)."""
    traceback.clear_frames(exc.__traceback__)
    gc.collect()


def raise_if_stopped() -> None:
    """Raise the :class:`Stopped` of a signal whose exception a library swallowed. Optuna's journal lock
    (``JournalFileOpenLock.release``, optuna 5.1) answers a KeyboardInterrupt raised before its ``os.rename`` by
    unlinking a file that does not exist yet, so the interrupt comes out as a ``FileNotFoundError``; a caller
    that survives such errors (the journal mirror) would let the study run on."""
    if _RECEIVED:
        raise Stopped(_RECEIVED[-1])


def take_signals() -> None:
    """(Re)install the handlers: ``ray.init`` installs Ray's own SIGTERM handler (it logs a stack and aborts the
    driver), so the study takes SIGTERM back once its Ray has started."""
    if threading.current_thread() is threading.main_thread():
        for s in SIGNALS:
            signal.signal(s, _stop)


@contextmanager
def stopping_on_signals() -> Iterator[None]:
    """SIGINT and SIGTERM raise :class:`Stopped` in the main thread while the block runs."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = os.environ.get("TUNE_DISABLE_SIGINT_HANDLER")
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    previous = {s: signal.getsignal(s) for s in SIGNALS}
    _RECEIVED.clear()                       # a study run again in the same process starts unstopped
    take_signals()
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)
        if before is None:
            os.environ.pop("TUNE_DISABLE_SIGINT_HANDLER", None)
        else:
            os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = before
