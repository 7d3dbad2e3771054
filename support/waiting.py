"""Waiting for state with a deadline, never for time, and never by spinning: between two looks
at the state, a short sleep that grows (1 ms, 2, 4 ... up to 20 ms), so that a waiter costs the
machine almost nothing when the state is slow to come (two busy loops may hold the cores) and
sees it within a few milliseconds when it comes fast.

:func:`eventually` waits on the event loop (for a coroutine function too, and with
``blocking=True`` for a predicate that blocks, such as an HTTP request, run off the loop);
:func:`eventually_sync` waits in plain code (a thread, a test without a loop). Both raise
:class:`TimeoutError` naming the predicate.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable, Iterator

EVENT_TIMEOUT_S = 10.0
"""How long a test waits for state that should come within milliseconds, at most."""
FIRST_PAUSE_S = 0.001
MAX_PAUSE_S = 0.02


def pauses(predicate: Callable[[], object], timeout_s: float, what: str | None) -> Iterator[float]:
    """The sleeps between looks at ``predicate``, growing from :data:`FIRST_PAUSE_S` to
    :data:`MAX_PAUSE_S`; :class:`TimeoutError` naming ``what`` (else the predicate) once
    ``timeout_s`` has passed."""
    deadline = time.monotonic() + timeout_s
    pause = FIRST_PAUSE_S
    while time.monotonic() < deadline:
        yield pause
        pause = min(2 * pause, MAX_PAUSE_S)
    name = what or getattr(predicate, "__qualname__", repr(predicate))
    raise TimeoutError(f"{name}: not so within {timeout_s:g} s")


async def eventually(
    predicate: Callable[[], object],
    timeout_s: float = EVENT_TIMEOUT_S,
    *,
    blocking: bool = False,
    what: str | None = None,
) -> None:
    """Return once ``predicate()`` is true, looking again after each pause. A predicate may be
    a coroutine function (an HTTP request on the loop); ``blocking`` runs it in a thread, for a
    predicate that blocks (the loop keeps running meanwhile)."""
    for pause in pauses(predicate, timeout_s, what):
        held = await asyncio.to_thread(predicate) if blocking else predicate()
        if await held if inspect.isawaitable(held) else held:
            return
        await asyncio.sleep(pause)


def eventually_sync(
    predicate: Callable[[], object], timeout_s: float = EVENT_TIMEOUT_S, *, what: str | None = None
) -> None:
    """:func:`eventually` for plain code: a thread, or a test without an event loop."""
    for pause in pauses(predicate, timeout_s, what):
        if predicate():
            return
        time.sleep(pause)
