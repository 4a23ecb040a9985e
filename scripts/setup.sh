#!/usr/bin/env bash
# Set up this machine for pyro: Debian packages (with sudo when not root) and ./.venv.
# Safe to run again: it installs only what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(bubblewrap libseccomp2 util-linux git python3 python3-venv mmdebstrap uidmap fakechroot fakeroot docker-registry apache2-utils openssl)
missing=()
# npm (for the real-project tests) only where no npm is on PATH: NodeSource's nodejs ships
# its own, and Debian's npm package would conflict with it.
command -v npm >/dev/null || packages+=(npm)
for pkg in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if ((${#missing[@]})); then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "setup: installing ${missing[*]}" >&2
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# The system's python3 where there is one (Debian 12: 3.11.2), not a newer one earlier on
# PATH: it is the interpreter users have, and the one the suite must pass on.
python=python3
[ -x /usr/bin/python3 ] && python=/usr/bin/python3
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[test]'
