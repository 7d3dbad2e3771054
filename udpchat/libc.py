"""The C library's functions that Python's standard library does not wrap (``sendmmsg``,
``timerfd_create``), found once through ctypes; None where the platform has no such function,
so that each caller falls back to the portable way."""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
from collections.abc import Callable, Sequence
from typing import Any


@functools.cache
def _library() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return ctypes.CDLL(name, use_errno=True)
    except OSError:
        return None


def libc_function(name: str, argtypes: Sequence[Any], restype: Any) -> Callable[..., int] | None:
    """The C library's ``name`` with its argument and result types set (errno kept for
    ``ctypes.get_errno()``); None without a C library or without that function."""
    library = _library()
    if library is None:
        return None
    try:
        function = getattr(library, name)
    except AttributeError:
        return None
    function.argtypes = tuple(argtypes)
    function.restype = restype
    return function  # type: ignore[no-any-return]
