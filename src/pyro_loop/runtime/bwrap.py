"""The default runtime: user + mount namespaces, an overlay at /workspace, bubblewrap as jail.

Process tree of one workspace (all without root, all without a daemon):

    keeper (sh, own session)           <- killed to stop the workspace; outlives the CLI
                                          (started through setpriv when pyro runs as root,
                                          see identity.py)
      `- bwrap --die-with-parent       <- dies with the keeper
           `- bwrap init (pid 1 in the workspace's pid namespace)
                `- agent (python3, serves protocol.py on a pre-bound Unix socket)
                     `- commands, one process tree per exec

The keeper runs in a fresh user and mount namespace where it mounts the overlay (read-only
layers below, the workspace's upper dir on top) over /tmp, a directory every user can reach
(visible to nobody else: the mount namespace is private), then runs bubblewrap on it.
The mount exists only inside that namespace, so when the last process goes the mount goes:
nothing to unmount, nothing left behind on the host.

An environment with a root filesystem of its own (a Debian layer) changes only the mounts:
the keeper binds the root layer over /tmp and mounts the overlay on the layer's /workspace
directory (which the layer provides, as it does every other mount point: bubblewrap cannot
create them in a read-only root); bubblewrap binds /tmp read-only at / and the overlay again,
writable, at /workspace. The host environment keeps its single mount.

The agent's listening socket is bound by the caller before the sandbox starts and handed in
as an inherited descriptor, so a client can connect at once; the connection simply waits in
the backlog until the agent accepts it. The agent's files and bwrap's info file are handed
over as descriptors too: the sandbox user may not be able to traverse the path to pyro's
store (root's home, for instance), and needs no path to it. Layers and upper dirs are named
relative to the store, the keeper's working directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pyro_loop.errors import HostUnsupportedError
from pyro_loop.fs.socketpath import socket_address
from pyro_loop.fs.util import remove_tree
from pyro_loop.identity import sandbox_owner
from pyro_loop.procutil import reap_finished, spawn_detached
from pyro_loop.runtime import (
    HOME_DIR,
    SANDBOX_HOME,
    SANDBOX_PATH,
    Mount,
    SandboxHandle,
    SandboxSpec,
)
from pyro_loop.store.overlay import check_mount_path, overlay_options

if TYPE_CHECKING:
    import socket

    from pyro_loop.runtime.idmap import Covering

AGENT_SOURCE = Path(__file__).resolve().parent.parent / "agent"
# Host modules the agent imports too, shipped beside its own (standard library only, on the
# agent's Python floor): the one deep-tree walk serves both sides of the sandbox.
AGENT_SHARED = {"treewalk.py": AGENT_SOURCE.parent / "fs" / "treewalk.py"}
AGENT_FILES = (
    "boot.py",
    "server.py",
    "protocol.py",
    "confine.py",
    "deeptree.py",
    "treewalk.py",
    "fileops.py",
    "tarread.py",
    "tarput.py",
    "recycle.py",
    "quiet.py",
    "tarexport.py",
    "execop.py",
    "proctree.py",
    "services.py",
    "portfwd.py",
    "redact.py",
)
RUN_DIR = "/run/pyro"
RUN_SIZE = 256 * 1024 * 1024
AGENT_MOUNT = f"{RUN_DIR}/agent"
SANDBOX_PYTHON = "/usr/bin/python3"
STOP_TIMEOUT = 5.0
# With --network egress, a root filesystem of its own gets copies of these host files (the
# layer provides the files they are mounted on).
HOST_NETWORK_FILES = ("/etc/resolv.conf", "/etc/ssl/certs/ca-certificates.crt")

# Runs in the new user + mount namespace, in the store directory (lower layers, upper and
# work dirs and the root layer are given relative to it). Positional parameters: $1 overlay
# options, $2 the root layer ("" for the host's directories), $3 directories of the store
# to bind in the home ("downloads/uv=.cache/uv ..."), $4 the number of other directories to
# bind and that many sources, then the command (prlimit ... bwrap ...).
# All sources are given relative to the store (this shell's working directory): the overlay
# on /tmp may cover their absolute paths (a pyro home under /tmp), and the sandbox uid may
# not be able to reach them from / (a root's home). The other directories are bound first,
# each at /var/tmp/<n> on a tmpfs of this namespace, where bubblewrap binds them from (its
# sandbox gets a /var/tmp of its own); the home's are bound into the overlay's home, which
# bwrap's recursive bind of the home carries along. bwrap runs as a child, not exec'd: this
# shell is the keeper that bwrap dies with.
# The home directory in the overlay is bound at HOME: anything but a real directory there (a
# symlink synced from the repository, say) is replaced first, so the bind can never be
# pointed outside the workspace. Nothing else runs in this namespace yet, so check and
# mkdir cannot race.
KEEPER_SCRIPT = f"""\
options=$1 root=$2 home_binds=$3 mounts=$4
shift 4
if [ "$mounts" -gt 0 ]; then
  mount -t tmpfs -o mode=0755 pyro /var/tmp || exit 111
fi
n=0
while [ "$n" -lt "$mounts" ]; do
  mkdir "/var/tmp/$n" && mount --no-canonicalize --bind "$1" "/var/tmp/$n" || exit 111
  n=$((n + 1))
  shift
done
if [ -z "$root" ]; then
  mount -t overlay pyro -o "$options" /tmp || exit 111
  home=/tmp/{HOME_DIR}
else
  mount --bind "$root" /tmp && mount -t overlay pyro -o "$options" /tmp/workspace || exit 111
  home=/tmp/workspace/{HOME_DIR}
fi
if [ -L "$home" ] || {{ [ -e "$home" ] && [ ! -d "$home" ]; }}; then rm -f "$home" || exit 111; fi
mkdir -p "$home" || exit 111
real_home=$(realpath "$home") || exit 111
for pair in $home_binds; do
  target="$home/${{pair#*=}}"
  mkdir -p "$target" || exit 111
  case $(realpath "$target") in "$real_home"/*) ;; *) exit 111 ;; esac
  mount --bind "${{pair%%=*}}" "$target" || exit 111
done
cd / && unset OLDPWD || exit 111
"$@"
exit $?
"""
MOUNTS_DIR = "/var/tmp"
EXIT_SETUP_FAILED = 111


class BwrapRuntime:
    name = "bwrap"

    def start(self, spec: SandboxSpec) -> SandboxHandle:
        import shutil
        import subprocess  # here: the daily commands load this module only to ask is_running

        bwrap = shutil.which("bwrap")
        unshare = shutil.which("unshare")
        prlimit = shutil.which("prlimit")
        if bwrap is None:
            raise HostUnsupportedError(
                "bubblewrap is not installed: pyro needs it to isolate workspaces",
                hint="install it (Debian/Ubuntu: apt-get install bubblewrap), then `pyro doctor`",
            )
        if unshare is None or prlimit is None:
            raise HostUnsupportedError(
                "`unshare` or `prlimit` (util-linux) is missing", hint="apt-get install util-linux"
            )
        store = spec.store_root
        # Compiled first: without a filter nothing starts (fail closed, with the fix named).
        from pyro_loop.runtime.seccomp import compiled_filter, filter_fd

        compiled_filter()
        options = overlay_options(
            spec.lowers, _relative(spec.upper, store), _relative(spec.work, store)
        )
        root_layer = ""
        if spec.root_layer is not None:
            root_layer = check_mount_path(_relative(store / spec.root_layer, store))
        agent_fds = {name: os.open(path, os.O_RDONLY | os.O_CLOEXEC)
                     for name, path in agent_files(store).items()}  # fmt: skip
        data_fds = dict(agent_fds)
        home_binds, path_binds = _split_mounts(spec)
        for mount in spec.mounts:
            # A read-only file is handed over as a copy read by this process: the sandbox
            # uid may not be able to reach it (root's home), and nothing inside can change it.
            source = store / mount.source  # an absolute source replaces the base
            if not mount.writable and source.is_file():
                with contextlib.suppress(OSError):
                    data_fds[mount.target] = os.open(source, os.O_RDONLY | os.O_CLOEXEC)
        if root_layer and spec.network:
            # The network is the host's, and so are the resolver and the certificate
            # authorities it trusts (a proxy's, say): copies of both replace the root's.
            for path in HOST_NETWORK_FILES:
                with contextlib.suppress(OSError):
                    data_fds[path] = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        info_fd = os.open(spec.info_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC)
        listener = _bind_listener(spec.socket_path)
        seccomp_fd = filter_fd()
        inherited = (listener.fileno(), info_fd, seccomp_fd, *data_fds.values())
        covering = None
        try:
            prefix, covering = _drop_root(spec)
            argv = [
                *prefix,
                unshare, "--user", "--map-root-user", "--mount", "--propagation", "private",
                "--", "/bin/sh", "-c", KEEPER_SCRIPT, "pyro-keeper", options, root_layer,
                home_binds, str(len(path_binds)),
                *(_mount_source(m.source, store) for m in path_binds),
                prlimit, *_prlimit_args(spec),
                *self._bwrap_argv(
                    bwrap, spec, listen_fd=listener.fileno(), info_fd=info_fd,
                    seccomp_fd=seccomp_fd, data_fds=data_fds, binds=path_binds,
                ),
            ]  # fmt: skip
            with spec.log_path.open("ab") as log:
                # The keeper belongs to the workspace, not to this process: never waited for.
                try:
                    keeper = spawn_detached(
                        argv, log=log, pass_fds=inherited, cwd=store, preexec=covering
                    )
                except subprocess.SubprocessError as exc:  # `covering` failed
                    raise HostUnsupportedError(
                        "the workspace's sandbox did not start: cannot give its uid the layers",
                        hint=f"see {spec.log_path}; `pyro doctor`",
                    ) from exc
        finally:
            if covering is not None:
                covering.close()
            # The sandbox holds them now; if it dies, connects are refused.
            listener.close()
            for fd in (info_fd, seccomp_fd, *data_fds.values()):
                os.close(fd)
        return SandboxHandle(keeper.pid, _start_time(keeper.pid) or 0)

    def is_running(self, handle: SandboxHandle) -> bool:
        return _start_time(handle.keeper_pid) == handle.keeper_start

    def stop(self, handle: SandboxHandle, spec: SandboxSpec, *, wait: bool = True) -> list[int]:
        init = _sandbox_init(spec.info_path, handle.keeper_pid)
        reap_finished()
        import signal  # here: finding and checking a workspace must not pay for it

        if self.is_running(handle):
            # The keeper leads its own process group; killing the group takes bwrap too, and
            # bwrap's init dies with bwrap (--die-with-parent), taking the pid namespace with it.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(handle.keeper_pid, signal.SIGKILL)
        if init is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(init[0], signal.SIGKILL)
        if not wait:
            # Everything is already doomed (SIGKILL cannot be caught); the kernel finishes
            # tearing the namespace down in a few ms. The caller gets the pid to wait for.
            return [init[0]] if init is not None else []
        deadline = time.monotonic() + STOP_TIMEOUT
        while time.monotonic() < deadline:
            keeper_gone = not self.is_running(handle)
            # The namespace's init exits only after every process in the namespace is gone.
            init_gone = init is None or _start_time(init[0]) != init[1]
            if keeper_gone and init_gone:
                reap_finished()
                return []
            time.sleep(0.0005)
        raise HostUnsupportedError(f"workspace processes did not exit within {STOP_TIMEOUT} s")

    def _bwrap_argv(
        self,
        bwrap: str,
        spec: SandboxSpec,
        *,
        listen_fd: int,
        info_fd: int,
        seccomp_fd: int,
        data_fds: dict[str, int],
        binds: list[Mount] | None = None,
    ) -> list[str]:
        """`data_fds`: the agent's files by name, and absolute paths for other files;
        `binds`: host directories, bound by the keeper (see KEEPER_SCRIPT)."""
        uid, gid = str(os.getuid()), str(os.getgid())
        argv = [
            bwrap,
            "--unshare-user", "--uid", uid, "--gid", gid, "--disable-userns",
            "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try",
            "--hostname", spec.hostname,
            "--die-with-parent", "--new-session", "--cap-drop", "ALL",
            "--info-fd", str(info_fd),
            # Loaded into the agent right before bwrap executes it (after no_new_privs), so
            # every process of the workspace runs under it (see seccomp.py).
            "--seccomp", str(seccomp_fd),
            "--clearenv",
            "--setenv", "PATH", SANDBOX_PATH,
            "--setenv", "HOME", SANDBOX_HOME,
            "--setenv", "LANG", "C.UTF-8",
            "--setenv", "PYRO_WORKSPACE", "1",
        ]  # fmt: skip
        for name, value in spec.env:  # after the defaults: a later --setenv wins
            argv += ["--setenv", name, value]
        if not spec.network:
            argv.append("--unshare-net")
        if spec.root_layer is None:
            argv += _host_root_args()
            overlay = "/tmp"  # the keeper's /tmp
        else:
            # The keeper's /tmp is the root layer, with the overlay on its /workspace.
            argv += ["--ro-bind", "/tmp", "/"]
            overlay = "/tmp/workspace"
        argv += [
            "--proc", "/proc",
            "--dev", "/dev",
            "--tmpfs", "/tmp",
            "--dir", "/var", "--tmpfs", "/var/tmp",
            "--bind", overlay, "/workspace",
            # HOME is the overlay's home directory (see HOME_DIR), which /workspace does not
            # show: an empty read-only directory covers it there.
            "--bind", f"{overlay}/{HOME_DIR}", SANDBOX_HOME,
            "--tmpfs", f"/workspace/{HOME_DIR}", "--remount-ro", f"/workspace/{HOME_DIR}",
            # /run/pyro: the services' state and bounded logs (see agent/services.py); the
            # size caps what many services together can keep in memory.
            "--size", str(RUN_SIZE), "--tmpfs", RUN_DIR,
            "--dir", f"{RUN_DIR}/services",
            "--tmpfs", AGENT_MOUNT,
            "--dir", f"{AGENT_MOUNT}/__pycache__",
        ]  # fmt: skip
        for n, mount in enumerate(binds or ()):  # bound at MOUNTS_DIR/<n> by the keeper
            argv += ["--bind" if mount.writable else "--ro-bind", f"{MOUNTS_DIR}/{n}", mount.target]
        for name, fd in data_fds.items():
            target = name if name.startswith("/") else f"{AGENT_MOUNT}/{name}"
            argv += ["--ro-bind-data", str(fd), target]
        argv += [
            "--remount-ro", AGENT_MOUNT,
            "--chdir", "/workspace",
            "--",
            # -E -s -S: no environment, user site or site module; -B: the dir is read-only.
            SANDBOX_PYTHON, "-E", "-s", "-S", "-B", f"{AGENT_MOUNT}/boot.py", str(listen_fd),
        ]  # fmt: skip
        return argv


def _split_mounts(spec: SandboxSpec) -> tuple[str, list[Mount]]:
    """Writable directories of the store bound in the home (the keeper's "$3"), and the
    other directories (bound by the keeper, see KEEPER_SCRIPT). Files are not here: they
    are handed over as copies."""
    pairs: list[str] = []
    binds: list[Mount] = []
    for mount in spec.mounts:
        source = spec.store_root / mount.source  # an absolute source replaces the base
        if not mount.writable and source.is_file():
            continue
        in_home = mount.target.startswith(SANDBOX_HOME + "/")
        if mount.writable and in_home and source.is_relative_to(spec.store_root):
            pair = f"{source.relative_to(spec.store_root)}={mount.target[len(SANDBOX_HOME) + 1 :]}"
            if any(c.isspace() or c in "'\"" for c in pair):  # words of an unquoted "$3"
                raise ValueError(f"mount path not usable by the keeper: {pair!r}")
            pairs.append(pair)
        elif os.path.isdir(source):
            binds.append(mount)
    return " ".join(pairs), binds


def _mount_source(source: str, store: Path) -> str:
    """A mount's source as the keeper reaches it: relative to the store, its working
    directory (see KEEPER_SCRIPT); "./" or "../" first, so it never reads as an option."""
    relative = os.path.relpath(store / source, store)
    return relative if relative.startswith(("./", "../")) else f"./{relative}"


def _relative(path: Path, base: Path) -> str:
    """`path` relative to `base` when inside it (short mount options), else absolute."""
    try:
        return str(path.relative_to(base))
    except ValueError:
        return str(path)


def _drop_root(spec: SandboxSpec) -> tuple[list[str], Covering | None]:
    """When pyro runs as root, the keeper (and so the workspace) runs as the workspace's
    uid (`spec.uid`) or, without one, as the layer owner (identity.py): the command prefix
    that drops to it, and what gives that uid the store's directories as its own.

    That uid must be able to look up layers and upper dirs relative to the store (its working
    directory), so a root store is made searchable, not listable, by others.
    """
    owner = sandbox_owner()
    if owner is None:
        return [], None
    store = spec.store_root
    # Searchable, not listable: the sandbox uid looks up paths it is given, nobody can find
    # workspace ids or layer keys by listing (each workspace's own directory is 0700).
    for directory in (store, store / "workspaces", store / "layers"):
        with contextlib.suppress(FileNotFoundError):
            directory.chmod(0o711)
    import shutil

    setpriv = shutil.which("setpriv")
    if setpriv is None:
        raise HostUnsupportedError(
            "running pyro as root needs `setpriv` (util-linux) to drop to an unprivileged uid",
            hint="apt-get install util-linux",
        )
    uid = owner if spec.uid is None else spec.uid
    covering = None
    if uid != owner:
        from pyro_loop.runtime.idmap import Covering

        covering = Covering(owner, uid, _owned_dirs(spec))
    return [setpriv, f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--"], covering


def _owned_dirs(spec: SandboxSpec) -> list[tuple[str, bool]]:
    """The store's directories the sandbox mounts (its layers, the store's caches), relative
    to the store, each with whether the sandbox may write it: what the layer owner owns."""
    store = spec.store_root
    dirs = [(lower, False) for lower in spec.lowers]
    if spec.root_layer is not None:
        dirs.append((spec.root_layer, False))
    for mount in spec.mounts:
        # An absolute source replaces the base; "../" may lead out of the store.
        source = Path(os.path.normpath(store / mount.source))
        if source.is_relative_to(store) and source.is_dir():
            dirs.append((_mount_source(mount.source, store), mount.writable))
    return dirs


def agent_source(name: str) -> Path:
    """Where the agent's file `name` comes from in this package."""
    return AGENT_SHARED.get(name, AGENT_SOURCE / name)


def agent_files(home: Path) -> dict[str, Path]:
    """The agent's files, byte-compiled by the sandbox's python, in the store (once per version).

    Returns names relative to the agent's directory in the sandbox. Compiled ahead of time
    because the agent's start-up is on the path of every create and reset, and the sandbox
    cannot write a bytecode cache. The bytecode is checked by hash, not by timestamp: the
    files reach the sandbox as copies with new timestamps.

    A process that starts many sandboxes (the MCP server, a test run) hashes the sources once
    while their stat data stay the same, not on every create and reset.
    """
    sources = tuple(agent_source(name) for name in AGENT_FILES)
    identity = (str(home), tuple(_stat_identity(path) for path in sources))
    known = _AGENT_FILES.get(identity)
    if known is not None and (known[0] / "COMPLETE").exists():
        return dict(known[1])
    import hashlib

    digest = hashlib.sha256()
    for path in sources:
        digest.update(path.read_bytes())
    target = home / "agent" / digest.hexdigest()[:16]
    if not (target / "COMPLETE").exists():
        _install_agent(target)
    files = {name: target / name for name in AGENT_FILES}
    for pyc in sorted((target / "__pycache__").glob("*.pyc")):
        files[f"__pycache__/{pyc.name}"] = pyc
    _AGENT_FILES.clear()  # one home at a time is the usual case: keep the cache one entry
    _AGENT_FILES[identity] = (target, dict(files))
    return files


_AGENT_FILES: dict[tuple[Any, ...], tuple[Path, dict[str, Path]]] = {}


def _stat_identity(path: Path) -> tuple[int, ...]:
    st = path.stat()
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _install_agent(target: Path) -> None:
    import shutil
    import subprocess
    import uuid

    staging = target.parent / f".{os.getpid()}-{uuid.uuid4().hex[:8]}"
    staging.mkdir(parents=True)
    for name in AGENT_FILES:
        shutil.copyfile(agent_source(name), staging / name)
    # Best effort: without bytecode the agent still starts, a few ms slower.
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        subprocess.run(
            [SANDBOX_PYTHON, "-E", "-s", "-m", "compileall", "-q",
             "--invalidation-mode", "unchecked-hash", str(staging)],
            check=False, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL, timeout=60,
        )  # fmt: skip
    (staging / "COMPLETE").touch()
    try:
        os.rename(staging, target)
    except OSError:  # another process installed it first
        remove_tree(staging)


def _host_root_args() -> list[str]:
    """The `host` environment: the host's system directories, read-only, on an empty root."""
    args: list[str] = []
    for name in ("usr", "etc", "opt", "bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        path = Path("/") / name
        if path.is_symlink():
            args += ["--symlink", os.readlink(path), f"/{name}"]
        elif path.is_dir():
            args += ["--ro-bind", str(path), f"/{name}"]
    return args


def _prlimit_args(spec: SandboxSpec) -> list[str]:
    import resource

    limits = spec.limits
    args = [
        f"--nproc={_within_hard_limit(resource.RLIMIT_NPROC, limits.processes)}",
        f"--nofile={_within_hard_limit(resource.RLIMIT_NOFILE, limits.open_files)}",
    ]
    if limits.file_size_mib is not None:
        args.append(f"--fsize={limits.file_size_mib * 1024 * 1024}")
    if limits.address_space_mib is not None:
        args.append(f"--as={limits.address_space_mib * 1024 * 1024}")
    return args


def _within_hard_limit(which: int, wanted: int) -> int:
    """An unprivileged process may lower its limits but never raise them past the hard one."""
    import resource

    hard = resource.getrlimit(which)[1]
    return wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)


def _bind_listener(path: Path) -> socket.socket:
    import socket  # here: the commands that only read records never bind one

    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(socket_address(path))
        sock.listen(128)
    except BaseException:
        sock.close()
        raise
    return sock


def _stat_fields(pid: int) -> list[bytes] | None:
    """/proc/<pid>/stat after the command name (state, ppid, ...), or None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return None
    # The command name may contain spaces and parentheses: the fields start after the last ")".
    return stat[stat.rfind(b")") + 2 :].split()


def _start_time(pid: int) -> int | None:
    """The process's start time (clock ticks after boot), or None if it is gone or a zombie."""
    fields = _stat_fields(pid)
    if fields is None or fields[0] in (b"Z", b"X"):
        return None
    return int(fields[19])


def _sandbox_init(info_path: Path, keeper_pid: int) -> tuple[int, int] | None:
    """The host pid (and start time) of the workspace's pid-namespace init, from bwrap's info.

    Trusted only if it really is the keeper's grandchild (keeper -> bwrap -> init), so a
    stale or tampered info file can never point the kill at an unrelated process.
    """
    try:
        pid = int(json.loads(info_path.read_text())["child-pid"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    parent = _parent_pid(pid)
    if parent is None or _parent_pid(parent) != keeper_pid:
        return None
    start = _start_time(pid)
    return None if start is None else (pid, start)


def _parent_pid(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return None if fields is None else int(fields[1])
