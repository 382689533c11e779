"""When each tag of a job runs: slots, due tags, the next run and retry backoff.

Pure functions: no I/O and no clock reads; `now` is always a parameter.

A tag's slots are ``EPOCH + (job_offset(job) mod interval) + k * interval``.
Every tag reduces the same offset modulo its own interval, so when one interval
divides another (hourly and daily, daily and weekly) every slot of the longer
tag is also a slot of the shorter one, and tags whose slots coincide run as one
backup carrying all of them.

When a tag is due (see `due_tags`):

* A job that was never backed up is due *now* for all its tags: nobody wants
  to wait a week for the first weekly backup.
* A tag is due when the newest revision carrying it is older than the tag's
  latest slot <= now. After downtime that is one catch-up backup covering all
  missed slots, not one backup per missed slot.
* A tag that no revision carries yet, in a job that has been backed up (say,
  a tag just added to the schedule), is measured from the job's newest
  revision: it is due at its first slot after that revision, not immediately.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from lifeboat.model import Schedule, TagSpec

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


@dataclass(frozen=True)
class Plan:
    """The next backup of a job: when, and which tags it carries."""

    time: dt.datetime
    tags: frozenset[str]


def job_offset(job_name: str) -> int:
    """A stable offset in seconds: the first 8 bytes of sha256(job name), big-endian."""
    return int.from_bytes(hashlib.sha256(job_name.encode("utf-8")).digest()[:8], "big")


def _interval_seconds(interval: dt.timedelta) -> int:
    if interval <= dt.timedelta(0) or interval.microseconds:
        raise ValueError(f"interval must be a positive whole number of seconds, not {interval}")
    return interval.days * 86400 + interval.seconds


def slot_phase(job_name: str, interval: dt.timedelta) -> dt.timedelta:
    """The job's offset reduced modulo `interval`: where in each interval its slot falls."""
    return dt.timedelta(seconds=job_offset(job_name) % _interval_seconds(interval))


def previous_slot(job_name: str, tag: TagSpec, at: dt.datetime) -> dt.datetime:
    """The latest slot of `tag` at or before `at` (UTC)."""
    phase = slot_phase(job_name, tag.interval)
    k = (at - EPOCH - phase) // tag.interval
    return EPOCH + phase + k * tag.interval


def next_slot(job_name: str, tag: TagSpec, after: dt.datetime) -> dt.datetime:
    """The first slot of `tag` strictly after `after` (UTC)."""
    return previous_slot(job_name, tag, after) + tag.interval


def _reference_times(
    schedule: Schedule, last_tag_times: Mapping[str, dt.datetime]
) -> dict[str, dt.datetime] | None:
    """Per schedule tag, the time its age is measured from; None if never backed up."""
    if not last_tag_times:
        return None
    newest = max(last_tag_times.values())
    return {tag.name: last_tag_times.get(tag.name, newest) for tag in schedule.tags}


def due_tags(
    job_name: str,
    schedule: Schedule,
    last_tag_times: Mapping[str, dt.datetime],
    now: dt.datetime,
) -> frozenset[str]:
    """The schedule tags a backup started at `now` should carry (empty: nothing due).

    `last_tag_times` maps a tag to the timestamp of the newest revision carrying
    it; it may hold tags outside the schedule (`manual:...`). Empty means the job
    was never backed up, which makes every tag due.
    """
    refs = _reference_times(schedule, last_tag_times)
    if refs is None:
        return frozenset(tag.name for tag in schedule.tags)
    return frozenset(
        tag.name for tag in schedule.tags if refs[tag.name] < previous_slot(job_name, tag, now)
    )


def next_run(
    job_name: str,
    schedule: Schedule,
    last_tag_times: Mapping[str, dt.datetime],
    now: dt.datetime,
) -> Plan:
    """The job's next backup.

    If anything is due, it runs at `now` with every due tag (a tag whose slot
    falls exactly at `now` is due by the same rule, so coinciding tags ride
    along). Otherwise it runs at the earliest next slot of any tag, carrying
    every tag whose next slot is that same instant.
    """
    if not schedule.tags:
        raise ValueError(f"schedule {schedule.name!r} has no tags")
    due = due_tags(job_name, schedule, last_tag_times, now)
    if due:
        return Plan(now, due)
    refs = _reference_times(schedule, last_tag_times) or {}
    upcoming = {
        tag.name: next_slot(job_name, tag, max(now, refs.get(tag.name, now)))
        for tag in schedule.tags
    }
    time = min(upcoming.values())
    return Plan(time, frozenset(name for name, at in upcoming.items() if at == time))


def backoff(
    failures: int,
    base: dt.timedelta = dt.timedelta(minutes=1),
    cap: dt.timedelta = dt.timedelta(hours=1),
) -> dt.timedelta:
    """Delay before retry number `failures`: base * 2^(failures-1), at most `cap`."""
    if failures < 0:
        raise ValueError(f"failures must be >= 0, not {failures}")
    if failures == 0:
        return dt.timedelta(0)
    micro = dt.timedelta(microseconds=1)
    delay = (base // micro) << min(failures - 1, 64)
    return min(cap, dt.timedelta(microseconds=min(delay, cap // micro)))
