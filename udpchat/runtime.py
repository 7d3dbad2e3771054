"""Running udpchat as a program: choosing the event loop and turning signals into a clean stop."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import gc
import logging
import signal
import sys
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from types import TracebackType
from typing import Any, Protocol, Self, TypeVar

from udpchat.signals import STOP_SIGNALS, take_held_signals

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


def run_coroutine(main: Coroutine[Any, Any, T], choice: LoopChoice = LoopChoice.AUTO) -> T:
    """Run a coroutine to completion on a new loop of the chosen kind."""
    with asyncio.Runner(loop_factory=loop_factory(choice)) as runner:
        return runner.run(main)


GC_YOUNG_THRESHOLD = 50_000
"""Allocations between two collections of the youngest generation (CPython's default: 700)."""
SWITCH_INTERVAL_S = 0.001
"""How long a thread may hold the GIL while another waits (CPython's default: 5 ms)."""


def tune_for_throughput() -> None:
    """Process-wide settings for a server process; the ``serve`` command calls it, an
    embedding application may.

    The hot path allocates a few short-lived tuples per datagram and frees them by reference
    count; with the default thresholds the cyclic garbage collector, which walks every queued
    datagram and every sender, costs as much as the work itself. What start-up made is frozen
    out of its sight, and it runs 70 times less often. A shorter switch interval lets the
    event loop take the GIL back from a busy worker sooner, before the socket buffer fills.
    """
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, 10, 10)
    sys.setswitchinterval(SWITCH_INTERVAL_S)


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
        self.requested = asyncio.Event()
        self.forced = False
        self._signals = signals
        self._on_first = on_first
        self._on_force = on_force

    @contextlib.contextmanager
    def installed(self) -> Iterator[SignalStop]:
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

        with capture_signals(on_signal, self._signals):
            yield self


class Stoppable(Protocol):
    """What a stop signal stops: asked to stop first, abandoned on a second signal."""

    def request_stop(self) -> None: ...

    def abandon(self) -> None: ...


def stop_on_signals(service: Stoppable, log: logging.Logger) -> SignalStop:
    """The first stop signal asks ``service`` to stop, said on ``log``; a second abandons it."""

    def on_first(signum: int) -> None:
        log.warning("%s: stopping (a second signal forces)", signal.Signals(signum).name)
        service.request_stop()

    return SignalStop(on_first=on_first, on_force=service.abandon)


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


class StartsAndStops:
    """``async with`` for what starts and stops on the loop (a server, the impairment proxy):
    :meth:`start` on entry, :meth:`stop` on the way out, whatever ended the block."""

    async def start(self) -> None:
        raise NotImplementedError

    async def stop(self) -> bool:
        raise NotImplementedError

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()
