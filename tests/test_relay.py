"""serve --relay: members see each other's messages; unproven sources get at most one cookie no
larger than their request; the interactive client works in a real pseudo-terminal."""

from __future__ import annotations

import asyncio
import socket
import sys
import tracemalloc
from collections.abc import Callable, Sequence

import pexpect
import pytest
from hypothesis import given
from hypothesis import strategies as st

from support.waiting import EVENT_TIMEOUT_S, eventually
from tests.helpers import LOOPBACK, Collector, Inbox, start_cli_server
from udpchat import Client, Server, ServerConfig
from udpchat.bus import ORIGIN_HEX_DIGITS, BusConfig, RoomBus, encode_envelope
from udpchat.client import JoinError, JoinFailure, RoomEvent
from udpchat.counters import RelayStats
from udpchat.handlers import Message
from udpchat.relay import (
    ANSWER_SOURCE_BYTES,
    AnswerLimit,
    CookieJar,
    FanOutBudget,
    Refusal,
    Relay,
    Room,
)
from udpchat.wire import (
    COOKIE,
    DELIVERED,
    EXPIRED,
    JOIN,
    JOINED,
    KEEPALIVE,
    LEAVE,
    MAX_HEADER_BYTES,
    MEMBERS,
    MIN_JOIN_REQUEST_BYTES,
    MIN_WHO_REQUEST_BYTES,
    ROOM_FULL,
    WHO,
    WHO_REQUEST_BYTES,
    is_command,
    parse_members,
    relay_join_request,
    text_digest,
    who_request,
)

PEER = ("127.0.0.1", 40000)
OWN = ("127.0.0.1", 5002)
"""The offline relay's own address."""


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
    assert not jar.is_valid(("127.0.0.2", PEER[1]), cookie)
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
    assert room.tally.snapshot().refused_full == 1
    clock.now += 20
    assert room.recipients(("b", 2)) == (("a", 1), ("b", 2))  # b's text: no cookie, no refresh
    assert room.refresh(("a", 1))  # a's keepalive, with its cookie
    clock.now += 15
    assert room.recipients(("a", 1)) == (("a", 1),)  # b was silent (but for a text) for 35 s
    assert room.tally.snapshot().expired == 1
    assert room.recipients(("b", 2)) is Refusal.NOT_A_MEMBER  # no longer a member
    assert not room.refresh(("b", 2))
    assert room.admit(("c", 3))


async def start_relay(
    max_peers: int = 8, relay_rate_per_s: float = 10.0
) -> tuple[Server, Collector]:
    collector = Collector()
    config = ServerConfig(
        host=LOOPBACK,
        port=0,
        relay=True,
        max_peers=max_peers,
        relay_rate_per_s=relay_rate_per_s,
    )
    server = Server(config, collector)
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
            stranger.sendto(f"{JOIN} ---".encode(), server.address)  # no answer: amplifies
            stranger.sendto(f"{JOIN} 1700000000.\u00e9".encode(), server.address)  # malformed
            stranger.sendto(b"s: hai", server.address)  # not relayed; /expired would amplify
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
            stats = relay_stats(server)
            assert (stats.ignored_joins, stats.malformed_joins) == (1, 1)
            assert stats.unanswered_non_members == 1
            assert server.stats().handler_errors == 0
        finally:
            ana.close()
            budi.close()
            await server.stop()


async def test_outgoing_bytes_stay_within_the_amplification_bound() -> None:
    max_peers = 4
    server, collector = await start_relay(max_peers=max_peers, relay_rate_per_s=1000)
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


class Outbox:
    """The relay's outlet, kept: what went to which address; refuses all when ``refusing``.
    Its own address is :data:`OWN`."""

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, tuple[str, int]]] = []
        self.refusing = False

    def send_datagram(self, data: bytes, peer: tuple[str, int]) -> bool:
        if self.refusing:
            return False
        self.sent.append((data, peer))
        return True

    def send_to_many(
        self, data: bytes, peers: Sequence[tuple[str, int]], skip: tuple[str, int] | None = None
    ) -> int:
        return sum(self.send_datagram(data, peer) for peer in peers if peer != skip)

    def is_own_address(self, address: tuple[str, int]) -> bool:
        return address == OWN

    def to(self, peer: tuple[str, int]) -> list[bytes]:
        return [data for data, address in self.sent if address == peer]


def datagram(peer: tuple[str, int], text: str) -> Message:
    return Message(peer, text, None, None, 0.0, size=len(text.encode()))


def offline_relay(max_peers: int = 8) -> tuple[Relay, Outbox, Clock, list[Message]]:
    """A relay without sockets: a clock to move and a list of what reached the printer."""
    clock, outbox, printed = Clock(), Outbox(), list[Message]()
    room = Room(max_peers=max_peers, peer_timeout_s=2, clock=clock)
    answers = AnswerLimit(tally=room.tally, clock=clock)
    relay = Relay(room, CookieJar(b"secret", clock), printed.append, outbox, answers=answers)
    return relay, outbox, clock, printed


def join(relay: Relay, outbox: Outbox, peer: tuple[str, int], name: str = "") -> str:
    """The handshake as a client does it; returns the cookie."""
    relay(datagram(peer, relay_join_request()))
    cookie = outbox.to(peer)[-1].decode().removeprefix(f"{COOKIE} ")
    relay(datagram(peer, f"{JOIN} {cookie} {name}".rstrip()))
    return cookie


@pytest.mark.parametrize(
    ("age_s", "admitted"),
    [(-2, False), (-1, True), (0, True), (59, True), (60, True), (61, False), (3600, False)],
)
def test_a_join_takes_a_cookie_only_within_its_lifetime(age_s: int, admitted: bool) -> None:
    """SECURITY.md: a cookie is good for a join for 60 s; an older one proves nothing about
    the address now, and is answered with a fresh cookie rather than a seat. A clock stepped
    back by up to a second is forgiven."""
    relay, outbox, clock, _ = offline_relay()
    relay(datagram(PEER, relay_join_request()))
    cookie = outbox.to(PEER)[-1].decode().removeprefix(f"{COOKIE} ")
    clock.now += age_s
    relay(datagram(PEER, f"{JOIN} {cookie}"))
    assert outbox.to(PEER)[-1].startswith(JOINED.encode()) is admitted
    assert (PEER in relay.room.members()) is admitted
    assert relay.stats().joins == int(admitted)


def test_what_could_not_be_sent_is_counted_as_such_not_as_relayed() -> None:
    relay, outbox, _, _ = offline_relay()
    other = ("127.0.0.1", 40001)
    for peer in (PEER, other):
        relay.room.admit(peer)
    relay(datagram(PEER, "ana: hello"))
    assert relay.stats().relayed_datagrams == 1
    outbox.refusing = True
    relay(datagram(PEER, "ana: hello again"))
    stats = relay.stats()
    assert (stats.relayed_datagrams, stats.send_failures) == (1, 2)  # the text and its /ok
    assert stats.bytes_out == len(f"[{PEER[0]}] ana: hello".encode()) + len("/ok 01234567")
    assert stats.confirmations == 1


def test_joined_says_the_peer_timeout_and_a_full_room_says_so() -> None:
    relay, outbox, _, printed = offline_relay(max_peers=1)
    join(relay, outbox, PEER)
    assert outbox.to(PEER)[-1] == f"{JOINED} 2".encode()
    late = ("127.0.0.1", 40001)
    join(relay, outbox, late)
    assert outbox.to(late)[-1] == ROOM_FULL.encode()
    assert relay.stats().refused_full == 1
    assert printed == []  # joins, padding included, are answered, never printed


def test_keepalive_with_its_own_cookie_keeps_a_member_past_the_peer_timeout() -> None:
    relay, outbox, clock, printed = offline_relay()
    cookie = join(relay, outbox, PEER)
    for _ in range(5):  # 5 s of silence but for keepalives, against a 2 s peer timeout
        clock.now += 1
        relay(datagram(PEER, f"{KEEPALIVE} {cookie}"))
    assert relay.room.members() == [PEER]
    assert relay.stats().keepalives == 5
    assert outbox.to(PEER)[-1].startswith(JOINED.encode())  # no answer to a keepalive
    assert printed == []


def test_keepalive_with_another_address_cookie_neither_keeps_a_member_nor_puts_it_out() -> None:
    """A wrong cookie from a member's address is a forgery (the member has its own): not
    answered, lest ``/expired`` make the member's client leave and rejoin."""
    relay, outbox, clock, _ = offline_relay()
    join(relay, outbox, PEER)
    forger = ("127.0.0.1", 40001)
    forged = CookieJar(b"secret", clock).issue(forger)
    clock.now += 1
    sent = len(outbox.sent)
    relay(datagram(PEER, f"{KEEPALIVE} {forged}"))
    assert len(outbox.sent) == sent
    assert relay.stats().keepalives == 0
    assert relay.stats().commands_refused == {"bad_cookie": 1}
    clock.now += 1.5  # past the peer timeout since the join: the forgery kept nobody
    assert relay.room.members() == []


@pytest.mark.parametrize(
    "forged",
    [
        LEAVE,
        f"{LEAVE} 1000000.{'0' * 32}",
        f"{KEEPALIVE} 1000000.{'0' * 32}",
        who_request(f"1000000.{'0' * 32}", 1),
    ],
)
def test_a_forged_word_from_a_member_address_does_not_put_it_out(forged: str) -> None:
    """Only the cookie the member joined with makes it leave; a forger who knows the member's
    address but never saw its cookie cannot remove it, nor make the room tell it it is out."""
    relay, outbox, _, printed = offline_relay()
    cookie = join(relay, outbox, PEER)
    sent = len(outbox.sent)
    relay(datagram(PEER, forged))
    assert relay.room.members() == [PEER]
    assert len(outbox.sent) == sent
    assert relay.stats().commands_refused == {"bad_cookie": 1}
    relay(datagram(PEER, f"{LEAVE} {cookie}"))
    assert relay.room.members() == []
    assert relay.stats().leaves == 1
    assert printed == []


def test_no_word_that_starts_with_a_slash_is_relayed_as_a_text() -> None:
    """A member's ``/word`` that the room does not know (an older client's, one typed in
    ``nc``) reaches no member and gets no ``/ok``; the server's console still shows it. From an
    address that is not a member, it draws ``/expired`` like a text."""
    relay, outbox, _, printed = offline_relay()
    join(relay, outbox, PEER)
    other = ("127.0.0.1", 40002)
    join(relay, outbox, other)
    sent = len(outbox.sent)
    for text in ["/quit", "/who", "/leave now", "/keepalive", "/me waves", "//shrug", "/"]:
        relay(datagram(PEER, text))
    assert len(outbox.sent) == sent
    assert relay.stats().commands_refused == {"unknown": 4, "bad_cookie": 3}
    assert [message.text for message in printed][-3:] == ["/me waves", "//shrug", "/"]
    relay(datagram(PEER, "ana: /quit"))  # what chat sends for '//quit': a text, relayed
    assert outbox.to(other)[-1] == f"[{PEER[0]}] ana: /quit".encode()
    stranger = ("127.0.0.9", 40009)
    relay(datagram(stranger, "/me waves"))
    assert outbox.to(stranger) == [EXPIRED.encode()]


@given(st.lists(st.text(max_size=40), max_size=20))
def test_what_reaches_a_member_never_reads_as_a_command(texts: list[str]) -> None:
    relay, outbox, _, _ = offline_relay()
    join(relay, outbox, PEER)
    other = ("127.0.0.1", 40002)
    join(relay, outbox, other)
    for text in texts:
        relay(datagram(PEER, text))
    for data in outbox.to(other)[2:]:  # after its /cookie and /joined
        line = data.decode()
        ip, _, text = line.partition("] ")
        assert ip == f"[{PEER[0]}" and not is_command(text)


def test_an_expired_member_is_told_so_and_can_rejoin() -> None:
    relay, outbox, clock, printed = offline_relay()
    cookie = join(relay, outbox, PEER)
    clock.now += 3
    relay(datagram(PEER, f"{KEEPALIVE} {cookie}"))
    assert outbox.to(PEER)[-1] == EXPIRED.encode()
    relay(datagram(PEER, "ana: masih di sini?"))
    assert outbox.to(PEER)[-1] == EXPIRED.encode()
    assert [message.text for message in printed] == ["ana: masih di sini?"]
    cookie = join(relay, outbox, PEER)
    assert relay.room.members() == [PEER]
    assert relay.stats().expired_notices == 2
    relay(datagram(PEER, f"{LEAVE} {cookie}"))
    assert relay.room.members() == []


@given(st.lists(st.text(max_size=80), max_size=30))
def test_a_non_member_never_draws_more_bytes_than_it_sends(texts: list[str]) -> None:
    relay, outbox, _, _ = offline_relay()
    for text in texts:
        relay(datagram(PEER, text))
    sent_in = sum(len(text.encode()) for text in texts)
    assert sum(len(data) for data in outbox.to(PEER)) <= sent_in
    stats = relay.stats()
    cookies = sum(data.startswith(COOKIE.encode()) for data in outbox.to(PEER))
    accounted = stats.expired_notices + stats.unanswered_non_members + stats.ignored_joins
    accounted += sum(stats.unanswered.values()) + stats.malformed_joins
    assert accounted + cookies == len(texts)  # each one answered or counted


async def test_join_errors_say_why(collector: Collector) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as closed:
        closed.bind((LOOPBACK, 0))
        closed_port = closed.getsockname()[1]
    async with Client(LOOPBACK, closed_port) as nobody:
        with pytest.raises(JoinError, match="is the server running") as refused:
            await nobody.join_room(Inbox())
    assert refused.value.reason is JoinFailure.NOT_LISTENING

    async with (
        Server(ServerConfig(host=LOOPBACK, port=0), collector) as plain,
        Client(*plain.address) as client,
    ):
        with pytest.raises(JoinError, match="--relay") as silent:
            await client.join_room(Inbox(), attempts=1, timeout_s=0.5)
    assert silent.value.reason is JoinFailure.NO_RELAY

    server, _ = await start_relay(max_peers=1)
    first, second = Client(*server.address), Client(*server.address)
    try:
        await first.open()
        await first.join_room(Inbox())
        await second.open()
        with pytest.raises(JoinError, match="is full") as full:
            await second.join_room(Inbox())
        assert full.value.reason is JoinFailure.ROOM_FULL
    finally:
        first.close()
        second.close()
        await server.stop()


async def test_a_member_the_room_forgot_rejoins_and_says_so_once() -> None:
    server, _ = await start_relay()
    relay = server.relay
    assert relay is not None
    events: list[RoomEvent] = []
    member = Client(*server.address)
    try:
        await member.open()
        await member.join_room(Inbox(), on_room=lambda event, _: events.append(event))
        relay.room.leave(next(iter(relay.room.members())))  # as an expiry would
        member.send("ana: halo?")  # draws /expired
        await eventually(lambda: events == [RoomEvent.OUT, RoomEvent.BACK])
        assert member.in_room
        assert len(relay.room.members()) == 1
    finally:
        member.close()
        await server.stop()


@pytest.mark.parametrize(
    "cookie", ["1700000000.\u00e9", "\u00b2.x", "12.\uff10" * 3, "-.-x", "X" * 60, "-X-"]
)
def test_a_malformed_join_is_a_counted_refusal_not_a_handler_error(cookie: str) -> None:
    relay, outbox, _, printed = offline_relay()
    relay(datagram(PEER, f"{JOIN} {cookie}"))
    relay(datagram(PEER, f"{KEEPALIVE} {cookie}"))
    assert relay.stats().malformed_joins == 1
    assert outbox.to(PEER) == [EXPIRED.encode()]  # the keepalive: not a member
    assert relay.room.members() == []
    assert printed == []


def test_a_member_over_its_text_rate_is_shown_but_not_relayed() -> None:
    """What one member can make the server send is bounded: its texts beyond the rate (bursts
    of twice it) are printed like any datagram, counted, and not fanned out."""
    relay, outbox, clock, printed = offline_relay()
    other = ("127.0.0.1", 40001)
    for peer in (PEER, other):
        relay.room.admit(peer)
    burst = int(2 * relay.room.text_rate_per_s)
    for counter in range(burst + 30):
        relay(datagram(PEER, f"ana: line {counter}"))
    assert len(outbox.to(other)) == burst
    assert relay.stats().over_rate == 30
    assert len(printed) == burst + 30  # every text still reaches the printer
    confirmed = outbox.to(PEER)  # a member over its rate is still a member: no /expired
    assert len(confirmed) == burst
    assert all(data.startswith(DELIVERED.encode()) for data in confirmed)
    clock.now += 1.0  # a second later, a second's worth more
    for counter in range(20):
        relay(datagram(PEER, f"ana: later {counter}"))
    assert len(outbox.to(other)) == burst + int(relay.room.text_rate_per_s)


def test_the_room_confirms_each_text_it_relayed_to_its_sender() -> None:
    relay, outbox, _, _ = offline_relay()
    relay.room.admit(PEER)
    relay(datagram(PEER, "ana: halo"))
    assert outbox.to(PEER) == [f"{DELIVERED} {text_digest(b'ana: halo')}".encode()]
    relay(datagram(("127.0.0.1", 40009), "stranger: halo"))  # not a member: no /ok
    assert relay.stats().confirmations == 1


@pytest.mark.parametrize(("age_s", "genuine"), [(-2, False), (-1, True), (0, True), (3600, True)])
def test_a_keepalive_cookie_is_genuine_at_any_age_but_not_from_the_future(
    age_s: int, genuine: bool
) -> None:
    clock = Clock()
    jar = CookieJar(b"secret", clock)
    cookie = jar.issue(PEER)
    clock.now += age_s
    assert jar.is_genuine(PEER, cookie) is genuine


def test_a_member_stays_for_exactly_the_peer_timeout_and_each_expiry_is_counted() -> None:
    clock = Clock()
    room = Room(peer_timeout_s=30, clock=clock)
    members = [("a", 1), ("b", 2)]
    for member in members:
        room.admit(member)
    clock.now += 30
    assert room.members() == members
    clock.now += 0.5
    assert room.members() == []
    assert room.tally.snapshot().expired == 2


def test_leave_from_an_address_that_is_not_a_member_changes_nothing() -> None:
    relay, outbox, _, printed = offline_relay()
    relay(datagram(PEER, LEAVE))
    assert (outbox.sent, printed, relay.room.members()) == ([], [], [])


def test_a_join_may_have_spaces_around_its_cookie_as_typed_by_hand() -> None:
    relay, outbox, _, _ = offline_relay()
    relay(datagram(PEER, relay_join_request()))
    cookie = outbox.to(PEER)[-1].decode().removeprefix(f"{COOKIE} ")
    relay(datagram(PEER, f"{JOIN}  {cookie} "))
    assert outbox.to(PEER)[-1].startswith(JOINED.encode())


def test_an_answer_goes_only_to_a_request_at_least_as_large() -> None:
    relay, outbox, clock, _ = offline_relay()
    relay(datagram(PEER, "x" * (len(EXPIRED) - 1)))
    relay(datagram(PEER, "x" * len(EXPIRED)))
    assert outbox.to(PEER) == [EXPIRED.encode()]
    answer_size = len(f"{COOKIE} {CookieJar(b'secret', clock).issue(PEER)}")
    assert answer_size < MIN_JOIN_REQUEST_BYTES == 54  # what SECURITY.md and the clients say
    for size in range(answer_size - 1, MIN_JOIN_REQUEST_BYTES + 1):  # 51-53 drew one once
        relay(datagram(PEER, f"{JOIN} ".ljust(size, "-")))
    assert [len(data) for data in outbox.to(PEER)] == [len(EXPIRED), answer_size]
    stats = relay.stats()
    assert (stats.unanswered_non_members, stats.ignored_joins) == (
        1,
        MIN_JOIN_REQUEST_BYTES - answer_size + 1,
    )


def test_a_text_that_grew_past_the_header_bound_is_counted_not_relayed() -> None:
    """The bound is inclusive: a relayed datagram may be exactly the incoming one plus the
    largest header. The sender is a member: it is not told it is not; the relayed one is
    confirmed, the other is not."""
    relay, outbox, _, printed = offline_relay()
    other = ("127.0.0.1", 40001)
    for peer in (PEER, other):
        relay.room.admit(peer)
    text = "ana: " + "\\xff" * 20  # as 20 bytes of invalid UTF-8 come out of decoding
    line = f"[{PEER[0]}] {text}".encode()
    for size in (len(line) - MAX_HEADER_BYTES, len(line) - MAX_HEADER_BYTES - 1):
        relay(Message(PEER, text, None, None, 0.0, size=size))
    assert outbox.to(other) == [line]
    assert outbox.to(PEER) == [f"{DELIVERED} {text_digest(text.encode())}".encode()]
    assert relay.stats().not_relayed == 1
    assert len(printed) == 2


def test_texts_from_the_rooms_other_servers_reach_every_member_and_are_counted() -> None:
    relay, outbox, _, _ = offline_relay()
    members = [PEER, ("127.0.0.1", 40001)]
    for member in members:
        relay.room.admit(member)
    lines = [b"[10.0.0.9] budi: halo", b"[10.0.0.9] budi: lagi"]
    for line in lines:
        ip, _, text = line.decode().removeprefix("[").partition("] ")
        relay.relay_remote(ip, text)
    for member in members:
        assert outbox.to(member) == lines
    stats = relay.stats()
    assert (stats.relayed_datagrams, stats.relayed_bytes) == (4, 2 * sum(map(len, lines)))


class RecordingBus(RoomBus):
    """A bus that keeps what the relay publishes instead of sending it to NATS."""

    def __init__(self, config: BusConfig, deliver: Callable[[str, str], None]) -> None:
        super().__init__(config, deliver)
        self.published: list[tuple[str, str]] = []

    def publish(self, ip: str, text: str) -> None:
        self.published.append((ip, text))


async def test_a_relay_with_a_bus_sends_members_texts_to_it_and_relays_what_comes_back() -> None:
    clock, outbox, printed = Clock(), Outbox(), list[Message]()
    config = BusConfig(servers=("nats://127.0.0.1:4222",))
    relay = Relay(Room(clock=clock), CookieJar(b"secret", clock), printed.append, outbox, config)
    assert relay.bus is not None and relay.bus.config is config
    other = ("127.0.0.1", 40001)
    for peer in (PEER, other):
        relay.room.admit(peer)
    from_elsewhere = encode_envelope("0" * ORIGIN_HEX_DIGITS, 1, "10.0.0.9", b"hai")
    relay.bus._receive(from_elsewhere)
    relay.bus._inbox.put(None)  # the delivery thread's work, done here: what waits, then stop
    relay.bus._deliver_inbox()
    assert outbox.to(PEER) == outbox.to(other) == [b"[10.0.0.9] hai"]
    relay.bus = RecordingBus(config, relay.relay_remote)
    relay(datagram(PEER, "ana: halo"))
    assert relay.bus.published == [(PEER[0], "ana: halo")]


def test_flush_reaches_the_inner_handler() -> None:
    flushed: list[bool] = []

    class Inner:
        def __call__(self, message: Message) -> None:
            pass

        def flush(self) -> None:
            flushed.append(True)

    Relay(Room(), CookieJar(), Inner(), Outbox()).flush()
    assert flushed == [True]
    Relay(Room(), CookieJar(), None, Outbox()).flush()  # nothing inside: nothing to flush


def test_a_rate_below_one_a_second_still_lets_one_text_through_at_once() -> None:
    """The burst is twice the rate, but never under one text."""
    clock = Clock()
    room = Room(clock=clock, text_rate_per_s=0.25)
    room.admit(PEER)
    assert room.recipients(PEER) == (PEER,)
    assert room.recipients(PEER) is Refusal.OVER_RATE
    clock.now += 4  # a quarter of a text a second: one more
    assert room.recipients(PEER) == (PEER,)
    assert room.recipients(PEER) is Refusal.OVER_RATE


def test_a_member_that_joins_again_keeps_its_seat_and_its_rate_and_is_refreshed() -> None:
    """A second join with a fresh cookie is a keepalive: even in a full room it is welcomed,
    its token bucket is not refilled (joining again does not lift the rate), and it counts as
    heard."""
    relay, outbox, clock, _ = offline_relay(max_peers=1)
    join(relay, outbox, PEER)
    burst = int(2 * relay.room.text_rate_per_s)
    for counter in range(burst + 1):
        relay(datagram(PEER, f"ana: line {counter}"))
    assert relay.stats().over_rate == 1
    join(relay, outbox, PEER)
    assert outbox.to(PEER)[-1] == f"{JOINED} 2".encode()
    relay(datagram(PEER, "ana: after joining again"))
    assert relay.stats().over_rate == 2
    clock.now += 1.5
    join(relay, outbox, PEER)
    clock.now += 1.5  # 3 s since the first join, 1.5 s since the last, against a 2 s timeout
    assert relay.room.members() == [PEER]
    assert relay.stats().joins == 3


@pytest.mark.parametrize(
    "answer",
    [
        f"{COOKIE} 1.ab", f"{JOINED} 30", EXPIRED, ROOM_FULL, f"{DELIVERED} 0123abcd",
        f"{MEMBERS} 1/1\n127.0.0.1 ana",
    ],
)  # fmt: skip
def test_an_answer_is_never_answered_nor_relayed_from_anyone(answer: str) -> None:
    relay, outbox, _, printed = offline_relay()
    member = ("127.0.0.1", 40001)
    join(relay, outbox, member)
    relay.room.admit(PEER)
    sent_before = len(outbox.sent)
    for peer in (("127.0.0.1", 40002), PEER):  # a stranger and a member
        relay(datagram(peer, f"{answer} (long enough to draw /expired)"))
    assert len(outbox.sent) == sent_before
    assert relay.stats().unanswered == {"answer": 2} and len(printed) == 2


def test_a_datagram_claiming_the_relays_own_address_is_never_answered() -> None:
    relay, outbox, _, printed = offline_relay()
    for text in (relay_join_request(), "ana: hello, me", f"{KEEPALIVE} 1.ab"):
        relay(datagram(OWN, text))
    assert outbox.sent == [] and relay.stats().unanswered == {"own_address": 3}
    assert len(printed) == 3


def limited_relay(
    rate_per_s: float, total_per_s: float, max_sources: int = 100
) -> tuple[Relay, Outbox, Clock]:
    clock, outbox = Clock(), Outbox()
    room = Room(clock=clock)
    answers = AnswerLimit(rate_per_s, total_per_s, max_sources, tally=room.tally, clock=clock)
    relay = Relay(room, CookieJar(b"secret", clock), None, outbox, answers=answers)
    return relay, outbox, clock


def test_answers_to_one_non_member_are_limited_and_counted() -> None:
    """Two a second (bursts of four): a text flood from one address draws four, then two a
    second, the rest counted."""
    relay, outbox, clock = limited_relay(rate_per_s=2, total_per_s=1000)
    for _ in range(10):
        relay(datagram(PEER, "ana: are you there?"))
    assert len(outbox.to(PEER)) == 4
    clock.now += 1
    for _ in range(10):
        relay(datagram(PEER, relay_join_request()))  # cookie requests count the same
    assert [data.split(b" ")[0] for data in outbox.to(PEER)] == [b"/expired"] * 4 + [b"/cookie"] * 2
    assert relay.stats().unanswered == {"source_rate": 14}
    assert relay.stats().expired_notices == 4


def test_answers_to_all_non_members_are_limited_in_all_and_counted() -> None:
    relay, outbox, clock = limited_relay(rate_per_s=2, total_per_s=5)
    strangers = [("127.0.0.2", port) for port in range(1000, 1020)]
    for stranger in strangers:
        relay(datagram(stranger, "ana: are you there?"))
    assert len(outbox.sent) == 10  # bursts of twice the total
    clock.now += 1
    for stranger in strangers:
        relay(datagram(stranger, "ana: still there?"))
    assert len(outbox.sent) == 15
    assert relay.stats().unanswered == {"total_rate": 25}


def test_the_answer_limits_table_is_bounded_and_its_evictions_counted() -> None:
    relay, outbox, _ = limited_relay(rate_per_s=2, total_per_s=1000, max_sources=3)
    strangers = [("127.0.0.2", port) for port in range(1000, 1010)]
    for stranger in strangers:
        relay(datagram(stranger, "ana: are you there?"))
    assert len(outbox.sent) == 10
    assert relay.stats().sources_evicted == 7


def test_an_answered_address_costs_at_most_its_declared_bytes() -> None:
    """ANSWER_SOURCE_BYTES, which the memory bound counts per address: the longest scoped IPv6
    addresses, each a string of its own as a datagram's sender is, measured just past one of
    the table's resizes (where its share of the table is largest)."""
    count = 2 * 2**15 // 3 + 1
    limit = AnswerLimit(max_sources=count)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for index in range(count):
            limit.allows((f"ffff:ffff:ffff:ffff:ffff:ffff:ffff:{index:04x}%interface-15by", index))
        used = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert used / count <= ANSWER_SOURCE_BYTES


def budgeted_relay(per_s: float, members: int) -> tuple[Relay, Outbox, Clock, list[Message]]:
    clock, outbox, printed = Clock(), Outbox(), list[Message]()
    room = Room(max_peers=members, clock=clock)
    budget = FanOutBudget(per_s, members, clock)
    relay = Relay(room, CookieJar(b"secret", clock), printed.append, outbox, budget=budget)
    for port in range(40000, 40000 + members):
        room.admit(("127.0.0.1", port))
    return relay, outbox, clock, printed


def test_members_texts_over_the_rooms_budget_are_shown_but_not_relayed() -> None:
    """100 datagrams a second, bursts of 10 (a tenth of a second, but at least two texts to a
    full room of 4): three texts to the three others, then none until it refills."""
    relay, outbox, clock, printed = budgeted_relay(per_s=100, members=4)
    for counter in range(1, 6):
        relay(datagram(PEER, f"ana: pesan ke-{counter}"))
    clock.now += 0.03  # three datagrams' worth: one more text
    relay(datagram(PEER, "ana: pesan ke-6"))
    relayed = [data for data, address in outbox.sent if address != PEER]
    assert len(relayed) == 4 * 3 and len(printed) == 6
    assert len(outbox.to(PEER)) == 4  # each relayed text confirmed, no other
    stats = relay.stats()
    assert (stats.over_budget, stats.relayed_datagrams) == (2, 12)


def test_texts_from_the_bus_may_not_take_the_half_of_the_budget_kept_for_members_here() -> None:
    clock = Clock()
    budget = FanOutBudget(per_s=100, max_peers=4, clock=clock)  # bursts of 10, 5 kept
    assert budget.take(4, from_bus=True)
    assert not budget.take(4, from_bus=True)  # would leave 2
    assert budget.take(3, from_bus=False) and budget.take(3, from_bus=False)
    assert not budget.take(1, from_bus=False)
    clock.now += 1  # refilled to the burst, no more
    assert budget.take(5, from_bus=True) and not budget.take(1, from_bus=True)


async def test_a_bus_message_over_the_budget_is_shed_on_the_loop_and_its_sequence_followed() -> (
    None
):
    admitted = iter([True, False, False, True])
    bus = RoomBus(
        BusConfig(("nats://127.0.0.1:4222",)), lambda ip, text: None, lambda: next(admitted)
    )
    origin = "0" * ORIGIN_HEX_DIGITS
    for sequence in (1, 2, 3, 4):
        envelope = encode_envelope(origin, sequence, "10.0.0.9", b"hai %d" % sequence)
        bus._receive(envelope)
    stats = bus.stats()
    assert stats.dropped == {"over_budget": 2} and stats.lost_in_transit == 0
    handed = [bus._inbox.get_nowait() for _ in range(2)]
    assert [envelope and envelope.sequence for envelope in handed] == [1, 4]


def members_of(relay: Relay, outbox: Outbox, peer: tuple[str, int], cookie: str) -> list[str]:
    """Every page of the member list, as a client asks for them."""
    entries: list[str] = []
    page = pages = 1
    while page <= pages:
        relay(datagram(peer, who_request(cookie, page)))
        answer = outbox.to(peer)[-1]
        assert len(answer) <= WHO_REQUEST_BYTES  # never larger than the request
        parsed = parse_members(answer.decode())
        assert parsed is not None and parsed[0] == page, answer
        _, pages, found = parsed
        entries.extend(found)
        page += 1
    return entries


def test_who_lists_the_members_by_name_to_a_member_only() -> None:
    relay, outbox, _, printed = offline_relay(max_peers=64)
    cookie = join(relay, outbox, PEER, "citra")
    join(relay, outbox, ("127.0.0.2", 40001), "Budi Santoso")
    join(relay, outbox, ("127.0.0.3", 40002))  # an older client: no name
    assert members_of(relay, outbox, PEER, cookie) == [
        "127.0.0.3", "127.0.0.2 Budi Santoso", "127.0.0.1 citra",
    ]  # fmt: skip
    join(relay, outbox, ("127.0.0.2", 40001), "budi")  # /nick: a join with another name
    assert "127.0.0.2 budi" in members_of(relay, outbox, PEER, cookie)
    assert printed == []  # /who is the room's, not a message
    assert relay.stats().who_pages == 2


def test_a_long_member_list_comes_in_pages_no_larger_than_the_request() -> None:
    relay, outbox, _, _ = offline_relay(max_peers=64)
    cookie = join(relay, outbox, PEER, "a" * 32)
    names = [f"{'用' * 30}{index:02d}" for index in range(40)]  # 92 bytes each
    for index, name in enumerate(names):
        join(relay, outbox, ("127.0.0.2", 41000 + index), name)
    entries = members_of(relay, outbox, PEER, cookie)
    assert sorted(entries) == sorted(
        [f"127.0.0.1 {'a' * 32}", *(f"127.0.0.2 {name}" for name in names)]
    )
    assert relay.stats().who_pages > 3


def test_who_from_an_address_that_is_not_a_member_draws_at_most_expired() -> None:
    relay, outbox, _, _ = offline_relay()
    cookie = join(relay, outbox, PEER, "citra")
    stranger = ("127.0.0.9", 40009)
    relay(datagram(stranger, who_request(cookie, 1)))  # another address's cookie
    relay(datagram(stranger, who_request("1.abc", 1)))
    assert outbox.to(stranger) == [EXPIRED.encode()] * 2
    relay(datagram(PEER, f"{LEAVE} {cookie}"))
    relay(datagram(PEER, who_request(cookie, 1)))  # its own cookie, but it left
    assert outbox.to(PEER)[-1] == EXPIRED.encode()
    assert relay.stats().who_pages == 0


def test_who_is_refused_and_counted_when_small_over_rate_or_past_the_last_page() -> None:
    relay, outbox, _, _ = offline_relay()
    cookie = join(relay, outbox, PEER, "citra")
    sent = len(outbox.sent)
    relay(datagram(PEER, f"{WHO} {cookie} 1 ".ljust(MIN_WHO_REQUEST_BYTES - 1, "-")))
    relay(datagram(PEER, who_request(cookie, 2)))
    relay(datagram(PEER, who_request(cookie, 0)))
    relay(datagram(PEER, f"{WHO} {cookie}"))  # no page, and small
    assert len(outbox.sent) == sent
    burst = int(2 * relay.room.text_rate_per_s)
    for _ in range(burst + 3):  # its texts' tokens: two went to the pages past the last
        relay(datagram(PEER, who_request(cookie, 1)))
    assert relay.stats().who_refused == {
        "too_small": 2, "no_such_page": 2, "over_rate": 5,
    }  # fmt: skip
    assert relay.stats().who_pages == burst - 2


def test_a_join_with_a_name_that_is_not_one_is_refused() -> None:
    relay, outbox, _, _ = offline_relay()
    relay(datagram(PEER, relay_join_request()))
    cookie = outbox.to(PEER)[-1].decode().removeprefix(f"{COOKIE} ")
    relay(datagram(PEER, f"{JOIN} {cookie} bad: name"))
    assert relay.room.members() == []
    assert relay.stats().malformed_joins == 1


@given(
    sizes=st.integers(min_value=MIN_WHO_REQUEST_BYTES, max_value=65507),
    requests=st.lists(st.integers(min_value=1, max_value=8), min_size=1, max_size=30),
)
def test_a_who_never_draws_more_bytes_than_it_sends(sizes: int, requests: list[int]) -> None:
    """Whatever a member asks, and however large the room: the answer is at most the request."""
    relay, outbox, _, _ = offline_relay(max_peers=40)
    cookie = join(relay, outbox, PEER, "x" * 32)
    for index in range(39):
        join(relay, outbox, (f"fe80::{index:x}%eth0", 40000 + index), f"{'é' * 31}{index}")
    sent = len(outbox.sent)
    for page in requests:
        relay(datagram(PEER, f"{WHO} {cookie} {page} ".ljust(sizes, "-")))
    assert all(len(data) <= sizes for data, _ in outbox.sent[sent:])
