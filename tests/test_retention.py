"""Retention: which tags expire and which revisions are deleted (lifeboat.retention)."""

from __future__ import annotations

import datetime as dt

import pytest

from lifeboat.model import Schedule, TagSpec
from lifeboat.retention import RetainedRevision, RetentionPlan, expire, is_manual

M = dt.timedelta(minutes=1)
H = dt.timedelta(hours=1)
D = dt.timedelta(days=1)
NOW = dt.datetime(2026, 11, 26, 19, 32, tzinfo=dt.UTC)

HOURLY_KEEP1 = Schedule("h1", (TagSpec("hourly", H, 1),))
DAILY_KEEP3 = Schedule("d3", (TagSpec("daily", D, 3),))
DAILY_KEEP7 = Schedule("d7", (TagSpec("daily", D, 7),))
DEFAULT = Schedule("default", (TagSpec("hourly", H, 24), TagSpec("daily", D, 7)))
KEEP0 = Schedule("k0", (TagSpec("hourly", H, 0),))
MANUAL_IN_SCHEDULE = Schedule("odd", (TagSpec("manual:odd", H, 0),))


def rev(rev_id: str, age: dt.timedelta, *tags: str) -> RetainedRevision:
    return RetainedRevision(rev_id, NOW - age, frozenset(tags))


def days(count: int, tag: str, extra: dt.timedelta = dt.timedelta(0)) -> list[RetainedRevision]:
    """One revision per day, ids d0 (newest) to d<count-1>, each `extra` older than k days."""
    return [rev(f"d{k}", k * D + extra, tag) for k in range(count)]


CASES = [
    pytest.param(DEFAULT, [], {}, [], id="empty-input"),
    pytest.param(
        HOURLY_KEEP1,
        [rev("a", 30 * M, "hourly"), rev("b", 90 * M, "hourly"), rev("c", 150 * M, "hourly")],
        {"b": {"hourly"}, "c": {"hourly"}},
        ["c", "b"],
        id="keep1-older-ones-expire-oldest-deleted-first",
    ),
    pytest.param(
        HOURLY_KEEP1,
        [rev("a", 10 * M, "hourly"), rev("b", 40 * M, "hourly"), rev("c", 59 * M, "hourly")],
        {},
        [],
        id="keep1-all-younger-than-interval",
    ),
    pytest.param(
        HOURLY_KEEP1,
        [rev("a", 10 * M, "hourly"), rev("b", H, "hourly")],
        {},
        [],
        id="keep1-exactly-keep-times-interval-is-kept",
    ),
    pytest.param(
        DAILY_KEEP3,
        days(6, "daily", H),
        {"d3": {"daily"}, "d4": {"daily"}, "d5": {"daily"}},
        ["d5", "d4", "d3"],
        id="keep3-beyond-three-days",
    ),
    pytest.param(
        DAILY_KEEP3,
        [rev(f"r{i}", i * 4 * H, "daily") for i in range(12)],
        {},
        [],
        id="keep3-many-but-all-younger-than-3d",
    ),
    pytest.param(
        DAILY_KEEP3,
        [
            rev("new", 0 * D, "daily"),
            rev("young", 2 * D, "daily"),
            rev("x", 70 * H, "daily"),
            rev("old", 3 * D + M, "daily"),
        ],
        {"old": {"daily"}},
        ["old"],
        id="keep3-only-old-and-not-among-newest-three",
    ),
    pytest.param(
        DAILY_KEEP3,
        [rev("new", H, "daily"), rev("old1", 10 * D, "daily"), rev("old2", 20 * D, "daily")],
        {},
        [],
        id="keep3-old-but-among-newest-three",
    ),
    pytest.param(
        DAILY_KEEP7,
        days(10, "daily", M),
        {"d7": {"daily"}, "d8": {"daily"}, "d9": {"daily"}},
        ["d9", "d8", "d7"],
        id="keep7",
    ),
    pytest.param(
        DAILY_KEEP7,
        days(10, "daily"),
        {"d8": {"daily"}, "d9": {"daily"}},
        ["d9", "d8"],
        id="keep7-exactly-seven-days-is-kept",
    ),
    pytest.param(
        HOURLY_KEEP1,
        [
            rev("a", 10 * M, "hourly"),
            rev("b", 2 * H, "hourly", "daily"),
            rev("c", 3 * H, "hourly", "manual:before-upgrade"),
        ],
        {"b": {"hourly"}, "c": {"hourly"}},
        [],
        id="other-tags-keep-revision-alive",
    ),
    pytest.param(
        HOURLY_KEEP1,
        [rev("a", 10 * M, "hourly"), rev("m", 400 * D, "manual:keep-forever")],
        {},
        [],
        id="manual-tag-never-expires",
    ),
    pytest.param(
        MANUAL_IN_SCHEDULE,
        [rev("a", 10 * M, "manual:odd"), rev("b", 10 * D, "manual:odd")],
        {},
        [],
        id="manual-tag-in-schedule-still-never-expires",
    ),
    pytest.param(
        HOURLY_KEEP1,
        [
            rev("a", 10 * M, "hourly"),
            rev("b", 30 * D, "legacy"),
            rev("c", 31 * D, "legacy", "hourly"),
        ],
        {"c": {"hourly"}},
        [],
        id="unknown-tags-left-alone",
    ),
    pytest.param(
        HOURLY_KEEP1,
        [rev("a", 10 * M, "hourly"), rev("u", 5 * M), rev("v", 3 * D)],
        {},
        ["v"],
        id="untagged-revisions-deleted",
    ),
    pytest.param(
        HOURLY_KEEP1,
        [rev("a", 10 * M), rev("b", 2 * H, "hourly"), rev("c", 3 * H)],
        {},
        ["c"],
        id="untagged-newest-not-deleted",
    ),
    pytest.param(
        HOURLY_KEEP1,
        [rev("a", 30 * D, "hourly"), rev("b", 31 * D, "hourly"), rev("c", 32 * D, "hourly")],
        {"b": {"hourly"}, "c": {"hourly"}},
        ["c", "b"],
        id="everything-old-newest-kept",
    ),
    pytest.param(
        KEEP0,
        [rev("a", 2 * H, "hourly"), rev("b", 3 * H, "hourly")],
        {"b": {"hourly"}},
        ["b"],
        id="keep0-newest-still-kept",
    ),
    pytest.param(
        HOURLY_KEEP1,
        [rev("only", 100 * D, "hourly")],
        {},
        [],
        id="single-old-revision",
    ),
    pytest.param(
        HOURLY_KEEP1,
        [rev("x-2", 5 * H, "hourly"), rev("x-1", 5 * H, "hourly")],
        {"x-1": {"hourly"}},
        ["x-1"],
        id="same-timestamp-higher-id-is-newest",
    ),
]


@pytest.mark.parametrize(("schedule", "revisions", "remove", "delete"), CASES)
def test_expire(
    schedule: Schedule,
    revisions: list[RetainedRevision],
    remove: dict[str, set[str]],
    delete: list[str],
) -> None:
    plan = expire(revisions, schedule, NOW)
    assert plan == RetentionPlan(
        remove_tags={rev_id: frozenset(tags) for rev_id, tags in remove.items()},
        delete=delete,
    )


@pytest.mark.parametrize(("schedule", "revisions", "remove", "delete"), CASES)
def test_expire_ignores_input_order(
    schedule: Schedule,
    revisions: list[RetainedRevision],
    remove: dict[str, set[str]],
    delete: list[str],
) -> None:
    assert expire(list(reversed(revisions)), schedule, NOW) == expire(revisions, schedule, NOW)


def test_default_schedule_after_ten_days_of_hourly_backups() -> None:
    """Hourly backups for ten days, the one at midnight also tagged daily."""
    start = NOW.replace(hour=0, minute=5) - 10 * D
    revisions = []
    at = start
    while at <= NOW:
        tags = {"hourly", "daily"} if at.hour == 0 else {"hourly"}
        revisions.append(RetainedRevision(at.strftime("%Y%m%dT%H%M%SZ"), at, frozenset(tags)))
        at += H
    plan = expire(revisions, DEFAULT, NOW)
    survivors = {
        r.id: r.tags - plan.remove_tags.get(r.id, frozenset())
        for r in revisions
        if r.id not in plan.delete
    }
    assert sum("hourly" in tags for tags in survivors.values()) == 24
    assert sum("daily" in tags for tags in survivors.values()) == 7
    assert len(survivors) == 24 + 7 - 1  # today's 00:05 revision carries both
    assert all(tags for tags in survivors.values())
    assert revisions[-1].id in survivors


@pytest.mark.parametrize(
    ("tag", "manual"),
    [
        pytest.param("manual:before-upgrade", True, id="manual"),
        pytest.param("manual:", True, id="bare-prefix"),
        pytest.param("daily", False, id="schedule-tag"),
        pytest.param("Manual:x", False, id="case-sensitive"),
    ],
)
def test_is_manual(tag: str, manual: bool) -> None:
    assert is_manual(tag) is manual
