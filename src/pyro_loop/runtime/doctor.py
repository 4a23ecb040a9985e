"""What this host can do: the checks behind `pyro doctor`.

Every check is real: it runs the thing it checks (a user namespace, an overlay mount, a
bubblewrap sandbox) rather than guessing from versions, and names the fix when it fails.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from pyro_loop.records import dataclass
from pyro_loop.runtime.bwrap import SANDBOX_PYTHON

if TYPE_CHECKING:
    from pyro_loop.shapes import HostCheckJSON, ToolStateJSON


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str
    fix: str | None = None
    required: bool = True

    def to_json(self) -> HostCheckJSON:
        return {
            "name": self.name,
            "ok": self.ok,
            "required": self.required,
            "detail": self.detail,
            "fix": self.fix,
        }


def run_checks() -> list[Check]:
    checks = [
        _tool("bubblewrap", "bwrap", ["--version"], fix="apt-get install bubblewrap"),
        _tool("util-linux", "unshare", ["--version"], fix="apt-get install util-linux"),
        _tool("git", "git", ["--version"], fix="apt-get install git", required=False),
        _sandbox_python(),
        _userns_sysctls(),
        _seccomp(),
    ]
    checks.append(_sandbox_smoke_test(ready=all(c.ok for c in checks[:2])))
    checks += [_mmdebstrap(), _gnu_tar(), _kvm(), _limits()]
    if os.geteuid() == 0:
        checks.append(_workspace_uids())
    return checks


def tool_checks(tools: list[ToolStateJSON]) -> list[Check]:
    """The project's declared tools (tools.tool_states): a missing one is named with how to
    get it, before a prepare fails on it. Not required: `pyro prepare` builds them."""
    return [
        Check(
            f"tool {t['name']} {t['version']}",
            t["state"] == "cached",
            "cached" if t["state"] == "cached" else "not built yet",
            fix=t.get("fix"),
            required=False,
        )
        for t in tools
    ]


def _run(argv: list[str], timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, check=False,
        stdin=subprocess.DEVNULL,
    )  # fmt: skip


def _tool(name: str, command: str, args: list[str], *, fix: str, required: bool = True) -> Check:
    path = shutil.which(command)
    if path is None:
        return Check(name, False, f"`{command}` not found on PATH", fix, required)
    out = _run([path, *args])
    version = (out.stdout or out.stderr).strip().splitlines()[:1]
    return Check(name, True, version[0] if version else path, None, required)


def _gnu_tar() -> Check:
    """What a pull from a team cache unpacks through (fs/gnutar.py): optional, as a prepare
    without them builds locally."""
    from pyro_loop.fs.gnutar import UntarError, programs

    name = "GNU tar and setpriv"
    try:
        tar, setpriv = programs()
    except UntarError as exc:
        return Check(name, False, str(exc), "apt-get install tar util-linux", required=False)
    return Check(name, True, f"{tar} and {setpriv}: pulls from a team cache unpack through them",
                 required=False)  # fmt: skip


def _sandbox_python() -> Check:
    if os.access(SANDBOX_PYTHON, os.X_OK):
        return Check("python3 for the agent", True, SANDBOX_PYTHON)
    return Check(
        "python3 for the agent",
        False,
        f"{SANDBOX_PYTHON} is missing: the in-workspace agent runs on it",
        "apt-get install python3",
    )


def _seccomp() -> Check:
    """The workspace's seccomp filter must compile here (libseccomp, a known architecture)."""
    from pyro_loop.errors import HostUnsupportedError
    from pyro_loop.runtime.seccomp import compiled_filter, denied_syscalls

    try:
        program = compiled_filter()
    except HostUnsupportedError as exc:
        return Check("seccomp filter", False, str(exc), exc.hint)
    detail = (
        f"{len(denied_syscalls())} system calls restricted ({len(program) // 8} BPF instructions)"
    )
    return Check("seccomp filter", True, detail)


def _read_sysctl(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def _userns_sysctls() -> Check:
    max_ns = _read_sysctl("/proc/sys/user/max_user_namespaces")
    if max_ns == "0":
        return Check(
            "user namespaces", False, "user.max_user_namespaces is 0",
            "sysctl -w user.max_user_namespaces=15000 (and persist it in /etc/sysctl.d)",
        )  # fmt: skip
    if _read_sysctl("/proc/sys/kernel/unprivileged_userns_clone") == "0":
        return Check(
            "user namespaces", False, "kernel.unprivileged_userns_clone is 0",
            "sysctl -w kernel.unprivileged_userns_clone=1 (and persist it in /etc/sysctl.d)",
        )  # fmt: skip
    if _read_sysctl("/proc/sys/kernel/apparmor_restrict_unprivileged_userns") == "1":
        return Check(
            "user namespaces", False,
            "AppArmor restricts unprivileged user namespaces (Ubuntu 23.10+ default)",
            "allow them for bwrap and unshare with an AppArmor profile granting `userns,` "
            "(see docs/security.md), or sysctl -w kernel.apparmor_restrict_unprivileged_userns=0",
        )  # fmt: skip
    return Check("user namespaces", True, f"enabled (max {max_ns or 'unknown'})")


def _sandbox_smoke_test(*, ready: bool) -> Check:
    """Mount an overlay in a new user namespace and run `true` under bubblewrap on it."""
    name = "sandbox (userns + overlay + bwrap)"
    if not ready:
        return Check(name, False, "skipped: tools missing", "install the missing tools above")
    with tempfile.TemporaryDirectory(prefix="pyro-doctor-") as tmp:
        for sub in ("lower", "upper", "work", "merged"):
            Path(tmp, sub).mkdir()
        script = (
            f"mount -t overlay pyro -o userxattr,lowerdir={tmp}/lower,upperdir={tmp}/upper,"
            f"workdir={tmp}/work {tmp}/merged && "
            f"bwrap --unshare-user --unshare-pid --unshare-net --die-with-parent "
            f"--ro-bind /usr /usr --symlink usr/bin /bin --symlink usr/lib /lib "
            f"--symlink usr/lib64 /lib64 --bind {tmp}/merged /workspace --proc /proc "
            f"--dev /dev /usr/bin/true"
        )
        out = _run(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script])
    if out.returncode == 0:
        return Check(name, True, "a test sandbox started and ran `true`")
    reason = (out.stderr.strip().splitlines() or [f"exit code {out.returncode}"])[-1]
    return Check(
        name, False, reason,
        "check the user namespace line above; overlayfs in user namespaces needs Linux 5.11+",
    )  # fmt: skip


def _mmdebstrap() -> Check:
    """Debian environments are built with mmdebstrap, in a mode that depends on the user."""
    from pyro_loop.store.environments import MMDEBSTRAP_FIX

    name = "mmdebstrap (optional: debian:* environments)"
    path = shutil.which("mmdebstrap")
    if path is None:
        detail = "`mmdebstrap` not found on PATH: needed only to build debian:* environments"
        return Check(name, False, detail, MMDEBSTRAP_FIX, required=False)
    out = _run([path, "--version"])
    version = ((out.stdout or out.stderr).strip().splitlines() or [path])[0]
    mode = mmdebstrap_mode()
    if mode is None:
        return Check(
            name, False,
            f"{version}, but this user has no /etc/subuid range and fakechroot is missing",
            f"{MMDEBSTRAP_FIX} fakechroot fakeroot, or give the user subordinate ids "
            "(usermod --add-subuids 100000-165535 --add-subgids 100000-165535 USER)",
            required=False,
        )  # fmt: skip
    return Check(name, True, f"{version}; builds in {mode} mode", required=False)


def mmdebstrap_mode() -> str | None:
    """The mode mmdebstrap's `auto` picks for this user, or None if none can work."""
    if os.geteuid() == 0:
        return "root"
    if shutil.which("newuidmap") and _has_subordinate_ids():
        return "unshare"
    if shutil.which("fakechroot") and shutil.which("fakeroot"):
        return "fakechroot"
    return None


def _has_subordinate_ids() -> bool:
    import pwd

    uid = os.getuid()
    try:
        names = {str(uid), pwd.getpwuid(uid).pw_name}
    except KeyError:
        names = {str(uid)}
    for table in ("/etc/subuid", "/etc/subgid"):
        try:
            lines = Path(table).read_text().splitlines()
        except OSError:
            return False
        if not any(line.split(":", 1)[0] in names for line in lines if ":" in line):
            return False
    return True


def _workspace_uids() -> Check:
    """Under root: does each workspace get a uid of its own (idmapped mounts of the store)?"""
    from pyro_loop.home import pyro_home
    from pyro_loop.identity import sandbox_owner
    from pyro_loop.runtime.idmap import supported

    owner = sandbox_owner()
    if owner is None:  # root only inside a container's user namespace: the caller's uid
        return Check("workspace uids", True, "workspaces run as this user", required=False)
    home = pyro_home()
    home.mkdir(parents=True, exist_ok=True)
    why = supported(home, owner)
    if why is None:
        return Check("workspace uids", True, "each workspace runs as a uid of its own",
                     required=False)  # fmt: skip
    return Check(
        "workspace uids",
        False,
        f"all workspaces run as uid {owner}: no idmapped mounts of {home} ({why})",
        fix="Linux 5.19+ with the pyro home on ext4, xfs, btrfs or tmpfs (PYRO_HOME)",
        required=False,
    )


def _kvm() -> Check:
    usable = os.access("/dev/kvm", os.R_OK | os.W_OK)
    detail = (
        "/dev/kvm is accessible; pyro's default runtime does not need it"
        if usable
        else "/dev/kvm not accessible; not needed by the default runtime"
    )
    return Check("kvm (optional)", True, detail, required=False)


def _limits() -> Check:
    cgroup_v2 = Path("/sys/fs/cgroup/cgroup.controllers").exists()
    detail = (
        "rlimits (processes, open files, file size) enforced per workspace; cgroups "
        + ("v2 present but " if cgroup_v2 else "")
        + "not used (no delegation required)"
    )
    return Check("resource limits", True, detail, required=False)
