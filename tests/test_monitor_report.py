"""The monitor's judgement, pure: from the daemons' answers to SLA states, the Nagios line,
perfdata and the Prometheus exposition (monitor.report, monitor.metrics)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import pytest

from lifeboat.config import Config, parse
from lifeboat.errors import NotFound
from lifeboat.sla import Damage, SlaState
from monitor import metrics
from monitor.observations import (
    BackupdObservation,
    JobObservation,
    Polled,
    RestoredObservation,
    RunningRestore,
    SchedulerObservation,
)
from monitor.poller import FleetObservation, HostData
from monitor.report import build_report, check

S = dt.timedelta(seconds=1)
M = dt.timedelta(minutes=1)
H = dt.timedelta(hours=1)
D = dt.timedelta(days=1)
NOW = dt.datetime(2026, 11, 26, 19, 32, tzinfo=dt.UTC)


def fleet_config(jobs: dict[str, dict[str, Any]], hosts: tuple[str, ...] = ("backup01",)) -> Config:
    return parse(
        {
            "global": {"base-dir": "/srv/lifeboat"},
            "monitor": {"poll-interval": "10s"},
            "hosts": {
                name: {
                    "backupd": f"127.0.0.1:{9411 + 2 * i}",
                    "restored": f"127.0.0.1:{9412 + 2 * i}",
                }
                for i, name in enumerate(hosts)
            },
            "schedules": {"default": {"hourly": {"interval": "1h"}, "daily": {"interval": "1d"}}},
            "jobs": {
                name: {
                    "host": hosts[0],
                    "schedule": "default",
                    "source": {"type": "file", "path": f"/images/{name}.raw"},
                    **extra,
                }
                for name, extra in jobs.items()
            },
        },
        "test.yaml",
    )


def answered(answer: Any, age: dt.timedelta = 2 * S) -> Polled[Any]:
    return Polled(answer, NOW - age, "", True)


def backupd(*jobs: JobObservation, age: dt.timedelta = 2 * S) -> Polled[BackupdObservation]:
    return answered(
        BackupdObservation(
            {j.job: j for j in jobs}, free_bytes=10 << 30, total_bytes=20 << 30, running_backups=1
        ),
        age,
    )


def good(job: str, age: dt.timedelta = 20 * M, **changes: Any) -> JobObservation:
    return JobObservation(
        job, last_good_time=NOW - age, revision_count=3, bytes_used=1 << 20, **changes
    )


RESTORED_OK: Polled[RestoredObservation] = answered(RestoredObservation())
SCHEDULER_OK: Polled[SchedulerObservation] = answered(
    SchedulerObservation({"vm-web01": NOW + 48 * M})
)


def snapshot(
    config: Config,
    hosts: dict[str, HostData],
    scheduler: Polled[SchedulerObservation] = SCHEDULER_OK,
    known_since: dt.datetime = NOW - 30 * D,
) -> FleetObservation:
    return FleetObservation(config, dict.fromkeys(config.jobs, known_since), hosts, scheduler)


def one_job(
    observation: Polled[BackupdObservation],
    restored: Polled[RestoredObservation] = RESTORED_OK,
    known_since: dt.datetime = NOW - 30 * D,
    **job: Any,
) -> FleetObservation:
    config = fleet_config({"vm-web01": job})
    return snapshot(config, {"backup01": HostData(observation, restored)}, known_since=known_since)


def unreachable(polled: Polled[Any], error: str = "connection refused") -> Polled[Any]:
    return polled.failed(error)


@pytest.mark.parametrize(
    ("snap", "state", "reason", "short"),
    [
        pytest.param(
            one_job(backupd(good("vm-web01"))),
            SlaState.OK,
            "last good 20m ago",
            "last good 20m ago",
            id="fresh",
        ),
        pytest.param(
            one_job(backupd(good("vm-web01", age=2 * H))),
            SlaState.CRITICAL,
            "last good 2h00m ago (window 1h30m)",
            "last good 2h00m ago",
            id="too-old",
        ),
        pytest.param(
            one_job(backupd(good("vm-web01", age=2 * H, backup_running=True))),
            SlaState.CRITICAL,
            "last good 2h00m ago (window 1h30m); a backup is running",
            "last good 2h00m ago",
            id="running-backup-does-not-hide-overdue",
        ),
        pytest.param(
            one_job(backupd()),
            SlaState.CRITICAL,
            "never backed up",
            "never",
            id="not-listed-by-backupd-is-never-backed-up",
        ),
        pytest.param(
            one_job(
                backupd(
                    good(
                        "vm-web01",
                        damaged_revisions=(
                            Damage("20261120T010000Z-0001", "/srv/vm-web01/x.rev: empty"),
                        ),
                    )
                )
            ),
            SlaState.WARNING,
            "revision 20261120T010000Z-0001 damaged: /srv/vm-web01/x.rev: empty",
            "revision 20261120T010000Z-0001 damaged: /srv/vm-web01/x.rev: empty",
            id="damaged-revision",
        ),
        pytest.param(
            one_job(backupd(), known_since=NOW - 10 * M),
            SlaState.OK,
            "waiting for first backup",
            "waiting for first backup",
            id="never-within-grace",
        ),
        pytest.param(
            one_job(backupd(good("vm-web01", newest_distrusted=True))),
            SlaState.WARNING,
            "newest revision distrusted",
            "newest revision distrusted",
            id="distrusted",
        ),
        pytest.param(
            one_job(backupd(good("vm-web01", newest_distrusted=True, verification_failed=True))),
            SlaState.WARNING,
            "newest revision distrusted; verification failed",
            "newest revision distrusted; verification failed",
            id="verification-failed",
        ),
        pytest.param(
            one_job(unreachable(backupd(good("vm-web01")))),
            SlaState.UNKNOWN,
            "backupd of host backup01 unreachable: connection refused",
            "host backup01 unreachable",
            id="host-unreachable-keeps-no-ok",
        ),
        pytest.param(
            one_job(unreachable(Polled())),
            SlaState.UNKNOWN,
            "backupd of host backup01 unreachable: connection refused",
            "host backup01 unreachable",
            id="host-never-reached",
        ),
        pytest.param(
            one_job(Polled()),
            SlaState.UNKNOWN,
            "no data about the host",
            "no data from host backup01",
            id="not-polled-yet",
        ),
        pytest.param(
            one_job(backupd(good("vm-web01"), age=31 * S)),
            SlaState.UNKNOWN,
            "data is 31s old",
            "host backup01 data is 31s old",
            id="stale-after-three-polls",
        ),
        pytest.param(
            one_job(backupd(good("vm-web01"), age=29 * S)),
            SlaState.OK,
            "last good 20m ago",
            "last good 20m ago",
            id="not-yet-stale",
        ),
        pytest.param(
            one_job(backupd(good("vm-web01")), unreachable(RESTORED_OK)),
            SlaState.WARNING,
            "restored of host backup01 unreachable",
            "restored of host backup01 unreachable",
            id="restored-unreachable",
        ),
        pytest.param(
            one_job(backupd(good("vm-web01")), answered(RestoredObservation(), age=31 * S)),
            SlaState.WARNING,
            "restored of host backup01 data is 31s old",
            "restored of host backup01 data is 31s old",
            id="restored-stale",
        ),
        pytest.param(
            one_job(backupd(good("vm-web01", age=2 * H)), unreachable(RESTORED_OK)),
            SlaState.CRITICAL,
            "last good 2h00m ago (window 1h30m)",
            "last good 2h00m ago",
            id="restored-unreachable-does-not-soften-critical",
        ),
        pytest.param(
            one_job(backupd(good("vm-web01", newest_distrusted=True)), unreachable(RESTORED_OK)),
            SlaState.WARNING,
            "newest revision distrusted; restored of host backup01 unreachable",
            "newest revision distrusted; restored of host backup01 unreachable",
            id="warnings-add-up",
        ),
        pytest.param(
            one_job(backupd(good("vm-web01")), Polled()),
            SlaState.OK,
            "last good 20m ago",
            "last good 20m ago",
            id="restored-not-polled-yet",
        ),
        pytest.param(
            one_job(
                backupd(good("vm-web01")),
                answered(RestoredObservation(estimates_available=False)),
                **{"restore-within": "1h"},
            ),
            SlaState.OK,
            "last good 20m ago",
            "last good 20m ago",
            id="restore-estimates-unimplemented-is-no-data",
        ),
        pytest.param(
            one_job(
                backupd(good("vm-web01")),
                answered(RestoredObservation(predicted={"vm-web01": 2 * H})),
                **{"restore-within": "1h"},
            ),
            SlaState.WARNING,
            "predicted restore 2h00m > 1h00m",
            "predicted restore 2h00m > 1h00m",
            id="predicted-restore-too-slow",
        ),
        pytest.param(
            one_job(
                backupd(good("vm-web01")),
                answered(RestoredObservation(predicted={"vm-web01": 50 * M})),
                **{"restore-within": "1h"},
            ),
            SlaState.OK,
            "last good 20m ago",
            "last good 20m ago",
            id="predicted-restore-in-time",
        ),
        pytest.param(
            one_job(
                backupd(good("vm-web01")),
                answered(
                    RestoredObservation(running=(RunningRestore("vm-web01", 40 * M, 30 * M),))
                ),
                **{"restore-within": "1h"},
            ),
            SlaState.WARNING,
            "running restore ETA 1h10m > 1h00m",
            "running restore ETA 1h10m > 1h00m",
            id="running-restore-misses-target",
        ),
        pytest.param(
            one_job(
                backupd(good("vm-web01")),
                answered(
                    RestoredObservation(running=(RunningRestore("vm-web01", 20 * M, 30 * M),))
                ),
                **{"restore-within": "1h"},
            ),
            SlaState.OK,
            "last good 20m ago",
            "last good 20m ago",
            id="running-restore-in-time",
        ),
        pytest.param(
            one_job(
                backupd(good("vm-web01")),
                answered(
                    RestoredObservation(
                        running=(RunningRestore("vm-web01", 20 * M, 30 * M, 30 * M),)
                    )
                ),
            ),
            SlaState.WARNING,
            "running restore ETA 50m > 30m",
            "running restore ETA 50m > 30m",
            id="running-restore-own-target",
        ),
        pytest.param(
            one_job(
                backupd(good("vm-web01")),
                answered(RestoredObservation(running=(RunningRestore("vm-other", 40 * M, 9 * H),))),
                **{"restore-within": "1h"},
            ),
            SlaState.OK,
            "last good 20m ago",
            "last good 20m ago",
            id="other-jobs-restore",
        ),
    ],
)
def test_job_state(snap: FleetObservation, state: SlaState, reason: str, short: str) -> None:
    (job,) = build_report(snap, NOW).jobs
    assert (job.state, job.reason, job.short_reason) == (state, reason, short)


def test_full_reason_tells_a_running_backup_and_the_last_error() -> None:
    seen = good("vm-web01", age=2 * H, backup_running=True, last_error="source missing")
    (job,) = build_report(one_job(backupd(seen)), NOW).jobs
    assert job.state == SlaState.CRITICAL
    assert job.reason == (
        "last good 2h00m ago (window 1h30m); a backup is running; last error: source missing"
    )
    assert job.short_reason == "last good 2h00m ago"


def test_job_report_carries_the_facts() -> None:
    snap = one_job(
        backupd(good("vm-web01", age=20 * M)),
        answered(RestoredObservation(predicted={"vm-web01": 5 * M})),
        **{"restore-within": "1h", "sla-factor": 2},
    )
    (job,) = build_report(snap, NOW).jobs
    assert job.last_good_time == NOW - 20 * M
    assert job.last_good_age == 20 * M
    assert job.window == 2 * H
    assert job.next_run == NOW + 48 * M
    assert job.predicted_restore == 5 * M
    assert job.restore_within == H
    assert (job.revision_count, job.bytes_used) == (3, 1 << 20)


FLEET = fleet_config(
    {
        "vm-db01": {},
        "vm-mail": {},
        "vm-web01": {},
        "vm-web02": {"host": "backup02"},
    },
    hosts=("backup01", "backup02"),
)


def fleet(
    backup01: Polled[BackupdObservation],
    backup02: Polled[BackupdObservation] | None = None,
    scheduler: Polled[SchedulerObservation] = SCHEDULER_OK,
) -> FleetObservation:
    return snapshot(
        FLEET,
        {
            "backup01": HostData(backup01, RESTORED_OK),
            "backup02": HostData(backup02 or backupd(good("vm-web02")), RESTORED_OK),
        },
        scheduler,
    )


ALL_GOOD = backupd(good("vm-db01"), good("vm-mail"), good("vm-web01", age=30 * M))


@pytest.mark.parametrize(
    ("snap", "filters", "state", "line"),
    [
        pytest.param(
            fleet(ALL_GOOD),
            {},
            SlaState.OK,
            "LIFEBOAT OK - 4 of 4 jobs within SLA | jobs=4 outside_sla=0 warning=0 unknown=0 "
            "hosts=2 hosts_unreachable=0 oldest_good_age=1800s",
            id="ok",
        ),
        pytest.param(
            fleet(backupd(good("vm-db01", age=2 * D + 3 * H), good("vm-web01"))),
            {},
            SlaState.CRITICAL,
            "LIFEBOAT CRITICAL - 2 of 4 jobs outside SLA: vm-db01 (last good 2d3h ago), "
            "vm-mail (never) | jobs=4 outside_sla=2 warning=0 unknown=0 hosts=2 "
            "hosts_unreachable=0 oldest_good_age=183600s",
            id="critical-names-the-jobs",
        ),
        pytest.param(
            fleet(backupd(good("vm-web01"))),
            {},
            SlaState.CRITICAL,
            "LIFEBOAT CRITICAL - 2 of 4 jobs outside SLA: vm-db01, vm-mail (never) | jobs=4 "
            "outside_sla=2 warning=0 unknown=0 hosts=2 hosts_unreachable=0 oldest_good_age=1200s",
            id="same-reason-shared",
        ),
        pytest.param(
            fleet(ALL_GOOD, unreachable(backupd(good("vm-web02")))),
            {},
            SlaState.UNKNOWN,
            "LIFEBOAT UNKNOWN - 1 unknown: vm-web02 (host backup02 unreachable) | jobs=4 "
            "outside_sla=0 warning=0 unknown=1 hosts=2 hosts_unreachable=1 oldest_good_age=1800s",
            id="unknown-host",
        ),
        pytest.param(
            fleet(
                backupd(good("vm-db01", newest_distrusted=True), good("vm-web01")),
                unreachable(backupd(good("vm-web02"))),
            ),
            {},
            SlaState.CRITICAL,
            "LIFEBOAT CRITICAL - 1 of 4 jobs outside SLA: vm-mail (never); 1 warning: vm-db01 "
            "(newest revision distrusted); 1 unknown: vm-web02 (host backup02 unreachable) | "
            "jobs=4 outside_sla=1 warning=1 unknown=1 hosts=2 hosts_unreachable=1 "
            "oldest_good_age=1200s",
            id="every-kind-critical-wins",
        ),
        pytest.param(
            fleet(
                backupd(good("vm-db01", newest_distrusted=True), good("vm-mail"), good("vm-web01")),
                unreachable(backupd(good("vm-web02"))),
            ),
            {},
            SlaState.WARNING,
            "LIFEBOAT WARNING - 1 warning: vm-db01 (newest revision distrusted); 1 unknown: "
            "vm-web02 (host backup02 unreachable) | jobs=4 outside_sla=0 warning=1 unknown=1 "
            "hosts=2 hosts_unreachable=1 oldest_good_age=1200s",
            id="warning-beats-unknown",
        ),
        pytest.param(
            fleet(ALL_GOOD, unreachable(backupd(good("vm-web02")))),
            {"host": "backup01"},
            SlaState.OK,
            "LIFEBOAT OK - 3 of 3 jobs within SLA | jobs=3 outside_sla=0 warning=0 unknown=0 "
            "hosts=1 hosts_unreachable=0 oldest_good_age=1800s",
            id="host-filter",
        ),
        pytest.param(
            fleet(ALL_GOOD, unreachable(backupd(good("vm-web02")))),
            {"job": "vm-web02"},
            SlaState.UNKNOWN,
            "LIFEBOAT UNKNOWN - 1 unknown: vm-web02 (host backup02 unreachable) | jobs=1 "
            "outside_sla=0 warning=0 unknown=1 hosts=1 hosts_unreachable=1 oldest_good_age=1200s",
            id="job-filter",
        ),
        pytest.param(
            fleet(ALL_GOOD, scheduler=unreachable(Polled())),
            {"job": "vm-mail"},
            SlaState.OK,
            "LIFEBOAT OK - 1 of 1 job within SLA; scheduler unavailable | jobs=1 outside_sla=0 "
            "warning=0 unknown=0 hosts=1 hosts_unreachable=0 oldest_good_age=1200s",
            id="scheduler-unavailable-reported-not-judged",
        ),
    ],
)
def test_check_line(
    snap: FleetObservation, filters: dict[str, str], state: SlaState, line: str
) -> None:
    result = check(build_report(snap, NOW, **filters))
    assert result.state == state
    assert result.line() == line


def test_summary_is_one_bounded_line_for_many_jobs() -> None:
    names = [f"vm-{i:03d}" for i in range(40)]
    config = fleet_config({name: {} for name in names})
    hosts = {"backup01": HostData(backupd(), RESTORED_OK)}
    result = check(build_report(snapshot(config, hosts), NOW))
    assert result.summary == (
        "LIFEBOAT CRITICAL - 40 of 40 jobs outside SLA: vm-000, vm-001, vm-002, vm-003, vm-004, "
        "vm-005, vm-006, vm-007, vm-008, vm-009 (never) and 30 more"
    )
    assert "\n" not in result.line()


@pytest.mark.parametrize(
    "filters",
    [pytest.param({"job": "vm-nope"}, id="job"), pytest.param({"host": "backup99"}, id="host")],
)
def test_unknown_filter_is_not_found(filters: dict[str, str]) -> None:
    with pytest.raises(NotFound, match=next(iter(filters.values()))):
        build_report(fleet(ALL_GOOD), NOW, **filters)


def test_host_report() -> None:
    snap = fleet(ALL_GOOD, unreachable(backupd(good("vm-web02"), age=5 * S)))
    backup01, backup02 = build_report(snap, NOW).hosts
    assert backup01 == dataclasses.replace(
        backup01,
        reachable=True,
        error="",
        data_age=2 * S,
        running_backups=1,
        free_bytes=10 << 30,
        total_bytes=20 << 30,
    )
    assert not backup02.reachable
    assert backup02.error == "backupd: connection refused"
    assert backup02.data_age == 5 * S
    assert backup02.free_bytes == 10 << 30, "the last answer is kept, with its age"


def test_polled_keeps_the_answer_and_its_time_when_a_poll_fails() -> None:
    first = Polled[str]().succeeded("answer", NOW)
    assert first.reachable and first.age(NOW + 3 * S) == 3 * S
    failed = first.failed("timeout")
    assert (failed.answer, failed.answer_time, failed.reachable) == ("answer", NOW, False)
    assert failed.succeeded("again", NOW + S).reachable


def parse_exposition(text: str) -> dict[str, float]:
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def test_metrics() -> None:
    snap = fleet(backupd(good("vm-db01", age=2 * H), good("vm-web01")))
    text = metrics.exposition(build_report(snap, NOW))
    samples = parse_exposition(text)
    web = '{job="vm-web01",host="backup01"}'
    assert samples[f"lifeboat_job_sla_state{web}"] == 0
    assert samples['lifeboat_job_sla_state{job="vm-db01",host="backup01"}'] == 2
    assert samples[f"lifeboat_job_last_good_timestamp_seconds{web}"] == (NOW - 20 * M).timestamp()
    assert 'lifeboat_job_last_good_timestamp_seconds{job="vm-mail",host="backup01"}' not in samples
    assert samples[f"lifeboat_job_sla_window_seconds{web}"] == 5400
    assert samples[f"lifeboat_job_revisions{web}"] == 3
    assert samples[f"lifeboat_job_repository_bytes{web}"] == 1 << 20
    assert samples[f"lifeboat_job_next_run_timestamp_seconds{web}"] == (NOW + 48 * M).timestamp()
    assert samples['lifeboat_jobs{state="critical"}'] == 2
    assert samples['lifeboat_host_up{host="backup01"}'] == 1
    assert samples['lifeboat_host_repository_free_bytes{host="backup01"}'] == 10 << 30
    assert samples['lifeboat_host_repository_size_bytes{host="backup01"}'] == 20 << 30
    assert samples["lifeboat_scheduler_up"] == 1
    for name in ("lifeboat_job_sla_state", "lifeboat_host_up"):
        assert f"# TYPE {name} gauge" in text
    assert text.endswith("\n")


@pytest.mark.parametrize(
    ("value", "escaped"),
    [
        pytest.param("plain", "plain", id="plain"),
        pytest.param('a"b', 'a\\"b', id="quote"),
        pytest.param("a\\b", "a\\\\b", id="backslash"),
        pytest.param("a\nb", "a\\nb", id="newline"),
    ],
)
def test_label_escaping(value: str, escaped: str) -> None:
    assert metrics.escape_label(value) == escaped
