"""Reading one committed revision for a restore, every block checked against its manifest.

Restores only read: a committed revision never changes (ARCHITECTURE.md, commit
protocol), so no job lock is needed. The image and the manifest are opened once, up
front; if retention deletes the revision meanwhile, Linux keeps the open file's data.

The image is read as segments: data ranges (from SEEK_DATA/SEEK_HOLE, widened to whole
blocks) are read in chunks and each block's digest is compared with the manifest;
blocks in holes must have the digest of zeros in the manifest. A chunk is handed on
as pieces: runs of data, and runs of zeros (holes, and data blocks that are all zero)
that the target leaves (or makes) holes.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import xxhash

from lifeboat.blockio import read_into
from lifeboat.clone import data_extents
from lifeboat.errors import DataLoss, NotFound
from lifeboat.manifest import ALGORITHM, DIGEST_SIZE, MAGIC, VERSION, block_count, zero_digest
from lifeboat.repository import JobDirectory, RevisionMeta

HOLE_BATCH = 64 * 1024
"""Blocks of a hole whose digests are checked at once (1 MiB of digests)."""
MAX_REPORTED_OFFSETS = 100
_MAX_HEADER = 256


class CorruptRevision(DataLoss):
    """Stored data does not match the revision's manifest at `offsets` (block starts)."""

    def __init__(self, job: str, revision_id: str, offsets: list[int]) -> None:
        shown = offsets[:MAX_REPORTED_OFFSETS]
        more = f" and {len(offsets) - len(shown)} more" if len(offsets) > len(shown) else ""
        super().__init__(
            f"revision {revision_id} of job {job} does not match its manifest at block "
            f"offsets {shown}{more}"
        )
        self.job = job
        self.revision_id = revision_id
        self.offsets = offsets


@dataclass(frozen=True)
class Piece:
    """`length` bytes at `offset`: `data`, or zeros when `data` is None."""

    offset: int
    length: int
    data: memoryview | None = None


@dataclass
class Chunk:
    """Verified pieces of the image, in order (data views into the reader's buffer)."""

    pieces: list[Piece]
    data_bytes: int = 0
    """Bytes of data ranges this chunk covers (progress is counted in these)."""


class ManifestFile:
    """A revision's manifest (`<id>.sums`, see lifeboat.manifest) read through an open
    descriptor a range of digests at a time, so a restore of a huge image does not hold
    its whole manifest in memory."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        try:
            self.block_size, self.size, self._start = self._header()
            expected = self._start + self.block_count * DIGEST_SIZE
            actual = os.fstat(self.fd).st_size
            if actual != expected:
                raise DataLoss(f"{path}: {actual} bytes, expected {expected}")
        except BaseException:
            os.close(self.fd)
            raise

    def _header(self) -> tuple[int, int, int]:
        head = os.pread(self.fd, _MAX_HEADER, 0)
        newline = head.find(b"\n")
        fields = head[:newline].split(b" ") if newline > 0 else []
        expected = [MAGIC.encode(), VERSION.encode(), ALGORITHM.encode()]
        if len(fields) != 5 or fields[:3] != expected:
            raise DataLoss(f"{self.path}: not a {ALGORITHM} manifest of version {VERSION}")
        if not (fields[3].isdigit() and fields[4].isdigit()) or int(fields[3]) == 0:
            raise DataLoss(f"{self.path}: bad block size or size in {head[:newline]!r}")
        return int(fields[3]), int(fields[4]), newline + 1

    @property
    def block_count(self) -> int:
        return block_count(self.size, self.block_size)

    def block_length(self, index: int) -> int:
        return min(self.block_size, self.size - index * self.block_size)

    def digest_range(self, first: int, count: int) -> bytes:
        """The digests of blocks [first, first+count), concatenated."""
        length = count * DIGEST_SIZE
        data = os.pread(self.fd, length, self._start + first * DIGEST_SIZE)
        if len(data) != length:
            raise DataLoss(f"{self.path}: ends early, at block {first + len(data) // DIGEST_SIZE}")
        return data

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _block_ranges(fd: int, size: int, block_size: int) -> list[tuple[int, int]]:
    """Data extents of `fd` widened to whole blocks and merged: `[start, end)` each."""
    ranges: list[tuple[int, int]] = []
    for start, end in data_extents(fd, size):
        start -= start % block_size
        end = min(size, -(-end // block_size) * block_size)
        if ranges and start <= ranges[-1][1]:
            ranges[-1] = (ranges[-1][0], max(ranges[-1][1], end))
        else:
            ranges.append((start, end))
    return ranges


def _read_exactly(fd: int, view: memoryview, offset: int) -> None:
    done = read_into(fd, view, offset)
    if done < len(view):
        raise DataLoss(f"the stored image ends early, at byte {offset + done}")


class RevisionReader:
    """An open revision: its image descriptor, its manifest and where its data lies."""

    def __init__(self, job_dir: JobDirectory, meta: RevisionMeta) -> None:
        self.job = job_dir.name
        self.meta = meta
        self.fd = _open_image(job_dir, meta)
        try:
            self.manifest = _open_manifest(job_dir, meta)
        except BaseException:
            os.close(self.fd)
            raise
        try:
            self._check_geometry()
            os.posix_fadvise(self.fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
            self.ranges = _block_ranges(self.fd, meta.size, self.manifest.block_size)
        except BaseException:
            self.close()
            raise
        self.data_bytes = sum(end - start for start, end in self.ranges)

    @property
    def size(self) -> int:
        return self.meta.size

    @property
    def block_size(self) -> int:
        return self.manifest.block_size

    def close(self) -> None:
        self.manifest.close()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> RevisionReader:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _check_geometry(self) -> None:
        manifest, meta = self.manifest, self.meta
        if (manifest.size, manifest.block_size) != (meta.size, meta.block_size):
            raise DataLoss(
                f"revision {meta.id} of job {self.job}: manifest covers {manifest.size} bytes "
                f"in blocks of {manifest.block_size}, the revision {meta.size} in blocks of "
                f"{meta.block_size}"
            )
        image_size = os.fstat(self.fd).st_size
        if image_size != meta.size:
            raise DataLoss(
                f"revision {meta.id} of job {self.job}: the image is {image_size} bytes, "
                f"the revision {meta.size}"
            )

    def chunks(self, buffer: bytearray) -> Iterator[Chunk]:
        """The whole image as verified chunks of whole blocks that fit in `buffer`.

        A chunk's data is valid until the next one is read into the same buffer. Raises
        CorruptRevision at the first chunk (or hole) that does not match, naming every
        bad block of it.
        """
        step = len(buffer) - len(buffer) % self.block_size
        if step == 0:
            raise ValueError(f"a buffer of {len(buffer)} bytes holds no block")
        position = 0
        for start, end in self.ranges:
            if start > position:
                yield self._hole(position, start)
            for offset in range(start, end, step):
                yield self._data(offset, min(step, end - offset), buffer)
            position = end
        if position < self.size:
            yield self._hole(position, self.size)

    def _hole(self, start: int, end: int) -> Chunk:
        """A hole of the image: the manifest must say zeros for each of its blocks."""
        manifest = self.manifest
        block_size = manifest.block_size
        first, last = start // block_size, block_count(end, block_size)
        for batch in range(first, last, HOLE_BATCH):
            count = min(HOLE_BATCH, last - batch)
            expected = _zero_digests(manifest, batch, count)
            stored = manifest.digest_range(batch, count)
            if stored != expected:
                raise CorruptRevision(
                    self.job, self.meta.id, _differing_offsets(stored, expected, batch, block_size)
                )
        return Chunk([Piece(start, end - start)])

    def _data(self, offset: int, length: int, buffer: bytearray) -> Chunk:
        view = memoryview(buffer)[:length]
        _read_exactly(self.fd, view, offset)
        manifest = self.manifest
        block_size = manifest.block_size
        first = offset // block_size
        digest = xxhash.xxh3_128_digest
        actual = b"".join([digest(view[i : i + block_size]) for i in range(0, length, block_size)])
        expected = manifest.digest_range(first, len(actual) // DIGEST_SIZE)
        if actual != expected:
            raise CorruptRevision(
                self.job, self.meta.id, _differing_offsets(actual, expected, first, block_size)
            )
        return Chunk(_pieces(offset, view, actual, block_size), length)


def _open_image(job_dir: JobDirectory, meta: RevisionMeta) -> int:
    try:
        fd = os.open(job_dir.image_path(meta.id), os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise NotFound(f"revision {meta.id} of job {job_dir.name} was just deleted") from None
    except OSError as error:
        if error.errno == errno.ELOOP:
            raise DataLoss(f"{job_dir.image_path(meta.id)} is a symlink, not an image") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise DataLoss(f"{job_dir.image_path(meta.id)} is not a regular file")
    return fd


def _open_manifest(job_dir: JobDirectory, meta: RevisionMeta) -> ManifestFile:
    try:
        return ManifestFile(job_dir.sums_path(meta.id))
    except FileNotFoundError:
        raise NotFound(f"revision {meta.id} of job {job_dir.name} was just deleted") from None


def _zero_digests(manifest: ManifestFile, first: int, count: int) -> bytes:
    """The digests blocks [first, first+count) have when they are all zeros."""
    block_size = manifest.block_size
    last = first + count - 1
    tail = manifest.block_length(last)
    if tail == block_size:
        return zero_digest(block_size) * count
    return zero_digest(block_size) * (count - 1) + zero_digest(tail)


def _differing_offsets(actual: bytes, expected: bytes, first: int, block_size: int) -> list[int]:
    return [
        (first + index) * block_size
        for index in range(len(actual) // DIGEST_SIZE)
        if actual[index * DIGEST_SIZE : (index + 1) * DIGEST_SIZE]
        != expected[index * DIGEST_SIZE : (index + 1) * DIGEST_SIZE]
    ]


def _zero_blocks(view: memoryview, digests: bytes, block_size: int) -> list[int]:
    """Indices of the blocks of `view` that are all zeros.

    A zero block has the digest of zeros; only blocks with that digest are compared
    byte by byte, so a chunk without zero blocks costs one search of its digests.
    """
    zero = zero_digest(block_size)
    found = []
    position = digests.find(zero)
    while position >= 0:
        if position % DIGEST_SIZE == 0:
            index = position // DIGEST_SIZE
            block = view[index * block_size : (index + 1) * block_size]
            if block.tobytes() == bytes(len(block)):
                found.append(index)
        position = digests.find(zero, position + 1)
    tail = len(view) % block_size
    if tail and digests[-DIGEST_SIZE:] == zero_digest(tail):
        index = len(digests) // DIGEST_SIZE - 1
        if index not in found and view[index * block_size :].tobytes() == bytes(tail):
            found.append(index)
    return found


def _pieces(offset: int, view: memoryview, digests: bytes, block_size: int) -> list[Piece]:
    """`view` (at `offset`) as alternating runs of data and of zero blocks."""
    zeros = set(_zero_blocks(view, digests, block_size))
    if not zeros:
        return [Piece(offset, len(view), view)]
    pieces: list[Piece] = []
    count = len(digests) // DIGEST_SIZE
    run_start = 0
    for index in range(1, count + 1):
        if index < count and (index in zeros) == (run_start in zeros):
            continue
        lo, hi = run_start * block_size, min(index * block_size, len(view))
        data = None if run_start in zeros else view[lo:hi]
        pieces.append(Piece(offset + lo, hi - lo, data))
        run_start = index
    return pieces
