"""Helpers the tests share: a collecting handler, a relay member's inbox, raw sends, CLI
subprocesses, a blocking seed-style server, and the accounting identities every test that drops,
fails, forces or kills checks. What the benchmarks need too is in :mod:`support`."""

from __future__ import annotations

import asyncio
import os
import platform
import re
import signal
import socket
import sys
import threading
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import support
from support.summary import balanced, summary_counts
from support.waiting import EVENT_TIMEOUT_S, eventually_sync
from udpchat import Message, Server, ServerConfig, StatsSnapshot

LOOPBACK = "127.0.0.1"
STARTED: list[CliProcess] = []
"""Every CLI process a test started, for the fixture that kills what is left."""


class Collector:
    """A handler that keeps every message and lets a test await a count of them.

    With ``inner``, each message goes through that handler first, so that a test can await
    another handler's work.
    """

    def __init__(self, inner: Callable[[Message], None] | None = None) -> None:
        self.inner = inner
        self.messages: list[Message] = []
        self.threads: set[str] = set()
        self._lock = threading.Lock()
        self._loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()

    def __call__(self, message: Message) -> None:
        if self.inner is not None:
            self.inner(message)
        with self._lock:
            self.messages.append(message)
            self.threads.add(threading.current_thread().name)
        self._loop.call_soon_threadsafe(self._changed.set)

    def flush(self) -> None:
        flush = getattr(self.inner, "flush", None)
        if flush is not None:
            flush()

    async def wait_for(self, count: int, timeout_s: float = EVENT_TIMEOUT_S) -> list[Message]:
        async def reached() -> None:
            while len(self.messages) < count:
                self._changed.clear()
                if len(self.messages) >= count:
                    break
                await self._changed.wait()

        await asyncio.wait_for(reached(), timeout_s)
        return list(self.messages)


class Inbox:
    """What one member receives from the relay, awaitable by count."""

    def __init__(self) -> None:
        self.texts: list[str] = []
        self._changed = asyncio.Event()

    def __call__(self, text: str) -> None:
        self.texts.append(text)
        self._changed.set()

    async def wait_for(self, count: int) -> list[str]:
        async with asyncio.timeout(EVENT_TIMEOUT_S):
            while len(self.texts) < count:
                self._changed.clear()
                await self._changed.wait()
        return self.texts


READ_SYSCALL = {"x86_64": 0, "aarch64": 63}
"""The ``read`` system call's number, as ``/proc/PID/syscall`` shows it."""


def wait_until_reading_stdin(pid: int) -> None:
    """Wait until process ``pid`` is blocked reading its stdin (``/proc/PID/syscall``): a stop
    signal that arrives after a prompt is printed but before the ``read`` begins is only noted
    by CPython, and the ``read`` then blocks with the signal unanswered."""
    expected = f"{READ_SYSCALL[platform.machine()]} 0x0 "
    eventually_sync(
        lambda: Path(f"/proc/{pid}/syscall").read_text().startswith(expected),
        what=f"process {pid} reads its stdin",
    )


def raw_send(address: tuple[str, int], *payloads: bytes) -> None:
    """Send datagrams from a plain blocking socket, as the seed's client does."""
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as sock:
        for payload in payloads:
            sock.sendto(payload, address)


@dataclass
class CliProcess:
    """A running ``python -m udpchat`` with line-by-line access to its output. Every one is
    killed at the end of its test if still running (a fixture in conftest), so that a failing
    test leaves no server behind."""

    process: asyncio.subprocess.Process
    stdout_lines: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        STARTED.append(self)

    async def read_stdout_line(self, timeout_s: float = EVENT_TIMEOUT_S) -> str:
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), timeout_s)
        return line.decode().rstrip("\n")

    async def read_stderr_until(self, marker: str, timeout_s: float = EVENT_TIMEOUT_S) -> str:
        assert self.process.stderr is not None
        while True:
            raw = await asyncio.wait_for(self.process.stderr.readline(), timeout_s)
            if not raw:
                raise AssertionError(f"stderr closed before {marker!r}")
            line = raw.decode()
            if marker in line:
                return line.rstrip("\n")

    def signal(self, signum: int = signal.SIGINT) -> None:
        self.process.send_signal(signum)

    async def finish(self, timeout_s: float = EVENT_TIMEOUT_S) -> tuple[int, str, str]:
        """Wait for exit; returns (exit status, rest of stdout, rest of stderr)."""
        stdout, stderr = await asyncio.wait_for(self.process.communicate(), timeout_s)
        assert self.process.returncode is not None
        return (
            self.process.returncode,
            stdout.decode() if stdout else "",
            stderr.decode() if stderr else "",
        )


async def start_cli(*args: str, stdin: bytes | None = None) -> CliProcess:
    environment = dict(os.environ, PYTHONUNBUFFERED="1")
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "udpchat",
        *args,
        stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=environment,
    )
    if stdin is not None:
        assert process.stdin is not None
        process.stdin.write(stdin)
        await process.stdin.drain()
        process.stdin.close()
    return CliProcess(process)


async def read_port(cli: CliProcess) -> int:
    """The port from the server's ``listening on HOST port N`` status line."""
    listening = await cli.read_stderr_until("listening on")
    match = re.search(r" port (\d+)", listening)
    assert match, listening
    return int(match.group(1))


async def start_cli_server(*args: str) -> tuple[CliProcess, int]:
    """Start ``udpchat serve`` on a free loopback port; returns once it prints the seed's banner."""
    cli = await start_cli("serve", "--host", LOOPBACK, "--port", "0", *args)
    port = await read_port(cli)
    assert await cli.read_stdout_line() == "Server menunggu..."
    return cli, port


class BlockingSeedServer:
    """The seed's server design: a plain blocking ``recvfrom(1024)`` loop on its own thread."""

    def __init__(self, expected: int) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind((LOOPBACK, 0))
        self.sock.settimeout(10)
        self.address: tuple[str, int] = self.sock.getsockname()
        self.received: list[bytes] = []
        self._expected = expected
        self._thread = threading.Thread(target=self._receive)
        self._thread.start()

    def _receive(self) -> None:
        with self.sock:
            while len(self.received) < self._expected:
                data, _ = self.sock.recvfrom(1024)
                self.received.append(data)

    async def join(self) -> list[bytes]:
        await asyncio.to_thread(self._thread.join, 10)
        return self.received


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
    return port


def assert_balanced(stats: StatsSnapshot, sent: int | None = None) -> None:
    """Every datagram read is handled, dropped for a named reason or still queued; and where
    the sender is known, every datagram sent was read or dropped by the kernel."""
    assert stats.received == stats.handled + stats.dropped_total + stats.queue_depth, stats
    if sent is not None:
        assert sent == stats.received + (stats.kernel_drops or 0), (sent, stats)


def assert_summary_balanced(stderr: str, sent: int | None = None) -> dict[str, int]:
    """:func:`assert_balanced` on the summary a ``serve`` process printed; returns its counts."""
    counts = summary_counts(stderr)
    assert balanced(counts, sent), (sent, counts)
    return counts


FLOOD_SCRIPT = Path(support.__file__).with_name("flood.py")


async def flood(port: int, size: int, count: int, seconds: float) -> int:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(FLOOD_SCRIPT),
        LOOPBACK,
        str(port),
        str(size),
        str(count),
        str(seconds),
        stdout=asyncio.subprocess.PIPE,
    )
    stdout, _ = await process.communicate()
    return int(stdout)


async def start_server_with_unread_stdout(*args: str) -> tuple[CliProcess, int, int]:
    """A server whose stdout is a pipe nobody reads, as with a terminal that stopped scrolling.

    Returns the process, its port, and the pipe's read end (for the caller to close).
    """
    read_end, write_end = os.pipe()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "udpchat", "serve", "--host", LOOPBACK, "--port", "0", *args,
        stdout=write_end, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    os.close(write_end)
    server = CliProcess(process)
    return server, await read_port(server), read_end


@asynccontextmanager
async def forgeable_servers(
    count: int, *, relay: bool = False, echo: bool = False
) -> AsyncIterator[list[Server]]:
    """``count`` relays or echo servers on loopback ports another socket may share, so that
    :func:`support.forgery.forge` can claim them."""
    config = ServerConfig(host=LOOPBACK, port=0, reuse_port=True, relay=relay, echo=echo)
    async with AsyncExitStack() as stack:
        yield [await stack.enter_async_context(Server(config)) for _ in range(count)]
