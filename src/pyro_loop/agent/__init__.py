"""The in-workspace agent and its wire protocol.

Everything in this package runs under the workspace's own `python3` (3.9 or later: exec
uses `os.pidfd_open`; Debian 11, the oldest image, has 3.9), imports only the standard
library, and avoids slow imports: its start-up time is part of every workspace create and
reset.
"""
