"""Retention (backy semantics): which tags expire from which revisions.

Pure functions: no I/O and no clock reads; `now` is always a parameter.

For each tag of the schedule, the revisions carrying it are ranked newest
first. The tag expires from a revision when both hold:

* the revision is not among the newest `keep` revisions carrying the tag, and
* the revision is older than `keep * interval` (``now - timestamp > keep * interval``).

Tags starting with ``manual:`` never expire. Tags outside the schedule are
left alone, so a revision carrying one is never deleted by retention. A
revision left with no tags is deleted, except the job's newest revision, which
retention never touches at all.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from lifeboat.model import Schedule, TagSpec

MANUAL_PREFIX = "manual:"


@dataclass(frozen=True)
class RetainedRevision:
    """What retention needs to know about a revision."""

    id: str
    timestamp: dt.datetime
    tags: frozenset[str]


@dataclass(frozen=True)
class RetentionPlan:
    """Tags to remove per revision id, and the revisions left without tags (oldest first).

    Revisions in `delete` also appear in `remove_tags` when they lost tags now.
    """

    remove_tags: dict[str, frozenset[str]] = field(default_factory=dict)
    delete: list[str] = field(default_factory=list)


def is_manual(tag: str) -> bool:
    """Whether `tag` is a manual tag, which never expires."""
    return tag.startswith(MANUAL_PREFIX)


def _newest_first(revisions: Iterable[RetainedRevision]) -> list[RetainedRevision]:
    return sorted(revisions, key=lambda r: (r.timestamp, r.id), reverse=True)


def _expired(tag: TagSpec, newest_first: Sequence[RetainedRevision], now: dt.datetime) -> list[str]:
    """Ids of the revisions `tag` expires from."""
    if is_manual(tag.name):
        return []
    carriers = [r for r in newest_first if tag.name in r.tags]
    max_age = tag.keep * tag.interval
    return [
        r.id for rank, r in enumerate(carriers) if rank >= tag.keep and now - r.timestamp > max_age
    ]


def expire(
    revisions: Iterable[RetainedRevision], schedule: Schedule, now: dt.datetime
) -> RetentionPlan:
    """Which tags expire from which revisions at `now`, and which revisions to delete."""
    ordered = _newest_first(revisions)
    if not ordered:
        return RetentionPlan()
    newest, older = ordered[0], ordered[1:]
    removed: dict[str, set[str]] = {}
    for tag in schedule.tags:
        for rev_id in _expired(tag, ordered, now):
            if rev_id != newest.id:
                removed.setdefault(rev_id, set()).add(tag.name)
    delete = [r.id for r in reversed(older) if not r.tags - removed.get(r.id, set())]
    return RetentionPlan(
        remove_tags={rev_id: frozenset(tags) for rev_id, tags in removed.items()},
        delete=delete,
    )
