"""SigintWatch against Tune's own SIGINT handling: an interrupted experiment is seen, a finished
one is not, and the driver's handler is back in place after either."""
from __future__ import annotations

import signal

import pytest

from orchestrator.interrupts import SigintWatch


class _Tuner:
    """Installs Tune's SIGINT handler as `Tuner.fit` does, then receives `sigints` SIGINTs."""

    def __init__(self, sigints: int):
        self.sigints = sigints

    def fit(self) -> bool:
        from ray.tune.tune import _setup_signal_catching

        stopped = _setup_signal_catching()
        for _ in range(self.sigints):
            signal.raise_signal(signal.SIGINT)
        return stopped.is_set()


@pytest.fixture
def sigint_restored():
    before = signal.getsignal(signal.SIGINT)
    yield before
    signal.signal(signal.SIGINT, before)
    signal.signal(signal.SIGUSR1, signal.SIG_DFL)  # Tune's, for SIGUSR1, stays otherwise


def test_a_finished_experiment_is_not_an_interrupted_one(sigint_restored):
    watch = SigintWatch()
    assert watch.fit(_Tuner(0)) is False
    assert not watch.interrupted
    assert signal.getsignal(signal.SIGINT) is sigint_restored  # not Tune's, left behind


def test_the_first_sigint_stops_tune_gracefully_and_is_recorded(sigint_restored):
    watch = SigintWatch()
    assert watch.fit(_Tuner(1)) is True  # Tune saw it and ended its experiment
    assert watch.interrupted
    assert signal.getsignal(signal.SIGINT) is sigint_restored


def test_a_second_sigint_stops_at_once(sigint_restored):
    watch = SigintWatch()
    with pytest.raises(KeyboardInterrupt):
        watch.fit(_Tuner(2))
    assert watch.interrupted
    assert signal.getsignal(signal.SIGINT) is sigint_restored


def test_without_tunes_handler_sigint_is_a_keyboard_interrupt(sigint_restored, monkeypatch):
    monkeypatch.setenv("TUNE_DISABLE_SIGINT_HANDLER", "1")
    quiet = SigintWatch()
    assert quiet.fit(_Tuner(0)) is False and not quiet.interrupted  # our handler in place is no interrupt
    watch = SigintWatch()
    with pytest.raises(KeyboardInterrupt):
        watch.fit(_Tuner(1))
    assert watch.interrupted
