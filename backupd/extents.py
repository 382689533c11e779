"""Pure arithmetic on byte extents (offset, length) and block alignment."""

from __future__ import annotations

from collections.abc import Iterable

Extent = tuple[int, int]


def merge(extents: Iterable[Extent], gap: int = 0) -> list[Extent]:
    """Sorted, non-overlapping, non-adjacent extents covering the same bytes; with `gap`,
    extents closer than that are joined across the bytes between them."""
    merged: list[list[int]] = []
    for offset, length in sorted(e for e in extents if e[1] > 0):
        if merged and offset <= merged[-1][0] + merged[-1][1] + gap:
            end = max(merged[-1][0] + merged[-1][1], offset + length)
            merged[-1][1] = end - merged[-1][0]
        else:
            merged.append([offset, length])
    return [(o, n) for o, n in merged]


def align(extents: Iterable[Extent], block_size: int, size: int) -> list[Extent]:
    """Grow each extent to whole blocks (the last block may end at `size`), then merge."""
    aligned = []
    for offset, length in extents:
        start = offset - offset % block_size
        end = min(-(-(offset + length) // block_size) * block_size, size)
        if end > start:
            aligned.append((start, end - start))
    return merge(aligned)


def clip(extents: Iterable[Extent], start: int, end: int) -> list[Extent]:
    """The parts of `extents` that lie within [start, end)."""
    clipped = []
    for offset, length in extents:
        lo, hi = max(offset, start), min(offset + length, end)
        if hi > lo:
            clipped.append((lo, hi - lo))
    return clipped


def split(extents: Iterable[Extent], chunk: int) -> list[Extent]:
    """Cut extents into pieces of at most `chunk` bytes."""
    pieces = []
    for offset, length in extents:
        for piece in range(offset, offset + length, chunk):
            pieces.append((piece, min(chunk, offset + length - piece)))
    return pieces


def total(extents: Iterable[Extent]) -> int:
    return sum(length for _, length in extents)
