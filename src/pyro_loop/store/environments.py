"""Environments: what a workspace's root filesystem is made of.

`host` (the default) is the host's own /usr, /etc and /opt, read-only; nothing is built.
`debian:<release>` is a Debian root filesystem built once with mmdebstrap and kept in the
layer store, keyed by a digest of its inputs (release, packages, architecture, the format
of the build below), so every workspace that asks for the same inputs shares one layer.

The build streams mmdebstrap's tarball (`mmdebstrap ... -`) into the store's staging
directory and unpacks it here, as the caller, so that every file belongs to the caller
whatever mode mmdebstrap picked (root, unshare with subordinate ids, fakechroot): the
workspace's single-uid user namespace could not map the subordinate ids an unprivileged
`--mode=unshare` directory would carry. When pyro runs as root, publishing the layer hands
it to the sandbox uid like every other layer (identity.hand_over).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import stat
import subprocess
import time
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

from pyro_loop.digest import sha256_hex
from pyro_loop.errors import HostUnsupportedError, InvalidInputError, PyroError
from pyro_loop.progress import OnProgress, Phase
from pyro_loop.records import dataclass
from pyro_loop.store.layers import Layer, LayerStore

# Bump when the build below changes what ends up in the tree: old layers are then rebuilt.
FORMAT_VERSION = 1
HOST = "host"
DEBIAN = "debian"
# Release numbers and codenames pyro knows; numbers are the canonical spelling.
DEBIAN_RELEASES = {"11": "bullseye", "12": "bookworm", "13": "trixie"}
# The agent runs on /usr/bin/python3; ca-certificates makes https work with --network egress.
REQUIRED_PACKAGES = ("ca-certificates", "python3")
# Mount points bubblewrap needs in a read-only root (it cannot create them there).
MOUNT_POINTS = ("workspace", "run/pyro/agent", "home/pyro", "tmp", "var/tmp", "proc", "dev")
HOSTS = "127.0.0.1\tlocalhost\n127.0.1.1\tpyro\n::1\tlocalhost ip6-localhost ip6-loopback\n"
# Debian policy 5.6.7: lowercase letters, digits, + - . ; at least two characters.
_PACKAGE_RE = re.compile(r"^[a-z0-9][a-z0-9+.-]+$")
# mmdebstrap's status lines, as progress phases.
_PHASES = {
    "I: running apt-get update": "updating package lists",
    "I: downloading packages": "downloading packages",
    "I: extracting archives": "extracting essential packages",
    "I: installing essential packages": "installing essential packages",
    "I: installing remaining packages": "installing packages",
    "I: cleaning package lists": "cleaning up",
    "I: creating tarball": "unpacking into the layer store",
}
MMDEBSTRAP_FIX = "apt-get install mmdebstrap uidmap"


@dataclass(frozen=True)
class EnvironmentSpec:
    """What an environment is built from: `base` ("host" or "debian"), release, packages."""

    base: str
    release: str | None = None  # the Debian codename
    packages: tuple[str, ...] = ()  # everything installed, sorted and unique

    @property
    def name(self) -> str:
        """The canonical name: `host`, `debian:12` (numbers rather than codenames)."""
        if self.base == HOST:
            return HOST
        number = next((n for n, c in DEBIAN_RELEASES.items() if c == self.release), None)
        return f"{self.base}:{number or self.release}"

    @property
    def extra_packages(self) -> tuple[str, ...]:
        """The packages asked for on top of those every environment has."""
        return tuple(p for p in self.packages if p not in REQUIRED_PACKAGES)

    def describe(self) -> str:
        extra = self.extra_packages
        return f"{self.name} (+{', '.join(extra)})" if extra else self.name

    def inputs(self) -> dict[str, Any]:
        """Everything that determines the tree: hashed into the layer key, kept in its meta."""
        return {
            "format": FORMAT_VERSION,
            "base": self.base,
            "release": self.release,
            "packages": list(self.packages),
            "variant": "apt",
            "architecture": os.uname().machine,
        }


def supported_environments() -> list[str]:
    debian = [f"debian:{n} ({c})" for n, c in DEBIAN_RELEASES.items()]
    return [HOST, *debian]


def parse_environment(name: str, packages: Iterable[str] = ()) -> EnvironmentSpec:
    """Validate an environment name (`host`, `debian:12`, `debian:bookworm`) and packages."""
    extra = list(packages)
    if name == HOST:
        if extra:
            raise InvalidInputError(
                "extra packages need a Debian environment (--env debian:12), not host"
            )
        return EnvironmentSpec(HOST)
    base, sep, release = name.partition(":")
    codename = DEBIAN_RELEASES.get(release) or (
        release if release in DEBIAN_RELEASES.values() else None
    )
    if base != DEBIAN or not sep or codename is None:
        raise InvalidInputError(
            f"unknown environment {name!r}: supported are {', '.join(supported_environments())}"
            " (a codename works too, e.g. debian:bookworm)"
        )
    for package in extra:
        if not isinstance(package, str) or not _PACKAGE_RE.fullmatch(package):
            raise InvalidInputError(
                f"not a Debian package name: {package!r} (lowercase letters, digits, + - .)"
            )
    return EnvironmentSpec(DEBIAN, codename, tuple(sorted({*REQUIRED_PACKAGES, *extra})))


def environment_key(spec: EnvironmentSpec) -> str:
    """The layer key: sha256 of the canonical JSON of the spec's inputs."""
    canonical = json.dumps(spec.inputs(), sort_keys=True, separators=(",", ":"))
    return sha256_hex(canonical.encode())


def ensure_environment(
    store: LayerStore,
    spec: EnvironmentSpec,
    *,
    on_progress: OnProgress | None = None,
    log: Path | None = None,
) -> Layer | None:
    """The environment's root filesystem layer, built into the store if missing (None: host).

    Built at most once per key: a second caller waits for the first and reuses its layer
    (LayerStore.build); a build that fails or is killed publishes nothing. mmdebstrap's
    output goes to `log` (default: `<home>/logs/environment-<key>.log`). `on_progress` gets
    one "environment" event per phase, called from the calling thread.
    """
    if spec.base == HOST:
        return None
    key = environment_key(spec)
    existing = store.get(key)
    if existing is not None:
        return existing
    progress = Phase("environment", on_progress)
    mmdebstrap = shutil.which("mmdebstrap")
    if mmdebstrap is None:
        raise HostUnsupportedError(
            f"building the {spec.name} environment needs mmdebstrap, which is not installed",
            hint=f"{MMDEBSTRAP_FIX} (then `pyro doctor`)",
        )
    log_path = log or store.home / "logs" / f"environment-{key[:16]}.log"

    def build(tree: Path) -> None:
        started = time.monotonic()
        progress(f"building {spec.describe()} with mmdebstrap (log: {log_path})")
        _build_debian(mmdebstrap, spec, tree, log_path, progress)
        progress(f"built {spec.name} in {time.monotonic() - started:.0f} s; publishing the layer")

    return store.build(
        key,
        build,
        kind="environment",
        inputs={"environment": spec.name, **spec.inputs()},
        on_wait=lambda: progress(f"waiting for another pyro process building {spec.name}"),
    )


# -- the Debian build ------------------------------------------------------------------------


def _build_debian(
    mmdebstrap: str, spec: EnvironmentSpec, tree: Path, log_path: Path, progress: Phase
) -> None:
    import threading

    assert spec.release is not None
    argv = [
        mmdebstrap, "--variant=apt", "--format=tar",
        f"--include={','.join(spec.packages)}",
        spec.release, "-",
    ]  # fmt: skip
    log_path.parent.mkdir(parents=True, exist_ok=True)
    # C locale: the status lines are matched as progress phases.
    env = {**os.environ, "LC_ALL": "C.UTF-8", "LANGUAGE": ""}
    with log_path.open("w") as log, subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        env=env, cwd="/",
    ) as proc:  # fmt: skip
        log.write(f"$ {' '.join(argv)}\n")
        log.flush()
        assert proc.stdout is not None and proc.stderr is not None
        failure: list[BaseException] = []
        unpacker = threading.Thread(
            target=_unpack_stream, args=(proc.stdout, tree, failure), daemon=True
        )
        unpacker.start()
        lines: list[str] = []
        try:
            for raw in proc.stderr:
                line = raw.decode(errors="replace").rstrip("\n")
                lines.append(line)
                log.write(line + "\n")
                log.flush()
                phase = _phase(line)
                if phase is not None:
                    progress(f"{spec.name}: {phase}")
            unpacker.join()
            code = proc.wait()
        except BaseException:
            _terminate(proc)
            unpacker.join(timeout=10)
            raise
        # A refused member (PyroError) is the cause even if mmdebstrap then hit EPIPE; any
        # other unpacking error after a failed mmdebstrap is only a consequence (no tarball).
        refused = bool(failure) and (isinstance(failure[0], PyroError) or code == 0)
        if refused:
            log.write(f"pyro: unpacking the tarball failed: {failure[0]}\n")
        if code != 0 or failure:
            reason = f"unpacking: {failure[0]}" if refused else f"mmdebstrap exited with {code}"
            tail = [ln[:200] for ln in lines if ln and not ln.startswith("I: ")][-3:]
            raise PyroError(
                f"building the {spec.name} environment failed ({reason})"
                + (f": {' | '.join(tail)}" if tail else "")
                + f"; log: {log_path}",
                hint=f"mmdebstrap's full output is in {log_path}",
            )
    _finish_tree(tree)


def _phase(line: str) -> str | None:
    if line.startswith("I: automatically chosen mode: "):
        return f"mmdebstrap runs in {line.rsplit(' ', 1)[-1]} mode"
    for prefix, phase in _PHASES.items():
        if line.startswith(prefix):
            return phase
    return None


def _terminate(proc: subprocess.Popen[bytes]) -> None:
    """Stop mmdebstrap and let it remove its temporary directory (it handles SIGTERM)."""
    with contextlib.suppress(ProcessLookupError):
        proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def _unpack_stream(stream: IO[bytes], tree: Path, failure: list[BaseException]) -> None:
    try:
        extract_root_tar(stream, tree)
        while stream.read(1 << 16):  # the archive's padding: mmdebstrap must not hit EPIPE
            pass
    except BaseException as exc:
        failure.append(exc)
    finally:
        # After a failure, closing our end makes mmdebstrap stop (EPIPE) instead of blocking.
        stream.close()


def extract_root_tar(fileobj: IO[bytes], dest: Path) -> None:
    """Unpack a root filesystem tarball into the empty directory `dest`, owned by the caller.

    Absolute symlinks are kept (a Debian root needs them: /etc/alternatives, ...), but every
    member's parent must be a directory unpacked before it, so none is written through a
    link; device nodes and FIFOs in /dev are skipped (the sandbox mounts its own /dev). The
    other rules are `safetar`'s.
    """
    import tarfile

    from pyro_loop.fs import safetar

    rules = safetar.Rules(
        "the root filesystem",
        absolute_links=True,
        implicit_parents=False,
        skip_devices_below="dev/",
    )
    with tarfile.open(fileobj=fileobj, mode="r|") as tar:
        safetar.extract(tar, dest, rules)


def _finish_tree(tree: Path) -> None:
    """Mount points for bubblewrap, and the files a sandbox root should have of its own."""
    tree.chmod(0o755)
    for rel in MOUNT_POINTS:
        _make_dirs(tree, rel)
    etc = tree / "etc"
    _make_dirs(tree, "etc")
    # Empty: a mount point for the host's resolv.conf with --network egress (the build
    # copied the build host's, which has no business in a shared layer).
    _write_file(etc / "resolv.conf", "")
    _write_file(etc / "hostname", "pyro\n")
    _write_file(etc / "hosts", HOSTS)
    # Mount point for the host's certificate bundle with --network egress (see runtime).
    _make_dirs(tree, "etc/ssl/certs")
    bundle = etc / "ssl" / "certs" / "ca-certificates.crt"
    if not os.path.lexists(bundle):
        _write_file(bundle, "")


def _make_dirs(tree: Path, rel: str) -> None:
    """mkdir -p `rel` inside `tree`, refusing to follow a symlink out of it."""
    path = tree
    for part in rel.split("/"):
        path = path / part
        try:
            st = path.lstat()
        except FileNotFoundError:
            path.mkdir(mode=0o755)
            continue
        if not stat.S_ISDIR(st.st_mode):
            raise PyroError(f"the root filesystem has /{rel} as something else than a directory")


def _write_file(path: Path, content: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()  # never write through a symlink
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "w") as f:
        f.write(content)
