"""``serve --relay``: a chat room in which members see each other's messages.

A source becomes a member only after it proves it receives at its address: it asks with a
``/join`` line at least as long as the answer, gets a stateless cookie (an HMAC of its address
and the time under a per-process secret) and sends it back with ``/join COOKIE``. Nothing but
that one cookie, never larger than the request, goes to an address that has not proven itself,
so the server cannot be used to reflect or amplify traffic at a forged source.

A member's text goes to every other member as ``[ip] text``: the incoming datagram plus a
header of at most :data:`udpchat.wire.MAX_HEADER_BYTES`. Each incoming datagram causes at most
``max_peers`` outgoing ones.

A member stays with ``/keepalive COOKIE`` (the cookie it joined with, so that only an address
that once received the cookie can stay). An address that is not a member, because it expired or
the server restarted, gets ``/expired`` in answer to its keepalive or text, so that its client
can rejoin; a full room answers a valid cookie with ``/full``. Each of these answers is smaller
than what it answers, and none is sent in answer to a datagram smaller than itself.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import astuple, dataclass

from udpchat.pipeline import Handler, Message
from udpchat.wire import (
    COOKIE,
    COOKIE_MAC_HEX_DIGITS,
    EXPIRED,
    JOIN,
    JOINED,
    KEEPALIVE,
    LEAVE,
    MAX_HEADER_BYTES,
    ROOM_FULL,
)

DEFAULT_PEER_TIMEOUT_S = 30.0
DEFAULT_MAX_PEERS = 32
COOKIE_LIFETIME_S = 60

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

    def _age_s(self, address: Address, cookie: str) -> float | None:
        """Seconds since this jar issued ``cookie`` to ``address``; None if it did not."""
        issued_text, _, mac = cookie.partition(".")
        if not issued_text.isdigit() or len(issued_text) > 12:
            return None
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


class Room:
    """The members: addresses that proved themselves, each expiring after a silence.

    Thread-safe, because pool workers call it concurrently. Bounded by ``max_peers``.
    """

    def __init__(
        self,
        max_peers: int = DEFAULT_MAX_PEERS,
        peer_timeout_s: float = DEFAULT_PEER_TIMEOUT_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.max_peers = max_peers
        self.peer_timeout_s = peer_timeout_s
        self._clock = clock
        self._last_heard: dict[Address, float] = {}
        self._lock = threading.Lock()
        self.refused_full = 0
        self.expired = 0

    def _expire(self, now: float) -> None:
        timeout_s = self.peer_timeout_s
        stale = [peer for peer, heard in self._last_heard.items() if now - heard > timeout_s]
        for peer in stale:
            del self._last_heard[peer]
        self.expired += len(stale)

    def admit(self, peer: Address) -> bool:
        """Make ``peer`` a member; False when the room is full."""
        with self._lock:
            now = self._clock()
            self._expire(now)
            if peer not in self._last_heard and len(self._last_heard) >= self.max_peers:
                self.refused_full += 1
                return False
            self._last_heard[peer] = now
            return True

    def others(self, peer: Address) -> list[Address] | None:
        """The other members; None when ``peer`` is not a member. A text carries no cookie, so
        it does not refresh its sender: anyone can forge a source address."""
        with self._lock:
            self._expire(self._clock())
            if peer not in self._last_heard:
                return None
            return [other for other in self._last_heard if other != peer]

    def refresh(self, peer: Address) -> bool:
        """Note that ``peer`` is still here (it proved it with its cookie); False when it is
        not a member (any more)."""
        with self._lock:
            now = self._clock()
            self._expire(now)
            if peer not in self._last_heard:
                return False
            self._last_heard[peer] = now
            return True

    def leave(self, peer: Address) -> None:
        with self._lock:
            self._last_heard.pop(peer, None)

    def members(self) -> list[Address]:
        with self._lock:
            self._expire(self._clock())
            return list(self._last_heard)


Send = Callable[[bytes, Address], object]
Publish = Callable[[str, str], None]
"""Where a member's (ip, text) goes for the other servers: :meth:`udpchat.bus.RoomBus.publish`."""


@dataclass(frozen=True, slots=True)
class RelayStats:
    """The room's counters at one moment: what it admitted, refused, relayed and sent."""

    members: int = 0
    joins: int = 0
    """Addresses admitted to the room with a valid cookie (a rejoin counts again)."""
    refused_full: int = 0
    ignored_joins: int = 0
    """Cookie requests smaller than the cookie: answering them would amplify."""
    expired: int = 0
    relayed_datagrams: int = 0
    """Datagrams sent to other members (one message to three members counts three)."""
    relayed_bytes: int = 0
    bytes_in: int = 0
    bytes_out: int = 0
    """Everything sent: relayed datagrams and the handshake's answers."""
    not_relayed: int = 0
    """Texts that grew in decoding, so that relaying them would exceed the header bound."""
    keepalives: int = 0
    """Keepalives from members, with their own cookie: each kept a member in the room."""
    expired_notices: int = 0
    """``/expired`` answers to a keepalive or text from an address that is not a member."""
    unanswered_non_members: int = 0
    """Datagrams from non-members smaller than ``/expired``: answering them would amplify."""

    def __add__(self, other: RelayStats) -> RelayStats:
        return RelayStats(*(a + b for a, b in zip(astuple(self), astuple(other), strict=True)))


class Relay:
    """A handler that runs the room, then passes members' and others' texts to ``inner``.

    It runs in the pool workers like any handler, so relaying never touches the event loop.
    Commands (``/join``, ``/keepalive``, ``/leave``) are answered, not printed. ``send`` is where
    answers and relayed datagrams go: the server's socket (:meth:`udpchat.Server.send_datagram`).
    With ``publish``, members' texts also go to the room's other servers, and theirs come back
    through :meth:`relay_remote`.
    """

    def __init__(
        self,
        room: Room,
        cookies: CookieJar,
        inner: Handler | None,
        send: Send,
        publish: Publish | None = None,
    ) -> None:
        self.room = room
        self._cookies = cookies
        self._inner = inner
        self._send = send
        self._publish = publish
        self._lock = threading.Lock()
        self._bytes_in = 0
        self._bytes_out = 0
        self._joins = 0
        self._ignored_joins = 0
        self._relayed_datagrams = 0
        self._relayed_bytes = 0
        self._not_relayed = 0
        self._keepalives = 0
        self._expired_notices = 0
        self._unanswered_non_members = 0

    def _emit(self, data: bytes, peer: Address) -> None:
        self._send(data, peer)
        with self._lock:
            self._bytes_out += len(data)

    def __call__(self, message: Message) -> None:
        with self._lock:
            self._bytes_in += message.size
        text, peer = message.text, message.sender
        command, _, argument = text.partition(" ")
        if command == JOIN:
            self._join(peer, argument.strip(), message.size)
        elif text == LEAVE:
            self.room.leave(peer)
        elif command == KEEPALIVE:
            self._keepalive(peer, argument, message.size)
        else:
            if not self._forward(message):
                self._tell_not_a_member(peer, message.size)
            if self._inner is not None:
                self._inner(message)

    def _keepalive(self, peer: Address, cookie: str, request_size: int) -> None:
        if self._cookies.is_genuine(peer, cookie) and self.room.refresh(peer):
            with self._lock:
                self._keepalives += 1
            return
        self._tell_not_a_member(peer, request_size)

    def _tell_not_a_member(self, peer: Address, request_size: int) -> None:
        """``/expired``, so that a client the room forgot (expired, or a restarted server)
        rejoins; only in answer to a datagram at least as large, so that it never amplifies."""
        answer = EXPIRED.encode()
        if request_size < len(answer):
            with self._lock:
                self._unanswered_non_members += 1
            return
        self._emit(answer, peer)
        with self._lock:
            self._expired_notices += 1

    def _forward(self, message: Message) -> bool:
        """The text as it came, with the sender's address in front; receivers escape it for
        display. A text that grew in decoding (invalid UTF-8 shown as escapes) is not relayed,
        so that nothing sent is larger than what came in plus the header. False when the
        sender is not a member."""
        others = self.room.others(message.sender)
        if others is None:
            return False
        line = f"[{message.sender[0]}] {message.text}".encode()
        if len(line) > message.size + MAX_HEADER_BYTES:
            with self._lock:
                self._not_relayed += 1
            return True
        if self._publish is not None:
            self._publish(message.sender[0], message.text)
        self._relay_line(line, others)
        return True

    def relay_remote(self, ip: str, text: str) -> None:
        """A member's text from another server, to every member here, as ``[ip] text``; the bus
        has checked that ``text`` is within the datagram size limit and ``ip`` an address."""
        self._relay_line(f"[{ip}] {text}".encode(), self.room.members())

    def _relay_line(self, line: bytes, peers: list[Address]) -> None:
        for peer in peers:
            self._emit(line, peer)
        with self._lock:
            self._relayed_datagrams += len(peers)
            self._relayed_bytes += len(peers) * len(line)

    def _join(self, peer: Address, cookie: str, request_size: int) -> None:
        if cookie and self._cookies.is_valid(peer, cookie):
            # Both answers are smaller than the cookie they answer: a valid one proves the
            # address anyway. The peer timeout tells the client how often to keep alive.
            if self.room.admit(peer):
                with self._lock:
                    self._joins += 1
                self._emit(f"{JOINED} {self.room.peer_timeout_s:g}".encode(), peer)
            else:
                self._emit(ROOM_FULL.encode(), peer)
            return
        answer = f"{COOKIE} {self._cookies.issue(peer)}".encode()
        if request_size < len(answer):
            with self._lock:
                self._ignored_joins += 1
            return
        self._emit(answer, peer)

    def stats(self) -> RelayStats:
        room = self.room
        members = len(room.members())
        with self._lock:
            return RelayStats(
                members=members,
                joins=self._joins,
                refused_full=room.refused_full,
                ignored_joins=self._ignored_joins,
                expired=room.expired,
                relayed_datagrams=self._relayed_datagrams,
                relayed_bytes=self._relayed_bytes,
                bytes_in=self._bytes_in,
                bytes_out=self._bytes_out,
                not_relayed=self._not_relayed,
                keepalives=self._keepalives,
                expired_notices=self._expired_notices,
                unanswered_non_members=self._unanswered_non_members,
            )

    def flush(self) -> None:
        flush = getattr(self._inner, "flush", None)
        if flush is not None:
            flush()
