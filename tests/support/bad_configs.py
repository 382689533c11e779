"""Ways to spoil a good config file (with a `default` schedule whose `hourly` tag has
`interval: 1h`, and jobs on it). Each spoils the file at `path` and returns the end of
the "<file>: <key>: <problem>" message the loader gives for it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest


def _replace(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, f"{path} has no {old!r}"
    path.write_text(text.replace(old, new))


def not_utf8(path: Path) -> str:
    path.write_bytes(path.read_bytes() + b"# caf\xe9\n")
    return "(file): not UTF-8 text"


def huge_interval(path: Path) -> str:
    _replace(path, "interval: 1h", "interval: 99999999999999d")
    return "schedules.default.hourly.interval: must be between 1s and 100 years"


def fractional_interval(path: Path) -> str:
    _replace(path, "interval: 1h", "interval: 1.5")
    return "schedules.default.hourly.interval: must be a whole number of seconds"


def unknown_schedule(path: Path) -> str:
    _replace(path, "schedule: default", "schedule: nightly")
    return ".schedule: no schedule named 'nightly'"


def missing(path: Path) -> str:
    path.unlink()
    return "(file): No such file or directory"


def directory(path: Path) -> str:
    path.unlink()
    path.mkdir()
    return "(file): Is a directory"


def mend(path: Path) -> None:
    """Make room for a good file again where a spoiler left a directory."""
    if path.is_dir():
        path.rmdir()


Spoiler = Callable[[Path], str]

SPOILERS: tuple[Spoiler, ...] = (
    not_utf8,
    huge_interval,
    fractional_interval,
    unknown_schedule,
    missing,
    directory,
)
BAD_FILES = [pytest.param(spoil, id=spoil.__name__.replace("_", "-")) for spoil in SPOILERS]
