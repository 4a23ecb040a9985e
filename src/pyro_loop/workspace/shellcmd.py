"""The command line of an interactive shell in a workspace (`pyro shell`, MCP shells).

bash when the environment has it, else sh. bash reads the login profile (/etc/profile,
then ~/.bashrc) as a login shell would, but its rc file then puts back the PATH that exec
gives commands: Debian's /etc/profile sets PATH from scratch, which would hide the
project's tools. The rc file arrives on descriptor 3 as a here-document, so nothing is
written into the workspace.
"""

from __future__ import annotations

_RC = """\
exec 3<&-
[ -r /etc/profile ] && . /etc/profile
[ -r ~/.bashrc ] && . ~/.bashrc
PATH=$PYRO_SHELL_PATH; export PATH; unset PYRO_SHELL_PATH
"""

SHELL_SCRIPT = (
    "command -v bash >/dev/null 2>&1 || SHELL=/bin/sh exec sh -i\n"
    "PYRO_SHELL_PATH=$PATH SHELL=$(command -v bash) exec bash --rcfile /dev/fd/3 -i 3<<'PYRO_RC'\n"
    f"{_RC}PYRO_RC\n"
)

SHELL_ARGV = ["/bin/sh", "-c", SHELL_SCRIPT, "pyro-shell"]
