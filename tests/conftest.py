"""Shared fixtures: a server on a free loopback port with a collecting handler, and real
NATS servers. Helpers live in :mod:`tests.helpers`."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings

from support.nats_servers import NatsNode, start_cluster
from tests.helpers import LOOPBACK, STARTED, Collector
from udpchat import Server, ServerConfig

settings.register_profile(
    "mutation",
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow],
)
"""For `make mutation` (``--hypothesis-profile=mutation``): the same examples for every mutant,
and no time limits, so that only a wrong answer kills a mutant, never a slow or busy machine."""


@pytest.fixture(autouse=True)
def no_process_left_behind() -> Iterator[None]:
    """Kill what a test started and left running (it failed before stopping it)."""
    yield
    while STARTED:
        cli = STARTED.pop()
        if cli.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(cli.process.pid, signal.SIGKILL)


@pytest.fixture
async def collector() -> Collector:
    return Collector()


@pytest.fixture
async def running_server(collector: Collector) -> AsyncIterator[Server]:
    """A server on 127.0.0.1, port 0, whose handler is ``collector``."""
    async with Server(ServerConfig(host=LOOPBACK, port=0), collector) as server:
        yield server


@pytest.fixture
def nats_node(tmp_path: Path) -> Iterator[NatsNode]:
    """A single ``nats-server`` on a loopback port it chose; killed at the end."""
    node = NatsNode(tmp_path, "node0")
    node.start()
    yield node
    node.kill()


@pytest.fixture
def nats_cluster(tmp_path: Path) -> Iterator[list[NatsNode]]:
    """Two ``nats-server`` nodes routed into one cluster, on loopback ports chosen at run time."""
    nodes = start_cluster(tmp_path, 2)
    yield nodes
    for node in nodes:
        node.kill()
