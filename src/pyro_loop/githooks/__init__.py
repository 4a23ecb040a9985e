"""Git hooks, a front like `cli` and `mcp`: install pyro's scripts, and what they run.

install  write and remove pyro's scripts in the repository's hooks directory
run      the scripts' entry: keep warm (loop/keepwarm.py) or check (loop/check.py)

Kept import-free: the hook scripts import `pyro_loop.githooks.run` on every checkout, and a
post-checkout hook has to be back in git's hands within milliseconds.
"""
