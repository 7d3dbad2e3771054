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


class IoVec(ctypes.Structure):
    """``struct iovec``."""

    _fields_ = (("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t))


class MsgHdr(ctypes.Structure):
    """``struct msghdr``."""

    _fields_ = (
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.POINTER(IoVec)),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    )


class MMsgHdr(ctypes.Structure):
    """``struct mmsghdr``: one datagram of a ``sendmmsg``."""

    _fields_ = (("msg_hdr", MsgHdr), ("msg_len", ctypes.c_uint))


SENDMMSG = libc_function(
    "sendmmsg", (ctypes.c_int, ctypes.POINTER(MMsgHdr), ctypes.c_uint, ctypes.c_int), ctypes.c_int
)
"""Several datagrams in one system call (Linux); None where the C library has no such call.
Called through ctypes, it runs without the GIL."""
