"""What a workspace changed relative to a baseline, as a git-style unified diff."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import TYPE_CHECKING

from pyro_loop.records import dataclass
from pyro_loop.store.layerview import Entry, LayerStack, changed_paths, is_opaque, read_file

if TYPE_CHECKING:
    from pyro_loop.shapes import ChangeJSON, ChangeStatus

MAX_DIFF_FILE = 8 * 1024 * 1024  # larger files are compared but not shown line by line


@dataclass(frozen=True)
class Change:
    path: str
    status: ChangeStatus
    old: Entry | None
    new: Entry | None

    def to_json(self) -> ChangeJSON:
        return {
            "path": self.path,
            "status": self.status,
            "old_mode": _git_mode(self.old),
            "new_mode": _git_mode(self.new),
        }


def compute_changes(base: list[Path], above: list[Path]) -> list[Change]:
    """Changes shown by `above + base` (topmost first) relative to `base` alone.

    Only the paths present in the layers above the baseline can differ, so the work is
    proportional to what changed, not to the size of the tree.
    """
    base_stack = LayerStack(base)
    current = LayerStack(above + base)
    candidates = changed_paths(above)
    # A whited-out or opaque directory above hides a whole baseline subtree: list it too.
    for path in list(candidates):
        old = base_stack.lookup(path)
        if old is not None and old.kind == "dir":
            new = current.lookup(path)
            if new is None or new.kind != "dir" or any(is_opaque(layer, path) for layer in above):
                candidates.update(base_stack.walk(path))
    changes = []
    for path in sorted(candidates):
        change = compare(path, base_stack.lookup(path), current.lookup(path))
        if change is not None:
            changes.append(change)
    return changes


def compare(path: str, old: Entry | None, new: Entry | None) -> Change | None:
    """The change from `old` to `new` at `path` (directories ignored), or None if equal."""
    old = None if old is None or old.kind == "dir" else old
    new = None if new is None or new.kind == "dir" else new
    if old is None and new is None:
        return None
    if old is None:
        return Change(path, "added", old, new)
    if new is None:
        return Change(path, "deleted", old, new)
    if old.kind != new.kind:
        return Change(path, "type", old, new)
    if old.kind == "symlink":
        return None if old.target == new.target else Change(path, "modified", old, new)
    if old.size != new.size or _content(path, old) != _content(path, new):
        return Change(path, "modified", old, new)
    if old.mode != new.mode:
        return Change(path, "mode", old, new)
    return None


def _content(path: str, entry: Entry | None) -> bytes:
    if entry is None:
        return b""
    if entry.kind == "symlink":
        return (entry.target or "").encode("utf-8", "surrogateescape")
    return read_file(entry.layer, path, limit=MAX_DIFF_FILE + 1) or b""


def _git_mode(entry: Entry | None) -> str | None:
    if entry is None:
        return None
    if entry.kind == "symlink":
        return "120000"
    return "100755" if entry.mode & 0o111 else "100644"


def render_patch(changes: list[Change]) -> str:
    """A patch `git apply` understands (text files; binary ones are named, not inlined)."""
    out: list[str] = []
    for change in changes:
        a, b = f"a/{change.path}", f"b/{change.path}"
        old_mode, new_mode = _git_mode(change.old), _git_mode(change.new)
        out.append(f"diff --git {a} {b}\n")
        if change.status == "type":
            # git spells a type change as a deletion plus an addition.
            out += _deletion_and_addition(change)
            continue
        if change.old is None:
            out.append(f"new file mode {new_mode}\n")
        elif change.new is None:
            out.append(f"deleted file mode {old_mode}\n")
        elif old_mode != new_mode:
            out.append(f"old mode {old_mode}\nnew mode {new_mode}\n")
        if change.status != "mode":
            out += _hunks(change.path, change.old, change.new)
    return "".join(out)


def _deletion_and_addition(change: Change) -> list[str]:
    deleted = Change(change.path, "deleted", change.old, None)
    added = Change(change.path, "added", None, change.new)
    text = render_patch([deleted]) + render_patch([added])
    return [text.split("\n", 1)[1]]  # drop the first header line, already written


def _hunks(path: str, old: Entry | None, new: Entry | None) -> list[str]:
    before, after = _content(path, old), _content(path, new)
    a = f"a/{path}" if old is not None else "/dev/null"
    b = f"b/{path}" if new is not None else "/dev/null"
    if _is_binary(before) or _is_binary(after):
        return [f"Binary files {a} and {b} differ\n"]
    old_lines = before.decode("utf-8").splitlines(keepends=True)
    new_lines = after.decode("utf-8").splitlines(keepends=True)
    lines = list(difflib.unified_diff(old_lines, new_lines, a, b, n=3))
    out = []
    for line in lines:
        if line.endswith("\n"):
            out.append(line)
        else:
            out.append(line + "\n\\ No newline at end of file\n")
    return out


def _is_binary(data: bytes) -> bool:
    if len(data) > MAX_DIFF_FILE or b"\0" in data[:8192]:
        return True
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False
