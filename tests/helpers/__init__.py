"""What several test modules share: project and git set-up, sandbox probes, users, clients.

Fixtures that many modules use are registered in tests/conftest.py (`pytest_plugins`); the
rest are plain functions, imported by name.
"""
