"""What the server writes: one line per message on stdout, as the seed's text or as JSON.

Lines are built by the pool worker that handles the message and written in whole lines, so
that concurrent workers never interleave or merge them.
"""

from __future__ import annotations

import datetime
import enum
import json
import threading
from collections.abc import Callable
from typing import TextIO

from udpchat.pipeline import Message
from udpchat.wire import format_line

MAX_PENDING_LINES = 1024
"""Lines a printer keeps per thread before it writes them, whatever the batch size."""


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


class LinePrinter:
    """A handler that writes one line per message; the seed's ``[ip] text`` by default.

    Each worker thread collects its lines and :meth:`flush` writes them in one go (at the
    latest every :data:`MAX_PENDING_LINES`), so output costs one write per burst, not per message.
    """

    def __init__(self, stream: TextIO, output_format: OutputFormat = OutputFormat.TEXT) -> None:
        self._stream = stream
        self._format = FORMATTERS[output_format]
        self._lock = threading.Lock()
        self._pending = threading.local()

    def _lines(self) -> list[str]:
        try:
            lines: list[str] = self._pending.lines
        except AttributeError:
            lines = self._pending.lines = []
        return lines

    def __call__(self, message: Message) -> None:
        lines = self._lines()
        lines.append(self._format(message))
        if len(lines) >= MAX_PENDING_LINES:
            self.flush()

    def flush(self) -> None:
        """Write this thread's pending lines; a worker calls it when the queue runs dry."""
        lines = self._lines()
        if not lines:
            return
        text = "\n".join(lines) + "\n"
        lines.clear()
        with self._lock:
            self._stream.write(text)
            self._stream.flush()
