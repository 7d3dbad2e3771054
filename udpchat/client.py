"""The async client: sends the seed's messages on a steady timer, or single texts on demand,
and keeps itself in a ``serve --relay`` room (keepalives, and a rejoin when the room lost it)."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import math
import socket
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType

from udpchat.counters import ClientStats
from udpchat.rtt import RoundTrips
from udpchat.settings import check_bounds, check_host, setting
from udpchat.sockets import MAX_PORT
from udpchat.wire import (
    COOKIE,
    DELIVERED,
    EXPIRED,
    JOIN,
    JOINED,
    KEEPALIVE,
    LEAVE,
    MEMBERS,
    ROOM_FULL,
    decode,
    format_message,
    is_command,
    parse_members,
    relay_join_request,
    who_request,
)

logger = logging.getLogger("udpchat.client")

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5002
DEFAULT_INTERVAL_S = 1.0
JOIN_ATTEMPTS = 3
JOIN_TIMEOUT_S = 1.0
REJOIN_INTERVAL_S = 1.0
"""Out of the room, a join is tried this often (each waits :data:`JOIN_TIMEOUT_S`), so that a
member is back within two seconds of its server."""
JOIN_QUEUE_SIZE = 16
MAX_WHO_PAGES = 256
"""Pages of a member list asked for, at most: 1024 members of the longest names take 184."""
KEEPALIVES_PER_PEER_TIMEOUT = 3
"""Keepalives sent within the server's ``--peer-timeout``: two may be lost before it expires us."""
DEFAULT_KEEPALIVE_S = 10.0
"""When the server does not say its peer timeout: a third of the default 30 s."""
MIN_KEEPALIVE_S = 0.05
MAX_KEEPALIVE_S = 60.0
ERROR_REPEAT_S = 30.0
"""A send error is reported again after this long, even if the peer was never heard from."""
REFUSAL_GRACE_S = 0.2
"""How long :meth:`Client.settle` waits for the refusal (ICMP) of the last datagrams."""
ANSWER_GRACE_S = 1.0
"""How long ``send --rtt`` waits for the last messages' answers before it ends: what has not
come by then was lost on the way, there or back."""
ANSWER_POLL_S = 0.01


@dataclass(frozen=True, slots=True)
class ClientConfig:
    """What ``send`` and ``chat`` are asked for, checked when built (a
    :class:`~udpchat.settings.ConfigError` names the field), as the server's config is."""

    host: str = DEFAULT_HOST
    port: int = setting(DEFAULT_PORT, minimum=1, maximum=MAX_PORT)
    interval_s: float = setting(DEFAULT_INTERVAL_S, minimum=0)
    """Seconds between the messages :meth:`Client.send_every` sends."""
    count: int | None = setting(None, minimum=1)
    """Messages to send, at most; None: until stopped."""

    def __post_init__(self) -> None:
        check_bounds(self)
        check_host(self)


class JoinFailure(enum.Enum):
    """Why a join failed; each calls for a different remedy."""

    NOT_LISTENING = "not_listening"
    """ICMP port unreachable: no server on that address and port."""
    NO_RELAY = "no_relay"
    """Nothing came back to ``/join``: a server without ``--relay``, or none reachable."""
    NOT_ADMITTED = "not_admitted"
    """A cookie came back, but no answer to it."""
    ROOM_FULL = "room_full"
    """The server answered that its room has ``--max-peers`` members already."""


class JoinError(OSError):
    """The relay server did not let us in; :attr:`reason` says why, the message says what to do."""

    def __init__(self, reason: JoinFailure, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class RoomEvent(enum.Enum):
    """A change in membership that the person chatting should hear about, once."""

    OUT = "out"
    """The server no longer relays to us (it restarted, expired us, or is gone); rejoining."""
    BACK = "back"
    """Rejoined by ourselves after :attr:`OUT`."""


class _Refused:
    """Put in the join answers when the OS reports the server's port unreachable."""


_REFUSED = _Refused()


class _SendProtocol(asyncio.DatagramProtocol):
    """Counts ICMP errors (nothing listening) and reports them at most once per
    :data:`ERROR_REPEAT_S`, or again once the server was heard from in between; passes what
    the server sends back (relayed messages, join answers) to the client."""

    def __init__(self, on_error: Callable[[Exception], None] | None, error_repeat_s: float) -> None:
        self._on_error = on_error
        self._error_repeat_s = error_repeat_s
        self._last_report = -math.inf
        self.send_errors = 0
        self.received = 0
        self.error_seen = asyncio.Event()
        self.on_datagram: Callable[[bytes], object] | None = None
        self.on_refused: Callable[[], None] | None = None

    def datagram_received(self, data: bytes, addr: object) -> None:
        self.received += 1
        self._last_report = -math.inf  # the server is there: its next failure is news
        if self.on_datagram is not None:
            self.on_datagram(data)

    def error_received(self, exc: Exception) -> None:
        self.send_errors += 1
        self.error_seen.set()
        if self.on_refused is not None:
            self.on_refused()
        now = asyncio.get_running_loop().time()
        if now - self._last_report >= self._error_repeat_s:
            self._last_report = now
            if self._on_error is not None:
                self._on_error(exc)


class Client:
    """A connected UDP sender: ``async with Client(host, port) as client: client.send(text)``.

    The socket is connected, so the OS reports "nothing listens there" (ICMP port unreachable)
    to :attr:`send_errors` and ``on_error``, and sending goes on regardless, as UDP does.
    """

    def __init__(
        self,
        host: str = DEFAULT_HOST,
        port: int = DEFAULT_PORT,
        *,
        on_error: Callable[[Exception], None] | None = None,
        error_repeat_s: float = ERROR_REPEAT_S,
    ) -> None:
        self.host = host
        self.port = port
        self.sent = 0
        self.in_room = False
        """True from a join until the server, or its silence, says we are out of the room."""
        self.joined = False
        """True once a join succeeded: a stop before it never joined."""
        self.messages = 0
        """The seed's messages :meth:`send_every` sent."""
        self._protocol = _SendProtocol(on_error, error_repeat_s)
        self._transport: asyncio.DatagramTransport | None = None
        self._answers: asyncio.Queue[str | _Refused] = asyncio.Queue(maxsize=JOIN_QUEUE_SIZE)
        self._cookie = ""
        self._keepalive_s = DEFAULT_KEEPALIVE_S
        self._rejoin_now = asyncio.Event()
        self._name = ""
        self._pages: asyncio.Queue[str] = asyncio.Queue(maxsize=JOIN_QUEUE_SIZE)
        """``/members`` answers, for :meth:`who`."""
        self._membership: asyncio.Task[None] | None = None

    @property
    def send_errors(self) -> int:
        return self._protocol.send_errors

    @property
    def received(self) -> int:
        """Datagrams the server sent back."""
        return self._protocol.received

    def stats(self, **more: int) -> ClientStats:
        """What was sent and received, with ``more`` counted elsewhere (round trips, the
        room's confirmations)."""
        return ClientStats(
            sent=self.sent,
            send_errors=self.send_errors,
            received=self.received,
            messages=self.messages,
            **more,
        )

    def listen(self, on_datagram: Callable[[bytes], object]) -> None:
        """Pass each datagram the server sends back (a ``serve --echo`` answer) to
        ``on_datagram``; for a room, :meth:`join_room` listens instead."""
        self._protocol.on_datagram = on_datagram

    @property
    def local_address(self) -> tuple[str, int]:
        """The (ip, port) we send from: what the server, and a room's members, know us by."""
        if self._transport is None:
            raise RuntimeError("the client is not open")
        sockname = self._transport.get_extra_info("sockname")
        return str(sockname[0]), int(sockname[1])

    @property
    def keepalive_s(self) -> float:
        """Seconds between keepalives: a third of the peer timeout the server told us."""
        return self._keepalive_s

    async def open(self) -> None:
        # Resolved here rather than by the loop, so that every loop reports the same errors.
        family, _, _, _, address = (
            await asyncio.to_thread(
                socket.getaddrinfo, self.host, self.port, type=socket.SOCK_DGRAM
            )
        )[0]
        loop = asyncio.get_running_loop()
        self._transport, _ = await loop.create_datagram_endpoint(
            lambda: self._protocol, remote_addr=(str(address[0]), int(address[1])), family=family
        )

    def close(self) -> None:
        if self._membership is not None:
            self._membership.cancel()
            self._membership = None
        if self._transport is not None:
            self._transport.close()
            self._transport = None

    def send(self, text: str) -> None:
        """Send one text as one datagram."""
        if self._transport is None:
            raise RuntimeError("the client is not open")
        self._transport.sendto(text.encode("utf-8"))
        self.sent += 1

    async def settle(self, grace_s: float = REFUSAL_GRACE_S) -> None:
        """Give the OS ``grace_s`` to report refusals of what was just sent, so that
        :attr:`send_errors` counts them; returns early once every datagram drew one."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace_s):
                while self.send_errors < self.sent:
                    self._protocol.error_seen.clear()
                    await self._protocol.error_seen.wait()

    async def join_room(
        self,
        on_text: Callable[[str], None],
        *,
        on_room: Callable[[RoomEvent, str], None] | None = None,
        on_delivered: Callable[[str], None] | None = None,
        name: str = "",
        attempts: int = JOIN_ATTEMPTS,
        timeout_s: float = JOIN_TIMEOUT_S,
    ) -> None:
        """Join a ``serve --relay`` room as ``name`` (what ``/who`` lists; none: the address
        alone): ask for a cookie, echo it, and from then on pass each
        relayed text (``[ip] text``, not yet escaped for display) to ``on_text``, and the
        digest of each of our texts the room confirmed (:func:`udpchat.wire.text_digest`) to
        ``on_delivered``.

        Afterwards the client sends a cookie-bearing keepalive every :attr:`keepalive_s` and,
        when the server says it no longer knows us or stops listening, rejoins by itself
        (every :data:`REJOIN_INTERVAL_S`); ``on_room`` hears of each such change once. Raises
        :class:`JoinError` saying why.
        """

        def receive(data: bytes) -> None:
            text, _ = decode(data)
            if not is_command(text):
                if self.in_room:
                    on_text(text)
            elif text.startswith(f"{DELIVERED} "):
                if on_delivered is not None:
                    on_delivered(text[len(DELIVERED) + 1 :])
            elif text == EXPIRED:
                self._leave_room(on_room, "the server no longer counts us as a member")
            elif text.startswith(f"{MEMBERS} "):
                if not self._pages.full():
                    self._pages.put_nowait(text)
            elif not self._answers.full():
                self._answers.put_nowait(text)

        def refused() -> None:
            if not self._answers.full():
                self._answers.put_nowait(_REFUSED)
            self._leave_room(on_room, f"nothing listens at {self.host} port {self.port}")

        self._protocol.on_datagram = receive
        self._protocol.on_refused = refused
        self._name = name
        await self._join(attempts, timeout_s)
        self._membership = asyncio.create_task(self._keep_membership(on_room, timeout_s))

    def _leave_room(self, on_room: Callable[[RoomEvent, str], None] | None, why: str) -> None:
        if not self.in_room:
            return
        self.in_room = False
        self._rejoin_now.set()
        if on_room is not None:
            on_room(RoomEvent.OUT, f"out of the room: {why}; rejoining")

    async def _join(self, attempts: int, timeout_s: float) -> None:
        while not self._answers.empty():
            self._answers.get_nowait()  # answers to an earlier, abandoned attempt
        refused = cookie_came = False
        for _ in range(attempts):
            self.send(relay_join_request())
            answer = await self._answer(timeout_s, COOKIE)
            if isinstance(answer, _Refused):
                refused = True
                continue
            if answer is None:
                continue
            cookie_came = True
            cookie = answer[1]
            self.send(f"{JOIN} {cookie} {self._name}".rstrip())
            admitted = await self._answer(timeout_s, JOINED, ROOM_FULL)
            if isinstance(admitted, _Refused) or admitted is None:
                continue
            name, peer_timeout = admitted
            if name == ROOM_FULL:
                raise JoinError(
                    JoinFailure.ROOM_FULL,
                    f"the room at {self.host} port {self.port} is full: try again later, "
                    "or start the server with a larger --max-peers",
                )
            self._cookie = cookie
            self._keepalive_s = keepalive_interval(peer_timeout)
            self.in_room = self.joined = True
            return
        where = f"{self.host} port {self.port}"
        if cookie_came:
            raise JoinError(
                JoinFailure.NOT_ADMITTED, f"{where} sent a join cookie but never admitted us"
            )
        if refused:
            raise JoinError(
                JoinFailure.NOT_LISTENING,
                f"nothing listens at {where} (connection refused): "
                "is the server running, is the port right?",
            )
        raise JoinError(
            JoinFailure.NO_RELAY,
            f"no answer to {JOIN} from {where}: is the server there started with "
            "'udpchat serve --relay'? (without --relay it prints joins instead of answering)",
        )

    async def _answer(self, timeout_s: float, *commands: str) -> tuple[str, str] | _Refused | None:
        """(command, argument) of the next answer that is one of ``commands``; the refusal
        marker when the OS reports that nothing listens; None after the timeout."""
        try:
            async with asyncio.timeout(timeout_s):
                while True:
                    text = await self._answers.get()
                    if isinstance(text, _Refused):
                        return text
                    name, _, argument = text.partition(" ")
                    if name in commands:
                        return name, argument
        except TimeoutError:
            return None

    async def _keep_membership(
        self, on_room: Callable[[RoomEvent, str], None] | None, timeout_s: float
    ) -> None:
        """Keepalives while in the room; out of it, a join attempt every
        :data:`REJOIN_INTERVAL_S`."""
        while True:
            pause_s = self._keepalive_s if self.in_room else REJOIN_INTERVAL_S
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(pause_s):
                    await self._rejoin_now.wait()
            self._rejoin_now.clear()
            if self.in_room:
                self.send(f"{KEEPALIVE} {self._cookie}")
                continue
            try:
                await self._join(1, min(timeout_s, self._keepalive_s))
            except JoinError as error:
                logger.debug("rejoin failed: %s", error)
                continue
            if on_room is not None:
                on_room(RoomEvent.BACK, f"back in the room at {self.host} port {self.port}")

    async def who(self, timeout_s: float = JOIN_TIMEOUT_S) -> list[str]:
        """The room's members, ``ip name`` each, asked for page by page (at most
        :data:`MAX_WHO_PAGES`); TimeoutError when a page does not come within ``timeout_s``
        (it was lost, or we are not a member)."""
        while not self._pages.empty():
            self._pages.get_nowait()  # answers to an earlier, abandoned request
        entries: list[str] = []
        page = pages = 1
        while page <= min(pages, MAX_WHO_PAGES):
            self.send(who_request(self._cookie, page))
            async with asyncio.timeout(timeout_s):
                while (answer := parse_members(await self._pages.get())) is None or (
                    answer[0] != page
                ):
                    pass
            _, pages, found = answer
            entries.extend(found)
            page += 1
        return entries

    def leave_room(self) -> None:
        """Stop the keepalives and tell the server, so that it stops relaying to us at once."""
        if self._membership is not None:
            self._membership.cancel()
            self._membership = None
        if self._transport is not None and self.in_room:
            self.send(f"{LEAVE} {self._cookie}")
        self.in_room = False

    async def send_every(
        self,
        username: str,
        *,
        interval_s: float = DEFAULT_INTERVAL_S,
        count: int | None = None,
        on_sending: Callable[[str], None] | None = None,
        on_sent: Callable[[str], None] | None = None,
    ) -> int:
        """Send ``username: pesan ke-N`` for N = 1, 2, ... every ``interval_s``; returns how many.
        ``on_sending`` is called with each text just before it goes out (a round trip's clock
        starts there: a sender paused after the send would otherwise start it late, and an
        answer that came meanwhile would read as a round trip shorter than the link's),
        ``on_sent`` just after.

        Send times are fixed on a grid from the start, so the time spent sending does not add
        up to drift. After a stall longer than one interval the grid restarts instead of bursting.
        """
        loop = asyncio.get_running_loop()
        next_send = loop.time()
        counter = 0
        while count is None or counter < count:
            counter += 1
            text = format_message(username, counter)
            if on_sending is not None:
                on_sending(text)
            self.send(text)
            self.messages += 1
            if on_sent is not None:
                on_sent(text)
            if count is not None and counter >= count:
                break
            next_send += interval_s
            now = loop.time()
            if now - next_send > interval_s:
                next_send = now
            await asyncio.sleep(max(0.0, next_send - now))
        return counter

    async def __aenter__(self) -> Client:
        await self.open()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


async def wait_for_answers(round_trips: RoundTrips, grace_s: float = ANSWER_GRACE_S) -> None:
    """Give the answers to the last messages ``grace_s`` to arrive; returns as soon as every
    message remembered was answered."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(grace_s):
            while round_trips.outstanding:
                await asyncio.sleep(ANSWER_POLL_S)


def keepalive_interval(joined_argument: str) -> float:
    """A third of the peer timeout in ``/joined SECONDS``, within sane bounds; the default
    when the server did not say (an older server) or said nonsense (an untrusted datagram)."""
    try:
        peer_timeout_s = float(joined_argument)
    except ValueError:
        return DEFAULT_KEEPALIVE_S
    if not math.isfinite(peer_timeout_s) or peer_timeout_s <= 0:
        return DEFAULT_KEEPALIVE_S
    interval_s = peer_timeout_s / KEEPALIVES_PER_PEER_TIMEOUT
    return min(max(interval_s, MIN_KEEPALIVE_S), MAX_KEEPALIVE_S)
