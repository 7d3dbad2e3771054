"""The docs are kept true by running them: every console example of README.md, CONTRIBUTING.md,
SECURITY.md and docs/ runs (tests/docs_examples.py) and prints what the page shows."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
import typer.main

from tests.docs_examples import (
    ROOT,
    Block,
    DocsError,
    Outcome,
    Page,
    matches,
    namespace_available,
    pages,
    parse_page,
    problems,
    run_page,
    run_scene,
)
from tests.test_layout import LAYERS
from udpchat import cli

CONCURRENT_SCENES = 6
README_MAX_LINES = 300
needs_namespace = pytest.mark.skipif(
    not namespace_available() and not os.environ.get("CI"),
    reason="needs a network namespace of its own (unshare -rn); in CI it runs, and fails without",
)


@pytest.fixture(scope="module")
def page_runs(
    request: pytest.FixtureRequest,
) -> Iterator[dict[Path, list[Future[dict[int, Outcome]]]]]:
    """Every scene of every selected page, started at once, a few at a time (each in a network
    namespace of its own)."""
    chosen = [
        getattr(getattr(item, "callspec", None), "params", {}) for item in request.session.items
    ]
    selected = {params["path"] for params in chosen if "path" in params}
    with ThreadPoolExecutor(CONCURRENT_SCENES) as pool:
        yield {
            path: [pool.submit(run_scene, page, scene) for scene in page.scenes()]
            for path in pages()
            if path in selected
            for page in [parse_page(path)]
        }


def test_every_page_follows_the_example_convention() -> None:
    for path in pages():
        parse_page(path)  # raises DocsError naming the line


def has_examples_to_run(path: Path) -> bool:
    """Whether the page has an example to run (or breaks the convention, which its test says)."""
    try:
        return any(block.mode != "skip" for block in parse_page(path).blocks())
    except DocsError:
        return True


@needs_namespace
@pytest.mark.parametrize(
    "path",
    [path for path in pages() if has_examples_to_run(path)],
    ids=lambda path: str(path.relative_to(ROOT)),
)
def test_the_page_s_shell_examples_print_what_it_shows(
    path: Path, page_runs: dict[Path, list[Future[dict[int, Outcome]]]]
) -> None:
    outcomes: dict[int, Outcome] = {}
    for scene in page_runs[path]:
        outcomes.update(scene.result())
    found = problems(parse_page(path), outcomes)
    assert not found, "\n\n".join(found)


def test_the_design_page_s_layers_are_the_layout_test_s() -> None:
    rows = re.findall(r"^\| (\d+) \| (.+?) \| ", (ROOT / "docs/design.md").read_text("utf-8"), re.M)
    shown: dict[int, set[str]] = {}
    for layer, cell in rows:
        modules = re.findall(r"`([\w/]+)\.py`", cell)
        shown.setdefault(int(layer), set()).update(
            module.removesuffix("/__init__").replace("/", ".") for module in modules
        )
    assert [shown.get(layer, set()) for layer in range(len(LAYERS))] == LAYERS


OPTION_PAGES = {
    "serve": "docs/guide/serve.md",
    "send": "docs/guide/clients.md",
    "chat": "docs/guide/clients.md",
    "load": "docs/guide/clients.md",
    "impair": "docs/guide/impair.md",
}


def documented_options(page: str, command: str) -> set[str]:
    """The options in the first column of the page's tables whose header names the command."""
    found: set[str] = set()
    owner = None
    for line in (ROOT / page).read_text(encoding="utf-8").splitlines():
        if not line.startswith("|"):
            owner = None
        elif owner is None:
            owner = f"`{command}` option" in line.split("|")[1]
        elif owner:
            found.update(re.findall(r"--[a-z][\w-]*", line.split("|")[1]))
    return found


@pytest.mark.parametrize("command", sorted(OPTION_PAGES))
def test_every_option_has_a_row_in_its_command_s_table(command: str) -> None:
    params = typer.main.get_command(cli.app).commands[command].params  # type: ignore[attr-defined]
    primary = {opt for param in params for opt in param.opts if opt.startswith("--")}
    every = primary | {opt for param in params for opt in param.secondary_opts}
    shown = documented_options(OPTION_PAGES[command], command)
    assert sorted(primary - shown - {"--help"}) == []
    assert sorted(shown - every) == []


def test_the_readme_is_one_user_s_page() -> None:
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES


def test_the_readme_s_links_lead_somewhere() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    targets = re.findall(r"\]\((?!https?://|#)([^)#]+)", text)
    assert targets
    assert [target for target in targets if not (ROOT / target).exists()] == []
    headings = re.findall(r"^#+ (.+)$", text, re.MULTILINE)
    slugs = {re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-") for heading in headings}
    anchors = re.findall(r"\]\(#([^)]+)\)", text)
    assert anchors
    assert [anchor for anchor in anchors if anchor not in slugs] == []


@pytest.mark.parametrize(
    ("expected", "actual", "verdict"),
    [
        (["listening on port <port>"], ["listening on port 5002"], True),
        (["listening on port <port>"], ["listening on port x"], False),
        (["a  b"], ["a     b"], True),
        (["...", "last"], ["first", "middle", "last"], True),
        (["...", "last"], ["first", "last", "after"], False),
        (["first", "..."], ["first"], True),
        (["took <n> s"], ["took 1,234.5 s"], True),
        (["at <...> here"], ["at 2026-12-01 10:00 here"], True),
        (["one"], ["one", "two"], False),
        ([], ["something"], False),
    ],
)
def test_expected_output_matches_what_it_should(
    expected: list[str], actual: list[str], verdict: bool
) -> None:
    assert matches(expected, actual) is verdict


SELF_TEST = """\
<!-- docs-test: background -->
```console
$ python -c "print('ready', flush=True); import time; time.sleep(60)"
ready
...
```

```console
$ echo hello; echo port 5002
hello
port <port>
$ false
$ echo $?
1
$ echo wrong
right
$ exit 3
```

<!-- docs-test: skip: it never ends -->
```console
$ yes
```
"""


@needs_namespace
def test_a_page_that_drifted_fails_where_it_drifted(tmp_path: Path) -> None:
    path = tmp_path / "page.md"
    path.write_text(SELF_TEST, encoding="utf-8")
    page = parse_page(path)
    assert [block.mode for block in page.blocks()] == ["background", "run", "skip"]
    found = problems(page, run_page(page))
    assert len(found) == 2, found
    assert "page.md:15: $ echo wrong" in found[0]
    assert "page.md:17: $ exit 3" in found[1] and "exited 3" in found[1]


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("```bash\nudpchat serve\n```\n", "write shell examples as ```console"),
        ("<!-- docs-test: skip -->\n```console\n$ yes\n```\n", "unknown docs-test directive"),
        ("```console\noutput\n$ echo\n```\n", "output before the first"),
        ("```console\n```\n", "without a '$ ' command"),
        ("<!-- docs-test: background -->\n\ntext\n", "not followed by a block"),
        ("<!-- docs-test: background -->\n```console\n$ yes\n...\n```\n", "a line to wait for"),
    ],
)
def test_a_page_that_breaks_the_convention_is_refused(
    tmp_path: Path, text: str, complaint: str
) -> None:
    path = tmp_path / "page.md"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DocsError, match=re.escape(complaint)):
        parse_page(path)


def test_continued_commands_are_one_command(tmp_path: Path) -> None:
    path = tmp_path / "page.md"
    path.write_text("```console\n$ echo a \\\n  b\na b\n```\n", encoding="utf-8")
    (block,) = parse_page(path).blocks()
    assert isinstance(block, Block) and len(block.commands) == 1
    assert block.commands[0].expected == ["a b"]
    assert isinstance(parse_page(path), Page)


def test_a_here_document_is_part_of_its_command(tmp_path: Path) -> None:
    path = tmp_path / "page.md"
    path.write_text("```console\n$ cat <<'EOF'\nbody\nEOF\nbody\n$ echo\n```\n", encoding="utf-8")
    (block,) = parse_page(path).blocks()
    assert [command.text for command in block.commands] == ["cat <<'EOF'\nbody\nEOF", "echo"]
    assert block.commands[0].expected == ["body"]
