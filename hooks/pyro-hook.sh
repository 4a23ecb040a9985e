#!/bin/sh
# pyro-hook 7f3b9c2e: written by `pyro hooks install`, removed by `pyro hooks uninstall`.
# Edits here are lost on the next install. A hook that was here before pyro's was moved to
# <this hook>.legacy: it still runs first, with the same arguments and input.
hook=@HOOK@
python=@PYTHON@
project=@PROJECT@
blocking=@BLOCKING@

# Hooks that keep the project warm never fail git: their exit status is the legacy hook's.
# Blocking hooks (pre-commit, pre-push) stop git when the legacy hook or pyro's check fails.
status=0
input=
case $hook in
  pre-push | post-rewrite)
    # git writes these hooks' input once: keep it for the legacy hook and for pyro.
    input=$(mktemp "${TMPDIR:-/tmp}/pyro-hook.XXXXXX") || exit "$blocking"
    trap 'rm -f "$input"' EXIT
    cat >"$input"
    ;;
esac
if [ -x "$0.legacy" ]; then
  if [ -n "$input" ]; then "$0.legacy" "$@" <"$input"; else "$0.legacy" "$@"; fi
  status=$?
  if [ "$blocking" = 1 ] && [ "$status" -ne 0 ]; then exit "$status"; fi
fi
if [ ! -x "$python" ]; then
  echo "pyro: $hook hook: $python (the Python pyro was installed with) is gone; run \`pyro hooks install\` again" >&2
  if [ "$blocking" = 1 ]; then exit 1; fi
  exit "$status"
fi
# -E: PYTHON* variables meant for the project's own Python do not reach pyro's.
run='import sys
try:
    from pyro_loop.githooks.run import main
except ImportError as exc:
    sys.stderr.write(f"pyro: {sys.argv[1]} hook: pyro is not installed for {sys.executable} ({exc}); run `pyro hooks install` again\n")
    sys.exit(1)
sys.exit(main(sys.argv[1:]))'
if [ -n "$input" ]; then
  "$python" -E -c "$run" "$hook" "$project" "$@" <"$input"
else
  "$python" -E -c "$run" "$hook" "$project" "$@"
fi
code=$?
if [ "$blocking" = 1 ]; then exit "$code"; fi
exit "$status"
