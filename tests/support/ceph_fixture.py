"""pytest plugin: a real single-node Ceph cluster shared by the whole session.

Enabled from ``tests/conftest.py`` via ``pytest_plugins``. Tests that need Ceph take the
``ceph_cluster`` (a :class:`tests.support.ceph.CephCluster`) or ``ceph_pool`` fixture; they
are skipped (or failed under LIFEBOAT_REQUIRE_ALL=1) where Ceph is not installed or we are
not root.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.ceph import CephCluster, ceph_available
from tests.support.needs import need


@pytest.fixture(scope="session")
def ceph_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CephCluster]:
    ok, reason = ceph_available()
    need(ok, reason)
    cluster = CephCluster.start(tmp_path_factory.mktemp("ceph"))
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def ceph_pool(ceph_cluster: CephCluster) -> str:
    """Name of the RBD pool of the session's cluster (initialised, replica size 1)."""
    return ceph_cluster.pool
