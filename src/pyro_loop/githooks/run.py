"""What pyro's hook scripts run: `main([HOOK, PROJECT, *git's arguments])`, stdin as git gave it.

post-checkout, post-merge, post-rewrite: keep the project warm (keepwarm.py). They never
fail git: whatever goes wrong is one line on stderr, and the exit status is 0.
pre-commit: what `pyro check --staged` does; pre-push: `pyro check --rev` for each commit
being pushed, both through the library (loop/check.py) in this process.
A failing check exits non-zero, which stops git (`--no-verify` skips the hooks, as usual).

Only the standard library and the modules the keep-warm path needs are imported up front:
this module is on the path of every checkout.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import IO

from pyro_loop.errors import PyroError
from pyro_loop.guard import guarded
from pyro_loop.safetext import for_stream

# keep-warm: the same, under a name that suits any stage (the pre-commit framework's hook).
KEEP_WARM = ("post-checkout", "post-merge", "post-rewrite", "keep-warm")
ZERO = "0" * 40


def main(argv: Sequence[str]) -> int:
    """The hook scripts' entry point: HOOK, the project's directory relative to the top of
    the working tree (git runs hooks from there), then git's own arguments."""
    if len(argv) < 2:
        sys.stderr.write("usage: python -m pyro_loop.githooks.run HOOK PROJECT [ARGS...]\n")
        return 2
    hook, project, *_args = argv
    return run_hook(hook, Path.cwd() / project, stdin=sys.stdin)


def run_hook(hook: str, project_dir: Path, *, stdin: IO[str] | None = None) -> int:
    if hook in KEEP_WARM:
        return _keep_warm(hook, project_dir)
    if hook in ("pre-commit", "pre-push") and _untrusted(hook, project_dir):
        return 0
    if hook == "pre-commit":
        return guarded(lambda: _check(project_dir, staged=True, revs=[]))
    if hook == "pre-push":
        revs = pushed_commits(stdin.read() if stdin is not None else "")
        if not revs:
            return 0  # only deletions: nothing to check
        return guarded(lambda: _check(project_dir, staged=False, revs=revs))
    sys.stderr.write(f"pyro: {hook}: not a hook pyro runs\n")
    return 0 if hook.startswith("post-") else 2


def pushed_commits(text: str) -> list[str]:
    """The commits a push sends: pre-push reads "<local ref> <sha> <remote ref> <sha>" lines;
    a deletion pushes the zero id."""
    revs: list[str] = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) == 4 and fields[1].strip("0") and fields[1] not in revs:
            revs.append(fields[1])
    return revs


def _keep_warm(hook: str, project_dir: Path) -> int:
    try:
        from pyro_loop.home import pyro_home
        from pyro_loop.loop.keepwarm import keep_warm

        result = keep_warm(project_dir, pyro_home())
        if result.note:
            sys.stderr.write(for_stream(result.note, sys.stderr) + "\n")
    except PyroError as exc:
        _note(f"pyro: {hook} hook: {exc.message}; not preparing")
    except (Exception, KeyboardInterrupt) as exc:  # never fail git, whatever happens
        _note(f"pyro: {hook} hook: internal error, not preparing: {type(exc).__name__}: {exc}")
    return 0


def _untrusted(hook: str, project_dir: Path) -> bool:
    """True (after one line saying so) when the checks are not the user's to run yet: a
    hook never prompts, and never runs commands from a `.pyro.toml` that is not trusted.
    Said on every commit, unlike keep-warm's note: checks that were skipped must not look
    as if they had passed."""
    from pyro_loop.home import pyro_home
    from pyro_loop.project.config import load_project_config
    from pyro_loop.project.discovery import find_project
    from pyro_loop.project.trust import trust_state

    try:
        config = load_project_config(find_project(project_dir).root).config
    except PyroError:
        return False  # `pyro check` reports the broken file itself
    state = trust_state(pyro_home(), config)
    if state.ok:
        return False
    _note(f"pyro: {hook} hook: {state.message()} (checks not run)")
    return True


def _note(text: str) -> None:
    """One line on git's stderr (a terminal, often): what it quotes from the repository (a
    lockfile's name) is shown harmless (safetext.py)."""
    lines = text.splitlines()
    sys.stderr.write(for_stream(lines[0] if lines else text, sys.stderr) + "\n")


def _check(project_dir: Path, *, staged: bool, revs: list[str]) -> int:
    """`pyro check --staged` or `--rev ...`, with the command's output, lines and exit code."""
    from pyro_loop.loop.check import check_project
    from pyro_loop.project.config import load_project_config
    from pyro_loop.project.discovery import find_project

    project = find_project(project_dir)
    loaded = load_project_config(project.root)
    for warning in loaded.warnings:
        _note(f"pyro: warning: {warning}")

    def output(which: str, data: bytes) -> None:
        out = sys.stdout if which == "stdout" else sys.stderr
        out.flush()
        out.buffer.write(data)
        out.buffer.flush()

    results = check_project(project, loaded.config, staged=staged, revs=revs, note=_note,
                            on_output=output)  # fmt: skip
    return next((r.exit_code for r in results if r.failed is not None), 0)
