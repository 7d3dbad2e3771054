"""``serve --relay --nats``: one room across servers and processes, through real ``nats-server``
nodes; members on different servers see each other, and a NATS outage only pauses that."""

from __future__ import annotations

import asyncio
import contextlib
import re
import signal
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from functools import partial

import nats
import pytest

from support.nats_servers import PLAIN_INFO, FakeNats, NatsNode, wait_for_subscriptions
from support.waiting import EVENT_TIMEOUT_S, eventually
from tests.helpers import LOOPBACK, start_cli, start_cli_server
from udpchat import Server, ServerConfig
from udpchat.bus import ORIGIN_HEX_DIGITS, encode_envelope, redact_url, room_subject
from udpchat.cli import main
from udpchat.counters import BusStats, StatsSnapshot
from udpchat.exposition import StatsCollector
from udpchat.wire import COOKIE, DELIVERED, JOIN, JOINED, relay_join_request


class Member(asyncio.DatagramProtocol):
    """A room member on its own UDP socket (its own source ip on 127/8): it joins with the
    cookie handshake and keeps every line the relay sends it."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.confirmed: list[str] = []
        self._changed = asyncio.Event()
        self._transport: asyncio.DatagramTransport | None = None

    def datagram_received(self, data: bytes, addr: tuple[str | object, int]) -> None:
        text = data.decode()
        if text.startswith(f"{DELIVERED} "):  # the room's confirmation of our own text
            self.confirmed.append(text)
        else:
            self.lines.append(text)
        self._changed.set()

    async def until(self, predicate: Callable[[list[str]], bool]) -> list[str]:
        async with asyncio.timeout(EVENT_TIMEOUT_S):
            while not predicate(self.lines):
                self._changed.clear()
                await self._changed.wait()
        return self.lines

    async def _answer(self, prefix: str) -> str:
        lines = await self.until(lambda lines: any(line.startswith(prefix) for line in lines))
        return next(line for line in lines if line.startswith(prefix))

    def send(self, text: str) -> None:
        assert self._transport is not None
        self._transport.sendto(text.encode())

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    @classmethod
    async def join(cls, server: tuple[str, int], source_ip: str = LOOPBACK) -> Member:
        member = cls()
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(
            lambda: member, local_addr=(source_ip, 0), remote_addr=server
        )
        member._transport = transport
        member.send(relay_join_request())
        cookie = (await member._answer(COOKIE)).split(" ", 1)[1]
        member.send(f"{JOIN} {cookie}")
        await member._answer(JOINED)
        member.lines.clear()
        return member


@asynccontextmanager
async def members(*joins: tuple[tuple[str, int], str]) -> AsyncIterator[list[Member]]:
    joined: list[Member] = []
    try:
        for server, source_ip in joins:
            joined.append(await Member.join(server, source_ip))
        yield joined
    finally:
        for member in joined:
            member.close()


def relay_server(*urls: str) -> Server:
    return Server(ServerConfig(host=LOOPBACK, port=0, relay=True, nats=urls))


def bus_stats(server: Server) -> BusStats:
    stats = server.stats(include_senders=False).bus
    assert stats is not None
    return stats


async def test_members_on_two_servers_on_two_cluster_nodes_see_each_other(
    nats_cluster: list[NatsNode],
) -> None:
    baseline = max(node.subscriptions() for node in nats_cluster)
    async with AsyncExitStack() as stack:
        server_a = await stack.enter_async_context(relay_server(nats_cluster[0].url))
        server_b = await stack.enter_async_context(relay_server(nats_cluster[1].url))
        await wait_for_subscriptions(nats_cluster, baseline + 2)
        ana, budi = await stack.enter_async_context(
            members((server_a.address, "127.0.0.2"), (server_b.address, "127.0.0.3"))
        )
        ana.send("ana: pesan ke-1")
        assert await budi.until(bool) == ["[127.0.0.2] ana: pesan ke-1"]
        budi.send("budi: halo \x1b[2J")
        assert await ana.until(bool) == ["[127.0.0.3] budi: halo \x1b[2J"]
        for server in (server_a, server_b):
            # counted once its fan-out returned, on the delivery thread, after members got it
            await eventually(partial(lambda each: bus_stats(each).received == 1, server))
            stats = bus_stats(server)
            assert (stats.published, stats.received, stats.connected) == (1, 1, True)
            relay = server.stats(include_senders=False).relay
            assert relay is not None and relay.relayed_datagrams == 1


async def test_a_nats_outage_keeps_local_relaying_and_resumes_across_servers(
    nats_node: NatsNode,
) -> None:
    async with AsyncExitStack() as stack:
        server_a = await stack.enter_async_context(relay_server(nats_node.url))
        server_b = await stack.enter_async_context(relay_server(nats_node.url))
        ana, cici, budi = await stack.enter_async_context(
            members(
                (server_a.address, "127.0.0.2"),
                (server_a.address, "127.0.0.4"),
                (server_b.address, "127.0.0.3"),
            )
        )
        ana.send("ana: pesan ke-1")
        await budi.until(lambda lines: lines == ["[127.0.0.2] ana: pesan ke-1"])

        nats_node.kill()
        await eventually(lambda: bus_stats(server_a).disconnects == 1)
        ana.send("ana: pesan ke-2")  # NATS is down: cici, on the same server, still hears it
        await cici.until(lambda lines: "[127.0.0.2] ana: pesan ke-2" in lines)
        await eventually(
            lambda: (
                bus_stats(server_a).published + sum(bus_stats(server_a).publish_failures.values())
                == 2
            )
        )
        gap = bus_stats(server_a)
        assert not gap.connected
        assert gap.published_while_disconnected + sum(gap.publish_failures.values()) == 1

        nats_node.start()
        await eventually(
            lambda: bus_stats(server_a).reconnects == 1 == bus_stats(server_b).reconnects
        )
        await wait_for_subscriptions([nats_node], 2)
        budi.send("budi: pesan ke-1")
        await ana.until(lambda lines: "[127.0.0.3] budi: pesan ke-1" in lines)
        await cici.until(lambda lines: "[127.0.0.3] budi: pesan ke-1" in lines)
        assert bus_stats(server_b).disconnects == 1


async def test_relay_over_processes_reaches_every_member(nats_node: NatsNode) -> None:
    cli, port = await start_cli_server(
        "--relay", "--nats", nats_node.url, "--processes", "2", "--quiet", "-v"
    )
    try:
        joins = [((LOOPBACK, port), f"127.0.0.{index}") for index in range(2, 7)]
        async with members(*joins) as joined:
            *listeners, speaker = joined
            for counter in (1, 2, 3):
                speaker.send(f"eka: pesan ke-{counter}")
            for listener in listeners:
                await listener.until(lambda lines: len(lines) == 3)
                assert listener.lines == [f"[127.0.0.6] eka: pesan ke-{n}" for n in (1, 2, 3)]
    finally:
        cli.signal(signal.SIGINT)
        status, _, stderr = await cli.finish()
    assert status == 0, stderr
    nats_line = next(line for line in stderr.splitlines() if line.startswith("udpchat: nats:"))
    received = re.search(r"processes=2 \(received (\d+), (\d+)\)", stderr)
    assert received, stderr
    if all(int(count) > 0 for count in received.groups()):  # members landed on both children
        assert re.search(r" received=[1-9]", nats_line), nats_line


async def test_unreachable_nats_at_start_exits_3_naming_the_url() -> None:
    with socket.socket() as probe:
        probe.bind((LOOPBACK, 0))
        url = f"nats://alice:s3cret@{LOOPBACK}:{probe.getsockname()[1]}"
    for processes in ("1", "2"):
        cli = await start_cli(
            "serve", "--host", LOOPBACK, "--port", "0", "--relay", "--nats", url,
            "--nats-connect-timeout", "1", "--processes", processes,
        )  # fmt: skip
        status, _, stderr = await cli.finish(timeout_s=10)
        assert status == 3, stderr
        assert redact_url(url) in stderr and "s3cret" not in stderr
        assert "Traceback" not in stderr
        assert "cannot listen" not in stderr, "NATS is not the port"


async def test_nats_without_relay_and_relay_processes_without_nats_are_refused() -> None:
    for args in (["--nats", "nats://127.0.0.1:4222"], ["--relay", "--processes", "2"]):
        cli = await start_cli("serve", "--host", LOOPBACK, "--port", "0", *args)
        status, _, stderr = await cli.finish()
        assert status == 2 and "--nats" in stderr, stderr


def test_bus_counters_in_the_metrics() -> None:
    bus = BusStats(published=3, publish_failures={"buffer_full": 2}, dropped={"malformed": 1})
    snapshot = StatsSnapshot(bus=bus)
    families = {family.name: family for family in StatsCollector(lambda: snapshot).collect()}
    assert families["udpchat_nats_published"].samples[0].value == 3
    failures = families["udpchat_nats_publish_failures"].samples
    assert [(s.labels, s.value) for s in failures] == [({"reason": "buffer_full"}, 2)]
    assert families["udpchat_nats_connected"].samples[0].value == 0


def test_config_checks_the_nats_fields() -> None:
    with pytest.raises(ValueError, match="relay"):
        ServerConfig(nats=("nats://127.0.0.1:4222",))
    with pytest.raises(ValueError, match="room"):
        ServerConfig(relay=True, nats=("nats://127.0.0.1:4222",), room="a.*")
    with pytest.raises(ValueError, match="nats_connect_timeout_s"):
        ServerConfig(relay=True, nats=("nats://127.0.0.1:4222",), nats_connect_timeout_s=0)
    config = ServerConfig(relay=True, nats=("nats://127.0.0.1:4222",), max_datagram_size=512)
    bus = config.bus_config()
    assert bus is not None and (bus.room, bus.max_text_bytes) == ("lobby", 512)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("notaurl", "is not a NATS URL"),
        ("http://127.0.0.1:4222", "is not a NATS URL"),
        ("nats://:4222", "names no host"),
        ("nats://127.0.0.1:99999", "has an invalid port"),
        ("nats://user:secret@:4222", "names no host"),
    ],
)
def test_a_malformed_nats_url_is_a_usage_error_at_once(
    url: str, problem: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """No connection attempt, no timeout: one line, exit 2, credentials redacted."""
    assert main(["serve", "--relay", "--port", "0", "--nats", url]) == 2
    err = capsys.readouterr().err
    assert err.startswith("udpchat serve: --nats: ") and problem in err and err.count("\n") == 1
    assert "secret" not in err


@pytest.mark.parametrize("processes", ["1", "2"])
async def test_the_room_on_nats_is_said_once_at_start_with_any_number_of_processes(
    nats_node: NatsNode, processes: str
) -> None:
    cli = await start_cli(
        "serve", "--host", LOOPBACK, "--port", "0", "--relay", "--nats", nats_node.url,
        "--processes", processes, "--quiet",
    )  # fmt: skip
    assert await cli.read_stdout_line() == "Server menunggu..."  # after the start-up lines
    cli.signal(signal.SIGINT)
    status, _, stderr = await cli.finish()
    assert status == 0, stderr
    lines = stderr.splitlines()
    before_listening = lines[: next(n for n, line in enumerate(lines) if "listening on" in line)]
    assert before_listening == [f"udpchat: room 'lobby' on NATS at {redact_url(nats_node.url)}"]


async def test_a_tls_url_to_a_server_without_tls_exits_3_in_one_line_sending_nothing() -> None:
    async with FakeNats(PLAIN_INFO) as fake:
        cli = await start_cli(
            "serve", "--host", LOOPBACK, "--port", "0", "--relay",
            "--nats", f"tls://t0ken@{LOOPBACK}:{fake.port}",
        )  # fmt: skip
        status, _, stderr = await cli.finish(timeout_s=10)
    assert status == 3, stderr
    assert stderr.splitlines() == [
        f"udpchat: NATS at tls://***@{LOOPBACK}:{fake.port} offers no TLS, which tls:// asks "
        "for: not connecting, no credentials sent"
    ]
    assert b"CONNECT" not in b"".join(fake.received)


FLOOD = 3000
BUDGET_PER_S = 300.0
MAX_FLOOD_ROUNDS = 50


async def test_a_flood_on_the_bus_is_shed_within_the_rooms_budget_and_counted(
    nats_node: NatsNode,
) -> None:
    """3,000 bus messages as fast as a client publishes them, to a room of 3 members with a
    budget of 300 datagrams a second: what the members get stays within the budget (bursts
    of 64, half of them kept for members here), the rest is shed and counted, every message
    accounted for; and the members' own texts still go round."""
    config = ServerConfig(
        host=LOOPBACK, port=0, relay=True, nats=(nats_node.url,), relay_budget_per_s=BUDGET_PER_S
    )
    async with AsyncExitStack() as stack:
        server = await stack.enter_async_context(Server(config))
        joined = await stack.enter_async_context(
            members(*[(server.address, f"127.0.0.{index}") for index in (2, 3, 4)])
        )
        publisher = await nats.connect(nats_node.url)
        stack.push_async_callback(publisher.close)
        started = time.monotonic()
        for sequence in range(1, FLOOD + 1):
            envelope = encode_envelope("f" * ORIGIN_HEX_DIGITS, sequence, "192.0.2.9", b"x: y")
            await publisher.publish(room_subject("lobby"), envelope)
        await publisher.flush()

        def accounted() -> bool:
            stats = bus_stats(server)
            return stats.received + sum(stats.dropped.values()) == FLOOD

        await eventually(accounted)
        elapsed_s = time.monotonic() - started
        stats = bus_stats(server)
        assert set(stats.dropped) == {"over_budget"} and stats.lost_in_transit == 0
        relay = server.stats(include_senders=False).relay
        assert relay is not None
        assert relay.relayed_datagrams == 3 * stats.received
        assert relay.relayed_datagrams <= BUDGET_PER_S * elapsed_s + 64 / 2
        joined[0].send("ana: masih di sini")
        for other in joined[1:]:
            await other.until(lambda lines: "[127.0.0.2] ana: masih di sini" in lines)


async def test_a_flood_beyond_the_budget_is_dropped_by_nats_while_the_bus_pauses(
    nats_node: NatsNode,
) -> None:
    """Once the budget sheds one, the bus stops taking the room's messages for a tenth of a
    second: NATS sends this server fewer than were published (its own count, connz), and what
    it dropped is counted as shed when the next message shows the gap, so that every message
    published is accounted for."""
    config = ServerConfig(
        host=LOOPBACK, port=0, relay=True, nats=(nats_node.url,), relay_budget_per_s=BUDGET_PER_S
    )
    async with AsyncExitStack() as stack:
        server = await stack.enter_async_context(Server(config))
        await stack.enter_async_context(members((server.address, "127.0.0.2")))
        publisher = await nats.connect(nats_node.url)
        stack.push_async_callback(publisher.close)
        sequence = 0

        async def publish(count: int) -> None:
            nonlocal sequence
            for _ in range(count):
                sequence += 1
                envelope = encode_envelope("f" * ORIGIN_HEX_DIGITS, sequence, "192.0.2.9", b"x")
                await publisher.publish(room_subject("lobby"), envelope)
            await publisher.flush()

        for _ in range(MAX_FLOOD_ROUNDS):  # a flood for as long as it takes to pause thrice
            if bus_stats(server).pauses >= 3:
                break
            await publish(200)
            await asyncio.sleep(0.01)

        def accounted() -> bool:
            stats = bus_stats(server)
            return stats.received + sum(stats.dropped.values()) == sequence

        for _ in range(MAX_FLOOD_ROUNDS):  # a last message shows what NATS dropped before it
            await publish(1)
            with contextlib.suppress(TimeoutError):
                await eventually(accounted, timeout_s=0.5)
                break
        stats = bus_stats(server)
        assert stats.pauses >= 3 and accounted(), (stats, sequence)
        assert set(stats.dropped) == {"over_budget"} and stats.lost_in_transit == 0
        (connection,) = [
            each for each in nats_node.monitor("connz")["connections"]
            if each.get("name") == "udpchat room lobby"
        ]  # fmt: skip
        assert connection["out_msgs"] < sequence  # NATS dropped some for this server
