"""The scheduler's pure decisions (scheduler.planner): runs, urgency, results, states."""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import replace

import pytest

from lifeboat.errors import InvalidArgument
from lifeboat.model import FileSource, Job, Schedule, TagSpec
from lifeboat.operations import OperationState
from lifeboat.schedule import Plan
from scheduler.hosts import BackupOperation
from scheduler.planner import (
    Backoff,
    JobState,
    JobTrack,
    diff_jobs,
    job_state,
    job_view,
    most_urgent,
    planned_run,
    projected_run,
    record_result,
    run_tags,
    urgency,
    vanished_tags,
)

S = dt.timedelta(seconds=1)
M = dt.timedelta(minutes=1)
H = dt.timedelta(hours=1)
D = dt.timedelta(days=1)

HOURLY = TagSpec("hourly", H, 24)
DAILY = TagSpec("daily", D, 7)
DEFAULT = Schedule("default", (HOURLY, DAILY))
# vm-web01's slots: hourly at hh:20:36, daily at 23:20:36 (see tests/test_schedule.py).
JOB = Job("vm-web01", "backup01", DEFAULT, FileSource("/images/vm-web01.raw"))
NOW = dt.datetime(2026, 11, 26, 19, 32, tzinfo=dt.UTC)
BACKOFF = Backoff(M, H)


def t(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).replace(tzinfo=dt.UTC)


def running(*tags: str) -> BackupOperation:
    return BackupOperation(
        "backup-vm-web01-1", "vm-web01", "backup01", OperationState.RUNNING, tags
    )


def ended(state: OperationState, error: str = "") -> BackupOperation:
    return BackupOperation("backup-vm-web01-1", "vm-web01", "backup01", state, error=error)


UP_TO_DATE = {"hourly": t("2026-11-26T19:21:00"), "daily": t("2026-11-25T23:21:00")}


@pytest.mark.parametrize(
    ("track", "plan"),
    [
        pytest.param(JobTrack(JOB), None, id="host-not-asked-yet"),
        pytest.param(
            JobTrack(JOB, synced=True, running=running("hourly")), None, id="running-waits"
        ),
        pytest.param(
            JobTrack(JOB, synced=True),
            Plan(NOW, frozenset({"hourly", "daily"})),
            id="never-backed-up-runs-now-with-all-tags",
        ),
        pytest.param(
            JobTrack(JOB, synced=True, last_tag_times=UP_TO_DATE),
            Plan(t("2026-11-26T20:20:36"), frozenset({"hourly"})),
            id="up-to-date-waits-for-next-slot",
        ),
        pytest.param(
            JobTrack(
                JOB,
                synced=True,
                last_tag_times={**UP_TO_DATE, "hourly": t("2026-11-26T15:21:00")},
            ),
            Plan(NOW, frozenset({"hourly"})),
            id="four-missed-slots-one-catch-up",
        ),
        pytest.param(
            JobTrack(
                JOB,
                synced=True,
                last_tag_times={"hourly": t("2026-11-26T18:21:00"), "daily": t("2026-11-24T23:21")},
                failures=2,
                retry_at=NOW + 2 * M,
            ),
            Plan(NOW + 2 * M, frozenset({"hourly", "daily"})),
            id="failing-waits-for-backoff",
        ),
        pytest.param(
            JobTrack(JOB, synced=True, last_tag_times=UP_TO_DATE, failures=1, retry_at=NOW - S),
            Plan(t("2026-11-26T20:20:36"), frozenset({"hourly"})),
            id="backoff-over-slot-rules",
        ),
        pytest.param(
            JobTrack(
                JOB,
                synced=True,
                last_tag_times={**UP_TO_DATE, "hourly": t("2026-11-26T18:00:00")},
                retry_at=NOW + 30 * S,
                last_result=OperationState.RETRY_LATER,
            ),
            Plan(NOW + 30 * S, frozenset({"hourly"})),
            id="retry-later-waits-its-delay",
        ),
    ],
)
def test_planned_run(track: JobTrack, plan: Plan | None) -> None:
    assert planned_run(track, NOW) == plan


# What a host reports after revisions were deleted behind the scheduler's back: the plan
# is the same pure function of the tag times that are left.
@pytest.mark.parametrize(
    ("left", "plan"),
    [
        pytest.param({}, Plan(NOW, frozenset({"hourly", "daily"})), id="every-revision-deleted"),
        pytest.param(
            {"hourly": t("2026-11-26T17:21:00"), "daily": t("2026-11-25T23:21:00")},
            Plan(NOW, frozenset({"hourly"})),
            id="newest-deleted-older-one-misses-a-slot",
        ),
        pytest.param(
            {"hourly": t("2026-11-25T19:21:00"), "daily": t("2026-11-24T23:21:00")},
            Plan(NOW, frozenset({"hourly", "daily"})),
            id="a-day-of-revisions-deleted",
        ),
        pytest.param(
            {"hourly": t("2026-11-26T19:21:00"), "daily": t("2026-11-25T23:21:00")},
            Plan(t("2026-11-26T20:20:36"), frozenset({"hourly"})),
            id="an-older-revision-deleted-changes-nothing",
        ),
        pytest.param(
            {"manual:before-upgrade": t("2026-11-26T19:00:00")},
            Plan(NOW, frozenset({"hourly"})),
            id="only-a-manual-revision-left-measures-from-it",
        ),
    ],
)
def test_planned_run_after_revisions_vanished(left: dict[str, dt.datetime], plan: Plan) -> None:
    assert planned_run(JobTrack(JOB, synced=True, last_tag_times=left), NOW) == plan


@pytest.mark.parametrize(
    ("before", "after", "gone"),
    [
        pytest.param(UP_TO_DATE, UP_TO_DATE, (), id="nothing-changed"),
        pytest.param(UP_TO_DATE, {}, ("daily", "hourly"), id="every-revision-deleted"),
        pytest.param(
            UP_TO_DATE,
            {**UP_TO_DATE, "hourly": t("2026-11-26T18:21:00")},
            ("hourly",),
            id="newest-hourly-deleted",
        ),
        pytest.param(
            UP_TO_DATE,
            {**UP_TO_DATE, "hourly": t("2026-11-26T20:21:00")},
            (),
            id="a-newer-backup-is-no-loss",
        ),
        pytest.param({}, UP_TO_DATE, (), id="first-report"),
        pytest.param(
            {**UP_TO_DATE, "manual:x": t("2026-11-26T19:00:00")},
            UP_TO_DATE,
            (),
            id="manual-tag-removed-is-not-the-schedules-business",
        ),
        pytest.param(
            {**UP_TO_DATE, "weekly": t("2026-11-20T00:00:00")},
            UP_TO_DATE,
            (),
            id="tag-outside-the-schedule-ignored",
        ),
    ],
)
def test_vanished_tags(
    before: dict[str, dt.datetime], after: dict[str, dt.datetime], gone: tuple[str, ...]
) -> None:
    assert vanished_tags(DEFAULT, before, after) == gone


def test_planned_run_identical_after_a_restart() -> None:
    # A restarted scheduler knows only what the host reports: the same plan comes out.
    before = JobTrack(JOB, synced=True, last_tag_times=dict(UP_TO_DATE), generation=7)
    after = JobTrack(JOB, synced=True, last_tag_times=dict(UP_TO_DATE))
    for moment in (NOW, NOW + 10 * M, t("2026-11-26T23:20:36")):
        assert planned_run(before, moment) == planned_run(after, moment)
    assert planned_run(after, t("2026-11-26T23:20:36")) == Plan(
        t("2026-11-26T23:20:36"), frozenset({"hourly", "daily"})
    )


@pytest.mark.parametrize(
    ("running_tags", "plan"),
    [
        pytest.param(
            ("hourly",), Plan(t("2026-11-26T20:20:36"), frozenset({"hourly"})), id="hourly"
        ),
        pytest.param(
            ("hourly", "daily"),
            Plan(t("2026-11-26T20:20:36"), frozenset({"hourly"})),
            id="both",
        ),
    ],
)
def test_projected_run_assumes_the_running_backup_succeeds(
    running_tags: tuple[str, ...], plan: Plan
) -> None:
    track = JobTrack(
        JOB,
        synced=True,
        last_tag_times={"hourly": t("2026-11-26T17:21:00"), "daily": t("2026-11-25T23:21")},
        running=running(*running_tags),
    )
    assert projected_run(track, NOW) == plan


def job(name: str, interval: dt.timedelta, sla_factor: float = 1.5) -> Job:
    schedule = Schedule("s", (TagSpec("t", interval, 1),))
    return Job(name, "backup01", schedule, FileSource(f"/images/{name}.raw"), sla_factor=sla_factor)


def aged(name: str, age: dt.timedelta | None, interval: dt.timedelta, factor: float = 1.5):
    times = {} if age is None else {"t": NOW - age}
    return JobTrack(job(name, interval, factor), synced=True, last_tag_times=times)


@pytest.mark.parametrize(
    ("track", "expected"),
    [
        pytest.param(aged("a", None, H), math.inf, id="never-backed-up"),
        pytest.param(aged("a", 90 * M, H), 1.0, id="at-the-sla-edge"),
        pytest.param(aged("a", 45 * M, H), 0.5, id="half-way"),
        pytest.param(aged("a", 3 * H, H, factor=2.0), 1.5, id="own-sla-factor"),
        pytest.param(aged("a", 36 * H, D), 1.0, id="daily"),
    ],
)
def test_urgency_is_age_over_sla_window(track: JobTrack, expected: float) -> None:
    assert urgency(track, NOW) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("tracks", "count", "order"),
    [
        pytest.param(
            [aged("hourly-2h", 2 * H, H), aged("daily-40h", 40 * H, D), aged("new", None, H)],
            3,
            ["new", "hourly-2h", "daily-40h"],
            id="never-backed-up-first-then-relative-overdue",
        ),
        pytest.param(
            [aged("daily-30h", 30 * H, D), aged("hourly-80m", 80 * M, H)],
            1,
            ["hourly-80m"],
            id="relative-not-absolute-age",
        ),
        pytest.param(
            [aged("b", 2 * H, H), aged("a", 2 * H, H), aged("c", 2 * H, H)],
            2,
            ["a", "b"],
            id="ties-by-name",
        ),
        pytest.param([aged("a", H, H)], 0, [], id="no-free-slot"),
    ],
)
def test_most_urgent_first(tracks: list[JobTrack], count: int, order: list[str]) -> None:
    assert [track.name for track in most_urgent(tracks, count, NOW)] == order


@pytest.mark.parametrize(
    ("before", "operation", "failures", "retry_at"),
    [
        pytest.param(
            JobTrack(JOB, failures=3, retry_at=NOW),
            ended(OperationState.SUCCEEDED),
            0,
            None,
            id="success-resets",
        ),
        pytest.param(
            JobTrack(JOB), ended(OperationState.FAILED, "boom"), 1, NOW + M, id="first-failure"
        ),
        pytest.param(
            JobTrack(JOB, failures=3),
            ended(OperationState.FAILED, "boom"),
            4,
            NOW + 8 * M,
            id="exponential",
        ),
        pytest.param(
            JobTrack(JOB, failures=30),
            ended(OperationState.FAILED, "boom"),
            31,
            NOW + H,
            id="capped",
        ),
        pytest.param(
            JobTrack(JOB, failures=1),
            ended(OperationState.CANCELLED),
            2,
            NOW + 2 * M,
            id="cancelled-counts-as-failure",
        ),
        pytest.param(
            JobTrack(JOB, failures=2),
            ended(OperationState.RETRY_LATER, "exit 75"),
            2,
            NOW + 20 * S,
            id="retry-later-short-delay-no-backoff",
        ),
    ],
)
def test_record_result(
    before: JobTrack,
    operation: BackupOperation,
    failures: int,
    retry_at: dt.datetime | None,
) -> None:
    record_result(before, operation, NOW, BACKOFF, retry_later_delay=20 * S)
    assert (before.failures, before.retry_at) == (failures, retry_at)
    assert before.last_result == operation.state
    assert before.last_error == operation.error


DUE = Plan(NOW - S, frozenset({"hourly"}))
LATER = Plan(NOW + H, frozenset({"hourly"}))


@pytest.mark.parametrize(
    ("track", "reachable", "restores", "state"),
    [
        pytest.param(JobTrack(JOB, plan=LATER), True, False, JobState.WAITING, id="waiting"),
        pytest.param(
            JobTrack(JOB, running=running("hourly")),
            False,
            False,
            JobState.HOST_UNREACHABLE,
            id="unreachable-over-all",
        ),
        pytest.param(
            JobTrack(JOB, running=running("hourly")), True, True, JobState.RUNNING, id="running"
        ),
        pytest.param(JobTrack(JOB, plan=DUE), True, True, JobState.DEFERRED, id="due-deferred"),
        pytest.param(
            JobTrack(JOB, plan=LATER), True, True, JobState.WAITING, id="not-due-not-deferred"
        ),
        pytest.param(
            JobTrack(JOB, plan=LATER, failures=1, retry_at=NOW + M),
            True,
            False,
            JobState.BACKING_OFF,
            id="backing-off",
        ),
        pytest.param(
            JobTrack(JOB, plan=DUE, failures=1, retry_at=NOW - S),
            True,
            False,
            JobState.WAITING,
            id="backoff-over",
        ),
    ],
)
def test_job_state(track: JobTrack, reachable: bool, restores: bool, state: JobState) -> None:
    assert job_state(track, NOW, reachable, restores) == state


def test_job_view_reports_backoff_and_host_error() -> None:
    track = JobTrack(
        JOB, synced=True, last_tag_times=dict(UP_TO_DATE), failures=2, last_error="", plan=LATER
    )
    view = job_view(track, NOW, BACKOFF, host_reachable=False, host_error="host down")
    assert view.state == JobState.HOST_UNREACHABLE
    assert view.last_error == "host down"
    assert view.backoff == 2 * M
    assert view.next_run_time == NOW + H and view.next_tags == ("hourly",)
    assert view.last_backup_time == t("2026-11-26T19:21:00")


@pytest.mark.parametrize(
    ("requested", "tags"),
    [
        pytest.param([], ["hourly"], id="empty-means-next-slot"),
        pytest.param(["daily"], ["daily"], id="schedule-tag"),
        pytest.param(["manual:before-upgrade", "hourly"], ["hourly", "manual:before-upgrade"]),
    ],
)
def test_run_tags(requested: list[str], tags: list[str]) -> None:
    track = JobTrack(JOB, synced=True, last_tag_times=dict(UP_TO_DATE))
    assert run_tags(track, requested, NOW) == tags


def test_run_tags_rejects_tags_outside_the_schedule() -> None:
    track = JobTrack(JOB, synced=True, last_tag_times=dict(UP_TO_DATE))
    with pytest.raises(InvalidArgument) as raised:
        run_tags(track, ["weekly"], NOW)
    assert raised.value.field == "tags" and "manual:" in raised.value.problem


def test_diff_jobs() -> None:
    other = replace(JOB, name="vm-db01")
    moved = replace(JOB, host="backup02")
    changes = diff_jobs({"vm-web01": JOB, "vm-db01": other}, {"vm-web01": moved, "new": JOB})
    assert changes.added == ("new",)
    assert changes.removed == ("vm-db01",)
    assert changes.changed == ("vm-web01",)
    assert diff_jobs({"vm-web01": JOB}, {"vm-web01": replace(JOB)}).changed == ()
