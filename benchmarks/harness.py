"""What every benchmark here shares: the C programs, one server under test, one trial.

A trial starts a design as a subprocess with its per-message output going to a file, drives it
with the C generator (``blast.c``; ``udpchat load`` where no C compiler is found) at one rate
for a few seconds, counts the lines written within :data:`GRACE_S` of the generator's end (a
design that keeps up has written them all by then), stops it with SIGINT and counts again
after its drain. Readers of ``/proc`` give the CPU of each thread and the kernel's drops.
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path

PYTHON = sys.executable
HERE = Path(__file__).parent
BLAST = HERE / "blast"
SINK = HERE / "sink"
STAMP = HERE / "stamp"
"""The delay bench's stamped sender and receiver (``stamp.c``)."""
READY_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 60.0
GRACE_S = 0.2
"""Lines not written this long after the generator stopped count as lost: the design did not
keep up, even if its queue would have drained them later."""
GENERATOR_SHORTFALL = 0.95
"""A trial whose generator sent under this share of the offered rate measured the generator."""
BANNER = b"Server menunggu..."
CLOCK_TICKS_PER_S = os.sysconf("SC_CLK_TCK")

UDPCHAT = "udpchat serve"
BARE = "bare: uvloop, batch per iteration, 2 threads"
PROTOTYPE = "prototype: bare without the flush per batch"
"""The strongest Python peer (``benchmarks/baselines/prototype.py``)."""
C_SINK = "C sink: recvmmsg, count only"
QUIET = "udpchat serve --quiet"
DASHBOARD = "udpchat serve --quiet --dashboard"
WEB = "udpchat serve --web, a page open in headless Chromium"
WEB_FEED = "udpchat serve --web, its feed read by a client that draws nothing"
UDPCHAT_ARGS = ("-m", "udpchat", "serve", "--host", "127.0.0.1", "--port", "{port}", "-v")
"""``-v``: every counter in the summary and status lines, which the benchmarks read."""
DESIGNS: dict[str, list[str]] = {
    UDPCHAT: [PYTHON, *UDPCHAT_ARGS],
    BARE: [PYTHON, "-m", "benchmarks.baselines.bare_uvloop", "{port}"],
    PROTOTYPE: [PYTHON, "-m", "benchmarks.baselines.prototype", "{port}"],
    "udpchat serve --processes 2": [PYTHON, *UDPCHAT_ARGS, "--processes", "2"],
    "seed: thread per datagram": [PYTHON, "-m", "benchmarks.baselines.seed_threads", "{port}"],
    "naive: run_in_executor per datagram": [
        *(PYTHON, "-m", "benchmarks.baselines.naive_executor", "{port}"),
    ],
    C_SINK: [str(SINK), "{port}"],
    QUIET: [PYTHON, *UDPCHAT_ARGS, "--quiet"],
    DASHBOARD: [PYTHON, *UDPCHAT_ARGS, "--quiet", "--dashboard"],
    WEB: [PYTHON, *UDPCHAT_ARGS, "--web", "127.0.0.1:0"],
    WEB_FEED: [PYTHON, *UDPCHAT_ARGS, "--web", "127.0.0.1:0"],
}
ON_A_TERMINAL = (QUIET, DASHBOARD)
"""Designs whose stderr is a pseudo-terminal (where the view draws) and whose handled count
comes from the summary, as ``--quiet`` writes no lines."""
TERMINAL_SIZE = (40, 120)


def build(program: Path) -> bool:
    """Compile ``program.c`` with ``cc -O2`` when a compiler is here and the binary is missing
    or stale; says whether the binary is there."""
    source = program.with_suffix(".c")
    compiler = shutil.which(os.environ.get("CC", "cc"))
    stale = not program.exists() or program.stat().st_mtime < source.stat().st_mtime
    if compiler is not None and stale:
        subprocess.run([compiler, "-O2", "-o", str(program), str(source)], check=True)
    return program.exists()


def free_port(kind: socket.SocketKind = socket.SOCK_DGRAM) -> int:
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


class PseudoTerminal:
    """A pseudo-terminal of :data:`TERMINAL_SIZE` whose output a thread keeps reading (a full
    terminal would stop its writer) into ``text``."""

    def __init__(self) -> None:
        self.leader, self.follower = pty.openpty()
        rows, columns = TERMINAL_SIZE
        fcntl.ioctl(self.follower, termios.TIOCSWINSZ, struct.pack("HHHH", rows, columns, 0, 0))
        self._chunks: list[bytes] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self.leader, 1 << 16)
            except OSError:
                return
            if not chunk:
                return
            self._chunks.append(chunk)

    def close(self) -> str:
        os.close(self.follower)
        self._reader.join(10)
        os.close(self.leader)
        return b"".join(self._chunks).decode(errors="replace")


def count_lines(path: Path) -> int:
    """Lines in ``path`` so far, less the banner."""
    with path.open("rb") as lines:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: lines.read(1 << 20), b"")) - 1


@dataclass
class RunningServer:
    """A design under test, started and ready; :meth:`stop` returns what it handled."""

    design: str
    port: int
    process: subprocess.Popen[bytes]
    output: Path
    errors: Path
    terminal: PseudoTerminal | None

    @property
    def pid(self) -> int:
        return self.process.pid

    def handled_so_far(self) -> int:
        return count_lines(self.output) if self.terminal is None else 0

    def stderr_so_far(self) -> str:
        return self.errors.read_text(errors="replace")

    def stop(self) -> tuple[int, str]:
        """SIGINT, wait for the drain; (handled, stderr)."""
        self.process.send_signal(signal.SIGINT)
        self.process.wait(STOP_TIMEOUT_S)
        stderr = self.errors.read_text(errors="replace")
        handled = count_lines(self.output)
        if self.terminal is not None:
            stderr = self.terminal.close()
            self.terminal = None
            summary = re.findall(r"summary: received=\d+ handled=(\d+)", stderr)
            handled = int(summary[-1]) if summary else 0
        elif self.design == C_SINK:
            found = re.search(r"received=(\d+)", stderr)
            handled = int(found.group(1)) if found else 0
        return handled, stderr


Attach = Callable[["RunningServer"], AbstractContextManager[object]]
"""What a trial puts beside a ready server for as long as it runs (a browser on its page)."""


@contextmanager
def serving(
    design: str,
    workdir: Path,
    extra_args: Sequence[str] = (),
    env: dict[str, str] | None = None,
    attach: Attach | None = None,
) -> Iterator[RunningServer]:
    """Start ``design`` on a free loopback port and wait for its banner, with ``attach``
    entered beside it; kill it on the way out if :meth:`RunningServer.stop` was not called."""
    port = free_port()
    output = workdir / f"out-{port}.log"
    errors = workdir / f"err-{port}.log"
    terminal = PseudoTerminal() if design in ON_A_TERMINAL else None
    command = [part.format(port=port) for part in DESIGNS[design]] + list(extra_args)
    with output.open("wb") as out, errors.open("wb") as err:
        stderr_to = err.fileno() if terminal is None else terminal.follower
        process = subprocess.Popen(
            command, stdout=out, stderr=stderr_to, env={**os.environ, **(env or {})}
        )
    server = RunningServer(design, port, process, output, errors, terminal)
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while BANNER not in output.read_bytes()[: 1 << 12]:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{design} did not start: {server.stderr_so_far()[-2000:]}")
            time.sleep(0.02)
        with (attach or (lambda _: nullcontext()))(server):
            yield server
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if server.terminal is not None:
            server.terminal.close()
        output.unlink(missing_ok=True)
        errors.unlink(missing_ok=True)


def generate(
    port: int,
    rate: int,
    duration_s: float,
    users: int,
    every_second: Callable[[], None] | None = None,
) -> tuple[int, float]:
    """Send at ``rate`` (0: flat out) for ``duration_s``, calling ``every_second`` meanwhile;
    returns (sent, achieved rate)."""
    if BLAST.exists():
        command = [str(BLAST), str(port), str(rate), str(duration_s), str(users)]
    else:
        command = [
            PYTHON, "-m", "udpchat", "load", "--port", str(port), "--rate", str(rate),
            "--duration", str(duration_s), "--users", str(users), "--no-progress",
        ]  # fmt: skip
    generator = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    deadline = time.monotonic() + duration_s + 30.0
    next_tick = time.monotonic() + 1.0
    while generator.poll() is None:
        if time.monotonic() > deadline:
            generator.kill()
            raise RuntimeError("the generator overran its duration by 30 s")
        time.sleep(max(0.0, min(next_tick - time.monotonic(), 0.05)))
        if time.monotonic() >= next_tick:  # advanced even with no callback: else this spins
            if every_second is not None:
                every_second()
            next_tick += 1.0
    stdout, _ = generator.communicate()
    if generator.returncode != 0:
        raise RuntimeError(f"the generator failed: {stdout}")
    fields = dict(re.findall(r"(\w+)=([\d.]+)", stdout))
    return int(fields["sent"]), float(fields["rate_per_s"])


@dataclass
class Trial:
    design: str
    users: int
    offered_per_s: int
    achieved_per_s: float
    sent: int
    handled_in_time: int
    """Lines written by :data:`GRACE_S` after the generator stopped."""
    handled: int
    """Lines written once the design had drained its queue and stopped."""
    peak_rss_bytes: int
    stderr: str = field(repr=False)

    @property
    def loss(self) -> float:
        """The share of what was sent not handled in time: dropped, or still waiting."""
        return 1.0 - min(self.handled_in_time, self.sent) / self.sent if self.sent else 1.0

    @property
    def drained_loss(self) -> float:
        return 1.0 - min(self.handled, self.sent) / self.sent if self.sent else 1.0


def run_trial(
    design: str,
    rate: int,
    duration_s: float,
    users: int,
    workdir: Path,
    extra_args: Sequence[str] = (),
    every_second: Callable[[RunningServer], None] | None = None,
    env: dict[str, str] | None = None,
    attach: Attach | None = None,
) -> Trial:
    with serving(design, workdir, extra_args, env, attach) as server:
        tick = None if every_second is None else (lambda: every_second(server))
        sent, achieved = generate(server.port, rate, duration_s, users, tick)
        time.sleep(GRACE_S)
        in_time = server.handled_so_far()
        peak = peak_rss_bytes(server.pid)
        handled, stderr = server.stop()
    if design in (C_SINK, *ON_A_TERMINAL):  # no lines to count: the summary's figure
        in_time = handled
    return Trial(design, users, rate, achieved, sent, in_time, handled, peak, stderr)


def peak_rss_bytes(pid: int) -> int:
    """The process's peak RSS, or with ``--processes`` its children's largest."""
    peaks = []
    for candidate in [pid, *child_pids(pid)]:
        try:
            status = Path(f"/proc/{candidate}/status").read_text()
        except OSError:
            continue
        found = re.search(r"VmHWM:\s+(\d+) kB", status)
        if found:
            peaks.append(int(found.group(1)) * 1024)
    return max(peaks, default=0)


def child_pids(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(child) for child in text.split()]


def cpu_ticks(stat_path: Path) -> tuple[str, int]:
    """(comm, utime + stime in clock ticks) from a ``/proc/.../stat`` file."""
    text = stat_path.read_text()
    comm = text[text.index("(") + 1 : text.rindex(")")]
    fields = text[text.rindex(")") + 2 :].split()
    return comm, int(fields[11]) + int(fields[12])  # utime, stime: fields 14 and 15 of stat


def process_cpu_s(pid: int) -> float:
    """CPU time of the whole process, every thread, in seconds."""
    return cpu_ticks(Path(f"/proc/{pid}/stat"))[1] / CLOCK_TICKS_PER_S


def thread_cpu_ticks(pid: int) -> dict[int, tuple[str, int]]:
    """Per thread id: (comm, utime + stime in clock ticks); threads that ended are left out."""
    threads = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            threads[int(task.name)] = cpu_ticks(task / "stat")
        except (OSError, ValueError):
            continue
    return threads


def kernel_drops(port: int) -> int | None:
    """The drops column of ``/proc/net/udp`` for the socket bound to 127.0.0.1:``port``."""
    local = f"0100007F:{port:04X}"
    try:
        table = Path("/proc/net/udp").read_text().splitlines()[1:]
    except OSError:
        return None
    for line in table:
        columns = line.split()
        if columns[1] == local:
            return int(columns[-1])
    return None
