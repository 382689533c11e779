"""The per-block checksum manifest of a raw image (`<revision-id>.sums`).

    lifeboat-sums 1 xxh3-128 <block-size> <size>\\n
    <digest of block 0><digest of block 1>...   (16 raw bytes each, big-endian xxh3-128)

Block `i` covers bytes `[i * block_size, min((i + 1) * block_size, size))`.
"""

from __future__ import annotations

import functools
import os
import stat
from pathlib import Path

import xxhash

from lifeboat.blockio import read_into
from lifeboat.clone import data_extents
from lifeboat.errors import DataLoss, FailedPrecondition, InvalidArgument

MAGIC = "lifeboat-sums"
VERSION = "1"
ALGORITHM = "xxh3-128"
DIGEST_SIZE = 16
DEFAULT_BLOCK_SIZE = 16 * 1024
READ_CHUNK = 1024 * 1024
"""Reads of 1 MiB keep the buffer in L2 while it is hashed: measured ~15% faster than 8 MiB."""
_MAX_HEADER = 256


def block_digest(data: bytes | bytearray | memoryview) -> bytes:
    """The 16-byte, big-endian xxh3-128 digest of one block."""
    return xxhash.xxh3_128_digest(data)


@functools.lru_cache(maxsize=64)
def zero_digest(length: int) -> bytes:
    """The digest of `length` zero bytes: the digest of a hole."""
    return block_digest(bytes(length))


def block_count(size: int, block_size: int) -> int:
    return -(-size // block_size)


class Manifest:
    """The digests of every block of an image of `size` bytes, in one compact bytearray.

    Without `digests`, every block starts as the digest of zeros (an image of holes).
    """

    __slots__ = ("_digests", "block_size", "size")

    def __init__(
        self, block_size: int, size: int, digests: bytes | bytearray | None = None
    ) -> None:
        if block_size <= 0:
            raise InvalidArgument("block-size", f"must be positive, not {block_size}")
        if size < 0:
            raise InvalidArgument("size", f"must not be negative, not {size}")
        self.block_size = block_size
        self.size = size
        if digests is None:
            self._digests = _zero_digests(block_size, size)
        elif len(digests) != self.block_count * DIGEST_SIZE:
            raise InvalidArgument(
                "digests",
                f"{len(digests)} bytes for {self.block_count} blocks "
                f"(expected {self.block_count * DIGEST_SIZE})",
            )
        else:
            self._digests = bytearray(digests)

    @property
    def block_count(self) -> int:
        return block_count(self.size, self.block_size)

    def block_length(self, index: int) -> int:
        """How many bytes block `index` covers (only the last block may be short)."""
        self._check_index(index)
        return min(self.block_size, self.size - index * self.block_size)

    def digest(self, index: int) -> bytes:
        self._check_index(index)
        start = index * DIGEST_SIZE
        return bytes(self._digests[start : start + DIGEST_SIZE])

    def set_digest(self, index: int, digest: bytes) -> None:
        self._check_index(index)
        if len(digest) != DIGEST_SIZE:
            raise InvalidArgument("digest", f"{len(digest)} bytes, expected {DIGEST_SIZE}")
        start = index * DIGEST_SIZE
        self._digests[start : start + DIGEST_SIZE] = digest

    def digest_range(self, first: int, count: int) -> bytes:
        """The digests of blocks [first, first+count), concatenated."""
        if count:
            self._check_index(first)
            self._check_index(first + count - 1)
        return bytes(self._digests[first * DIGEST_SIZE : (first + count) * DIGEST_SIZE])

    def set_digest_range(self, first: int, digests: bytes) -> None:
        """Replace the digests of consecutive blocks starting at `first`."""
        count, rest = divmod(len(digests), DIGEST_SIZE)
        if rest:
            raise InvalidArgument(
                "digests", f"{len(digests)} bytes is not a whole number of digests"
            )
        if count:
            self._check_index(first)
            self._check_index(first + count - 1)
        self._digests[first * DIGEST_SIZE : (first + count) * DIGEST_SIZE] = digests

    def digests(self) -> bytes:
        """All digests, concatenated (a copy)."""
        return bytes(self._digests)

    def copy(self) -> Manifest:
        return Manifest(self.block_size, self.size, self._digests)

    def differing_blocks(self, other: Manifest) -> list[int]:
        """Indices of the blocks whose digests differ from `other`'s (same geometry)."""
        if (self.block_size, self.size) != (other.block_size, other.size):
            raise InvalidArgument(
                "manifest",
                f"cannot compare {self.block_size}/{self.size} with "
                f"{other.block_size}/{other.size} (block size/size)",
            )
        if self._digests == other._digests:
            return []
        mine, theirs = memoryview(self._digests), memoryview(other._digests)
        return [
            index
            for index in range(self.block_count)
            if mine[index * DIGEST_SIZE : (index + 1) * DIGEST_SIZE]
            != theirs[index * DIGEST_SIZE : (index + 1) * DIGEST_SIZE]
        ]

    def header(self) -> bytes:
        return f"{MAGIC} {VERSION} {ALGORITHM} {self.block_size} {self.size}\n".encode("ascii")

    def write(self, path: Path) -> None:
        """Write the manifest to `path` (created or truncated) and fsync it."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            _write_all(fd, self.header())
            _write_all(fd, self._digests)
            os.fsync(fd)
        finally:
            os.close(fd)

    @classmethod
    def read(cls, path: Path) -> Manifest:
        """Read a manifest; DataLoss if its header or length is wrong."""
        data = Path(path).read_bytes()
        block_size, size, start = _checked_header(path, data[:_MAX_HEADER], len(data))
        return cls(block_size, size, data[start:])

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Manifest):
            return NotImplemented
        return (self.block_size, self.size, self._digests) == (
            other.block_size,
            other.size,
            other._digests,
        )

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        return f"Manifest(block_size={self.block_size}, size={self.size})"

    def _check_index(self, index: int) -> None:
        if not 0 <= index < self.block_count:
            raise IndexError(f"block {index} is outside 0..{self.block_count - 1}")


def _zero_digests(block_size: int, size: int) -> bytearray:
    full, tail = divmod(size, block_size)
    digests = bytearray(zero_digest(block_size) * full)
    if tail:
        digests += zero_digest(tail)
    return digests


def read_geometry(path: Path) -> tuple[int, int]:
    """(block size, size) of the manifest at `path`, reading only its header: DataLoss
    (naming the file) if the header is wrong or the file does not hold exactly the
    digests the header promises."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        head = os.pread(fd, _MAX_HEADER, 0)
        length = os.fstat(fd).st_size
    finally:
        os.close(fd)
    block_size, size, _ = _checked_header(path, head, length)
    return block_size, size


def _checked_header(path: Path, head: bytes, length: int) -> tuple[int, int, int]:
    """(block size, size, offset of the first digest) of a manifest of `length` bytes
    that starts with `head`."""
    newline = head.find(b"\n")
    if newline < 0:
        raise DataLoss(f"{path}: no manifest header line")
    block_size, size = _parse_header(path, head[:newline])
    digests = length - newline - 1
    expected = block_count(size, block_size) * DIGEST_SIZE
    if digests != expected:
        raise DataLoss(
            f"{path}: {digests} bytes of digests, expected {expected} "
            f"for {size} bytes in blocks of {block_size}"
        )
    return block_size, size, newline + 1


def _parse_header(path: Path, line: bytes) -> tuple[int, int]:
    fields = line.split(b" ")
    if len(fields) != 5 or fields[0] != MAGIC.encode():
        raise DataLoss(f"{path}: not a lifeboat manifest (header {line[:80]!r})")
    if fields[1] != VERSION.encode():
        raise DataLoss(f"{path}: manifest version {fields[1]!r} is not supported")
    if fields[2] != ALGORITHM.encode():
        raise DataLoss(f"{path}: checksum {fields[2]!r} is not supported")
    if not (fields[3].isdigit() and fields[4].isdigit()) or int(fields[3]) == 0:
        raise DataLoss(f"{path}: bad block size or size in header {line[:80]!r}")
    return int(fields[3]), int(fields[4])


def _write_all(fd: int, data: bytes | bytearray) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def digest_file(path: Path, block_size: int, chunk_size: int = READ_CHUNK) -> Manifest:
    """Digest every block of the file (or block device) at `path`.

    Holes are not read: their blocks keep the precomputed digest of zeros. Data is read
    in chunks of about `chunk_size` bytes into one buffer and hashed slice by slice.
    """
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = _file_size(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
        manifest = Manifest(block_size, size)
        _digest_data(fd, manifest, max(1, chunk_size // block_size) * block_size)
        return manifest
    finally:
        os.close(fd)


def _file_size(fd: int) -> int:
    info = os.fstat(fd)
    if stat.S_ISBLK(info.st_mode):
        return os.lseek(fd, 0, os.SEEK_END)
    return info.st_size


def _digest_data(fd: int, manifest: Manifest, chunk_size: int) -> None:
    """Digest the blocks that overlap data extents of `fd`; hole blocks stay zero digests."""
    block_size, size = manifest.block_size, manifest.size
    buffer = memoryview(bytearray(chunk_size))
    done = 0  # every block before this offset is digested
    for start, end in data_extents(fd, size):
        start = max(done, start - start % block_size)
        end = min(size, block_count(end, block_size) * block_size)
        for offset in range(start, end, chunk_size):
            length = min(chunk_size, end - offset)
            _read_exactly(fd, buffer[:length], offset)
            _digest_chunk(manifest, buffer[:length], offset // block_size)
        done = max(done, end)


def _read_exactly(fd: int, view: memoryview, offset: int) -> None:
    if read_into(fd, view, offset) < len(view):
        raise FailedPrecondition(f"file shrank while being digested (at byte {offset})")


def _digest_chunk(manifest: Manifest, chunk: memoryview, first_block: int) -> None:
    block_size = manifest.block_size
    digests = manifest._digests
    position = first_block * DIGEST_SIZE
    digest = xxhash.xxh3_128_digest
    for start in range(0, len(chunk), block_size):
        digests[position : position + DIGEST_SIZE] = digest(chunk[start : start + block_size])
        position += DIGEST_SIZE
