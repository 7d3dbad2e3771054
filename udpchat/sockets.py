"""What the OS knows about our UDP socket: binding it, its receive buffer, its drop count, and
when each datagram arrived.

Kept apart from the server so that the platform-specific parts (``SO_RCVBUFFORCE``,
``/proc/net/udp``) sit in one place and degrade to "unknown" where the OS lacks them.
"""

from __future__ import annotations

import ipaddress
import math
import os
import socket
import struct
import sys
import time
from pathlib import Path

MAX_PORT = 65535
MAX_UDP_PAYLOAD = 65535
"""The most a UDP datagram carries: a read of this size never truncates."""
MAX_RCVBUF = 2**31 - 1
"""The largest receive buffer a socket option can ask for: it takes a C int."""
MAX_READS_AT_STOP = 100_000
"""Datagrams read at a stop from what a socket's buffer still holds, at most, so that what
reached it is counted rather than dropped at close; bounded, because a flood may still come."""
PROC_UDP_TABLES = (Path("/proc/net/udp"), Path("/proc/net/udp6"))
_DROPS_COLUMN = 12
_INODE_COLUMN = 9
SO_RCVBUFFORCE: int | None = getattr(
    socket, "SO_RCVBUFFORCE", 33 if sys.platform == "linux" else None
)
"""Linux's option number; Python's socket module does not export it."""


def bind_udp_socket(
    host: str, port: int, *, rcvbuf: int | None = None, reuse_port: bool = False
) -> socket.socket:
    """A bound, non-blocking UDP socket.

    ``::`` also accepts IPv4 where the OS allows dual-stack. ``reuse_port`` lets several
    processes share the port (Linux spreads datagrams across them by source).
    """
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_DGRAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        if reuse_port:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        if rcvbuf is not None:
            set_receive_buffer(sock, rcvbuf)
        sock.bind(address)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def set_receive_buffer(sock: socket.socket, size: int) -> int:
    """Ask for a receive buffer of ``size`` bytes; returns what the OS granted.

    Privileged processes on Linux may exceed ``net.core.rmem_max`` with ``SO_RCVBUFFORCE``;
    others get at most that limit. Linux reports double the asked size (its bookkeeping).
    """
    force = SO_RCVBUFFORCE
    try:
        if force is None:
            raise PermissionError
        sock.setsockopt(socket.SOL_SOCKET, force, size)
    except PermissionError:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, size)
    return receive_buffer_size(sock)


def receive_buffer_size(sock: socket.socket) -> int:
    return sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF)


SO_TIMESTAMPNS = 35 if sys.platform == "linux" else None
"""Linux's option number (``SO_TIMESTAMPNS_OLD``): the kernel's receive time of each datagram,
a ``struct timespec`` on CLOCK_REALTIME in ``recvmsg``'s ancillary data."""
_TIMESPEC = struct.Struct("@ll")
ARRIVAL_ANCILLARY_BYTES = socket.CMSG_SPACE(_TIMESPEC.size) if SO_TIMESTAMPNS else 0
"""``recvmsg``'s ancillary buffer for one arrival stamp."""


def stamp_arrivals(sock: socket.socket) -> bool:
    """Ask the kernel to stamp when each datagram arrives (for :func:`arrival_time`): a read
    that comes late then does not make the datagram late. False where it cannot."""
    if SO_TIMESTAMPNS is None:
        return False
    try:
        sock.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    except OSError:
        return False
    return True


OFFSET_SAMPLES = 3


def realtime_offset() -> float:
    """``time.time() - time.monotonic()``, from the tightest of :data:`OFFSET_SAMPLES` brackets
    of two monotonic reads around a realtime one: a preemption between the reads would
    otherwise shift every stamp converted with it."""
    best_width, best = math.inf, 0.0
    for _ in range(OFFSET_SAMPLES):
        before = time.monotonic()
        realtime = time.time()
        after = time.monotonic()
        if after - before < best_width:
            best_width, best = after - before, realtime - (before + after) / 2
    return best


def arrival_time(ancillary: list[tuple[int, int, bytes]], offset: float) -> float | None:
    """The kernel's arrival stamp in ``recvmsg``'s ``ancillary`` data, in ``time.monotonic()``
    seconds (``offset``: :func:`realtime_offset` just now); None without one (a kernel that
    gives none: then the caller takes the read's time)."""
    for level, kind, data in ancillary:
        if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(data) >= _TIMESPEC.size:
            seconds, nanoseconds = _TIMESPEC.unpack_from(data)
            return float(seconds + nanoseconds / 1e9 - offset)
    return None


SO_MEMINFO = 55 if sys.platform == "linux" else None
"""Linux's option number (since 3.x): the socket's memory figures, its drop count among them."""
_MEMINFO_FIELDS = 9
_MEMINFO_DROPS = 8


def kernel_drop_count(sock: socket.socket) -> int | None:
    """Datagrams the kernel dropped for this socket (receive buffer full), or None if unknown.

    Linux gives it with ``getsockopt(SO_MEMINFO)`` in constant time, cheap enough for the
    event loop however many sockets the machine has; elsewhere :func:`proc_drop_count`.
    """
    if SO_MEMINFO is not None:
        try:
            raw = sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, 4 * _MEMINFO_FIELDS)
        except OSError:
            raw = b""
        if len(raw) == 4 * _MEMINFO_FIELDS:
            return int(struct.unpack(f"{_MEMINFO_FIELDS}I", raw)[_MEMINFO_DROPS])
    return proc_drop_count(sock)


def proc_drop_count(sock: socket.socket) -> int | None:
    """The ``drops`` column of ``/proc/net/udp`` and ``/proc/net/udp6`` on the socket's row: a
    table of every UDP socket of the machine, slow when it is long (an old kernel's way)."""
    try:
        inode = str(os.fstat(sock.fileno()).st_ino)
    except OSError:
        return None
    for table in PROC_UDP_TABLES:
        try:
            rows = table.read_text().splitlines()[1:]
        except OSError:
            continue
        drops = find_drops(rows, inode)
        if drops is not None:
            return drops
    return None


def find_drops(rows: list[str], inode: str) -> int | None:
    """The drops column of the ``/proc/net/udp`` row for ``inode``; pure, for testing."""
    for row in rows:
        columns = row.split()
        if len(columns) > _DROPS_COLUMN and columns[_INODE_COLUMN] == inode:
            return int(columns[_DROPS_COLUMN])
    return None


def is_address(ip: str) -> bool:
    """An IPv4 address, or an IPv6 one with at most a ``%scope``, in the forms ``ipaddress``
    takes (no leading zeros); ``inet_pton`` checks it, ten times as fast."""
    host, percent, scope = ip.partition("%")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    if percent and (family == socket.AF_INET or not scope or "%" in scope):
        return False
    try:
        socket.inet_pton(family, host)
    except OSError:
        return False
    return True


def is_wildcard(host: str) -> bool:
    """A bound address that means every address of the host: ``0.0.0.0`` or ``::``."""
    return host in ("0.0.0.0", "::")


def is_loopback(ip: str) -> bool:
    """An address of the loopback interface (127.0.0.0/8, ``::1``); False for what is not an
    address at all."""
    try:
        return ipaddress.ip_address(ip.partition("%")[0]).is_loopback
    except ValueError:
        return False


def plain_ip(ip: str) -> str:
    """``::ffff:1.2.3.4`` (an IPv4 sender on a dual-stack socket) shown as ``1.2.3.4``."""
    return ip[7:] if ip.startswith("::ffff:") and "." in ip else ip


def sendto_address(family: int, address: tuple[str, int]) -> tuple[str, int]:
    """What ``sendto`` takes for ``address`` from a socket of ``family``: an IPv4 peer of an
    IPv6 (dual-stack) socket as ``::ffff:a.b.c.d``."""
    ip = plain_ip(address[0])
    if family == socket.AF_INET6 and "." in ip and ":" not in ip:
        ip = f"::ffff:{ip}"
    return ip, address[1]


def plain_sender(address: tuple[str, int, int, int]) -> tuple[str, int]:
    """(ip, port) from an IPv6 socket's 4-tuple; IPv4 sockets give (ip, port) already."""
    return plain_ip(address[0]), address[1]
