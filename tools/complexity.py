"""``make lint``'s complexity gate: no function in udpchat, the benchmarks, the tools or the
support package has a cyclomatic complexity above the one pyproject.toml gives ruff
(``[tool.ruff.lint.mccabe] max-complexity``), as radon counts it: each branch, loop, ``except``,
``assert``, comprehension ``if`` and boolean operator adds one (ruff's count leaves the last two
out, so it is the milder; it stays on for the editor).

A function whose ``def`` line carries ``# noqa: C901 - why`` is let through, and listed; one
without the reason is not. Prints each offender as ``path:line: name: complexity N`` and exits 1
when there is one.
"""

from __future__ import annotations

import re
import sys
import tomllib
from collections.abc import Iterable, Iterator
from pathlib import Path

from radon.visitors import Class, ComplexityVisitor, Function

ROOTS = ("udpchat", "benchmarks", "tools", "support")
PYPROJECT = Path("pyproject.toml")
EXCEPTION = re.compile(r"#\s*noqa:\s*C901\s*-\s*\S")
"""``# noqa: C901 - the reason``: an exception, with the reason written beside it."""


def max_complexity(pyproject: Path = PYPROJECT) -> int:
    """The bound, declared once for ruff and for this gate."""
    config = tomllib.loads(pyproject.read_text())
    return int(config["tool"]["ruff"]["lint"]["mccabe"]["max-complexity"])


def functions(blocks: Iterable[Function | Class]) -> Iterator[Function]:
    """Every function, method and closure in ``blocks``, nested ones included."""
    for block in blocks:
        if isinstance(block, Class):
            yield from functions([*block.methods, *block.inner_classes])
        else:
            yield block
            yield from functions(block.closures)


def check(path: Path, bound: int) -> tuple[list[str], list[str]]:
    """(offenders, exceptions) in one file, each as ``path:line: name: complexity N``."""
    source = path.read_text()
    lines = source.splitlines()
    visitor = ComplexityVisitor.from_code(source)
    offenders: list[str] = []
    exceptions: list[str] = []
    for function in functions([*visitor.functions, *visitor.classes]):
        if function.complexity <= bound:
            continue
        found = f"{path}:{function.lineno}: {function.fullname}: complexity {function.complexity}"
        excepted = EXCEPTION.search(lines[function.lineno - 1])
        (exceptions if excepted else offenders).append(found)
    return offenders, exceptions


def sources(roots: Iterable[str]) -> Iterator[Path]:
    for root in roots:
        yield from sorted(Path(root).rglob("*.py"))


def main(argv: list[str] | None = None) -> int:
    roots = argv if argv else [root for root in ROOTS if Path(root).is_dir()]
    bound = max_complexity()
    offenders: list[str] = []
    exceptions: list[str] = []
    for path in sources(roots):
        found, excepted = check(path, bound)
        offenders += found
        exceptions += excepted
    for line in exceptions:
        print(f"{line} (excepted by its noqa)")
    for line in offenders:
        print(f"{line}, above {bound}: split it into named stages or a table")
    return 1 if offenders else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
