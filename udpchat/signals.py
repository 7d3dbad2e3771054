"""Stop signals held from the first moment: the program's very first import.

``python -m udpchat`` and the ``udpchat`` script import this module (it needs nothing but the
standard ``signal``) and hold SIGINT, SIGTERM and SIGHUP before anything slow is imported, so
that a stop during start-up is remembered and answered with a clean stop and a summary, not a
``KeyboardInterrupt`` traceback or, for SIGTERM and SIGHUP, a death with no summary.
"""

from __future__ import annotations

import signal

TYPE_CHECKING = False  # not typing's: importing typing would slow the start-up down
if TYPE_CHECKING:
    from typing import Any

STOP_SIGNALS: tuple[int, ...] = tuple(
    signum
    for signum in (signal.SIGINT, signal.SIGTERM, getattr(signal, "SIGHUP", None))
    if signum is not None
)
"""Ctrl-C, a service manager's stop and a closed terminal: each asks for a drain."""

_early_signals: list[int] = []
_held_handlers: dict[int, Any] = {}
"""The handlers :func:`hold_stop_signals` replaced, for :func:`release_stop_signals`."""


def _remember(signum: int, frame: object) -> None:
    _early_signals.append(signum)


def hold_stop_signals() -> None:
    """Remember stop signals instead of dying of them, until the program takes them over
    (:class:`udpchat.runtime.SignalStop`) or gives them back (:func:`release_stop_signals`)."""
    for signum in STOP_SIGNALS:
        _held_handlers.setdefault(signum, signal.signal(signum, _remember))


def release_stop_signals(*, deliver: bool) -> None:
    """Give the stop signals back to the handlers :func:`hold_stop_signals` replaced; with
    ``deliver``, raise again those that arrived meanwhile (for commands that take no signals)."""
    for signum, handler in _held_handlers.items():
        signal.signal(signum, handler)
    _held_handlers.clear()
    pending = take_held_signals()
    for signum in pending if deliver else ():
        signal.raise_signal(signum)


def take_held_signals() -> list[int]:
    """The stop signals that arrived while held, in order; forgotten here once taken."""
    taken = list(_early_signals)
    _early_signals.clear()
    return taken
