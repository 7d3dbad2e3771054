"""``serve --echo``: each accepted datagram answered with itself, never larger, within a rate
per source address (SECURITY.md's promise), every answer and refusal counted."""

from __future__ import annotations

import asyncio
import math
import socket

import pytest
from hypothesis import given
from hypothesis import strategies as st

from support.waiting import EVENT_TIMEOUT_S, eventually
from tests.helpers import LOOPBACK
from udpchat import Server, ServerConfig
from udpchat.echo import Echo
from udpchat.handlers import Batch
from udpchat.settings import ConfigError


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def batch(payloads: list[bytes], source: tuple[str, int] = ("10.0.0.1", 9)) -> Batch:
    return Batch(0.0, [(data, source) for data in payloads], senders=[source] * len(payloads))


@given(payloads=st.lists(st.binary(max_size=1500), max_size=40), rate=st.floats(0.5, 50))
def test_an_answer_is_the_datagram_itself_and_answers_stay_within_the_rate(
    payloads: list[bytes], rate: float
) -> None:
    """Bytes out ≤ bytes in, datagram by datagram, for any payload; a source gets at most its
    burst (twice the rate) at once, then the rate; the rest are counted, never answered."""
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
    burst = 2 * rate  # a full bucket: floor(burst) answers at once
    answered = min(len(payloads), math.floor(burst))
    assert [data for data, _ in sent] == payloads[:answered]
    assert all(peer == ("10.0.0.1", 9) for _, peer in sent)
    stats = echo.stats()
    assert (stats.echoed, stats.over_rate) == (answered, len(payloads) - answered)
    assert stats.echoed_bytes == sum(len(data) for data in payloads[:answered])
    assert handled == [len(payloads)]  # every datagram goes on to the server's own handler
    clock.now += 1.0  # a second later: the rate's worth again, up to the burst
    tokens = min(burst, burst - answered + rate) if payloads else burst
    echo.handle_batch(batch([b"x"] * 100))
    assert len(sent) - answered <= math.floor(tokens + 1e-9)


def test_a_failed_answer_is_counted_and_sources_are_bounded() -> None:
    echo = Echo(None, lambda data, peer: False, 10.0, max_sources=2, clock=Clock())
    for port in range(5):
        echo.handle_batch(batch([b"hello"], ("10.0.0.1", port)))  # one source address
    for host in ("10.0.0.2", "10.0.0.3", "10.0.0.4"):
        echo.handle_batch(batch([b"hello"], (host, 1)))
    stats = echo.stats()
    assert (stats.echoed, stats.send_failures, stats.over_rate) == (0, 8, 0)
    assert stats.sources_evicted == 2  # four addresses, a table of two


async def test_a_server_with_echo_answers_each_datagram_with_itself() -> None:
    config = ServerConfig(host=LOOPBACK, port=0, echo=True, echo_rate_per_s=1000)
    payloads = [b"alice: pesan ke-1", b"", b"\xff" * 1024, "😀 ü".encode()]
    async with Server(config, lambda message: None) as server:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            client.settimeout(EVENT_TIMEOUT_S)
            for payload in payloads:
                client.sendto(payload, server.address)
            expected = [payload for payload in payloads if payload]  # an empty one is dropped
            answers = await asyncio.to_thread(lambda: [client.recv(2048) for _ in expected])
        await eventually(lambda: server.stats().handled == 3)
        stats = server.stats()
    assert sorted(answers) == sorted(expected)
    assert stats.echo is not None
    assert (stats.echo.echoed, stats.echo.echoed_bytes) == (3, sum(map(len, payloads)))


def test_echo_and_the_relay_do_not_mix() -> None:
    with pytest.raises(ConfigError, match="echo: cannot be used with relay"):
        ServerConfig(echo=True, relay=True)
