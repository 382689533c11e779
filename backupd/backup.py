"""One backup of one job: clone the parent revision, write only changed blocks, verify, commit.

There is no full/differential choice: without a usable parent the clone is
an empty sparse file and every block with data counts as changed.
"""

from __future__ import annotations

import bisect
import concurrent.futures
import errno
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import xxhash

from backupd import extents
from backupd.sources.base import Snapshot, SourceDriver
from backupd.verify import SampleVerifier, VerifyLimits
from lifeboat import clock
from lifeboat.blockio import naming, punch_hole, start_writeback, write_all
from lifeboat.clone import limit_cow_preallocation
from lifeboat.errors import ResourceExhausted
from lifeboat.manifest import ALGORITHM, DEFAULT_BLOCK_SIZE, DIGEST_SIZE, Manifest, zero_digest
from lifeboat.model import Job
from lifeboat.repository import JobDirectory, RevisionMeta, RevisionWriter
from lifeboat.revision import Trust, Verification

CHUNK_SIZE = 4 * 1024 * 1024
# Changed extents closer than this are read as one: a round trip to the source costs
# more than reading (and comparing) the unchanged bytes between them.
MERGE_GAP = 64 * 1024
# Written bytes after which writeback is started in the background, so the final
# fsync overlaps with the copy instead of following it.
WRITEBACK_EVERY = 8 * 1024 * 1024

Progress = Callable[[int, int], None]


@dataclass(frozen=True)
class BackupSettings:
    block_size: int = DEFAULT_BLOCK_SIZE
    chunk_size: int = CHUNK_SIZE
    verify: VerifyLimits = field(default_factory=VerifyLimits)


@dataclass
class WriteStats:
    bytes_read: int = 0
    bytes_written: int = 0
    blocks_changed: int = 0

    def as_dict(self, duration: float, full: bool) -> dict[str, object]:
        return {
            "bytes-read": self.bytes_read,
            "bytes-written": self.bytes_written,
            "blocks-changed": self.blocks_changed,
            "duration": round(duration, 3),
            "full": full,
        }


def usable_parent(job_dir: JobDirectory) -> RevisionMeta | None:
    """The newest revision that is not damaged, if it is good: the base of an incremental
    backup. A distrusted newest revision makes the backup full, since what made it
    distrusted may lie in the stored copy of its own parent."""
    newest = job_dir.listing().newest
    return newest if newest is not None and newest.good else None


def resized(manifest: Manifest, size: int) -> Manifest:
    """The parent's manifest for an image of `size` bytes; the last common block is re-read."""
    if size == manifest.size:
        return manifest.copy()
    result = Manifest(manifest.block_size, size)
    common_blocks = min(manifest.size, size) // manifest.block_size
    result.set_digest_range(0, manifest.digest_range(0, common_blocks))
    return result


def scan_extents(
    snapshot: Snapshot, parent: RevisionMeta | None, block_size: int
) -> list[extents.Extent]:
    """Block-aligned extents to compare: what the source says changed, or everything."""
    size = snapshot.size
    changed = snapshot.changed_extents() if parent is not None else None
    if changed is None:
        return extents.align([(0, size)], block_size, size)
    assert parent is not None
    if parent.size != size:
        common = min(parent.size, size)
        changed = [*changed, (common - common % block_size, size)]
    aligned = extents.align(extents.clip(changed, 0, size), block_size, size)
    return extents.merge(aligned, gap=MERGE_GAP)


class BlockWriter:
    """Compares chunks of the source with the manifest and writes the blocks that differ."""

    def __init__(
        self,
        fd: int,
        manifest: Manifest,
        stats: WriteStats,
        background: concurrent.futures.Executor,
    ) -> None:
        self.fd = fd
        self.manifest = manifest
        self.stats = stats
        self.block_size = manifest.block_size
        self.background = background
        self._unflushed = 0
        self._writeback: concurrent.futures.Future[None] | None = None

    def apply_zeros(self, offset: int, length: int) -> None:
        """The source holds only zeros here: punch holes where the image had data."""
        first, count = offset // self.block_size, self._blocks(length)
        wanted = self._zero_digests(first, count)
        if self.manifest.digest_range(first, count) == wanted:
            return
        old = self.manifest.digest_range(first, count)
        for run_start, run_count in _differing_runs(old, wanted):
            start = (first + run_start) * self.block_size
            end = min((first + run_start + run_count) * self.block_size, self.manifest.size)
            punch_hole(self.fd, start, end - start)
            self.stats.blocks_changed += run_count
        self.manifest.set_digest_range(first, wanted)

    def apply_data(self, offset: int, data: memoryview) -> None:
        """`data` holds whole blocks of the source starting at block-aligned `offset`."""
        first, count = offset // self.block_size, self._blocks(len(data))
        bs = self.block_size
        digest = xxhash.xxh3_128_digest
        new = b"".join(digest(data[i * bs : (i + 1) * bs]) for i in range(count))
        old = self.manifest.digest_range(first, count)
        if new == old:
            return
        zeros = self._zero_digests(first, count)
        for run_start, run_count in _differing_runs(old, new):
            self._write_run(offset, data, new, zeros, run_start, run_count)
        self.manifest.set_digest_range(first, new)

    def _write_run(
        self, offset: int, data: memoryview, new: bytes, zeros: bytes, start: int, count: int
    ) -> None:
        """Write blocks [start, start+count) of the chunk, punching holes for zero blocks."""
        bs = self.block_size
        for piece_start, piece_count, is_zero in _zero_runs(new, zeros, start, count):
            lo, hi = piece_start * bs, min((piece_start + piece_count) * bs, len(data))
            if is_zero:
                punch_hole(self.fd, offset + lo, hi - lo)
            else:
                write_all(self.fd, data[lo:hi], offset + lo)
                self.stats.bytes_written += hi - lo
                self._unflushed += hi - lo
        if self._unflushed >= WRITEBACK_EVERY:
            self._start_writeback()
        self.stats.blocks_changed += count

    def _start_writeback(self) -> None:
        """Queue writeback of what was written so far; it blocks while it submits the
        writes, so it runs in the background, one at a time (each covers the whole file)."""
        self._unflushed = 0
        if self._writeback is None or self._writeback.done():
            self._writeback = self.background.submit(start_writeback, self.fd)

    def _blocks(self, length: int) -> int:
        return -(-length // self.block_size)

    def _zero_digests(self, first: int, count: int) -> bytes:
        if (first + count) * self.block_size <= self.manifest.size:
            return zero_digest(self.block_size) * count
        lengths = (self.manifest.block_length(first + i) for i in range(count))
        return b"".join(zero_digest(length) for length in lengths)


def _differing_runs(old: bytes, new: bytes) -> list[tuple[int, int]]:
    """Runs (first block, count) where the digests differ."""
    runs: list[tuple[int, int]] = []
    for index in range(len(new) // DIGEST_SIZE):
        at = index * DIGEST_SIZE
        if old[at : at + DIGEST_SIZE] == new[at : at + DIGEST_SIZE]:
            continue
        if runs and runs[-1][0] + runs[-1][1] == index:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((index, 1))
    return runs


def _zero_runs(new: bytes, zeros: bytes, start: int, count: int) -> list[tuple[int, int, bool]]:
    """Split blocks [start, start+count) into runs of all-zero and data blocks."""
    runs: list[tuple[int, int, bool]] = []
    for index in range(start, start + count):
        at = index * DIGEST_SIZE
        is_zero = new[at : at + DIGEST_SIZE] == zeros[at : at + DIGEST_SIZE]
        if runs and runs[-1][2] == is_zero:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1, is_zero)
        else:
            runs.append((index, 1, is_zero))
    return runs


class _DataIndex:
    """Which parts of the source may hold data, for fast chunk lookups."""

    def __init__(self, data: Sequence[extents.Extent]) -> None:
        self.starts = [start for start, _ in data]
        self.data = list(data)

    def overlaps(self, offset: int, length: int) -> bool:
        index = bisect.bisect_right(self.starts, offset + length - 1) - 1
        if index < 0:
            return False
        start, data_length = self.data[index]
        return start + data_length > offset


def copy_changes(
    snapshot: Snapshot,
    fd: int,
    manifest: Manifest,
    scan: list[extents.Extent],
    settings: BackupSettings,
    verifier: SampleVerifier,
    background: concurrent.futures.Executor,
    progress: Progress,
    check_cancelled: Callable[[], None],
) -> WriteStats:
    """Bring the image behind `fd` (and `manifest`) up to date with `snapshot` over `scan`;
    sampled blocks among those read are verified on the way. `background` starts writeback."""
    stats = WriteStats()
    writer = BlockWriter(fd, manifest, stats, background)
    # Where the source named what changed, those extents are read as they are (zeros in
    # them are found by digest); a whole-image scan asks the source where data lies.
    whole_image = scan == extents.align([(0, manifest.size)], manifest.block_size, manifest.size)
    data_found = list(snapshot.data_extents(0, manifest.size)) if whole_image else scan
    data = _DataIndex(extents.align(data_found, manifest.block_size, manifest.size))
    pieces = extents.split(scan, settings.chunk_size)
    total, done = extents.total(scan), 0
    for offset, length in pieces:
        if not data.overlaps(offset, length):
            check_cancelled()
            writer.apply_zeros(offset, length)
            done += length
            progress(done, total)
    to_read = [p for p in pieces if data.overlaps(*p)]
    with verifier.checking_aside(snapshot, verifier.unseen(to_read), check_cancelled):
        prefetcher = verifier.prefetcher(to_read)
        with snapshot.reading(to_read) as stream:
            for offset, chunk in stream:
                check_cancelled()
                prefetcher.advance(offset)
                stats.bytes_read += len(chunk)
                writer.apply_data(offset, chunk)
                done += len(chunk)
                progress(done, total)
                verifier.check_chunk(offset, chunk, written=True)
    return stats


def back_up(
    job_dir: JobDirectory,
    job: Job,
    tags: Sequence[str],
    driver: SourceDriver,
    settings: BackupSettings,
    progress: Progress,
    check_cancelled: Callable[[], None],
    on_step: Callable[[str], None] | None = None,
    thaw: Callable[[], None] = lambda: None,
) -> RevisionMeta:
    """Write one new revision of `job`. The caller holds the job's lock.

    `thaw` runs exactly once: as soon as a point-in-time snapshot exists, otherwise
    once the live source has been read and verified.
    """
    thaw_once = _once(thaw)
    started = time.monotonic()
    parent = usable_parent(job_dir)
    revision_id = job_dir.new_revision_id()
    writer = job_dir.begin(revision_id)
    try:
        # Cloning the parent and reading its manifest are local work; taking the source's
        # snapshot may wait on the network (Ceph): do both at once.
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="clone") as helper:
            parent_manifest = helper.submit(_start_from_parent, writer, job_dir, parent)
            with driver.snapshot(revision_id, parent.id if parent else None) as snapshot:
                if snapshot.point_in_time:
                    thaw_once()
                manifest = _manifest_for(parent_manifest.result(), settings, snapshot.size)
                writer.resize(snapshot.size)
                stats, verification = _write_image(
                    writer, snapshot, parent, manifest, settings, progress, check_cancelled
                )
                # The last chance to cancel, while leaving the snapshot's context still
                # removes the snapshot: the revision is committed next.
                check_cancelled()
                thaw_once()
        meta = RevisionMeta(
            id=revision_id,
            job=job.name,
            timestamp=clock.now(),
            parent=parent.id if parent else None,
            tags=sorted(set(tags)),
            size=manifest.size,
            block_size=manifest.block_size,
            checksum=ALGORITHM,
            trust=verification.trust_after(Trust.TRUSTED),
            source=source_description(job),
            stats=stats.as_dict(time.monotonic() - started, full=parent is None),
            verification=verification,
        )
        return _commit(writer, meta, manifest, driver, on_step)
    except OSError as error:
        writer.abort()
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise ResourceExhausted(
                f"repository filesystem is full while writing {job.name}/{revision_id}; "
                "the partial revision was removed"
            ) from None
        raise
    except BaseException:
        writer.abort()
        raise
    finally:
        thaw_once()


def _commit(
    writer: RevisionWriter,
    meta: RevisionMeta,
    manifest: Manifest,
    driver: SourceDriver,
    on_step: Callable[[str], None] | None,
) -> RevisionMeta:
    """Commit the revision; if that fails, the source's snapshot of it goes too (it would
    stay until the next good backup, one more for each failed one meanwhile)."""
    try:
        return writer.commit(meta, manifest, on_step)
    except BaseException:
        if not writer.committed:
            driver.discard(meta.id)
        raise


def _start_from_parent(
    writer: RevisionWriter, job_dir: JobDirectory, parent: RevisionMeta | None
) -> Manifest | None:
    """Make the new image a clone of the parent's (or empty); the parent's manifest."""
    writer.start_from(parent, parent.size if parent is not None else 0)
    return Manifest.read(job_dir.sums_path(parent.id)) if parent is not None else None


def _manifest_for(
    parent_manifest: Manifest | None, settings: BackupSettings, size: int
) -> Manifest:
    if parent_manifest is None:
        return Manifest(settings.block_size, size)
    return resized(parent_manifest, size)


def _write_image(
    writer: RevisionWriter,
    snapshot: Snapshot,
    parent: RevisionMeta | None,
    manifest: Manifest,
    settings: BackupSettings,
    progress: Progress,
    check_cancelled: Callable[[], None],
) -> tuple[WriteStats, Verification]:
    """Find what changed, copy it into the new image, make that durable, verify the sample.

    An error reading or writing the image names it (and where it can, the offset)."""
    fd = os.open(writer.image_tmp_path, os.O_RDWR | os.O_CLOEXEC)
    try:
        limit_cow_preallocation(fd, manifest.block_size)
        # Writeback and prefetching block while they queue I/O: one helper thread runs them.
        background = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="io")
        try:
            verifier = SampleVerifier(manifest, fd, settings.verify, background)
            verifier.start_prefetch()
            scan = scan_extents(snapshot, parent, manifest.block_size)
            stats = copy_changes(
                snapshot,
                fd,
                manifest,
                scan,
                settings,
                verifier,
                background,
                progress,
                check_cancelled,
            )
        finally:
            background.shutdown(wait=True, cancel_futures=True)
        os.fsync(fd)
        return stats, verifier.finish(snapshot, check_cancelled)
    except OSError as error:
        raise naming(error, writer.image_tmp_path) from error
    finally:
        os.close(fd)


def _once(action: Callable[[], None]) -> Callable[[], None]:
    done = False

    def run() -> None:
        nonlocal done
        if not done:
            done = True
            action()

    return run


def source_description(job: Job) -> dict[str, object]:
    """The job's source as recorded in `.rev` and `job.yaml`."""
    source = job.source
    if source.type == "file":
        return {"type": "file", "path": source.path}  # type: ignore[union-attr]
    return {
        "type": source.type,
        "pool": source.pool,  # type: ignore[union-attr]
        "image": source.image,  # type: ignore[union-attr]
    }
