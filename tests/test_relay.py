"""serve --relay: members see each other's messages; unproven sources get at most one cookie no
larger than their request; the interactive client works in a real pseudo-terminal."""

from __future__ import annotations

import asyncio
import socket
import sys

import pexpect

from tests.conftest import EVENT_TIMEOUT_S, LOOPBACK, Collector, eventually, start_cli_server
from udpchat import Client, Server, ServerConfig
from udpchat.relay import CookieJar, RelayStats, Room
from udpchat.wire import COOKIE, JOIN, MAX_HEADER_BYTES, relay_join_request

PEER = ("127.0.0.1", 40000)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_cookie_is_bound_to_address_and_time() -> None:
    clock = Clock()
    jar = CookieJar(b"secret", clock)
    cookie = jar.issue(PEER)
    assert jar.is_valid(PEER, cookie)
    assert not jar.is_valid(("127.0.0.1", 40001), cookie)
    assert not jar.is_valid(PEER, cookie[:-1] + ("0" if cookie[-1] != "0" else "1"))
    assert not CookieJar(b"other secret", clock).is_valid(PEER, cookie)
    clock.now += 61
    assert not jar.is_valid(PEER, cookie)
    assert not jar.is_valid(PEER, "garbage")


def test_room_expires_silent_members_and_is_bounded() -> None:
    clock = Clock()
    room = Room(max_peers=2, peer_timeout_s=30, clock=clock)
    assert room.admit(("a", 1)) and room.admit(("b", 2))
    assert not room.admit(("c", 3))
    assert room.refused_full == 1
    clock.now += 20
    assert room.others(("a", 1)) == [("b", 2)]  # a spoke: refreshed
    clock.now += 15
    assert room.others(("a", 1)) == []  # b was silent for 35 s
    assert room.expired == 1
    assert room.others(("b", 2)) is None  # no longer a member
    assert room.admit(("c", 3))


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


async def start_relay(max_peers: int = 8) -> tuple[Server, Collector]:
    collector = Collector()
    server = Server(ServerConfig(host=LOOPBACK, port=0, relay=True, max_peers=max_peers), collector)
    await server.start()
    return server, collector


def relay_stats(server: Server) -> RelayStats:
    relay = server.stats(include_senders=False).relay
    assert relay is not None
    return relay


async def test_three_members_see_the_others_and_not_themselves() -> None:
    server, _ = await start_relay()
    names = ["ana", "budi", "citra"]
    inboxes = {name: Inbox() for name in names}
    clients = {name: Client(*server.address) for name in names}
    try:
        for name in names:
            await clients[name].open()
            await clients[name].join_room(inboxes[name])
        for name in names:
            clients[name].send(f"{name}: pesan ke-1")
        for name in names:
            texts = await inboxes[name].wait_for(2)
            assert sorted(texts) == sorted(
                f"[{LOOPBACK}] {other}: pesan ke-1" for other in names if other != name
            )
        assert relay_stats(server).members == 3
    finally:
        for client in clients.values():
            client.close()
        await server.stop()


async def test_an_address_that_never_echoes_the_cookie_gets_nothing_more() -> None:
    server, collector = await start_relay()
    ana, budi = Client(*server.address), Client(*server.address)
    ana_inbox, budi_inbox = Inbox(), Inbox()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stranger:
        stranger.bind((LOOPBACK, 0))
        stranger.settimeout(EVENT_TIMEOUT_S)
        try:
            request = relay_join_request().encode()
            stranger.sendto(request, server.address)
            answer = await asyncio.to_thread(stranger.recv, 2048)
            assert answer.startswith(COOKIE.encode())
            assert len(answer) <= len(request)
            stranger.sendto(f"{JOIN} too-short".encode(), server.address)  # no answer: amplifies
            stranger.sendto(b"stranger: pesan ke-1", server.address)  # not a member: not relayed
            await ana.open()
            await budi.open()
            await ana.join_room(ana_inbox)
            await budi.join_room(budi_inbox)
            ana.send("ana: pesan ke-1")
            assert await budi_inbox.wait_for(1) == [f"[{LOOPBACK}] ana: pesan ke-1"]
            await collector.wait_for(2)  # the stranger's text and ana's were handled
            stranger.setblocking(False)
            try:
                unexpected = stranger.recv(2048)
            except BlockingIOError:
                unexpected = b""
            assert unexpected == b""
            assert ana_inbox.texts == []
            assert relay_stats(server).ignored_joins == 1
        finally:
            ana.close()
            budi.close()
            await server.stop()


async def test_outgoing_bytes_stay_within_the_amplification_bound() -> None:
    max_peers = 4
    server, collector = await start_relay(max_peers=max_peers)
    members = [Client(*server.address) for _ in range(max_peers)]
    inboxes = [Inbox() for _ in members]
    flood = 100  # what the members' default receive buffers hold while the test loop is busy
    try:
        for member, inbox in zip(members, inboxes, strict=True):
            await member.open()
            await member.join_room(inbox)
        joined_in, joined_out = relay_stats(server).bytes_in, relay_stats(server).bytes_out
        assert joined_out <= joined_in  # the handshake never sends more than it gets
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as spoofer:  # not a member
            for _ in range(flood):
                spoofer.sendto(relay_join_request()[:20].encode(), server.address)
        for counter in range(1, flood + 1):
            members[0].send(f"m0: pesan ke-{counter}")
        await collector.wait_for(flood)
        await eventually(lambda: relay_stats(server).ignored_joins == flood)
        for inbox in inboxes[1:]:
            await inbox.wait_for(flood)
        bytes_in = relay_stats(server).bytes_in - joined_in
        bytes_out = relay_stats(server).bytes_out - joined_out
        largest_in = len(f"m0: pesan ke-{flood}")
        bound = (max_peers - 1) * (largest_in + MAX_HEADER_BYTES) * flood
        assert bytes_out <= bound
        assert bytes_out / bytes_in <= (max_peers - 1) * (1 + MAX_HEADER_BYTES / 10)
    finally:
        for member in members:
            member.close()
        await server.stop()


async def test_interactive_chat_in_a_pseudo_terminal() -> None:
    cli, port = await start_cli_server("--relay")
    chat = pexpect.spawn(
        sys.executable,
        ["-m", "udpchat", "chat", "--username", "ana", "--port", str(port)],
        encoding="utf-8",
        timeout=EVENT_TIMEOUT_S,
    )
    budi = Client(LOOPBACK, port)
    budi_inbox = Inbox()
    try:
        await asyncio.to_thread(chat.expect, "joined the room")
        await budi.open()
        await budi.join_room(budi_inbox)
        chat.sendline("halo semua")
        assert await budi_inbox.wait_for(1) == [f"[{LOOPBACK}] ana: halo semua"]
        budi.send("budi: hai ana \x1b[2J")
        await asyncio.to_thread(chat.expect_exact, f"Diterima: [{LOOPBACK}] budi: hai ana \\x1b[2J")
        chat.sendeof()
        await asyncio.to_thread(chat.expect, pexpect.EOF)
        chat.close()
        assert chat.exitstatus == 0
        assert "left the room" in (chat.before or "")
    finally:
        budi.close()
        if chat.isalive():
            chat.terminate(force=True)
        cli.signal()
        await cli.finish()
