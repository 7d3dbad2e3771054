"""A wake-up at an exact time on the running event loop, for the impairment proxy's delays.

uvloop's timers count in whole milliseconds and asyncio's round its waits up to one, so a delay
made with ``call_at`` is up to a millisecond late. On Linux a ``timerfd`` on CLOCK_MONOTONIC (the
clock of ``time.monotonic()``) becomes readable at the nanosecond asked for and wakes the loop
like any socket; elsewhere, and where it cannot be made, :class:`Wakeup` falls back to
``call_at``. The functions come from the C library through :mod:`udpchat.libc`.
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import time
from collections.abc import Callable

from udpchat.libc import libc_function

TFD_TIMER_ABSTIME = 1


class _TimeSpec(ctypes.Structure):
    _fields_ = (("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long))


class _ITimerSpec(ctypes.Structure):
    _fields_ = (("it_interval", _TimeSpec), ("it_value", _TimeSpec))


def _load_timerfd() -> tuple[Callable[..., int], Callable[..., int]] | None:
    if not hasattr(time, "CLOCK_MONOTONIC"):
        return None
    create = libc_function("timerfd_create", (ctypes.c_int, ctypes.c_int), ctypes.c_int)
    settime = libc_function(
        "timerfd_settime",
        (ctypes.c_int, ctypes.c_int, ctypes.POINTER(_ITimerSpec), ctypes.POINTER(_ITimerSpec)),
        ctypes.c_int,
    )
    if create is None or settime is None:
        return None
    return create, settime


_TIMERFD = _load_timerfd()


class Wakeup:
    """Calls ``callback`` once, at :meth:`at`'s time (``time.monotonic()`` seconds) or as soon
    after as the loop can; a new time replaces the one set before. On the loop's thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop, callback: Callable[[], None]) -> None:
        self._loop = loop
        self._callback = callback
        self.when: float | None = None
        """The time set and not yet come; None when nothing is set."""
        self._handle: asyncio.TimerHandle | None = None
        self._fd = -1
        self._spec = _ITimerSpec()
        if _TIMERFD is not None:
            fd = _TIMERFD[0](time.CLOCK_MONOTONIC, os.O_NONBLOCK | os.O_CLOEXEC)
            if fd >= 0:
                self._fd = fd
                loop.add_reader(fd, self._fired)

    @property
    def precise(self) -> bool:
        """Whether a timerfd serves it (else the loop's own timers)."""
        return self._fd >= 0

    def at(self, when: float) -> None:
        self.when = when
        if self._fd < 0:
            if self._handle is not None:
                self._handle.cancel()
            self._handle = self._loop.call_at(when, self._fired)
            return
        seconds = max(when, 1e-9)  # all zeros would disarm it
        value = self._spec.it_value
        value.tv_sec = int(seconds)
        value.tv_nsec = int((seconds - value.tv_sec) * 1e9)
        assert _TIMERFD is not None
        if _TIMERFD[1](self._fd, TFD_TIMER_ABSTIME, ctypes.byref(self._spec), None) < 0:
            error = ctypes.get_errno()
            raise OSError(error, os.strerror(error))

    def close(self) -> None:
        self.when = None
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        if self._fd >= 0:
            self._loop.remove_reader(self._fd)
            os.close(self._fd)
            self._fd = -1

    def _fired(self) -> None:
        if self._fd >= 0:
            try:
                os.read(self._fd, 8)
            except BlockingIOError:  # re-armed for later since it became readable
                return
        self._handle = None
        self.when = None
        self._callback()
