"""The room's bridge to NATS: one subject per room, shared by every udpchat server attached to it.

Each server publishes its verified members' messages as (original sender ip, text) and relays
what the others publish to its own members. A bus message is untrusted input like a datagram:
its size is checked before it is parsed, and whatever is malformed is dropped and counted.

Publishing never blocks the caller (a pool worker): messages wait in a bounded hand-off, one task
on the event loop sends them in order, and nats-py keeps at most ``max_pending_bytes`` while the
connection is down. What does not fit is counted, never silently lost.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import queue
import random
import re
import secrets
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, NoReturn
from urllib.parse import urlsplit, urlunsplit

from udpchat.counters import BusStats, Tally
from udpchat.logs import RateLimitedLog
from udpchat.sockets import is_address
from udpchat.wire import is_command

if TYPE_CHECKING:  # nats-py is imported when a bus starts, not with udpchat
    from nats.aio.client import Client as NatsClient
    from nats.aio.client import Server as NatsServer
    from nats.aio.msg import Msg
    from nats.aio.subscription import Subscription

__all__ = [
    "BusConfig",
    "BusUnavailableError",
    "RoomBus",
    "decode_envelope",
    "encode_envelope",
    "redact_url",
    "room_subject",
]

logger = logging.getLogger("udpchat.bus")

DEFAULT_ROOM = "lobby"
SUBJECT_PREFIX = "udpchat.room."
DEFAULT_CONNECT_TIMEOUT_S = 5.0
"""How long ``start()`` waits for a first connection; a down NATS fails well within 10 s."""
DEFAULT_MAX_PENDING_BYTES = 256 * 1024
"""nats-py's outgoing buffer while disconnected, in bytes; publishes beyond it are counted."""
DEFAULT_MAX_BACKLOG = 4096
"""Messages handed over by the workers and not yet given to nats-py, at most."""
DEFAULT_MAX_TEXT_BYTES = 1024
DEFAULT_INCOMING_LIMIT = 4096
"""Bus messages received and not yet delivered, at most: in nats-py's subscription (its
slow-consumer limit), and again waiting for the delivery thread; beyond either they are
dropped and counted."""
PAUSE_S = 0.1
"""How long the bus stops taking the room's messages once the budget has shed one: a flood
beyond the budget is then dropped by NATS, not parsed by this server to be shed."""
MAX_ORIGINS = 1024
"""Other servers whose sequence is followed to count what never arrived, at most."""
RECONNECT_FIRST_WAIT_S = 0.1
RECONNECT_MAX_WAIT_S = 5.0
STOP_FLUSH_TIMEOUT_S = 2
STOP_TIMEOUT_S = 5.0
"""Seconds a stopping bus may take in all: leftovers, flush and close."""
ENVELOPE_MAGIC = b"udpchat/2"
ORIGIN_HEX_DIGITS = 16
MAX_SEQUENCE_DIGITS = 20
MAX_IP_TEXT = 39 + 1 + 15
"""The longest IPv6 address with a ``%scope`` (interface names are at most 15 bytes on Linux)."""
MAX_ENVELOPE_HEADER_BYTES = (
    len(ENVELOPE_MAGIC) + 1 + ORIGIN_HEX_DIGITS + 1 + MAX_SEQUENCE_DIGITS + 1 + MAX_IP_TEXT + 1
)
_ROOM_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")
_HEADER_PATTERN = re.compile(
    rb"%s ([0-9a-f]{%d}) ([1-9][0-9]{0,%d}) ([0-9A-Fa-f:.]{2,45}(?:%%[A-Za-z0-9_.-]{1,15})?)"
    % (re.escape(ENVELOPE_MAGIC), ORIGIN_HEX_DIGITS, MAX_SEQUENCE_DIGITS - 1)
)
"""The header in one pattern: origin, sequence, and an address in the characters addresses have,
with an interface-name scope at most: so that an ``ip`` field can never carry a control byte
into the ``[ip]`` members are sent."""

Deliver = Callable[[str, str], None]
"""Called on the bus's delivery thread with (original sender ip, text) for each message from
another server."""


class BusUnavailableError(ConnectionError):
    """NATS could not be reached at start; the message names the URLs, without credentials.

    A ConnectionError, so that whatever reports a server that cannot start reports this too.
    """


def redact_url(url: str) -> str:
    """The URL with any user, password or token replaced by ``***``: safe for logs and errors."""
    parts = urlsplit(url if "://" in url else f"nats://{url}")
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    netloc = f"***@{host}" if parts.port is None else f"***@{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=netloc))


NATS_SCHEMES = ("nats", "tls", "ws", "wss")
_URL_IN_TEXT = re.compile(rf"\b(?:{'|'.join(NATS_SCHEMES)})://\S+")


def url_problem(url: str) -> str | None:
    """What is wrong with a NATS server URL, found at once rather than by a connection that
    times out: the scheme (``nats://``, ``tls://``, ``ws://``, ``wss://``), a host, a port."""
    parts = urlsplit(url)
    if parts.scheme not in NATS_SCHEMES:
        return f"is not a NATS URL: it must start with {', '.join(f'{s}://' for s in NATS_SCHEMES)}"
    try:
        parts.port  # noqa: B018 - raises on a port that is not a number or out of range
    except ValueError:
        return "has an invalid port"
    if not parts.hostname:
        return "names no host"
    return None


def room_subject(room: str) -> str:
    """``udpchat.room.<room>``; a room is a plain token, so it can never be a wildcard."""
    if not _ROOM_PATTERN.match(room):
        raise ValueError(f"room must be 1-64 letters, digits, '_' or '-': {room!r}")
    return SUBJECT_PREFIX + room


def encode_envelope(origin: str, sequence: int, ip: str, text: bytes) -> bytes:
    """``udpchat/2 ORIGIN SEQUENCE IP\\nTEXT``: readable with ``nats sub``, parsed without
    guessing; the sequence (1, 2, 3 ... per origin) tells a receiver what never arrived."""
    return b"%s %s %d %s\n%s" % (ENVELOPE_MAGIC, origin.encode(), sequence, ip.encode(), text)


class Envelope(NamedTuple):
    """A bus message, checked. A named tuple: one is built per message, on the event loop, and
    a frozen dataclass costs several times as much."""

    origin: str
    sequence: int
    ip: str
    text: str


Sealed = tuple["re.Match[bytes]", bytes]
"""An envelope whose sizes and header are checked (the header's fields, and the text as it
came): enough to follow its origin's sequence, and to shed it, before the rest is read."""


def unseal(data: bytes, max_text_bytes: int) -> Sealed | str:
    """The sizes and the header checked, or why refused: ``oversize`` or ``malformed``."""
    if len(data) > MAX_ENVELOPE_HEADER_BYTES + max_text_bytes:
        return "oversize"
    header, newline, body = data.partition(b"\n")
    if not newline or len(header) > MAX_ENVELOPE_HEADER_BYTES:
        return "malformed"
    if len(body) > max_text_bytes:
        return "oversize"
    fields = _HEADER_PATTERN.fullmatch(header)
    return "malformed" if fields is None else (fields, body)


def open_envelope(sealed: Sealed) -> Envelope | str:
    """The envelope, its address and text checked too; or ``malformed``."""
    fields, body = sealed
    ip = fields[3].decode("ascii")
    if not is_address(ip):
        return "malformed"
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        return "malformed"
    if is_command(text):  # no server relays one: it would reach members as a command
        return "malformed"
    return Envelope(fields[1].decode("ascii"), int(fields[2]), ip, text)


def decode_envelope(data: bytes, max_text_bytes: int) -> Envelope | str:
    """The envelope, or why it is refused: ``oversize`` or ``malformed``."""
    sealed = unseal(data, max_text_bytes)
    return sealed if isinstance(sealed, str) else open_envelope(sealed)


@dataclass(frozen=True, slots=True)
class BusConfig:
    """Where the room's NATS is and how to authenticate to it.

    Credentials may also ride in the URLs (``nats://user:pass@host``, ``nats://token@host``);
    they are never logged.
    """

    servers: tuple[str, ...]
    """Seed URLs: ``nats://`` or ``tls://``; the cluster announces the rest."""
    room: str = DEFAULT_ROOM
    credentials_file: Path | None = None
    """A ``.creds`` file (user JWT and NKey seed)."""
    nkey_seed_file: Path | None = None
    ca_file: Path | None = None
    """CA certificates to verify the servers' TLS certificates with."""
    max_text_bytes: int = DEFAULT_MAX_TEXT_BYTES
    """Largest text accepted from the bus or sent to it: the server's ``--max-size``."""
    connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S
    max_pending_bytes: int = DEFAULT_MAX_PENDING_BYTES
    max_backlog: int = DEFAULT_MAX_BACKLOG

    @property
    def urls(self) -> str:
        """The seed URLs, redacted: for messages and logs."""
        return ", ".join(redact_url(url) for url in self.servers)

    def __post_init__(self) -> None:
        if not self.servers:
            raise ValueError("at least one NATS server URL is needed")
        for url in self.servers:
            problem = url_problem(url)
            if problem is not None:
                raise ValueError(f"{redact_url(url)} {problem}")
        room_subject(self.room)


def log_attached(config: BusConfig) -> None:
    """Say, once a service is up, which room it serves on which NATS: a server says it when
    its bus starts, a supervisor once for all its children."""
    logger.info("room %r on NATS at %s", config.room, config.urls)


class RoomBus:
    """The room's subject on NATS: ``publish()`` from any thread, ``deliver`` for the others'.

    ``start()`` connects (or raises :class:`BusUnavailableError`); after that a lost connection
    is retried with exponential backoff for as long as the bus runs. What arrives is checked on
    the event loop (cheap), shed when ``admit`` says the room's budget is spent, and handed to
    one delivery thread through a bounded queue, so that a flood on the bus costs the loop no
    fan-out and is shed, counted, like a UDP flood.
    """

    def __init__(
        self, config: BusConfig, deliver: Deliver, admit: Callable[[], bool] | None = None
    ) -> None:
        self.config = config
        self.origin = secrets.token_hex(ORIGIN_HEX_DIGITS // 2)
        """This server's id in every envelope it publishes: how it recognises its own."""
        self._origin_bytes = self.origin.encode("ascii")
        self._subject = room_subject(config.room)
        self._deliver = deliver
        self._admit = admit
        """Whether one more message may be delivered now (the room's fan-out budget): asked on
        the event loop before the hand-over; what it refuses is shed, ``over_budget``."""
        self._client: NatsClient | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock = threading.Lock()
        self._backlog: collections.deque[bytes] = collections.deque()
        self._wakeup = asyncio.Event()
        self._publisher: asyncio.Task[None] | None = None
        self._stopping = False
        self._reconnect_attempt = 0
        self._last_error: BaseException | None = None
        self._refused: asyncio.Future[BaseException] | None = None
        """Set during ``start()`` by an error that retrying cannot fix (credentials, TLS)."""
        self._tally = Tally(BusStats)
        self._logged_reasons: set[tuple[str, str]] = set()
        self._insecure_log = RateLimitedLog(logger, level=logging.WARNING)
        self._sequence = 0
        """The last sequence number this server published."""
        self._expected: collections.OrderedDict[str, int] = collections.OrderedDict()
        """The next sequence number due from each other server, the most recent last."""
        self._subscription: Subscription | None = None
        self._pause_task: asyncio.Future[None] | None = None
        self._paused_past: set[str] = set()
        """Origins heard before the last pause: their next jump is what NATS dropped for this
        server while it paused (shed), not what was lost."""
        self._inbox: queue.Queue[Envelope | None] = queue.Queue(DEFAULT_INCOMING_LIMIT)
        self._delivery: threading.Thread | None = None

    async def start(self) -> None:
        if self._client is not None:
            raise RuntimeError("the bus is already started")
        self._loop = asyncio.get_running_loop()
        client = room_client(self._subject, self._receive)
        self._refused = self._loop.create_future()
        connecting = asyncio.ensure_future(self._connect(client))
        await asyncio.wait(
            (connecting, self._refused),
            timeout=self.config.connect_timeout_s,
            return_when=asyncio.FIRST_COMPLETED,
        )
        if not connecting.done() or connecting.exception() is not None:
            await self._abandon(client, connecting)
        self._client, self._refused = client, None
        self._publisher = asyncio.create_task(self._publish_backlog(), name="udpchat-bus-publish")
        self._delivery = threading.Thread(
            target=self._deliver_inbox, name="udpchat-bus-delivery", daemon=True
        )
        self._delivery.start()
        log_attached(self.config)

    async def _abandon(self, client: NatsClient, connecting: asyncio.Future[None]) -> NoReturn:
        """Give up a first connection: refused at once (credentials, TLS), or not made in time."""
        assert self._refused is not None
        connecting.cancel()
        await asyncio.gather(connecting, return_exceptions=True)
        with contextlib.suppress(Exception):  # a URL nats-py refused never got a connection
            await asyncio.wait_for(client.close(), STOP_FLUSH_TIMEOUT_S)
        urls = self.config.urls
        if self._refused.done():
            refusal = self._refused.result()
            if is_insecure(refusal):
                raise BusUnavailableError(
                    f"NATS at {urls} offers no TLS, which tls:// asks for: not connecting, "
                    "no credentials sent"
                )
            raise BusUnavailableError(
                f"NATS at {urls} refused the connection ({describe(refusal)})"
            )
        failed = connecting.exception() if not connecting.cancelled() else None
        cause = describe(failed or self._last_error or TimeoutError())
        raise BusUnavailableError(
            f"cannot reach NATS at {urls} within {self.config.connect_timeout_s:g} s ({cause})"
        )

    async def _connect(self, client: NatsClient) -> None:
        options: dict[str, Any] = {}
        if self.config.ca_file is not None:
            options["tls"] = ssl.create_default_context(cafile=str(self.config.ca_file))
        if self.config.credentials_file is not None:
            options["user_credentials"] = str(self.config.credentials_file)
        if self.config.nkey_seed_file is not None:
            options["nkeys_seed"] = str(self.config.nkey_seed_file)
        await client.connect(
            list(self.config.servers),
            name=f"udpchat room {self.config.room}",
            error_cb=self._on_error,
            disconnected_cb=self._on_disconnected,
            reconnected_cb=self._on_reconnected,
            reconnect_to_server_handler=self._next_server,
            max_reconnect_attempts=-1,
            reconnect_time_wait=1,  # between first attempts at one server; then _next_server
            pending_size=self.config.max_pending_bytes,
            **options,
        )
        self._subscription = await self._subscribe(client)
        # nats-py writes a flush's PING ahead of what is still in its buffer, the SUB included:
        # the first round trip makes sure the SUB is written, the second that the server has it.
        await client.flush()
        await client.flush()

    async def _subscribe(self, client: NatsClient) -> Subscription:
        return await client.subscribe(
            self._subject,
            cb=self._on_message,
            pending_msgs_limit=DEFAULT_INCOMING_LIMIT,
            pending_bytes_limit=DEFAULT_INCOMING_LIMIT
            * (MAX_ENVELOPE_HEADER_BYTES + self.config.max_text_bytes),
        )

    async def _pause(self) -> None:
        """Stop taking the room's messages for :data:`PAUSE_S`, then take them again: the
        budget is spent, so NATS drops them for this server, and they cost the event loop
        nothing (parsing them to shed them would). What it dropped is counted when each
        origin's next message shows the jump (:meth:`_follow`)."""
        from nats.errors import Error  # noqa: PLC0415

        client, subscription = self._client, self._subscription
        try:
            if client is None or subscription is None:
                return
            await subscription.unsubscribe()
            self._tally.add("pauses")
            await asyncio.sleep(PAUSE_S)
            self._paused_past.update(self._expected)
            self._subscription = await self._subscribe(client)
        except (OSError, Error) as error:  # the connection closed: the bus is stopping
            logger.debug("pausing the room's subscription: %s", describe(error))
        finally:
            self._pause_task = None

    def publish(self, ip: str, text: str) -> None:
        """Put a member's message on the bus, from any thread; never blocks."""
        data = text.encode("utf-8", "backslashreplace")
        if len(data) > self.config.max_text_bytes:
            self._count_failure("oversize")
            return
        with self._lock:
            loop, was_empty = self._loop, not self._backlog
            if self._stopping or loop is None:
                refusal: str | None = "stopped"
            elif len(self._backlog) >= self.config.max_backlog:
                refusal = "backlog_full"
            else:
                refusal = None
                self._sequence += 1
                self._backlog.append(encode_envelope(self.origin, self._sequence, ip, data))
        if refusal is not None:
            self._count_failure(refusal)
        elif was_empty:
            assert loop is not None
            loop.call_soon_threadsafe(self._wakeup.set)

    async def _publish_backlog(self) -> None:
        """The one task that hands messages to nats-py, in the order the workers gave them."""
        assert self._client is not None
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while True:
                with self._lock:
                    if not self._backlog:
                        break
                    envelope = self._backlog.popleft()
                await self._publish_one(self._client, envelope)

    async def _publish_one(self, client: NatsClient, envelope: bytes) -> None:
        from nats.errors import Error, OutboundBufferLimitError  # noqa: PLC0415

        connected = client.is_connected
        try:
            await client.publish(self._subject, envelope)
        except OutboundBufferLimitError:
            self._count_failure("buffer_full")
        except (OSError, Error) as error:
            self._count_failure("error")
            logger.debug("publish failed: %s", describe(error))
        else:
            self._tally.add("published")
            if not connected:
                self._tally.add("published_while_disconnected")

    def _count_failure(self, reason: str) -> None:
        self._count("publish_failures", reason, "could not publish to NATS")

    def _count_drop(self, reason: str) -> None:
        self._count("dropped", reason, "dropped a message from NATS")

    def _count(self, counter: str, reason: str, what: str) -> None:
        """Count one more for ``reason``: the first of each is logged, the rest only counted."""
        self._tally.add_reason(counter, reason)
        if (counter, reason) in self._logged_reasons:  # the common case, without the lock
            return
        with self._lock:
            first = (counter, reason) not in self._logged_reasons
            self._logged_reasons.add((counter, reason))
        if first:
            logger.warning("%s (%s); counting from now on", what, reason)

    async def _on_message(self, message: Msg) -> None:
        """The subscription's callback, for what :func:`room_client` does not take itself."""
        self._receive(message.data)

    def _receive(self, data: bytes) -> None:
        """On the event loop, as nats-py parses each message: check the header, follow the
        origin's sequence, shed what is over the room's budget before the rest is read, check
        the rest, and hand over.

        What the bus costs one loop iteration is bounded by nats-py, which reads at most
        32 KiB from NATS an iteration and parses it then (about 4 µs a message with this,
        measured as ``make attack``'s ``bus`` case says)."""
        sealed = unseal(data, self.config.max_text_bytes)
        if isinstance(sealed, str):
            self._count_drop(sealed)
            return
        fields = sealed[0]
        if fields[1] == self._origin_bytes:
            self._tally.add("own_echoes")
            return
        self._follow(fields[1].decode("ascii"), int(fields[2]))
        if self._admit is not None and not self._admit():
            self._count_drop("over_budget")
            if self._pause_task is None and self._subscription is not None:
                self._pause_task = asyncio.ensure_future(self._pause())
            return
        envelope = open_envelope(sealed)
        if isinstance(envelope, str):
            self._count_drop(envelope)
            return
        try:
            self._inbox.put_nowait(envelope)
        except queue.Full:
            self._count_drop("delivery_backlog_full")

    def _follow(self, origin: str, sequence: int) -> None:
        """Count what an origin sent that never arrived: a jump in its sequence; shed, not
        lost, across a pause (:meth:`_pause`)."""
        expected = self._expected.pop(origin, None)
        if expected is not None and sequence > expected:
            if origin in self._paused_past:
                self._tally.add_reason("dropped", "over_budget", sequence - expected)
            else:
                self._tally.add("lost_in_transit", sequence - expected)
        self._paused_past.discard(origin)
        self._expected[origin] = max(sequence + 1, expected or 0)
        if len(self._expected) > MAX_ORIGINS:
            self._expected.popitem(last=False)

    def _deliver_inbox(self) -> None:
        """The delivery thread: fan each message out to the room's members."""
        while (envelope := self._inbox.get()) is not None:
            try:
                self._deliver(envelope.ip, envelope.text)
            except Exception:
                self._count_drop("deliver_error")
                logger.exception("delivering a message from NATS failed")
                continue
            self._tally.add("received")

    async def _on_error(self, error: Exception) -> None:
        from nats.errors import SlowConsumerError  # noqa: PLC0415

        if isinstance(error, SlowConsumerError):
            self._count_drop("slow_consumer")
            return
        self._last_error = error
        refused = self._refused
        starting = refused is not None and not refused.done()
        if is_insecure(error):
            self._tally.add("refused_insecure")
            if not starting:  # a start that fails says it once, in its error
                self._insecure_log.record(f"NATS at {self._connected_to()} offers no TLS")
        if refused is not None and starting and is_refusal(error):
            refused.set_result(error)  # no retry will fix it: fail the start at once
        logger.debug("NATS: %s", describe(error))

    def _connected_to(self) -> str:
        """The server of the cluster the connection is to now (or was, just before it was
        lost), redacted: not the seed URLs, which may name another node."""
        url = None if self._client is None else self._client.connected_url
        return self.config.urls if url is None else redact_url(url.geturl())

    async def _on_disconnected(self) -> None:
        if self._stopping or self._client is None:
            return
        self._tally.add("disconnects")
        logger.warning(
            "lost the connection to NATS at %s; relaying locally meanwhile", self._connected_to()
        )

    async def _on_reconnected(self) -> None:
        self._reconnect_attempt = 0
        self._tally.add("reconnects")
        logger.warning("connection to NATS is back (%s)", self._connected_to())

    def _next_server(
        self, servers: list[NatsServer], info: dict[str, Any]
    ) -> tuple[NatsServer | None, float]:
        """Each server in turn, waiting twice as long after each failed round, with jitter."""
        attempt = self._reconnect_attempt
        self._reconnect_attempt += 1
        wait_s = min(RECONNECT_FIRST_WAIT_S * 2 ** (attempt // len(servers)), RECONNECT_MAX_WAIT_S)
        return servers[attempt % len(servers)], wait_s * random.uniform(0.5, 1.0)

    async def stop(self) -> None:
        """Publish what is waiting and close the connection, within :data:`STOP_TIMEOUT_S`
        all told: a bus that went away must not hold up the server's exit."""
        try:
            await asyncio.wait_for(self._stop(), STOP_TIMEOUT_S)
        except TimeoutError:
            logger.warning("NATS did not close within %g s; leaving it", STOP_TIMEOUT_S)

    async def _stop(self) -> None:
        client, self._client = self._client, None
        if client is None:
            return
        with self._lock:
            self._stopping = True
            leftover = list(self._backlog)
            self._backlog.clear()
        for task in (self._publisher, self._pause_task):
            if task is not None:
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        for envelope in leftover:
            await self._publish_one(client, envelope)
        from nats.errors import Error  # noqa: PLC0415

        if client.is_connected:
            try:
                await client.flush(timeout=STOP_FLUSH_TIMEOUT_S)
            except (OSError, Error, TimeoutError) as error:
                logger.warning("could not flush NATS at stop: %s", describe(error))
        await client.close()
        await self._stop_delivery()

    async def _stop_delivery(self) -> None:
        """Deliver what is waiting, within what is left of the stop's time."""
        if self._delivery is None:
            return
        while True:  # the sentinel goes in behind what waits, even when the queue is full
            try:
                self._inbox.put_nowait(None)
                break
            except queue.Full:
                await asyncio.sleep(0.01)
        await asyncio.to_thread(self._delivery.join)

    def stats(self) -> BusStats:
        connected = self._client is not None and self._client.is_connected
        return self._tally.snapshot(connected=connected)


def room_client(subject: str, receive: Callable[[bytes], None]) -> NatsClient:
    """A nats-py client for which a ``tls://`` URL means TLS, and that hands each message on
    ``subject`` to ``receive`` as it is parsed.

    TLS: nats-py (2.16 and before) upgrades to TLS only when the server's ``INFO`` says
    ``tls_required``, whatever the URL's scheme, and then sends ``CONNECT`` with the credentials:
    a server or a man in the middle that leaves it out gets them in clear text. Here, before
    anything is sent on a ``tls://`` connection (first or reconnect), its ``INFO`` must offer
    TLS (``tls_required`` or ``tls_available``), and the connection is upgraded either way; a
    server that offers none gets nothing and the attempt fails with
    ``SecureConnWantedError``.

    The room's messages: nats-py would build a message object for each, queue it, and wake a
    task to call the subscription's callback, all on the event loop, two thirds of what a bus
    message cost the loop (4.3 of 6.3 µs, measured with the bus shedding everything); here the
    payload goes straight to ``receive``. A message with headers (nothing udpchat publishes)
    takes nats-py's own way, to the subscription's callback.

    Both hooks are nats-py's private ``_process_info`` (which reads the ``INFO`` before
    ``CONNECT`` is built) and ``_process_msg`` (which its parser calls for each message);
    tests/test_bus.py fails if either moves."""
    from nats.aio.client import Client  # noqa: PLC0415 - only where a room uses NATS
    from nats.errors import SecureConnWantedError  # noqa: PLC0415

    subject_bytes = subject.encode()

    class RoomClient(Client):
        async def _process_info(
            self, info: dict[str, Any], initial_connection: bool = False
        ) -> None:
            server = self._current_server
            if initial_connection and server is not None and server.uri.scheme == "tls":
                if not (info.get("tls_required") or info.get("tls_available")):
                    if self._transport is not None:  # nats-py's reconnect leaves it open
                        self._transport.close()  # type: ignore[no-untyped-call]
                    raise SecureConnWantedError
                info["tls_required"] = True  # the INFO nats-py decides the upgrade on
            await super()._process_info(info, initial_connection)

        async def _process_msg(
            self, sid: int, subject: bytes, reply: bytes, data: bytes, headers: bytes | None
        ) -> None:
            if subject == subject_bytes and not headers:
                receive(data)
            else:
                await super()._process_msg(sid, subject, reply, data, headers)  # type: ignore[arg-type]

    return RoomClient()


def is_insecure(error: BaseException) -> bool:
    """A ``tls://`` server that offered no TLS (:func:`room_client`)."""
    from nats.errors import SecureConnWantedError  # noqa: PLC0415

    return isinstance(error, SecureConnWantedError)


def is_refusal(error: BaseException) -> bool:
    """Credentials or a certificate that NATS refused, or no TLS where the URL asks for it:
    retrying the same cannot succeed."""
    from nats.errors import AuthorizationError, Error  # noqa: PLC0415
    from nats.protocol.parser import AUTHORIZATION_VIOLATION  # noqa: PLC0415

    return (
        isinstance(error, AuthorizationError | ssl.SSLError)
        or is_insecure(error)
        or (isinstance(error, Error) and AUTHORIZATION_VIOLATION in str(error).lower())
    )


def describe(error: BaseException) -> str:
    """An error's own words, with any URL in them redacted; its type when it has none."""
    text = str(error) or type(error).__name__
    return _URL_IN_TEXT.sub(lambda match: redact_url(match.group()), text)
