"""A load generator: seed-format messages from K simulated users at a target rate, for a while.

On Linux it batches with ``sendmmsg(2)`` through ctypes, so that one system call carries up to
:data:`BATCH_SIZE` datagrams and the generator is not the bottleneck on a machine it shares with
the server; elsewhere it falls back to one ``send`` per datagram. Loopback only by default.
"""

from __future__ import annotations

import ctypes
import errno
import ipaddress
import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

from udpchat.libc import SENDMMSG, IoVec, MMsgHdr
from udpchat.settings import check_bounds, check_host, setting
from udpchat.sockets import MAX_PORT
from udpchat.wire import format_message

BATCH_SIZE = 64
"""Datagrams per system call (and per pacing step)."""
PACING_STEP_S = 0.001
DEFAULT_USERS = 10
MAX_USERS = 10_000
"""Simulated users, at most: each holds a socket (a file descriptor)."""
DEFAULT_RATE_PER_S = 10_000.0
MAX_RATE_PER_S = 1e9
"""The fastest target rate: a thousand times what one process sends, and low enough that the
pacing's sum (rate * elapsed) stays a whole number a float can hold for :data:`MAX_DURATION_S`
(at 1e308/s it overflowed)."""
DEFAULT_DURATION_S = 5.0
MAX_DURATION_S = 3600.0


class BatchSender:
    """Sends lists of datagrams on a connected UDP socket, with sendmmsg where the OS has it."""

    def __init__(self, sock: socket.socket, use_sendmmsg: bool = True) -> None:
        self._sock = sock
        self.refusals = 0
        """Times the OS reported the target's port unreachable (ICMP); each time the datagrams
        of that send were not sent."""
        self._sendmmsg = SENDMMSG if use_sendmmsg else None
        self._iovecs = (IoVec * BATCH_SIZE)()
        self._headers = (MMsgHdr * BATCH_SIZE)()
        for index in range(BATCH_SIZE):
            header = self._headers[index].msg_hdr
            header.msg_iov = ctypes.pointer(self._iovecs[index])
            header.msg_iovlen = 1

    @property
    def batched(self) -> bool:
        return self._sendmmsg is not None

    def send(self, payloads: list[bytes]) -> int:
        """Send up to BATCH_SIZE payloads; returns how many the kernel took (refusals skipped)."""
        if self._sendmmsg is None:
            return self._send_one_by_one(payloads)
        buffer = b"".join(payloads)
        base = ctypes.cast(ctypes.c_char_p(buffer), ctypes.c_void_p).value or 0
        offset = 0
        iovecs = self._iovecs
        for index, payload in enumerate(payloads):
            iovecs[index].iov_base = base + offset
            iovecs[index].iov_len = len(payload)
            offset += len(payload)
        sent: int = self._sendmmsg(self._sock.fileno(), self._headers, len(payloads), 0)
        if sent < 0:
            error = ctypes.get_errno()
            if error == errno.ECONNREFUSED:
                self.refusals += 1
                return 0
            if error in (errno.EAGAIN, errno.ENOBUFS):
                return 0
            raise OSError(error, os.strerror(error))
        return sent

    def collect_refusal(self) -> None:
        """Count a refusal of the last datagrams that no later send has reported."""
        if self._sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == errno.ECONNREFUSED:
            self.refusals += 1

    def _send_one_by_one(self, payloads: list[bytes]) -> int:
        sent = 0
        for payload in payloads:
            try:
                self._sock.send(payload)
            except ConnectionRefusedError:
                self.refusals += 1
                continue
            except BlockingIOError:
                continue
            sent += 1
        return sent


class NotLoopbackError(ValueError):
    """The target is not a loopback address and remote targets were not explicitly allowed."""


@dataclass(frozen=True, slots=True)
class LoadConfig:
    """What to send, checked when built (a :class:`~udpchat.settings.ConfigError` names the
    field), so that the load stays bounded."""

    host: str = "127.0.0.1"
    port: int = setting(5002, minimum=1, maximum=MAX_PORT)
    users: int = setting(DEFAULT_USERS, minimum=1, maximum=MAX_USERS)
    """Simulated users, each with its own socket (source port), username and counter."""
    rate_per_s: float = setting(DEFAULT_RATE_PER_S, minimum=0, maximum=MAX_RATE_PER_S)
    """Target messages a second over all users; 0 sends as fast as possible."""
    duration_s: float = setting(DEFAULT_DURATION_S, minimum=0, maximum=MAX_DURATION_S)
    count: int | None = setting(None, minimum=1)
    """Stop after this many messages, if that comes before ``duration_s``."""
    use_sendmmsg: bool = True
    allow_remote: bool = False
    username_prefix: str = "load"

    def __post_init__(self) -> None:
        check_bounds(self)
        check_host(self)


@dataclass(frozen=True, slots=True)
class LoadResult:
    sent: int
    elapsed_s: float
    batched: bool
    refusals: int = 0
    """Times the target refused datagrams (ICMP port unreachable): nothing listens there."""

    @property
    def rate_per_s(self) -> float:
        return self.sent / self.elapsed_s if self.elapsed_s > 0 else 0.0


def resolve_target(config: LoadConfig) -> tuple[int, tuple[str, int]]:
    """(family, address) of the target; refuses anything but loopback unless allowed."""
    family, _, _, _, address = socket.getaddrinfo(config.host, config.port, type=socket.SOCK_DGRAM)[
        0
    ]
    if not config.allow_remote and not ipaddress.ip_address(address[0]).is_loopback:
        raise NotLoopbackError(f"{config.host} is not a loopback address")
    return family, (str(address[0]), int(address[1]))


def run_load(
    config: LoadConfig, on_progress: Callable[[int, float], None] | None = None
) -> LoadResult:
    """Send until ``duration_s`` or ``count``; ``on_progress(sent, elapsed_s)`` every 0.1 s."""
    family, address = resolve_target(config)
    sockets = [socket.socket(family, socket.SOCK_DGRAM) for _ in range(config.users)]
    try:
        for sock in sockets:
            sock.connect(address)
        users = _Users(config, sockets)
        sent, elapsed = _send_until_done(config, users, on_progress)
        return LoadResult(sent, elapsed, users.senders[0].batched, users.refusals())
    finally:
        for sock in sockets:
            sock.close()


class _Users:
    """The simulated users, each with its socket, username and counter; batches go round
    them in turn."""

    def __init__(self, config: LoadConfig, sockets: list[socket.socket]) -> None:
        self.senders = [BatchSender(sock, config.use_sendmmsg) for sock in sockets]
        self._prefixes = [
            f"{format_message(f'{config.username_prefix}{index}', 0)[:-1]}".encode()
            for index in range(config.users)
        ]
        self._counters = [0] * config.users
        self._user = 0

    def send(self, count: int) -> int:
        """The next user's next ``count`` messages; how many the socket took."""
        user = self._user
        first = self._counters[user] + 1
        prefix = self._prefixes[user]
        payloads = [b"%s%d" % (prefix, n) for n in range(first, first + count)]
        taken = self.senders[user].send(payloads)
        self._counters[user] += count
        self._user = (user + 1) % len(self.senders)
        return taken

    def refusals(self) -> int:
        """Refusals over every user, the last sends' included."""
        for sender in self.senders:
            sender.collect_refusal()
        return sum(sender.refusals for sender in self.senders)


def _send_until_done(
    config: LoadConfig, users: _Users, on_progress: Callable[[int, float], None] | None
) -> tuple[int, float]:
    """(sent, elapsed seconds) once ``duration_s`` or ``count`` is reached."""
    limit = config.count if config.count is not None else 2**63
    sent = 0
    start = time.monotonic()
    next_progress = start
    while True:
        now = time.monotonic()
        elapsed = now - start
        if elapsed >= config.duration_s or sent >= limit:
            break
        if on_progress is not None and now >= next_progress:
            on_progress(sent, elapsed)
            next_progress = now + 0.1
        batch = _due(config, elapsed, sent, limit)
        if batch <= 0:
            time.sleep(PACING_STEP_S)
            continue
        sent += users.send(batch)
    elapsed = time.monotonic() - start
    if on_progress is not None:
        on_progress(sent, elapsed)
    return sent, elapsed


def _due(config: LoadConfig, elapsed: float, sent: int, limit: int) -> int:
    """Messages to send now: a batch at most, within ``count``, and as many as the rate allows
    by ``elapsed`` (none: wait a pacing step)."""
    batch = min(BATCH_SIZE, limit - sent)
    if config.rate_per_s > 0:
        batch = min(batch, int(config.rate_per_s * elapsed) - sent)
    return batch
