"""``make mutation``: mutmut over the modules pyproject.toml's ``[tool.mutmut]`` names, from
scratch, then one summary: the counts, the kill ratio, and every mutant not killed with its diff,
each marked where ``tools/mutation-equivalents.toml`` lists it as equivalent.

Exits 1 when fewer than :data:`MIN_KILL_RATIO` of the mutants are killed, or when a survivor is
not listed there: a new survivor needs a test that kills it, or an entry that says why it
cannot change behaviour.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
from pathlib import Path

MIN_KILL_RATIO = 0.9
MUTANTS = Path("mutants")
EQUIVALENTS = Path(__file__).with_name("mutation-equivalents.toml")
MUTMUT = str(Path(sys.executable).with_name("mutmut"))
DETECTED = ("killed", "timeout")
"""Statuses that need no explanation: the tests failed, or never finished, against the mutant."""


def mutmut(*args: str) -> str:
    return subprocess.run([MUTMUT, *args], check=True, capture_output=True, text=True).stdout


def readable_name(name: str) -> str:
    """``accounting.DeliveryAccounting.record_batch #16`` for mutmut's
    ``udpchat.accounting.xǁDeliveryAccountingǁrecord_batch__mutmut_16``."""
    function, number = name.rsplit("__mutmut_", 1)
    module, _, mangled = function.removeprefix("udpchat.").partition(".")
    if mangled.startswith("x_"):
        qualified = mangled.removeprefix("x_")
    else:
        qualified = mangled.removeprefix("xǁ").replace("ǁ", ".")
    return f"{module}.{qualified} #{number}"


def equivalents(path: Path = EQUIVALENTS) -> dict[str, str]:
    """The mutants listed as unable to change behaviour, each with its one-line reason."""
    listed = tomllib.loads(path.read_text(encoding="utf-8")).get("equivalent", {})
    if not isinstance(listed, dict) or not all(
        isinstance(reason, str) and reason.strip() for reason in listed.values()
    ):
        raise SystemExit(f"make mutation: {path}: [equivalent] maps each mutant to its reason")
    return listed


def run_mutmut() -> float:
    """Every mutant tested afresh, so that no result stands from older code or tests; returns
    the wall time in seconds. Progress shows on a terminal; elsewhere only a failure's tail."""
    shutil.rmtree(MUTANTS, ignore_errors=True)
    started = time.monotonic()
    command = [MUTMUT, "run", "--max-children", str(os.cpu_count() or 1)]
    if sys.stdout.isatty():
        subprocess.run(command, check=True)
    else:
        run = subprocess.run(command, check=False, capture_output=True, text=True)
        if run.returncode != 0:
            print((run.stdout + run.stderr)[-4000:], file=sys.stderr)
            raise SystemExit(f"make mutation: mutmut run exited {run.returncode}")
    return time.monotonic() - started


def main() -> int:
    wall_s = run_mutmut()
    mutmut("export-cicd-stats")
    stats = json.loads((MUTANTS / "mutmut-cicd-stats.json").read_text(encoding="utf-8"))
    listed = equivalents()
    not_killed = [line.strip() for line in mutmut("results").splitlines() if line.strip()]
    unexplained = 0
    print()
    for line in not_killed:
        name, _, status = line.rpartition(": ")
        readable = readable_name(name)
        if status in DETECTED:
            note = "detected"
        elif readable in listed:
            note = f"equivalent: {listed[readable]}"
        else:
            note = f"NOT LISTED: kill it with a test, or list it in {EQUIVALENTS.name}"
            unexplained += 1
        print(f"== {status}: {readable} ({note})")
        print(mutmut("show", name).partition("\n")[2])
    ratio = stats["killed"] / stats["total"] if stats["total"] else 0.0
    minutes, seconds = divmod(round(wall_s), 60)
    counts = ", ".join(
        f"{stats[key]} {key.replace('_', ' ')}"
        for key in ("killed", "survived", "timeout", "no_tests", "suspicious", "segfault")
    )
    print(
        f"make mutation: {stats['total']} mutants in {minutes}m{seconds:02d}s: {counts}; "
        f"killed {ratio:.1%} (at least {MIN_KILL_RATIO:.0%} needed); "
        f"{len(not_killed) - unexplained} not killed are detected or listed, {unexplained} not"
    )
    return 0 if ratio >= MIN_KILL_RATIO and unexplained == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
