"""A run's time series in a file (``--record``): JSON Lines, or CSV rows for spreadsheets.

A :class:`RecordWriter` owns the file and a thread of its own: records come from its own
timer (a server's intervals, sampled by :mod:`udpchat.series`) or from other threads through a
bounded queue (the impairment proxy's), and the event loop never waits for the disk. The file
is bounded (``max_bytes``): at the bound, or when a write fails (a full disk), recording stops,
is counted (:class:`~udpchat.counters.RecordStats`) and logged, and whatever records the run
goes on.

Every file starts with a header record: the schema version, the kind of run, its label and
configuration, and what each counter means (from the declarations). Then intervals and events,
and an end record when the run ended in order. docs/record.md describes the layout.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import datetime
import enum
import io
import json
import logging
import queue
import stat
import threading
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, BinaryIO

from udpchat.counters import (
    LOSS_RUN_CAP,
    SENDER_SERIES,
    ClientStats,
    RecordStats,
    StatsSnapshot,
    Tally,
)
from udpchat.series import (
    SCHEMA_VERSION,
    Sampler,
    changes,
    event_json,
    flat,
    interval_json,
    schema,
    sender_schema,
)
from udpchat.settings import SECRET_SHOWN, ConfigError, check_bounds, setting

logger = logging.getLogger("udpchat.record")

Record = dict[str, Any]
"""One record: a JSON object with a ``type`` (header, interval, event, end, ...)."""

DEFAULT_INTERVAL_S = 1.0
MIN_INTERVAL_S = 0.05
MAX_INTERVAL_S = 3600.0
DEFAULT_MAX_BYTES = 100_000_000
MIN_MAX_BYTES = 65536
"""Room for the header (every counter's description) and a few intervals."""
DEFAULT_SENDERS = 20
MAX_SENDERS = 10_000
DEFAULT_EVENTS = 100
MAX_EVENTS = 100_000
DEFAULT_SAMPLES = 1000
MAX_SAMPLES = 100_000
MAX_LABEL_LENGTH = 200
QUEUE_RECORDS = 4096
"""Records from other threads waiting for the writer, at most; more are dropped and counted."""
END_RESERVE_BYTES = 256
"""Kept free below ``max_bytes`` for the end record, so that a bounded file still says why it
ended."""
CLOSE_TIMEOUT_S = 5.0
"""How long a stop waits for the writer to finish its last records (a slow disk)."""


def interval_setting() -> Any:
    """``--record-interval``: the same range in every config that records."""
    return setting(DEFAULT_INTERVAL_S, minimum=MIN_INTERVAL_S, maximum=MAX_INTERVAL_S)


def max_bytes_setting() -> Any:
    """``--record-max-bytes``: the file's bound."""
    return setting(DEFAULT_MAX_BYTES, minimum=MIN_MAX_BYTES)


class RecordFormat(enum.StrEnum):
    JSONL = "jsonl"
    """One JSON object a line: header, intervals, events, end (what ``udpchat plot`` reads)."""
    CSV = "csv"
    """One row per sender and interval, the rest and the events, for spreadsheets."""


class Refusal(enum.Enum):
    """Why a record file was not opened."""

    IS_DIRECTORY = "is a directory: give a file"
    EXISTS = "exists"
    NOT_A_FILE = "exists and is not a regular file or a device"
    UNWRITABLE = "cannot be written"


class RecordFileError(OSError):
    """A record file (``--record``, ``--pcap``) that could not be opened, and why; a path that
    is wrong as given (:attr:`usage`) rather than one the system refused."""

    def __init__(self, path: Path, refusal: Refusal, detail: str = "") -> None:
        self.path = path
        self.refusal = refusal
        super().__init__(f"{path} {refusal.value}" + (f": {detail}" if detail else ""))

    @property
    def usage(self) -> bool:
        return self.refusal is not Refusal.UNWRITABLE


def open_new(path: Path, overwrite: bool) -> BinaryIO:
    """Open ``path`` for a new recording: never a directory, a pipe or a socket (opening a
    pipe waits for a reader), and an existing file only with ``overwrite``."""
    try:
        mode = path.stat().st_mode
    except OSError:
        mode = 0
    if stat.S_ISDIR(mode):
        raise RecordFileError(path, Refusal.IS_DIRECTORY)
    if mode and not (stat.S_ISREG(mode) or stat.S_ISCHR(mode)):
        raise RecordFileError(path, Refusal.NOT_A_FILE)
    try:
        return path.open("wb" if overwrite else "xb")
    except FileExistsError:
        raise RecordFileError(path, Refusal.EXISTS) from None
    except IsADirectoryError:
        raise RecordFileError(path, Refusal.IS_DIRECTORY) from None
    except OSError as error:
        raise RecordFileError(path, Refusal.UNWRITABLE, error.strerror or str(error)) from None


def discard(stream: BinaryIO, path: Path) -> None:
    """Close and remove a file :func:`open_new` made, when the run it was for did not start."""
    stream.close()
    with contextlib.suppress(OSError):
        if path.is_file():
            path.unlink()


def rfc3339(epoch_s: float) -> str:
    moment = datetime.datetime.fromtimestamp(epoch_s, datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def config_json(config: Any) -> dict[str, Any]:
    """A config dataclass as JSON values (paths and networks as text), for a header; a URL's
    credentials and a secret setting's value are left out."""
    values: dict[str, Any] = {}
    for each in dataclasses.fields(config):
        value = getattr(config, each.name)
        hidden = each.metadata.get("secret") and value is not None
        values[each.name] = SECRET_SHOWN if hidden else _plain(value)
    return values


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return _without_credentials(value) if isinstance(value, str) else value
    if isinstance(value, tuple | list):
        return [_plain(item) for item in value]
    if isinstance(value, enum.Enum):
        return _plain(value.value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return config_json(value)
    return str(value)


def _without_credentials(text: str) -> str:
    """``nats://user:secret@host`` as ``nats://host``."""
    scheme, separator, rest = text.partition("://")
    if not separator or "@" not in rest.split("/", 1)[0]:
        return text
    return f"{scheme}://{rest.split('@', 1)[1]}"


Encoder = Callable[[Record], bytes]


def jsonl(record: Record) -> bytes:
    return (json.dumps(record, ensure_ascii=True, separators=(",", ":")) + "\n").encode()


CSV_COLUMNS = (
    "t_s",
    "time",
    "row",
    "sender",
    "username",
    *(series.name for series in SENDER_SERIES),
    "loss_percent",
    "loss_runs",
    "event",
)
"""The CSV layout: a row per listed sender and interval (``row`` = sender), one for the rest
(``row`` = rest, ``sender`` = how many), one per event (``row`` = event)."""


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")
"""What makes a spreadsheet read a cell as a formula (OWASP, CSV injection)."""


def _as_text(value: Any) -> Any:
    """A text cell a spreadsheet would run as a formula, with a ``'`` before it: usernames come
    from any datagram (``=HYPERLINK(...)``)."""
    return f"'{value}" if isinstance(value, str) and value.startswith(FORMULA_STARTS) else value


def _csv_rows(record: Record) -> list[dict[str, Any]]:
    return [{key: _as_text(value) for key, value in row.items()} for row in _csv_cells(record)]


def _csv_cells(record: Record) -> list[dict[str, Any]]:
    kind = record["type"]
    if kind == "event":
        return [{**record, "row": "event"}]
    if kind != "interval":
        return []
    rows = [{**row, "row": "sender"} for row in record["senders"]]
    rest = record["rest"]
    if rest["senders"]:
        rows.append({**rest, "row": "rest", "sender": rest["senders"], "username": ""})
    for row in rows:
        row.update(t_s=record["t_s"], time=record["time"])
        runs = row.get("loss_runs", {})
        row["loss_runs"] = " ".join(f"{length}:{count}" for length, count in runs.items())
        expected = row["received"] - row["duplicates"] + row["lost"]
        row["loss_percent"] = round(100 * row["lost"] / expected, 3) if expected > 0 else ""
    return rows


def csv_rows(record: Record) -> bytes:
    """The CSV lines for one record: the column names for the header, nothing for the end."""
    out = io.StringIO()
    writer = csv.DictWriter(out, CSV_COLUMNS, extrasaction="ignore", lineterminator="\n")
    if record["type"] == "header":
        writer.writeheader()
    writer.writerows(_csv_rows(record))
    return out.getvalue().encode()


ENCODERS: dict[RecordFormat, Encoder] = {RecordFormat.JSONL: jsonl, RecordFormat.CSV: csv_rows}

Tick = Callable[[float], list[Record]]
"""Called on the writer's thread every interval with the run's time (seconds since it
started), and once more at the end: the records of that interval."""


class _Wake:
    """Put in the queue to wake the writer for a stop."""


_WAKE = _Wake()


class RecordWriter:
    """A bounded record file written by a thread of its own: ``start(header)``, then
    :meth:`put` from any thread (never blocks) and/or a ``tick`` every ``interval_s``, then
    :meth:`close`. Its counters: :meth:`stats`."""

    def __init__(
        self,
        stream: BinaryIO,
        path: Path,
        *,
        max_bytes: int,
        encode: Encoder = jsonl,
        tick: Tick | None = None,
        interval_s: float = DEFAULT_INTERVAL_S,
        queue_records: int = QUEUE_RECORDS,
        clock: Callable[[], float] = time.monotonic,
        counts_type: type[RecordStats] = RecordStats,
    ) -> None:
        self.path = path
        self._stream = stream
        self._max_bytes = max_bytes
        self._encode = encode
        self._tick = tick
        self._interval_s = interval_s
        self._clock = clock
        self._started_at = clock()
        self._queue: queue.Queue[Record | _Wake] = queue.Queue(maxsize=queue_records)
        self._stopping = threading.Event()
        self._tally = Tally(counts_type)
        self._stopped_by = ""
        """Why recording stopped early (max_bytes, write_failed); empty while it goes on."""
        self._header: Record = {}
        self._thread = threading.Thread(target=self._run, name="udpchat-record", daemon=True)

    def t_s(self) -> float:
        """Seconds since the run started (the writer was built)."""
        return self._clock() - self._started_at

    def stats(self) -> RecordStats:
        return self._tally.snapshot(recording=self._thread.is_alive() and not self._stopped_by)

    def start(self, header: Record) -> None:
        """Start the thread, which writes ``header`` first."""
        self._header = header
        self._thread.start()

    def put(self, record: Record) -> bool:
        """Queue a record for the file, from any thread; False (and counted) when it will not
        be written."""
        if self._stopped_by:
            self._tally.add_reason("not_written", self._stopped_by)
            return False
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            self._tally.add_reason("not_written", "queue_full")
            return False
        return True

    def close(self, forced: bool = False) -> bool:
        """Write what is queued, the last tick and the end record, and close; False when the
        writer did not finish within :data:`CLOSE_TIMEOUT_S` (a stuck disk), or at once when
        ``forced`` (an operator's second Ctrl-C): it is left to finish on its own."""
        self._stopping.set()
        with contextlib.suppress(queue.Full):
            self._queue.put_nowait(_WAKE)
        if self._thread.is_alive():
            self._thread.join(0.0 if forced else CLOSE_TIMEOUT_S)
        return not self._thread.is_alive()

    def _run(self) -> None:
        self._write(self._header)
        self._flush()
        next_tick_s = self._interval_s
        while not (self._stopping.is_set() and self._queue.empty()):
            timeout_s = None if self._tick is None else max(0.0, next_tick_s - self.t_s())
            try:
                item = self._queue.get(timeout=timeout_s)
            except queue.Empty:
                item = _WAKE
            if not isinstance(item, _Wake):
                self._write(item)
            if self._queue.empty():
                self._flush()
            if self._tick is not None and self.t_s() >= next_tick_s:
                self._ticked()
                next_tick_s = max(next_tick_s + self._interval_s, self.t_s())
        if self._tick is not None:
            self._ticked()
        if not self._stopped_by:  # else it ended already, saying why
            self._write({"type": "end", "t_s": round(self.t_s(), 6), "reason": "stopped"})
            self._flush()
        with contextlib.suppress(OSError):
            self._stream.close()

    def _ticked(self) -> None:
        for record in self._tick(self.t_s()) if self._tick is not None else ():
            self._write(record)
        self._flush()

    def _write(self, record: Record) -> None:
        if self._stopped_by:
            self._tally.add_reason("not_written", self._stopped_by)
            return
        data = self._encode(record)
        written = self._tally.values["written_bytes"]
        if record["type"] != "end" and written + len(data) > self._max_bytes - END_RESERVE_BYTES:
            self._tally.add_reason("not_written", "max_bytes")
            logger.warning(
                "recording stopped: %s reached its bound of %d bytes", self.path, self._max_bytes
            )
            end = {"type": "end", "t_s": round(self.t_s(), 6), "reason": "max_bytes"}
            self._write(end)
            self._flush()
            self._stopped_by = "max_bytes"
            return
        try:
            self._stream.write(data)
        except (OSError, ValueError) as error:
            self._failed(error)
            return
        with self._tally.lock:
            self._tally.values["records"] += 1
            self._tally.values["written_bytes"] += len(data)

    def _flush(self) -> None:
        if self._stopped_by == "write_failed":
            return
        try:
            self._stream.flush()
        except (OSError, ValueError) as error:
            self._failed(error)

    def _failed(self, error: BaseException) -> None:
        """A full disk (or a file gone): recording stops, the run goes on."""
        self._tally.add_reason("not_written", "write_failed")
        self._stopped_by = "write_failed"
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        logger.error("recording stopped: cannot write %s: %s", self.path, reason)


@dataclasses.dataclass(frozen=True, slots=True)
class RecordOptions:
    """What a run's ``--record`` options ask for, checked when built (without a path too, so
    that a value out of range is refused whether or not it is used)."""

    path: Path | None = None
    """The file; None records nothing."""
    format: RecordFormat = RecordFormat.JSONL
    interval_s: float = interval_setting()
    max_bytes: int = max_bytes_setting()
    senders: int = setting(DEFAULT_SENDERS, minimum=0, maximum=MAX_SENDERS)
    """A server's: senders listed per interval."""
    events: int = setting(DEFAULT_EVENTS, minimum=0, maximum=MAX_EVENTS)
    """Events recorded per interval, at most."""
    samples: int = setting(DEFAULT_SAMPLES, minimum=0, maximum=MAX_SAMPLES)
    """``send --rtt``'s: round trips recorded per interval, at most."""
    label: str = ""
    overwrite: bool = False

    def __post_init__(self) -> None:
        check_bounds(self)
        if self.path is not None and str(self.path) == "-":
            raise ConfigError("path", "cannot be '-': standard output carries the messages")
        if len(self.label) > MAX_LABEL_LENGTH:
            raise ConfigError("label", f"must be at most {MAX_LABEL_LENGTH} characters")

    @property
    def file(self) -> Path:
        """The path, for what records: :class:`ValueError` without one."""
        if self.path is None:
            raise ValueError("no record file was given")
        return self.path


def setting_of(option: str, file_option: str = "record") -> str:
    """The name a command's config gives a :class:`RecordOptions` field: ``interval_s`` is
    ``record_interval_s`` (``pcap_max_bytes`` for ``impair --pcap``'s, ``file_option``
    ``pcap``), so that an error names the right option."""
    return {"path": file_option, "overwrite": "overwrite"}.get(option, f"{file_option}_{option}")


def header(kind: str, options: RecordOptions, config: Any, **more: Any) -> Record:
    """The first record: the schema version, the kind of run, its label and configuration
    (a config dataclass, or what a command gathered as a dict)."""
    from udpchat import __version__  # noqa: PLC0415 - reads the installed metadata

    return {
        "type": "header",
        "schema": SCHEMA_VERSION,
        "kind": kind,
        "udpchat": __version__,
        "label": options.label or options.file.stem,
        "started": rfc3339(time.time()),
        "interval_s": options.interval_s,
        "config": config if isinstance(config, dict) else config_json(config),
        **more,
    }


class ServerSeries:
    """A server's tick: samples ``source`` (a snapshot with the sender table) into the
    interval's events and interval record."""

    def __init__(self, source: Callable[[], StatsSnapshot], options: RecordOptions) -> None:
        self._source = source
        self.first = source()
        self._sampler = Sampler(self.first, top_senders=options.senders, max_events=options.events)

    def __call__(self, t_s: float) -> list[Record]:
        interval = self._sampler.sample(self._source(), t_s)
        records: list[Record] = [event_json(event, t_s) for event in interval.events]
        records.append({**interval_json(interval), "time": rfc3339(time.time())})
        return records


async def start_recorded(
    start: Callable[[], Awaitable[None]],
    options: RecordOptions | None,
    config: Any,
    source: Callable[[], StatsSnapshot],
) -> RecordWriter | None:
    """Open the record file that ``options`` ask for, then ``start()`` (a server's start),
    then record ``source``; a start that fails leaves no file behind. So that a path that
    cannot be written fails before anything binds."""
    stream = None if options is None else open_new(options.file, options.overwrite)
    try:
        await start()
    except BaseException:
        if stream is not None and options is not None:
            discard(stream, options.file)
        raise
    if stream is None or options is None:
        return None
    return record_server(stream, options, config, source)


def record_server(
    stream: BinaryIO, options: RecordOptions, config: Any, source: Callable[[], StatsSnapshot]
) -> RecordWriter:
    """Start recording a server (or a supervisor's children, added up) into ``stream``,
    opened by :func:`open_new`."""
    series = ServerSeries(source, options)
    writer = RecordWriter(
        stream,
        options.file,
        max_bytes=options.max_bytes,
        encode=ENCODERS[options.format],
        tick=series,
        interval_s=options.interval_s,
    )
    writer.start(
        header(
            "serve",
            options,
            config,
            counters=schema(dataclasses.replace(series.first, record=RecordStats())),
            sender_fields=sender_schema(),
            loss_run_cap=LOSS_RUN_CAP,
        )
    )
    return writer


Samples = Callable[[], tuple[list[float], int]]
"""An interval's round trips in seconds, and how many more there were."""


class ClientSeries:
    """A client's tick (``send``, ``chat``): its counters' changes, and with ``send --rtt``
    the interval's round trips."""

    def __init__(self, source: Callable[[], ClientStats], samples: Samples | None) -> None:
        self._source = source
        self._samples = samples
        self._previous = self.first = source()
        self._previous_t_s = 0.0

    def __call__(self, t_s: float) -> list[Record]:
        now = self._source()
        record: Record = {
            "type": "interval",
            "t_s": round(t_s, 6),
            "elapsed_s": round(t_s - self._previous_t_s, 6),
            "time": rfc3339(time.time()),
            "totals": flat(now),
            "deltas": changes(self._previous, now),
        }
        if self._samples is not None:
            samples, left_out = self._samples()
            record["rtt_ms"] = [round(sample * 1000, 3) for sample in samples]
            record["rtt_samples_left_out"] = left_out
        self._previous, self._previous_t_s = now, t_s
        return [record]


def record_client(
    stream: BinaryIO,
    options: RecordOptions,
    kind: str,
    config: Any,
    source: Callable[[], ClientStats],
    samples: Samples | None = None,
) -> RecordWriter:
    """Start recording a client (``send``, ``chat``) into ``stream``, opened by
    :func:`open_new`."""
    series = ClientSeries(source, samples)
    writer = RecordWriter(
        stream,
        options.file,
        max_bytes=options.max_bytes,
        tick=series,
        interval_s=options.interval_s,
    )
    writer.start(
        header(kind, options, config, counters=schema(series.first), rtt=samples is not None)
    )
    return writer
