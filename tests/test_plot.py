"""``udpchat plot``: the data series behind each figure, exactly; each figure a valid image of
the size asked for, the same bytes for the same runs; and one line, exit 2, for a file it
cannot read (exit 3 without matplotlib)."""

from __future__ import annotations

import json
import math
import re
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from support.waiting import eventually
from tests.helpers import LOOPBACK
from tests.test_record import User
from udpchat import Server, ServerConfig
from udpchat.cli import main
from udpchat.plot import (
    Cdf,
    PlotName,
    RecordFormatError,
    Run,
    compare,
    default_plots,
    jitter_cdf,
    load_run,
    loss_run_shares,
    output_paths,
    plot_runs,
    rtt_cdf,
    timeseries,
    total_loss_runs,
)

NAN = math.nan


def row(user: str, received: int, lost: int, jitter_s: float, **more: Any) -> dict[str, Any]:
    return {
        "sender": f"10.0.0.1:{ord(user[0])}" if user else "",
        "username": user,
        "received": received,
        "lost": lost,
        "duplicates": more.get("duplicates", 0),
        "reordered": 0,
        "late": 0,
        "jitter_s": jitter_s,
        "loss_runs": more.get("loss_runs", {}),
    }


def rest(received: int = 0, lost: int = 0) -> dict[str, Any]:
    return {**row("", received, lost, 0.0), "senders": 1 if received else 0}


def write(path: Path, kind: str, label: str, intervals: list[dict[str, Any]]) -> Path:
    lines = [{"type": "header", "schema": 1, "kind": kind, "label": label, "config": {}}]
    lines += [{"type": "interval", **interval} for interval in intervals]
    lines.append({"type": "end", "t_s": 9.0, "reason": "stopped"})
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


@pytest.fixture
def runs(tmp_path: Path) -> dict[str, Path]:
    steady = write(
        tmp_path / "steady.jsonl",
        "serve",
        "--loss 10%",
        [
            {
                "t_s": 1.0, "elapsed_s": 1.0, "loss_runs": {"1": 2},
                "senders": [row("ana", 9, 1, 0.002, loss_runs={"1": 1}), row("budi", 4, 0, 0.004)],
                "rest": rest(3, 1),
            },
            {
                "t_s": 2.0, "elapsed_s": 0.5, "loss_runs": {"1": 1, "3": 1},
                "senders": [row("ana", 6, 4, 0.001, duplicates=1, loss_runs={"1": 1, "3": 1})],
                "rest": rest(),
            },
        ],
    )  # fmt: skip
    bursty = write(
        tmp_path / "bursty.jsonl",
        "serve",
        "--loss 10% --burst 4",
        [
            {
                "t_s": 1.0, "elapsed_s": 1.0, "loss_runs": {"4": 1},
                "senders": [row("ana", 6, 4, 0.003)], "rest": rest(),
            },
        ],
    )  # fmt: skip
    rtt = write(
        tmp_path / "rtt.jsonl",
        "send",
        "rtt",
        [
            {"t_s": 1.0, "elapsed_s": 1.0, "rtt_ms": [41.5, 39.0]},
            {"t_s": 2.0, "elapsed_s": 1.0, "rtt_ms": [45.25]},
        ],
    )
    return {"steady": steady, "bursty": bursty, "rtt": rtt}


def same(actual: list[float], expected: list[float]) -> bool:
    """Equal, NaN where NaN is expected."""
    return len(actual) == len(expected) and all(
        (math.isnan(a) and math.isnan(b)) or a == b for a, b in zip(actual, expected, strict=True)
    )


def test_the_data_series_behind_each_figure(runs: dict[str, Path]) -> None:
    steady, bursty, rtt = (load_run(runs[name]) for name in ("steady", "bursty", "rtt"))
    ana, budi = timeseries(steady, top=5)
    assert (ana.label, budi.label) == ("ana 10.0.0.1:97", "budi 10.0.0.1:98")
    assert ana.t_s == [1.0, 2.0] and ana.rate_per_s == [9.0, 12.0]
    assert same(ana.loss_percent, [10.0, 100 * 4 / 9]) and ana.jitter_ms == [2.0, 1.0]
    assert budi.rate_per_s == [4.0, 0.0]
    assert same(budi.loss_percent, [0.0, NAN]) and same(budi.jitter_ms, [4.0, NAN])
    assert [series.label for series in timeseries(steady, top=1)] == ["ana 10.0.0.1:97"]
    assert total_loss_runs(steady) == {1: 3, 3: 1}
    assert loss_run_shares(steady) == {1: 0.75, 3: 0.25}
    assert loss_run_shares(bursty) == {4: 1.0}
    assert jitter_cdf(steady) == Cdf("--loss 10%", [1.0, 2.0, 4.0], [1 / 3, 2 / 3, 1.0])
    assert rtt_cdf(rtt) == Cdf("rtt", [39.0, 41.5, 45.25], [1 / 3, 2 / 3, 1.0])
    steady_loss = compare(steady)
    assert steady_loss.label == "--loss 10%" and steady_loss.t_s == [1.0, 2.0]
    assert steady_loss.loss_percent == [100 * 2 / 18, 100 * 4 / 9]
    late = Run(steady.path, "serve", "late", {}, [{**steady.intervals[1], "t_s": 9.0}])
    late.intervals.insert(0, {**steady.intervals[0], "t_s": 8.5, "senders": [], "rest": rest()})
    assert compare(late).t_s == [0.5]  # from the start of its first interval with messages
    assert default_plots([steady, rtt]) == [
        PlotName.TIMESERIES,
        PlotName.LOSS_RUNS,
        PlotName.JITTER_CDF,
        PlotName.RTT_CDF,
    ]
    assert default_plots([steady, bursty])[-1] is PlotName.COMPARE
    assert output_paths(Path("a/run.png"), [PlotName.RTT_CDF]) == [Path("a/run.png")]
    assert output_paths(Path("a/run.svg"), [PlotName.LOSS_RUNS, PlotName.COMPARE]) == [
        Path("a/run-loss-runs.svg"),
        Path("a/run-compare.svg"),
    ]


def image_size(path: Path) -> tuple[float, float]:
    """The size an image file declares: PNG pixels, SVG or PDF points."""
    data = path.read_bytes()
    if path.suffix == ".png":
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
        width, height = struct.unpack(">II", data[16:24])
        return width, height
    if path.suffix == ".svg":
        found = re.search(rb'<svg [^>]*width="([\d.]+)pt" height="([\d.]+)pt"', data)
        assert found is not None and data.rstrip().endswith(b"</svg>")
        return float(found[1]), float(found[2])
    assert data.startswith(b"%PDF-") and data.rstrip().endswith(b"%%EOF")
    box = re.search(rb"/MediaBox \[ *0 0 ([\d.]+) ([\d.]+) *\]", data)
    assert box is not None
    return float(box[1]), float(box[2])


def test_each_figure_is_an_image_of_the_size_asked_for_and_the_same_each_time(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    files = [runs["steady"], runs["bursty"], runs["rtt"]]
    out = tmp_path / "out" / "lab.png"
    out.parent.mkdir()
    written = plot_runs(files, out, size=(400, 300))
    assert [path.name for path in written] == [
        "lab-timeseries.png",
        "lab-loss-runs.png",
        "lab-jitter-cdf.png",
        "lab-rtt-cdf.png",
        "lab-compare.png",
    ]
    assert all(image_size(path) == (400, 300) for path in written)
    for suffix in (".svg", ".pdf"):
        (drawn,) = plot_runs(files, out.with_suffix(suffix), [PlotName.RTT_CDF], size=(400, 300))
        assert image_size(drawn) == (288.0, 216.0)  # points, 72 an inch, at 100 pixels an inch
        first = drawn.read_bytes()
        plot_runs(files, drawn, [PlotName.RTT_CDF], size=(400, 300), overwrite=True)
        assert drawn.read_bytes() == first  # deterministic: no dates, fixed ids
    again = plot_runs(files, tmp_path / "again.png", [PlotName.TIMESERIES], size=(400, 300))
    assert again[0].read_bytes() == written[0].read_bytes()


async def test_a_recorded_server_run_plots(tmp_path: Path) -> None:
    """The writer and the reader agree: a real server's record reads back into the series."""
    path = tmp_path / "real.jsonl"
    config = ServerConfig(host=LOOPBACK, port=0, record=path, record_interval_s=0.05)
    ana = User("ana")
    async with Server(config, lambda message: None) as server:
        ana.send(server.address, 1, 2, 5, 6)
        await eventually(lambda: server.stats().handled == 4)
    ana.close()
    run = load_run(path)
    (series,) = timeseries(run)
    elapsed = [interval["elapsed_s"] for interval in run.intervals]
    assert round(sum(r * e for r, e in zip(series.rate_per_s, elapsed, strict=True))) == 4
    assert total_loss_runs(run) == {2: 1}


SERVE = b'{"type": "header", "schema": 1, "kind": "serve"}\n'
SEND = b'{"type": "header", "schema": 1, "kind": "send"}\n'


def interval(**fields: Any) -> bytes:
    """A serve interval line, with ``fields`` in place of a valid one's."""
    record = {"type": "interval", "t_s": 1, "elapsed_s": 1, "senders": [], "rest": rest()}
    return (json.dumps({**record, "loss_runs": {}, **fields}) + "\n").encode()


@pytest.mark.parametrize(
    ("content", "line", "why"),
    [
        (b"", 1, "the file is empty"),
        (b"hello\n", 1, "not JSON: not a udpchat record"),
        (b'{"type": "interval"}\n', 1, "the first line is no header"),
        (b'{"type": "header", "schema": 2}\n', 1, "schema 2 is newer than this udpchat reads"),
        (b"t_s,time,row\n1,2,3\n", 1, "a CSV record is for spreadsheets"),
        (b'{"type": "header", "schema": 1}\n{"type": "inter', 2, "truncated"),
        (b'{"type": "header", "schema": 1}\n[1]\n', 2, "not a udpchat record (no type)"),
        (b'{"type": "header", "schema": 1}\n{"type": "interval"}\n', 2, "without t_s"),
        (b"hello", 1, "not JSON: not a udpchat record"),
        (SERVE + b'{"type": "interval", "t_s": NaN, "elapsed_s": 1}\n', 2, "without t_s"),
        (SERVE + b'{"type": "interval", "t_s": 1, "elapsed_s": 1}\n', 2, "senders"),
        (SERVE + interval(senders=[{"x": 1}]), 2, "senders"),
        (SERVE + interval(senders=[{**row("ana", 1, 0, 0.0), "jitter_s": "x"}]), 2, "senders"),
        (SERVE + interval(rest={"received": 1}), 2, "rest"),
        (SERVE + interval(loss_runs={"x": "y"}), 2, "loss_runs"),
        (SERVE + interval(loss_runs={"0": 1}), 2, "loss_runs"),
        (SEND + b'{"type": "interval", "t_s": 1, "elapsed_s": 1, "rtt_ms": ["a"]}\n', 2, "rtt_ms"),
    ],
)
def test_a_file_plot_cannot_read_is_one_line_naming_it_and_the_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], content: bytes, line: int, why: str
) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_bytes(content)
    assert main(["plot", str(path), "-o", str(tmp_path / "x.png")]) == 2
    (said,) = capsys.readouterr().err.splitlines()
    assert said.startswith(f"udpchat plot: {path}, line {line}: ") and why in said, said
    assert not (tmp_path / "x.png").exists()


def test_outputs_are_refused_as_record_files_are(
    runs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    existing = tmp_path / "exists.png"
    existing.write_bytes(b"keep")
    arguments = ["plot", str(runs["rtt"]), "--plot", "rtt-cdf"]
    assert main([*arguments, "-o", str(existing)]) == 2
    assert "exists; --force overwrites it" in capsys.readouterr().err
    assert existing.read_bytes() == b"keep"
    assert main([*arguments, "-o", str(tmp_path / "x.jpg")]) == 2
    assert "must end in .png, .svg or .pdf" in capsys.readouterr().err
    assert main([*arguments, "-o", str(tmp_path / "x.png"), "--size", "10x10"]) == 2
    assert "--size: must be WIDTHxHEIGHT, each 200 to 8000, not '10x10'" in capsys.readouterr().err
    assert main(["plot", str(runs["rtt"]), "--plot", "timeseries", "-o", str(existing)]) == 2
    assert "timeseries needs a file from 'serve --record'" in capsys.readouterr().err
    several = tmp_path / "several.png"
    (tmp_path / "several-loss-runs.png").write_bytes(b"keep")
    arguments = ["plot", str(runs["steady"]), "--plot", "timeseries", "--plot", "loss-runs"]
    assert main([*arguments, "-o", str(several)]) == 2
    assert "several-loss-runs.png exists; --force overwrites it" in capsys.readouterr().err
    assert not (tmp_path / "several-timeseries.png").exists()  # none written, not the first


def test_without_matplotlib_plot_names_the_extra_and_exits_3(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "x.png"
    program = (
        "import sys; sys.modules['matplotlib'] = None\n"
        "from udpchat.cli import main\n"
        f"sys.exit(main(['plot', {str(runs['rtt'])!r}, '-o', {str(out)!r}]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", program], check=False, capture_output=True, text=True
    )
    assert result.returncode == 3
    assert result.stderr.splitlines() == [
        "udpchat: plot needs matplotlib: pip install 'udpchat[plot]'"
    ]
    assert not out.exists()


def test_a_line_is_read_no_further_than_its_bound(tmp_path: Path) -> None:
    """A file with no end of line (here an endless one) is refused at the bound, not read
    into memory whole."""
    with pytest.raises(RecordFormatError, match=r"/dev/zero, line 1: a line longer than"):
        load_run(Path("/dev/zero"))


@pytest.mark.parametrize(
    ("kind", "intervals", "plot", "why"),
    [
        ("serve", [{"t_s": 1.0, "elapsed_s": 1.0, "senders": [], "rest": rest(), "loss_runs": {}}],
         "timeseries", "timeseries: no messages in"),
        ("send", [{"t_s": 1.0, "elapsed_s": 1.0}], "rtt-cdf",
         "rtt-cdf: no round trips (recorded by 'send --rtt --record') in"),
        ("send", [{"t_s": 1.0, "elapsed_s": 1.0, "rtt_ms": []}], "rtt-cdf",
         "rtt-cdf: no round trips (recorded by 'send --rtt --record') in"),
    ],
)  # fmt: skip
def test_a_run_with_nothing_to_draw_is_said_not_drawn_empty(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    kind: str,
    intervals: list[dict[str, Any]],
    plot: str,
    why: str,
) -> None:
    """An idle server's run, ``send --record`` without ``--rtt``: by default no figure (one
    line, exit 2), and a figure asked for says why it is not drawn, rather than an empty
    figure, a warning, or a traceback."""
    path = write(tmp_path / "idle.jsonl", kind, "idle", intervals)
    out = tmp_path / "x.png"
    assert main(["plot", str(path), "-o", str(out)]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "udpchat plot: no figure has data in these runs"
    ]
    assert main(["plot", str(path), "--plot", plot, "-o", str(out)]) == 2
    (said,) = capsys.readouterr().err.splitlines()
    assert said.startswith(f"udpchat plot: {why} {path}"), said
    assert not out.exists()


def test_the_default_figures_are_those_the_runs_have_data_for(runs: dict[str, Path]) -> None:
    steady, bursty, rtt = (load_run(runs[name]) for name in ("steady", "bursty", "rtt"))
    idle = Run(steady.path, "serve", "idle", {}, [{**steady.intervals[0], "senders": []}])
    idle.intervals[0]["rest"] = rest()
    assert default_plots([steady, idle]) == default_plots([steady])
    assert PlotName.COMPARE not in default_plots([steady, idle])
    no_rtt = Run(rtt.path, "send", "no rtt", {}, [{"t_s": 1.0, "elapsed_s": 1.0}])
    assert default_plots([no_rtt, bursty]) == default_plots([bursty])
