"""Input, terminals and shells: `exec` with piped input, `-i`/`-t`, `pyro shell`, driven
through a real pseudo-terminal (keys in, screen out) against a real workspace."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
from pathlib import Path

import pytest

from pyro_loop.workspace.manager import Workspaces
from tests.helpers.project import commit_project, run_pyro
from tests.helpers.terminal import terminal


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return commit_project(tmp_path / "repo", "", {"hello.txt": "hi\n"})


def test_piped_input_reaches_the_command(repo: Path, workspaces: Workspaces) -> None:
    result = run_pyro("exec", "-C", str(repo), "--", "cat", input="x\nsecond line\n")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "x\nsecond line\n"
    # Its end is the command's end of input: `read` fails after the last line.
    script = "while read -r line; do echo got:$line; done; echo eof"
    result = run_pyro("exec", "-C", str(repo), "--", "sh", "-c", script, input="a\nb\n")
    assert result.stdout == "got:a\ngot:b\neof\n"


def test_large_input_is_passed_whole_and_an_unread_one_does_not_block(
    seed_dir: Path, workspaces: Workspaces
) -> None:
    record = workspaces.create(seed=seed_dir)
    data = os.urandom(3 * 1024 * 1024 + 17)  # several frames, more than any pipe holds
    result = workspaces.exec(record.id, ["sha256sum"], stdin=io.BytesIO(data))
    assert result.stdout.split()[0].decode() == hashlib.sha256(data).hexdigest()
    # A command that never reads its input still ends (the input is dropped).
    result = workspaces.exec(record.id, ["true"], stdin=io.BytesIO(data))
    assert result.exit_code == 0
    # Without input the command's stdin is empty, not the host's.
    assert workspaces.exec(record.id, ["cat"]).stdout == b""


def test_tty_needs_a_terminal(repo: Path, workspaces: Workspaces) -> None:
    result = run_pyro("exec", "-C", str(repo), "-t", "--", "true", input="")
    assert result.returncode == 1
    assert result.stderr.startswith("pyro: error: -t needs a terminal")
    shell = run_pyro("shell", "-C", str(repo), input="exit\n")
    assert shell.returncode == 1
    assert shell.stderr.startswith("pyro: error: a shell needs a terminal, and stdin is not one")
    assert "`pyro workspace shell open ID`" in shell.stderr  # what a script can use instead


def test_exec_from_a_terminal_without_i_leaves_stdin_empty(
    repo: Path, workspaces: Workspaces
) -> None:
    with terminal("exec", "-C", str(repo), "--", "sh", "-c", "cat; echo done-$?") as term:
        term.expect("done-0")  # cat read an empty stdin at once, not the keyboard
        assert term.wait() == 0
    with terminal("exec", "-C", str(repo), "-i", "--", "sh", "-c", "read x; echo got-$x") as term:
        term.send("typed\n")
        term.expect("got-typed")
        assert term.wait() == 0


def test_exec_t_gives_the_command_a_terminal(repo: Path, workspaces: Workspaces) -> None:
    with terminal("exec", "-C", str(repo), "-t", "--", "sh", "-c", "tty; stty size",
                  rows=31, cols=97) as term:  # fmt: skip
        term.expect(r"/dev/pts/\d+")
        term.expect("31 97")
        assert term.wait() == 0


def test_shell_has_job_control_ctrl_c_and_follows_the_window(
    repo: Path, workspaces: Workspaces
) -> None:
    exec_path = run_pyro("exec", "-C", str(repo), "--", "sh", "-c", "echo $PATH").stdout.strip()
    with terminal("shell", "-C", str(repo)) as term:
        term.send("echo MARK-$((40+2)) $PWD $PYRO_WORKSPACE\r")
        term.expect("MARK-42 /workspace 1")
        term.send("echo PA''TH=$PATH.\r")  # the typed line does not match
        assert term.expect(r"PATH=(\S*)\.\r").group(1).decode() == exec_path
        term.send("cat hello.txt\r")
        term.expect("hi")

        # Ctrl-C reaches the foreground process, not the shell.
        # (The command says when it runs: a key sent earlier would reach the shell instead.)
        term.send("sh -c 'echo UP-$((1+1)); exec sleep 60'; echo not-inter''rupted\r")
        term.expect("UP-2")
        term.send("\x03")
        term.send("echo RC-$?\r")
        term.expect("RC-130")
        assert b"not-interrupted" not in term.screen

        # Job control: a background job, a stopped one, both listed and resumed.
        term.send("sleep 61 &\r")
        term.expect(r"\[1\] \d+")
        term.send("sh -c 'echo UP-$((2+2)); exec sleep 62'\r")
        term.expect("UP-4")
        term.send("\x1a")  # Ctrl-Z
        term.expect(r"\[2\]\+\s+Stopped\s+sh -c")
        term.send("jobs\r")
        term.expect(r"\[1\]-\s+Running\s+sleep 61 &")
        term.send("kill %1 %2; wait; echo JOBS-$(jobs -p | wc -l)\r")
        term.expect("JOBS-0")

        # The workspace's terminal follows the host terminal's size.
        term.send("stty size\r")
        term.expect("24 80")
        term.resize(40, 132)
        # The new size travels apart from the keys (SIGWINCH, then a control frame): a key
        # typed at once may overtake it, as in any terminal, so ask until it has arrived.
        for _ in range(30):
            term.send("stty size\r")
            with contextlib.suppress(AssertionError):
                term.expect("40 132", timeout=1)
                break
        else:
            raise AssertionError(f"the size never followed; the terminal showed:\n{term.tail()}")

        term.send("exit 7\r")
        assert term.wait() == 7


def test_workspace_shell(seed_dir: Path, workspaces: Workspaces) -> None:
    workspaces.create(seed=seed_dir, name="sh-test")
    with terminal("workspace", "shell", "sh-test") as term:
        term.send("cat README.md; echo DONE\r")
        term.expect("hello")
        term.expect("DONE")
        term.send("exit\r")
        assert term.wait() == 0
    # Options go before the id as well as after it (`shell` is also a group of commands).
    for args, who in (
        (("--env", "WHO=before", "sh-test"), "before"),
        (("sh-test", "--env", "WHO=after"), "after"),
    ):
        with terminal("workspace", "shell", *args) as term:
            term.send("echo HI-$WHO\r")
            term.expect(f"HI-{who}\r")
            term.send("exit 5\r")
            assert term.wait() == 5
