"""Each counter is declared once, and every view derives from the declaration: a counter with a
value shows in the summary, the status line, the JSON summary and /metrics, and adds up across
processes as its kind says."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import urllib.request
from typing import Any

import pytest
from prometheus_client import generate_latest
from prometheus_client.registry import CollectorRegistry

from tests.helpers import EVENT_TIMEOUT_S, LOOPBACK, eventually, raw_send
from udpchat import Server, ServerConfig
from udpchat.admission import parse_network
from udpchat.counters import (
    COUNT_GROUPS,
    AdmissionStats,
    BusStats,
    Counts,
    DeliveryTotals,
    EndpointStats,
    Kind,
    RelayStats,
    StatsSnapshot,
    Tally,
    add_up,
    declarations,
)
from udpchat.metrics import StatsCollector
from udpchat.report import format_status, json_summary, summary_lines


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
    )


def exposition(snapshot: StatsSnapshot) -> str:
    registry = CollectorRegistry()
    registry.register(StatsCollector(lambda: snapshot))
    return generate_latest(registry).decode()


def test_every_group_is_in_the_snapshot() -> None:
    groups = {type(group) for group in every_group_filled().groups()}
    assert groups | {StatsSnapshot} == set(COUNT_GROUPS)


@pytest.mark.parametrize("counts_type", COUNT_GROUPS)
def test_every_declared_counter_is_in_the_metrics_and_the_summary(
    counts_type: type[Counts],
) -> None:
    snapshot = every_group_filled()
    counts = next(group for group in (snapshot, *snapshot.groups()) if type(group) is counts_type)
    metrics = exposition(snapshot)
    text = "\n".join(summary_lines([snapshot]))
    status = format_status(snapshot, 0.0)
    document = json.loads(json_summary([snapshot]))["summary"]
    if counts_type is not StatsSnapshot:
        document = document[next(d.name for d, v in snapshot.items() if v is counts)]
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
        assert document[declared.name] == value, declared


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
