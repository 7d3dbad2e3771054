"""``make mutation``: mutmut over the modules pyproject.toml's ``[tool.mutmut]`` names, from
scratch, then one summary: the counts, the kill ratio, and every mutant not killed with its diff,
each marked where README.md's Development section lists it as equivalent.

Exits 1 when fewer than :data:`MIN_KILL_RATIO` of the mutants are killed, or when a survivor is
not listed there: a new survivor needs a test that kills it, or a line that says why it cannot
change behaviour.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

MIN_KILL_RATIO = 0.9
MUTANTS = Path("mutants")
README = Path("README.md")
DEVELOPMENT_HEADING = "## Development"
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


def development_section() -> str:
    text = README.read_text(encoding="utf-8")
    start = text.find(DEVELOPMENT_HEADING)
    if start < 0:
        return ""
    end = text.find("\n## ", start + len(DEVELOPMENT_HEADING))
    return text[start : end if end >= 0 else len(text)]


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
    listed = development_section()
    not_killed = [line.strip() for line in mutmut("results").splitlines() if line.strip()]
    unexplained = 0
    print()
    for line in not_killed:
        name, _, status = line.rpartition(": ")
        readable = readable_name(name)
        if status in DETECTED:
            note = "detected"
        elif f"`{readable}`" in listed:
            note = "listed in README.md as equivalent"
        else:
            note = "NOT LISTED: kill it with a test, or list it in README.md as equivalent"
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
