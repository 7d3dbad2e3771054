"""``serve --dashboard``: a live view of the room, redrawn from counter snapshots.

The view is built only from :class:`~udpchat.counters.StatsSnapshot` values read a few times a
second, so it adds nothing per message and its cost does not grow with the message rate.
:func:`render` is pure (samples and settings in, a rich renderable out); :class:`Dashboard`
is the loop that samples, renders and draws with ``rich.live.Live`` on one thread, which is
also the only thread that writes to the terminal while the view is up, so it never tears.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import logging
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from functools import lru_cache
from typing import IO, BinaryIO, TextIO, cast

from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, Group, RenderResult
from rich.live import Live
from rich.text import Text

from udpchat.counters import SenderStats, StatsSnapshot, add_up
from udpchat.report import (
    DEFAULT_IDLE_AFTER_S,
    Cells,
    GiveWay,
    SortKey,
    brief_segments,
    fit,
    heard,
    idle_after_s,
    pack,
    ranked,
    sender_cells,
    short_duration,
    table_lines,
)
from udpchat.server import Service
from udpchat.wire import INVISIBLE_CHARACTERS, sender_address, terminal_cells

REFRESH_PER_S = 4.0
"""Redraws a second, at most: often enough to look live, rarely enough to cost nothing."""
RATE_WINDOW_S = 2.0
"""Rates are taken over about this long, so that a 1 message/s client reads as steady."""
MAX_WAITING_CHARS = 1 << 20
"""Text waiting to scroll above the view, at most; writers wait beyond it, as for a slow
terminal, rather than lose message lines."""
NAME_MAX_CELLS = 32
"""The username column's width at most: every ASCII name whole, a CJK name cut to '…' rather
than the figures beside it."""
NAME_MIN_CELLS = 12
"""The username column's width at least, however narrow the terminal: the other columns give
way first (:data:`DASHBOARD_GIVE_WAY`)."""


@dataclasses.dataclass(frozen=True, slots=True)
class DashboardSettings:
    """What the view shows besides the counters, and how."""

    address: tuple[str, int]
    """Where the server listens, for the header."""
    started_at_s: float
    """``time.time()`` when the server started, for the uptime."""
    sort_key: SortKey = SortKey.LOSS
    idle_after_s: float = DEFAULT_IDLE_AFTER_S
    """Senders silent longer than this are marked idle (``--peer-timeout`` with the relay)."""
    reserved_lines: int = 0
    """Terminal lines the view leaves free for message lines scrolling above it."""


@dataclasses.dataclass(frozen=True, slots=True)
class Sample:
    """The counters at one moment: one snapshot per server process, and when (``time.time()``,
    the clock of :attr:`SenderStats.last_heard_s`)."""

    stats: tuple[StatsSnapshot, ...]
    at_s: float


@lru_cache(maxsize=4096)
def _shown_as_is(char: str) -> bool:
    """Whether the view can show ``char`` itself: printable, visible, and as wide for rich as
    for a terminal, so that rich's layout is the terminal's. Rich counts no cell for a spacing
    vowel sign (U+093E), a skin tone (U+1F3FD) or the Hangul filler (U+3164), which terminals
    count, and two for a trigram (U+2630), which they count as one."""
    return (
        char.isprintable()
        and char not in INVISIBLE_CHARACTERS
        and cell_len(char) == terminal_cells(char)
    )


def _escaped(char: str) -> str:
    if not char.isprintable():
        return repr(char)[1:-1]  # \n, \x1b, \u202e: as wire.sanitize() shows it
    code = ord(char)
    return f"\\u{code:04x}" if code <= 0xFFFF else f"\\U{code:08x}"


def displayed(text: str) -> str:
    """Untrusted ``text`` (a username, an address) as the view shows it: unchanged when every
    character can be shown as it is, else in Python's string notation for the others (and a
    backslash doubled), so that one row is always one terminal line and no name passes for
    another."""
    if all(map(_shown_as_is, text)):
        return text
    return "".join(
        "\\\\" if char == "\\" else char if _shown_as_is(char) else _escaped(char) for char in text
    )


def _header_items(
    current: Sample, previous: Sample | None, settings: DashboardSettings
) -> list[list[Text]]:
    """The header's lines, each as items a narrow terminal may put on lines of their own."""
    stats = add_up(current.stats)
    elapsed_s = current.at_s - previous.at_s if previous is not None else 0.0
    if previous is not None and elapsed_s > 0:
        before = add_up(previous.stats)
        received_per_s = f"{(stats.received - before.received) / elapsed_s:.1f}/s"
        handled_per_s = f"{(stats.handled - before.handled) / elapsed_s:.1f}/s"
    else:
        received_per_s = handled_per_s = "-"
    drops = ", ".join(f"{reason} {count}" for reason, count in stats.dropped.items() if count)
    kernel = "n/a" if stats.kernel_drops is None else str(stats.kernel_drops)
    first = [
        Text.assemble(("udpchat", "bold"), f" {sender_address(*settings.address)}"),
        Text(f"up {short_duration(current.at_s - settings.started_at_s)}"),
    ]
    if len(current.stats) > 1:
        first.append(Text(f"processes {len(current.stats)}"))
    rates = [f"in {received_per_s}", f"handled {handled_per_s}", f"queue {stats.queue_depth}"]
    rates.append(f"senders {stats.delivery.senders}")
    return [
        first,
        [Text(item) for item in rates],
        [
            Text.assemble("drops ", (drops, "bold red") if drops else "none"),
            Text(f"kernel drops {kernel}"),
            Text(f"handler errors {stats.handler_errors}"),
        ],
    ]


def _packed(items: Sequence[Text], width: int) -> list[Text]:
    """Items two spaces apart, on as few lines of ``width`` cells as fit them whole."""
    lines: list[Text] = []
    for item in items:
        if lines and lines[-1].cell_len + 2 + item.cell_len <= width:
            lines[-1].append("  ")
            lines[-1].append_text(item)
        else:
            lines.append(item.copy())
    return lines


def _header(
    current: Sample, previous: Sample | None, settings: DashboardSettings, width: int
) -> list[Text]:
    """Where, how fast, what was dropped; then the room's groups (relay, NATS) in one line of
    what a person reads, cut at a word with '…'."""
    lines = [
        line
        for items in _header_items(current, previous, settings)
        for line in _packed(items, width)
    ]
    groups = brief_segments(add_up(current.stats))[1:]
    if groups:
        lines.append(Text(pack(groups, width, 1)[0], style="dim"))
    for line in lines:
        line.no_wrap = True  # an item wider than the terminal is cropped, never wrapped
    return lines


PROCESS_HEADER = "proc"
HEARD_HEADER = "heard"
DASHBOARD_GIVE_WAY: GiveWay = (
    ("username", NAME_MAX_CELLS),
    ("sender", 0),
    ("restarts", 0),
    ("late", 0),
    ("reordered", 0),
    ("duplicates", 0),
    ("jitter_ms", 0),
    (HEARD_HEADER, 0),
    (PROCESS_HEADER, 0),
    ("lost", 0),
    ("username", NAME_MIN_CELLS),
)
"""How the sender table narrows with the terminal: a long name capped, then the address left
out first, then the columns that are rarely anything but zero, then the others; the name is
cut last, and never below :data:`NAME_MIN_CELLS`. Received and loss always stay, whole."""


def _table(
    rows: Sequence[tuple[int, SenderStats]],
    settings: DashboardSettings,
    now_s: float,
    processes: bool,
    width: int,
) -> list[Text]:
    """The summary's sender columns (:data:`~udpchat.report.SENDER_COLUMNS`) under their short
    headers, then when each was last heard: a header, a rule and a line per row, each one
    terminal line, the columns that do not fit left out as :data:`DASHBOARD_GIVE_WAY` says."""
    senders = [sender for _, sender in rows]
    heard_cells = [heard(now_s - sender.last_heard_s, settings.idle_after_s) for sender in senders]
    columns = sender_cells(senders, short=True, shown=displayed)
    if processes:
        columns.insert(0, Cells(PROCESS_HEADER, PROCESS_HEADER, tuple(str(p) for p, _ in rows)))
    columns.append(
        Cells(HEARD_HEADER, HEARD_HEADER, tuple(text for text, _ in heard_cells), numeric=False)
    )
    head, *rows_text = table_lines(columns, fit(columns, width, DASHBOARD_GIVE_WAY))
    table = [Text(head, style="bold"), Text("\u2500" * min(width, cell_len(head)))]
    for sender, text, (_, idle) in zip(senders, rows_text, heard_cells, strict=True):
        style = "dim" if idle else ("red" if sender.lost else "")
        table.append(Text(text, style=style))
    for line in table:
        line.no_wrap = True
    return table


class View:
    """One frame. The sender table takes the rows that fit the height rich offers (the
    terminal's, less ``reserved_lines``) and says how many more there are."""

    def __init__(self, current: Sample, previous: Sample | None, settings: DashboardSettings):
        self._settings = settings
        self._current = current
        self._previous = previous
        self._now_s = current.at_s
        self._processes = len(current.stats) > 1
        senders = [
            (process, sender)
            for process, snapshot in enumerate(current.stats, start=1)
            for sender in snapshot.senders
        ]
        self._senders = ranked(senders, settings.sort_key)

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        width = options.max_width
        height = max(1, (options.height or options.max_height) - self._settings.reserved_lines)
        header = _header(self._current, self._previous, self._settings, width)
        room = height - len(header) - 2  # the table's header and rule
        shown = len(self._senders) if len(self._senders) <= room else max(0, room - 1)
        parts = [
            *header,
            *_table(self._senders[:shown], self._settings, self._now_s, self._processes, width),
        ]
        if shown < len(self._senders):
            more = len(self._senders) - shown
            parts.append(
                Text(
                    f"{more} more sender{'s' if more > 1 else ''} (sorted by "
                    f"{self._settings.sort_key.value}; the header counts them all)",
                    style="dim",
                    no_wrap=True,
                    overflow="ellipsis",
                )
            )
        yield Group(*parts)


def render(current: Sample, previous: Sample | None, settings: DashboardSettings) -> View:
    """The view of ``current``, with rates since ``previous`` (None: no rates yet)."""
    return View(current, previous, settings)


class ScrollingLines(io.TextIOBase):
    """A text stream whose writes scroll above the live view: kept until the next redraw,
    which prints them in one go, so that writers in any thread never touch the terminal."""

    def __init__(self, max_waiting_chars: int = MAX_WAITING_CHARS) -> None:
        super().__init__()
        self._max_waiting_chars = max_waiting_chars
        self._waiting: list[str] = []
        self._waiting_chars = 0
        self._direct: IO[str] | None = None
        self._changed = threading.Condition()
        self.buffer = cast(BinaryIO, _DecodingWriter(self))
        """The same stream for writers of UTF-8 bytes (``--processes`` copies its children's)."""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        with self._changed:
            self._changed.wait_for(
                lambda: self._waiting_chars < self._max_waiting_chars or self._direct is not None
            )
            if self._direct is None:
                self._waiting.append(text)
                self._waiting_chars += len(text)
                return len(text)
        self._direct.write(text)
        self._direct.flush()
        return len(text)

    def take(self) -> str:
        """Everything written since the last take."""
        with self._changed:
            text = "".join(self._waiting)
            self._waiting.clear()
            self._waiting_chars = 0
            self._changed.notify_all()
        return text

    def finish(self, direct: IO[str]) -> str:
        """What is still waiting; later writes go straight to ``direct`` (the view is gone)."""
        with self._changed:
            self._direct = direct
            self._changed.notify_all()
        return self.take()


MESSAGE_LINES = 8
"""Terminal lines the view leaves free for message lines when they scroll above it."""


class NoTerminalError(RuntimeError):
    """Neither stdout nor stderr is a terminal: there is nowhere to draw the view."""


@dataclasses.dataclass(frozen=True, slots=True)
class ViewTerminal:
    """Where the view draws, and where message lines go while it is up."""

    console: Console
    lines: ScrollingLines
    """What scrolls above the view: the message lines when they share its terminal, and
    stderr when ``capture_stderr``."""
    message_stream: TextIO
    """Where the message printer writes: :attr:`lines`, or stdout when it is not the view's."""
    capture_stderr: bool
    reserved_lines: int


def find_terminal(stdout: TextIO, stderr: TextIO, *, messages: bool) -> ViewTerminal:
    """The view on stdout when it is a terminal, message lines scrolling above it; else on
    stderr, message lines going to stdout (a file or a pipe) as without the view.

    ``messages``: whether message lines are printed at all (not ``--quiet``)."""
    lines = ScrollingLines()
    if stdout.isatty():
        return ViewTerminal(
            Console(file=stdout),
            lines,
            message_stream=cast(TextIO, lines),  # a TextIOBase: what a printer calls of TextIO
            capture_stderr=stderr.isatty(),
            reserved_lines=MESSAGE_LINES if messages else 0,
        )
    if stderr.isatty():
        return ViewTerminal(
            Console(file=stderr),
            lines,
            message_stream=stdout,
            capture_stderr=True,
            reserved_lines=0,
        )
    raise NoTerminalError("--dashboard needs a terminal on stdout or stderr; both are redirected")


class _DecodingWriter:
    """Bytes in, text out to ``lines``: each write is whole lines, so no character is split."""

    def __init__(self, lines: ScrollingLines) -> None:
        self._lines = lines

    def write(self, data: bytes) -> int:
        self._lines.write(data.decode("utf-8", errors="replace"))
        return len(data)

    def flush(self) -> None:
        """Nothing to flush: the lines wait for the next redraw."""


@contextlib.contextmanager
def _stderr_into(lines: ScrollingLines) -> Iterator[None]:
    """``sys.stderr``, and the log handlers that write to it, go to ``lines`` meanwhile."""
    stderr = sys.stderr
    handlers = [
        handler
        for handler in logging.getLogger().handlers
        if isinstance(handler, logging.StreamHandler) and handler.stream is stderr
    ]
    sys.stderr = cast(TextIO, lines)
    for handler in handlers:
        handler.setStream(lines)
    try:
        yield
    finally:
        sys.stderr = stderr
        for handler in handlers:
            handler.setStream(stderr)


def window_start(samples: deque[Sample], since_s: float) -> Sample | None:
    """The newest sample taken at or before ``since_s`` (else the oldest): rates over a window
    of whole seconds read steadily for clients that send once a second."""
    chosen = samples[0] if samples else None
    for sample in samples:
        if sample.at_s > since_s:
            break
        chosen = sample
    return chosen


class Dashboard:
    """The live view on a thread of its own: ``with Dashboard(source, settings, terminal):``.

    ``source`` returns one snapshot per server process. What is written to the terminal's
    :attr:`~ViewTerminal.lines` (message lines, stderr) scrolls above the view while it is up.
    Leaving the block draws the last frame, prints what is still waiting, and gives the
    terminal back with its cursor shown, so that a summary printed next lands below the view.
    """

    def __init__(
        self,
        source: Callable[[], Sequence[StatsSnapshot]],
        settings: DashboardSettings,
        terminal: ViewTerminal,
        *,
        refresh_per_s: float = REFRESH_PER_S,
    ) -> None:
        self._source = source
        self._settings = dataclasses.replace(settings, reserved_lines=terminal.reserved_lines)
        self._terminal = terminal
        self._console = terminal.console
        self._lines = terminal.lines
        self._period_s = 1 / refresh_per_s
        self._samples: deque[Sample] = deque(maxlen=max(2, int(2 * RATE_WINDOW_S * refresh_per_s)))
        self._live = Live(
            console=terminal.console,
            auto_refresh=False,
            redirect_stdout=False,
            redirect_stderr=False,
        )
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, name="udpchat-dashboard", daemon=True)
        self._captured = contextlib.ExitStack()

    def _draw(self, waiting: str) -> None:
        current = Sample(tuple(self._source()), time.time())
        previous = window_start(self._samples, current.at_s - RATE_WINDOW_S)
        self._samples.append(current)
        self._live.update(render(current, previous, self._settings))
        if waiting:
            # Printing while Live runs clears the view, prints above it, and draws it again.
            self._console.print(Text(waiting.rstrip("\n")), soft_wrap=True, highlight=False)
        else:
            self._live.refresh()

    def _run(self) -> None:
        while not self._stopping.wait(self._period_s):
            self._draw(self._lines.take())

    def __enter__(self) -> Dashboard:
        self._live.start()
        try:
            self._draw("")
        except BaseException:
            self._live.stop()  # the cursor shown again
            raise
        if self._terminal.capture_stderr:
            self._captured.enter_context(_stderr_into(self._lines))
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stopping.set()
        self._thread.join()
        self._captured.close()
        self._draw(self._lines.finish(self._console.file))
        self._live.stop()


def watch(terminal: ViewTerminal, sort_key: SortKey, service: Service) -> Dashboard:
    """The view of a started service, with a column for each process when there are several."""
    config = service.config
    idle_after = idle_after_s(config.relay, config.peer_timeout_s)
    settings = DashboardSettings(service.address, time.time(), sort_key, idle_after)
    return Dashboard(service.per_process, settings, terminal)
