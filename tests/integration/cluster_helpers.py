"""Helpers for the several-appliances tests: the host's throwaway MariaDB or PostgreSQL on loopback
and the round-robin TCP proxy standing in for the load balancer (image/soak/cluster.py, which the
failover soak uses too). Here a missing database server skips the test, saying why."""
import contextlib

import pytest

from image.soak import cluster
from image.soak.cluster import MariaDB, PostgreSQL, RoundRobinProxy, server_missing  # noqa: F401 (the tests' names)


@contextlib.contextmanager
def database_server(kind, workdir):
    """A started MariaDB or PostgreSQL test server, stopped (and its files removed) when the block
    ends, also on failure. Skips the test, saying why, when the server is not installed."""
    problem = server_missing(kind)
    if problem:
        pytest.skip(f"the shared-database tests need Debian's {kind} server: {problem}")
    with cluster.database_server(kind, workdir) as server:
        yield server
