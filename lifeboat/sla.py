"""Whether a job is within its SLA, in Nagios terms.

Pure functions: no I/O and no clock reads; `now` is always a parameter.

`assess` applies these rules in order; the first that matches decides:

1. Host unreachable, no data about the host, or data older than `stale_after`
   ⇒ UNKNOWN (never OK: we cannot tell).
2. Never backed up (no good revision): OK "waiting for first backup" until the
   first slot of the smallest-interval tag after `known_since`, plus the SLA
   window (rule 4 still applies); CRITICAL "never backed up" after that.
3. Last good revision older than the window (``sla_factor * smallest
   interval``) ⇒ CRITICAL "last good 2d3h ago". A running backup does not
   hide this.
4. Newest revision distrusted, verification failed, a damaged revision (its
   files cannot be read or do not agree), a running restore's ETA or the
   predicted restore time beyond `restore_within` ⇒ WARNING.
5. Otherwise OK.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

from lifeboat.model import Schedule
from lifeboat.schedule import next_slot


class SlaState(enum.Enum):
    """Nagios states; the value is the plugin exit code."""

    OK = 0
    WARNING = 1
    CRITICAL = 2
    UNKNOWN = 3

    @property
    def exit_code(self) -> int:
        return int(self.value)


# Aggregation order, best to worst: CRITICAL beats WARNING beats UNKNOWN beats OK
# (the usual Nagios convention: a known problem outranks an unknown state).
_SEVERITY = {
    SlaState.OK: 0,
    SlaState.UNKNOWN: 1,
    SlaState.WARNING: 2,
    SlaState.CRITICAL: 3,
}


def worst(states: Iterable[SlaState]) -> SlaState:
    """The aggregate of several states (OK for none): CRITICAL > WARNING > UNKNOWN > OK."""
    return max(states, key=_SEVERITY.__getitem__, default=SlaState.OK)


class Damage(NamedTuple):
    """A damaged revision of the job and why (one line naming the file)."""

    revision_id: str
    reason: str


@dataclass(frozen=True, kw_only=True)
class JobFacts:
    """What the monitor knows about one job.

    `known_since`: when the job was first seen (config or monitor).
    `last_good_time`: timestamp of the newest good revision; None if there is none.
    `data_age`: age of the data we have about the host; None if we have none.
    `damaged_revisions`: the job's damaged revisions, oldest first.
    """

    schedule: Schedule
    known_since: dt.datetime
    data_age: dt.timedelta | None
    sla_factor: float = 1.5
    restore_within: dt.timedelta | None = None
    last_good_time: dt.datetime | None = None
    newest_distrusted: bool = False
    verification_failed: bool = False
    host_reachable: bool = True
    running_restore_eta: dt.timedelta | None = None
    predicted_restore: dt.timedelta | None = None
    damaged_revisions: tuple[Damage, ...] = ()


@dataclass(frozen=True)
class SlaVerdict:
    state: SlaState
    reason: str
    window: dt.timedelta
    last_good_age: dt.timedelta | None


def format_age(age: dt.timedelta) -> str:
    """A compact age, truncated: "45s", "12m", "3h05m", "2d3h"."""
    if age < dt.timedelta(0):
        return "-" + format_age(-age)
    seconds = int(age.total_seconds())
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m"
    return f"{secs}s"


def sla_window(facts: JobFacts) -> dt.timedelta:
    """How old the newest good revision may be: sla_factor * the smallest interval."""
    return facts.sla_factor * facts.schedule.smallest_interval()


def first_backup_deadline(job_name: str, facts: JobFacts) -> dt.datetime:
    """Until when a job that was never backed up is still OK."""
    tag = min(facts.schedule.tags, key=lambda t: t.interval)
    return next_slot(job_name, tag, facts.known_since) + sla_window(facts)


def _unknown_reason(facts: JobFacts, stale_after: dt.timedelta) -> str | None:
    if not facts.host_reachable:
        return "host unreachable"
    if facts.data_age is None:
        return "no data about the host"
    if facts.data_age > stale_after:
        return f"data is {format_age(facts.data_age)} old"
    return None


def _warnings(facts: JobFacts) -> list[str]:
    found: list[str] = []
    if facts.newest_distrusted:
        found.append("newest revision distrusted")
    if facts.verification_failed:
        found.append("verification failed")
    if facts.damaged_revisions:
        first, *more = facts.damaged_revisions
        others = f" (and {len(more)} more damaged revisions)" if more else ""
        found.append(f"revision {first.revision_id} damaged: {first.reason}{others}")
    limit = facts.restore_within
    if limit is not None:
        eta, predicted = facts.running_restore_eta, facts.predicted_restore
        if eta is not None and eta > limit:
            found.append(f"running restore ETA {format_age(eta)} > {format_age(limit)}")
        if predicted is not None and predicted > limit:
            found.append(f"predicted restore {format_age(predicted)} > {format_age(limit)}")
    return found


def assess(
    job_name: str, facts: JobFacts, now: dt.datetime, stale_after: dt.timedelta
) -> SlaVerdict:
    """The job's SLA state at `now` (rules in the module docstring)."""
    window = sla_window(facts)
    age = None if facts.last_good_time is None else now - facts.last_good_time

    def verdict(state: SlaState, reason: str) -> SlaVerdict:
        return SlaVerdict(state, reason, window, age)

    unknown = _unknown_reason(facts, stale_after)
    if unknown is not None:
        return verdict(SlaState.UNKNOWN, unknown)
    if age is None:
        if now > first_backup_deadline(job_name, facts):
            return verdict(SlaState.CRITICAL, "never backed up")
        ok_reason = "waiting for first backup"
    elif age > window:
        return verdict(
            SlaState.CRITICAL, f"last good {format_age(age)} ago (window {format_age(window)})"
        )
    else:
        ok_reason = f"last good {format_age(age)} ago"
    warnings = _warnings(facts)
    if warnings:
        return verdict(SlaState.WARNING, "; ".join(warnings))
    return verdict(SlaState.OK, ok_reason)
