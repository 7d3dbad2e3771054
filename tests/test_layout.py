"""The layout shows the data flow: each module imports only from layers below its own, so there
is no import circle; the package imports nothing heavy until used; the CLI stays thin."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import udpchat

PACKAGE = Path(udpchat.__file__).parent
ROOT = PACKAGE.parent

LAYERS = [
    {"counters", "wire", "libc", "logs", "pool", "settings", "sockets"},
    {"signals", "eventloop", "lifecycle", "tuning", "rtt"},
    {
        "fastpath",
        "admission",
        "bus",
        "fanout",
        "exposition",
        "report",
        "client",
        "load",
        "wakeup",
        "impair.profiles",
        "web.config",
    },
    {"accounting", "chat", "progress", "series", "metrics", "impair.spec"},
    {"handlers", "record", "impair.link", "web.security", "web.pages"},
    {"pipeline", "output", "relay", "echo", "impair.trace", "impair.pcap"},
    {"web.view", "web.room", "web.feed"},
    {"protocol", "transport", "web.server_view", "web.impair_view"},
    {"impair.proxy", "web"},
    {"server", "impair"},
    {"supervisor", "dashboard", "plot"},
    {"runner"},
    {"cli"},
]
"""Bottom to top: bytes and counts; what a process runs on (signals, the event loop, the
lifecycle, its tuning); the compiled loops, the room's parts and the views; the
accounting and the metrics endpoint; the handler types; the queue and its handlers; the protocol
and its batch transport on the loop; the server; what runs or watches servers; the one library
entry; the command line over it all. A subpackage's modules are named with a dot
(``impair.link``), the package itself (its ``__init__``, which exports its public names) by its
name: the impairment proxy sits below the server, which it talks to only over UDP; the browser
view (``web``) sits below the server too, and its room members are UDP clients."""
ENTRY_POINTS = {"__init__", "__main__"}
"""The top package's entry points; a subpackage's ``__init__`` is a module like the others."""
HEAVY = ("nats", "rich", "prometheus_client", "prompt_toolkit", "aiohttp")
NEVER_IMPORTED_FROM = {
    "tests": {"benchmarks"},
    "benchmarks": {"tests"},
    "support": {"tests", "benchmarks"},
}
"""One direction between the trees: what the tests and the benchmarks share is in support/,
which imports neither; the benchmarks' own tests live in benchmarks/tests/."""
MAX_CLI_FUNCTION_LINES = 60


def module_names() -> set[str]:
    """Every module of the package by its dotted name below ``udpchat``, subpackages included."""
    names = set()
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE).with_suffix("").parts
        if parts[-1] == "__init__" and len(parts) > 1:
            parts = parts[:-1]  # a subpackage's __init__ is the package
        names.add(".".join(parts))
    return names - ENTRY_POINTS


def source_of(module: str) -> Path:
    path = PACKAGE.joinpath(*module.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def imports_of(module: str) -> set[str]:
    """The udpchat modules ``module`` imports, anywhere in it (lazy and type-only included)."""
    tree = ast.parse(source_of(module).read_text())
    modules = module_names()
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "udpchat":
                found.update(alias.name for alias in node.names)
            elif node.module.startswith("udpchat."):
                package = node.module.removeprefix("udpchat.")
                # ``from udpchat.web import feed`` imports the module web.feed, not web
                submodules = {f"{package}.{alias.name}" for alias in node.names} & modules
                found.update(submodules)
                if len(submodules) < len(node.names):
                    found.add(package)
        elif isinstance(node, ast.Import):
            found.update(
                alias.name.removeprefix("udpchat.")
                for alias in node.names
                if alias.name.startswith("udpchat.")
            )
    return found - {"_fastpath", "__version__"}


def layer(module: str) -> int:
    return next(index for index, modules in enumerate(LAYERS) if module in modules)


def test_every_module_has_a_layer() -> None:
    assert module_names() == set().union(*LAYERS)


def test_each_module_imports_only_from_the_layers_below() -> None:
    wrong = [
        f"{module} (layer {layer(module)}) imports {imported} (layer {layer(imported)})"
        for modules in LAYERS
        for module in sorted(modules)
        for imported in sorted(imports_of(module))
        if layer(imported) >= layer(module)
    ]
    assert wrong == []


def test_the_package_exports_what_it_declares_for_type_checkers() -> None:
    """``__init__``'s lazy table and its TYPE_CHECKING imports name the same things."""
    tree = ast.parse((PACKAGE / "__init__.py").read_text())
    checked = {
        alias.name: node.module.removeprefix("udpchat.")
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("udpchat.")
        for alias in node.names
    }
    assert checked == udpchat._MODULE_OF
    assert all(getattr(udpchat, name) is not None for name in udpchat.__all__)


def loaded_after(code: str) -> list[str]:
    program = f"{code}\nimport sys\nprint(' '.join(sorted(sys.modules)))"
    output = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, check=True
    ).stdout
    return [name for name in output.split() if name.split(".")[0] in HEAVY]


def test_import_and_version_load_nothing_heavy() -> None:
    """So that ``python -m udpchat`` holds stop signals within milliseconds of starting."""
    assert loaded_after("import udpchat") == []
    assert loaded_after("from udpchat.cli import main\nmain(['--version'])") == []


def test_no_cli_function_runs_over_60_lines_but_for_its_options() -> None:
    tree = ast.parse((PACKAGE / "cli.py").read_text())
    long = []
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            body_start = node.body[0].lineno  # after the signature with its options
            length = (node.end_lineno or body_start) - body_start + 1
            if length > MAX_CLI_FUNCTION_LINES:
                long.append(f"{node.name}: {length} lines")
    assert long == []


def top_level_imports(path: Path) -> set[str]:
    """The top-level packages a file imports, anywhere in it (lazy imports included)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module.split(".")[0])
        elif isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
    return found


def test_tests_and_benchmarks_share_only_support() -> None:
    wrong = [
        f"{path.relative_to(ROOT)} imports {name}"
        for tree, forbidden in NEVER_IMPORTED_FROM.items()
        for path in sorted((ROOT / tree).rglob("*.py"))
        for name in sorted(top_level_imports(path) & forbidden)
    ]
    assert wrong == []
