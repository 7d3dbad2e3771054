"""No reflection loop: one forged datagram between two relays, a relay and itself, or a relay
behind ``udpchat impair`` draws at most one answer, never a stream (issue #27). Real sockets
on loopback; the forger shares the claimed address's port (``SO_REUSEPORT``) to send from it."""

from __future__ import annotations

import pytest

from support.forgery import forge
from support.waiting import eventually
from tests.helpers import LOOPBACK, forgeable_servers
from udpchat import Server, ServerConfig
from udpchat.counters import RelayStats
from udpchat.impair import ImpairProxy, ProxyConfig
from udpchat.wire import EXPIRED

FORGED = [EXPIRED, "ana: a text from nowhere"]
"""What the forger sends: the answer two relays would bounce, and a text that draws one."""


def relay_stats(server: Server) -> RelayStats:
    relay = server.stats(include_senders=False).relay
    assert relay is not None
    return relay


def received(server: Server) -> int:
    return server.stats(include_senders=False).received


def answered_nothing(server: Server) -> bool:
    return relay_stats(server).bytes_out == 0


@pytest.mark.parametrize("text", FORGED)
async def test_two_relays_one_forged_datagram_one_answer_at_most(text: str) -> None:
    async with forgeable_servers(2, relay=True) as (first, second):
        forge(second.address, first.address, text)
        if text == EXPIRED:  # an answer: never answered
            await eventually(lambda: relay_stats(first).unanswered.get("answer") == 1)
            assert answered_nothing(first) and received(second) == 0
        else:  # a text from a stranger: /expired, which the other never answers
            await eventually(lambda: relay_stats(second).unanswered.get("answer") == 1)
            assert relay_stats(first).expired_notices == 1 and answered_nothing(second)
            assert (received(first), received(second)) == (1, 1)


@pytest.mark.parametrize("text", FORGED)
async def test_a_relay_never_answers_its_own_address(text: str) -> None:
    async with forgeable_servers(1, relay=True) as (relay,):
        forge(relay.address, relay.address, text)
        await eventually(lambda: relay_stats(relay).unanswered.get("own_address") == 1)
        assert answered_nothing(relay) and received(relay) == 1


@pytest.mark.parametrize("text", FORGED)
async def test_a_relay_behind_impair_and_another_relay_do_not_loop(text: str) -> None:
    """The proxy forwards the forged datagram to the first relay and its answer back to the
    address it claimed, the second relay's, whose answer would go back through the proxy."""
    async with forgeable_servers(2, relay=True) as (behind, other):
        config = ProxyConfig(listen_host=LOOPBACK, listen_port=0, target_port=behind.address[1])
        async with ImpairProxy(config) as proxy:
            forge(other.address, proxy.address, text)
            if text == EXPIRED:
                await eventually(lambda: relay_stats(behind).unanswered.get("answer") == 1)
                assert answered_nothing(behind) and received(other) == 0
            else:
                await eventually(lambda: relay_stats(other).unanswered.get("answer") == 1)
                assert relay_stats(behind).expired_notices == 1 and answered_nothing(other)
                assert (received(behind), received(other)) == (1, 1)


LOOPBACKS = {LOOPBACK, f"::ffff:{LOOPBACK}", "127.0.0.2", "::ffff:127.0.0.3", "::1"}


@pytest.mark.parametrize(
    ("host", "own"),
    [(LOOPBACK, {LOOPBACK, f"::ffff:{LOOPBACK}"}), ("0.0.0.0", LOOPBACKS), ("::", LOOPBACKS)],
)
async def test_what_counts_as_the_relays_own_address(host: str, own: set[str]) -> None:
    """Its port, and its address or, bound to a wildcard, a loopback one; never another port
    or a remote address (which may run a relay on the same port)."""
    async with Server(ServerConfig(host=host, port=0, relay=True)) as server:
        port = server.address[1]
        for ip in [*LOOPBACKS, "192.0.2.1", "2001:db8::1", "not an ip"]:
            assert server.is_own_address((ip, port)) is (ip in own), ip
            assert not server.is_own_address((ip, port + 1))
