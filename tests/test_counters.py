"""Each counter is declared once, and every view derives from the declaration: a counter with a
value shows in the summary, the status line, the JSON summary and /metrics, and adds up across
processes as its kind says."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import generate_latest
from prometheus_client.registry import CollectorRegistry

from support.waiting import EVENT_TIMEOUT_S, eventually
from tests.helpers import LOOPBACK, assert_balanced, raw_send
from udpchat import Server, ServerConfig
from udpchat.admission import parse_network
from udpchat.counters import (
    COUNT_GROUPS,
    LATENCY_BOUNDS_S,
    AdmissionStats,
    Brief,
    BusStats,
    Counts,
    Declaration,
    DeliveryTotals,
    DropReason,
    EchoStats,
    EndpointStats,
    ImpairStats,
    Kind,
    LatencyHistogram,
    RecordStats,
    RelayStats,
    ServerTally,
    StatsSnapshot,
    Tally,
    WebStats,
    add_up,
    by_reason,
    declarations,
    level,
    total,
)
from udpchat.exposition import StatsCollector
from udpchat.report import (
    LINE_PREFIX,
    format_status,
    impair_status,
    impair_summary,
    json_summary,
    pairs,
    summary_lines,
)


def filled(counts_type: type[Counts], start: int) -> Any:
    """An instance whose every counter has a value of its own, counted from ``start``."""
    values: dict[str, Any] = {}
    for offset, declared in enumerate(declarations(counts_type), start=start):
        if declared.kind is Kind.BY_REASON:
            values[declared.name] = {"some_reason": offset}
        elif declared.kind is Kind.FLAG:
            values[declared.name] = True
        elif declared.kind is not Kind.PART:
            values[declared.name] = offset
    return counts_type(**values)


def every_group_filled() -> StatsSnapshot:
    snapshot: StatsSnapshot = filled(StatsSnapshot, 1000)
    return dataclasses.replace(
        snapshot,
        delivery=filled(DeliveryTotals, 2000),
        relay=filled(RelayStats, 3000),
        bus=filled(BusStats, 4000),
        admission=filled(AdmissionStats, 5000),
        endpoint=filled(EndpointStats, 6000),
        record=filled(RecordStats, 8000),
        echo=filled(EchoStats, 9000),
        web=filled(WebStats, 6500),
    )


def exposition(snapshot: Counts) -> str:
    registry = CollectorRegistry()
    registry.register(StatsCollector(lambda: snapshot))
    return generate_latest(registry).decode()


SERVER_GROUPS = tuple(group for group in COUNT_GROUPS if group is not ImpairStats)


def test_every_server_group_is_in_the_snapshot_and_every_group_declared() -> None:
    groups = {type(group) for group in every_group_filled().groups()}
    assert groups | {StatsSnapshot} == set(SERVER_GROUPS)
    assert set(COUNT_GROUPS) == {*SERVER_GROUPS, ImpairStats}  # the proxy's, apart


def views(counts_type: type[Counts]) -> tuple[Counts, str, str, str, dict[str, Any] | None]:
    """A filled group, with the texts that show it: /metrics, the summary, the status line
    and the JSON summary (the server's), or the proxy's summary and status line."""
    if counts_type is ImpairStats:
        counts = filled(ImpairStats, 7000)
        return (
            counts,
            exposition(counts),
            "\n".join(impair_summary(counts, verbose=True)),
            impair_status(counts, 0.0, verbose=True),
            None,
        )
    snapshot = every_group_filled()
    counts = next(group for group in (snapshot, *snapshot.groups()) if type(group) is counts_type)
    document = json.loads(json_summary([snapshot]))["summary"]
    if counts_type is not StatsSnapshot:
        document = document[next(d.name for d, v in snapshot.items() if v is counts)]
    text = "\n".join(summary_lines([snapshot], verbose=True))
    status = format_status(snapshot, 0.0, verbose=True)
    return counts, exposition(snapshot), text, status, document


@pytest.mark.parametrize("counts_type", COUNT_GROUPS)
def test_every_declared_counter_is_in_the_metrics_and_the_summary(
    counts_type: type[Counts],
) -> None:
    counts, metrics, text, status, document = views(counts_type)
    for declared, value in counts.items():
        if declared.kind is Kind.PART:
            continue
        name = counts.metric_prefix + declared.metric
        total = sum(value.values()) if isinstance(value, dict) else int(value)
        if declared.kind is Kind.BY_REASON:
            sample = f'{name}_total{{{declared.label}="some_reason"}} {total}.0'
            shown = f"{declared.key}={total} (some_reason={total})"
        elif declared.kind in (Kind.LEVEL, Kind.FLAG):
            sample, shown = f"{name} {total}.0", f"{declared.key}={value}".lower()
        else:
            sample, shown = f"{name}_total {total}.0", f"{declared.key}={value}"
        assert sample in metrics, (declared, metrics)
        assert f"# HELP {name}" in metrics and declared.help.split()[0] in metrics
        assert shown in text, (declared, text)
        assert shown in status, (declared, status)
        assert document is None or document[declared.name] == value, declared


def test_a_counter_that_is_not_declared_is_refused_at_once() -> None:
    tally = Tally(RelayStats)
    tally.add("joins")
    with pytest.raises(KeyError):
        tally.add("jions")
    assert tally.snapshot() == RelayStats(joins=1)


def test_the_sum_across_processes_follows_each_counters_kind() -> None:
    one = StatsSnapshot(
        received=3,
        dropped={"empty": 1},
        kernel_drops=2,
        queue_depth=1,
        bus=BusStats(connected=True, published=1, dropped={"malformed": 1}),
    )
    two = StatsSnapshot(
        received=4,
        dropped={"empty": 2, "oversize": 1},
        kernel_drops=None,
        queue_depth=2,
        relay=RelayStats(joins=5),
        bus=BusStats(connected=False, published=2),
    )
    total = add_up([one, two])
    assert (total.received, total.queue_depth) == (7, 3)  # totals and levels add up
    assert total.dropped == {"empty": 3, "oversize": 1}  # reason by reason
    assert total.kernel_drops is None  # unknown in one process: unknown in the sum
    assert total.relay == RelayStats(joins=5)  # a group one process lacks
    assert total.bus == BusStats(connected=False, published=3, dropped={"malformed": 1})
    assert add_up([one]) == one


async def test_a_real_server_reports_every_group_it_runs() -> None:
    """Server, delivery, relay, admission and metrics-endpoint counters, from one server's
    scrape and its stats (the bus's are in test_nats_relay, which runs NATS)."""
    config = ServerConfig(
        host=LOOPBACK,
        port=0,
        relay=True,
        allow=(parse_network("127.0.0.0/8"),),
        rate_limit_per_s=1000,
        metrics_port=0,
        metrics_host=LOOPBACK,
    )
    async with Server(config, lambda message: None) as server:
        raw_send(server.address, b"a: pesan ke-1")
        await eventually(lambda: server.stats().handled == 1)
        stats = server.stats()
        address = server.metrics_address
        assert address is not None
        url = f"http://{LOOPBACK}:{address[1]}/metrics"

        def scrape() -> str:
            with urllib.request.urlopen(url, timeout=EVENT_TIMEOUT_S) as answer:
                return str(answer.read().decode())

        metrics = await asyncio.to_thread(scrape)
    assert stats.relay is not None and stats.admission is not None and stats.endpoint is not None
    assert stats.admission.sources == 1
    for group in stats.groups():
        for declared, _ in group.items():
            assert f"# HELP {group.metric_prefix}{declared.metric}" in metrics, declared
    assert "udpchat_admission_sources 1.0" in metrics


def test_a_declaration_carries_its_counter_and_defaults_key_and_metric_to_its_name() -> None:
    @dataclass(frozen=True, slots=True)
    class Sample(Counts):
        """Declared in the test, so that every run reads its declarations afresh."""

        plain: int = total("Plain.", unit="things")
        renamed: int = level("Renamed.", unit="things", key="shown", metric="exposed")
        reasons: Mapping[str, int] = by_reason("By reason.", unit="things", label="why")

    assert declarations(Sample) == (
        Declaration("plain", "Plain.", "things", Kind.TOTAL, key="plain", metric="plain"),
        Declaration("renamed", "Renamed.", "things", Kind.LEVEL, key="shown", metric="exposed"),
        Declaration(
            "reasons", "By reason.", "things", Kind.BY_REASON, "reasons", "reasons", label="why"
        ),
    )
    assert declarations(Sample) is declarations(Sample)  # read once per class


def test_a_sum_knows_what_every_process_knows_and_keeps_a_group_any_one_has() -> None:
    known, also_known = StatsSnapshot(kernel_drops=2), StatsSnapshot(kernel_drops=3)
    unknown = StatsSnapshot(kernel_drops=None)
    assert add_up([known, also_known]).kernel_drops == 5
    assert add_up([known, unknown]).kernel_drops is None
    assert add_up([unknown, known]).kernel_drops is None
    with_relay = StatsSnapshot(relay=RelayStats(joins=1))
    assert add_up([with_relay, known]).relay == RelayStats(joins=1)
    assert add_up([known, with_relay]).relay == RelayStats(joins=1)


def test_counts_by_reason_add_up_and_a_snapshot_keeps_its_values() -> None:
    tally = Tally(BusStats)
    tally.add_reason("dropped", "malformed")
    tally.add_reason("dropped", "malformed", 2)
    tally.add_reason("dropped", "oversize")
    before = tally.snapshot()
    tally.add_reason("dropped", "oversize")
    assert before.dropped == {"malformed": 3, "oversize": 1}
    assert tally.snapshot().dropped == {"malformed": 3, "oversize": 2}


def test_latency_histograms_add_bucket_by_bucket_and_only_alike() -> None:
    bounds_s = (0.1, 0.2)
    one = LatencyHistogram((1, 2, 3), 0.5, bounds_s)
    two = LatencyHistogram((4, 5, 6), 0.25, bounds_s)
    assert one + two == LatencyHistogram((5, 7, 9), 0.75, bounds_s)
    with pytest.raises(ValueError, match="shorter"):
        _ = one + LatencyHistogram((1, 2), 0.0, (0.1,))


def test_the_server_tally_counts_every_way_a_datagram_ends() -> None:
    tally = ServerTally()
    assert tally.snapshot().latency == LatencyHistogram()
    for reason in (DropReason.EMPTY, DropReason.EMPTY, DropReason.OVERSIZE):
        tally.refuse(reason)
    tally.take_in(received=6, queued=5, new_batch=True)
    tally.add_handled(2, 0, {"unparsed": 1}, latency_s=0.003)
    tally.add_handled(1, 1, {"unparsed": 1, "invalid_counter": 1}, latency_s=0.003)
    tally.add_dropped(DropReason.SHUTDOWN, 1)
    tally.add_dropped(DropReason.SHUTDOWN, 1)
    stats = tally.snapshot()
    assert_balanced(stats)
    assert (stats.received, stats.handled, stats.handler_errors, stats.queue_depth) == (9, 3, 1, 0)
    assert stats.dropped == {
        **{reason.value: 0 for reason in DropReason},
        "empty": 2,
        "oversize": 1,
        "queue_full": 1,
        "shutdown": 2,
    }
    assert stats.problems == {"unparsed": 2, "invalid_counter": 1}
    assert stats.latency.counts[LATENCY_BOUNDS_S.index(0.005)] == stats.latency.count == 3
    assert stats.latency.sum_s == pytest.approx(0.009)


def brief_text(snapshot: StatsSnapshot, processes: int = 1) -> list[str]:
    """The short summary as the CLI prints it, each line with its ``udpchat: `` prefix."""
    return [
        line if line.startswith(" ") else f"{LINE_PREFIX}{line}"
        for line in summary_lines([snapshot] * processes)
    ]


def test_the_short_summary_names_what_happened_and_leaves_the_internals_out() -> None:
    quiet = brief_text(StatsSnapshot(kernel_drops=0))
    assert quiet == [
        "udpchat: summary: received=0 handled=0 kernel_drops=0 lost=0 duplicates=0 reordered=0"
    ]
    busy = StatsSnapshot(
        received=20,
        handled=9,
        dropped={"queue_full": 7, "oversize": 0, "rate_limited": 4},
        texts=3,
        batches=5,
        jobs_started=2,
        stop_reads_capped=1,
        kernel_drops=None,
        delivery=DeliveryTotals(lost=2, reordered=1, gaps_given_up=4),
    )
    assert brief_text(busy) == [
        "udpchat: summary: received=20 handled=9 dropped=11 (queue_full=7 rate_limited=4) "
        "texts=3 lost=2",
        "udpchat: duplicates=0 reordered=1",
    ]  # the internals are --verbose's; kernel drops unknown here


@pytest.mark.parametrize("counts_type", SERVER_GROUPS)
def test_the_short_form_derives_from_each_declaration(counts_type: type[Counts]) -> None:
    """A counter shows in the short form as its declaration says, and only so: there is no
    second list of what to show."""
    for declared in declarations(counts_type):
        if declared.kind is Kind.PART:
            continue
        some = {"some_reason": 7} if declared.kind is Kind.BY_REASON else 7
        for value in (declared.zero, True if declared.kind is Kind.FLAG else some):
            shown = pairs(counts_type(**{declared.name: value}), verbose=False)
            expected = declared.brief is Brief.ALWAYS or (
                declared.brief is Brief.NONZERO and value != declared.zero
            )
            assert any(pair.startswith(f"{declared.key}=") for pair in shown) == expected, (
                declared,
                value,
            )


def test_the_short_summary_fits_three_lines_of_100_columns_when_everything_happened() -> None:
    snapshot = dataclasses.replace(
        every_group_filled(),
        received=10**12,
        handled=10**12,
        dropped={reason.value: 10**9 for reason in DropReason},
        problems={"unparsed": 10**9, "invalid_counter": 10**9, "invalid_username": 10**9},
    )
    lines = brief_text(snapshot, processes=4)
    assert 1 <= len(lines) <= 3
    assert all(len(line) <= 100 for line in lines), lines
    assert lines[-1].endswith(" \u2026")  # more than fits: the rest is --verbose's
    assert "internal_error=4000000000)" in " ".join(lines)  # every drop reason, first


@settings(max_examples=100, deadline=None)
@given(
    values=st.lists(st.integers(min_value=0, max_value=10**15), min_size=40, max_size=40),
    relay=st.booleans(),
    processes=st.integers(min_value=1, max_value=3),  # 2 and more: the processes= pair
)
def test_the_short_summary_is_at_most_three_lines_of_100_columns_of_true_pairs(
    values: list[int], relay: bool, processes: int
) -> None:
    numbers = iter(values)
    snapshot = StatsSnapshot(
        received=next(numbers),
        handled=next(numbers),
        dropped={reason.value: next(numbers) % 3 * next(numbers) for reason in DropReason},
        texts=next(numbers),
        commands=next(numbers),
        queue_depth=next(numbers) % 2,
        kernel_drops=next(numbers),
        delivery=DeliveryTotals(lost=next(numbers), senders=next(numbers)),
        relay=RelayStats(members=next(numbers), joins=next(numbers)) if relay else None,
        bus=BusStats(connected=True, published=next(numbers)) if relay else None,
    )
    lines = brief_text(snapshot, processes)
    assert len(lines) <= 3 and all(len(line) <= 100 for line in lines), lines
    verbose = " ".join(summary_lines([snapshot] * processes, verbose=True))
    for word in " ".join(lines).split():
        if "=" in word and not word.startswith("processes="):
            assert word.strip("()") in verbose, word  # the same pairs as the full summary
