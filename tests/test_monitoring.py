"""Per-sender series in /metrics, bounded by ``--metrics-senders``, and the Prometheus scrape
config and Grafana dashboard shipped in examples/monitoring/, checked against what a server
really exposes (and by promtool where it is installed)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import shutil
import socket
import subprocess
import urllib.request
from pathlib import Path

import pytest
import yaml

from support.waiting import EVENT_TIMEOUT_S, eventually
from tests.helpers import LOOPBACK
from tests.test_counters import every_group_filled, exposition, filled
from tests.test_series import sender
from udpchat import Server, ServerConfig
from udpchat.counters import SENDER_SERIES, ImpairStats, LossRuns, StatsSnapshot

MONITORING = Path(__file__).resolve().parent.parent / "examples" / "monitoring"
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__range": "15m", "$__interval": "15s"}


def sender_lines(text: str) -> list[str]:
    return sorted(line for line in text.splitlines() if line.startswith("udpchat_sender_"))


def test_the_busiest_senders_have_series_and_the_rest_are_counted() -> None:
    snapshot = StatsSnapshot(
        senders=(
            sender(1, 50, lost=2, duplicates=1, reordered=3, jitter_s=0.25),
            sender(2, 10),
            sender(3, 30, username='a "quoted"\\name'),
        )
    )
    registry_text = exposition_with_senders(snapshot, 2)
    assert sender_lines(registry_text) == sorted(
        [
            'udpchat_sender_received_total{sender="10.0.0.1:1",username="u1"} 50.0',
            'udpchat_sender_received_total{sender="10.0.0.1:3",username="a \\"quoted\\"\\\\name"}'
            " 30.0",
            'udpchat_sender_lost{sender="10.0.0.1:1",username="u1"} 2.0',
            'udpchat_sender_lost{sender="10.0.0.1:3",username="a \\"quoted\\"\\\\name"} 0.0',
            'udpchat_sender_duplicates_total{sender="10.0.0.1:1",username="u1"} 1.0',
            'udpchat_sender_duplicates_total{sender="10.0.0.1:3",username="a \\"quoted\\"\\\\name"}'
            " 0.0",
            'udpchat_sender_reordered_total{sender="10.0.0.1:1",username="u1"} 3.0',
            'udpchat_sender_reordered_total{sender="10.0.0.1:3",username="a \\"quoted\\"\\\\name"}'
            " 0.0",
            'udpchat_sender_late_total{sender="10.0.0.1:1",username="u1"} 0.0',
            'udpchat_sender_late_total{sender="10.0.0.1:3",username="a \\"quoted\\"\\\\name"} 0.0',
            'udpchat_sender_jitter_seconds{sender="10.0.0.1:1",username="u1"} 0.25',
            'udpchat_sender_jitter_seconds{sender="10.0.0.1:3",username="a \\"quoted\\"\\\\name"}'
            " 0.0",
            "udpchat_sender_series_left_out 1.0",
        ]
    )
    assert sender_lines(exposition_with_senders(snapshot, 0)) == []


def exposition_with_senders(snapshot: StatsSnapshot, limit: int) -> str:
    from prometheus_client import generate_latest  # noqa: PLC0415
    from prometheus_client.registry import CollectorRegistry  # noqa: PLC0415

    from udpchat.exposition import StatsCollector  # noqa: PLC0415

    registry = CollectorRegistry()
    registry.register(StatsCollector(lambda: snapshot, limit))
    return generate_latest(registry).decode()


def scrape(address: tuple[str, int]) -> str:
    with urllib.request.urlopen(
        f"http://{LOOPBACK}:{address[1]}/metrics", timeout=EVENT_TIMEOUT_S
    ) as answer:
        return str(answer.read().decode())


async def test_a_server_shows_its_busiest_senders_within_metrics_senders() -> None:
    config = ServerConfig(
        host=LOOPBACK, port=0, metrics_port=0, metrics_host=LOOPBACK, metrics_senders=1
    )
    async with Server(config, lambda message: None) as server:
        with (
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as busy,
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as quiet,
        ):
            for counter in (1, 2, 4):
                busy.sendto(f"busy: pesan ke-{counter}".encode(), server.address)
            quiet.sendto(b"quiet: pesan ke-1", server.address)
            await eventually(lambda: server.stats().handled == 4)
            port = busy.getsockname()[1]
        assert server.metrics_address is not None
        text = await asyncio.to_thread(scrape, server.metrics_address)
    labels = f'{{sender="{LOOPBACK}:{port}",username="busy"}}'
    assert f"udpchat_sender_received_total{labels} 3.0" in text
    assert f"udpchat_sender_lost{labels} 1.0" in text
    assert 'username="quiet"' not in text
    assert "udpchat_sender_series_left_out 1.0" in text
    assert 'udpchat_loss_runs_total{length="1"} 1.0' in text


def test_the_prometheus_config_scrapes_udpchat_on_loopback() -> None:
    path = MONITORING / "prometheus.yml"
    config = yaml.safe_load(path.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    assert set(jobs) == {"udpchat", "udpchat-impair"}
    for job in jobs.values():
        assert job["metrics_path"] == "/metrics"
        (static,) = job["static_configs"]
        for target in static["targets"]:
            host, port = target.rsplit(":", 1)
            assert host == LOOPBACK and 1 <= int(port) <= 65535
    comment = path.read_text()
    for job in jobs.values():
        port = job["static_configs"][0]["targets"][0].rsplit(":", 1)[1]
        assert f"--metrics-port {port}" in comment  # the command that serves it is said
    promtool = shutil.which("promtool")
    if promtool is not None:
        result = subprocess.run(
            [promtool, "check", "config", str(path)], capture_output=True, text=True, check=False
        )
        assert result.returncode == 0, result.stdout + result.stderr


def dashboard_expressions() -> list[str]:
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    expressions = [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]
    assert dashboard["uid"] and dashboard["schemaVersion"] >= 36 and expressions
    for name, value in GRAFANA_VARIABLES.items():
        expressions = [expr.replace(name, value) for expr in expressions]
    return expressions


def test_the_grafana_dashboard_asks_only_for_series_udpchat_exposes() -> None:
    snapshot = every_group_filled()
    with_runs = dataclasses.replace(snapshot.delivery, loss_runs=LossRuns((1,)))
    exposed = exposition(dataclasses.replace(snapshot, delivery=with_runs))
    exposed += exposition(filled(ImpairStats, 1))
    exposed += exposition_with_senders(StatsSnapshot(senders=(sender(1, 1),)), len(SENDER_SERIES))
    names = set(re.findall(r"^(\w+)(?:\{|\s)", exposed, re.MULTILINE))
    asked = {
        name for expr in dashboard_expressions() for name in re.findall(r"\budpchat_\w+", expr)
    }
    assert asked - names == set()
    assert {f"udpchat_sender_{s.metric or s.name}" for s in SENDER_SERIES} - {
        name.removesuffix("_total") for name in asked
    } == {"udpchat_sender_late"}  # every per-sender series is charted but late (few, rare)


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool is not installed")
def test_promtool_parses_every_dashboard_expression(tmp_path: Path) -> None:
    """Each expression as a recording rule, which ``promtool check rules`` parses as PromQL."""
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"udpchat:dashboard_{index}", "expr": expr}
                    for index, expr in enumerate(dashboard_expressions())
                ],
            }
        ]
    }
    path = tmp_path / "rules.yml"
    path.write_text(yaml.safe_dump(rules))
    result = subprocess.run(
        ["promtool", "check", "rules", str(path)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr
