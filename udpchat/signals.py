"""Stop signals, from the program's first moment to a clean stop: everything about them is here.

``python -m udpchat`` and the ``udpchat`` script import this module first and hold SIGINT,
SIGTERM and SIGHUP (:func:`hold_stop_signals`) before anything slow is imported, so that a stop
during start-up is remembered and answered with a clean stop and a summary, not a
``KeyboardInterrupt`` traceback or, for SIGTERM and SIGHUP, a death with no summary. A running
service then takes them over (:class:`SignalStop`, :func:`stop_on_signals`): the first asks for
a drain, a second forces the stop, and the old handlers come back after.

So this module stays cheap to import: the standard ``signal`` and ``contextlib`` only. asyncio
is imported when a service takes the signals over, by which time it is loaded.
"""

from __future__ import annotations

import contextlib
import signal

TYPE_CHECKING = False  # not typing's: importing typing would slow the start-up down
if TYPE_CHECKING:
    import asyncio
    import logging
    from collections.abc import Callable, Iterator
    from typing import Any, Protocol

    class Stoppable(Protocol):
        """What a stop signal stops: asked to stop first, abandoned on a second signal."""

        def request_stop(self) -> None: ...

        def abandon(self) -> None: ...


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
    (:class:`SignalStop`) or gives them back (:func:`release_stop_signals`)."""
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


@contextlib.contextmanager
def capture_signals(
    on_signal: Callable[[int], None], signals: tuple[int, ...], loop: asyncio.AbstractEventLoop
) -> Iterator[None]:
    """Call ``on_signal(signum)`` on ``loop`` for these signals, starting with any held by
    :func:`hold_stop_signals`; restore the old handlers after."""

    def handle(signum: int, frame: object) -> None:
        loop.call_soon_threadsafe(on_signal, signum)

    previous = {signum: signal.signal(signum, handle) for signum in signals}
    for signum in take_held_signals():
        if signum in signals:
            loop.call_soon(on_signal, signum)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


class SignalStop:
    """The first stop signal calls ``on_first(signum)`` and sets :attr:`requested`; a second
    one forces the stop, so that an operator is never stuck.

    Forcing calls ``on_force()``, or without it cancels the task that installed the handlers,
    which abandons whatever it is waiting for (a drain, a send loop).
    """

    def __init__(
        self,
        signals: tuple[int, ...] = STOP_SIGNALS,
        on_first: Callable[[int], None] | None = None,
        on_force: Callable[[], None] | None = None,
    ) -> None:
        import asyncio  # noqa: PLC0415 - loaded by now; not at the early hold

        self.requested = asyncio.Event()
        self.forced = False
        self._signals = signals
        self._on_first = on_first
        self._on_force = on_force

    @contextlib.contextmanager
    def installed(self) -> Iterator[SignalStop]:
        """The handlers, on the running loop, for the block."""
        import asyncio  # noqa: PLC0415 - loaded by now; not at the early hold

        task = asyncio.current_task()

        def on_signal(signum: int) -> None:
            if not self.requested.is_set():
                self.requested.set()
                if self._on_first is not None:
                    self._on_first(signum)
            elif self._on_force is not None:
                self.forced = True
                self._on_force()
            elif task is not None:
                self.forced = True
                task.cancel()

        with capture_signals(on_signal, self._signals, asyncio.get_running_loop()):
            yield self


def stop_on_signals(service: Stoppable, log: logging.Logger) -> SignalStop:
    """The first stop signal asks ``service`` to stop, said on ``log``; a second abandons it."""

    def on_first(signum: int) -> None:
        log.warning("%s: stopping (a second signal forces)", signal.Signals(signum).name)
        service.request_stop()

    return SignalStop(on_first=on_first, on_force=service.abandon)
