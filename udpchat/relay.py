"""``serve --relay``: a chat room in which members see each other's messages.

A source becomes a member only after it proves it receives at its address: it asks with a
``/join`` line at least as long as the answer, gets a stateless cookie (an HMAC of its address
and the time under a per-process secret) and sends it back with ``/join COOKIE``. Nothing but
that one cookie, never larger than the request, goes to an address that has not proven itself,
so the server cannot be used to reflect or amplify traffic at a forged source.

A member's text goes to every other member as ``[ip] text``: the incoming datagram plus a
header of at most :data:`udpchat.wire.MAX_HEADER_BYTES`, and the member gets ``/ok DIGEST``
(12 bytes) back, so that its client knows the room took it. Each incoming datagram causes at
most ``max_peers`` outgoing ones.

A member stays with ``/keepalive COOKIE`` and leaves with ``/leave COOKIE`` (the cookie it
joined with, so that only an address that once received the cookie can stay, or put itself
out: a word with a wrong cookie from a member's address is a forgery, counted and not
answered, lest it tell the member it is out). No ``/word`` is ever relayed as a text. It may
ask for the member list with ``/who COOKIE PAGE`` (its cookie again, and one of its texts'
tokens): the answer, a page of ``/members``, is never larger than the request, and a request
from an address that is not a member draws at most ``/expired``, as a text does. An address
that is not a member, because it expired or the server restarted, gets ``/expired`` in answer
to its keepalive or text, so that its client can rejoin; a full room answers a valid cookie
with ``/full``. Each of these answers is smaller than what it answers, and none is sent in
answer to a datagram smaller than itself.

No answer is ever sent to a datagram that is itself an answer (:data:`udpchat.wire.ANSWERS`) or
that claims the relay's own address, so that one forged datagram cannot start two relays, or a
relay and itself, bouncing answers for ever; and the answers to addresses that are not members
are limited per address and in all (:class:`AnswerLimit`), and what is not answered is counted.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import math
import re
import secrets
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from udpchat.admission import DEFAULT_MAX_SOURCES, RateLimiter, TokenBucket
from udpchat.bus import BusConfig, RoomBus
from udpchat.counters import RelayStats, Tally
from udpchat.handlers import Handler, Message
from udpchat.wire import (
    ANSWERS,
    COOKIE,
    COOKIE_MAC_HEX_DIGITS,
    DELIVERED,
    EXPIRED,
    JOIN,
    JOINED,
    KEEPALIVE,
    LEAVE,
    MAX_HEADER_BYTES,
    MIN_JOIN_REQUEST_BYTES,
    MIN_WHO_REQUEST_BYTES,
    ROOM_FULL,
    WHO,
    is_command,
    is_valid_username,
    members_pages,
    text_digest,
)

DEFAULT_PEER_TIMEOUT_S = 30.0
DEFAULT_MAX_PEERS = 32
DEFAULT_TEXT_RATE_PER_S = 10.0
"""Texts a second each member may have relayed (bursts of twice that): so one member can make
the server send at most this times ``max_peers - 1`` datagrams a second. People type slower."""
DEFAULT_ANSWER_RATE_PER_S = 2.0
"""Answers a second to each address that is not a member (bursts of twice that): a client the
room forgot needs two, ``/expired`` and then its ``/cookie``."""
DEFAULT_ANSWER_RATE_TOTAL_PER_S = 200.0
"""Answers a second to all addresses that are not members together (bursts of twice that): the
members of a restarted server rejoin within seconds, and no flood draws more than this."""
ANSWER_SOURCE_BYTES = 384
"""Memory for one address in the answer limit's table, at most: its (ip, port), its bucket and
its share of the table (370 measured with the longest scoped IPv6 address, just past one of
the table's resizes; tests/test_relay.py)."""
DEFAULT_RELAY_BUDGET_PER_S = 20_000.0
"""Datagrams a second the room sends to its members in all (:class:`FanOutBudget`): 645 texts
a second to 31 members."""
BUDGET_BURST_S = 0.1
COOKIE_LIFETIME_S = 60
_COOKIE_PATTERN = re.compile(rf"[0-9]{{1,12}}\.[0-9a-f]{{{COOKIE_MAC_HEX_DIGITS}}}\Z", re.ASCII)

Address = tuple[str, int]


class CookieJar:
    """Stateless join cookies: ``TIME.HMAC(secret, ip|port|TIME)``, valid for a minute."""

    def __init__(self, secret: bytes | None = None, clock: Callable[[], float] = time.time):
        self._secret = secret or secrets.token_bytes(32)
        self._clock = clock

    def _mac(self, address: Address, issued: int) -> str:
        text = f"{address[0]}|{address[1]}|{issued}".encode()
        digest = hmac.new(self._secret, text, hashlib.sha256).hexdigest()
        return digest[:COOKIE_MAC_HEX_DIGITS]

    def issue(self, address: Address) -> str:
        issued = int(self._clock())
        return f"{issued}.{self._mac(address, issued)}"

    @staticmethod
    def is_well_formed(cookie: str) -> bool:
        """``TIME.MAC`` in ASCII digits and lower-case hex, as :meth:`issue` writes them."""
        return _COOKIE_PATTERN.match(cookie) is not None

    def _age_s(self, address: Address, cookie: str) -> float | None:
        """Seconds since this jar issued ``cookie`` to ``address``; None if it did not."""
        if not self.is_well_formed(cookie):
            return None
        issued_text, _, mac = cookie.partition(".")
        issued = int(issued_text)
        if not hmac.compare_digest(mac, self._mac(address, issued)):
            return None
        return self._clock() - issued

    def is_valid(self, address: Address, cookie: str) -> bool:
        """Issued to ``address`` within :data:`COOKIE_LIFETIME_S`: good for a join."""
        age = self._age_s(address, cookie)
        return age is not None and -1 <= age <= COOKIE_LIFETIME_S

    def is_genuine(self, address: Address, cookie: str) -> bool:
        """Issued to ``address`` by this jar at any time: good for a member's keepalive, which
        proves it is the address that joined, not that it can receive now."""
        age = self._age_s(address, cookie)
        return age is not None and age >= -1


class Refusal(enum.Enum):
    """Why a text is not relayed to the room."""

    NOT_A_MEMBER = "not_a_member"
    OVER_RATE = "over_rate"


@dataclass(slots=True)
class _Member:
    last_heard: float
    """When the member last proved itself (join, keepalive)."""
    texts: TokenBucket
    """Texts it may still have relayed now, and member lists (``/who``) it may still ask for."""
    name: str = ""
    """The name it joined with (``/join COOKIE NAME``), for ``/who``; empty when it gave none."""


class Room:
    """The members: addresses that proved themselves, each expiring after a silence, each
    allowed ``text_rate_per_s`` relayed texts a second.

    Thread-safe, because pool workers call it concurrently. Bounded by ``max_peers``. The
    members are also kept as one tuple that stays the same object until the membership
    changes (:meth:`audience`), so that the fan-out packs their addresses once, not per text.
    """

    def __init__(
        self,
        max_peers: int = DEFAULT_MAX_PEERS,
        peer_timeout_s: float = DEFAULT_PEER_TIMEOUT_S,
        clock: Callable[[], float] = time.monotonic,
        tally: Tally[RelayStats] | None = None,
        text_rate_per_s: float = DEFAULT_TEXT_RATE_PER_S,
    ) -> None:
        self.max_peers = max_peers
        self.peer_timeout_s = peer_timeout_s
        self.text_rate_per_s = text_rate_per_s
        self._burst = max(1.0, 2 * text_rate_per_s)
        self._clock = clock
        self._members: dict[Address, _Member] = {}
        self._everyone: tuple[Address, ...] = ()
        self._heard_at_least_since = math.inf
        """No member was last heard before this: until it is a peer timeout ago, none expires."""
        self._lock = threading.Lock()
        self.tally = tally or Tally(RelayStats)
        """Where the room counts joins refused for a full room, members expired and texts over
        the rate."""

    def _expire(self, now: float) -> None:
        timeout_s = self.peer_timeout_s
        if now - self._heard_at_least_since <= timeout_s:
            return
        stale = [
            peer for peer, member in self._members.items() if now - member.last_heard > timeout_s
        ]
        for peer in stale:
            del self._members[peer]
        if stale:
            self.tally.add("expired", len(stale))
            self._everyone = tuple(self._members)
        heard = (member.last_heard for member in self._members.values())
        self._heard_at_least_since = min(heard, default=math.inf)

    def admit(self, peer: Address, name: str = "") -> bool:
        """Make ``peer`` a member, known as ``name``; False when the room is full."""
        with self._lock:
            now = self._clock()
            self._expire(now)
            member = self._members.get(peer)
            if member is not None:
                member.last_heard = now
                member.name = name
                return True
            if len(self._members) >= self.max_peers:
                self.tally.add("refused_full")
                return False
            self._members[peer] = _Member(
                now, TokenBucket.full(self.text_rate_per_s, self._burst, now), name
            )
            self._everyone = tuple(self._members)
            self._heard_at_least_since = min(self._heard_at_least_since, now)
            return True

    def recipients(self, peer: Address) -> tuple[Address, ...] | Refusal:
        """The members, ``peer`` among them (the fan-out passes it over), for a text from
        ``peer`` that is within its rate; else why not. A text carries no cookie, so it does
        not refresh its sender: anyone can forge a source address."""
        with self._lock:
            refusal = self._spend(peer)
            if refusal is Refusal.OVER_RATE:
                self.tally.add("over_rate")
            return self._everyone if refusal is None else refusal

    def take_request(self, peer: Address) -> Refusal | None:
        """Whether member ``peer`` may have a member list now: one of its texts' tokens."""
        with self._lock:
            return self._spend(peer)

    def _spend(self, peer: Address) -> Refusal | None:
        """One of member ``peer``'s tokens, taken (the lock held); else why not."""
        now = self._clock()
        self._expire(now)
        member = self._members.get(peer)
        if member is None:
            return Refusal.NOT_A_MEMBER
        return None if member.texts.take(1, now) else Refusal.OVER_RATE

    def roster(self) -> list[str]:
        """``ip name`` of each member, by name then address."""
        with self._lock:
            self._expire(self._clock())
            members = sorted(
                (member.name, peer[0], peer[1]) for peer, member in self._members.items()
            )
        return [f"{ip} {name}".rstrip() for name, ip, _ in members]

    def refresh(self, peer: Address) -> bool:
        """Note that ``peer`` is still here (it proved it with its cookie); False when it is
        not a member (any more)."""
        with self._lock:
            now = self._clock()
            self._expire(now)
            member = self._members.get(peer)
            if member is None:
                return False
            member.last_heard = now
            return True

    def leave(self, peer: Address) -> bool:
        """``peer`` out of the room; False when it was not in it."""
        with self._lock:
            if self._members.pop(peer, None) is None:
                return False
            self._everyone = tuple(self._members)
            return True

    def is_member(self, peer: Address) -> bool:
        with self._lock:
            self._expire(self._clock())
            return peer in self._members

    def audience(self) -> tuple[Address, ...]:
        """The members now, as the same tuple until the membership changes."""
        with self._lock:
            self._expire(self._clock())
            return self._everyone

    def members(self) -> list[Address]:
        return list(self.audience())

    @property
    def size(self) -> int:
        """Members as of the last change (without expiring anyone): cheap, for an estimate."""
        return len(self._everyone)


class FanOutBudget:
    """The datagrams the room may send to its members: ``per_s`` a second, in bursts of a tenth
    of a second's worth (at least two texts to a full room), whether a text came from a member
    here (by UDP) or from the room's other servers (by the bus), so that what one text to N
    members costs is bounded the same way for both.

    Members here come first: a text from the bus may only take what leaves half the burst, so
    that a flood on the bus cannot take the budget from the members' own texts. Thread-safe.
    """

    def __init__(
        self,
        per_s: float = DEFAULT_RELAY_BUDGET_PER_S,
        max_peers: int = DEFAULT_MAX_PEERS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        burst = max(per_s * BUDGET_BURST_S, 2.0 * max_peers)
        self._bucket = TokenBucket.full(per_s, burst, clock())
        self._reserve = burst / 2
        self._clock = clock
        self._lock = threading.Lock()

    def take(self, datagrams: int, *, from_bus: bool) -> bool:
        """Whether a text to ``datagrams`` members may go now (and its share is taken)."""
        with self._lock:
            return self._bucket.take(datagrams, self._clock(), self._reserve if from_bus else 0)


class Outlet(Protocol):
    """Where the relay's datagrams leave: the server's socket (:class:`udpchat.Server`)."""

    def send_datagram(self, data: bytes, address: Address) -> bool:
        """One datagram; False when it could not be sent (a full buffer)."""
        ...

    def send_to_many(
        self, data: bytes, addresses: Sequence[Address], skip: Address | None = None
    ) -> int:
        """The same datagram to each address but ``skip``; how many were sent. ``addresses``
        is the room's :meth:`Room.audience`: the same object while the membership stays."""
        ...

    def is_own_address(self, address: Address) -> bool:
        """Whether a datagram claiming ``address`` claims to come from this very socket."""
        ...


class AnswerLimit:
    """The answers to addresses that are not members (``/cookie``, ``/expired``, ``/full``),
    within ``rate_per_s`` to each address and ``total_per_s`` to all of them, bursts of twice
    each: so that no stream of datagrams, forged or looped back, draws a stream of answers.

    The per-address table keeps at most ``max_sources`` addresses, the oldest forgotten first.
    What is refused is counted in ``tally`` (``unanswered``, by reason). Thread-safe.
    """

    def __init__(
        self,
        rate_per_s: float = DEFAULT_ANSWER_RATE_PER_S,
        total_per_s: float = DEFAULT_ANSWER_RATE_TOTAL_PER_S,
        max_sources: int = DEFAULT_MAX_SOURCES,
        tally: Tally[RelayStats] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._tally = tally or Tally(RelayStats)
        self._per_address = RateLimiter(
            rate_per_s, max(1.0, 2 * rate_per_s), max_sources, self._tally
        )
        self._clock = clock
        self._total = TokenBucket.full(total_per_s, max(1.0, 2 * total_per_s), clock())
        self._lock = threading.Lock()

    def allows(self, peer: Address) -> bool:
        """Whether ``peer`` may have an answer now; if not, counted."""
        with self._lock:
            now = self._clock()
            if not self._per_address.allow(peer, now):
                refused = "source_rate"
            elif not self._total.take(1, now):
                refused = "total_rate"
            else:
                return True
        self._tally.add_reason("unanswered", refused)
        return False


class Relay:
    """A handler that runs the room, then passes members' and others' texts to ``inner``.

    It runs in the pool workers like any handler, and texts from the room's other servers
    (:meth:`relay_remote`) come from the bus's delivery thread: relaying never runs on the
    event loop.
    Commands (``/join``, ``/keepalive``, ``/leave``) are answered, not printed. ``outlet`` is
    where answers and relayed datagrams go: the server's socket (:class:`udpchat.Server`).
    ``answers`` limits the answers to addresses that are not members (by default, the defaults
    of :class:`AnswerLimit`, counted in the room's tally).
    With ``bus``, the room spans servers over NATS: the relay builds its :attr:`bus`, members'
    texts also go to the room's other servers, and theirs come back through
    :meth:`relay_remote`; whoever runs the relay starts and stops the bus.
    """

    def __init__(
        self,
        room: Room,
        cookies: CookieJar,
        inner: Handler | None,
        outlet: Outlet,
        bus: BusConfig | None = None,
        answers: AnswerLimit | None = None,
        budget: FanOutBudget | None = None,
    ) -> None:
        self.room = room
        self._cookies = cookies
        self._inner = inner
        self._outlet = outlet
        self._budget = budget or FanOutBudget(max_peers=room.max_peers)
        self.bus = None if bus is None else RoomBus(bus, self.relay_remote, self._admit_remote)
        self._tally = room.tally
        self._answers = answers or AnswerLimit(tally=room.tally)

    def _emit(self, data: bytes, peer: Address) -> bool:
        """Send one datagram and count it as sent, or as a send failure."""
        if self._outlet.send_datagram(data, peer):
            self._tally.add("bytes_out", len(data))
            return True
        self._tally.add("send_failures")
        return False

    def _answer(self, data: bytes, peer: Address) -> bool:
        """An answer to an address that is not (yet) a member: within the answer limit."""
        return self._answers.allows(peer) and self._emit(data, peer)

    def __call__(self, message: Message) -> None:
        self._tally.add("bytes_in", message.size)
        text, peer = message.text, message.sender
        command, _, argument = text.partition(" ")
        own = self._outlet.is_own_address(peer)
        if own or command in ANSWERS:
            # Never answered, nor relayed: answering oneself, or an answer, could loop.
            self._tally.add_reason("unanswered", "own_address" if own else "answer")
            if self._inner is not None:
                self._inner(message)
        elif command == JOIN:
            self._join(peer, argument.strip(), message.size)
        elif command == LEAVE:
            self._leave(peer, argument)
        elif command == KEEPALIVE:
            self._keepalive(peer, argument, message.size)
        elif command == WHO:
            self._who(peer, argument, message.size)
        else:
            if is_command(text):
                self._unknown_command(peer, message.size)
            elif not self._forward(message):
                self._tell_not_a_member(peer, message.size)
            if self._inner is not None:
                self._inner(message)

    def _keepalive(self, peer: Address, cookie: str, request_size: int) -> None:
        if not self._cookies.is_genuine(peer, cookie):
            self._not_genuine(peer, request_size)
        elif self.room.refresh(peer):
            self._tally.add("keepalives")
        else:
            self._tell_not_a_member(peer, request_size)

    def _leave(self, peer: Address, cookie: str) -> None:
        """``/leave COOKIE``: only the cookie the member joined with puts it out of the room."""
        if not self._cookies.is_genuine(peer, cookie.strip()):
            self._not_genuine(peer, 0)  # a member leaving needs no answer, nor does a forger
        elif self.room.leave(peer):
            self._tally.add("leaves")

    def _not_genuine(self, peer: Address, request_size: int) -> None:
        """A word whose cookie was not issued to ``peer``: from a member's address, a forgery
        (the member has its own cookie), counted and not answered, so that it cannot make the
        room tell the member it is out; from elsewhere, ``/expired`` (a restarted server's
        member holds an old cookie)."""
        if self.room.is_member(peer):
            self._tally.add_reason("commands_refused", "bad_cookie")
        else:
            self._tell_not_a_member(peer, request_size)

    def _unknown_command(self, peer: Address, request_size: int) -> None:
        """A ``/word`` the room does not know: never relayed, so that nothing that reads as a
        command reaches the members; a member's is counted, anyone else is told it is out."""
        if self.room.is_member(peer):
            self._tally.add_reason("commands_refused", "unknown")
        else:
            self._tell_not_a_member(peer, request_size)

    def _who(self, peer: Address, argument: str, request_size: int) -> None:
        """A page of the member list, to a member only (its cookie proves its address), within
        its rate, and never larger than the request: a forged ``/who`` amplifies nothing."""
        cookie, _, rest = argument.partition(" ")
        if not self._cookies.is_genuine(peer, cookie):
            self._not_genuine(peer, request_size)
            return
        if request_size < MIN_WHO_REQUEST_BYTES:
            self._tally.add_reason("who_refused", "too_small")
            return
        refusal = self.room.take_request(peer)
        if refusal is Refusal.NOT_A_MEMBER:
            self._tell_not_a_member(peer, request_size)
            return
        if refusal is Refusal.OVER_RATE:
            self._tally.add_reason("who_refused", "over_rate")
            return
        pages = members_pages(self.room.roster(), request_size)
        page = rest.partition(" ")[0]
        if not page.isdigit() or not 1 <= int(page) <= len(pages):
            self._tally.add_reason("who_refused", "no_such_page")
            return
        if self._emit(pages[int(page) - 1].encode(), peer):
            self._tally.add("who_pages")

    def _tell_not_a_member(self, peer: Address, request_size: int) -> None:
        """``/expired``, so that a client the room forgot (expired, or a restarted server)
        rejoins; only in answer to a datagram at least as large, so that it never amplifies."""
        answer = EXPIRED.encode()
        if request_size < len(answer):
            self._tally.add("unanswered_non_members")
            return
        if self._answer(answer, peer):
            self._tally.add("expired_notices")

    def _forward(self, message: Message) -> bool:
        """The text as it came, with the sender's address in front; receivers escape it for
        display. A text that grew in decoding (invalid UTF-8 shown as escapes) is not relayed,
        so that nothing sent is larger than what came in plus the header. False when the
        sender is not a member."""
        members = self.room.recipients(message.sender)
        if members is Refusal.NOT_A_MEMBER:
            return False
        if members is Refusal.OVER_RATE:
            return True
        line = f"[{message.sender[0]}] {message.text}".encode()
        if len(line) > message.size + MAX_HEADER_BYTES:
            self._tally.add("not_relayed")
            return True
        if not self._budget.take(len(members) - 1, from_bus=False):
            self._tally.add("over_budget")
            return True
        if self.bus is not None:
            self.bus.publish(message.sender[0], message.text)
        self._relay_line(line, members, message.sender)
        digest = text_digest(message.text.encode("utf-8", "surrogatepass"))
        if self._emit(f"{DELIVERED} {digest}".encode(), message.sender):
            self._tally.add("confirmations")
        return True

    def _admit_remote(self) -> bool:
        """Whether a text from the bus fits the budget now (on the event loop, before it is
        handed to the delivery thread): else the bus sheds it, counted."""
        return self._budget.take(self.room.size, from_bus=True)

    def relay_remote(self, ip: str, text: str) -> None:
        """A member's text from another server, to every member here, as ``[ip] text``; the bus
        has checked that ``text`` is within the datagram size limit and ``ip`` an address, and
        that it fits the budget (:meth:`_admit_remote`)."""
        self._relay_line(f"[{ip}] {text}".encode(), self.room.audience())

    def _relay_line(
        self, line: bytes, members: tuple[Address, ...], sender: Address | None = None
    ) -> None:
        """``line`` to every member but ``sender``, in one call (:meth:`Outlet.send_to_many`)."""
        relayed = self._outlet.send_to_many(line, members, sender)
        failed = len(members) - (sender is not None) - relayed
        values = self._tally.values
        with self._tally.lock:
            values["relayed_datagrams"] += relayed
            values["relayed_bytes"] += relayed * len(line)
            values["bytes_out"] += relayed * len(line)
            values["send_failures"] += failed

    def _join(self, peer: Address, argument: str, request_size: int) -> None:
        cookie, _, name = argument.partition(" ")
        if cookie.strip("-"):  # a cookie, not a request's padding
            if not self._cookies.is_well_formed(cookie) or (name and not is_valid_username(name)):
                self._tally.add("malformed_joins")
                return
            if self._cookies.is_valid(peer, cookie):
                # Both answers are smaller than the cookie they answer: a valid one proves the
                # address anyway. The peer timeout tells the client how often to keep alive.
                if self.room.admit(peer, name):
                    self._tally.add("joins")
                    self._emit(f"{JOINED} {self.room.peer_timeout_s:g}".encode(), peer)
                else:
                    self._answer(ROOM_FULL.encode(), peer)
                return
        answer = f"{COOKIE} {self._cookies.issue(peer)}".encode()
        # The size the docs state and the clients pad to: the answer (51 bytes now) stays
        # smaller until its time needs 14 digits.
        if request_size < max(MIN_JOIN_REQUEST_BYTES, len(answer)):
            self._tally.add("ignored_joins")
            return
        self._answer(answer, peer)

    def stats(self) -> RelayStats:
        return self._tally.snapshot(members=len(self.room.members()))

    def flush(self) -> None:
        flush = getattr(self._inner, "flush", None)
        if flush is not None:
            flush()
