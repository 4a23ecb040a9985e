"""Filesystem basics every subsystem stands on, none of them pyro-specific.

beneath     open paths below a directory without ever following a link out of it
hoststate   a host path's kind, mode, size, times and digests, looked at through `beneath`
safetar     unpack tar archives pyro does not trust, the same on every supported Python
socketpath  Unix socket addresses for paths longer than sun_path allows
treewalk    walk and remove trees of any depth without recursion (also shipped beside the
            agent, which walks with it in the sandbox: Python 3.9, `os` and `stat` only)
util        atomic JSON writes, trash directories, disk-full errors, sizes

Imports: the standard library and `pyro_loop.errors` only.
"""
