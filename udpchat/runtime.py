"""Running udpchat as a program: choosing the event loop and turning signals into a clean stop."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import signal
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from typing import Any, TypeVar

T = TypeVar("T")


class LoopChoice(enum.StrEnum):
    """``auto`` takes uvloop where it is installed (Linux, macOS) and asyncio's loop elsewhere."""

    AUTO = "auto"
    ASYNCIO = "asyncio"
    UVLOOP = "uvloop"


class LoopUnavailableError(RuntimeError):
    """uvloop was asked for by name and is not installed."""


def loop_factory(choice: LoopChoice) -> Callable[[], asyncio.AbstractEventLoop]:
    if choice is LoopChoice.ASYNCIO:
        return asyncio.new_event_loop
    try:
        import uvloop  # noqa: PLC0415 - optional, and absent on some platforms
    except ImportError:
        if choice is LoopChoice.UVLOOP:
            raise LoopUnavailableError("uvloop is not installed on this platform") from None
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T], choice: LoopChoice = LoopChoice.AUTO) -> T:
    """Run a coroutine to completion on a new loop of the chosen kind."""
    with asyncio.Runner(loop_factory=loop_factory(choice)) as runner:
        return runner.run(main)


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
    """Remember stop signals instead of dying of them, until :class:`SignalStop` takes over.

    Called first thing by the CLI, so that Ctrl-C during start-up (imports, binding) ends in a
    clean stop rather than a ``KeyboardInterrupt`` traceback or, for SIGHUP, no summary.
    """
    for signum in STOP_SIGNALS:
        _held_handlers.setdefault(signum, signal.signal(signum, _remember))


def release_stop_signals(*, deliver: bool) -> None:
    """Give the stop signals back to the handlers :func:`hold_stop_signals` replaced; with
    ``deliver``, raise again those that arrived meanwhile (for commands that take no signals)."""
    for signum, handler in _held_handlers.items():
        signal.signal(signum, handler)
    _held_handlers.clear()
    pending = list(_early_signals) if deliver else []
    _early_signals.clear()
    for signum in pending:
        signal.raise_signal(signum)


@contextlib.contextmanager
def capture_signals(
    on_signal: Callable[[int], None], signals: tuple[int, ...] = STOP_SIGNALS
) -> Iterator[None]:
    """Call ``on_signal(signum)`` on the loop for these signals, starting with any held by
    :func:`hold_stop_signals`; restore the old handlers after."""
    loop = asyncio.get_running_loop()

    def handle(signum: int, frame: object) -> None:
        loop.call_soon_threadsafe(on_signal, signum)

    previous = {signum: signal.signal(signum, handle) for signum in signals}
    for signum in _early_signals:
        if signum in signals:
            loop.call_soon(on_signal, signum)
    _early_signals.clear()
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


class SignalStop:
    """The first stop signal calls ``on_first(signum)`` and sets :attr:`requested`; a second
    one forces the stop.

    Forcing cancels the task that installed the handlers, which abandons whatever it is
    waiting for (a drain, a send loop), so that an operator is never stuck.
    """

    def __init__(
        self,
        signals: tuple[int, ...] = STOP_SIGNALS,
        on_first: Callable[[int], None] | None = None,
    ) -> None:
        self.requested = asyncio.Event()
        self.forced = False
        self._signals = signals
        self._on_first = on_first

    @contextlib.contextmanager
    def installed(self) -> Iterator[SignalStop]:
        task = asyncio.current_task()

        def on_signal(signum: int) -> None:
            if not self.requested.is_set():
                self.requested.set()
                if self._on_first is not None:
                    self._on_first(signum)
            elif task is not None:
                self.forced = True
                task.cancel()

        with capture_signals(on_signal, self._signals):
            yield self


@contextlib.asynccontextmanager
async def periodically(interval_s: float | None, action: Callable[[], None]) -> AsyncIterator[None]:
    """Call ``action`` every ``interval_s`` on a fixed grid while the block runs; None: never."""
    if interval_s is None:
        yield
        return
    period_s = interval_s

    async def repeat() -> None:
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            next_at += period_s
            await asyncio.sleep(max(0.0, next_at - loop.time()))
            action()

    task = asyncio.create_task(repeat())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
