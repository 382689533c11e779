"""Damaging stored images on purpose, for tests that must catch it."""

from __future__ import annotations

from pathlib import Path


def flip_byte(path: Path, offset: int) -> None:
    """Invert every bit of the byte at `offset`: bit rot the checksums must notice."""
    with path.open("r+b") as image:
        image.seek(offset)
        value = image.read(1)[0]
        image.seek(offset)
        image.write(bytes([value ^ 0xFF]))
