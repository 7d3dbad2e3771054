"""The impairment proxy's exact wake-ups: a timerfd where Linux has one, the loop's timers else."""

from __future__ import annotations

import asyncio
import time

import pytest

from support.waiting import EVENT_TIMEOUT_S
from udpchat import wakeup
from udpchat.wakeup import Wakeup


@pytest.mark.parametrize("timerfd", [True, False], ids=["timerfd", "call_at"])
async def test_it_fires_once_not_before_its_time_and_a_new_time_replaces_the_old(
    timerfd: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not timerfd:
        monkeypatch.setattr(wakeup, "_TIMERFD", None)
    called = asyncio.Event()
    times: list[float] = []

    def record() -> None:
        times.append(time.monotonic())
        called.set()

    moment = Wakeup(asyncio.get_running_loop(), record)
    try:
        assert moment.precise is (timerfd and wakeup._load_timerfd() is not None)
        moment.at(time.monotonic() + 0.02)
        later = time.monotonic() + 0.1
        moment.at(later)  # replaces the sooner time
        await asyncio.wait_for(called.wait(), EVENT_TIMEOUT_S)
        assert times[0] >= later
        assert moment.when is None
        called.clear()
        moment.at(time.monotonic() - 1)  # a time past: at once
        await asyncio.wait_for(called.wait(), EVENT_TIMEOUT_S)
        assert len(times) == 2
    finally:
        moment.close()
