"""``eventually`` waits for state without taking the cores it must share: it sleeps between
looks, a pause that grows and is never zero, and gives up at its deadline naming what it
waited for."""

from __future__ import annotations

import asyncio
import itertools
import time

import pytest

from support.waiting import FIRST_PAUSE_S, MAX_PAUSE_S, eventually, eventually_sync, pauses

WAIT_S = 0.3


def test_the_pauses_grow_from_a_millisecond_and_are_never_zero() -> None:
    first = list(itertools.islice(pauses(lambda: False, 60.0, None), 8))
    assert first == [0.001, 0.002, 0.004, 0.008, 0.016, 0.02, 0.02, 0.02]
    assert FIRST_PAUSE_S > 0 and max(first) == MAX_PAUSE_S


async def test_a_wait_that_never_ends_sleeps_and_names_what_it_waited_for() -> None:
    looks = 0

    def never() -> bool:
        nonlocal looks
        looks += 1
        return False

    started_cpu = time.process_time()
    with pytest.raises(TimeoutError, match=r"the moon turns blue: not so within 0.3 s"):
        await eventually(never, WAIT_S, what="the moon turns blue")
    assert time.process_time() - started_cpu < WAIT_S / 3  # a spin would take all of it
    assert looks <= WAIT_S / MAX_PAUSE_S + 6  # the first, short pauses, then every 20 ms


async def test_it_returns_once_the_state_holds_whichever_way_it_is_read() -> None:
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    loop.call_later(0.05, done.set)
    await eventually(done.is_set)

    async def asked_on_the_loop() -> bool:
        await asyncio.sleep(0)
        return True

    await eventually(asked_on_the_loop)

    def slow_to_answer() -> bool:
        time.sleep(0.001)  # a predicate that blocks, as an HTTP request does
        return True

    await eventually(slow_to_answer, blocking=True)
    with pytest.raises(TimeoutError, match="<lambda>"):
        eventually_sync(lambda: False, 0.05)
    eventually_sync(lambda: True)
