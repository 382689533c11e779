"""The SLA report and the Nagios answer, computed from a poller snapshot at `now`.

Pure functions: the judgement of each job is `lifeboat.sla.assess`; this module
gathers its facts from the daemons' answers and words the result.

Beyond `assess`, two rules live here because they concern the monitor's view
of a host rather than a job's revisions:

* Data older than `STALE_POLLS` poll intervals counts as no data (UNKNOWN).
* When a host's restored cannot be polled (or its answer is stale), restores
  of its jobs are in doubt: a job that is otherwise OK becomes WARNING. A
  restored that answers UNIMPLEMENTED for restore estimates just has no
  restore data; that is not a fault.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

from lifeboat.bounds import clip
from lifeboat.errors import NotFound
from lifeboat.model import Job
from lifeboat.sla import JobFacts, SlaState, SlaVerdict, assess, format_age, worst
from monitor.observations import JobObservation, Polled, RestoredObservation
from monitor.poller import FleetObservation, HostData

STALE_POLLS = 3
# At most this many job names per category in the one-line summary.
SUMMARY_NAMES = 10
PLUGIN = "LIFEBOAT"


@dataclass(frozen=True)
class JobReport:
    job: str
    host: str
    state: SlaState
    # The full reason, and the short one used in the Nagios summary line.
    reason: str
    short_reason: str
    window: dt.timedelta
    last_good_time: dt.datetime | None = None
    last_good_age: dt.timedelta | None = None
    next_run: dt.datetime | None = None
    predicted_restore: dt.timedelta | None = None
    restore_within: dt.timedelta | None = None
    revision_count: int = 0
    bytes_used: int = 0


@dataclass(frozen=True)
class HostReport:
    host: str
    reachable: bool
    error: str = ""
    data_age: dt.timedelta | None = None
    running_backups: int = 0
    running_restores: int = 0
    free_bytes: int = 0
    total_bytes: int = 0


@dataclass(frozen=True)
class SchedulerReport:
    address: str
    reachable: bool
    error: str = ""
    data_age: dt.timedelta | None = None


@dataclass(frozen=True)
class SlaReport:
    generate_time: dt.datetime
    jobs: tuple[JobReport, ...]
    hosts: tuple[HostReport, ...]
    scheduler: SchedulerReport


@dataclass(frozen=True)
class CheckResult:
    state: SlaState
    summary: str
    perfdata: str

    def line(self) -> str:
        """The plugin output: summary, then perfdata after a '|'."""
        return f"{self.summary} | {self.perfdata}" if self.perfdata else self.summary


def stale_after(snapshot: FleetObservation) -> dt.timedelta:
    return STALE_POLLS * snapshot.poll_interval


# -- jobs ----------------------------------------------------------------------------------


def _fresh_restored(
    polled: Polled[RestoredObservation], now: dt.datetime, limit: dt.timedelta
) -> RestoredObservation | None:
    age = polled.age(now)
    if not polled.reachable or age is None or age > limit:
        return None
    return polled.answer


def restored_problem(
    host: str, polled: Polled[RestoredObservation], now: dt.datetime, limit: dt.timedelta
) -> str | None:
    """Why restores on this host are in doubt; None if restored answers (or was not asked yet)."""
    if not polled.polled:
        return None
    if polled.error:
        return f"restored of host {host} unreachable"
    age = polled.age(now)
    if age is not None and age > limit:
        return f"restored of host {host} data is {format_age(age)} old"
    return None


def job_facts(
    job: Job, known_since: dt.datetime, host: HostData, now: dt.datetime, limit: dt.timedelta
) -> tuple[JobFacts, JobObservation | None]:
    """The facts `assess` needs, and what backupd said about the job (None: no answer)."""
    answer = host.backupd.answer
    seen = None
    if answer is not None:
        # A job backupd does not list has no job directory: it was never backed up.
        seen = answer.jobs.get(job.name, JobObservation(job.name))
    restored = _fresh_restored(host.restored, now, limit)
    running = [r for r in restored.running if r.job == job.name] if restored else []
    projected = [d for d in (r.projected_duration() for r in running) if d is not None]
    # The job's restore-time objective; a running restore's own target if the job has none.
    restore_within = job.restore_within or min(
        (r.restore_within for r in running if r.restore_within is not None), default=None
    )
    facts = JobFacts(
        schedule=job.schedule,
        known_since=known_since,
        data_age=host.backupd.age(now),
        sla_factor=job.sla_factor,
        restore_within=restore_within,
        last_good_time=seen.last_good_time if seen else None,
        newest_distrusted=seen.newest_distrusted if seen else False,
        verification_failed=seen.verification_failed if seen else False,
        host_reachable=not host.backupd.error,
        running_restore_eta=max(projected, default=None),
        predicted_restore=restored.predicted.get(job.name) if restored else None,
        damaged_revisions=seen.damaged_revisions if seen else (),
    )
    return facts, seen


def _short_reason(job: Job, verdict: SlaVerdict, host: HostData) -> str:
    if verdict.state is SlaState.CRITICAL:
        if verdict.last_good_age is None:
            return "never"
        return f"last good {format_age(verdict.last_good_age)} ago"
    if verdict.state is SlaState.UNKNOWN:
        if host.backupd.error:
            return f"host {job.host} unreachable"
        if host.backupd.answer is None:
            return f"no data from host {job.host}"
        return f"host {job.host} {verdict.reason}"
    return verdict.reason


def _full_reason(job: Job, verdict: SlaVerdict, host: HostData, seen: JobObservation | None) -> str:
    if verdict.state is SlaState.UNKNOWN:
        if host.backupd.error:
            return f"backupd of host {job.host} unreachable: {host.backupd.error}"
        return verdict.reason
    details = [verdict.reason]
    if seen is not None and seen.backup_running:
        details.append("a backup is running")
    if seen is not None and seen.last_error:
        details.append(f"last error: {seen.last_error}")
    return "; ".join(details)


def _with_restore_doubt(verdict: SlaVerdict, problem: str | None) -> SlaVerdict:
    if problem is None or verdict.state in (SlaState.CRITICAL, SlaState.UNKNOWN):
        return verdict
    if verdict.state is SlaState.OK:
        return replace(verdict, state=SlaState.WARNING, reason=problem)
    return replace(verdict, reason=f"{verdict.reason}; {problem}")


def job_report(job: Job, snapshot: FleetObservation, now: dt.datetime) -> JobReport:
    host = snapshot.hosts[job.host]
    limit = stale_after(snapshot)
    known_since = snapshot.known_since.get(job.name, now)
    facts, seen = job_facts(job, known_since, host, now, limit)
    verdict = assess(job.name, facts, now, limit)
    verdict = _with_restore_doubt(verdict, restored_problem(job.host, host.restored, now, limit))
    scheduler = snapshot.scheduler.answer
    return JobReport(
        job=job.name,
        host=job.host,
        state=verdict.state,
        reason=_full_reason(job, verdict, host, seen),
        short_reason=_short_reason(job, verdict, host),
        window=verdict.window,
        last_good_time=facts.last_good_time,
        last_good_age=verdict.last_good_age,
        next_run=scheduler.next_runs.get(job.name) if scheduler else None,
        predicted_restore=facts.predicted_restore,
        restore_within=facts.restore_within,
        revision_count=seen.revision_count if seen else 0,
        bytes_used=seen.bytes_used if seen else 0,
    )


# -- hosts and the scheduler -----------------------------------------------------------------


def host_report(name: str, host: HostData, now: dt.datetime) -> HostReport:
    backupd, restored = host.backupd, host.restored
    errors = [
        f"{daemon}: {polled.error}"
        for daemon, polled in (("backupd", backupd), ("restored", restored))
        if polled.error
    ]
    answer = backupd.answer
    restores = restored.answer.running if restored.answer and restored.reachable else ()
    return HostReport(
        host=name,
        reachable=backupd.reachable and not restored.error,
        error="; ".join(errors) if errors else ("" if backupd.polled else "not polled yet"),
        data_age=backupd.age(now),
        running_backups=answer.running_backups if answer else 0,
        running_restores=len(restores),
        free_bytes=answer.free_bytes if answer else 0,
        total_bytes=answer.total_bytes if answer else 0,
    )


def scheduler_report(snapshot: FleetObservation, now: dt.datetime) -> SchedulerReport:
    polled = snapshot.scheduler
    return SchedulerReport(
        address=snapshot.config.scheduler_listen,
        reachable=polled.reachable,
        error=polled.error or ("" if polled.polled else "not polled yet"),
        data_age=polled.age(now),
    )


# -- the report ----------------------------------------------------------------------------


def selected_jobs(snapshot: FleetObservation, job: str = "", host: str = "") -> list[Job]:
    """The configured jobs matching the filters (empty filter: all); NotFound for unknown names."""
    config = snapshot.config
    if job and job not in config.jobs:
        raise NotFound(f"no job named {clip(job)} in {config.path}")
    if host and host not in config.hosts:
        raise NotFound(f"no host named {clip(host)} in {config.path}")
    return [
        j
        for name, j in sorted(config.jobs.items())
        if (not job or name == job) and (not host or j.host == host)
    ]


def build_report(
    snapshot: FleetObservation, now: dt.datetime, job: str = "", host: str = ""
) -> SlaReport:
    jobs = selected_jobs(snapshot, job, host)
    if host:
        host_names = [host]
    elif job:
        host_names = [snapshot.config.jobs[job].host]
    else:
        host_names = sorted(snapshot.hosts)
    return SlaReport(
        generate_time=now,
        jobs=tuple(job_report(j, snapshot, now) for j in jobs),
        hosts=tuple(host_report(name, snapshot.hosts[name], now) for name in host_names),
        scheduler=scheduler_report(snapshot, now),
    )


# -- the Nagios answer ---------------------------------------------------------------------


def _name_groups(jobs: Sequence[JobReport]) -> str:
    """ "vm-a (never), vm-b, vm-c (host backup02 unreachable)": jobs with one reason share it."""
    groups: dict[str, list[str]] = {}
    for report in sorted(jobs, key=lambda r: r.job)[:SUMMARY_NAMES]:
        groups.setdefault(report.short_reason, []).append(report.job)
    text = ", ".join(f"{', '.join(names)} ({reason})" for reason, names in groups.items())
    if len(jobs) > SUMMARY_NAMES:
        text += f" and {len(jobs) - SUMMARY_NAMES} more"
    return text


def _plural(count: int, word: str) -> str:
    return f"{count} {word}" if count == 1 else f"{count} {word}s"


def _summary_parts(jobs: Sequence[JobReport]) -> list[str]:
    by_state = {state: [j for j in jobs if j.state is state] for state in SlaState}
    critical = by_state[SlaState.CRITICAL]
    warning = by_state[SlaState.WARNING]
    unknown = by_state[SlaState.UNKNOWN]
    of_all = f"of {_plural(len(jobs), 'job')}"
    if not (critical or warning or unknown):
        return [f"{len(jobs)} {of_all} within SLA"]
    parts = []
    if critical:
        parts.append(f"{len(critical)} {of_all} outside SLA: {_name_groups(critical)}")
    if warning:
        parts.append(f"{_plural(len(warning), 'warning')}: {_name_groups(warning)}")
    if unknown:
        parts.append(f"{len(unknown)} unknown: {_name_groups(unknown)}")
    return parts


def _perfdata(report: SlaReport) -> str:
    counts = states_count(report.jobs)
    fields = [
        f"jobs={len(report.jobs)}",
        f"outside_sla={counts[SlaState.CRITICAL]}",
        f"warning={counts[SlaState.WARNING]}",
        f"unknown={counts[SlaState.UNKNOWN]}",
        f"hosts={len(report.hosts)}",
        f"hosts_unreachable={sum(1 for h in report.hosts if not h.reachable)}",
    ]
    ages = [j.last_good_age for j in report.jobs if j.last_good_age is not None]
    if ages:
        fields.append(f"oldest_good_age={int(max(ages).total_seconds())}s")
    return " ".join(fields)


def check(report: SlaReport) -> CheckResult:
    """One Nagios answer for the report's jobs: the worst state, one line, perfdata."""
    state = worst(j.state for j in report.jobs)
    parts = _summary_parts(report.jobs)
    if not report.scheduler.reachable:
        parts.append("scheduler unavailable")
    summary = f"{PLUGIN} {state.name} - {'; '.join(parts)}"
    return CheckResult(state, summary, _perfdata(report))


def states_count(jobs: Iterable[JobReport]) -> dict[SlaState, int]:
    counts = dict.fromkeys(SlaState, 0)
    for job in jobs:
        counts[job.state] += 1
    return counts
