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

from udpchat.bus import BusConfig, RoomBus
from udpchat.counters import RelayStats, Tally
from udpchat.handlers import Handler, Message
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
        tally: Tally[RelayStats] | None = None,
    ) -> None:
        self.max_peers = max_peers
        self.peer_timeout_s = peer_timeout_s
        self._clock = clock
        self._last_heard: dict[Address, float] = {}
        self._lock = threading.Lock()
        self.tally = tally or Tally(RelayStats)
        """Where the room counts joins refused for a full room and members expired."""

    def _expire(self, now: float) -> None:
        timeout_s = self.peer_timeout_s
        stale = [peer for peer, heard in self._last_heard.items() if now - heard > timeout_s]
        for peer in stale:
            del self._last_heard[peer]
        if stale:
            self.tally.add("expired", len(stale))

    def admit(self, peer: Address) -> bool:
        """Make ``peer`` a member; False when the room is full."""
        with self._lock:
            now = self._clock()
            self._expire(now)
            if peer not in self._last_heard and len(self._last_heard) >= self.max_peers:
                self.tally.add("refused_full")
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


Send = Callable[[bytes, Address], bool]
"""Sends a datagram from the server's socket; False when it could not (a full buffer)."""


class Relay:
    """A handler that runs the room, then passes members' and others' texts to ``inner``.

    It runs in the pool workers like any handler, so relaying members' texts never touches the
    event loop; texts from the room's other servers (:meth:`relay_remote`) come from the bus.
    Commands (``/join``, ``/keepalive``, ``/leave``) are answered, not printed. ``send`` is where
    answers and relayed datagrams go: the server's socket (:meth:`udpchat.Server.send_datagram`).
    With ``bus``, the room spans servers over NATS: the relay builds its :attr:`bus`, members'
    texts also go to the room's other servers, and theirs come back through
    :meth:`relay_remote`; whoever runs the relay starts and stops the bus.
    """

    def __init__(
        self,
        room: Room,
        cookies: CookieJar,
        inner: Handler | None,
        send: Send,
        bus: BusConfig | None = None,
    ) -> None:
        self.room = room
        self._cookies = cookies
        self._inner = inner
        self._send = send
        self.bus = None if bus is None else RoomBus(bus, self.relay_remote)
        self._tally = room.tally

    def _emit(self, data: bytes, peer: Address) -> bool:
        """Send one datagram and count it as sent, or as a send failure."""
        if self._send(data, peer):
            self._tally.add("bytes_out", len(data))
            return True
        self._tally.add("send_failures")
        return False

    def __call__(self, message: Message) -> None:
        self._tally.add("bytes_in", message.size)
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
            self._tally.add("keepalives")
            return
        self._tell_not_a_member(peer, request_size)

    def _tell_not_a_member(self, peer: Address, request_size: int) -> None:
        """``/expired``, so that a client the room forgot (expired, or a restarted server)
        rejoins; only in answer to a datagram at least as large, so that it never amplifies."""
        answer = EXPIRED.encode()
        if request_size < len(answer):
            self._tally.add("unanswered_non_members")
            return
        if self._emit(answer, peer):
            self._tally.add("expired_notices")

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
            self._tally.add("not_relayed")
            return True
        if self.bus is not None:
            self.bus.publish(message.sender[0], message.text)
        self._relay_line(line, others)
        return True

    def relay_remote(self, ip: str, text: str) -> None:
        """A member's text from another server, to every member here, as ``[ip] text``; the bus
        has checked that ``text`` is within the datagram size limit and ``ip`` an address."""
        self._relay_line(f"[{ip}] {text}".encode(), self.room.members())

    def _relay_line(self, line: bytes, peers: list[Address]) -> None:
        relayed = sum(self._emit(line, peer) for peer in peers)
        if relayed:
            with self._tally.lock:
                self._tally.values["relayed_datagrams"] += relayed
                self._tally.values["relayed_bytes"] += relayed * len(line)

    def _join(self, peer: Address, cookie: str, request_size: int) -> None:
        if cookie and self._cookies.is_valid(peer, cookie):
            # Both answers are smaller than the cookie they answer: a valid one proves the
            # address anyway. The peer timeout tells the client how often to keep alive.
            if self.room.admit(peer):
                self._tally.add("joins")
                self._emit(f"{JOINED} {self.room.peer_timeout_s:g}".encode(), peer)
            else:
                self._emit(ROOM_FULL.encode(), peer)
            return
        answer = f"{COOKIE} {self._cookies.issue(peer)}".encode()
        if request_size < len(answer):
            self._tally.add("ignored_joins")
            return
        self._emit(answer, peer)

    def stats(self) -> RelayStats:
        return self._tally.snapshot(members=len(self.room.members()))

    def flush(self) -> None:
        flush = getattr(self._inner, "flush", None)
        if flush is not None:
            flush()
