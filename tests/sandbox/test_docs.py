"""The README's Python examples run as written, in a real project."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from pyro_loop.workspace.manager import Workspaces
from tests.helpers.project import commit_project

README = Path(__file__).resolve().parents[2] / "README.md"


def python_blocks(markdown: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", markdown, flags=re.DOTALL)


def test_the_readme_python_examples_run(tmp_path: Path, workspaces: Workspaces) -> None:
    blocks = python_blocks(README.read_text())
    assert len(blocks) == 2, "the project loop and workspaces by hand"
    project = commit_project(
        tmp_path / "project", '[environment]\nbase = "host"\n', {"calc.py": "ANSWER = 42\n"}
    )
    for block in blocks:
        done = subprocess.run(
            [sys.executable, "-c", block], cwd=project, env=dict(os.environ),
            capture_output=True, text=True, timeout=300, check=False,
        )  # fmt: skip
        assert done.returncode == 0, f"{block}\n{done.stderr}"
    # The first left the project's workspace running (for the next session); the second
    # deleted its own ("dev").
    assert [s.record.labels.get("pyro") for s in workspaces.list()] == ["project"]
    assert (
        not (project / ".pyro").exists()
        and project.joinpath("calc.py").read_text() == "ANSWER = 42\n"
    )


ROOT = README.parent
DOCUMENTED = [README, *sorted((ROOT / "docs").glob("*.md")), ROOT / "bench" / "README.md",
              ROOT / "templates" / "pyro.toml"]  # fmt: skip


def test_every_pyro_command_line_in_the_docs_uses_options_that_exist() -> None:
    """Each `pyro SUBCOMMAND ... --option` written in the docs names an option that
    subcommand has (what follows a bare `--` is the user's command's)."""
    from typer.main import get_command

    from pyro_loop.cli.app import app

    root = get_command(app)
    checked, unknown = 0, []
    for doc in DOCUMENTED:
        for line in re.findall(r"pyro((?: [a-z][a-z-]*)+[^`\n|]*)", doc.read_text()):
            command, words = root, line.split()
            while words and words[0] in getattr(command, "commands", {}):
                command = command.commands[words.pop(0)]
            if command is root:
                continue  # prose ("pyro gives ..."), not a command line
            checked += 1
            known = {name for param in command.params for name in param.opts + param.secondary_opts}
            for word in words[: words.index("--") if "--" in words else None]:
                option = re.match(r"--?[a-zA-Z][\w-]*", word.strip("[]()`,."))
                if option and option[0] not in known | {"-h", "--help"}:
                    unknown.append(f"{doc.name}: pyro {line.strip()}: {option[0]}")
    assert checked > 100, checked
    assert unknown == []


def test_the_chat_host_docs_list_every_tool_with_its_profiles() -> None:
    """docs/chat-hosts.md's tool table against the server's profiles."""
    from pyro_loop.mcp.profiles import PROFILES

    short = {"core": "workspace-core", "full": "workspace-full", "vm-run": "vm-run"}
    documented: dict[str, set[str]] = {}
    for tools, profiles in re.findall(
        r"^\| (`\w+.*?) \| ([a-z, -]+) \|", (ROOT / "docs" / "chat-hosts.md").read_text(), re.M
    ):
        names = re.findall(r"`(\w+)", tools)
        wanted = {short[p.strip()] for p in profiles.split(",") if p.strip() != "all"}
        for name in names:
            documented[name] = set(PROFILES) if profiles.strip() == "all" else wanted
    actual = {
        tool: {profile for profile, tools in PROFILES.items() if tool in tools}
        for tool in set().union(*PROFILES.values())
    }
    assert documented == actual


def test_the_uid_a_workspace_process_sees_is_the_one_the_docs_give(
    workspaces: Workspaces, seed_dir: Path
) -> None:
    from pyro_loop.identity import sandbox_owner

    security = " ".join((ROOT / "docs" / "security.md").read_text().split())
    guide = " ".join((ROOT / "docs" / "workspaces.md").read_text().split())
    assert "workspace processes are that user, with the same uid inside" in security
    assert (
        "When pyro runs as root, workspaces run as dedicated unprivileged uids, shown as uid 0"
        in (security)
    )
    assert "the layer owner (`0x70000000`, or `PYRO_SANDBOX_UID`)" in security
    assert "each workspace runs as a uid of its own" in security
    assert "uid 0 inside when pyro runs as root, your own uid otherwise" in guide
    record = workspaces.create(seed=seed_dir)
    inside = workspaces.exec(record.id, ["sh", "-c", "id -u; touch /workspace/probe"])
    owner = sandbox_owner()
    if owner is not None:  # root: dedicated uids on the host, 0 inside
        assert owner == int(os.environ.get("PYRO_SANDBOX_UID", str(0x70000000)))
        assert inside.stdout == b"0\n"
        # The workspace's own (tests/sandbox/test_isolation.py), or the layer owner's where the
        # kernel has no idmapped mounts.
        assert record.uid is not None and owner <= record.uid <= owner + (1 << 24)
    else:  # an ordinary user: the same uid on both sides (tests/sandbox/test_unprivileged.py too)
        assert inside.stdout == f"{os.getuid()}\n".encode()
    upper = workspaces.resolve(record.id).upper(record.generation)
    assert (upper / "probe").lstat().st_uid == (record.uid or os.getuid())


def test_figures_in_the_docs_name_the_benchmark_row_that_measures_them() -> None:
    """A speed figure in the docs cites its source as `the "ROW" row of `bench/X.py``: the
    script must still print that row, so a figure never outlives its measurement."""
    cited = []
    for doc in DOCUMENTED:
        text = " ".join(doc.read_text().split())
        for row, script in re.findall(r'the "([^"]+)" row of `(bench/[a-z_]+\.py)`', text):
            assert f'"{row}"' in (ROOT / script).read_text(), f"{doc.name}: {script}: {row}"
            cited.append(row)
    # The figures a newcomer checks first: a warm prepare, and a chat host's first answer.
    assert "pyro prepare, warm (whole process)" in cited
    assert "pyro mcp serve: start -> initialize answered" in cited
