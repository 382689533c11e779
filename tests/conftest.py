pytest_plugins = [
    "tests.support.ceph_fixture",
    "tests.support.faultfs_fixture",
    "tests.support.loopfs",
    "tests.support.transport",
]
