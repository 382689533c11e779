"""SLA assessment, ages and Nagios states (lifeboat.sla)."""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import pytest

from lifeboat.model import Schedule, TagSpec
from lifeboat.sla import (
    Damage,
    JobFacts,
    SlaState,
    SlaVerdict,
    assess,
    first_backup_deadline,
    format_age,
    sla_window,
    worst,
)

S = dt.timedelta(seconds=1)
M = dt.timedelta(minutes=1)
H = dt.timedelta(hours=1)
D = dt.timedelta(days=1)

DEFAULT = Schedule("default", (TagSpec("daily", D, 7), TagSpec("hourly", H, 24)))
DAILY_ONLY = Schedule("daily", (TagSpec("daily", D, 7),))
WEEKLY_ONLY = Schedule("weekly", (TagSpec("weekly", 7 * D, 4),))

# vm-web01's hourly slots fall at hh:20:36, its weekly slots on Tuesdays 23:20:36.
JOB = "vm-web01"
NOW = dt.datetime(2026, 11, 26, 19, 32, tzinfo=dt.UTC)
STALE_AFTER = 5 * M

BASE = JobFacts(
    schedule=DEFAULT,
    known_since=NOW - 30 * D,
    data_age=10 * S,
    last_good_time=NOW - 20 * M,
)


def at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("changes", "state", "reason"),
    [
        pytest.param({}, SlaState.OK, "last good 20m ago", id="fresh"),
        pytest.param(
            {"last_good_time": NOW - 90 * M},
            SlaState.OK,
            "last good 1h30m ago",
            id="exactly-at-window",
        ),
        pytest.param(
            {"last_good_time": NOW - 90 * M - S},
            SlaState.CRITICAL,
            "last good 1h30m ago (window 1h30m)",
            id="one-second-past-window",
        ),
        pytest.param(
            {"last_good_time": NOW - 2 * D - 3 * H},
            SlaState.CRITICAL,
            "last good 2d3h ago (window 1h30m)",
            id="two-days-old",
        ),
        pytest.param(
            {"last_good_time": NOW - 2 * H, "sla_factor": 3.0},
            SlaState.OK,
            "last good 2h00m ago",
            id="larger-sla-factor",
        ),
        pytest.param(
            {"last_good_time": NOW - 2 * H, "sla_factor": 1.0},
            SlaState.CRITICAL,
            "last good 2h00m ago (window 1h00m)",
            id="sla-factor-one",
        ),
        pytest.param(
            {"schedule": DAILY_ONLY, "last_good_time": NOW - 30 * H},
            SlaState.OK,
            "last good 1d6h ago",
            id="daily-only-within-36h",
        ),
        pytest.param(
            {"schedule": DAILY_ONLY, "last_good_time": NOW - 37 * H},
            SlaState.CRITICAL,
            "last good 1d13h ago (window 1d12h)",
            id="daily-only-past-36h",
        ),
        # UNKNOWN: we cannot tell, so never OK.
        pytest.param(
            {"host_reachable": False}, SlaState.UNKNOWN, "host unreachable", id="host-unreachable"
        ),
        pytest.param(
            {"host_reachable": False, "last_good_time": NOW - 5 * D},
            SlaState.UNKNOWN,
            "host unreachable",
            id="host-unreachable-and-old",
        ),
        pytest.param({"data_age": 10 * M}, SlaState.UNKNOWN, "data is 10m old", id="stale-data"),
        pytest.param(
            {"data_age": 3 * H + 5 * M}, SlaState.UNKNOWN, "data is 3h05m old", id="very-stale-data"
        ),
        pytest.param(
            {"data_age": STALE_AFTER},
            SlaState.OK,
            "last good 20m ago",
            id="data-exactly-stale-after",
        ),
        pytest.param({"data_age": None}, SlaState.UNKNOWN, "no data about the host", id="no-data"),
        # Never backed up: grace until the first hourly slot after known_since + 1h30m.
        pytest.param(
            {"last_good_time": None, "known_since": NOW - 10 * M},
            SlaState.OK,
            "waiting for first backup",
            id="new-job-waiting",
        ),
        pytest.param(
            {"last_good_time": None, "known_since": at("2026-11-26T18:00:00")},
            SlaState.OK,
            "waiting for first backup",
            id="new-job-first-slot-missed",
        ),
        pytest.param(
            {"last_good_time": None, "known_since": at("2026-11-26T17:00:00")},
            SlaState.CRITICAL,
            "never backed up",
            id="new-job-grace-over",
        ),
        pytest.param(
            {"last_good_time": None}, SlaState.CRITICAL, "never backed up", id="never-backed-up"
        ),
        pytest.param(
            {"last_good_time": None, "schedule": WEEKLY_ONLY, "known_since": NOW - 2 * D},
            SlaState.OK,
            "waiting for first backup",
            id="weekly-job-waits-for-its-first-slot",
        ),
        pytest.param(
            {"last_good_time": None, "schedule": DAILY_ONLY, "known_since": NOW - 3 * D},
            SlaState.CRITICAL,
            "never backed up",
            id="daily-job-never-backed-up",
        ),
        pytest.param(
            {"last_good_time": None, "known_since": NOW - 10 * M, "host_reachable": False},
            SlaState.UNKNOWN,
            "host unreachable",
            id="new-job-host-unreachable",
        ),
        # WARNING: backed up in time, but something is off.
        pytest.param(
            {"newest_distrusted": True},
            SlaState.WARNING,
            "newest revision distrusted",
            id="distrusted",
        ),
        pytest.param(
            {"verification_failed": True},
            SlaState.WARNING,
            "verification failed",
            id="verification-failed",
        ),
        pytest.param(
            {"newest_distrusted": True, "verification_failed": True},
            SlaState.WARNING,
            "newest revision distrusted; verification failed",
            id="distrusted-and-verification-failed",
        ),
        pytest.param(
            {"newest_distrusted": True, "last_good_time": NOW - 3 * H},
            SlaState.CRITICAL,
            "last good 3h00m ago (window 1h30m)",
            id="too-old-beats-distrusted",
        ),
        pytest.param(
            {"damaged_revisions": (Damage("20261120T010000Z-0001", "/r/x.rev: empty"),)},
            SlaState.WARNING,
            "revision 20261120T010000Z-0001 damaged: /r/x.rev: empty",
            id="damaged-revision",
        ),
        pytest.param(
            {
                "damaged_revisions": (
                    Damage("20261120T010000Z-0001", "/r/a.rev: empty"),
                    Damage("20261121T010000Z-0002", "/r/b.sums: no manifest header line"),
                    Damage("20261122T010000Z-0003", "/r/c: No such file or directory"),
                ),
                "newest_distrusted": True,
            },
            SlaState.WARNING,
            "newest revision distrusted; revision 20261120T010000Z-0001 damaged: "
            "/r/a.rev: empty (and 2 more damaged revisions)",
            id="damaged-revisions-and-distrusted",
        ),
        pytest.param(
            {
                "damaged_revisions": (Damage("20261120T010000Z-0001", "/r/x.rev: empty"),),
                "last_good_time": None,
            },
            SlaState.CRITICAL,
            "never backed up",
            id="never-backed-up-beats-damaged",
        ),
        pytest.param(
            {
                "damaged_revisions": (Damage("20261120T010000Z-0001", "/r/x.rev: empty"),),
                "host_reachable": False,
            },
            SlaState.UNKNOWN,
            "host unreachable",
            id="unreachable-beats-damaged",
        ),
        pytest.param(
            {"last_good_time": None, "known_since": NOW - 10 * M, "newest_distrusted": True},
            SlaState.WARNING,
            "newest revision distrusted",
            id="waiting-but-distrusted",
        ),
        pytest.param(
            {"restore_within": H, "running_restore_eta": 2 * H},
            SlaState.WARNING,
            "running restore ETA 2h00m > 1h00m",
            id="restore-eta-too-long",
        ),
        pytest.param(
            {"restore_within": H, "running_restore_eta": H},
            SlaState.OK,
            "last good 20m ago",
            id="restore-eta-exactly-objective",
        ),
        pytest.param(
            {"restore_within": H, "running_restore_eta": 30 * M},
            SlaState.OK,
            "last good 20m ago",
            id="restore-eta-fine",
        ),
        pytest.param(
            {"restore_within": H, "predicted_restore": 90 * M},
            SlaState.WARNING,
            "predicted restore 1h30m > 1h00m",
            id="predicted-restore-too-long",
        ),
        pytest.param(
            {"restore_within": 4 * H, "predicted_restore": 90 * M},
            SlaState.OK,
            "last good 20m ago",
            id="predicted-restore-fine",
        ),
        pytest.param(
            {"predicted_restore": 10 * H, "running_restore_eta": 10 * H},
            SlaState.OK,
            "last good 20m ago",
            id="no-restore-objective",
        ),
        pytest.param(
            {
                "restore_within": H,
                "predicted_restore": 2 * H,
                "running_restore_eta": 3 * H,
                "verification_failed": True,
            },
            SlaState.WARNING,
            "verification failed; running restore ETA 3h00m > 1h00m; "
            "predicted restore 2h00m > 1h00m",
            id="all-warnings",
        ),
        pytest.param(
            {"restore_within": H, "running_restore_eta": 3 * H, "last_good_time": NOW - D},
            SlaState.CRITICAL,
            "last good 1d0h ago (window 1h30m)",
            id="too-old-beats-slow-restore",
        ),
    ],
)
def test_assess(changes: dict[str, Any], state: SlaState, reason: str) -> None:
    facts = dataclasses.replace(BASE, **changes)
    verdict = assess(JOB, facts, NOW, STALE_AFTER)
    assert (verdict.state, verdict.reason) == (state, reason)


def test_verdict_carries_window_and_age() -> None:
    assert assess(JOB, BASE, NOW, STALE_AFTER) == SlaVerdict(
        SlaState.OK, "last good 20m ago", 90 * M, 20 * M
    )
    never = dataclasses.replace(BASE, last_good_time=None, host_reachable=False)
    assert assess(JOB, never, NOW, STALE_AFTER).last_good_age is None


@pytest.mark.parametrize(
    ("now", "state"),
    [
        pytest.param(at("2026-11-26T19:50:36"), SlaState.OK, id="at-deadline"),
        pytest.param(at("2026-11-26T19:50:37"), SlaState.CRITICAL, id="one-second-later"),
    ],
)
def test_first_backup_grace_boundary(now: dt.datetime, state: SlaState) -> None:
    facts = dataclasses.replace(BASE, last_good_time=None, known_since=at("2026-11-26T18:00:00"))
    assert first_backup_deadline(JOB, facts) == at("2026-11-26T19:50:36")
    assert assess(JOB, facts, now, STALE_AFTER).state is state


@pytest.mark.parametrize(
    ("schedule", "factor", "window"),
    [
        pytest.param(DEFAULT, 1.5, 90 * M, id="default"),
        pytest.param(DAILY_ONLY, 1.5, 36 * H, id="daily"),
        pytest.param(WEEKLY_ONLY, 2.0, 14 * D, id="weekly-factor-2"),
    ],
)
def test_sla_window(schedule: Schedule, factor: float, window: dt.timedelta) -> None:
    assert sla_window(dataclasses.replace(BASE, schedule=schedule, sla_factor=factor)) == window


@pytest.mark.parametrize(
    ("age", "text"),
    [
        pytest.param(dt.timedelta(0), "0s", id="zero"),
        pytest.param(dt.timedelta(milliseconds=900), "0s", id="sub-second"),
        pytest.param(45 * S, "45s", id="seconds"),
        pytest.param(59 * S, "59s", id="just-under-a-minute"),
        pytest.param(M, "1m", id="one-minute"),
        pytest.param(12 * M + 30 * S, "12m", id="minutes-truncated"),
        pytest.param(H - S, "59m", id="just-under-an-hour"),
        pytest.param(H, "1h00m", id="one-hour"),
        pytest.param(3 * H + 5 * M, "3h05m", id="hours-and-minutes"),
        pytest.param(D - S, "23h59m", id="just-under-a-day"),
        pytest.param(D, "1d0h", id="one-day"),
        pytest.param(2 * D + 3 * H + 59 * M, "2d3h", id="days-and-hours"),
        pytest.param(400 * D, "400d0h", id="long"),
        pytest.param(-45 * S, "-45s", id="negative"),
    ],
)
def test_format_age(age: dt.timedelta, text: str) -> None:
    assert format_age(age) == text


@pytest.mark.parametrize(
    ("states", "expected"),
    [
        pytest.param([], SlaState.OK, id="none"),
        pytest.param([SlaState.OK, SlaState.OK], SlaState.OK, id="all-ok"),
        pytest.param([SlaState.OK, SlaState.UNKNOWN], SlaState.UNKNOWN, id="unknown-beats-ok"),
        pytest.param(
            [SlaState.UNKNOWN, SlaState.WARNING], SlaState.WARNING, id="warning-beats-unknown"
        ),
        pytest.param(
            [SlaState.WARNING, SlaState.CRITICAL, SlaState.UNKNOWN],
            SlaState.CRITICAL,
            id="critical-beats-all",
        ),
    ],
)
def test_worst(states: list[SlaState], expected: SlaState) -> None:
    assert worst(states) is expected
    assert worst(iter(states)) is expected


@pytest.mark.parametrize(
    ("state", "code"),
    [
        pytest.param(SlaState.OK, 0, id="ok"),
        pytest.param(SlaState.WARNING, 1, id="warning"),
        pytest.param(SlaState.CRITICAL, 2, id="critical"),
        pytest.param(SlaState.UNKNOWN, 3, id="unknown"),
    ],
)
def test_exit_codes(state: SlaState, code: int) -> None:
    assert state.exit_code == code
