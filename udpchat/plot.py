"""``udpchat plot``: Flent-style figures from recorded runs (``--record`` files).

Two halves. Reading a record file and turning it into the data series of each figure is pure
and exact (:func:`load_run`, then :func:`timeseries`, :func:`loss_run_shares`,
:func:`jitter_cdf`, :func:`rtt_cdf`, :func:`compare`): the tests check these series. Drawing
them takes matplotlib, the optional extra ``udpchat[plot]``, on its headless Agg backend, and is
deterministic: the same files give the same bytes (no dates, fixed SVG ids).
"""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from udpchat.record import discard, open_new
from udpchat.series import SCHEMA_VERSION

DEFAULT_SIZE = (1000, 700)
"""Pixels of a PNG (at :data:`DPI`); an SVG or a PDF is the same size in points at 72 an inch."""
DPI = 100
MIN_SIDE, MAX_SIDE = 200, 8000
DEFAULT_TOP_SENDERS = 5
MAX_TOP_SENDERS = 50
MAX_LINE_BYTES = 16 * 1024 * 1024
"""A record line longer than this is refused: no record udpchat writes comes near it."""
FORMATS = ("png", "svg", "pdf")
EXTRA = "plot"
"""The optional dependency that drawing needs: ``pip install 'udpchat[plot]'``."""


class PlotName(enum.StrEnum):
    TIMESERIES = "timeseries"
    """Messages/s, loss % and jitter over time, per sender (the busiest)."""
    LOSS_RUNS = "loss-runs"
    """The share of loss runs by length: bursts (Gilbert-Elliott) against independent loss."""
    JITTER_CDF = "jitter-cdf"
    """The distribution of each sender's jitter, interval by interval."""
    RTT_CDF = "rtt-cdf"
    """The distribution of round-trip times (``send --rtt --record``)."""
    COMPARE = "compare"
    """Several runs on one figure, labelled: loss over time and loss runs by length."""


class RecordFormatError(ValueError):
    """A file ``plot`` cannot read: names the file and the line."""

    def __init__(self, path: Path, line: int, why: str) -> None:
        self.path = path
        self.line = line
        super().__init__(f"{path}, line {line}: {why}")


class PlotUnavailableError(RuntimeError):
    """matplotlib is not installed."""


class NothingToPlotError(ValueError):
    """The runs given hold nothing for the figure asked for (say, rtt-cdf of a server's run)."""


@dataclass(frozen=True, slots=True)
class Run:
    """One recorded run, read back."""

    path: Path
    kind: str
    """What recorded it: serve, send, chat, impair."""
    label: str
    header: dict[str, Any]
    intervals: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)


def _records(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    """Each line's record, with its line number; a line that is not one is refused. A line is
    read no further than :data:`MAX_LINE_BYTES`, so that a file with no end of line (a foreign
    one, ``/dev/zero``) is refused without being read into memory whole."""
    with path.open("rb") as file:
        number = 0
        while raw := file.readline(MAX_LINE_BYTES + 1):
            number += 1
            yield number, _record(path, number, raw)
        if number == 0:
            raise RecordFormatError(path, 1, "the file is empty: no header")


def _record(path: Path, number: int, raw: bytes) -> dict[str, Any]:
    if len(raw) > MAX_LINE_BYTES:
        raise RecordFormatError(path, number, f"a line longer than {MAX_LINE_BYTES} bytes")
    try:
        record = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        if not raw.endswith(b"\n") and (number > 1 or raw.startswith(b"{")):
            raise RecordFormatError(path, number, "truncated: the last line is cut off") from None
        if number == 1 and raw.startswith(b"t_s,"):
            raise RecordFormatError(
                path, 1, "a CSV record is for spreadsheets: plot reads --record-format jsonl"
            ) from None
        raise RecordFormatError(path, number, "not JSON: not a udpchat record") from None
    if not isinstance(record, dict) or not isinstance(record.get("type"), str):
        raise RecordFormatError(path, number, "not a udpchat record (no type)")
    return record


def load_run(path: Path) -> Run:
    """Read a record file; :class:`RecordFormatError` names the line that is wrong."""
    records = _records(path)
    _, head = next(records)
    if head.get("type") != "header" or not isinstance(head.get("schema"), int):
        raise RecordFormatError(path, 1, "not a udpchat record: the first line is no header")
    if head["schema"] > SCHEMA_VERSION:
        raise RecordFormatError(
            path,
            1,
            f"schema {head['schema']} is newer than this udpchat reads ({SCHEMA_VERSION}): "
            "upgrade udpchat",
        )
    run = Run(path, str(head.get("kind", "")), str(head.get("label") or path.stem), head)
    for number, record in records:
        if record["type"] == "interval":
            problem = interval_problem(run.kind, record)
            if problem:
                raise RecordFormatError(path, number, problem)
            run.intervals.append(record)
        elif record["type"] == "event":
            run.events.append(record)
    return run


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    """A finite number: JSON as Python reads it takes NaN and Infinity too."""
    return (_is_count(value) or isinstance(value, float)) and math.isfinite(value)


def _is_text(value: Any) -> bool:
    return isinstance(value, str)


ROW_FIELDS: dict[str, Callable[[Any], bool]] = {
    "received": _is_count,
    "lost": _is_count,
    "duplicates": _is_count,
    "jitter_s": _is_number,
}
"""What the figures read of a sender's row in an interval (and of the rest's)."""
SENDER_FIELDS = {**ROW_FIELDS, "sender": _is_text, "username": _is_text}


def _is_row(value: Any, fields: dict[str, Callable[[Any], bool]]) -> bool:
    return isinstance(value, dict) and all(check(value.get(key)) for key, check in fields.items())


def _is_loss_runs(value: Any) -> bool:
    """``{"length": runs}``: lengths from 1, counts from 0."""
    return isinstance(value, dict) and all(
        key.isdigit() and int(key) >= 1 and _is_count(count) and count >= 0
        for key, count in value.items()
    )


def _serve_problem(record: dict[str, Any]) -> str | None:
    senders = record.get("senders")
    if not isinstance(senders, list) or not all(_is_row(row, SENDER_FIELDS) for row in senders):
        return "an interval whose senders are not a list of sender rows"
    if not _is_row(record.get("rest"), ROW_FIELDS):
        return "an interval whose rest is not a sender row"
    if not _is_loss_runs(record.get("loss_runs")):
        return "an interval whose loss_runs are not counts by length"
    return None


def _send_problem(record: dict[str, Any]) -> str | None:
    samples = record.get("rtt_ms", [])
    if not isinstance(samples, list) or not all(_is_number(ms) for ms in samples):
        return "an interval whose rtt_ms are not a list of numbers"
    return None


INTERVAL_PROBLEMS: dict[str, Callable[[dict[str, Any]], str | None]] = {
    "serve": _serve_problem,
    "send": _send_problem,
}
"""What each kind of run's intervals must hold for its figures (the layout
docs/guide/record.md describes); the other kinds' intervals are drawn from by none."""


def interval_problem(kind: str, record: dict[str, Any]) -> str | None:
    """Why an interval record of a ``kind`` run cannot be drawn from, or None: so that a
    foreign or damaged file is refused naming its line, never a traceback while drawing."""
    for key in ("t_s", "elapsed_s"):
        if not _is_number(record.get(key)):
            return f"an interval without {key}"
    check = INTERVAL_PROBLEMS.get(kind)
    return None if check is None else check(record)


NEEDS: dict[PlotName, str] = {
    PlotName.TIMESERIES: "serve",
    PlotName.LOSS_RUNS: "serve",
    PlotName.JITTER_CDF: "serve",
    PlotName.RTT_CDF: "send",
    PlotName.COMPARE: "serve",
}
"""The kind of run each figure draws from."""


def has_messages(run: Run) -> bool:
    """A listed sender sent in some interval: a server's figures have something to draw."""
    return any(row["received"] for interval in run.intervals for row in interval["senders"])


def has_round_trips(run: Run) -> bool:
    return any(interval.get("rtt_ms") for interval in run.intervals)


DATA: dict[PlotName, tuple[Callable[[Run], bool], str]] = {
    PlotName.TIMESERIES: (has_messages, "messages"),
    PlotName.LOSS_RUNS: (has_messages, "messages"),
    PlotName.JITTER_CDF: (has_messages, "messages"),
    PlotName.RTT_CDF: (has_round_trips, "round trips (recorded by 'send --rtt --record')"),
    PlotName.COMPARE: (has_messages, "messages"),
}
"""What a run must hold for each figure to draw it, and what a refusal says it lacks: an idle
server's run or ``send --record`` without ``--rtt`` draws no empty figure."""


def runs_for(plot: PlotName, runs: Sequence[Run]) -> list[Run]:
    """The runs ``plot`` draws (of its kind, with data for it); :class:`NothingToPlotError`
    when there are none."""
    of_kind = [run for run in runs if run.kind == NEEDS[plot]]
    if not of_kind:
        raise NothingToPlotError(f"{plot.value} needs a file from '{NEEDS[plot]} --record'")
    has_data, lacking = DATA[plot]
    chosen = [run for run in of_kind if has_data(run)]
    if not chosen:
        names = ", ".join(str(run.path) for run in of_kind)
        raise NothingToPlotError(f"{plot.value}: no {lacking} in {names}")
    return chosen


@dataclass(frozen=True, slots=True)
class SenderSeries:
    """One sender's figures over a run: NaN where it sent nothing in an interval."""

    label: str
    t_s: list[float]
    rate_per_s: list[float]
    loss_percent: list[float]
    jitter_ms: list[float]


def _loss_percent(row: dict[str, Any]) -> float:
    expected = row["received"] - row["duplicates"] + row["lost"]
    return 100.0 * row["lost"] / expected if expected > 0 else math.nan


def timeseries(run: Run, top: int = DEFAULT_TOP_SENDERS) -> list[SenderSeries]:
    """Messages/s, loss % and jitter per interval for the ``top`` senders with the most
    messages over the run (ties by name)."""
    totals: dict[tuple[str, str], int] = {}
    for interval in run.intervals:
        for row in interval["senders"]:
            key = (row["username"], row["sender"])
            totals[key] = totals.get(key, 0) + row["received"]
    chosen = sorted(totals, key=lambda key: (-totals[key], key))[:top]
    series = []
    for key in chosen:
        t_s, rates, losses, jitters = [], [], [], []
        for interval in run.intervals:
            rows = [r for r in interval["senders"] if (r["username"], r["sender"]) == key]
            t_s.append(float(interval["t_s"]))
            elapsed = interval["elapsed_s"]
            row = rows[0] if rows else None
            rates.append(row["received"] / elapsed if row and elapsed > 0 else 0.0)
            losses.append(_loss_percent(row) if row else math.nan)
            jitters.append(row["jitter_s"] * 1000 if row else math.nan)
        series.append(SenderSeries(f"{key[0]} {key[1]}", t_s, rates, losses, jitters))
    return series


def total_loss_runs(run: Run) -> dict[int, int]:
    """Loss runs by length over the whole run, every sender's."""
    runs: dict[int, int] = {}
    for interval in run.intervals:
        for length, count in interval["loss_runs"].items():
            runs[int(length)] = runs.get(int(length), 0) + count
    return dict(sorted(runs.items()))


def loss_run_shares(run: Run) -> dict[int, float]:
    """The share of the run's loss runs of each length (they add up to 1)."""
    runs = total_loss_runs(run)
    count = sum(runs.values())
    return {length: runs[length] / count for length in runs} if count else {}


@dataclass(frozen=True, slots=True)
class Cdf:
    label: str
    values: list[float]
    """Sorted."""
    shares: list[float]
    """The share at or below each value: (i + 1) / n."""


def _cdf(label: str, values: list[float]) -> Cdf:
    ordered = sorted(values)
    count = len(ordered)
    return Cdf(label, ordered, [(index + 1) / count for index in range(count)])


def jitter_cdf(run: Run) -> Cdf:
    """Each listed sender's jitter (ms) at the end of each interval it sent in."""
    values = [
        row["jitter_s"] * 1000
        for interval in run.intervals
        for row in interval["senders"]
        if row["received"]
    ]
    return _cdf(run.label, values)


def rtt_cdf(run: Run) -> Cdf:
    """Every round trip the run recorded, in ms."""
    return _cdf(run.label, [ms for interval in run.intervals for ms in interval.get("rtt_ms", [])])


@dataclass(frozen=True, slots=True)
class RunLoss:
    """A run's loss over time, every sender's, for :data:`PlotName.COMPARE`."""

    label: str
    t_s: list[float]
    loss_percent: list[float]
    loss_run_shares: dict[int, float]


def compare(run: Run) -> RunLoss:
    """Loss % per interval over every sender (listed and the rest), from the start of the
    first interval with messages (so that runs started at different times line up), and its
    loss runs."""
    t_s, losses = [], []
    start_s: float | None = None
    for interval in run.intervals:
        rows = [*interval["senders"], interval["rest"]]
        summed = {key: sum(row[key] for row in rows) for key in ("received", "duplicates", "lost")}
        loss = _loss_percent(summed)
        if start_s is None:
            if math.isnan(loss):
                continue
            start_s = interval["t_s"] - interval["elapsed_s"]
        t_s.append(float(interval["t_s"]) - start_s)
        losses.append(loss)
    return RunLoss(run.label, t_s, losses, loss_run_shares(run))


def default_plots(runs: Sequence[Run]) -> list[PlotName]:
    """What the runs given have data for: a server's figures, round trips, and with several
    servers' runs their comparison."""
    drawn = {plot: [run for run in runs if run.kind == NEEDS[plot] and DATA[plot][0](run)]
             for plot in PlotName}  # fmt: skip
    return [
        plot
        for plot, chosen in drawn.items()
        if len(chosen) > (1 if plot is PlotName.COMPARE else 0)
    ]


def output_paths(out: Path, plots: Sequence[PlotName]) -> list[Path]:
    """``out`` for one figure; ``out``'s stem with each figure's name for several."""
    if len(plots) == 1:
        return [out]
    return [out.with_name(f"{out.stem}-{plot.value}{out.suffix}") for plot in plots]


Draw = Callable[[Any, Sequence[Run], int], None]


def _draw_timeseries(figure: Any, runs: Sequence[Run], top: int) -> None:
    run = runs_for(PlotName.TIMESERIES, runs)[0]
    axes = figure.subplots(3, 1, sharex=True)
    for series in timeseries(run, top):
        axes[0].plot(series.t_s, series.rate_per_s, label=series.label)
        axes[1].plot(series.t_s, series.loss_percent, marker=".", label=series.label)
        axes[2].plot(series.t_s, series.jitter_ms, label=series.label)
    for ax, unit in zip(axes, ("messages/s", "loss %", "jitter (ms)"), strict=True):
        ax.set_ylabel(unit)
        ax.grid(True, alpha=0.3)
    axes[2].set_xlabel("time (s)")
    axes[0].legend(fontsize="small", loc="upper right")
    figure.suptitle(f"{run.label}: the {top} busiest senders")


def _draw_loss_runs(figure: Any, runs: Sequence[Run], top: int) -> None:
    chosen = runs_for(PlotName.LOSS_RUNS, runs)
    ax = figure.subplots()
    _bars(ax, [(run.label, loss_run_shares(run)) for run in chosen])
    ax.set_title("Loss runs by length: independent loss gives runs of 1, bursts longer ones")


def _bars(ax: Any, shares: list[tuple[str, dict[int, float]]]) -> None:
    lengths = sorted({length for _, share in shares for length in share}) or [1]
    width = 0.8 / max(1, len(shares))
    for index, (label, share) in enumerate(shares):
        positions = [length + (index - (len(shares) - 1) / 2) * width for length in lengths]
        ax.bar(positions, [share.get(length, 0.0) for length in lengths], width, label=label)
    ax.set_xticks(lengths)
    ax.set_xlabel("loss run length (messages in a row)")
    ax.set_ylabel("share of loss runs")
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(fontsize="small")


def _draw_cdfs(ax: Any, cdfs: list[Cdf], unit: str) -> None:
    for cdf in cdfs:
        ax.step(cdf.values, cdf.shares, where="post", label=f"{cdf.label} ({len(cdf.values)})")
    ax.set_xlabel(unit)
    ax.set_ylabel("share at or below")
    ax.set_ylim(0, 1.02)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize="small", loc="lower right")


def _draw_jitter_cdf(figure: Any, runs: Sequence[Run], top: int) -> None:
    cdfs = [jitter_cdf(run) for run in runs_for(PlotName.JITTER_CDF, runs)]
    ax = figure.subplots()
    _draw_cdfs(ax, cdfs, "jitter (ms), each sender at the end of each interval")
    ax.set_title("Jitter (RFC 3550), CDF")


def _draw_rtt_cdf(figure: Any, runs: Sequence[Run], top: int) -> None:
    cdfs = [rtt_cdf(run) for run in runs_for(PlotName.RTT_CDF, runs)]
    ax = figure.subplots()
    _draw_cdfs(ax, cdfs, "round-trip time (ms)")
    ax.set_title("Round-trip times, CDF")


def _draw_compare(figure: Any, runs: Sequence[Run], top: int) -> None:
    losses = [compare(run) for run in runs_for(PlotName.COMPARE, runs)]
    over_time, by_length = figure.subplots(2, 1)
    for loss in losses:
        over_time.plot(loss.t_s, loss.loss_percent, marker=".", label=loss.label)
    over_time.set_xlabel("time from the first message (s)")
    over_time.set_ylabel("loss % (every sender)")
    over_time.grid(True, alpha=0.3)
    over_time.legend(fontsize="small")
    _bars(by_length, [(loss.label, loss.loss_run_shares) for loss in losses])
    figure.suptitle("Runs compared: loss over time, and loss runs by length")


DRAW: dict[PlotName, Draw] = {
    PlotName.TIMESERIES: _draw_timeseries,
    PlotName.LOSS_RUNS: _draw_loss_runs,
    PlotName.JITTER_CDF: _draw_jitter_cdf,
    PlotName.RTT_CDF: _draw_rtt_cdf,
    PlotName.COMPARE: _draw_compare,
}


def _pyplot() -> Any:
    try:
        import matplotlib  # noqa: PLC0415 - the optional extra, only to draw
    except ImportError:
        raise PlotUnavailableError(
            f"plot needs matplotlib: pip install 'udpchat[{EXTRA}]'"
        ) from None
    matplotlib.use("Agg")
    matplotlib.rcParams["svg.hashsalt"] = "udpchat"
    from matplotlib import pyplot  # noqa: PLC0415

    return pyplot


_METADATA = {
    "png": {"Software": None},
    "svg": {"Date": None, "Creator": None},
    "pdf": {"CreationDate": None, "ModDate": None, "Producer": None, "Creator": None},
}
"""No dates, no versions: the same runs give the same bytes."""


def draw(
    plot: PlotName,
    runs: Sequence[Run],
    out: BinaryIO,
    suffix: str,
    size: tuple[int, int] = DEFAULT_SIZE,
    top: int = DEFAULT_TOP_SENDERS,
) -> None:
    """Draw ``plot`` of ``runs`` into ``out``, in the format ``suffix`` names (``.png``)."""
    pyplot = _pyplot()
    form = suffix.lstrip(".").lower()
    figure = pyplot.figure(figsize=(size[0] / DPI, size[1] / DPI), dpi=DPI, layout="constrained")
    try:
        DRAW[plot](figure, runs, top)
        figure.savefig(out, format=form, dpi=DPI, metadata=_METADATA[form])
    finally:
        pyplot.close(figure)


def plot_runs(
    paths: Sequence[Path],
    out: Path,
    plots: Sequence[PlotName] = (),
    *,
    size: tuple[int, int] = DEFAULT_SIZE,
    top: int = DEFAULT_TOP_SENDERS,
    overwrite: bool = False,
) -> list[Path]:
    """Read ``paths``, draw ``plots`` (default: what the runs have data for) and return the
    files written. Each output is opened as a record file is (:func:`open_new`): never a
    directory, an existing file only with ``overwrite``; one that fails is removed."""
    if out.suffix.lstrip(".").lower() not in FORMATS:
        raise ValueError(f"{out}: the output must end in .png, .svg or .pdf")
    runs = [load_run(path) for path in paths]
    chosen = list(dict.fromkeys(plots)) or default_plots(runs)
    if not chosen:
        raise NothingToPlotError("no figure has data in these runs")
    for plot in chosen:
        runs_for(plot, runs)
    _pyplot()  # before any output is opened: without matplotlib, nothing is written
    paths = output_paths(out, chosen)
    streams: list[BinaryIO] = []
    try:  # every output opened before any is drawn: one refused, none written
        for path in paths:
            streams.append(open_new(path, overwrite))
        for plot, path, stream in zip(chosen, paths, streams, strict=True):
            draw(plot, runs, stream, path.suffix, size, top)
            stream.close()
    except BaseException:
        for stream, path in zip(streams, paths, strict=False):
            discard(stream, path)
        raise
    return paths
