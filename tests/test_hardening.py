"""Bad input, refusals and overload: every datagram gets a defined outcome and a count."""

from __future__ import annotations

import asyncio
import io
import logging
import socket
import sys
from collections.abc import Hashable, Iterator
from typing import Any

import pytest

from support.waiting import eventually
from tests.helpers import (
    LOOPBACK,
    Collector,
    assert_balanced,
    assert_summary_balanced,
    raw_send,
    start_cli_server,
)
from udpchat import DropReason, LinePrinter, Message, Server, ServerConfig
from udpchat import server as server_module
from udpchat.admission import Admission, RateLimiter, parse_network
from udpchat.counters import ServerTally, StatsSnapshot
from udpchat.protocol import DropNotices, Receiver
from udpchat.sockets import kernel_drop_count, proc_drop_count


async def run_through_printer(
    *payloads: bytes, config: ServerConfig | None = None
) -> tuple[list[str], list[Message], StatsSnapshot]:
    """Send payloads to a fresh server that prints lines; returns lines, messages and stats."""
    stream = io.StringIO()
    collector = Collector(LinePrinter(stream))
    server = Server(config or ServerConfig(host=LOOPBACK, port=0), collector)
    await server.start()
    raw_send(server.address, *payloads)
    await server.stop()
    return stream.getvalue().splitlines(keepends=True), collector.messages, server.stats()


async def test_empty_datagram_is_dropped_and_counted() -> None:
    lines, _, stats = await run_through_printer(b"")
    assert lines == []
    assert stats.dropped["empty"] == 1
    assert_balanced(stats)


async def test_oversize_is_rejected_not_truncated() -> None:
    config = ServerConfig(host=LOOPBACK, port=0, max_datagram_size=1024)
    _, messages, stats = await run_through_printer(b"a" * 1024, b"b" * 1025, config=config)
    assert [m.text for m in messages] == ["a" * 1024]
    assert stats.dropped["oversize"] == 1
    assert_balanced(stats)


async def test_invalid_utf8_is_shown_escaped_and_counted() -> None:
    lines, messages, stats = await run_through_printer(b"caf\xe9 \xff")
    assert lines == [f"[{LOOPBACK}] caf\\xe9 \\xff\n"]
    assert messages[0].username is None
    assert stats.problems["invalid_utf8"] == 1


@pytest.mark.parametrize(
    ("payload", "problem"),
    [
        (b"hello there", "unparsed"),
        (b"alice: pesan ke-x", "invalid_counter"),
        (b"alice: pesan ke-99999999999999999999999", "invalid_counter"),
        (b"alice: pesan ke-0", "invalid_counter"),
        (b"al\tice: pesan ke-1", "invalid_username"),
        (b"\x1b[31mred\x1b[0m: pesan ke-1", "invalid_username"),
        ("\u202eagem: pesan ke-1".encode(), "invalid_username"),
        (b" padded: pesan ke-1", "invalid_username"),
    ],
)
async def test_text_outside_the_seed_format_is_shown_and_counted(
    payload: bytes, problem: str
) -> None:
    lines, messages, stats = await run_through_printer(payload)
    assert len(lines) == 1
    assert (messages[0].username, messages[0].counter) == (None, None)
    assert stats.problems == {problem: 1}
    assert stats.handled == 1


@pytest.mark.parametrize(
    ("payload", "counter"),
    [
        (b"citra: hello, is anyone here?", "texts"),
        ("用户: /quit".encode(), "texts"),
        (b"/keepalive 1700000000.0123456789abcdef0123456789abcdef", "commands"),
        (b"/join -----------------------", "commands"),
        (b"/leave", "commands"),
    ],
)
async def test_chat_texts_and_room_words_are_counted_as_what_they_are(
    payload: bytes, counter: str
) -> None:
    """What ``chat`` sends is no problem: a line typed, or a word to the room."""
    lines, _, stats = await run_through_printer(payload)
    assert len(lines) == 1
    assert stats.problems == {}
    assert (stats.texts, stats.commands) == ((1, 0) if counter == "texts" else (0, 1))


async def test_the_seeds_names_are_parsed_accounted_and_shown() -> None:
    names = ["Budi Santoso", "budí", "用户", "Ωmega"]
    lines, messages, stats = await run_through_printer(
        *(f"{name}: pesan ke-1".encode() for name in names)
    )
    assert sorted(lines) == sorted(f"[{LOOPBACK}] {name}: pesan ke-1\n" for name in names)
    assert sorted((m.username, m.counter) for m in messages) == sorted((n, 1) for n in names)
    assert sorted(sender.username for sender in stats.senders) == sorted(names)
    assert stats.problems == {}


async def test_terminal_controls_never_reach_the_output_raw() -> None:
    hostile = "x\x1b[2J\x1b]0;pwned\x07\r\nfake line\x00\x9b\u202e \\ end".encode()
    lines, _, _ = await run_through_printer(hostile)
    expected = "x\\x1b[2J\\x1b]0;pwned\\x07\\r\\nfake line\\x00\\x9b\\u202e \\\\ end"
    assert lines == [f"[{LOOPBACK}] {expected}\n"]
    assert all(ch.isprintable() for ch in lines[0][:-1])


async def test_invalid_utf8_is_shown_whole_in_bytes_notation() -> None:
    lines, messages, stats = await run_through_printer(b"caf\xc3\xa9 \xff\x1b[2J")
    assert lines == [f"[{LOOPBACK}] caf\\xc3\\xa9 \\xff\\x1b[2J\n"]
    assert messages[0].text == "caf\\xc3\\xa9 \\xff\\x1b[2J"
    assert stats.problems == {"invalid_utf8": 1, "unparsed": 1}


async def test_failing_handler_is_logged_once_counted_and_the_server_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen = Collector()

    def handler(message: Message) -> None:
        seen(message)
        if message.text.startswith("boom"):
            raise ValueError(f"cannot handle {message.text}")

    async with Server(ServerConfig(host=LOOPBACK, port=0), handler) as server:
        with caplog.at_level(logging.ERROR, logger="udpchat.server"):
            raw_send(server.address, b"boom 1", b"boom 2", b"ok: pesan ke-1")
            await seen.wait_for(3)
    stats = server.stats()
    assert (stats.handled, stats.handler_errors) == (3, 2)
    assert_balanced(stats, sent=3)
    errors = [r.getMessage() for r in caplog.records]
    assert len(errors) == 1
    assert "cannot handle boom 1" in errors[0]


async def test_allow_list_refuses_other_sources(collector: Collector) -> None:
    config = ServerConfig(host=LOOPBACK, port=0, allow=(parse_network("127.0.0.2/32"),))
    async with Server(config, collector) as server:
        raw_send(server.address, b"stranger: pesan ke-1")
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as trusted:
            trusted.bind(("127.0.0.2", 0))
            trusted.sendto(b"friend: pesan ke-1", server.address)
        (message,) = await collector.wait_for(1)
    assert message.username == "friend"
    stats = server.stats()
    assert stats.dropped["not_allowed"] == 1
    assert_balanced(stats)


class WalkCountingDict(dict[Hashable, list[float]]):
    """A dict that counts the walks over its keys."""

    walks = 0

    def __iter__(self) -> Iterator[Hashable]:
        WalkCountingDict.walks += 1
        return super().__iter__()


def test_the_rate_limiters_eviction_never_walks_its_table() -> None:
    """Under churn (every datagram a new source, the table full) the oldest source goes in
    constant time. Taking the dict's first key instead walks the slots its earlier deletions
    left: with 65,536 sources, 68-75x a steady source's check (make attack, ratelimit), the
    17-20% kernel drops of issue #27 at 50,000 forged sources a second."""
    limiter = RateLimiter(100.0, max_sources=100)
    limiter._buckets = WalkCountingDict()
    sources = [f"10.0.{n >> 8}.{n & 255}" for n in range(1000)]
    for now, source in enumerate(sources):
        assert limiter.allow(source, float(now))
    assert (limiter.sources, WalkCountingDict.walks) == (100, 0)
    assert set(limiter._buckets) == set(sources[-100:])  # the oldest went first


async def test_rate_limit_per_source() -> None:
    config = ServerConfig(host=LOOPBACK, port=0, rate_limit_per_s=0.01, rate_burst=3)
    _, messages, stats = await run_through_printer(
        *(f"u: pesan ke-{n}".encode() for n in range(1, 11)), config=config
    )
    assert [m.counter for m in messages] == [1, 2, 3]
    assert stats.dropped["rate_limited"] == 7
    assert_balanced(stats)


async def test_queue_full_drops_are_counted_and_memory_is_not_used() -> None:
    release = asyncio.Event()
    started = asyncio.Event()
    loop = asyncio.get_running_loop()

    def blocked(message: Message) -> None:
        loop.call_soon_threadsafe(started.set)
        asyncio.run_coroutine_threadsafe(release.wait(), loop).result(10)

    config = ServerConfig(host=LOOPBACK, port=0, workers=1, queue_size=5)
    async with Server(config, blocked) as server:
        raw_send(server.address, b"u: pesan ke-1")
        await started.wait()
        raw_send(server.address, *(f"u: pesan ke-{n}".encode() for n in range(2, 21)))
        await eventually(lambda: server.stats().received == 20)
        assert server.stats().queue_depth == 5
        release.set()
    stats = server.stats()
    assert stats.handled == 5
    assert stats.dropped["queue_full"] == 15
    assert_balanced(stats, sent=20)


class FullQueue:
    """A dispatcher whose queue is full until ``full`` is cleared: it takes what it is given
    only then, and counts the rest as ``queue_full`` through the tally, as the real one does."""

    max_batch = 128

    def __init__(self, tally: ServerTally) -> None:
        self.tally = tally
        self.full = True

    def submit(self, datagrams: list[Any], _at: float) -> None:
        self.tally.take_in(len(datagrams), 0 if self.full else len(datagrams), new_batch=True)


@pytest.mark.parametrize("batched", [False, True])
async def test_a_full_queue_drops_before_the_rate_limit_spends_a_token(batched: bool) -> None:
    """Both entry points (one datagram a call, and the batch reader's) count alike: what a full
    queue drops spends no sender's tokens, so the sender's next messages within its rate are
    taken once the queue has room."""
    tally = ServerTally()
    queue = FullQueue(tally)
    admission = Admission((), 10.0, 10.0, 100, lambda: 0.0)  # a burst of 10, the clock frozen
    notices = DropNotices(max_datagram_size=64, queue_size=1, rate_limit_per_s=10.0)
    receiver = Receiver(
        queue,  # type: ignore[arg-type]
        tally,
        max_datagram_size=64,
        admission=admission,
        notices=notices,
    )

    def receive(datagrams: list[tuple[bytes, tuple[str, int]]]) -> None:
        if batched:
            receiver.datagrams_received(datagrams)
        else:
            for data, addr in datagrams:
                receiver.datagram_received(data, addr)
            receiver.dispatch()

    receive([(b"budi: pesan ke-1", ("127.0.0.2", 5001))])  # finds the queue full
    receive([(b"ana: pesan ke-%d" % n, (LOOPBACK, 5000)) for n in range(1, 6)])
    queue.full = False
    receive([(b"ana: pesan ke-%d" % n, (LOOPBACK, 5000)) for n in range(6, 16)])
    snapshot = tally.snapshot()
    assert {reason: n for reason, n in snapshot.dropped.items() if n} == {
        DropReason.QUEUE_FULL.value: 6
    }
    assert snapshot.queue_depth == 10


async def test_kernel_drops_reconcile_what_was_sent() -> None:
    """With the loop blocked, a burst overflows a small receive buffer; nothing goes uncounted."""
    config = ServerConfig(host=LOOPBACK, port=0, rcvbuf=4096)
    server = Server(config, Collector())
    await server.start()
    if server.kernel_drops() is None:
        await server.stop()
        pytest.skip("this OS does not report per-socket drops")
    sent = 2000
    raw_send(server.address, *(f"u: pesan ke-{n}".encode() for n in range(1, sent + 1)))
    await server.stop()
    stats = server.stats()
    assert stats.kernel_drops is not None
    assert stats.kernel_drops > 0
    assert_balanced(stats, sent=sent)


async def test_a_stop_that_cannot_read_everything_the_socket_holds_says_so(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """At stop the server reads what the kernel already holds, up to a cap; past it, what is
    left is neither received nor a kernel drop, and ``stop_reads_capped`` says so."""
    monkeypatch.setattr(server_module, "MAX_READS_AT_STOP", 5)
    server = Server(ServerConfig(host=LOOPBACK, port=0), Collector())
    await server.start()
    raw_send(server.address, *(f"u: pesan ke-{n}".encode() for n in range(1, 21)))
    await server.stop()  # the loop never ran: all 20 wait in the socket
    stats = server.stats()
    assert (stats.received, stats.stop_reads_capped) == (5, 1)
    assert_balanced(stats)


@pytest.mark.skipif(sys.platform != "linux", reason="Linux's drop counts")
def test_the_kernels_drop_count_is_read_in_constant_time_and_agrees_with_proc() -> None:
    """SO_MEMINFO, not a scan of /proc/net/udp (every UDP socket of the machine, on the loop)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as receiver:
        receiver.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        receiver.bind((LOOPBACK, 0))
        raw_send(receiver.getsockname(), *([b"x" * 100] * 500))
        drops = kernel_drop_count(receiver)
        assert drops is not None and drops > 0
        assert drops == proc_drop_count(receiver)


async def test_a_drop_is_said_on_stderr_while_it_happens_once_a_while_per_reason() -> None:
    """A student whose message did not appear learns why at once, not only at Ctrl-C."""
    cli, port = await start_cli_server()
    raw_send((LOOPBACK, port), b"x" * 2000, b"", *([b"y" * 3000] * 20), b"")
    oversize = await cli.read_stderr_until("over max_datagram_size")
    assert f"dropped a datagram of 2000 bytes from {LOOPBACK}: over" in oversize
    assert "(--max-size) 1024" in oversize
    empty = await cli.read_stderr_until("empty datagram")
    assert f"dropped an empty datagram from {LOOPBACK}" in empty
    cli.signal()
    status, _, stderr = await cli.finish()
    assert status == 0
    assert "over max_datagram_size" not in stderr  # the other 20 within 5 s: counted, not said
    assert "empty datagram" not in stderr
    counts = assert_summary_balanced(stderr, sent=23)
    assert (counts["oversize"], counts["empty"]) == (21, 2)
