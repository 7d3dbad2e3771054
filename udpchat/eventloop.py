"""Which event loop runs udpchat, and the small helpers every service runs on it."""

from __future__ import annotations

import asyncio
import contextlib
import enum
from collections.abc import AsyncIterator, Callable, Coroutine
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


def run_coroutine(main: Coroutine[Any, Any, T], choice: LoopChoice = LoopChoice.AUTO) -> T:
    """Run a coroutine to completion on a new loop of the chosen kind."""
    with asyncio.Runner(loop_factory=loop_factory(choice)) as runner:
        return runner.run(main)


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
