"""The in-workspace agent and its wire protocol.

Everything in this package runs under the workspace's own `python3` (any version from 3.7),
imports only the standard library, and avoids slow imports: its start-up time is part of
every workspace create and reset.
"""
