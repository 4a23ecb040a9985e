"""How durations and sizes are printed and read back."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from pyro_loop.units import duration, parse_size, size


def test_sizes_and_durations_read_as_people_expect() -> None:
    assert [size(512), size(21_700_000), size(8 * 1000**3)] == ["512 B", "21.7 MB", "8.0 GB"]
    assert [duration(0.031), duration(74.24)] == ["31 ms", "74.2 s"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [("1024", 1024), ("500M", 500_000_000), ("8G", 8_000_000_000), ("8gb", 8_000_000_000),
     ("1.5K", 1500), (" 2T ", 2 * 1000**4), ("0", 0)],
)  # fmt: skip
def test_parse_size_reads_what_size_prints(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "G", "lots", "-1G", "1X", "1.2.3M", "8 G B"])
def test_parse_size_refuses_anything_else(text: str) -> None:
    with pytest.raises(ValueError, match="expected a number with K, M, G or T"):
        parse_size(text)


# -- beneath: repository paths opened without following links ---------------------------------


@pytest.fixture(params=["openat2", "per-component"])
def beneath_tree(request: pytest.FixtureRequest, tmp_path: Path,
                 monkeypatch: pytest.MonkeyPatch) -> Path:  # fmt: skip
    """A tree with links out of it and within it, walked by openat2 or by the fallback."""
    from pyro_loop.fs import beneath

    if request.param == "per-component":
        monkeypatch.setattr(beneath._openat2, "call", None)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret").write_text("secret\n")
    root = tmp_path / "repo"
    (root / "dir" / "sub").mkdir(parents=True)
    (root / ".git").mkdir()
    (root / ".git" / "config").write_text("token\n")
    (root / "dir" / "sub" / "file").write_text("inside\n")
    (root / "out").symlink_to(outside)
    (root / "abs").symlink_to(outside / "secret")
    (root / "up").symlink_to("../outside/secret")
    (root / "in").symlink_to("dir/sub/file")
    (root / "indir").symlink_to("dir")
    (root / "git").symlink_to(".git/config")
    (root / "loop").symlink_to("loop")
    return root


@pytest.mark.parametrize("cache_dirs", [False, True], ids=["fresh", "cached-dirs"])
def test_beneath_never_follows_a_link(beneath_tree: Path, cache_dirs: bool) -> None:
    import errno

    from pyro_loop.fs.beneath import Beneath

    with Beneath(beneath_tree, cache_dirs=cache_dirs) as tree:
        assert tree.read("dir/sub/file") == b"inside\n"
        for rel in ("out/secret", "indir/sub/file", "in", "abs"):
            with pytest.raises(OSError) as caught:
                tree.read(rel)
            assert caught.value.errno == errno.ELOOP, rel
        # After "dir/sub/file", a caching tree keeps "", "dir" and "dir/sub": paths that
        # name them in their text still climb or start at "/" and are refused.
        climbing = ["../outside/secret", "dir/../../outside/secret", "dir/sub/..",
                    "dir/sub/../../../outside/secret"]  # fmt: skip
        for rel in [*climbing, "/etc/passwd", "/dir/sub/file", "/abs"]:
            with pytest.raises(OSError) as caught:
                tree.read(rel)
            assert caught.value.errno == errno.EXDEV, rel
        assert stat.S_ISLNK(tree.lstat("out").st_mode)
        with pytest.raises(OSError):
            tree.lstat("out/secret")
        assert tree.readlink("up") == "../outside/secret"
        assert sorted(e.name for e in tree.scandir("dir")) == ["sub"]


def test_a_kept_directory_swapped_for_a_link_is_not_followed(beneath_tree: Path) -> None:
    import errno

    from pyro_loop.fs.beneath import Beneath

    with Beneath(beneath_tree, cache_dirs=True) as tree:
        assert tree.read("dir/sub/file") == b"inside\n"  # keeps dir and dir/sub
        (beneath_tree / "dir").rename(beneath_tree / "moved")
        (beneath_tree / "dir").symlink_to(beneath_tree.parent / "outside")
        with pytest.raises(OSError) as caught:
            tree.read("dir/secret")
        assert caught.value.errno in (errno.ELOOP, errno.ENOENT)
        # A kept descriptor names the directory it opened, wherever that went: not the link.
        assert tree.read("dir/sub/file") == b"inside\n"
        tree.close_dirs()
        with pytest.raises(OSError) as caught:
            tree.read("dir/secret")
        assert caught.value.errno == errno.ELOOP


def test_a_caching_tree_holds_a_bounded_number_of_descriptors(tmp_path: Path) -> None:
    from pyro_loop.fs.beneath import Beneath

    for i in range(300):
        (tmp_path / f"d{i}" / "x").mkdir(parents=True)
        (tmp_path / f"d{i}" / "x" / "f").write_text(str(i))
    deep = tmp_path / "deep"
    deep_rel = "/".join(["deep"] + ["n"] * 400)  # more levels than descriptors kept
    (tmp_path / deep_rel).mkdir(parents=True)
    (tmp_path / deep_rel / "f").write_text("deep")
    before = len(os.listdir("/proc/self/fd"))
    with Beneath(tmp_path, cache_dirs=True) as tree:
        for i in range(300):
            assert tree.read(f"d{i}/x/f") == str(i).encode()
            assert len(os.listdir("/proc/self/fd")) <= before + 130
        assert tree.read(f"{deep_rel}/f") == b"deep"
        assert stat.S_ISDIR(tree.lstat(deep_rel).st_mode)
        assert len(os.listdir("/proc/self/fd")) <= before + 130
    assert len(os.listdir("/proc/self/fd")) == before
    assert deep.is_dir()


def test_beneath_follows_only_links_that_stay_inside(beneath_tree: Path) -> None:
    from pyro_loop.fs.beneath import Beneath, LinkEscapeError

    with Beneath(beneath_tree) as tree:
        for rel in ("in", "indir/sub/file", "dir/sub/file"):
            with os.fdopen(tree.open_following(rel), "rb") as f:
                assert f.read() == b"inside\n", rel
        for rel in ("out/secret", "abs", "up", "git", "loop"):
            with pytest.raises(LinkEscapeError):
                tree.open_following(rel)


def test_beneath_writes_replace_links_instead_of_writing_through(beneath_tree: Path) -> None:
    from pyro_loop.fs.beneath import Beneath

    outside = beneath_tree.parent / "outside"
    before = sorted(p.name for p in outside.iterdir())
    with Beneath(beneath_tree) as tree:
        with pytest.raises(OSError):
            tree.makedirs("out/new")
        with pytest.raises(OSError):
            tree.write("out/secret", b"owned\n")
        tree.write("abs", b"a file now\n", 0o600)  # the link itself is replaced
        tree.symlink("dir/sub/file", "/etc/passwd")
        assert not tree.remove("out/secret")
        tree.makedirs("new/deeper")
        tree.write("new/deeper/f", b"x")
    assert (beneath_tree / "abs").read_bytes() == b"a file now\n"
    assert os.readlink(beneath_tree / "dir" / "sub" / "file") == "/etc/passwd"
    assert (beneath_tree / "new" / "deeper" / "f").read_bytes() == b"x"
    assert sorted(p.name for p in outside.iterdir()) == before
    assert (outside / "secret").read_text() == "secret\n"
