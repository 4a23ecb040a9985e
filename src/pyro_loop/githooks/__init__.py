"""Git hooks: keep the project warm after checkouts, check exactly what is committed.

Kept import-free: the hook scripts import `pyro_loop.githooks.run` on every checkout, and a
post-checkout hook has to be back in git's hands within milliseconds.
"""
