"""What a workspace wrote reaches the user's terminal harmless: escape sequences in file
names, file contents, command lines and logs are shown (`^[`), not obeyed; through a pipe or
with --json the bytes stay exact."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from pyro_loop.safetext import TerminalText, visible
from pyro_loop.workspace.manager import Workspaces
from tests.helpers.project import run_pyro
from tests.helpers.terminal import terminal

TITLE = "\x1b]0;pwned\x07"  # sets the terminal's title
CLEAR = "\x1b[2J"  # clears the screen
NAME = f"evil{TITLE}.txt"
CONTENT = f"line{CLEAR}\x1b]52;c;Zm9v\x07 end\n"  # OSC 52 writes the clipboard


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("plain\ttext\n", "plain\ttext\n"),
        (CLEAR + "x", "^[[2Jx"),
        (TITLE, "^[]0;pwned^G"),
        ("crlf\r\n", "crlf\r\n"),
        ("over\rwrite", "over^Mwrite"),
        ("\x7f\x9b\x00", "^?\\x9b^@"),
        ("\udcff", "\\xff"),  # a byte that is not UTF-8
        ("abc\u202edcba", "abc\\u202edcba"),  # right-to-left override
        ("\x1b[31mred\x1b[0m", "^[[31mred^[[0m"),
        ("caf\u00e9 \u2713", "caf\u00e9 \u2713"),
    ],
)
def test_visible(text: str, shown: str) -> None:
    assert visible(text) == shown


def test_a_program_keeps_its_colours_and_carriage_returns() -> None:
    text = "\x1b[31mred\x1b[0m 50%\r100%\n" + TITLE + CLEAR
    assert visible(text, program=True) == "\x1b[31mred\x1b[0m 50%\r100%\n^[]0;pwned^G^[[2J"


def test_pieces_are_judged_whole() -> None:
    data = ("\x1b[31mr\u00e9d\x1b[0m\r\n" + CLEAR).encode()
    for size in range(1, len(data)):
        filtered = TerminalText(program=True)
        pieces = [data[i : i + size] for i in range(0, len(data), size)]
        shown = "".join(filtered.feed(p) for p in pieces) + filtered.flush()
        assert shown == "\x1b[31mr\u00e9d\x1b[0m\r\n^[[2J", size
    # What only looked like the start of a sequence is not held back for ever.
    assert TerminalText().feed(b"\x1b[" + b"1" * 100) == "^[[" + "1" * 100


def screen_of(*args: str) -> bytes:
    """What `pyro ARGS` shows on a terminal (stdout and stderr), once it has exited."""
    with terminal(*args, cols=200) as term:
        term.wait()
        return term.screen


@pytest.fixture
def hostile(workspaces: Workspaces, seed_dir: Path) -> str:
    workspaces.create(seed=seed_dir, name="hostile")
    workspaces.client("hostile").write(f"/workspace/{NAME}", CONTENT.encode())
    return "hostile"


def assert_harmless(screen: bytes) -> None:
    for raw in (TITLE, CLEAR, "\x1b]52"):
        assert raw.encode() not in screen, screen


def test_diff_on_a_terminal_and_through_a_pipe(hostile: str) -> None:
    screen = screen_of("workspace", "diff", hostile)
    assert_harmless(screen)
    assert b"+++ b/evil^[]0;pwned^G.txt" in screen
    assert b"+line^[[2J^[]52;c;Zm9v^G end" in screen
    stat = screen_of("workspace", "diff", hostile, "--stat")
    assert_harmless(stat)
    assert b"evil^[]0;pwned^G.txt" in stat
    # Through a pipe the patch is exact, and so is its JSON.
    piped = run_pyro("workspace", "diff", hostile)
    assert f"+++ b/{NAME}\n" in piped.stdout and f"+{CONTENT}" in piped.stdout
    data = json.loads(run_pyro("workspace", "diff", hostile, "--json").stdout)
    assert [c["path"] for c in data["changes"]] == [NAME]
    assert f"+{CONTENT}" in data["patch"]


def test_files_errors_and_history_on_a_terminal(hostile: str) -> None:
    listing = screen_of("workspace", "file", "list", hostile)
    assert_harmless(listing)
    assert b"/workspace/evil^[]0;pwned^G.txt" in listing
    read = screen_of("workspace", "file", "read", hostile, NAME)
    assert_harmless(read)
    assert b"line^[[2J^[]52;c;Zm9v^G end" in read
    assert run_pyro("workspace", "file", "read", hostile, NAME).stdout == CONTENT
    # An error that quotes a path the workspace chose.
    error = screen_of("workspace", "file", "read", hostile, f"nope{CLEAR}")
    assert_harmless(error)
    assert b"no such file in the workspace: /workspace/nope^[[2J" in error
    # The command history (argv a caller chose, seen by whoever reads the logs).
    run_pyro("workspace", "exec", hostile, "--", "echo", f"x{TITLE}")
    logs = screen_of("workspace", "logs", hostile)
    assert_harmless(logs)
    assert b"echo x^[]0;pwned^G" in logs


def test_services_and_processes_on_a_terminal(hostile: str) -> None:
    script = f"printf '\\033[31mred\\033[0m {TITLE}\\n'; exec sleep 60"
    started = run_pyro("workspace", "service", "start", hostile, "svc", "--", "sh", "-c",
                       script)  # fmt: skip
    assert started.returncode == 0, started.stderr
    for _ in range(100):
        logs = screen_of("workspace", "service", "logs", hostile, "svc")
        if b"red" in logs:
            break
    assert_harmless(logs)
    # A program's colours are kept; its other sequences are shown.
    assert b"\x1b[31mred\x1b[0m ^[]0;pwned^G\r\n" in logs
    piped = run_pyro("workspace", "service", "logs", hostile, "svc")
    assert piped.stdout == f"\x1b[31mred\x1b[0m {TITLE}\n"
    listed = screen_of("workspace", "service", "list", hostile)
    assert_harmless(listed)
    assert b"^[]0;pwned^G" in listed


def test_the_live_prepare_line_shows_what_it_quotes() -> None:
    from io import StringIO

    from pyro_loop.cli.progress import ProgressDisplay
    from pyro_loop.progress import Progress

    stream = StringIO()
    display = ProgressDisplay(stream, live=True)
    display(Progress("keys", f"requirements{TITLE}.txt changed"))
    display.close()
    shown = stream.getvalue()
    assert "prepare: keys: requirements^[]0;pwned^G.txt changed" in shown
    assert TITLE not in shown


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_hook_note_on_git_s_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    from pyro_loop.githooks import run

    for stream, shown in ((_Tty(), "lock^[]0;pwned^G.txt"), (io.StringIO(), f"lock{TITLE}.txt")):
        monkeypatch.setattr("sys.stderr", stream)
        run._note(f"pyro: post-checkout hook: lock{TITLE}.txt changed\nsecond line")
        assert stream.getvalue() == f"pyro: post-checkout hook: {shown} changed\n"
