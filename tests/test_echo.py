"""``serve --echo``: each message in the seed's format answered with itself, once, never larger,
within a rate per source address (SECURITY.md's promises: no amplification, no loop), every
answer and refusal counted."""

from __future__ import annotations

import asyncio
import math
import socket
import tracemalloc

import pytest
from hypothesis import given
from hypothesis import strategies as st

from support.forgery import forge
from support.waiting import EVENT_TIMEOUT_S, eventually
from tests.helpers import LOOPBACK, forgeable_servers
from udpchat import Server, ServerConfig
from udpchat.admission import SOURCE_BYTES
from udpchat.counters import EchoStats
from udpchat.echo import ANSWERED_SENDER_BYTES, WINDOW, Answered, Echo
from udpchat.handlers import Batch
from udpchat.pipeline import parse
from udpchat.settings import ConfigError
from udpchat.wire import split_seed


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def batch(payloads: list[bytes], source: tuple[str, int] = ("10.0.0.1", 9)) -> Batch:
    """A batch as the pipeline hands it to its handler: parsed (senders, seed fields)."""
    parsed = Batch(0.0, [(data, source) for data in payloads])
    parse(parsed, ipv6_socket=False)
    return parsed


def seeds(name: str, *counters: int) -> list[bytes]:
    return [f"{name}: pesan ke-{counter}".encode() for counter in counters]


names = st.text(st.sampled_from("ab-_."), min_size=1, max_size=32)
messages = st.builds(lambda name, counter: f"{name}: pesan ke-{counter}".encode(), names,
                     st.integers(1, 10**18))  # fmt: skip


@given(
    payloads=st.lists(st.one_of(messages, st.binary(max_size=1500)), max_size=40),
    rate=st.floats(0.5, 50),
)
def test_an_answer_is_the_datagram_itself_and_answers_stay_within_the_rate(
    payloads: list[bytes], rate: float
) -> None:
    """Bytes out ≤ bytes in, datagram by datagram, for any payload; a source gets at most its
    burst (twice the rate) at once, then the rate; the rest are counted, never answered. What
    is not a message in the seed's format, or repeats one answered already, is not answered."""
    sent: list[tuple[bytes, tuple[str, int]]] = []
    handled: list[int] = []
    clock = Clock()

    class Inner:
        def handle_batch(self, batch: Batch) -> int:
            handled.append(len(batch))
            return 0

    def send(data: bytes, peer: tuple[str, int]) -> bool:
        sent.append((data, peer))
        return True

    echo = Echo(Inner(), send, rate, 16, clock)
    assert echo.handle_batch(batch(payloads)) == 0
    new = [data for index, data in enumerate(payloads) if data in messages_once(payloads, index)]
    burst = 2 * rate  # a full bucket: floor(burst) answers at once
    answered = min(len(new), math.floor(burst))
    assert [data for data, _ in sent] == new[:answered]
    assert all(peer == ("10.0.0.1", 9) for _, peer in sent)
    stats = echo.stats()
    assert (stats.echoed, stats.over_rate) == (answered, len(new) - answered)
    assert stats.not_seed + stats.repeated == len(payloads) - len(new)
    assert stats.echoed_bytes == sum(len(data) for data in new[:answered])
    assert handled == [len(payloads)]  # every datagram goes on to the server's own handler
    clock.now += 1.0  # a second later: the rate's worth again, up to the burst
    tokens = min(burst, burst - answered + rate) if new else burst
    echo.handle_batch(batch(seeds("zz", *range(1, 101))))
    assert math.floor(tokens - 1e-6) <= len(sent) - answered <= math.floor(tokens + 1e-9)


def message(payload: bytes) -> tuple[str, int] | None:
    try:
        return split_seed(payload.decode())
    except UnicodeDecodeError:
        return None


def messages_once(payloads: list[bytes], index: int) -> set[bytes]:
    """The oracle: ``payloads[index]`` if it is a message in the seed's format whose counter
    its name has not sent before, and is above or at most :data:`WINDOW` below its highest."""
    this = message(payloads[index])
    if this is None:
        return set()
    earlier = [m[1] for m in map(message, payloads[:index]) if m is not None and m[0] == this[0]]
    counter = this[1]
    if not earlier or counter > max(earlier):
        return {payloads[index]}
    if max(earlier) - counter <= WINDOW and counter not in earlier:
        return {payloads[index]}
    return set()


def test_a_failed_answer_is_counted_and_sources_are_bounded() -> None:
    echo = Echo(None, lambda data, peer: False, 10.0, max_sources=2, clock=Clock())
    for port in range(5):
        echo.handle_batch(batch(seeds("ana", 1), ("10.0.0.1", port)))  # one source address
    for host in ("10.0.0.2", "10.0.0.3", "10.0.0.4"):
        echo.handle_batch(batch(seeds("ana", 1), (host, 1)))
    stats = echo.stats()
    assert (stats.echoed, stats.send_failures, stats.over_rate) == (0, 8, 0)
    assert stats.sources_evicted == 2  # four addresses, a table of two
    assert stats.answered_evicted == 6  # eight senders, a table of two


def test_each_counter_of_a_sender_is_answered_once_within_the_window() -> None:
    answered = Answered(max_senders=2)
    ana, budi = ("10.0.0.1", 9, b"ana"), ("10.0.0.1", 9, b"budi")
    assert [answered.first_time(ana, c) for c in (5, 5, 3, 3, 7, 6, 4, 5)] == [
        True, False, True, False, True, True, True, False,
    ]  # fmt: skip
    assert answered.first_time(ana, 7 + WINDOW + 1)  # a jump: 7 and below leave the window
    assert not answered.first_time(ana, 7)
    assert answered.first_time(ana, 7 + WINDOW + 1 - WINDOW)  # the window's last counter
    assert not answered.first_time(ana, 7 + WINDOW + 1 - WINDOW)
    assert answered.first_time(ana, 10 * WINDOW)  # a jump past the whole window forgets it
    assert answered.first_time(ana, 10 * WINDOW - 1)
    assert answered.first_time(budi, 5) and answered.first_time(("10.0.0.2", 9, b"ana"), 5)
    assert answered.evicted == 1 and answered.first_time(ana, 10 * WINDOW)  # forgotten


def test_an_answered_senders_memory_is_within_its_bound() -> None:
    """ANSWERED_SENDER_BYTES, which the server's memory bound counts per --max-sources entry
    with --echo: the longest address and username, its window full."""
    answered = Answered(max_senders=1000)
    answered.first_time(("10.0.0.1", 1, b"y"), 1)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for index in range(1000):
            ip = f"ffff:ffff:ffff:ffff:ffff:ffff:ffff:{index:04x}%eth0.1234"
            key = (ip, 65535, (b"%04d" % index) * 8)
            for counter in range(10**18, 10**18 + WINDOW + 1):
                answered.first_time(key, counter)
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert used / 1000 <= ANSWERED_SENDER_BYTES, used / 1000


async def test_a_server_with_echo_answers_each_message_with_itself() -> None:
    config = ServerConfig(host=LOOPBACK, port=0, echo=True, echo_rate_per_s=1000)
    messages = [b"alice: pesan ke-1", "😀 ü: pesan ke-2".encode(), b"alice: pesan ke-3"]
    payloads = [*messages, b"", b"\xff" * 1024, b"alice: pesan ke-1"]
    async with Server(config, lambda message: None) as server:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(EVENT_TIMEOUT_S)
            for payload in payloads:
                client.sendto(payload, server.address)
            answers = await asyncio.to_thread(lambda: [client.recv(2048) for _ in messages])
        await eventually(lambda: server.stats().handled == 5)  # an empty one is dropped
        stats = server.stats()
    assert sorted(answers) == sorted(messages)
    assert stats.echo == EchoStats(
        echoed=3, echoed_bytes=sum(map(len, messages)), not_seed=1, repeated=1
    )


def echo_stats(server: Server) -> EchoStats:
    stats = server.stats(include_senders=False).echo
    assert stats is not None
    return stats


FORGED = ["ana: pesan ke-1", "ana: pesan ke-2", "ana: pesan ke-1", "hello"]
"""What the forger sends, claiming another echo server's address (or the server's own): two
messages (one twice) and a datagram that is not one."""


async def test_two_echo_servers_one_forged_datagram_no_loop() -> None:
    """A forged message from B's address to A: A answers it to B, B answers that to A, which
    has answered it already: one round, never a stream (before, three forged datagrams kept
    74 a second going between two servers 40 ms apart, for as long as both ran)."""
    async with forgeable_servers(2, echo=True) as (first, second):
        for text in FORGED:
            forge(second.address, first.address, text)
        # handled counts a batch once its handler, the echo included, has counted it
        await eventually(lambda: (handled(first), handled(second)) == (6, 2))
        assert echo_stats(first) == EchoStats(echoed=2, echoed_bytes=30, repeated=3, not_seed=1)
        assert echo_stats(second) == EchoStats(echoed=2, echoed_bytes=30)
        assert (received(first), received(second)) == (6, 2)


async def test_an_echo_server_and_its_own_address_no_loop() -> None:
    async with forgeable_servers(1, echo=True) as (server,):
        for text in FORGED:
            forge(server.address, server.address, text)
        await eventually(lambda: handled(server) == 6)
        assert echo_stats(server) == EchoStats(echoed=2, echoed_bytes=30, repeated=3, not_seed=1)
        assert received(server) == 6


def handled(server: Server) -> int:
    return server.stats(include_senders=False).handled


def received(server: Server) -> int:
    return server.stats(include_senders=False).received


def test_the_memory_bound_counts_echo_s_tables() -> None:
    """Both bounded by --max-sources: the rate buckets and the answered senders."""
    added = ServerConfig(echo=True, max_sources=1000).memory_bound_bytes()
    added -= ServerConfig(max_sources=1000).memory_bound_bytes()
    assert added == 1000 * (SOURCE_BYTES + ANSWERED_SENDER_BYTES)


def test_echo_and_the_relay_do_not_mix() -> None:
    with pytest.raises(ConfigError, match="echo: cannot be used with relay"):
        ServerConfig(echo=True, relay=True)
