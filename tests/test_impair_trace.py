"""What the link did, datagram by datagram: ``impair --pcap`` read back with tshark agrees with
the proxy's summary exactly and carries the payloads as sent; ``impair --record``'s intervals
add up to the same; named links (``--profile``) are sets of the options, overridable."""

from __future__ import annotations

import asyncio
import collections
import json
import shutil
import socket
import subprocess
from pathlib import Path
from typing import cast

import pytest

from support.waiting import eventually
from tests.helpers import LOOPBACK, free_udp_port
from udpchat import Server, ServerConfig
from udpchat.cli import main
from udpchat.impair import ImpairProxy, proxy_config
from udpchat.impair.link import Link
from udpchat.impair.profiles import PROFILES, profile_table
from udpchat.impair.spec import Direction, Impairment
from udpchat.impair.trace import Capture, Tracer, corrupted_byte, drop_comment
from udpchat.record import MIN_MAX_BYTES, RecordOptions, RecordWriter
from udpchat.report import impair_report, impair_summary
from udpchat.settings import ConfigError

FATE_COMMENTS = {
    "dropped_loss": "lost (",
    "dropped_rate": "dropped: rate queue full",
    "dropped_full": "dropped: link full",
    "duplicated": "duplicate of #",
    "reordered": "reordered: sent after #",
    "corrupted": "corrupted: byte ",
}
"""Each counter of the proxy's summary, and what a packet's comment says for it."""


def test_every_profile_is_a_valid_link_and_options_beside_it_override_it() -> None:
    for profile in PROFILES:
        config = proxy_config(profile=profile.name)
        assert config.up == config.down and config.up.active, profile.name
    config = proxy_config(profile="satellite", loss=["up:2%"], delay_s=["300ms"])
    assert (config.up.loss, config.down.loss) == (0.02, 0.005)
    assert config.up.delay_s == config.down.delay_s == 0.3
    assert config.up.jitter_s == 0.01  # the profile's, where nothing overrides it
    with pytest.raises(ConfigError, match="profile: must be one of lan, wifi, 3g"):
        proxy_config(profile="dialup")
    with pytest.raises(ConfigError, match=r"burst: .* \(or write off: no bursts\)"):
        proxy_config(profile="wifi", loss=["0"])  # the profile's bursts need its loss
    config = proxy_config(profile="wifi", loss=["0"], burst=["off"])
    assert (config.up.loss, config.up.burst, config.up.delay_s) == (0.0, None, 0.005)


def test_profile_list_shows_each_profile_its_options_and_its_source(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(["impair", "--profile", "list"]) == 0
    shown = capsys.readouterr().out
    assert shown.splitlines() == profile_table()
    for profile in PROFILES:
        assert f"{profile.name}  " in shown and profile.written() in shown
        assert f"{profile.name}: {profile.source}" in shown


def test_a_fate_is_said_in_words() -> None:
    assert drop_comment("dropped_loss", bursty=False) == "lost (loss)"
    assert drop_comment("dropped_loss", bursty=True) == "lost (burst)"
    assert drop_comment("dropped_rate", bursty=False) == "dropped: rate queue full"
    assert corrupted_byte(b"abcd", b"abXd") == 2
    assert corrupted_byte(b"abcd", b"abcd") is None


def read_capture(path: Path) -> list[tuple[int, str, bytes, str]]:
    """(frame, comment, UDP payload, direction) of every packet, as tshark reads them."""
    result = subprocess.run(
        ["tshark", "-r", str(path), "-T", "fields", "-E", "separator=|",
         "-e", "frame.number", "-e", "frame.comment", "-e", "udp.payload",
         "-e", "frame.p2p_dir"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    rows = []
    for line in result.stdout.splitlines():
        frame, comment, payload, direction = line.split("|")
        rows.append((int(frame), comment, bytes.fromhex(payload), direction))
    return rows


@pytest.mark.skipif(shutil.which("tshark") is None, reason="tshark is not installed")
async def test_the_capture_and_the_record_agree_with_the_summary_exactly(tmp_path: Path) -> None:
    pcap, record = tmp_path / "link.pcapng", tmp_path / "link.jsonl"
    sent = [f"ana: pesan ke-{counter}".encode() for counter in range(1, 301)]
    echo = ServerConfig(host=LOOPBACK, port=0, echo=True, echo_rate_per_s=10_000)
    async with Server(echo, lambda message: None) as server:
        config = proxy_config(
            f"{LOOPBACK}:0", to=f"{LOOPBACK}:{server.address[1]}", loss=["10%"],
            burst=["up:3"], duplicate=["5%"], reorder=["5%"], corrupt=["3%"], delay_s=["2ms"],
            rate=["down:5/s"], rate_queue=["down:1"], reorder_hold_s=["50ms"], seed=11,
        )  # fmt: skip
        proxy = ImpairProxy(
            config,
            record=RecordOptions(record, interval_s=0.05),
            pcap=RecordOptions(pcap),
        )
        async with proxy:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
                for payload in sent:
                    client.sendto(payload, proxy.address)

                def settled() -> bool:
                    stats = proxy.stats()
                    echoed = server.stats().echo
                    return (
                        stats.received.get("up") == len(sent)
                        and stats.queued == 0
                        and echoed is not None
                        # an echo the client's socket had no room for is the kernel's drop
                        and stats.received.get("down", 0) + stats.kernel_drops.get("down", 0)
                        == echoed.echoed
                        and server.stats().received == stats.forwarded.get("up")
                    )

                await eventually(settled)
        summary = proxy.stats()
    packets = await asyncio.to_thread(read_capture, pcap)
    assert [frame for frame, *_ in packets] == list(range(1, len(packets) + 1))
    for direction, inbound in ((Direction.UP, "1"), (Direction.DOWN, "0")):
        comments = [comment for _, comment, _, way in packets if way == inbound]
        for counter, words in FATE_COMMENTS.items():
            said = sum(words in comment for comment in comments)
            assert said == getattr(summary, counter)[direction.value], (counter, direction)
        received = summary.received[direction.value]
        assert len(comments) == received + summary.duplicated[direction.value]
    up_originals = [
        data for _, comment, data, way in packets if way == "1" and "duplicate" not in comment
    ]
    assert sorted(up_originals) == sorted(sent)  # as ana sent them, lost ones included
    assert summary.dropped_loss["up"] and summary.duplicated["up"] and summary.reordered["up"]
    assert summary.corrupted["up"] + summary.corrupted["down"] and summary.dropped_rate["down"]
    intervals = [json.loads(line) for line in record.read_text().splitlines()]
    intervals = [r for r in intervals if r["type"] == "interval"]
    per_client: collections.Counter[str] = collections.Counter()
    for interval in intervals:
        for row in interval["clients"]:
            for fate in ("received", "lost", "duplicated", "reordered", "corrupted"):
                per_client[f"{fate}.{row['direction']}"] += row[fate]
    for name, fate in (("received", "received"), ("dropped_loss", "lost"),
                       ("duplicated", "duplicated"), ("reordered", "reordered"),
                       ("corrupted", "corrupted")):  # fmt: skip
        for way in ("up", "down"):
            total = sum(r["deltas"][f"{name}.{way}"] for r in intervals)
            assert total == per_client[f"{fate}.{way}"] == getattr(summary, name)[way]


def test_capture_and_record_files_are_refused_as_any_record_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    existing = tmp_path / "exists"
    existing.write_bytes(b"keep")
    assert main(["impair", "--listen", f"{LOOPBACK}:0", "--pcap", str(tmp_path)]) == 2
    assert "--pcap: " in capsys.readouterr().err
    assert main(["impair", "--listen", f"{LOOPBACK}:0", "--record", str(existing)]) == 2
    assert "--record: " in capsys.readouterr().err
    assert existing.read_bytes() == b"keep"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["exists"]


@pytest.mark.parametrize(
    ("arguments", "named"),
    [
        (["--pcap", "-"], "--pcap: cannot be '-'"),
        (["--pcap", "x.pcapng", "--pcap-max-bytes", "10"], "--pcap-max-bytes: must be at least"),
        (["--pcap-max-bytes", "10"], "--pcap-max-bytes: must be at least"),
        (["--record-max-bytes", "10"], "--record-max-bytes: must be at least"),
    ],
)
def test_a_capture_option_out_of_range_is_named_as_given(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], arguments: list[str], named: str
) -> None:
    arguments = [str(tmp_path / a) if a.endswith(".pcapng") else a for a in arguments]
    assert main(["impair", "--listen", f"{LOOPBACK}:0", *arguments]) == 2
    assert named in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


class Packets:
    """The capture's writer, as the tracer sees it: keeps what it is given."""

    def __init__(self) -> None:
        self.records: list[dict[str, object]] = []

    def put(self, record: dict[str, object]) -> bool:
        self.records.append(record)
        return True


CLIENT = ("127.0.0.1", 40000)
SERVER = ("127.0.0.1", 5002)


def tracer(packets: Packets, *, bursty: bool = False) -> Tracer[tuple[str, int]]:
    capture = Capture(cast(RecordWriter, packets), wall_offset_s=0.0)
    return Tracer(
        Direction.UP, lambda tag: (tag, SERVER), lambda tag: tag,
        bursty=bursty, intervals=None, capture=capture,
    )  # fmt: skip


def test_the_capture_is_in_time_order_whatever_was_dropped_or_delayed() -> None:
    """Each packet at the time the link was done with it (sent on, or dropped as it was
    read): a capture in the order of its times, as Wireshark expects one (a dropped one at its
    arrival, before those delayed ahead of it, made the times go back)."""
    packets = Packets()
    link: Link[tuple[str, int]] = Link(
        Impairment(loss=0.3, delay_s=0.01, jitter_s=0.005), 5, Direction.UP,
        observer=tracer(packets),
    )  # fmt: skip
    for index in range(200):
        arrived = index * 0.002
        link.take([(b"ana: pesan ke-%d" % (index + 1), CLIENT, arrived)], arrived + 0.001)
        link.release(arrived + 0.0015)
    link.release(1.0)
    times = [cast(float, record["time_s"]) for record in packets.records]
    assert len(times) == 200 and any("lost" in str(r["comment"]) for r in packets.records)
    assert times == sorted(times)


def test_a_reordered_packet_is_said_to_follow_one_that_was_sent() -> None:
    """``reordered: sent after #M`` names the packet its client sent last, never one the link
    dropped in between."""
    packets = Packets()
    trace = tracer(packets)
    for number in (1, 2, 3):
        trace.taken(number, b"ana: pesan ke-%d" % number, CLIENT, 0.0)
    trace.sent(2, b"ana: pesan ke-2", CLIENT, False, 0.1)  # frame 1, overtaking 1
    trace.dropped(3, "dropped_loss", 0.2)  # frame 2
    trace.reordered(1)
    trace.sent(1, b"ana: pesan ke-1", CLIENT, False, 0.3)  # frame 3
    assert [record["comment"] for record in packets.records] == [
        "delayed 100.0 ms",
        "lost (loss)",
        "reordered: sent after #1; delayed 300.0 ms",
    ]
    assert [record["time_s"] for record in packets.records] == [0.1, 0.2, 0.3]


async def test_a_capture_at_its_bound_says_so_beside_the_summary(tmp_path: Path) -> None:
    """A capture that stopped at --pcap-max-bytes holds fewer packets than the summary
    counts: the proxy's report says so on a line of its own, after the summary."""
    pcap = tmp_path / "bounded.pcapng"
    config = proxy_config(f"{LOOPBACK}:0", to=f"{LOOPBACK}:{free_udp_port()}")
    proxy = ImpairProxy(config, pcap=RecordOptions(pcap, max_bytes=MIN_MAX_BYTES))
    async with proxy:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
            for sent in range(100, 1001, 100):  # a hundred at a time: within the buffer
                for counter in range(sent - 99, sent + 1):
                    client.sendto(b"ana: pesan ke-%d" % counter, proxy.address)
                await eventually(lambda: proxy.stats().received.get("up") == sent)  # noqa: B023
    stats = proxy.stats()
    assert stats.capture is not None and stats.capture.not_written.get("max_bytes")
    report = impair_report(stats)
    summary = impair_summary(stats)
    assert report[: len(summary)] == summary
    more = report[len(summary) :]
    skipped = stats.capture.not_written["max_bytes"]
    assert more == [f"pcap: not_written={skipped} (max_bytes={skipped})"]
    assert pcap.stat().st_size <= MIN_MAX_BYTES
