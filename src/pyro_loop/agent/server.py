"""The agent: serves exec and file requests inside a workspace (protocol.py).

Started by the runtime as the workspace's main process, with an already-listening socket on
the file descriptor given in argv. It forks one handler per connection, so a long command
never blocks a file read, and a handler that crashes takes nothing else down.

Paths in requests are confined to /workspace: a path that is, or resolves through a symlink
to, anything outside it is refused. The sandbox around the agent is the security boundary;
this confinement keeps the file tools' behaviour predictable.
"""

import _signal
import _socket
import os
import posix
import select
import sys
import time

import protocol as p

WORKSPACE = "/workspace"
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
DRAIN_AFTER_EXIT = 0.05  # seconds to keep reading output held open by background children
MAX_TREE_DEPTH = 256  # export walks at most this deep (fsutil.MAX_TREE_DEPTH on the host)
PR_SET_CHILD_SUBREAPER = 36


class RequestError(Exception):
    def __init__(self, kind, message):
        Exception.__init__(self, message)
        self.kind = kind


# -- paths ---------------------------------------------------------------------------------


def confine(path, follow=True):
    """Map a request path to an absolute path inside /workspace, or raise RequestError."""
    if not isinstance(path, str) or not path or "\0" in path:
        raise RequestError("invalid_path", "path must be a non-empty string")
    absolute = path if path.startswith("/") else WORKSPACE + "/" + path
    lexical = os.path.normpath(absolute)
    if not _inside(lexical):
        raise RequestError("outside_workspace", "path is outside /workspace: " + path)
    resolved = (
        os.path.realpath(lexical)
        if follow
        else os.path.join(os.path.realpath(os.path.dirname(lexical)), os.path.basename(lexical))
    )
    if not _inside(resolved):
        raise RequestError(
            "outside_workspace", "path resolves outside /workspace through a symlink: " + path
        )
    return resolved


def _inside(path):
    return path == WORKSPACE or path.startswith(WORKSPACE + "/")


def _entry(path, st):
    mode = st.st_mode
    if mode & 0o170000 == 0o040000:
        kind = "dir"
    elif mode & 0o170000 == 0o100000:
        kind = "file"
    elif mode & 0o170000 == 0o120000:
        kind = "symlink"
    else:
        kind = "other"
    entry = {
        "path": path,
        "type": kind,
        "size": st.st_size,
        "mode": mode & 0o7777,
        "mtime": st.st_mtime,
    }
    if kind == "symlink":
        entry["target"] = os.readlink(path)
    return entry


# -- operations ----------------------------------------------------------------------------


def op_ping(conn, req):
    return {"protocol": p.VERSION, "pid": os.getpid(), "python": "%d.%d.%d" % sys.version_info[:3]}


def op_stat(conn, req):
    path = confine(req.get("path"), follow=False)
    try:
        return {"entry": _entry(path, os.lstat(path))}
    except FileNotFoundError:
        raise RequestError("not_found", "no such file in the workspace: " + path) from None


def op_list(conn, req):
    root = confine(req.get("path", WORKSPACE))
    recursive = bool(req.get("recursive", False))
    limit = int(req.get("max_entries", 10000))
    if not os.path.isdir(root):
        raise RequestError("not_a_directory", "not a directory in the workspace: " + root)
    entries = []
    pending = [root]
    truncated = False
    while pending and not truncated:
        current = pending.pop()
        with os.scandir(current) as it:
            for item in sorted(it, key=lambda e: e.name):
                if len(entries) >= limit:
                    truncated = True
                    break
                st = item.stat(follow_symlinks=False)
                entries.append(_entry(item.path, st))
                if recursive and item.is_dir(follow_symlinks=False):
                    pending.append(item.path)
    entries.sort(key=lambda e: e["path"])
    return {"path": root, "entries": entries, "truncated": truncated}


def op_read(conn, req):
    path = confine(req.get("path"))
    max_bytes = int(req.get("max_bytes", 65536))
    offset = int(req.get("offset", 0))
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except FileNotFoundError:
        raise RequestError("not_found", "no such file in the workspace: " + path) from None
    except IsADirectoryError:
        raise RequestError("is_a_directory", "is a directory, not a file: " + path) from None
    try:
        st = os.fstat(fd)
        if st.st_mode & 0o170000 != 0o100000:
            raise RequestError("not_a_file", "not a regular file: " + path)
        os.lseek(fd, offset, 0)
        remaining = max_bytes
        while remaining > 0:
            chunk = os.read(fd, min(remaining, p.MAX_CHUNK))
            if not chunk:
                break
            p.send_frame(conn, p.KIND_DATA, chunk)
            remaining -= len(chunk)
    finally:
        os.close(fd)
    sent = min(max(st.st_size - offset, 0), max_bytes)
    return {
        "path": path,
        "size": st.st_size,
        "offset": offset,
        "truncated": offset + sent < st.st_size,
    }


def _temp_name(op):
    # Random, not pid-based: a sandbox killed mid-write leaves its temp file behind (the host
    # sweeps those on the next start), and a later agent with the same pid must not collide.
    return "%s%s-%s" % (p.TEMP_PREFIX, op, os.urandom(8).hex())


def _recv_data(conn, out_fd):
    total = 0
    while True:
        kind, payload = p.recv_frame(conn)
        if kind != p.KIND_DATA:
            raise p.ProtocolError("expected a data frame")
        if not payload:
            return total
        if out_fd is not None:
            os.write(out_fd, payload)
        total += len(payload)


def op_write(conn, req):
    path = confine(req.get("path"))
    mode = req.get("mode")
    parent = os.path.dirname(path)
    if req.get("mkdirs", True):
        os.makedirs(parent, exist_ok=True)
    if os.path.isdir(path):
        _recv_data(conn, None)
        raise RequestError("is_a_directory", "is a directory, not a file: " + path)
    if mode is None:
        try:
            mode = os.stat(path).st_mode & 0o7777
        except FileNotFoundError:
            mode = 0o644
    tmp = "%s/%s" % (parent, _temp_name("write"))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        written = _recv_data(conn, fd)
        os.fchmod(fd, int(mode))
    except BaseException:
        os.close(fd)
        os.unlink(tmp)
        raise
    os.close(fd)
    os.rename(tmp, path)
    return {"path": path, "written": written}


def op_remove(conn, req):
    path = confine(req.get("path"), follow=False)
    if path == WORKSPACE:
        raise RequestError("invalid_path", "refusing to remove /workspace itself")
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        if req.get("missing_ok"):
            return {"path": path, "removed": False}
        raise RequestError("not_found", "no such file in the workspace: " + path) from None
    if st.st_mode & 0o170000 == 0o040000:
        if not req.get("recursive"):
            raise RequestError("is_a_directory", "is a directory (pass recursive): " + path)
        import shutil

        shutil.rmtree(path)
    else:
        os.unlink(path)
    return {"path": path, "removed": True}


def op_mkdir(conn, req):
    path = confine(req.get("path"))
    os.makedirs(path, exist_ok=True)
    return {"path": path}


def op_symlink(conn, req):
    path = confine(req.get("path"), follow=False)
    target = req.get("target")
    if not isinstance(target, str) or not target or "\0" in target:
        raise RequestError("invalid_path", "symlink target must be a non-empty string")
    if os.path.lexists(path):
        os.unlink(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    os.symlink(target, path)
    return {"path": path}


def op_chmod(conn, req):
    path = confine(req.get("path"))
    os.chmod(path, int(req.get("mode")) & 0o7777)
    return {"path": path}


def op_tar(conn, req):
    """Stream `path` as an uncompressed tar archive in D frames (symlinks stay symlinks)."""
    import tarfile

    # A symlink is exported as the link itself, never as what it points to; and only if
    # what it points to is inside the workspace.
    path = confine(req.get("path"), follow=False)
    if not os.path.lexists(path):
        raise RequestError("not_found", "no such file in the workspace: " + path)
    if os.path.islink(path):
        confine(path, follow=True)

    class FrameWriter:
        def write(self, data):
            p.send_data(conn, p.KIND_DATA, data)
            return len(data)

    arcname = os.path.basename(path) if path != WORKSPACE else "workspace"

    def no_specials(info):
        # tarfile recurses once per directory level: refuse a workspace's endless nesting
        # cleanly (same bound as fsutil.MAX_TREE_DEPTH on the host) before Python's
        # recursion limit ends this handler mid-archive.
        if info.isdir() and info.name.count("/") >= MAX_TREE_DEPTH:
            raise RequestError(
                "too_deep",
                "nested more than %d directories deep: %s..." % (MAX_TREE_DEPTH, info.name[:60]),
            )
        return info if (info.isfile() or info.isdir() or info.issym()) else None

    with tarfile.open(fileobj=FrameWriter(), mode="w|", format=tarfile.PAX_FORMAT) as tar:
        tar.add(path, arcname=arcname, filter=no_specials)
    return {"path": path, "arcname": arcname}


class _FrameReader:
    """Reads the D frames of a request as one byte stream."""

    def __init__(self, conn):
        self.conn = conn
        self.chunk = b""
        self.pos = 0
        self.eof = False

    def read(self, size):
        """Up to `size` bytes (fewer at a frame boundary); b"" once the stream has ended."""
        # Hands out slices of the current frame: no buffer grows with the stream's size.
        while self.pos >= len(self.chunk):
            if self.eof:
                return b""
            kind, payload = p.recv_frame(self.conn)
            if kind != p.KIND_DATA:
                raise p.ProtocolError("expected a data frame")
            if not payload:
                self.eof = True
            self.chunk, self.pos = payload, 0
        data = self.chunk[self.pos : self.pos + size]
        self.pos += len(data)
        return data

    def read_exact(self, size):
        parts = []
        while size > 0:
            data = self.read(size)
            if not data:
                raise RequestError("invalid_request", "the tar stream ends in the middle")
            parts.append(data)
            size -= len(data)
        return b"".join(parts)

    def drain(self):
        while not self.eof:
            self.pos = len(self.chunk)
            self.read(1)


MAX_TAR_HEADER = 1024 * 1024  # an extended header (long names, pax records) larger is refused


class _TarMember:
    def __init__(self, name, kind, mode, size, linkname):
        self.name = name
        self.kind = kind  # "file", "dir", "symlink", or the raw type flag of anything else
        self.mode = mode
        self.size = size
        self.linkname = linkname


class _TarReader:
    """Reads ustar/pax/GNU tar headers from a stream, with nothing but the standard types.

    Not tarfile: importing it (and the modules it pulls in) costs each request several
    milliseconds in a freshly forked handler, which is most of a one-file sync.
    """

    def __init__(self, stream):
        self.stream = stream
        self.left = 0  # unread bytes of the current member's data
        self.padding = 0

    def next(self):
        """The next member, or None at the end of the archive."""
        self.skip()
        pax = {}
        long_name = long_link = None
        while True:
            block = self.stream.read(512)
            if block:
                block += self.stream.read_exact(512 - len(block))
            if not block.strip(b"\0"):
                return None  # end-of-archive marker (or the stream's end)
            _check_header(block)
            flag = block[156:157]
            size = _tar_number(block[124:136])
            if flag in (b"x", b"g", b"L", b"K"):
                if size > MAX_TAR_HEADER:
                    raise RequestError("invalid_request", "tar extended header too large")
                data = self.stream.read_exact(size)
                self.stream.read_exact(-size % 512)
                if flag == b"x":
                    pax.update(_pax_records(data))
                elif flag == b"L":
                    long_name = _tar_text(data)
                elif flag == b"K":
                    long_link = _tar_text(data)
                continue  # a global header (g) changes nothing pyro uses
            break
        name = _tar_text(block[0:100])
        if block[257:265] == b"ustar\x0000" and block[345:500].strip(b"\0"):  # POSIX prefix
            name = _tar_text(block[345:500]) + "/" + name
        name = pax.get("path", long_name or name)
        linkname = pax.get("linkpath", long_link or _tar_text(block[157:257]))
        if "size" in pax:
            size = int(pax["size"])
        kind = {b"0": "file", b"\0": "file", b"7": "file", b"5": "dir", b"2": "symlink"}.get(
            flag, flag.decode("latin-1")
        )
        if kind == "dir":
            name = name.rstrip("/")
        if kind == "file":
            self.left, self.padding = size, -size % 512
        return _TarMember(name, kind, _tar_number(block[100:108]), size, linkname)

    def read(self, size):
        """Up to `size` bytes of the current member's data; b"" at its end."""
        if self.left <= 0:
            return b""
        data = self.stream.read(min(size, self.left))
        if not data:
            raise RequestError("invalid_request", "the tar stream ends in the middle")
        self.left -= len(data)
        return data

    def skip(self):
        while self.left > 0:
            self.read(p.MAX_CHUNK)
        if self.padding:
            self.stream.read_exact(self.padding)
            self.padding = 0


def _check_header(block):
    stored = _tar_number(block[148:156])
    unsigned = sum(block[:148]) + 256 + sum(block[156:])
    if stored == unsigned:
        return
    signed = unsigned - 256 * sum(1 for b in block[:148] + block[156:] if b > 127)
    if stored != signed:
        raise RequestError("invalid_request", "not a tar stream (bad header checksum)")


def _tar_number(field):
    if field[:1] and field[0] & 0x80:  # base-256, for values beyond the octal field
        return int.from_bytes(field[1:], "big")
    text = field.split(b"\0", 1)[0].strip()
    try:
        return int(text, 8) if text else 0
    except ValueError:
        raise RequestError("invalid_request", "malformed number in a tar header") from None


def _tar_text(raw):
    return raw.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")


def _pax_records(data):
    """The key=value records of a pax extended header ("<length> <key>=<value>\\n" each)."""
    records = {}
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos)
        if space < 0:
            break
        try:
            length = int(data[pos:space])
        except ValueError:
            raise RequestError("invalid_request", "malformed pax header") from None
        if length <= 0:
            raise RequestError("invalid_request", "malformed pax header")
        record = data[space + 1 : pos + length - 1]  # without the trailing newline
        key, _, value = record.partition(b"=")
        records[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return records


MAX_REPORTED_ERRORS = 1000  # per reply: keeps it far below the JSON frame bound


def _member_parts(name):
    """The components of a tar member's name, or RequestError for one that may not be written."""
    if not name or "\0" in name:
        raise RequestError("invalid_path", "archive member with an empty or NUL-bearing name")
    if name.startswith("/"):
        raise RequestError("outside_workspace", "absolute path in the archive: " + name)
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise RequestError("outside_workspace", "'..' in an archive path: " + name)
    return parts


def _member_target(parts):
    """Where a member goes: its parent resolved (symlinks followed) inside /workspace, or None."""
    parent = os.path.realpath(WORKSPACE + "".join("/" + part for part in parts[:-1]))
    if not _inside(parent):
        return None
    return parent, parent + "/" + parts[-1]


def _remove_any(path):
    """Remove whatever is at `path` (a directory with its contents); False if nothing was."""
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return False
    if st.st_mode & 0o170000 == 0o040000:
        _rmtree(path, st.st_mode)
    else:
        os.unlink(path)
    return True


def _rmtree(path, mode):
    """shutil.rmtree without importing shutil (milliseconds per request); links not followed."""
    if mode & 0o700 != 0o700:  # a read-only directory is emptied all the same
        os.chmod(path, (mode & 0o7777) | 0o700)
    with os.scandir(path) as entries:
        children = list(entries)
    for entry in children:
        st = entry.stat(follow_symlinks=False)
        if st.st_mode & 0o170000 == 0o040000:
            _rmtree(entry.path, st.st_mode)
        else:
            os.unlink(entry.path)
    os.rmdir(path)


def _is_dir(path):
    try:
        return os.lstat(path).st_mode & 0o170000 == 0o040000
    except OSError:
        return False


class _Putter:
    """Writes the members of a put_tar stream, and keeps the counts and errors of the reply."""

    def __init__(self):
        self.counts = {"files": 0, "dirs": 0, "symlinks": 0, "bytes": 0}
        self.errors = []
        self.dir_modes = []

    def error(self, path, kind, message):
        if len(self.errors) < MAX_REPORTED_ERRORS:
            self.errors.append({"path": path, "kind": kind, "error": message})

    def put(self, tar, member):
        parts = _member_parts(member.name)
        if member.kind not in ("file", "dir", "symlink"):
            raise RequestError(
                "invalid_request", "only files, directories and symlinks can be put: " + member.name
            )
        if not parts:
            if member.kind == "dir":
                return  # the workspace itself: it stays as it is
            raise RequestError("invalid_path", "cannot replace /workspace itself")
        placed = _member_target(parts)
        if placed is None:
            self.error(member.name, "outside_workspace",
                       "its directory resolves outside /workspace through a symlink")  # fmt: skip
            return
        parent, target = placed
        try:
            os.makedirs(parent, exist_ok=True)
            if member.kind == "file":
                self.put_file(parent, target, member, tar)
            elif member.kind == "symlink":
                self.put_symlink(parent, target, member)
            else:
                self.put_dir(target, member)
        except OSError as exc:
            self.error(member.name, "os_error", str(exc))

    def temp_in(self, parent):
        return "%s/%s" % (parent, _temp_name("put"))

    def put_file(self, parent, target, member, source):
        tmp = self.temp_in(parent)
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
        fd = os.open(tmp, flags, 0o600)
        try:
            try:
                while True:
                    chunk = source.read(p.MAX_CHUNK)
                    if not chunk:
                        break
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(fd, view) :]
                    self.counts["bytes"] += len(chunk)
                os.fchmod(fd, member.mode & 0o777)  # never set-id bits
            finally:
                os.close(fd)
            if _is_dir(target):
                _remove_any(target)
            os.rename(tmp, target)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
        self.counts["files"] += 1

    def put_symlink(self, parent, target, member):
        tmp = self.temp_in(parent)
        os.symlink(member.linkname, tmp)
        try:
            if _is_dir(target):
                _remove_any(target)
            os.rename(tmp, target)
        except BaseException:
            os.unlink(tmp)
            raise
        self.counts["symlinks"] += 1

    def put_dir(self, target, member):
        if not _is_dir(target):
            _remove_any(target)
            os.mkdir(target, 0o700)
        self.dir_modes.append((target, member.mode & 0o1777))
        self.counts["dirs"] += 1

    def finish(self):
        # Directory modes last and deepest first, so a read-only directory could be filled.
        for target, mode in reversed(self.dir_modes):
            if _is_dir(target):  # never chmod through a link that replaced it meanwhile
                try:
                    os.chmod(target, mode)
                except OSError:
                    pass


def op_put_tar(conn, req):
    """Unpack the tar stream that follows in D frames into /workspace.

    Written without tarfile (its extraction filters are missing from older Pythons): each
    member's parent is resolved here, in the sandbox, and must stay in /workspace; files are
    written to a temporary name beside the target and renamed over it, so a reader sees the
    old content or the new, never a mix; what was at the target (a directory, a link) is
    replaced. A member named with an absolute path or `..`, or of another type than file,
    directory or symlink, ends the request (members before it stay written).
    """
    reader = _FrameReader(conn)
    tar = _TarReader(reader)
    putter = _Putter()
    try:
        while True:
            member = tar.next()
            if member is None:
                break
            putter.put(tar, member)
    except RequestError:
        reader.drain()
        raise
    finally:
        putter.finish()
    reader.drain()  # the end-of-archive blocks, and the empty frame that ends the stream
    reply = dict(putter.counts)
    reply["errors"] = putter.errors
    return reply


def op_remove_many(conn, req):
    """Remove each path (recursively); missing ones are counted, not errors."""
    paths = req.get("paths")
    if not isinstance(paths, list) or not all(isinstance(path, str) for path in paths):
        raise RequestError("invalid_request", "paths must be a list of strings")
    removed = missing = 0
    errors = []
    for path in paths:
        try:
            target = confine(path, follow=False)
            if target == WORKSPACE:
                raise RequestError("invalid_path", "refusing to remove /workspace itself")
            if _remove_any(target):
                removed += 1
            else:
                missing += 1
        except RequestError as exc:
            error = {"path": path, "kind": exc.kind, "error": str(exc)}
        except OSError as exc:
            error = {"path": path, "kind": "os_error", "error": str(exc)}
        else:
            continue
        if len(errors) < MAX_REPORTED_ERRORS:
            errors.append(error)
    return {"removed": removed, "missing": missing, "errors": errors}


def op_freeze(conn, req):
    """Stop every other process in the workspace until the client says thaw (or goes away)."""
    os.kill(-1, _signal.SIGSTOP)
    try:
        p.send_json(conn, {"ok": True, "frozen": True})
        try:
            p.recv_frame(conn)
        except p.ProtocolError:
            pass
    finally:
        os.kill(-1, _signal.SIGCONT)
    return {"thawed": True}


def op_exec(conn, req):
    argv = req.get("argv")
    if not isinstance(argv, list) or not argv or not all(isinstance(a, str) for a in argv):
        raise RequestError("invalid_request", "argv must be a non-empty list of strings")
    cwd = confine(req.get("cwd") or WORKSPACE)
    if not os.path.isdir(cwd):
        raise RequestError("not_a_directory", "working directory does not exist: " + cwd)
    # The sandbox's own environment (set by the runtime) is the base: nothing from the host.
    env = dict(os.environ)
    env.setdefault("PATH", DEFAULT_PATH)
    env["PWD"] = cwd
    extra = req.get("env") or {}
    if not isinstance(extra, dict):
        raise RequestError("invalid_request", "env must be an object")
    for key, value in extra.items():
        if not isinstance(key, str) or not isinstance(value, str) or "=" in key or not key:
            raise RequestError("invalid_request", "env entries must be NAME=value strings")
        env[key] = value
    timeout = req.get("timeout")
    deadline = None if timeout is None else time.monotonic() + float(timeout)
    started = time.monotonic()

    _become_subreaper()
    out_r, out_w = os.pipe()
    err_r, err_w = os.pipe()
    fail_r, fail_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the command
        try:
            os.setsid()
            # Python ignores SIGPIPE and SIGXFSZ; an ignored signal stays ignored across
            # exec, and commands must meet the file size limit as anywhere else (killed).
            _signal.signal(_signal.SIGPIPE, _signal.SIG_DFL)
            _signal.signal(_signal.SIGXFSZ, _signal.SIG_DFL)
            _signal.signal(_signal.SIGCHLD, _signal.SIG_DFL)
            null = os.open("/dev/null", os.O_RDONLY)
            os.dup2(null, 0)
            os.dup2(out_w, 1)
            os.dup2(err_w, 2)
            os.chdir(cwd)
            os.execvpe(argv[0], argv, env)
        except BaseException as exc:
            code = getattr(exc, "errno", None) or 0
            os.write(fail_w, str(code).encode())
        os._exit(127)
    for fd in (out_w, err_w, fail_w):
        os.close(fd)
    failure = os.read(fail_r, 64)
    os.close(fail_r)
    if failure:
        os.waitpid(pid, 0)
        os.close(out_r)
        os.close(err_r)
        errno = int(failure or b"0")
        what = "command not found" if errno == 2 else "cannot run command"
        raise RequestError("exec_failed", "%s: %s (%s)" % (what, argv[0], os.strerror(errno)))

    status, timed_out = _pump(conn, pid, out_r, err_r, deadline)
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        exit_code = 128 + sig
    else:
        sig = None
        exit_code = os.WEXITSTATUS(status)
    if timed_out:
        exit_code = 124
    return {
        "exit_code": exit_code,
        "signal": sig,
        "timed_out": timed_out,
        "duration": time.monotonic() - started,
    }


def _pump(conn, pid, out_r, err_r, deadline):
    """Forward output until the command exits (or times out, or the client goes away)."""
    pidfd = os.pidfd_open(pid)
    poller = select.poll()
    streams = {out_r: p.KIND_STDOUT, err_r: p.KIND_STDERR}
    for fd in streams:
        poller.register(fd, select.POLLIN)
    poller.register(pidfd, select.POLLIN)
    poller.register(conn.fileno(), select.POLLIN)  # readable only when the client hung up
    status = None
    timed_out = False
    drain_until = None
    while streams:
        now = time.monotonic()
        limits = [t for t in (deadline, drain_until) if t is not None]
        wait_ms = None if not limits else max(0, int((min(limits) - now) * 1000) + 1)
        events = poller.poll(wait_ms)
        if deadline is not None and time.monotonic() >= deadline and status is None:
            timed_out = True
            _kill_tree(pid)
            status = os.waitpid(pid, 0)[1]
            break
        for fd, _event in events:
            if fd == pidfd:
                poller.unregister(pidfd)
                status = os.waitpid(pid, 0)[1]
                drain_until = time.monotonic() + DRAIN_AFTER_EXIT
            elif fd == conn.fileno():
                _kill_tree(pid)  # the client is gone: nobody will read the output
                os.waitpid(pid, 0)
                raise SystemExit(0)
            elif fd in streams:
                data = os.read(fd, 65536)
                if data:
                    p.send_frame(conn, streams[fd], data)
                else:
                    poller.unregister(fd)
                    del streams[fd]
        if drain_until is not None and time.monotonic() >= drain_until:
            break
    if status is None:
        status = os.waitpid(pid, 0)[1]
    for fd in (out_r, err_r):
        os.close(fd)
    os.close(pidfd)
    return status, timed_out


def _become_subreaper():
    """Orphaned descendants of the command re-parent to this handler, so a timeout finds them."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except Exception:  # no ctypes in a minimal image: fall back to the process group only
        pass


def _kill_tree(pid):
    """SIGKILL the command and every descendant (including double-forked and setsid ones).

    Orphans re-parent to this handler (a subreaper), so the tree below it is complete. Repeat
    until nothing is left, in case a process forked while we were killing.
    """
    me = os.getpid()
    for _attempt in range(100):
        victims = _descendants(me)
        if not victims:
            return
        for victim in victims:
            try:
                os.kill(victim, _signal.SIGKILL)
            except OSError:
                pass
        time.sleep(0.001)


def _descendants(root):
    children = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open("/proc/%s/stat" % name, "rb") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rfind(b")") + 2 :].split()
        if fields[0] == b"Z":
            continue
        children.setdefault(int(fields[1]), []).append(int(name))
    found = []
    pending = [root]
    while pending:
        for child in children.get(pending.pop(), []):
            found.append(child)
            pending.append(child)
    return found


OPS = {
    "ping": op_ping,
    "stat": op_stat,
    "list": op_list,
    "read": op_read,
    "write": op_write,
    "remove": op_remove,
    "mkdir": op_mkdir,
    "symlink": op_symlink,
    "chmod": op_chmod,
    "tar": op_tar,
    "put_tar": op_put_tar,
    "remove_many": op_remove_many,
    "freeze": op_freeze,
    "exec": op_exec,
}


# -- serving -------------------------------------------------------------------------------


def handle(conn):
    try:
        req = p.recv_json(conn)
    except p.ProtocolError:
        return
    try:
        if req.get("v") != p.VERSION:
            raise RequestError(
                "unsupported_version",
                "agent speaks protocol %d, request has %r" % (p.VERSION, req.get("v")),
            )
        op = OPS.get(req.get("op"))
        if op is None:
            raise RequestError("unknown_op", "unknown operation: %r" % (req.get("op"),))
        reply = op(conn, req)
        reply["ok"] = True
    except RequestError as exc:
        reply = {"ok": False, "kind": exc.kind, "error": str(exc)}
    except p.ProtocolError:
        return
    except (OSError, ValueError, TypeError) as exc:
        reply = {"ok": False, "kind": "os_error", "error": "%s: %s" % (type(exc).__name__, exc)}
    try:
        p.send_json(conn, reply)
    except OSError:
        pass


def serve(listener):
    # Handlers are reaped by the kernel; each handler restores SIGCHLD for its own commands.
    _signal.signal(_signal.SIGCHLD, _signal.SIG_IGN)
    while True:
        try:
            fd, _addr = listener._accept()
        except InterruptedError:
            continue
        try:
            pid = os.fork()
        except OSError:  # out of processes (a fork bomb in the workspace): drop this client
            os.close(fd)
            time.sleep(0.01)
            continue
        if pid == 0:
            status = 0
            try:
                listener.close()
                _signal.signal(_signal.SIGCHLD, _signal.SIG_DFL)
                conn = _socket.socket(fileno=fd)
                handle(conn)
            except SystemExit:
                pass
            except BaseException:
                status = 1
            finally:
                os._exit(status)
        os.close(fd)


def main(argv):
    listen_fd = int(argv[1])
    # Nothing but the listening socket is ours to keep: close whatever else was inherited.
    os.closerange(3, listen_fd)
    os.closerange(listen_fd + 1, 65536)
    listener = _socket.socket(fileno=listen_fd)
    os.set_inheritable(listen_fd, False)
    os.chdir(WORKSPACE)
    posix.umask(0o022)
    serve(listener)


if __name__ == "__main__":
    main(sys.argv)
