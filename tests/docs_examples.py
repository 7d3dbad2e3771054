"""The docs' shell examples, read from Markdown and run, so that the docs fail a test when they
drift from what udpchat does. CONTRIBUTING.md ("Shell examples in the docs") is the convention
this module implements; ``tests/test_docs.py`` holds the pages to it.

A page's examples run in order inside a network namespace of their own (``unshare -rn``), so
they can use udpchat's default ports without meeting another page, another test or a server
someone left running; pages run concurrently. ``python -m tests.docs_examples`` is the runner
inside the namespace: the page's steps as JSON on stdin, what each command printed on stdout.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from support.waiting import eventually_sync

ROOT = Path(__file__).resolve().parent.parent
SHELL_LANGUAGES = frozenset({"bash", "sh", "shell", "zsh", "shell-session", "sh-session"})
"""Fence languages refused: a shell example is a ``console`` block, run or skipped with a reason."""
DIRECTIVE = re.compile(r"^\s*<!--\s*docs-test:\s*(.*?)\s*-->\s*$")
STOPS = {"stop": "stop", "stop, keep the files": "stop-keep"}
"""The stop directives: ``stop`` ends a scene (what follows runs apart, in a directory and a
network namespace of its own); ``stop, keep the files`` stops the background commands and goes
on in the same scene, for examples that read what the stopped commands wrote."""
FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>```+|~~~+)\s*(?P<info>[^`\s]*)")
PROMPT = "$ "
ANY_LINES = "..."
CTRL_C = "^C"
"""In a background command's output, where Ctrl-C is pressed: what it printed before is awaited
first, and what follows is what it prints while it stops."""
PLACEHOLDERS = {
    "<n>": r"-?\d[\d,]*(?:\.\d+)?",
    "<port>": r"\d+",
    "<pid>": r"\d+",
    "<...>": r".*?",
}
"""What an expected line may write for what varies from run to run."""
COMMAND_TIMEOUT_S = 30.0
READY_TIMEOUT_S = 20.0
STOP_TIMEOUT_S = 20.0


class DocsError(ValueError):
    """A page breaks the convention (an unknown directive, a shell block that is not ``console``,
    a skip without its reason); the message names the file and line."""


@dataclass(slots=True)
class Command:
    """One ``$`` line (with its ``\\`` continuations) and the output the page shows for it."""

    line: int
    text: str
    expected: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Block:
    """A ``console`` block: ``run`` in the foreground, started in the ``background``, or
    ``skip`` (``reason`` says why it cannot run)."""

    line: int
    mode: str
    commands: list[Command]
    reason: str = ""


@dataclass(slots=True)
class Page:
    path: Path
    steps: list[Block | str] = field(default_factory=list)
    """Blocks and the directives between them (``stop``), in page order."""

    @property
    def name(self) -> str:
        return (
            str(self.path.relative_to(ROOT)) if self.path.is_relative_to(ROOT) else str(self.path)
        )

    def blocks(self) -> list[Block]:
        return [step for step in self.steps if isinstance(step, Block)]

    def scenes(self) -> list[list[Block | str]]:
        """The page's steps cut after each ``stop``: once the background commands are stopped,
        what follows needs nothing from before, so each scene can run apart, concurrently."""
        scenes: list[list[Block | str]] = [[]]
        for step in self.steps:
            scenes[-1].append(step)
            if step == "stop":
                scenes.append([])
        return [scene for scene in scenes if any(isinstance(step, Block) for step in scene)]


HEREDOC = re.compile(r"<<-?\s*(['\"]?)(?P<word>\w+)\1")


def parse_commands(lines: list[str], first_line: int, where: str) -> list[Command]:
    """A console block's lines as commands, each with the output lines that follow it. A command
    goes on over lines that end in ``\\`` and over the body of a here-document (``<<'EOF'``)."""
    commands: list[Command] = []
    until: str | None = None
    for offset, line in enumerate(lines):
        if until is not None:
            commands[-1].text += "\n" + line
            until = still_open(until, line)
        elif line.startswith(PROMPT):
            commands.append(Command(first_line + offset, line.removeprefix(PROMPT)))
            until = continued_until(line)
        elif commands:
            commands[-1].expected.append(line.rstrip())
        else:
            raise DocsError(f"{where}:{first_line + offset}: output before the first '$ ' line")
    if not commands:
        raise DocsError(f"{where}:{first_line}: a console block without a '$ ' command")
    return commands


BACKSLASH = "\\"


def continued_until(line: str) -> str | None:
    """What ends a command that goes on past its ``$`` line: a here-document's word, or a line
    that does not end in a backslash; None when the command is one line."""
    heredoc = HEREDOC.search(line)
    if heredoc:
        return heredoc.group("word")
    return BACKSLASH if line.endswith(BACKSLASH) else None


def still_open(until: str, line: str) -> str | None:
    if until == BACKSLASH:
        return BACKSLASH if line.endswith(BACKSLASH) else None
    return None if line.strip() == until else until


def block_mode(directive: str | None, where: str) -> tuple[str, str]:
    """The mode and skip reason a directive before a console block gives it."""
    if directive is None:
        return "run", ""
    if directive == "background":
        return "background", ""
    keyword, _, reason = directive.partition(":")
    if keyword.strip() == "skip" and reason.strip():
        return "skip", reason.strip()
    raise DocsError(
        f"{where}: unknown docs-test directive before a console block {directive!r} "
        "(background, or skip: REASON)"
    )


def parse_page(path: Path) -> Page:
    """Every console block of a Markdown page, with the directives that govern them."""
    page = Page(path)
    lines = path.read_text(encoding="utf-8").splitlines()
    pending: tuple[int, str] | None = None
    index = 0
    while index < len(lines):
        line = lines[index]
        directive = DIRECTIVE.match(line)
        fence = FENCE.match(line)
        if directive:
            if directive.group(1) in STOPS:
                page.steps.append(STOPS[directive.group(1)])
            else:
                pending = (index + 1, directive.group(1))
        elif fence:
            index = read_fence(page, lines, index, fence, pending)
            pending = None
        elif line.strip() and pending is not None:
            raise DocsError(f"{page.name}:{pending[0]}: a directive not followed by a block")
        index += 1
    return page


def read_fence(
    page: Page, lines: list[str], start: int, fence: re.Match[str], pending: tuple[int, str] | None
) -> int:
    """Reads the fenced block opening at ``start``; returns the index of its closing line."""
    indent, marker, info = fence.group("indent"), fence.group("fence"), fence.group("info")
    end = start + 1
    while end < len(lines) and not lines[end].strip().startswith(marker):
        end += 1
    where = f"{page.name}:{start + 1}"
    language = info.lower()
    if language in SHELL_LANGUAGES:
        raise DocsError(f"{where}: a ```{info} block: write shell examples as ```console")
    if language != "console":
        if pending is not None:
            raise DocsError(f"{page.name}:{pending[0]}: a directive before a non-console block")
        return end
    body = [line.removeprefix(indent) for line in lines[start + 1 : end]]
    mode, reason = block_mode(pending[1] if pending else None, where)
    commands = parse_commands(body, start + 2, page.name)
    if mode == "background" and any(ready_line(command.expected) is None for command in commands):
        raise DocsError(f"{where}: a background command must show a line to wait for")
    page.steps.append(Block(start + 1, mode, commands, reason))
    return end


def pattern(expected_line: str) -> re.Pattern[str]:
    """An expected line as a regular expression: placeholders match what varies, and a run of
    spaces matches any run (tables stay aligned in the docs whatever widths a run prints)."""
    tokens = re.split(r"(<n>|<port>|<pid>|<\.\.\.>| {2,})", expected_line)
    parts = []
    for token in tokens:
        if token in PLACEHOLDERS:
            parts.append(PLACEHOLDERS[token])
        elif token.startswith("  ") and not token.strip():
            parts.append(" +")
        else:
            parts.append(re.escape(token))
    return re.compile("".join(parts))


def normalised(output: str) -> list[str]:
    """Output as lines without trailing spaces or trailing empty lines, as a page shows it."""
    lines = [line.rstrip() for line in output.replace("\r\n", "\n").split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def matches(expected: list[str], actual: list[str]) -> bool:
    """Whether the output matches the page's lines: ``...`` alone on a line stands for any
    number of lines (none included); every other line matches one line whole."""
    if not expected:
        return not actual
    head, rest = expected[0], expected[1:]
    if head == ANY_LINES:
        return any(matches(rest, actual[skip:]) for skip in range(len(actual) + 1))
    return (
        bool(actual)
        and pattern(head).fullmatch(actual[0]) is not None
        and matches(rest, actual[1:])
    )


def shown_output(expected: list[str]) -> list[str]:
    """The lines a command prints, without the ``^C`` a terminal shows where Ctrl-C was pressed."""
    return [line for line in expected if line != CTRL_C]


def before_ctrl_c(expected: list[str]) -> list[str] | None:
    """What a background command must have printed before it is stopped, when the page says."""
    if CTRL_C not in expected:
        return None
    return [*expected[: expected.index(CTRL_C)], ANY_LINES]


def ready_line(expected: list[str]) -> str | None:
    """The line a background command is ready at: the first it shows that is not ``...``."""
    return next((line for line in expected if line not in (ANY_LINES, CTRL_C)), None)


@dataclass(slots=True)
class Outcome:
    """What one command did: its output (stdout and stderr as one stream, as on a terminal),
    its exit status, and a note when the runner had to time it out or kill it."""

    line: int
    output: str
    status: int | None
    note: str = ""


# The runner, inside the page's network namespace.


def command_environment() -> dict[str, str]:
    """A plain terminal's: the project's .venv first on PATH (``udpchat``, ``python`` and
    ``nats-server`` are the project's), no colours, 100 columns."""
    environment = dict(os.environ)
    bin_dir = str(Path(sys.executable).parent)
    environment["PATH"] = bin_dir + os.pathsep + environment.get("PATH", "")
    environment.update({"NO_COLOR": "1", "COLUMNS": "100", "TERM": "dumb"})
    environment.pop("PYTHONPATH", None)
    environment.pop("VIRTUAL_ENV", None)
    return environment


def working_directory() -> Path:
    """A fresh directory where the repository's top-level entries are reachable by their names
    (``examples/embed.py``), and what a command writes stays out of the repository."""
    directory = Path(tempfile.mkdtemp(prefix="udpchat-docs-"))
    for entry in ROOT.iterdir():
        if entry.name not in {".git", ".venv"}:
            (directory / entry.name).symlink_to(entry)
    return directory


class PageRunner:
    """Runs one page's steps in order; each command in a fresh ``bash -c`` in a process group
    of its own, so that a stop reaches the whole pipeline as Ctrl-C would."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.environment = command_environment()
        self.previous_status = 0
        self.background: list[tuple[Command, subprocess.Popen[bytes], Path]] = []
        self.outcomes: list[Outcome] = []

    def spawn(self, command: Command, output: Path) -> subprocess.Popen[bytes]:
        with output.open("wb") as sink:
            return subprocess.Popen(
                ["bash", "-c", f"(exit {self.previous_status}); {command.text}"],
                cwd=self.directory,
                env=self.environment,
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def output_path(self, command: Command) -> Path:
        return self.directory / f".docs-test-output-{command.line}"

    def run(self, command: Command) -> None:
        output = self.output_path(command)
        process = self.spawn(command, output)
        note = ""
        try:
            process.wait(timeout=COMMAND_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            note = f"still running after {COMMAND_TIMEOUT_S:.0f} s: killed"
            kill_group(process)
        self.previous_status = process.returncode
        text = output.read_text(encoding="utf-8", errors="replace")
        self.outcomes.append(Outcome(command.line, text, process.returncode, note))

    def start(self, command: Command) -> str:
        """Starts a background command and waits until it prints the first line the page shows
        for it; returns a note when it never does."""
        output = self.output_path(command)
        process = self.spawn(command, output)
        self.background.append((command, process, output))
        wanted = ready_line(command.expected)
        if wanted is None:
            return ""

        def ready() -> bool:
            lines = normalised(output.read_text(encoding="utf-8", errors="replace"))
            return any(pattern(wanted).fullmatch(line) for line in lines)

        try:
            eventually_sync(lambda: ready() or process.poll() is not None, READY_TIMEOUT_S)
        except TimeoutError:
            return f"not ready within {READY_TIMEOUT_S:.0f} s"
        return "" if ready() else "exited before it was ready"

    def await_ctrl_c(self, command: Command, output: Path) -> str:
        """Waits until the command printed what the page shows before its ``^C``, if it shows
        one; a note when it never does."""
        expected = before_ctrl_c(command.expected)
        if expected is None:
            return ""
        try:
            eventually_sync(
                lambda: matches(
                    expected, normalised(output.read_text(encoding="utf-8", errors="replace"))
                ),
                READY_TIMEOUT_S,
            )
        except TimeoutError:
            return f"never printed what the page shows before ^C, within {READY_TIMEOUT_S:.0f} s"
        return ""

    def stop(self) -> None:
        """Stops the background commands once each printed what the page shows before its
        ``^C``, then with SIGINT (Ctrl-C), last started first; their whole output is then
        compared. All are awaited before any is stopped, so that a stop cannot cut another
        command's traffic short."""
        notes = [self.await_ctrl_c(command, output) for command, _, output in self.background]
        while self.background:
            command, process, output = self.background.pop()
            note = notes.pop()
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGINT)
                try:
                    process.wait(timeout=STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    note = f"did not stop within {STOP_TIMEOUT_S:.0f} s of SIGINT: killed"
                    kill_group(process)
            text = output.read_text(encoding="utf-8", errors="replace")
            self.outcomes.append(Outcome(command.line, text, process.returncode, note))

    def run_steps(self, steps: list[Block | str]) -> list[Outcome]:
        notes: dict[int, str] = {}
        try:
            for step in steps:
                if step in STOPS.values():
                    self.stop()
                elif isinstance(step, Block) and step.mode == "run":
                    for command in step.commands:
                        self.run(command)
                elif isinstance(step, Block) and step.mode == "background":
                    for command in step.commands:
                        notes[command.line] = self.start(command)
        finally:
            self.stop()
        for outcome in self.outcomes:
            outcome.note = outcome.note or notes.get(outcome.line, "")
        return self.outcomes


def kill_group(process: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    process.wait()


def bring_loopback_up() -> None:
    """A new network namespace starts with its loopback down."""
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)


def steps_from_json(data: list[dict[str, object] | str]) -> list[Block | str]:
    steps: list[Block | str] = []
    for item in data:
        if isinstance(item, str):
            steps.append(item)
            continue
        commands = [Command(**command) for command in item["commands"]]  # type: ignore[attr-defined]
        steps.append(Block(int(str(item["line"])), str(item["mode"]), commands))
    return steps


def runner_main() -> int:
    """Inside the namespace: the steps from stdin, the outcomes to stdout, as JSON."""
    steps = steps_from_json(json.load(sys.stdin))
    bring_loopback_up()
    directory = working_directory()
    try:
        outcomes = PageRunner(directory).run_steps(steps)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    json.dump([asdict(outcome) for outcome in outcomes], sys.stdout)
    return 0


# The test's side, outside the namespace.


PAGE_TIMEOUT_S = 180.0


def namespace_available() -> bool:
    """Whether this machine lets the tests make a network namespace of their own."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return False
    probe = subprocess.run(
        ["unshare", "-rn", "ip", "link", "set", "lo", "up"], check=False, capture_output=True
    )
    return probe.returncode == 0


def run_page(page: Page) -> dict[int, Outcome]:
    """Runs the page's examples, each scene in a namespace of its own and one after the other;
    each command's outcome by line."""
    outcomes: dict[int, Outcome] = {}
    for scene in page.scenes():
        outcomes.update(run_scene(page, scene))
    return outcomes


def run_scene(page: Page, scene: list[Block | str]) -> dict[int, Outcome]:
    """Runs some of a page's steps in a network namespace of their own; outcomes by line."""
    steps = [asdict(step) if isinstance(step, Block) else step for step in scene]
    result = subprocess.run(
        ["unshare", "-rn", sys.executable, "-m", "tests.docs_examples"],
        input=json.dumps(steps),
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=PAGE_TIMEOUT_S,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"{page.name}: the runner failed:\n{result.stderr[-4000:]}")
    return {item["line"]: Outcome(**item) for item in json.loads(result.stdout)}


def problems(page: Page, outcomes: dict[int, Outcome]) -> list[str]:
    """Every way the page's examples differ from what they did, each naming its line."""
    found: list[str] = []
    for block in page.blocks():
        if block.mode == "skip":
            continue
        for index, command in enumerate(block.commands):
            outcome = outcomes[command.line]
            found.extend(command_problems(page, block, index, outcome))
    return found


def command_problems(page: Page, block: Block, index: int, outcome: Outcome) -> list[str]:
    command = block.commands[index]
    where = f"{page.name}:{command.line}: $ {command.text}"
    found = [f"{where}\n  {outcome.note}"] if outcome.note else []
    actual = normalised(outcome.output)
    if not matches(shown_output(command.expected), actual):
        shown = "\n".join(f"    {line}" for line in command.expected)
        got = "\n".join(f"    {line}" for line in actual)
        found.append(f"{where}\n  the page shows:\n{shown}\n  it printed:\n{got}")
    shown_next = index + 1 < len(block.commands) and block.commands[index + 1].text == "echo $?"
    if block.mode == "run" and outcome.status not in (0, None) and not shown_next:
        found.append(f"{where}\n  exited {outcome.status}: show it with a '$ echo $?' line next")
    return found


def pages() -> list[Path]:
    """The pages whose examples are run: the top-level Markdown files and everything in docs/."""
    return sorted([*ROOT.glob("*.md"), *ROOT.glob("docs/**/*.md")])


if __name__ == "__main__":
    sys.exit(runner_main())
