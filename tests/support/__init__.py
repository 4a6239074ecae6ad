"""Helpers shared by the test suites: the server as a subprocess, backends, fds.

`tests.support.server` runs ``python -m server`` as a child (on top of
`loadtest.servers.ServerProcess`, the one implementation of spawning,
waiting for the listening line, signals, statistics and stopping).
"""
