"""When the host cannot isolate a workspace, pyro fails closed with the cause and the fix."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.project import run_pyro


def _pyro_without_user_namespaces(*args: str) -> subprocess.CompletedProcess[str]:
    """Run pyro in a user namespace whose own limit forbids creating any further one.

    `user.max_user_namespaces` is per user namespace, so this changes nothing for the host.
    """
    script = 'echo 0 > /proc/sys/user/max_user_namespaces && exec "$@"'
    return subprocess.run(
        ["unshare", "--user", "--map-root-user", "sh", "-c", script, "sh",
         sys.executable, "-m", "pyro_loop", *args],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def test_create_without_user_namespaces_fails_with_the_cause(
    seed_dir: Path, pyro_home: Path
) -> None:
    result = _pyro_without_user_namespaces("workspace", "create", "--seed-path", str(seed_dir))
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("pyro: error: cannot create the workspace's namespaces")
    assert "pyro doctor" in lines[1]
    # Nothing half-made is left behind, and nothing ran unsandboxed.
    listing = run_pyro("workspace", "list", "--json")
    assert json.loads(listing.stdout)["workspaces"] == []


def test_doctor_names_the_missing_user_namespaces_and_the_fix() -> None:
    result = _pyro_without_user_namespaces("doctor", "--json")
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["ready"] is False
    userns = next(c for c in report["checks"] if c["name"] == "user namespaces")
    assert userns["ok"] is False
    assert "max_user_namespaces" in userns["fix"]
    smoke = next(c for c in report["checks"] if c["name"].startswith("sandbox"))
    assert smoke["ok"] is False


def test_create_without_bubblewrap_fails_with_the_fix(seed_dir: Path, tmp_path: Path) -> None:
    # A PATH with everything pyro needs except bwrap.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("unshare", "prlimit", "sh", "git"):
        found = shutil.which(tool)
        assert found is not None
        os.symlink(found, bin_dir / tool)
    result = run_pyro(
        "workspace", "create", "--seed-path", str(seed_dir), env={"PATH": str(bin_dir)}
    )
    assert result.returncode == 1
    assert result.stderr.startswith("pyro: error: bubblewrap is not installed")
    assert "apt-get install bubblewrap" in result.stderr
    assert json.loads(run_pyro("workspace", "list", "--json").stdout)["workspaces"] == []


def test_doctor_is_ready_on_this_host() -> None:
    result = run_pyro("doctor", "--json")
    report = json.loads(result.stdout)
    failing = [c for c in report["checks"] if c["required"] and not c["ok"]]
    assert result.returncode == 0 and report["ready"] is True, failing


def _libseccomp_path() -> Path:
    from pyro_loop.runtime.seccomp import _library

    _library()  # loaded into this process: its path is in our memory map
    for line in Path("/proc/self/maps").read_text().splitlines():
        if "libseccomp.so" in line:
            return Path(line.split()[-1])
    raise AssertionError("libseccomp is not mapped")


def _pyro_without_libseccomp(*args: str) -> subprocess.CompletedProcess[str]:
    """Run pyro where libseccomp cannot be loaded: /dev/null bound over it, in a private
    mount namespace (so the host's library is untouched)."""
    script = 'mount --bind /dev/null "$0" && exec "$@"'
    return subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script,
         str(_libseccomp_path()), sys.executable, "-m", "pyro_loop", *args],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


@pytest.mark.skipif(os.getuid() != 0, reason="hiding a system library needs a mount (root)")
def test_create_without_a_seccomp_filter_fails_closed_with_the_fix(
    seed_dir: Path, pyro_home: Path
) -> None:
    library = _libseccomp_path()
    before = library.read_bytes()
    result = _pyro_without_libseccomp("workspace", "create", "--seed-path", str(seed_dir))
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[0].startswith("pyro: error: cannot load libseccomp.so.2"), lines
    assert "apt-get install libseccomp2" in result.stderr
    # Nothing ran without the filter: no workspace, no sandbox process, the library intact.
    assert json.loads(run_pyro("workspace", "list", "--json").stdout)["workspaces"] == []
    assert not any((pyro_home / "workspaces").glob("*/agent.log"))
    assert library.read_bytes() == before
    doctor = _pyro_without_libseccomp("doctor", "--json")
    assert doctor.returncode == 1
    check = next(c for c in json.loads(doctor.stdout)["checks"] if c["name"] == "seccomp filter")
    assert check["ok"] is False and check["required"] is True
    assert "libseccomp2" in check["fix"]
