pytest_plugins = [
    "tests.support.ceph_fixture",
    "tests.support.loopfs",
    "tests.support.transport",
]
