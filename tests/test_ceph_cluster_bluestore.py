"""The Ceph test cluster with a BlueStore OSD (CEPH_OBJECTSTORE=bluestore, see
tests/support/ceph.py), which the backup benchmark can measure against instead of memstore."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.support.ceph import CephCluster, ceph_available
from tests.support.needs import need
from tests.support.processes import gone_within

MiB = 1 << 20
GiB = 1 << 30
OBJECT_SIZE = 4 * MiB  # rbd's default (order 22)


def allocated(path: Path) -> int:
    return path.stat().st_blocks * 512


@pytest.mark.ceph
def test_bluestore_cluster_stores_rbd_images_in_its_block_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ok, reason = ceph_available()
    need(ok, reason)
    # The size comes from the environment (as the benchmark sets it), the store from the
    # argument; the argument wins over an environment saying otherwise.
    monkeypatch.setenv("CEPH_BLUESTORE_BYTES", str(2 * GiB))
    monkeypatch.setenv("CEPH_OBJECTSTORE", "memstore")
    cluster = CephCluster.start(tmp_path / "ceph", objectstore="bluestore")
    pids = cluster.pids()
    try:
        conf = cluster.conf.read_text()
        assert "osd objectstore = bluestore" in conf
        assert "memstore" not in conf
        block = cluster.dir / "osd" / "ceph-0" / "block"
        assert block.is_file() and not block.is_symlink()
        assert block.stat().st_size == 2 * GiB
        empty = allocated(block)
        assert empty < 512 * MiB  # sparse: mkfs wrote only its metadata

        metadata = json.loads(cluster.ceph("osd", "metadata", "0", "--format", "json").stdout)
        assert metadata["osd_objectstore"] == "bluestore"
        assert metadata["bluestore_bdev_path"] == str(block)
        assert metadata["bluestore_bdev_size"] == str(2 * GiB)
        assert metadata["bluestore_bdev_access_mode"] == "file"
        assert metadata["bluefs_single_shared_device"] == "1"
        assert metadata["bluefs_dedicated_db"] == "0"
        assert metadata["bluefs_dedicated_wal"] == "0"

        # 64 MiB of incompressible data goes through rbd into the block file and back.
        spec = f"{cluster.pool}/bluestore"
        source = tmp_path / "source.img"
        data = os.urandom(64 * MiB)
        source.write_bytes(data)
        cluster.rbd("import", "--no-progress", str(source), spec)
        assert allocated(block) - empty >= 64 * MiB
        assert cluster.rbd("export", "--no-progress", spec, "-", text=False).stdout == data

        # Snapshots and diffs work as on memstore: only the object written after the
        # snapshot is reported, and the snapshot keeps the old data.
        cluster.rbd("snap", "create", "--no-progress", f"{spec}@one")
        cluster.rbd(
            "bench", "--io-type", "write", "--io-size", "4K", "--io-total", "8K",
            "--io-threads", "1", "--io-pattern", "seq", spec,
        )  # fmt: skip
        changed = json.loads(
            cluster.rbd("diff", spec, "--from-snap", "one", "--format", "json").stdout
        )
        assert changed
        assert {e["offset"] // OBJECT_SIZE for e in changed} == {0}, changed
        at_snap = cluster.rbd("export", "--no-progress", f"{spec}@one", "-", text=False)
        assert at_snap.stdout == data
        head = cluster.rbd("export", "--no-progress", spec, "-", text=False).stdout
        assert head[8192:] == data[8192:]
        assert head[:8192] != data[:8192]
    finally:
        cluster.stop()
    assert set(pids) == {"mon.a", "osd.0"}
    assert gone_within(list(pids.values()), seconds=10)
    assert cluster.pids() == {}


def test_unknown_objectstore_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="objectstore"):
        CephCluster.start(tmp_path / "argument", objectstore="filestore")
    # The script checks the environment before it looks for Ceph or starts anything.
    monkeypatch.setenv("CEPH_OBJECTSTORE", "filestore")
    with pytest.raises(RuntimeError, match="bad CEPH_OBJECTSTORE: filestore"):
        CephCluster.start(tmp_path / "environment")
    assert not (tmp_path / "environment").exists()


def test_bad_bluestore_size_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CEPH_BLUESTORE_BYTES", "8G")
    with pytest.raises(RuntimeError, match="bad CEPH_BLUESTORE_BYTES: 8G"):
        CephCluster.start(tmp_path / "ceph", objectstore="bluestore")
    assert not (tmp_path / "ceph").exists()
