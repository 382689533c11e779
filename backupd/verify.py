"""Verification: a random sample of a new revision against the source, and a stored
revision against its own manifest (bit rot)."""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import xxhash

from backupd.sources.base import Snapshot
from lifeboat import clock
from lifeboat.manifest import Manifest

WINDOW_BLOCKS = 64
MAX_REPORTED_MISMATCHES = 100


@dataclass(frozen=True)
class VerifyLimits:
    # One twentieth per backup: twenty backups cover the image on average.
    fraction: float = 0.05
    time_limit: float = 600.0


def sample_windows(block_count: int, fraction: float, rng: random.Random) -> list[tuple[int, int]]:
    """Random windows (first block, count) of up to WINDOW_BLOCKS blocks covering
    about `fraction` of the image: contiguous windows keep reads large."""
    if block_count == 0 or fraction <= 0:
        return []
    wanted = min(block_count, max(1, round(block_count * fraction)))
    window = min(WINDOW_BLOCKS, wanted)
    slots = -(-block_count // window)
    chosen = sorted(rng.sample(range(slots), -(-wanted // window)))
    return [(slot * window, min(window, block_count - slot * window)) for slot in chosen]


def _read(fd: int, offset: int, length: int) -> bytes:
    data = os.pread(fd, length, offset)
    while len(data) < length:
        more = os.pread(fd, length - len(data), offset + len(data))
        if not more:
            break
        data += more
    return data


def _compare_window(
    first: int, count: int, manifest: Manifest, stored: bytes, reference: bytes | None
) -> list[int]:
    """Offsets of blocks in the window whose stored bytes disagree with the manifest or the source."""
    bs = manifest.block_size
    bad = []
    for index in range(first, first + count):
        lo = (index - first) * bs
        block = stored[lo : lo + manifest.block_length(index)]
        if xxhash.xxh3_128_digest(block) != manifest.digest(index) or (
            reference is not None and reference[lo : lo + len(block)] != block
        ):
            bad.append(index * bs)
    return bad


def _verify(
    manifest: Manifest,
    fd: int,
    windows: list[tuple[int, int]],
    read_reference: Callable[[int, int], bytes] | None,
    limits: VerifyLimits,
    check_cancelled: Callable[[], None] = lambda: None,
    on_window: Callable[[int], None] = lambda end: None,
) -> dict[str, Any]:
    deadline = time.monotonic() + limits.time_limit
    checked, mismatches, partial = 0, [], False
    for first, count in windows:
        if time.monotonic() > deadline:
            partial = True
            break
        check_cancelled()
        offset = first * manifest.block_size
        length = min(count * manifest.block_size, manifest.size - offset)
        reference = read_reference(offset, length) if read_reference else None
        mismatches += _compare_window(first, count, manifest, _read(fd, offset, length), reference)
        checked += count
        on_window(offset + length)
    state = "failed" if mismatches else "partial" if partial else "passed"
    return {
        "state": state,
        "against": "source" if read_reference else "manifest",
        "blocks-checked": checked,
        "blocks-total": manifest.block_count,
        "mismatched-offsets": mismatches[:MAX_REPORTED_MISMATCHES],
        "time": clock.now(),
    }


def verify_against_source(
    snapshot: Snapshot, fd: int, manifest: Manifest, limits: VerifyLimits
) -> dict[str, Any]:
    """Compare a random sample of the written image (fd) with the snapshot and the manifest."""
    windows = sample_windows(manifest.block_count, limits.fraction, random.Random())

    def read_source(offset: int, length: int) -> bytes:
        buffer = bytearray(length)
        snapshot.read_into(offset, memoryview(buffer))
        return bytes(buffer)

    return _verify(manifest, fd, windows, read_source, limits)


def verify_against_manifest(
    fd: int,
    manifest: Manifest,
    limits: VerifyLimits,
    progress: Callable[[int, int], None],
    check_cancelled: Callable[[], None],
) -> dict[str, Any]:
    """Read every block of a stored revision and compare it with its manifest."""
    windows = [
        (first, min(WINDOW_BLOCKS * 16, manifest.block_count - first))
        for first in range(0, manifest.block_count, WINDOW_BLOCKS * 16)
    ]

    result = _verify(
        manifest,
        fd,
        windows,
        None,
        limits,
        check_cancelled,
        on_window=lambda end: progress(end, manifest.size),
    )
    progress(manifest.size, manifest.size)
    return result
