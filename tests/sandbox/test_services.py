"""Services: `pyro exec --detach`, `pyro logs`, `pyro ps`, `pyro service ...` and the
predecessor's `pyro workspace service start|list|status|logs|stop`, in real workspaces."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pyro_loop.workspace.manager import Workspaces
from tests.helpers.project import commit_project, run_pyro

LOG_PART = 4 * 1024 * 1024  # agent/services.py: a service keeps two parts of its output


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return commit_project(tmp_path / "repo", "", {"hello.txt": "hi\n"})


def pyro_ok(*args: str) -> str:
    result = run_pyro(*args)
    assert result.returncode == 0, f"pyro {' '.join(args)}: {result.stderr}"
    return result.stdout


def pyro_json(*args: str) -> Any:
    """pyro's JSON output (--json goes before a command's `--`)."""
    at = args.index("--") if "--" in args else len(args)
    return json.loads(pyro_ok(*args[:at], "--json", *args[at:]))


def test_detach_returns_at_once_and_logs_follow_the_output(
    repo: Path, workspaces: Workspaces
) -> None:
    c = ("-C", str(repo))
    # The command runs for a minute; pyro returns (run_pyro would time out otherwise).
    started = pyro_json("exec", *c, "--detach", "--", "sh", "-c",
                        "echo up; read x < /dev/stdin || echo no-input; exec sleep 60")  # fmt: skip
    name = started["service"]["name"]
    assert name == "sh" and started["service"]["state"] == "running"
    status = pyro_json("service", "status", *c, "sh")["service"]
    assert status["state"] == "running" and status["pid"] == started["service"]["pid"]

    # A second one with the same program gets a name of its own; logs -f ends with it.
    script = "for i in 1 2 3; do echo line-$i; sleep 0.2; done; echo done >&2; exit 3"
    second = pyro_json("exec", *c, "-d", "--", "sh", "-c", script)["service"]
    assert second["name"] == "sh-2"
    followed = run_pyro("logs", *c, "sh-2", "--follow")
    assert followed.returncode == 0
    assert followed.stdout == "line-1\nline-2\nline-3\ndone\n"
    ended = run_pyro("service", "status", *c, "sh-2", "--json")
    assert ended.returncode == 1  # not running
    assert json.loads(ended.stdout)["service"]["exit_code"] == 3
    assert pyro_ok("logs", *c, "sh", "--tail", "1") == "no-input\n"  # stdin is empty

    # ps: the services and every process of the workspace, none of pyro's own.
    ps = pyro_json("ps", *c)
    assert {s["name"] for s in ps["services"]} == {"sh", "sh-2"}
    commands = [" ".join(p["argv"]) for p in ps["processes"]]
    assert "sleep 60" in commands
    assert not any("/run/pyro/agent" in c for c in commands)

    # Which service's logs: one line that names them.
    which = run_pyro("logs", *c)
    assert which.returncode == 1 and "(services: sh, sh-2)" in which.stderr

    # reset ends every service (a fresh sandbox), as down does.
    pyro_ok("reset", *c)
    assert pyro_json("service", "list", *c)["services"] == []
    assert "sleep 60" not in pyro_ok("ps", *c)
    pyro_json("exec", *c, "--detach", "--", "sleep", "60")
    pyro_ok("down", *c)
    assert pyro_json("service", "list", *c)["services"] == []  # list starts it again


def test_a_flooding_service_keeps_a_bounded_log(seed_dir: Path, workspaces: Workspaces) -> None:
    record = workspaces.create(seed=seed_dir, name="flood")
    flood = 5 * LOG_PART  # 20 MiB of output
    script = f"yes 0123456789abcdef | head -n {flood // 17}; echo END; exec sleep 60"
    pyro_ok("workspace", "service", "start", "flood", "spam", "--", "sh", "-c", script)
    logs = run_pyro("workspace", "service", "logs", "flood", "spam", "--tail", "1")
    while "END" not in logs.stdout:  # the flood takes a moment to get through
        logs = run_pyro("workspace", "service", "logs", "flood", "spam", "--tail", "1")
    assert logs.stdout == "END\n"
    kept = workspaces.exec(record.id, ["du", "-sb", "/run/pyro/services/spam"]).stdout
    assert int(kept.split()[0]) <= 2 * LOG_PART + 4096
    data = pyro_json("workspace", "service", "logs", "flood", "spam")
    assert data["dropped_bytes"] >= flood - 2 * LOG_PART - 17
    assert data["output"].endswith("0123456789abcdef\nEND\n")
    assert workspaces.status(record.id).changed_bytes == 0  # nothing reached the disk


def test_workspace_service_commands(seed_dir: Path, workspaces: Workspaces) -> None:
    workspaces.create(seed=seed_dir, name="svc")
    script = "echo $GREETING; trap '' TERM; exec sleep 60"
    started = pyro_json(
        "workspace", "service", "start", "svc", "web", "--env", "GREETING=hej", "--", "sh", "-c",
        script,
    )  # fmt: skip
    assert started["service"]["name"] == "web"
    listed = pyro_json("workspace", "service", "list", "svc")["services"]
    assert [s["name"] for s in listed] == ["web"]
    status = pyro_json("workspace", "service", "status", "svc", "web")
    assert status["service"]["state"] == "running"
    assert pyro_ok("workspace", "service", "logs", "svc", "web") == "hej\n"
    # A running name is taken; a bad one is refused; an unknown one is not found.
    taken = run_pyro("workspace", "service", "start", "svc", "web", "--", "true")
    assert taken.returncode == 1 and "running already" in taken.stderr
    bad = run_pyro("workspace", "service", "start", "svc", "../x", "--", "true")
    assert bad.returncode == 1 and "a service name is" in bad.stderr
    assert run_pyro("workspace", "service", "status", "svc", "nope").returncode == 1
    missing = run_pyro("workspace", "service", "start", "svc", "m", "--", "no-such-program")
    assert missing.returncode == 127 and "command not found" in missing.stderr
    # It ignores SIGTERM: stop escalates to SIGKILL after the timeout.
    stopped = pyro_json("workspace", "service", "stop", "svc", "web", "--timeout", "0.3")
    assert stopped["service"]["killed"] is True
    assert stopped["service"]["state"] == "exited" and stopped["service"]["signal"] == 9
    # An exited service's name can be used again.
    pyro_ok("workspace", "service", "start", "svc", "web", "--", "true")
