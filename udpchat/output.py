"""What the server writes: one line per message on stdout, as the seed's text or as JSON.

A worker formats a whole batch and writes it with one call, so that concurrent workers never
interleave or merge lines and a burst costs one system call. Clean seed text is never decoded:
its line is the datagram's own bytes behind a cached ``[ip] `` prefix.
"""

from __future__ import annotations

import datetime
import enum
import json
import threading
from collections.abc import Callable
from typing import BinaryIO, TextIO

from udpchat.fastpath import text_lines
from udpchat.handlers import Batch, Message, OutputError
from udpchat.wire import format_line

MAX_PENDING_BYTES = 256 * 1024
"""Formatted bytes a printer holds per thread between a message and its flush, at most, when
it runs inside another per-message handler (the relay); past it, it writes at once."""
MAX_CACHED_PREFIXES = 4096
"""``[ip] `` prefixes kept ready, at most; the cache starts over when full."""


class OutputFormat(enum.StrEnum):
    TEXT = "text"
    """The seed's ``[ip] text`` line."""
    JSON = "json"
    """One JSON object per line, for ``jq`` and log shippers."""


def seed_line(message: Message) -> str:
    """``[127.0.0.1] alice: pesan ke-1``, escaped for the terminal."""
    return format_line(message.sender[0], message.text)


class _Timestamps:
    """RFC 3339 times, formatted once per receipt time: a batch's messages share one."""

    def __init__(self) -> None:
        self._last: tuple[float, str] = (0.0, "")

    def __call__(self, epoch_s: float) -> str:
        last_epoch_s, text = self._last
        if epoch_s != last_epoch_s:
            moment = datetime.datetime.fromtimestamp(epoch_s, datetime.UTC)
            text = moment.isoformat(timespec="microseconds").replace("+00:00", "Z")
            self._last = (epoch_s, text)
        return text


_timestamp = _Timestamps()


def json_line(message: Message) -> str:
    """The message as one JSON object; ``ensure_ascii`` keeps every control byte escaped."""
    return json.dumps(
        {
            "time": _timestamp(message.received_at),
            "ip": message.sender[0],
            "port": message.sender[1],
            "username": message.username,
            "counter": message.counter,
            "text": message.text,
            "verdict": message.verdict.value if message.verdict else None,
        },
        ensure_ascii=True,
    )


FORMATTERS: dict[OutputFormat, Callable[[Message], str]] = {
    OutputFormat.TEXT: seed_line,
    OutputFormat.JSON: json_line,
}


class _BinaryOut:
    """Bytes to a stream under a lock, one write and one flush per call; failures become
    :class:`OutputError` so that the pipeline counts the batch as lost, not handled."""

    def __init__(self, stream: TextIO) -> None:
        self._buffer: BinaryIO | None = getattr(stream, "buffer", None)
        self._stream = stream
        self._lock = threading.Lock()

    def write(self, data: bytes) -> None:
        try:
            with self._lock:
                if self._buffer is not None:
                    self._buffer.write(data)
                    self._buffer.flush()
                else:
                    self._stream.write(data.decode("utf-8"))
                    self._stream.flush()
        except (OSError, ValueError) as error:  # ValueError: the stream was closed
            raise output_failure(error) from error


def _escaped_line(ip: str, text: str) -> bytes:
    return f"{format_line(ip, text)}\n".encode()


def output_failure(error: BaseException) -> OutputError:
    """The :class:`OutputError` for a failed write, in the OS's own words (``Broken pipe``),
    with the OS's error number, so that a reader gone away (``EPIPE``) can be told apart."""
    reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
    failure = OutputError(f"cannot write messages: {reason}")
    failure.errno = error.errno if isinstance(error, OSError) else None
    return failure


class LinePrinter:
    """A handler that writes one line per message; the seed's ``[ip] text`` by default.

    As the server's handler it takes whole batches (:meth:`handle_batch`): one write each. Used
    inside another handler (the relay calls it per message), it collects each thread's lines
    and :meth:`flush` writes them, at the latest every :data:`MAX_PENDING_BYTES`.
    """

    def __init__(self, stream: TextIO, output_format: OutputFormat = OutputFormat.TEXT) -> None:
        self._out = _BinaryOut(stream)
        self._output_format = output_format
        self._format = FORMATTERS[output_format]
        self._prefixes: dict[str, bytes] = {}
        self._pending = threading.local()

    def handle_batch(self, batch: Batch) -> int:
        if self._output_format is OutputFormat.TEXT:
            data = self._text_lines(batch)
        else:
            lines = [self._format(message) for message in batch.messages()]
            data = ("\n".join(lines) + "\n").encode("utf-8")
        self._out.write(data)
        return 0

    def _text_lines(self, batch: Batch) -> bytes:
        """The batch's seed lines as bytes: clean seed text is copied as it came."""
        if len(self._prefixes) > MAX_CACHED_PREFIXES:
            self._prefixes.clear()
        return text_lines(
            batch.datagrams, batch.senders, batch.texts, self._prefixes, _escaped_line
        )

    def _lines(self) -> list[str]:
        try:
            lines: list[str] = self._pending.lines
        except AttributeError:
            lines = self._pending.lines = []
            self._pending.size = 0
        return lines

    def __call__(self, message: Message) -> None:
        lines = self._lines()
        line = self._format(message)
        lines.append(line)
        self._pending.size += len(line) + 1
        if self._pending.size >= MAX_PENDING_BYTES:
            self.flush()

    def flush(self) -> None:
        """Write this thread's pending lines; the worker calls it after each batch."""
        lines = self._lines()
        if not lines:
            return
        data = ("\n".join(lines) + "\n").encode("utf-8")
        lines.clear()
        self._pending.size = 0
        self._out.write(data)
