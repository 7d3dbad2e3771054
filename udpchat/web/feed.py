"""What the page shows, as JSON-ready values built from counter snapshots: the sender table
with the dashboard's columns and every one of its orders, the totals' lines, and a chart point
per interval. Pure: the columns, the orders and the lines come from :mod:`udpchat.report`, the
intervals from :mod:`udpchat.series` (the sampler ``--record`` uses), so that the page, the
terminal dashboard, the summary and a recorded run cannot disagree.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from udpchat.counters import DropReason, SenderStats, StatsSnapshot, add_up
from udpchat.report import (
    MAX_TABLE_SENDERS,
    SENDER_COLUMNS,
    SortKey,
    format_counts,
    group_lines,
    heard,
    ranked,
    shown_columns,
)
from udpchat.series import Interval, SenderInterval

Row = tuple[int, SenderStats]
"""(process, sender), as the dashboard ranks them."""


def columns() -> list[dict[str, Any]]:
    """The table's columns as the page lays them out: the summary's declarations."""
    return [
        {"key": column.key, "header": column.short, "numeric": column.numeric}
        for column in SENDER_COLUMNS
    ]


def sort_keys() -> list[str]:
    """The orders the page offers, the dashboard's, its default first."""
    return [key.value for key in SortKey]


def _row(row: Row, now_s: float, idle_after_s: float) -> dict[str, Any]:
    process, sender = row
    last_heard, idle = heard(now_s - sender.last_heard_s, idle_after_s)
    return {
        "process": process,
        "cells": [column.cell(sender) for column in SENDER_COLUMNS],
        "heard": last_heard,
        "idle": idle,
        "lost": sender.lost > 0,
    }


def sender_table(
    per_process: Sequence[StatsSnapshot],
    now_s: float,
    idle_after_s: float,
    limit: int = MAX_TABLE_SENDERS,
) -> dict[str, Any]:
    """The senders the page may show: for each order, its first ``limit`` rows, as indexes
    into one list of rows (a sender first in two orders is sent once), so that the page
    switches order at once, in the dashboard's own order, without asking again."""
    rows = [
        (process, sender)
        for process, snapshot in enumerate(per_process, start=1)
        for sender in snapshot.senders
    ]
    shown: dict[tuple[int, str, int, str], int] = {}
    table: list[dict[str, Any]] = []
    listed: list[SenderStats] = []
    orders: dict[str, list[int]] = {}
    for key in SortKey:
        indexes = []
        for row in ranked(rows, key, limit):
            process, sender = row
            identity = (process, sender.ip, sender.port, sender.username)
            if identity not in shown:
                shown[identity] = len(table)
                table.append(_row(row, now_s, idle_after_s))
                listed.append(sender)
            indexes.append(shown[identity])
        orders[key.value] = indexes
    return {
        "rows": table,
        "shown": [SENDER_COLUMNS.index(column) for column in shown_columns(listed)],
        "orders": orders,
        "senders": len(rows),
        "processes": len(per_process),
    }


def totals(per_process: Sequence[StatsSnapshot]) -> dict[str, Any]:
    """The header's lines: the short summary's totals and a line per group (relay, nats,
    web...), as a person reads them by default (``--verbose`` shows every counter)."""
    stats = add_up(per_process) if per_process else StatsSnapshot()
    return {
        "counts": format_counts(stats, verbose=False),
        "groups": group_lines(stats, verbose=False),
    }


CHART_SENDERS = 10
"""Senders per chart point at most (the interval's busiest): the page shows the first few."""

CHARTS = [
    {"key": "rates", "title": "messages/s", "unit": "/s", "ranked": False, "digits": 1},
    {"key": "loss", "title": "loss % per sender", "unit": "%", "ranked": True, "digits": 2},
    {"key": "jitter", "title": "jitter per sender (ms)", "unit": "ms", "ranked": True,
     "digits": 3},
    {"key": "duplicates", "title": "duplicates/s per sender", "unit": "/s", "ranked": True,
     "digits": 1},
    {"key": "reordered", "title": "reordered/s per sender", "unit": "/s", "ranked": True,
     "digits": 1},
    {"key": "drops", "title": "drops/s by reason, kernel drops/s", "unit": "/s",
     "ranked": False, "digits": 1},
]  # fmt: skip
"""The server page's charts: each a group of named series in every point."""


def _label(row: SenderInterval) -> str:
    return f"{row.username} {row.sender}"


def _per_s(count: float, elapsed_s: float) -> float:
    return count / elapsed_s if elapsed_s > 0 else 0.0


def chart_point(interval: Interval, at_s: float) -> dict[str, Any]:
    """One point of every chart: the interval's rates, its busiest senders' figures (in the
    sampler's order, busiest first) and its drops by reason."""
    elapsed_s = interval.elapsed_s
    rows = interval.senders
    drops = {
        reason.value: _per_s(interval.deltas.get(f"dropped.{reason.value}") or 0, elapsed_s)
        for reason in DropReason
        if interval.deltas.get(f"dropped.{reason.value}")
    }
    kernel = interval.deltas.get("kernel_drops")
    if kernel is not None:
        drops["kernel"] = _per_s(kernel, elapsed_s)
    loss = {_label(row): row.loss_percent for row in rows if row.loss_percent is not None}
    return {
        "at_s": at_s,
        "groups": {
            "rates": {
                "received": interval.rate_per_s("received") or 0.0,
                "handled": interval.rate_per_s("handled") or 0.0,
            },
            "loss": loss,
            "jitter": {_label(row): row.jitter_s * 1000 for row in rows},
            "duplicates": {_label(row): _per_s(row.duplicates, elapsed_s) for row in rows},
            "reordered": {_label(row): _per_s(row.reordered, elapsed_s) for row in rows},
            "drops": drops,
        },
    }
