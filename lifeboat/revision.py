"""The words of a revision's `.rev`: its trust, its verification, and the format version.

This is the one place that spells them: every other module uses these enums, and
`Verification` is read from and written to YAML here only (the whole `.rev` schema is
in "On-disk format" of ARCHITECTURE.md). Values are the words the YAML holds.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import enum
from typing import Any, TypeVar

from lifeboat import clock
from lifeboat.errors import DataLoss

_Word = TypeVar("_Word", bound=enum.Enum)

FORMAT_VERSION = 1
"""The `version` every writer puts in `.rev`; a `.rev` without one is of version 1."""


class Trust(enum.Enum):
    TRUSTED = "trusted"
    DISTRUSTED = "distrusted"


class VerificationState(enum.Enum):
    PASSED = "passed"
    """Every block of the sample (or of the image, against the manifest) matched."""
    PARTIAL = "partial"
    """The time limit stopped the comparison before it was done; nothing mismatched."""
    FAILED = "failed"
    """A block differed, or the manifest could not be used at all (`problem`)."""
    SKIPPED = "skipped"
    """Nothing was meant to be compared (`verify-fraction: 0`)."""


class Against(enum.Enum):
    """What the stored copy was compared with."""

    SOURCE = "source"
    MANIFEST = "manifest"


def read_version(document: dict[str, Any]) -> int:
    """The format version of a parsed `.rev`; DataLoss naming it if this code cannot read it."""
    version = document.get("version", FORMAT_VERSION)
    if version != FORMAT_VERSION or isinstance(version, bool):
        raise DataLoss(
            f"revision metadata version {version!r} is not supported "
            f"(this lifeboat reads version {FORMAT_VERSION})"
        )
    return FORMAT_VERSION


@dataclasses.dataclass(frozen=True)
class Verification:
    """The last comparison of a revision's stored copy, as `.rev` records it."""

    state: VerificationState
    against: Against
    time: dt.datetime | None = None
    blocks_checked: int = 0
    """How many blocks were compared."""
    blocks_total: int = 0
    """How many blocks the revision has."""
    checked_runs: tuple[tuple[int, int], ...] = ()
    """Which blocks were compared: sorted (first block, count) runs."""
    mismatched_offsets: tuple[int, ...] = ()
    """Byte offsets of the blocks that did not match (the first ones only, if many)."""
    problem: str = ""
    """Why the manifest could not be used at all; empty when it could."""

    @property
    def failed(self) -> bool:
        return self.state is VerificationState.FAILED

    def trust_after(self, trust: Trust) -> Trust:
        """A revision's trust once this verification is recorded: a failure distrusts it."""
        return Trust.DISTRUSTED if self.failed else trust

    def to_yaml(self) -> dict[str, Any]:
        document: dict[str, Any] = {
            "state": self.state.value,
            "against": self.against.value,
            "blocks-checked": self.blocks_checked,
            "blocks-total": self.blocks_total,
            "checked-runs": [list(run) for run in self.checked_runs],
            "mismatched-offsets": list(self.mismatched_offsets),
        }
        if self.problem:
            document["problem"] = self.problem
        if self.time is not None:
            document["time"] = self.time
        return document

    @classmethod
    def from_yaml(cls, document: object) -> Verification:
        """Parse the `verification` mapping of a `.rev`; DataLoss if it is not one."""
        if not isinstance(document, dict):
            raise DataLoss(f"revision metadata: 'verification' must be a mapping: {document!r}")
        # Before `checked-runs` had its name, the runs were written as `checked-blocks`.
        runs = document.get("checked-runs", document.get("checked-blocks", []))
        return cls(
            state=_word(document, "state", VerificationState),
            against=_word(document, "against", Against),
            time=_time(document.get("time")),
            blocks_checked=_count(document, "blocks-checked"),
            blocks_total=_count(document, "blocks-total"),
            checked_runs=_runs(runs),
            mismatched_offsets=_offsets(document.get("mismatched-offsets", [])),
            problem=_problem(document.get("problem", "")),
        )


def manifest_problem(problem: str) -> Verification:
    """The verification of a revision whose manifest cannot be used: failed, nothing
    compared, and why."""
    return Verification(
        VerificationState.FAILED, Against.MANIFEST, time=clock.now(), problem=problem
    )


def parse_trust(value: object) -> Trust:
    return _word({"trust": value}, "trust", Trust)


def _word(document: dict[str, Any], key: str, kind: type[_Word]) -> _Word:
    value = document.get(key)
    try:
        return kind(value)
    except ValueError:
        words = " or ".join(member.value for member in kind)
        raise DataLoss(f"revision metadata: {key!r} must be {words}, not {value!r}") from None


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _count(document: dict[str, Any], key: str) -> int:
    value = document.get(key, 0)
    if not _is_int(value) or value < 0:
        raise DataLoss(f"revision metadata: verification {key!r} must be a count: {value!r}")
    return int(value)


def _runs(value: object) -> tuple[tuple[int, int], ...]:
    if not isinstance(value, list) or not all(
        isinstance(run, list) and len(run) == 2 and all(_is_int(n) for n in run) for run in value
    ):
        raise DataLoss(
            f"revision metadata: 'checked-runs' must be [first block, count] pairs: {value!r}"
        )
    return tuple((first, count) for first, count in value)


def _offsets(value: object) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(_is_int(offset) for offset in value):
        raise DataLoss(f"revision metadata: 'mismatched-offsets' must be offsets: {value!r}")
    return tuple(value)


def _problem(value: object) -> str:
    if not isinstance(value, str):
        raise DataLoss(f"revision metadata: verification 'problem' must be text: {value!r}")
    return value


def parse_time(value: object, key: str) -> dt.datetime:
    """A YAML timestamp (or ISO 8601 text) as a UTC time; DataLoss if it is none."""
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            value = dt.datetime.fromisoformat(value)
    if not isinstance(value, dt.datetime):
        raise DataLoss(f"revision metadata: {key!r} is not a time: {value!r}")
    return utc(value)


def _time(value: object) -> dt.datetime | None:
    return None if value is None else parse_time(value, "verification time")


def utc(timestamp: dt.datetime) -> dt.datetime:
    if timestamp.tzinfo is None:
        return timestamp.replace(tzinfo=dt.UTC)
    return timestamp.astimezone(dt.UTC)
