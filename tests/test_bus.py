"""The room's bus on real ``nats-server`` processes: a cluster of two, kills and restarts,
hostile bus messages, and a NATS that is not there."""

from __future__ import annotations

import ipaddress
import logging
import secrets
import socket
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import nats
import nkeys
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from support.nats_servers import PLAIN_INFO, FakeNats, NatsNode, wait_for_subscriptions
from support.waiting import eventually
from tests.helpers import LOOPBACK
from udpchat.bus import (
    MAX_ENVELOPE_HEADER_BYTES,
    BusConfig,
    BusUnavailableError,
    Envelope,
    RoomBus,
    decode_envelope,
    describe,
    encode_envelope,
    redact_url,
    room_subject,
)
from udpchat.counters import BusStats
from udpchat.sockets import is_address

Heard = list[tuple[str, str]]


@asynccontextmanager
async def running_bus(url: str, **options: Any) -> AsyncIterator[tuple[RoomBus, Heard]]:
    """A started bus whose deliveries land in the returned list."""
    heard: Heard = []
    bus = RoomBus(BusConfig((url,), **options), lambda ip, text: heard.append((ip, text)))
    await bus.start()
    try:
        yield bus, heard
    finally:
        await bus.stop()


def unused_tcp_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def test_two_servers_on_two_cluster_nodes_exchange_both_ways(
    nats_cluster: list[NatsNode],
) -> None:
    baseline = max(node.subscriptions() for node in nats_cluster)
    async with (
        running_bus(nats_cluster[0].url) as (bus_a, heard_a),
        running_bus(nats_cluster[1].url) as (bus_b, heard_b),
    ):
        await wait_for_subscriptions(nats_cluster, baseline + 2)
        bus_a.publish("192.0.2.1", "alice: pesan ke-1")
        bus_b.publish("2001:db8::2", "bob: halo ✓")
        await eventually(lambda: len(heard_a) == 1 and len(heard_b) == 1)
        assert heard_b == [("192.0.2.1", "alice: pesan ke-1")]
        assert heard_a == [("2001:db8::2", "bob: halo ✓")]
        await eventually(lambda: bus_a.stats().own_echoes == 1 == bus_b.stats().own_echoes)
        stats = bus_a.stats()
        assert (stats.published, stats.received, stats.connected) == (1, 1, True)
        assert not stats.dropped and not stats.publish_failures


async def test_other_rooms_are_not_heard(nats_node: NatsNode) -> None:
    async with (
        running_bus(nats_node.url, room="lobby") as (lobby, heard_lobby),
        running_bus(nats_node.url, room="kitchen") as (kitchen, heard_kitchen),
        running_bus(nats_node.url, room="kitchen") as (_, heard_also_kitchen),
    ):
        lobby.publish("192.0.2.1", "to the lobby")
        kitchen.publish("192.0.2.2", "to the kitchen")
        await eventually(lambda: len(heard_also_kitchen) == 1)
        await eventually(lambda: lobby.stats().own_echoes == 1)
        assert heard_lobby == [] and heard_kitchen == []
        assert heard_also_kitchen == [("192.0.2.2", "to the kitchen")]


async def test_malformed_and_oversize_bus_messages_are_dropped_and_counted(
    nats_node: NatsNode,
) -> None:
    async with running_bus(nats_node.url, max_text_bytes=64) as (bus, heard):
        hostile = await nats.connect(nats_node.url)
        subject = room_subject("lobby")
        other = "0123456789abcdef"
        for payload in [
            b"no header line",
            b"udpchat/1 0123456789abcdef 192.0.2.1\nan older version",
            b"udpchat/2 XYZ 1 192.0.2.1\nbad origin",
            b"udpchat/2 0123456789abcdef 1 not-an-ip\nbad ip",
            b"udpchat/2 0123456789abcdef 01 192.0.2.1\nbad sequence",
            b"udpchat/2 0123456789abcdef 1 fe80::1%\x1b]0;pwn\x07\x1b[2J\nscope with escapes",
            b"udpchat/2 0123456789abcdef 1 192.0.2.1\n\xff\xfe not utf-8",
            encode_envelope(other, 1, "192.0.2.1", b"x" * 65),
            b"y" * (MAX_ENVELOPE_HEADER_BYTES + 65),
            encode_envelope(other, 1, "fe80::1%eth0", b"\x1b[2J fits"),
        ]:
            await hostile.publish(subject, payload)
        await hostile.flush()
        await eventually(lambda: len(heard) == 1)
        await hostile.close()
        assert heard == [("fe80::1%eth0", "\x1b[2J fits")]
        assert bus.stats().dropped == {"malformed": 7, "oversize": 2}


async def test_what_another_server_published_and_never_arrived_is_counted(
    nats_node: NatsNode,
) -> None:
    """NATS drops messages to a slow consumer without a word: a jump in the origin's sequence
    is what shows it."""
    async with running_bus(nats_node.url) as (bus, heard):
        other = await nats.connect(nats_node.url)
        for sequence in (1, 2, 5, 6, 10):
            data = encode_envelope("0123456789abcdef", sequence, "192.0.2.1", b"t%d" % sequence)
            await other.publish(room_subject("lobby"), data)
        await other.flush()
        await eventually(lambda: len(heard) == 5)
        await other.close()
        stats = bus.stats()
        assert (stats.received, stats.lost_in_transit) == (5, 5)  # 3, 4, 7, 8, 9


async def test_messages_from_the_bus_are_delivered_off_the_event_loop(
    nats_node: NatsNode,
) -> None:
    """Fanning a bus message out to the members is a delivery thread's work, never the loop's,
    so that a flood on the bus cannot starve the UDP socket."""
    threads: list[str] = []
    bus = RoomBus(
        BusConfig((nats_node.url,)),
        lambda ip, text: threads.append(threading.current_thread().name),
    )
    await bus.start()
    try:
        other = await nats.connect(nats_node.url)
        data = encode_envelope("0123456789abcdef", 1, "192.0.2.1", b"hello")
        await other.publish(room_subject("lobby"), data)
        await other.flush()
        await eventually(lambda: len(threads) == 1)
        await other.close()
    finally:
        await bus.stop()
    assert threads == ["udpchat-bus-delivery"]


async def test_oversize_publish_is_refused_and_counted(nats_node: NatsNode) -> None:
    async with running_bus(nats_node.url, max_text_bytes=8) as (bus, _):
        bus.publish("192.0.2.1", "123456789")
        assert bus.stats().publish_failures == {"oversize": 1}


async def test_nats_killed_and_restarted_counts_the_gap_and_resumes(
    nats_node: NatsNode, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="udpchat.bus")
    async with (
        running_bus(nats_node.url, max_pending_bytes=1024) as (bus_a, _),
        running_bus(nats_node.url) as (bus_b, heard_b),
    ):
        bus_a.publish("192.0.2.1", "before")
        await eventually(lambda: heard_b == [("192.0.2.1", "before")])

        nats_node.kill()
        await eventually(lambda: bus_a.stats().disconnects == 1 == bus_b.stats().disconnects)
        for counter in range(100):
            bus_a.publish("192.0.2.1", f"during the gap {counter:03d} " + "-" * 40)
        await eventually(
            lambda: bus_a.stats().published + sum(bus_a.stats().publish_failures.values()) == 101
        )
        gap = bus_a.stats()
        assert gap.publish_failures["buffer_full"] > 0
        assert 0 < gap.published_while_disconnected < 100
        assert not gap.connected

        baseline_heard = len(heard_b)
        nats_node.start()
        await eventually(lambda: bus_a.stats().reconnects == 1 == bus_b.stats().reconnects)
        await eventually(lambda: nats_node.subscriptions() >= 2, blocking=True)
        bus_a.publish("192.0.2.1", "after")
        await eventually(lambda: ("192.0.2.1", "after") in heard_b[baseline_heard:])
        assert bus_a.stats().connected

    lost = [r for r in caplog.records if "lost the connection" in r.getMessage()]
    back = [r for r in caplog.records if "is back" in r.getMessage()]
    assert len(lost) == 2 and len(back) == 2  # once each, for each of the two buses


async def test_unreachable_nats_at_start_raises_naming_the_url_without_credentials(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    url = f"nats://alice:s3cret@127.0.0.1:{unused_tcp_port()}"
    bus = RoomBus(BusConfig((url,), connect_timeout_s=1.0), lambda ip, text: None)
    started = time.monotonic()
    with pytest.raises(BusUnavailableError) as raised:
        await bus.start()
    assert time.monotonic() - started < 10
    message = str(raised.value)
    assert redact_url(url) in message and "s3cret" not in message and "alice" not in message
    assert "s3cret" not in caplog.text


@pytest.mark.parametrize(
    ("server_args", "url_credentials"),
    [(("--user", "alice", "--pass", "s3cret"), "alice:s3cret@"), (("--auth", "t0ken"), "t0ken@")],
)
async def test_credentials_in_the_url(
    tmp_path_factory: pytest.TempPathFactory,
    server_args: tuple[str, ...],
    url_credentials: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    node = NatsNode(tmp_path_factory.mktemp("auth"), "secured", *server_args)
    node.start()
    try:
        good = node.url.replace("nats://", f"nats://{url_credentials}")
        async with running_bus(good) as (bus, _):
            assert bus.stats().connected
        bad = node.url.replace("nats://", "nats://mallory:guess@")
        with pytest.raises(BusUnavailableError, match=r"refused the connection .*uthorization"):
            await RoomBus(BusConfig((bad,)), lambda ip, text: None).start()
    finally:
        node.kill()
    for secret in ("s3cret", "t0ken", "guess"):
        assert secret not in caplog.text


@pytest.mark.parametrize(
    ("url", "redacted"),
    [
        ("nats://127.0.0.1:4222", "nats://127.0.0.1:4222"),
        ("nats://alice:s3cret@host:4222", "nats://***@host:4222"),
        ("tls://t0ken@[::1]:4222", "tls://***@[::1]:4222"),
        ("alice:pw@host", "nats://***@host"),
    ],
)
def test_redact_url(url: str, redacted: str) -> None:
    assert redact_url(url) == redacted


@pytest.mark.parametrize("scheme", ["nats", "tls", "ws", "wss"])
def test_an_error_naming_a_url_of_any_accepted_scheme_hides_its_credentials(scheme: str) -> None:
    said = describe(OSError(f"cannot reach {scheme}://alice:s3cret@host:4222 now"))
    assert said == f"cannot reach {scheme}://***@host:4222 now"


def test_rooms_are_plain_tokens() -> None:
    with pytest.raises(ValueError, match="room"):
        BusConfig(("nats://127.0.0.1",), room="a.>")


ips = st.one_of(st.ip_addresses(v=4), st.ip_addresses(v=6)).map(str)


@given(ip=ips, sequence=st.integers(1, 10**19), text=st.text(max_size=64))
@example(ip="192.0.2.1", sequence=1, text="/quit")
def test_envelope_round_trip(ip: str, sequence: int, text: str) -> None:
    """A text that reads as a command is refused: no server relays one, so that none reaches
    a member from the bus either."""
    data = text.encode()
    expected: Envelope | str = Envelope("0123456789abcdef", sequence, ip, text)
    if len(data) > 100:
        expected = "oversize"
    elif text.startswith("/"):
        expected = "malformed"
    envelope = encode_envelope("0123456789abcdef", sequence, ip, data)
    assert decode_envelope(envelope, 100) == expected


def make_certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1: (CA, certificate, key)."""
    new_key = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    sign = ["-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial", "-extfile", "san.ext"]
    (directory / "san.ext").write_text("subjectAltName=IP:127.0.0.1\n")
    for command in [
        ["req", "-x509", *new_key, "-keyout", "ca.key", "-out", "ca.pem", "-subj", "/CN=test CA"],
        ["req", *new_key, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=127.0.0.1"],
        ["x509", "-req", "-in", "server.csr", *sign, "-out", "server.pem", "-days", "1"],
    ]:
        subprocess.run(["openssl", *command], cwd=directory, check=True, capture_output=True)
    return directory / "ca.pem", directory / "server.pem", directory / "server.key"


@contextmanager
def tls_node(directory: Path) -> Iterator[tuple[NatsNode, Path]]:
    """A nats-server that requires TLS, with a certificate for 127.0.0.1, and its CA."""
    ca, certificate, key = make_certificates(directory)
    node = NatsNode(directory, "tls", "--tls", "--tlscert", str(certificate), "--tlskey", str(key))
    node.start()
    try:
        yield node, ca
    finally:
        node.kill()


async def test_tls_with_a_ca_file(tmp_path: Path) -> None:
    with tls_node(tmp_path) as (node, ca):
        url = node.url.replace("nats://", "tls://")
        async with running_bus(url, ca_file=ca) as (bus, _):
            assert bus.stats().connected
        unverified = RoomBus(BusConfig((url,)), lambda ip, text: None)
        with pytest.raises(
            BusUnavailableError, match=r"refused the connection .*CERTIFICATE_VERIFY_FAILED"
        ):
            await unverified.start()


async def test_nkey_seed_file(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    seed = nkeys.encode_seed(secrets.token_bytes(32), nkeys.PREFIX_BYTE_USER)
    public_key = nkeys.from_seed(bytearray(seed)).public_key.decode()
    (tmp_path / "server.conf").write_text(
        f'authorization {{ users = [ {{ nkey: "{public_key}" }} ] }}\n'
    )
    seed_file = tmp_path / "user.nk"
    seed_file.write_bytes(seed)
    node = NatsNode(tmp_path, "nkey", "--config", str(tmp_path / "server.conf"))
    node.start()
    try:
        async with running_bus(node.url, nkey_seed_file=seed_file) as (bus, _):
            assert bus.stats().connected
        with pytest.raises(BusUnavailableError, match=r"refused the connection .*uthorization"):
            await RoomBus(BusConfig((node.url,)), lambda ip, text: None).start()
    finally:
        node.kill()
    assert seed.decode() not in caplog.text


def test_stats_of_several_processes_add_up() -> None:
    one = BusStats(published=2, publish_failures={"buffer_full": 1}, dropped={"malformed": 1},
                   reconnects=1, connected=True)  # fmt: skip
    two = BusStats(published=3, publish_failures={"buffer_full": 2, "oversize": 1}, received=4)
    total = one + two
    assert (total.published, total.received, total.reconnects) == (5, 4, 1)
    assert total.publish_failures == {"buffer_full": 3, "oversize": 1}
    assert total.dropped == {"malformed": 1}
    assert not total.connected and (one + one).connected


async def test_a_failover_names_the_node_it_reconnected_to(
    nats_cluster: list[NatsNode], caplog: pytest.LogCaptureFixture
) -> None:
    """Seeded with node A only, the bus learns node B from the cluster; when A dies, the log
    names B, where it is connected now, not the seed."""
    caplog.set_level(logging.WARNING, logger="udpchat.bus")
    first, second = nats_cluster
    async with running_bus(first.url) as (bus, _):
        await eventually(lambda: first.subscriptions() >= 1, blocking=True)
        first.kill()
        await eventually(lambda: bus.stats().reconnects == 1)
    (back,) = [r.getMessage() for r in caplog.records if "is back" in r.getMessage()]
    assert f":{second.port}" in back and f":{first.port}" not in back, back


@pytest.mark.parametrize("credentials", ["t0ken@", "alice:s3cret@", "nkey"])
async def test_tls_url_refuses_a_server_that_offers_no_tls_and_sends_no_credential(
    tmp_path: Path, credentials: str
) -> None:
    seed = nkeys.encode_seed(secrets.token_bytes(32), nkeys.PREFIX_BYTE_USER)
    (tmp_path / "user.nk").write_bytes(seed)
    options: dict[str, Any] = {"connect_timeout_s": 5}
    if credentials == "nkey":
        options["nkey_seed_file"] = tmp_path / "user.nk"
    async with FakeNats(PLAIN_INFO) as fake:
        url = f"tls://{'' if credentials == 'nkey' else credentials}{LOOPBACK}:{fake.port}"
        bus = RoomBus(BusConfig((url,), **options), lambda ip, text: None)
        with pytest.raises(BusUnavailableError, match="offers no TLS") as refused:
            await bus.start()
    sent = b"".join(fake.received)
    assert b"CONNECT" not in sent and b"s3cret" not in sent and b"t0ken" not in sent, sent
    assert "t0ken" not in str(refused.value) and "s3cret" not in str(refused.value)


async def test_tls_url_upgrades_where_the_server_also_takes_plain_connections() -> None:
    """``tls_available`` (a server with ``allow_non_tls``): TLS all the same, never CONNECT."""
    async with FakeNats({**PLAIN_INFO, "tls_available": True}) as fake:
        config = BusConfig((f"tls://t0ken@{LOOPBACK}:{fake.port}",), connect_timeout_s=0.5)
        bus = RoomBus(config, lambda ip, text: None)
        with pytest.raises(BusUnavailableError):
            await bus.start()
    assert fake.received and all(chunk.startswith(TLS_HANDSHAKE) for chunk in fake.received)


TLS_HANDSHAKE = b"\x16\x03"
"""The first bytes of a TLS handshake record (a ClientHello)."""


async def test_a_reconnect_to_a_server_that_offers_no_tls_sends_no_credential(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The TLS node goes away and something without TLS answers on its port: the bus keeps
    trying, counts each refusal, says so, and sends it nothing."""
    caplog.set_level(logging.WARNING, logger="udpchat.bus")
    with tls_node(tmp_path) as (node, ca):
        url = node.url.replace("nats://", "tls://t0ken@")
        async with running_bus(url, ca_file=ca) as (bus, _):
            node.kill()
            async with FakeNats(PLAIN_INFO, port=node.port) as fake:
                await eventually(lambda: bus.stats().refused_insecure >= 2)
    sent = b"".join(fake.received)
    assert b"CONNECT" not in sent and b"t0ken" not in sent, sent
    assert any("offers no TLS" in record.getMessage() for record in caplog.records)


ADDRESS_PIECES = st.sampled_from(
    [*"0123456789abcdefABCDEF:.%", "::", "ffff", "1.2.3.4", "00", "eth0"]
)


@given(st.lists(ADDRESS_PIECES, max_size=12).map("".join) | ips)
def test_an_envelope_address_is_what_ipaddress_takes(text: str) -> None:
    """The envelope's ``ip`` is checked with ``inet_pton`` (ten times as fast on the event
    loop); ``ipaddress``, which it replaced, is the oracle."""
    try:
        ipaddress.ip_address(text)
        expected = True
    except ValueError:
        expected = False
    assert is_address(text) is expected


async def test_a_message_with_headers_takes_nats_pys_way_and_is_checked_the_same(
    nats_node: NatsNode,
) -> None:
    """The bus takes the room's messages as nats-py parses them; one with headers (nothing
    udpchat publishes) goes nats-py's way, to the subscription's callback, and is checked and
    counted like any other."""
    async with running_bus(nats_node.url) as (bus, heard):
        publisher = await nats.connect(nats_node.url)
        subject, headers = room_subject("lobby"), {"X-Extra": "1"}
        await publisher.publish(
            subject, encode_envelope("e" * 16, 1, "192.0.2.1", b"hi"), headers=headers
        )
        await publisher.publish(subject, b"no header line", headers=headers)
        await publisher.publish(subject, encode_envelope("e" * 16, 2, "192.0.2.1", b"plain"))
        await publisher.flush()
        await publisher.close()
        await eventually(lambda: len(heard) == 2)
        assert sorted(heard) == [("192.0.2.1", "hi"), ("192.0.2.1", "plain")]  # two ways
        assert bus.stats().dropped == {"malformed": 1}
