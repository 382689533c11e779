"""The `.sums` manifest: format, digests, and digesting files with holes."""

from __future__ import annotations

import os
import random
from pathlib import Path

import pytest
import xxhash

from lifeboat.errors import DataLoss, InvalidArgument
from lifeboat.manifest import (
    DEFAULT_BLOCK_SIZE,
    DIGEST_SIZE,
    Manifest,
    block_digest,
    digest_file,
    zero_digest,
)

KiB = 1024


def naive_manifest(data: bytes, block_size: int) -> Manifest:
    manifest = Manifest(block_size, len(data))
    for index in range(manifest.block_count):
        chunk = data[index * block_size : (index + 1) * block_size]
        manifest.set_digest(index, xxhash.xxh3_128_intdigest(chunk).to_bytes(16, "big"))
    return manifest


def test_block_digest_is_big_endian_xxh3_128() -> None:
    data = b"lifeboat" * 2048
    assert block_digest(data) == xxhash.xxh3_128_intdigest(data).to_bytes(16, "big")
    assert block_digest(memoryview(data)[:100]) == block_digest(data[:100])


def test_zero_digest_is_the_digest_of_zeros() -> None:
    assert zero_digest(DEFAULT_BLOCK_SIZE) == block_digest(bytes(DEFAULT_BLOCK_SIZE))
    assert zero_digest(7) == block_digest(bytes(7))


@pytest.mark.parametrize(
    ("size", "blocks"), [(0, 0), (1, 1), (16383, 1), (16384, 1), (16385, 2), (1 << 32, 262144)]
)
def test_block_count(size: int, blocks: int) -> None:
    assert Manifest(16384, size).block_count == blocks


def test_a_new_manifest_is_all_holes_with_a_short_last_block() -> None:
    manifest = Manifest(4 * KiB, 10 * KiB)
    assert manifest.digest(0) == manifest.digest(1) == zero_digest(4 * KiB)
    assert manifest.digest(2) == zero_digest(2 * KiB)
    assert [manifest.block_length(i) for i in range(3)] == [4 * KiB, 4 * KiB, 2 * KiB]


def test_set_digest_and_bounds() -> None:
    manifest = Manifest(4 * KiB, 8 * KiB)
    manifest.set_digest(1, b"\x01" * DIGEST_SIZE)
    assert manifest.digest(1) == b"\x01" * DIGEST_SIZE
    assert manifest.digest(0) == zero_digest(4 * KiB)
    with pytest.raises(InvalidArgument):
        manifest.set_digest(0, b"short")
    with pytest.raises(IndexError):
        manifest.digest(2)
    with pytest.raises(IndexError):
        manifest.set_digest(-1, b"\x00" * DIGEST_SIZE)


def test_constructor_checks_geometry() -> None:
    with pytest.raises(InvalidArgument):
        Manifest(0, 10)
    with pytest.raises(InvalidArgument):
        Manifest(4096, -1)
    with pytest.raises(InvalidArgument):
        Manifest(4096, 8192, b"\x00" * 16)


def test_write_read_round_trip_and_exact_bytes(tmp_path: Path) -> None:
    manifest = Manifest(16384, 40000)
    manifest.set_digest(1, bytes(range(16)))
    path = tmp_path / "r.sums"
    manifest.write(path)
    raw = path.read_bytes()
    assert raw.startswith(b"lifeboat-sums 1 xxh3-128 16384 40000\n")
    assert len(raw) == len(b"lifeboat-sums 1 xxh3-128 16384 40000\n") + 3 * 16
    assert raw[-32:-16] == bytes(range(16))
    assert Manifest.read(path) == manifest


def test_copy_and_differing_blocks() -> None:
    manifest = Manifest(4096, 5 * 4096)
    other = manifest.copy()
    assert other == manifest and other is not manifest
    other.set_digest(3, b"\xaa" * 16)
    other.set_digest(0, b"\xbb" * 16)
    assert manifest.differing_blocks(other) == [0, 3]
    assert manifest.differing_blocks(manifest.copy()) == []
    with pytest.raises(InvalidArgument):
        manifest.differing_blocks(Manifest(4096, 4096))


HEADER = b"lifeboat-sums 1 xxh3-128 4096 8192\n"
BROKEN = {
    "empty": b"",
    "no newline": b"lifeboat-sums 1 xxh3-128 4096 8192",
    "bad magic": HEADER.replace(b"lifeboat-sums", b"backy-sums") + bytes(32),
    "bad version": HEADER.replace(b" 1 ", b" 2 ") + bytes(32),
    "bad algorithm": HEADER.replace(b"xxh3-128", b"sha256") + bytes(32),
    "zero block size": HEADER.replace(b"4096", b"0") + bytes(0),
    "negative size": HEADER.replace(b"8192", b"-1") + bytes(0),
    "not a number": HEADER.replace(b"8192", b"lots") + bytes(32),
    "too few fields": b"lifeboat-sums 1 xxh3-128 4096\n" + bytes(32),
    "truncated": HEADER + bytes(31),
    "too long": HEADER + bytes(33),
    "binary garbage": os.urandom(4096).replace(b"\n", b"x"),
}


@pytest.mark.parametrize("case", BROKEN)
def test_read_rejects_a_broken_manifest(tmp_path: Path, case: str) -> None:
    path = tmp_path / "broken.sums"
    path.write_bytes(BROKEN[case])
    with pytest.raises(DataLoss, match=str(path)):
        Manifest.read(path)


def write_pieces(path: Path, size: int, pieces: dict[int, bytes]) -> bytes:
    """Write a sparse file; return its full content."""
    content = bytearray(size)
    with open(path, "wb") as file:
        file.truncate(size)
        for offset, data in pieces.items():
            file.seek(offset)
            file.write(data)
            content[offset : offset + len(data)] = data
    return bytes(content)


LAYOUTS = {
    "empty": (0, {}),
    "one short block": (1000, {0: b"q" * 1000}),
    "dense, short tail": (200 * KiB + 3, {0: random.Random(1).randbytes(200 * KiB + 3)}),
    "holes, unaligned data": (
        1024 * KiB + 17,
        {4 * KiB: b"a" * 5000, 300 * KiB: b"b" * 70000, 1024 * KiB: b"c" * 17},
    ),
    "all hole": (512 * KiB, {}),
    "data in the last block only": (96 * KiB + 1, {96 * KiB: b"z"}),
}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("block_size", [4 * KiB, 16 * KiB, 64 * KiB])
@pytest.mark.parametrize("chunk_size", [1, 48 * KiB, 1 << 20])
def test_digest_file_matches_per_block_digests(
    tmp_path: Path, layout: str, block_size: int, chunk_size: int
) -> None:
    size, pieces = LAYOUTS[layout]
    content = write_pieces(tmp_path / "image", size, pieces)
    manifest = digest_file(tmp_path / "image", block_size, chunk_size=chunk_size)
    assert manifest == naive_manifest(content, block_size)


def test_digest_file_sees_zeros_written_as_data(tmp_path: Path) -> None:
    content = write_pieces(tmp_path / "image", 64 * KiB, {0: bytes(64 * KiB)})
    assert digest_file(tmp_path / "image", 16 * KiB) == Manifest(16 * KiB, 64 * KiB)
    assert Manifest(16 * KiB, 64 * KiB) == naive_manifest(content, 16 * KiB)


def test_digest_file_of_a_large_sparse_file_reads_only_data(tmp_path: Path) -> None:
    size = 1 << 40  # 1 TiB of holes: only a hole-skipping digest finishes quickly
    path = tmp_path / "huge"
    with open(path, "wb") as file:
        file.truncate(size)
        file.seek(size // 2)
        file.write(b"middle")
    manifest = digest_file(path, 1 << 20)
    assert manifest.block_count == 1 << 20
    middle = (size // 2) >> 20
    assert manifest.digest(middle) == block_digest(b"middle" + bytes((1 << 20) - 6))
    assert manifest.differing_blocks(Manifest(1 << 20, size)) == [middle]
