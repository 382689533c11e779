"""The Ceph RBD source: snapshot `lifeboat-<revision-id>`, changes from `rbd diff`.

`diff_iterate` from the parent's snapshot says which extents may have
changed. Those hints can be coarser than the real change (object-granular
with fast-diff), so the backup compares every hinted block with the parent's
manifest instead of copying blindly; blocks outside the hints are taken
from the parent. Without the parent's snapshot the hints are unknown and
every block is compared.
"""

from __future__ import annotations

import contextlib
import logging
from collections import deque
from collections.abc import Iterable, Iterator
from typing import Any

from backupd.extents import Extent, merge
from backupd.sources.base import Snapshot, SourceDriver, SourceError
from lifeboat import ceph
from lifeboat.model import CephRbdSource

log = logging.getLogger("lifeboat.backupd.rbd")

SNAPSHOT_PREFIX = "lifeboat-"
READ_DEPTH = 128
READ_AHEAD_BYTES = 64 * 1024 * 1024


def snapshot_name(revision_id: str) -> str:
    return f"{SNAPSHOT_PREFIX}{revision_id}"


class RbdSnapshot(Snapshot):
    point_in_time = True

    def __init__(self, image: Any, parent_snapshot: str | None, label: str) -> None:
        self.image = image
        self.parent_snapshot = parent_snapshot
        self.label = label
        self.size = int(image.size())

    def _extents(
        self, start: int, end: int, from_snapshot: str | None
    ) -> list[tuple[int, int, bool]]:
        found: list[tuple[int, int, bool]] = []

        def collect(offset: int, length: int, exists: bool) -> int:
            found.append((offset, length, bool(exists)))
            return 0

        if end > start:
            self.image.diff_iterate(start, end - start, from_snapshot, collect)
        return found

    def read_into(self, offset: int, buffer: memoryview) -> None:
        data = self.image.read(offset, len(buffer))
        if len(data) != len(buffer):
            raise SourceError(
                f"{self.label}: short read at {offset} ({len(data)} of {len(buffer)} bytes)"
            )
        buffer[:] = data

    def read_many(self, pieces: Iterable[Extent]) -> Iterator[tuple[int, memoryview]]:
        """Keep reads in flight, up to READ_DEPTH of them or READ_AHEAD_BYTES: scattered
        small reads are latency-bound, big ones should not flood the OSDs."""
        waiting = iter(pieces)
        in_flight: deque[tuple[int, int, Any]] = deque()
        results: dict[int, bytes] = {}
        bytes_in_flight = 0

        def submit(offset: int, length: int) -> None:
            def done(completion: Any, data: bytes) -> None:
                results[offset] = data if completion.get_return_value() >= 0 else b""

            in_flight.append((offset, length, self.image.aio_read(offset, length, done)))

        def fill() -> None:
            nonlocal bytes_in_flight
            while len(in_flight) < READ_DEPTH and bytes_in_flight < READ_AHEAD_BYTES:
                piece = next(waiting, None)
                if piece is None:
                    return
                submit(*piece)
                bytes_in_flight += piece[1]

        fill()
        try:
            while in_flight:
                offset, length, completion = in_flight.popleft()
                completion.wait_for_complete_and_cb()
                bytes_in_flight -= length
                data = results.pop(offset, b"")
                if len(data) != length:
                    raise SourceError(f"{self.label}: read of {length} bytes at {offset} failed")
                fill()
                yield offset, memoryview(data)
        finally:
            for _, _, completion in in_flight:
                completion.wait_for_complete_and_cb()

    def data_extents(self, start: int, end: int) -> Iterator[Extent]:
        allocated = [(o, n) for o, n, exists in self._extents(start, end, None) if exists]
        yield from merge(allocated)

    def changed_extents(self) -> list[Extent] | None:
        if self.parent_snapshot is None:
            return None
        return merge((o, n) for o, n, _ in self._extents(0, self.size, self.parent_snapshot))


class RbdDriver(SourceDriver):
    kind = "ceph-rbd"

    def __init__(self, source: CephRbdSource) -> None:
        self.source = source
        self._cluster: Any = None
        self._pool_context: Any = None

    def describe(self) -> str:
        return f"ceph-rbd {self.source.pool}/{self.source.image}"

    def _ioctx(self) -> Any:
        """The I/O context on the source's pool, connected on first use and kept until
        `close`: a backup's snapshot, reads and cleanup share one connection."""
        if self._pool_context is None:
            rados, _ = ceph.modules()
            cluster = ceph.connect(self.source.conf, self.source.id, self.describe())
            try:
                self._pool_context = cluster.open_ioctx(self.source.pool)
            except rados.ObjectNotFound:
                cluster.shutdown()
                raise SourceError(f"{self.describe()}: pool not found") from None
            except BaseException:
                cluster.shutdown()
                raise
            self._cluster = cluster
        return self._pool_context

    def close(self) -> None:
        pool_context, cluster = self._pool_context, self._cluster
        self._pool_context = self._cluster = None
        if pool_context is not None:
            pool_context.close()
        if cluster is not None:
            cluster.shutdown()

    @contextlib.contextmanager
    def _image(self, ioctx: Any, snapshot: str | None = None) -> Iterator[Any]:
        _, rbd = ceph.modules()
        try:
            image = rbd.Image(
                ioctx, self.source.image, snapshot=snapshot, read_only=snapshot is not None
            )
        except rbd.ImageNotFound:
            raise SourceError(f"{self.describe()}: image not found") from None
        try:
            yield image
        finally:
            image.close()

    def _snapshot_names(self, image: Any) -> list[str]:
        return [
            snap["name"] for snap in image.list_snaps() if snap["name"].startswith(SNAPSHOT_PREFIX)
        ]

    @contextlib.contextmanager
    def snapshot(self, revision_id: str, parent_id: str | None) -> Iterator[Snapshot]:
        name = snapshot_name(revision_id)
        ioctx = self._ioctx()
        with self._image(ioctx) as image:
            existing = self._snapshot_names(image)
            image.create_snap(name)
        parent = snapshot_name(parent_id) if parent_id else None
        if parent is not None and parent not in existing:
            log.warning("%s: snapshot %s is gone; comparing every block", self.describe(), parent)
            parent = None
        try:
            with self._image(ioctx, snapshot=name) as frozen:
                yield RbdSnapshot(frozen, parent, self.describe())
        except BaseException:
            self._remove_snapshots(ioctx, [name])
            raise

    def _remove_snapshots(self, ioctx: Any, names: list[str]) -> None:
        with self._image(ioctx) as image:
            self._remove_from(image, names)

    def _remove_from(self, image: Any, names: list[str]) -> None:
        for name in names:
            try:
                image.remove_snap(name)
            except Exception as error:  # a leftover snapshot is untidy, not fatal
                log.warning("%s: cannot remove snapshot %s: %s", self.describe(), name, error)

    def discard(self, revision_id: str) -> None:
        name = snapshot_name(revision_id)
        try:
            with self._image(self._ioctx()) as image:
                self._remove_from(image, [n for n in self._snapshot_names(image) if n == name])
        except Exception as error:  # the backup's own failure is what the caller must see
            log.warning("%s: cannot remove snapshot %s: %s", self.describe(), name, error)

    def after_good_backup(self, revision_id: str) -> None:
        keep = snapshot_name(revision_id)
        with self._image(self._ioctx()) as image:
            self._remove_from(image, [n for n in self._snapshot_names(image) if n != keep])
