"""Tests of the real single-node Ceph fixture (tests/support/ceph-cluster, ceph_fixture)."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.ceph import LINK_SCRIPT, CephCluster, ceph_available, rbd_modules_importable
from tests.support.needs import need
from tests.support.processes import alive, gone_within

pytestmark = pytest.mark.ceph

MiB = 1 << 20
OBJECT_SIZE = 4 * MiB  # rbd's default (order 22)
IMAGE_SIZE = 64 * MiB

Extent = tuple[int, int]  # (offset, length)


def pattern(seed: int, length: int) -> bytes:
    block = bytes((seed * 31 + i) % 251 for i in range(4096))
    return (block * (length // len(block) + 1))[:length]


def diff(cluster: CephCluster, spec: str, from_snap: str | None = None) -> list[dict]:
    args = ["diff", spec, "--format", "json"]
    if from_snap is not None:
        args += ["--from-snap", from_snap]
    return json.loads(cluster.rbd(*args).stdout)


def written(extents: list[dict]) -> list[Extent]:
    return [(e["offset"], e["length"]) for e in extents if e["exists"] in (True, "true")]


def covers(extents: list[Extent], offset: int, length: int) -> bool:
    """Whether the union of `extents` covers [offset, offset + length)."""
    position, end = offset, offset + length
    for start, size in sorted(extents):
        if start <= position < start + size:
            position = start + size
        if position >= end:
            return True
    return False


def objects(extents: list[Extent]) -> set[int]:
    """Numbers of the rbd data objects (default layout) the extents touch."""
    return {
        number
        for offset, length in extents
        for number in range(offset // OBJECT_SIZE, (offset + length - 1) // OBJECT_SIZE + 1)
    }


@pytest.fixture
def image(ceph_cluster: CephCluster, ceph_pool: str) -> Iterator[str]:
    """A fresh image name ("pool/name"), removed (with its snapshots) afterwards."""
    spec = f"{ceph_pool}/test-{uuid.uuid4().hex[:12]}"
    yield spec
    try:
        ceph_cluster.rbd("snap", "purge", "--no-progress", spec)
        ceph_cluster.rbd("rm", "--no-progress", spec)
    except subprocess.CalledProcessError as error:
        if "No such file or directory" not in (error.stderr or ""):
            raise


def test_cluster_state_is_confined_to_its_directory(ceph_cluster: CephCluster) -> None:
    assert ceph_cluster.conf == ceph_cluster.dir / "ceph.conf"
    conf = ceph_cluster.conf.read_text()
    assert "objectstore = memstore" in conf
    assert (ceph_cluster.dir / "run" / "ceph-mon.a.asok").is_socket()
    assert (ceph_cluster.dir / "run" / "ceph-osd.0.asok").is_socket()
    pids = ceph_cluster.pids()
    assert set(pids) == {"mon.a", "osd.0"}
    assert all(alive(pid) for pid in pids.values())
    assert ceph_cluster.env()["CEPH_CONF"] == str(ceph_cluster.conf)
    # The pool is there and initialised for rbd.
    detail = ceph_cluster.ceph("osd", "pool", "ls", "detail", "--format", "json").stdout
    (pool,) = [p for p in json.loads(detail) if p["pool_name"] == ceph_cluster.pool]
    assert pool["size"] == 1
    assert "rbd" in pool["application_metadata"]


def test_rbd_snapshot_and_diff(ceph_cluster: CephCluster, image: str, tmp_path: Path) -> None:
    # Build the image from a sparse file with data at 1 MiB and 20 MiB.
    source = tmp_path / "source.img"
    first = [(1 * MiB, pattern(1, 64 * 1024)), (20 * MiB, pattern(2, 128 * 1024))]
    with source.open("wb") as f:
        f.truncate(IMAGE_SIZE)
        for offset, data in first:
            f.seek(offset)
            f.write(data)
    ceph_cluster.rbd("import", "--no-progress", str(source), image)
    info = json.loads(ceph_cluster.rbd("info", image, "--format", "json").stdout)
    assert info["size"] == IMAGE_SIZE
    assert info["object_size"] == OBJECT_SIZE

    full = written(diff(ceph_cluster, image))
    for offset, data in first:
        assert covers(full, offset, len(data)), full
    assert objects(full) == {0, 5}

    ceph_cluster.rbd("snap", "create", "--no-progress", f"{image}@one")
    assert diff(ceph_cluster, image, from_snap="one") == []

    # Overwrite [0, 8 KiB) with rbd's own writer (io-threads 1 + seq starts at offset 0).
    ceph_cluster.rbd(
        "bench", "--io-type", "write", "--io-size", "4K", "--io-total", "8K",
        "--io-threads", "1", "--io-pattern", "seq", image,
    )  # fmt: skip
    changed = written(diff(ceph_cluster, image, from_snap="one"))
    assert covers(changed, 0, 8192), changed
    # Diffs are per-object precise: the untouched object at 20 MiB is not reported.
    assert objects(changed) == {0}, changed

    # The snapshot still holds exactly the imported data; the head keeps the untouched part.
    at_snap = ceph_cluster.rbd("export", "--no-progress", f"{image}@one", "-", text=False).stdout
    assert at_snap == source.read_bytes()
    head = ceph_cluster.rbd("export", "--no-progress", image, "-", text=False).stdout
    assert len(head) == IMAGE_SIZE
    assert head[8192:] == at_snap[8192:]
    assert head[:8192] != at_snap[:8192]


def test_python_modules_read_and_diff(ceph_cluster: CephCluster, image: str) -> None:
    need(
        rbd_modules_importable(),
        f"python rados/rbd modules not importable; run {LINK_SCRIPT} on this interpreter",
    )
    import rados
    import rbd

    pool, name = image.split("/")
    # Entering connects; "client mount timeout = 10" in the conf bounds the wait.
    with (
        rados.Rados(conffile=str(ceph_cluster.conf)) as cluster,
        cluster.open_ioctx(pool) as ioctx,
    ):
        rbd.RBD().create(ioctx, name, IMAGE_SIZE, old_format=False)
        before = pattern(3, 256 * 1024)
        after = pattern(4, 4096)
        with rbd.Image(ioctx, name) as img:
            assert img.size() == IMAGE_SIZE
            assert img.write(before, 9 * MiB) == len(before)
            img.flush()
            img.create_snap("base")
            assert img.write(after, 9 * MiB + 8192) == len(after)
            assert img.write(after, 40 * MiB) == len(after)
            img.flush()

            assert img.read(9 * MiB, len(before)) == (
                before[:8192] + after + before[8192 + len(after) :]
            )
            assert img.read(40 * MiB, len(after)) == after
            assert img.read(0, 4096) == bytes(4096)

            seen: list[tuple[int, int, bool]] = []

            def record(offset: int, length: int, exists: bool) -> None:
                seen.append((offset, length, exists))

            img.diff_iterate(0, IMAGE_SIZE, "base", record)
            changed = [(o, n) for o, n, exists in seen if exists]
            assert covers(changed, 9 * MiB + 8192, len(after)), seen
            assert covers(changed, 40 * MiB, len(after)), seen
            assert objects(changed) == {2, 10}, seen

        with rbd.Image(ioctx, name, snapshot="base", read_only=True) as snap:
            assert snap.read(9 * MiB, len(before)) == before
            assert snap.read(40 * MiB, len(after)) == bytes(len(after))

    # The CLI sees what the module wrote.
    cli = written(diff(ceph_cluster, image, from_snap="base"))
    assert objects(cli) == {2, 10}
    data = ceph_cluster.rbd("export", "--no-progress", image, "-", text=False).stdout
    assert data[40 * MiB : 40 * MiB + len(after)] == after


def test_second_cluster_coexists_and_stops(ceph_cluster: CephCluster, tmp_path: Path) -> None:
    ok, reason = ceph_available()
    need(ok, reason)
    with pytest.raises(RuntimeError, match="not empty"):
        CephCluster.start(ceph_cluster.dir)

    other = CephCluster.start(tmp_path / "other")
    try:
        assert other.conf.read_text() != ceph_cluster.conf.read_text()
        pids = other.pids()
        assert set(pids) == {"mon.a", "osd.0"}
        assert not set(pids.values()) & set(ceph_cluster.pids().values())
        other.rbd("create", "--size", "8M", f"{other.pool}/only-here")
        assert other.rbd("ls", other.pool).stdout.split() == ["only-here"]
        assert "only-here" not in ceph_cluster.rbd("ls", ceph_cluster.pool).stdout.split()
    finally:
        other.stop()
    assert gone_within(list(pids.values()), seconds=10)
    assert other.pids() == {}
    other.stop()  # idempotent
    # The session's cluster is unaffected.
    ceph_cluster.rbd("ls", ceph_cluster.pool)
