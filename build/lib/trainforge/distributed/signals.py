"""The stop signals (SIGTERM, SIGINT, SIGUSR1, SIGUSR2) and who handles them.

A run acts on a stop signal by saving ``latest_checkpoint.pth`` (``PreemptionHook``), or,
in the parent of ``trainer.devices=N``, by passing it to the ranks (``launch.spawn``).
Before either can act (a rank importing torch and building), ``deferred()`` remembers a
signal instead of dying of it; whoever takes the signals over (``take``) gets the
remembered ones at once (``replay``). A second signal of a kind already remembered is not gentle: the
handler from before the deferral gets it.
"""
from __future__ import annotations

import contextlib
import signal
import threading

NAMES = ("SIGTERM", "SIGINT", "SIGUSR1", "SIGUSR2")
_originals: dict = {}  # signal -> the handler a deferral replaced
_received: list = []  # signals remembered while deferred


def numbers() -> list:
    return [getattr(signal, name) for name in NAMES if hasattr(signal, name)]


def _remember(signum, frame) -> None:
    signal.signal(signum, _originals.get(signum, signal.SIG_DFL))
    _received.append(signum)


@contextlib.contextmanager
def deferred():
    """Remember stop signals until ``take`` (or the end of the block); in the main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    for sig in numbers():
        _originals[sig] = signal.signal(sig, _remember)
    try:
        yield
    finally:
        for sig, handler in _originals.items():
            if signal.getsignal(sig) is _remember:
                signal.signal(sig, handler)
        _originals.clear()
        _received.clear()


def take(handler) -> dict:
    """Install ``handler`` for every stop signal. Returns the handlers it replaced (the ones
    from before a deferral); then call ``replay(handler)``."""
    previous = {}
    for sig in numbers():
        current = signal.signal(sig, handler)
        previous[sig] = _originals.pop(sig) if current is _remember else current
    return previous


def replay(handler) -> None:
    """Give ``handler`` the signals a deferral remembered (once)."""
    received = list(_received)
    _received.clear()
    for sig in received:
        handler(sig, None)


@contextlib.contextmanager
def blocked():
    """Hold stop signals back in this block; processes started in it begin with them held
    back too (the mask is inherited), until their ``deferred()`` lets them in."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, numbers())
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def let_in() -> None:
    """Deliver the stop signals a parent's ``blocked()`` held back (to the handlers now set)."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, numbers())
