"""What a handler sees and what it promises: the :class:`Message` and :class:`Batch` types,
the per-message :data:`Handler` and per-batch :class:`BatchHandler` protocols, and the adapter
that runs the first as the second, every failure counted.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from udpchat.accounting import Verdict
from udpchat.logs import RateLimitedLog
from udpchat.wire import SeedFields

logger = logging.getLogger("udpchat.handlers")

Address = Any
"""A source address as the socket gives it: (ip, port), or IPv6's (ip, port, flow, scope)."""


@dataclass(slots=True)
class Message:
    """One received datagram, as a per-message handler sees it. Treat it as read-only.

    Not a frozen dataclass: one is built per datagram, and frozen ones cost four times as much.
    """

    sender: tuple[str, int]
    """The source (ip, port). Unauthenticated: anyone can forge it."""
    text: str
    """The decoded text, not yet sanitised for display. A datagram that is not valid UTF-8
    appears whole in Python's bytes notation (``\\xNN`` escapes)."""
    username: str | None
    """The username where the text is in the seed's format, else None."""
    counter: int | None
    """The counter where the text is in the seed's format, else None."""
    received_at: float
    """``time.time()`` when the event loop read the datagram's batch."""
    verdict: Verdict | None = None
    """Where the counter stands in its sender's sequence (new, duplicate, reordered, late);
    None where the text is not in the seed's format."""
    size: int = 0
    """The datagram's size in bytes."""

    @property
    def ip(self) -> str:
        return self.sender[0]


@dataclass(slots=True)
class Batch:
    """Datagrams read by the event loop until a job takes them, as they go through the
    pipeline's stages.

    The lists run in parallel, one entry per datagram. Clean seed text (printable ASCII, the
    common case) is not decoded by the pipeline: ``texts`` holds the decoded text of the
    others only.
    """

    received_at: float
    datagrams: list[tuple[bytes, Address]]
    senders: list[tuple[str, int]] = field(default_factory=list)
    """(ip, port) per datagram; an IPv4 sender on a dual-stack socket shown as IPv4."""
    seeds: list[SeedFields | None] = field(default_factory=list)
    """(username as UTF-8, counter) where the datagram is seed text, else None."""
    texts: dict[int, str] = field(default_factory=dict)
    """Decoded text by position, for every datagram that is not clean seed text."""
    verdicts: list[Verdict | None] = field(default_factory=list)
    problems: dict[str, int] = field(default_factory=dict)
    """Datagrams that were not clean seed text, by :class:`~udpchat.wire.TextProblem` value
    or ``invalid_utf8``."""
    kinds: dict[str, int] = field(default_factory=dict)
    """Texts that were neither seed text nor a problem, by :class:`~udpchat.wire.TextKind`
    value: chat texts and the room's words."""

    def __len__(self) -> int:
        return len(self.datagrams)

    def text(self, index: int) -> str:
        """The text of the datagram at ``index`` (clean seed text is ASCII: decoded as such)."""
        text = self.texts.get(index)
        return self.datagrams[index][0].decode("ascii") if text is None else text

    def messages(self) -> list[Message]:
        """One :class:`Message` per datagram, built only for handlers that want them."""
        received_at = self.received_at
        messages = []
        for index, ((data, _), sender, seed, verdict) in enumerate(
            zip(self.datagrams, self.senders, self.seeds, self.verdicts, strict=True)
        ):
            username, counter = (None, None) if seed is None else (seed[0].decode(), seed[1])
            text = self.text(index)
            messages.append(
                Message(sender, text, username, counter, received_at, verdict, len(data))
            )
        return messages


@runtime_checkable
class BatchHandler(Protocol):
    """Handles a whole batch in a pool thread: the fast way, one call and one write per batch.

    Returns how many of the batch's messages it failed to handle (counted as handler errors);
    raises :class:`OutputError` when its output failed, so that none of them counts as handled.
    """

    def handle_batch(self, batch: Batch) -> int: ...


Handler = Callable[[Message], None]
"""Called once per message in a pool thread. If it also has a ``flush()`` method
(:class:`Flushable`), the worker calls it after each batch, and the batch's messages count as
handled only once it returned."""


@runtime_checkable
class Flushable(Protocol):
    """A handler that buffers output and writes it when flushed."""

    def flush(self) -> None: ...


class OutputError(OSError):
    """Writing a batch's output failed (a broken pipe, a full disk): nothing of it is handled."""


class PerMessage:
    """Runs a per-message :data:`Handler` as a :class:`BatchHandler`: a :class:`Message` per
    datagram, every exception counted (``BaseException`` included, so that a handler calling
    ``sys.exit`` cannot take a worker down), then the handler's ``flush``."""

    def __init__(self, handler: Handler, error_log: RateLimitedLog) -> None:
        self._handler = handler
        self._flush = handler.flush if isinstance(handler, Flushable) else None
        self._error_log = error_log

    def handle_batch(self, batch: Batch) -> int:
        handler = self._handler
        errors = 0
        for message in batch.messages():
            try:
                handler(message)
            except OutputError:
                raise
            except BaseException as error:
                errors += 1
                self._error_log.record(f"handler failed on a message from {message.ip}", error)
        if self._flush is not None:
            try:
                self._flush()
            except OutputError:
                raise
            except BaseException as error:
                raise OutputError(f"flush failed: {error!r}") from error
        return errors


def as_batch_handler(
    handler: Handler | BatchHandler | None, error_log: RateLimitedLog
) -> BatchHandler | None:
    """The handler as the pipeline calls it: a batch handler as it is, a per-message one
    through :class:`PerMessage`."""
    if handler is None or isinstance(handler, BatchHandler):
        return handler
    return PerMessage(handler, error_log)
