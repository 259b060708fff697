"""Ctrl-C in a sweep's driver: Tune ends an experiment gracefully at the first SIGINT and `fit`
returns as if it had finished; `SigintWatch` tells the driver, which then starts nothing more."""
from __future__ import annotations

import os
import signal
import threading
from typing import Any

EXIT_INTERRUPTED = 130  # 128 + SIGINT: what a shell reports for a command that Ctrl-C ended


class SigintWatch:
    """Whether SIGINT reached the driver while `fit` ran a Tune experiment.

    Tune installs its own SIGINT handler for an experiment; at the first SIGINT it stops the
    experiment gracefully and puts back the handler it found, so that a second SIGINT stops at
    once. `fit` puts its own handler in place before: if that one is back when the experiment
    returns, Tune was interrupted. Called itself (Tune's handler off, or a second SIGINT), it
    records the interrupt and passes it on to the handler it replaced (KeyboardInterrupt by
    default). Afterwards `fit` restores that handler: Tune leaves its own installed after an
    experiment that ran to its end, and would swallow a Ctrl-C between experiments.
    Python delivers signals to the main thread only: in another thread nothing is watched.
    """

    def __init__(self) -> None:
        self.interrupted = False

    def fit(self, tuner: Any) -> Any:
        """`tuner.fit()` (Tune's ResultGrid), watched."""
        if threading.current_thread() is not threading.main_thread():
            return tuner.fit()
        previous = signal.getsignal(signal.SIGINT)
        if previous is None:  # installed outside Python: it cannot be put back, Python's default is
            previous = signal.default_int_handler

        def on_sigint(signum: int, frame: Any) -> None:
            self.interrupted = True
            if callable(previous):
                previous(signum, frame)
            elif previous != signal.SIG_IGN:
                raise KeyboardInterrupt

        signal.signal(signal.SIGINT, on_sigint)
        try:
            results = tuner.fit()
            # Tune's handler, once it has fired, gives SIGINT back to the one it found: ours.
            if _tune_catches_sigint() and signal.getsignal(signal.SIGINT) is on_sigint:
                self.interrupted = True
            return results
        finally:
            signal.signal(signal.SIGINT, previous)


def _tune_catches_sigint() -> bool:
    """Tune's own test: TUNE_DISABLE_SIGINT_HANDLER=1 leaves SIGINT to the driver's handler."""
    return not int(os.getenv("TUNE_DISABLE_SIGINT_HANDLER", "0"))
