"""``--record``: a run's time series in a bounded file, written off the event loop; what it
refuses, where it stops, and that its intervals add up to the run's summary."""

from __future__ import annotations

import csv
import errno
import json
import logging
import re
import signal
import socket
from pathlib import Path
from typing import Any

import pytest

from support.summary import summary_counts
from support.waiting import eventually
from tests.helpers import LOOPBACK, free_udp_port, raw_send, start_cli, start_cli_server
from udpchat import Server, ServerConfig
from udpchat.cli import main
from udpchat.record import (
    CSV_COLUMNS,
    END_RESERVE_BYTES,
    MAX_LABEL_LENGTH,
    RecordFormat,
    RecordWriter,
    csv_rows,
    jsonl,
)


def records(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def intervals_with_data(path: Path) -> int:
    if not path.exists():
        return 0
    lines = path.read_text().splitlines()
    complete = [json.loads(line) for line in lines if line.endswith("}")]
    return sum(1 for r in complete if r["type"] == "interval" and r["deltas"]["handled"])


def seed(name: str, *counters: int) -> list[bytes]:
    return [f"{name}: pesan ke-{counter}".encode() for counter in counters]


class User:
    """One sender: one socket, so one source port, across sends."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.socket = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)

    def send(self, address: tuple[str, int], *counters: int) -> None:
        for payload in seed(self.name, *counters):
            self.socket.sendto(payload, address)

    def close(self) -> None:
        self.socket.close()


async def test_a_recorded_run_adds_up_to_its_summary(tmp_path: Path) -> None:
    path = tmp_path / "run.jsonl"
    config = ServerConfig(
        host=LOOPBACK, port=0, record=path, record_interval_s=0.05, record_label="lossy"
    )
    alice, bob = User("alice"), User("bob")
    async with Server(config, lambda message: None) as server:
        alice.send(server.address, 1, 2, 4, 5)
        bob.send(server.address, 1, 2, 3, 3)
        await eventually(lambda: intervals_with_data(path) >= 1)
        alice.send(server.address, 9, 10)
        bob.send(server.address, 4, 5)
        await eventually(lambda: server.stats().handled == 12)
    alice.close()
    bob.close()
    final = server.stats()
    written = records(path)
    head, *middle, end = written
    assert head["type"] == "header" and head["schema"] == 1 and head["kind"] == "serve"
    assert head["label"] == "lossy" and head["config"]["record"] == str(path)
    described = {entry["key"] for entry in head["counters"]}
    assert {"received", "delivery.lost", "dropped.<reason>", "record.records"} <= described
    assert end == {"type": "end", "t_s": end["t_s"], "reason": "stopped"}
    intervals = [r for r in middle if r["type"] == "interval"]
    assert sum(1 for r in intervals if r["deltas"]["handled"]) >= 2
    assert sum(r["deltas"]["delivery.lost"] for r in intervals) == final.delivery.lost == 4
    assert sum(r["deltas"]["received"] for r in intervals) == final.received == 12
    runs: dict[str, int] = {}
    received: dict[str, int] = {}
    for interval in intervals:
        for row in interval["senders"]:
            received[row["username"]] = received.get(row["username"], 0) + row["received"]
        for length, count in interval["loss_runs"].items():
            runs[length] = runs.get(length, 0) + count
    assert runs == {"1": 1, "3": 1}  # 3 skipped, then 6 to 8
    assert received == {"alice": 6, "bob": 6}
    assert intervals[-1]["totals"]["delivery.duplicates"] == final.delivery.duplicates == 1
    events = [(r["event"], r["username"]) for r in middle if r["type"] == "event"]
    assert sorted(events) == [("sender_first", "alice"), ("sender_first", "bob")]
    assert final.record is not None and final.record.records == len(written)
    assert final.record.written_bytes == path.stat().st_size


async def test_csv_has_a_row_per_sender_and_interval(tmp_path: Path) -> None:
    path = tmp_path / "run.csv"
    config = ServerConfig(
        host=LOOPBACK,
        port=0,
        record=path,
        record_format=RecordFormat.CSV,
        record_interval_s=0.05,
        record_senders=1,
    )
    async with Server(config, lambda message: None) as server:
        raw_send(server.address, *seed("alice", 1, 3), *seed("bob", 1))
        await eventually(lambda: server.stats().handled == 3)
    with path.open(newline="") as file:
        rows = list(csv.DictReader(file))
        assert tuple(rows[0]) == CSV_COLUMNS
    senders = [row for row in rows if row["row"] == "sender"]
    rests = [row for row in rows if row["row"] == "rest"]
    assert [(r["username"], r["received"], r["lost"], r["loss_runs"]) for r in senders] == [
        ("alice", "2", "1", "1:1")
    ]
    assert [(r["sender"], r["received"]) for r in rests] == [("1", "1")]
    assert senders[0]["loss_percent"] == "33.333"
    assert {row["event"] for row in rows if row["row"] == "event"} == {"sender_first"}


def test_a_username_a_spreadsheet_would_run_as_a_formula_is_written_as_text() -> None:
    """A username comes from any datagram: in a CSV cell, '=HYPERLINK(...)' would be a formula
    to the spreadsheet that opens it (CSV injection), so a cell starting with = + - or @
    gets a ' before it, as OWASP advises."""
    names = ['=HYPERLINK("http://x")', "+1", "-2", "@SUM(A1)", "ana"]
    rows = [
        {"sender": "10.0.0.1:9", "username": name, "received": 1, "lost": 0, "duplicates": 0,
         "reordered": 0, "late": 0, "jitter_s": 0.0, "loss_runs": {}}
        for name in names
    ]  # fmt: skip
    interval = {
        "type": "interval", "t_s": 1.0, "time": "now", "senders": rows,
        "rest": {**rows[0], "senders": 0},
    }  # fmt: skip
    event = {"type": "event", "t_s": 1.0, "event": "sender_first", "sender": "10.0.0.1:9"}
    text = (csv_rows(interval) + csv_rows({**event, "username": names[0]})).decode()
    written = list(csv.DictReader([",".join(CSV_COLUMNS), *text.splitlines()]))
    assert [row["username"] for row in written] == [*(f"'{name}" for name in names[:-1]), "ana",
                                                   f"'{names[0]}"]  # fmt: skip
    assert {row["sender"] for row in written} == {"10.0.0.1:9"}


def test_a_full_file_stops_recording_within_its_bound_and_says_why(tmp_path: Path) -> None:
    path = tmp_path / "bounded.jsonl"
    max_bytes = 2000
    writer = RecordWriter(path.open("wb"), path, max_bytes=max_bytes)
    writer.start({"type": "header"})
    record = {"type": "interval", "filler": "x" * 100}
    accepted = [writer.put(record) for _ in range(40)]
    assert writer.close()
    written = records(path)
    assert path.stat().st_size <= max_bytes
    assert written[-1]["type"] == "end" and written[-1]["reason"] == "max_bytes"
    size_of_one = len(jsonl(record))
    fits = (max_bytes - END_RESERVE_BYTES - len(jsonl({"type": "header"}))) // size_of_one
    assert len(written) == 1 + fits + 1
    stats = writer.stats()
    assert not stats.recording and stats.records == len(written)
    assert stats.not_written["max_bytes"] == sum(accepted) - fits
    assert not writer.put(record) and writer.stats().not_written["max_bytes"] == 41 - fits


class FullDisk:
    """A stream whose writes fail as a full disk's do."""

    def write(self, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    def flush(self) -> None:
        """Nothing is buffered."""

    def close(self) -> None:
        """Nothing to close."""


def test_a_failed_write_stops_recording_counted_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    writer = RecordWriter(FullDisk(), tmp_path / "x", max_bytes=10**6)  # type: ignore[arg-type]
    with caplog.at_level(logging.ERROR, logger="udpchat.record"):
        writer.start({"type": "header"})
    assert not writer.put({"type": "interval"})
    assert writer.close()
    stats = writer.stats()
    assert not stats.recording and stats.records == 0
    assert stats.not_written["write_failed"] >= 2
    assert [r.getMessage() for r in caplog.records] == [
        f"recording stopped: cannot write {tmp_path / 'x'}: No space left on device"
    ]


def test_records_beyond_the_queue_are_counted_not_waited_for(tmp_path: Path) -> None:
    path = tmp_path / "q.jsonl"
    writer = RecordWriter(path.open("wb"), path, max_bytes=10**6, queue_records=3)
    accepted = [writer.put({"type": "event"}) for _ in range(5)]  # the thread has not started
    assert accepted == [True, True, True, False, False]
    assert writer.stats().not_written["queue_full"] == 2
    writer.start({"type": "header"})
    assert writer.close()
    assert len(records(path)) == 1 + 3 + 1


@pytest.mark.parametrize(
    ("target", "code", "says"),
    [
        ("{dir}", 2, "is a directory"),
        ("{dir}/exists", 2, "exists; --force overwrites it"),
        ("{dir}/missing/run.jsonl", 3, "No such file or directory"),
        ("-", 2, "cannot be '-': standard output carries the messages"),
    ],
)
def test_a_record_file_that_cannot_be_right_is_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], target: str, code: int, says: str
) -> None:
    existing = tmp_path / "exists"
    existing.write_text("keep me")
    record = target.format(dir=tmp_path)
    assert main(["serve", "--port", "0", "--record", record]) == code
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 1 and says in lines[0], lines
    prefix = "udpchat serve: " if code == 2 else "udpchat: "  # usage, or the environment
    assert lines[0].startswith(f"{prefix}--record"), lines
    assert existing.read_text() == "keep me"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["exists"]


@pytest.mark.parametrize(
    "command",
    [["serve", "--port", "0"], ["send", "--username", "a", "--count", "1"],
     ["chat", "--username", "a"], ["impair", "--listen", f"{LOOPBACK}:0"]],
)  # fmt: skip
def test_a_label_too_long_is_refused_with_record_or_without(
    capsys: pytest.CaptureFixture[str], command: list[str]
) -> None:
    """As every record option: a wrong value is said at once, not when --record is added."""
    assert main([*command, "--record-label", "x" * (MAX_LABEL_LENGTH + 1)]) == 2
    (said,) = capsys.readouterr().err.splitlines()
    assert f"--record-label: must be at most {MAX_LABEL_LENGTH} characters" in said, said


async def test_a_full_disk_never_stops_the_server() -> None:
    """/dev/full refuses every write with ENOSPC, as a full disk does."""
    port = free_udp_port()
    server = await start_cli(
        "serve", "--host", LOOPBACK, "--port", str(port), "--record", "/dev/full", "--force"
    )
    assert await server.read_stdout_line() == "Server menunggu..."
    raw_send((LOOPBACK, port), *seed("alice", 1, 2, 3))
    for counter in (1, 2, 3):
        assert await server.read_stdout_line() == f"[{LOOPBACK}] alice: pesan ke-{counter}"
    server.signal(signal.SIGINT)
    status, _, stderr = await server.finish()
    assert status == 0, stderr
    assert stderr.count("No space left on device") == 1, stderr
    assert "recording stopped: cannot write /dev/full: No space left on device" in stderr
    assert summary_counts(stderr)["received"] == 3
    assert re.search(r"record: not_written=\d+ \(write_failed=\d+\)", stderr), stderr


async def test_several_processes_record_their_sum(tmp_path: Path) -> None:
    path = tmp_path / "two.jsonl"
    server, port = await start_cli_server(
        "--quiet", "--processes", "2", "--record", str(path), "--record-interval", "0.1"
    )
    raw_send((LOOPBACK, port), *seed("alice", 1, 2, 5))
    raw_send((LOOPBACK, port), *seed("bob", 1, 3))
    await eventually(lambda: intervals_with_data(path) >= 1)
    server.signal(signal.SIGINT)
    status, _, stderr = await server.finish()
    assert status == 0, stderr
    counts = summary_counts(stderr)
    intervals = [r for r in records(path) if r["type"] == "interval"]
    assert sum(r["deltas"]["received"] for r in intervals) == counts["received"] == 5
    assert sum(r["deltas"]["delivery.lost"] for r in intervals) == counts["lost"] == 3
    assert records(path)[-1]["reason"] == "stopped"


async def test_chat_records_what_it_sent_and_what_the_room_confirmed(tmp_path: Path) -> None:
    server, port = await start_cli_server("--relay", "--quiet")
    path = tmp_path / "chat.jsonl"
    chat = await start_cli(
        "chat", "--username", "ana", "--port", str(port), "--record", str(path),
        "--record-interval", "0.1", stdin=b"satu\ndua\n",
    )  # fmt: skip
    status, stdout, stderr = await chat.finish()
    assert status == 0, stderr
    assert stdout.splitlines() == ["Ter kirim: ana: satu", "Ter kirim: ana: dua"]
    head, *middle, end = records(path)
    assert (head["kind"], head["config"]["username"], end["type"]) == ("chat", "ana", "end")
    intervals = [r for r in middle if r["type"] == "interval"]
    assert sum(r["deltas"]["confirmed"] for r in intervals) == 2
    assert intervals[-1]["totals"]["sent"] >= 4  # the join's two, the lines, the leave
    server.signal(signal.SIGINT)
    await server.finish()
