"""Verification: a random sample of a new revision against the source, and a stored
revision against its own manifest (bit rot).

The sample of a backup is checked where it is cheapest: blocks that the backup read
anyway are compared with the new revision right after they were written; the rest of
the sample, which the backup does not write, is read from the source by a helper thread
while the copy runs.
"""

from __future__ import annotations

import bisect
import concurrent.futures
import contextlib
import dataclasses
import os
import random
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import xxhash

from backupd.extents import Extent
from backupd.sources.base import Snapshot
from lifeboat import clock
from lifeboat.blockio import read_into
from lifeboat.manifest import Manifest
from lifeboat.revision import Against, Verification, VerificationState

WINDOW_BLOCKS = 64
# How far the stored copy of the sample is read into the page cache ahead of the
# comparisons, in ranges of at most WINDOW_BLOCKS blocks.
PREFETCH_AHEAD = 128
MAX_REPORTED_MISMATCHES = 100
MANIFEST_WINDOW_BLOCKS = 1024


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


def block_runs(indices: Iterable[int]) -> list[tuple[int, int]]:
    """Consecutive block indices grouped as (first, count)."""
    runs: list[tuple[int, int]] = []
    for index in indices:
        if runs and runs[-1][0] + runs[-1][1] == index:
            runs[-1] = (runs[-1][0], runs[-1][1] + 1)
        else:
            runs.append((index, 1))
    return runs


def block_runs_of(runs: Iterable[tuple[int, int]]) -> list[tuple[int, int]]:
    """Runs (first, count) sorted and joined where they touch."""
    joined: list[tuple[int, int]] = []
    for first, count in sorted(runs):
        if joined and joined[-1][0] + joined[-1][1] == first:
            joined[-1] = (joined[-1][0], joined[-1][1] + count)
        else:
            joined.append((first, count))
    return joined


def _read(fd: int, offset: int, length: int) -> bytearray:
    buffer = bytearray(length)
    done = read_into(fd, memoryview(buffer), offset)
    del buffer[done:]
    return buffer


class Comparison:
    """Compares runs of stored blocks with the manifest and, where given, the source."""

    def __init__(self, manifest: Manifest, fd: int, limits: VerifyLimits) -> None:
        self.manifest = manifest
        self.fd = fd
        self.deadline = time.monotonic() + limits.time_limit
        self.checked = 0
        self.checked_runs: list[tuple[int, int]] = []
        self.mismatches: list[int] = []
        self.partial = False
        self._record = threading.Lock()  # the copy and the helper thread both compare

    def expired(self) -> bool:
        if time.monotonic() > self.deadline:
            self.partial = True
        return self.partial

    def byte_range(self, first: int, count: int) -> Extent:
        offset = first * self.manifest.block_size
        return offset, min(count * self.manifest.block_size, self.manifest.size - offset)

    def compare(
        self, first: int, count: int, source: memoryview | None, digests_from_source: bool = False
    ) -> None:
        """Check blocks [first, first+count); `source` holds the source's bytes for them.

        With `digests_from_source` the manifest entries were just computed from `source`, so
        stored bytes equal to the source match the manifest too: one comparison does.
        """
        offset, length = self.byte_range(first, count)
        stored = _read(self.fd, offset, length)
        with self._record:
            self.checked += count
            self.checked_runs.append((first, count))
        # bytearray == memoryview is one memcmp (memoryview == bytearray would compare
        # item by item).
        same_as_source = source is None or stored == source[:length]
        if same_as_source and digests_from_source:
            return
        if same_as_source and self._digests(first, count, stored) == self.manifest.digest_range(
            first, count
        ):
            return
        bad = self._mismatching_blocks(first, count, stored, source)
        with self._record:
            self.mismatches += bad

    def _digests(self, first: int, count: int, stored: bytearray) -> bytes:
        view, bs = memoryview(stored), self.manifest.block_size
        return b"".join(xxhash.xxh3_128_digest(view[i * bs : (i + 1) * bs]) for i in range(count))

    def _mismatching_blocks(
        self, first: int, count: int, stored: bytearray, source: memoryview | None
    ) -> list[int]:
        bs = self.manifest.block_size
        bad = []
        for index in range(first, first + count):
            lo = (index - first) * bs
            block = stored[lo : lo + self.manifest.block_length(index)]
            digest_ok = xxhash.xxh3_128_digest(block) == self.manifest.digest(index)
            if not digest_ok or (source is not None and source[lo : lo + len(block)] != block):
                bad.append(index * bs)
        return bad

    def result(self, against: Against) -> Verification:
        return Verification(
            state=self._state(),
            against=against,
            time=clock.now(),
            blocks_checked=self.checked,
            blocks_total=self.manifest.block_count,
            checked_runs=tuple(block_runs_of(self.checked_runs)),
            mismatched_offsets=tuple(self.mismatches[:MAX_REPORTED_MISMATCHES]),
        )

    def _state(self) -> VerificationState:
        if self.mismatches:
            return VerificationState.FAILED
        return VerificationState.PARTIAL if self.partial else VerificationState.PASSED


class Prefetcher:
    """Has `background` read ranges of a file into the page cache, PREFETCH_AHEAD ranges
    ahead of the caller's position. Comparisons then copy from memory instead of holding
    the file's lock while the disk reads, which would stall the copy's writes; blocks
    written meanwhile still read as written. For one thread."""

    def __init__(
        self, fd: int, ranges: list[Extent], background: concurrent.futures.Executor
    ) -> None:
        self.fd = fd
        self.ranges = ranges
        self.starts = [start for start, _ in ranges]
        self.background = background
        self.submitted = 0

    def advance(self, offset: int) -> None:
        wanted = bisect.bisect_right(self.starts, offset) + PREFETCH_AHEAD
        if wanted > self.submitted:
            self.background.submit(_will_need, self.fd, self.ranges[self.submitted : wanted])
            self.submitted = wanted


def _will_need(fd: int, ranges: list[Extent]) -> None:
    for start, size in ranges:
        os.posix_fadvise(fd, start, size, os.POSIX_FADV_WILLNEED)


class SampleVerifier:
    """Checks a random sample of a new revision against its source during and after the copy.

    `background` runs the prefetching of the sample's stored copy.
    """

    def __init__(
        self,
        manifest: Manifest,
        fd: int,
        limits: VerifyLimits,
        background: concurrent.futures.Executor,
        rng: random.Random | None = None,
    ) -> None:
        windows = sample_windows(manifest.block_count, limits.fraction, rng or random.Random())
        self.sampled = [i for first, count in windows for i in range(first, first + count)]
        self.verified = bytearray(len(self.sampled))
        self.comparison = Comparison(manifest, fd, limits)
        self.block_size = manifest.block_size
        self.background = background
        self._windows = [self.comparison.byte_range(first, count) for first, count in windows]

    def _sampled_within(self, offset: int, length: int) -> tuple[int, int]:
        """Positions [lo, hi) in `sampled` of the blocks within the byte range."""
        first = offset // self.block_size
        end = first + -(-length // self.block_size)
        return bisect.bisect_left(self.sampled, first), bisect.bisect_left(self.sampled, end)

    def start_prefetch(self) -> None:
        """Start reading the first windows of the sample's stored copy into the page cache
        while the source is still being asked what changed."""
        Prefetcher(self.comparison.fd, self._windows, self.background).advance(0)

    def prefetcher(self, pieces: list[Extent]) -> Prefetcher:
        """A prefetcher for the stored copy of the sampled blocks within `pieces`."""
        ranges = []
        for offset, length in pieces:
            lo, hi = self._sampled_within(offset, length)
            ranges += [self.comparison.byte_range(f, c) for f, c in block_runs(self.sampled[lo:hi])]
        return Prefetcher(self.comparison.fd, ranges, self.background)

    def check_chunk(self, offset: int, data: memoryview, written: bool = True) -> None:
        """`data` holds the source's bytes at block-aligned `offset`. `written`: the copy just
        brought these blocks (and their manifest entries) up to date from this very data."""
        first = offset // self.block_size
        lo, hi = self._sampled_within(offset, len(data))
        if lo == hi or self.comparison.expired():
            return
        for run_first, count in block_runs(self.sampled[lo:hi]):
            start = (run_first - first) * self.block_size
            source = data[start : start + count * self.block_size]
            self.comparison.compare(run_first, count, source, digests_from_source=written)
        self.verified[lo:hi] = b"\x01" * (hi - lo)

    @contextlib.contextmanager
    def checking_aside(
        self, snapshot: Snapshot, pieces: list[Extent], check_cancelled: Callable[[], None]
    ) -> Iterator[None]:
        """While the body runs, a helper thread checks the sampled blocks within `pieces`
        (ones this backup does not write) with a stream of source reads of its own."""
        stop = threading.Event()
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="verify") as helper:
            checked = helper.submit(self._check_pieces, snapshot, pieces, stop, check_cancelled)
            try:
                yield
            except BaseException:
                stop.set()
                raise
            checked.result()

    def _check_pieces(
        self,
        snapshot: Snapshot,
        pieces: list[Extent],
        stop: threading.Event,
        check_cancelled: Callable[[], None],
    ) -> None:
        prefetcher = Prefetcher(self.comparison.fd, pieces, self.background)
        with snapshot.reading(pieces) as reads:
            for offset, source in reads:
                if stop.is_set() or self.comparison.expired():
                    return
                check_cancelled()
                prefetcher.advance(offset)
                self.check_chunk(offset, source, written=False)

    def _unverified_runs(self) -> list[tuple[int, int]]:
        return block_runs(
            i for i, done in zip(self.sampled, self.verified, strict=True) if not done
        )

    def unseen(self, pieces: list[Extent]) -> list[Extent]:
        """Byte ranges of the sample that lie outside `pieces` (sorted, block-aligned): what a
        copy of only those pieces must also read from the source to verify its sample."""
        starts = [offset for offset, _ in pieces]
        outside = []
        for index in self.sampled:
            at = index * self.block_size
            position = bisect.bisect_right(starts, at) - 1
            if position < 0 or at >= pieces[position][0] + pieces[position][1]:
                outside.append(index)
        return [self.comparison.byte_range(first, count) for first, count in block_runs(outside)]

    def finish(self, snapshot: Snapshot, check_cancelled: Callable[[], None]) -> Verification:
        """Read the part of the sample the copy did not see from the source and check it."""
        remaining = self._unverified_runs()
        with snapshot.reading(self.comparison.byte_range(f, c) for f, c in remaining) as reads:
            for (first, count), (_, source) in zip(remaining, reads, strict=False):
                if self.comparison.expired():
                    break
                check_cancelled()
                self.comparison.compare(first, count, source)
        result = self.comparison.result(Against.SOURCE)
        if not self.sampled:  # verify-fraction 0: nothing was meant to be compared
            return dataclasses.replace(result, state=VerificationState.SKIPPED)
        return result


def verify_against_manifest(
    fd: int,
    manifest: Manifest,
    limits: VerifyLimits,
    progress: Callable[[int, int], None],
    check_cancelled: Callable[[], None],
) -> Verification:
    """Read every block of a stored revision and compare it with its manifest."""
    comparison = Comparison(manifest, fd, limits)
    for first in range(0, manifest.block_count, MANIFEST_WINDOW_BLOCKS):
        if comparison.expired():
            break
        check_cancelled()
        count = min(MANIFEST_WINDOW_BLOCKS, manifest.block_count - first)
        comparison.compare(first, count, None)
        offset, length = comparison.byte_range(first, count)
        progress(offset + length, manifest.size)
    return comparison.result(Against.MANIFEST)
