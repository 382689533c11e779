"""Slots, due tags, next run and backoff (lifeboat.schedule)."""

from __future__ import annotations

import datetime as dt
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lifeboat.model import Schedule, TagSpec
from lifeboat.schedule import (
    Plan,
    backoff,
    due_tags,
    job_offset,
    next_run,
    next_slot,
    previous_slot,
    slot_phase,
)

S = dt.timedelta(seconds=1)
M = dt.timedelta(minutes=1)
H = dt.timedelta(hours=1)
D = dt.timedelta(days=1)

HOURLY = TagSpec("hourly", H, 24)
DAILY = TagSpec("daily", D, 7)
WEEKLY = TagSpec("weekly", 7 * D, 4)
OFTEN = TagSpec("often", 20 * S, 3)
MINUTELY = TagSpec("minutely", M, 5)

DEFAULT = Schedule("default", (HOURLY, DAILY))
WITH_WEEKLY = Schedule("long", (HOURLY, DAILY, WEEKLY))
FAST = Schedule("fast", (OFTEN, MINUTELY))

# vm-web01's slots (golden values, see test_job_offset_golden):
#   hourly at hh:20:36, daily at 23:20:36, weekly on Tuesdays at 23:20:36,
#   every 20 s at ss = 16, 36, 56, every minute at ss = 36.
JOB = "vm-web01"
NOW = dt.datetime(2026, 11, 26, 19, 32, tzinfo=dt.UTC)  # a Thursday


def t(text: str) -> dt.datetime:
    """An ISO time; UTC unless it says otherwise."""
    value = dt.datetime.fromisoformat(text)
    return value if value.tzinfo else value.replace(tzinfo=dt.UTC)


# --- job_offset ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "offset"),
    [
        pytest.param("vm-web01", 8311827162218944836, id="vm-web01"),
        pytest.param("vm-db01", 4684601685578353333, id="vm-db01"),
        pytest.param("a", 14598278634844962250, id="single-letter"),
    ],
)
def test_job_offset_golden(name: str, offset: int) -> None:
    # Changing the hash would move every job's slots: these values are a contract.
    assert job_offset(name) == offset


def test_job_offset_identical_across_calls() -> None:
    assert [job_offset("vm-web01") for _ in range(3)] == [job_offset("vm-web01")] * 3


def test_job_offset_differs_between_jobs() -> None:
    names = [f"vm-{i:03d}" for i in range(200)]
    assert len({job_offset(name) for name in names}) == len(names)
    assert len({slot_phase(name, H) for name in names}) > 100  # spread over the hour


# --- previous_slot / next_slot --------------------------------------------------


@pytest.mark.parametrize(
    ("tag", "at", "previous", "following"),
    [
        pytest.param(
            HOURLY,
            "2026-11-26T19:32:00",
            "2026-11-26T19:20:36",
            "2026-11-26T20:20:36",
            id="hourly-mid-interval",
        ),
        pytest.param(
            HOURLY,
            "2026-11-26T19:20:36",
            "2026-11-26T19:20:36",
            "2026-11-26T20:20:36",
            id="hourly-exactly-at-slot",
        ),
        pytest.param(
            HOURLY,
            "2026-11-26T19:20:35.999999",
            "2026-11-26T18:20:36",
            "2026-11-26T19:20:36",
            id="hourly-just-before-slot",
        ),
        pytest.param(
            HOURLY,
            "2026-11-26T21:32:00+02:00",
            "2026-11-26T19:20:36",
            "2026-11-26T20:20:36",
            id="hourly-other-timezone",
        ),
        pytest.param(
            DAILY, "2026-11-26T19:32:00", "2026-11-25T23:20:36", "2026-11-26T23:20:36", id="daily"
        ),
        pytest.param(
            DAILY,
            "2026-12-31T23:59:59",
            "2026-12-31T23:20:36",
            "2027-01-01T23:20:36",
            id="daily-year-end",
        ),
        pytest.param(
            WEEKLY,
            "2026-11-26T19:32:00",
            "2026-11-24T23:20:36",
            "2026-12-01T23:20:36",
            id="weekly-tuesdays",
        ),
        pytest.param(
            OFTEN,
            "2026-11-26T00:00:00",
            "2026-11-25T23:59:56",
            "2026-11-26T00:00:16",
            id="20s-across-midnight",
        ),
        pytest.param(
            OFTEN,
            "2026-11-26T00:00:16",
            "2026-11-26T00:00:16",
            "2026-11-26T00:00:36",
            id="20s-at-slot",
        ),
        pytest.param(
            MINUTELY,
            "2026-11-26T00:00:40",
            "2026-11-26T00:00:36",
            "2026-11-26T00:01:36",
            id="minutely",
        ),
    ],
)
def test_slots(tag: TagSpec, at: str, previous: str, following: str) -> None:
    assert previous_slot(JOB, tag, t(at)) == t(previous)
    assert next_slot(JOB, tag, t(at)) == t(following)


@pytest.mark.parametrize("name", ["vm-web01", "vm-db01", "a", "b", "x" * 64])
@pytest.mark.parametrize(
    ("short", "long"),
    [
        pytest.param(HOURLY, DAILY, id="hourly-daily"),
        pytest.param(DAILY, WEEKLY, id="daily-weekly"),
        pytest.param(HOURLY, WEEKLY, id="hourly-weekly"),
        pytest.param(OFTEN, MINUTELY, id="20s-minutely"),
    ],
)
def test_longer_slots_coincide_with_shorter_slots(name: str, short: TagSpec, long: TagSpec) -> None:
    at = NOW
    for _ in range(5):
        slot = next_slot(name, long, at)
        assert previous_slot(name, short, slot) == slot
        at = slot


@pytest.mark.parametrize(
    "interval",
    [
        pytest.param(dt.timedelta(0), id="zero"),
        pytest.param(-H, id="negative"),
        pytest.param(dt.timedelta(seconds=1.5), id="fractional-seconds"),
    ],
)
def test_bad_interval_rejected(interval: dt.timedelta) -> None:
    with pytest.raises(ValueError, match="interval"):
        previous_slot(JOB, TagSpec("bad", interval, 1), NOW)


# --- due_tags ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("schedule", "last", "due"),
    [
        pytest.param(DEFAULT, {}, {"hourly", "daily"}, id="never-backed-up-all-due"),
        pytest.param(
            WITH_WEEKLY, {}, {"hourly", "daily", "weekly"}, id="never-backed-up-weekly-due-now"
        ),
        pytest.param(
            DEFAULT,
            {"hourly": "2026-11-26T19:20:36", "daily": "2026-11-25T23:20:36"},
            set(),
            id="up-to-date",
        ),
        pytest.param(
            DEFAULT,
            {"hourly": "2026-11-26T19:20:35", "daily": "2026-11-25T23:20:36"},
            {"hourly"},
            id="hourly-one-second-before-slot",
        ),
        pytest.param(
            DEFAULT,
            {"hourly": "2026-11-26T18:20:40", "daily": "2026-11-25T23:20:40"},
            {"hourly"},
            id="hourly-missed",
        ),
        pytest.param(
            DEFAULT,
            {"hourly": "2026-11-26T19:20:40", "daily": "2026-11-24T23:20:40"},
            {"daily"},
            id="daily-missed",
        ),
        pytest.param(
            DEFAULT,
            {"hourly": "2026-11-23T10:00:00", "daily": "2026-11-23T10:00:00"},
            {"hourly", "daily"},
            id="days-of-downtime",
        ),
        pytest.param(
            DEFAULT,
            {"manual:before-upgrade": "2026-11-26T19:00:00"},
            {"hourly"},
            id="only-manual-revision-measures-from-it",
        ),
        pytest.param(
            WITH_WEEKLY,
            {"hourly": "2026-11-26T19:20:36", "daily": "2026-11-25T23:20:36"},
            set(),
            id="new-weekly-tag-waits-for-its-slot",
        ),
        pytest.param(
            DEFAULT,
            {
                "hourly": "2026-11-26T19:20:36",
                "daily": "2026-11-25T23:20:36",
                "legacy": "2020-01-01T00:00:00",
            },
            set(),
            id="unknown-tag-ignored",
        ),
        pytest.param(
            FAST,
            {"often": "2026-11-26T19:31:56", "minutely": "2026-11-26T19:31:36"},
            set(),
            id="20s-up-to-date",
        ),
        pytest.param(
            FAST,
            {"often": "2026-11-26T19:31:36", "minutely": "2026-11-26T19:31:36"},
            {"often"},
            id="20s-missed-one",
        ),
    ],
)
def test_due_tags(schedule: Schedule, last: dict[str, str], due: set[str]) -> None:
    last_times = {tag: t(when) for tag, when in last.items()}
    assert due_tags(JOB, schedule, last_times, NOW) == frozenset(due)


# --- next_run ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("schedule", "last", "now", "time", "tags"),
    [
        pytest.param(
            DEFAULT,
            {},
            "2026-11-26T19:32:00",
            "2026-11-26T19:32:00",
            {"hourly", "daily"},
            id="never-backed-up-runs-now",
        ),
        pytest.param(
            DEFAULT,
            {"hourly": "2026-11-26T19:20:36", "daily": "2026-11-25T23:20:36"},
            "2026-11-26T19:32:00",
            "2026-11-26T20:20:36",
            {"hourly"},
            id="next-hourly-slot",
        ),
        pytest.param(
            DEFAULT,
            {"hourly": "2026-11-26T22:20:36", "daily": "2026-11-25T23:20:36"},
            "2026-11-26T22:32:00",
            "2026-11-26T23:20:36",
            {"hourly", "daily"},
            id="daily-slot-carries-hourly",
        ),
        pytest.param(
            WITH_WEEKLY,
            {
                "hourly": "2026-12-01T22:20:36",
                "daily": "2026-11-30T23:20:36",
                "weekly": "2026-11-24T23:20:36",
            },
            "2026-12-01T22:32:00",
            "2026-12-01T23:20:36",
            {"hourly", "daily", "weekly"},
            id="weekly-slot-carries-all",
        ),
        pytest.param(
            DEFAULT,
            {"hourly": "2026-11-26T18:20:36", "daily": "2026-11-25T23:20:36"},
            "2026-11-26T19:32:00",
            "2026-11-26T19:32:00",
            {"hourly"},
            id="due-hourly-runs-now-alone",
        ),
        pytest.param(
            DEFAULT,
            {"hourly": "2026-11-26T22:20:36", "daily": "2026-11-25T23:20:36"},
            "2026-11-26T23:20:36",
            "2026-11-26T23:20:36",
            {"hourly", "daily"},
            id="woken-exactly-at-coinciding-slot",
        ),
        pytest.param(
            DEFAULT,
            {"hourly": "2026-11-26T20:25:00", "daily": "2026-11-26T20:25:00"},
            "2026-11-26T19:32:00",
            "2026-11-26T21:20:36",
            {"hourly"},
            id="revision-from-the-future-clock-skew",
        ),
        pytest.param(
            WITH_WEEKLY,
            {"hourly": "2026-11-26T19:20:36", "daily": "2026-11-25T23:20:36"},
            "2026-11-26T19:32:00",
            "2026-11-26T20:20:36",
            {"hourly"},
            id="new-weekly-tag-not-immediate",
        ),
        pytest.param(
            FAST,
            {"often": "2026-11-26T19:31:56", "minutely": "2026-11-26T19:31:36"},
            "2026-11-26T19:32:00",
            "2026-11-26T19:32:16",
            {"often"},
            id="20s-next",
        ),
        pytest.param(
            FAST,
            {"often": "2026-11-26T19:32:16", "minutely": "2026-11-26T19:31:36"},
            "2026-11-26T19:32:20",
            "2026-11-26T19:32:36",
            {"often", "minutely"},
            id="20s-coincides-with-minutely",
        ),
    ],
)
def test_next_run(
    schedule: Schedule, last: dict[str, str], now: str, time: str, tags: set[str]
) -> None:
    last_times = {tag: t(when) for tag, when in last.items()}
    assert next_run(JOB, schedule, last_times, t(now)) == Plan(t(time), frozenset(tags))


def test_next_run_empty_schedule_rejected() -> None:
    with pytest.raises(ValueError, match="no tags"):
        next_run(JOB, Schedule("empty", ()), {}, NOW)


@pytest.mark.parametrize(
    "downtime",
    [
        pytest.param(2 * H, id="two-hours"),
        pytest.param(3 * D, id="three-days"),
        pytest.param(30 * D, id="a-month"),
    ],
)
def test_catch_up_is_one_backup_with_the_union_of_tags(downtime: dt.timedelta) -> None:
    last_slot = previous_slot(JOB, WEEKLY, NOW - downtime)
    last = {"hourly": last_slot, "daily": last_slot, "weekly": last_slot}
    expected = {tag.name for tag in WITH_WEEKLY.tags if previous_slot(JOB, tag, NOW) > last_slot}
    plan = next_run(JOB, WITH_WEEKLY, last, NOW)
    assert plan == Plan(NOW, frozenset(expected))
    assert "hourly" in plan.tags
    # After the catch-up backup nothing is due any more: the next run is a slot.
    last.update(dict.fromkeys(plan.tags, NOW))
    assert due_tags(JOB, WITH_WEEKLY, last, NOW) == frozenset()
    assert next_run(JOB, WITH_WEEKLY, last, NOW).time == next_slot(JOB, HOURLY, NOW)


@pytest.mark.parametrize("name", ["vm-web01", "vm-db01", "a"])
def test_three_days_of_scheduling(name: str) -> None:
    """Drive next_run like the scheduler does, backing up whenever it says."""
    start = NOW
    end = start + 3 * D
    last: dict[str, dt.datetime] = {}
    runs: list[Plan] = []
    now = start
    while now < end:
        plan = next_run(name, WITH_WEEKLY, last, now)
        runs.append(plan)
        last.update(dict.fromkeys(plan.tags, plan.time))
        now = plan.time + 5 * S  # the backup takes a few seconds
    assert runs[0] == Plan(start, frozenset({"hourly", "daily", "weekly"}))
    later = runs[1:]
    assert all(p.time == previous_slot(name, HOURLY, p.time) for p in later)
    assert all("hourly" in p.tags for p in later)
    daily = [p.time for p in later if "daily" in p.tags]
    assert daily == [p.time for p in later if p.time == previous_slot(name, DAILY, p.time)]
    assert len(daily) == 3
    assert len({p.time for p in runs}) == len(runs)


_RESTART_SCRIPT = """
import datetime as dt
from lifeboat.model import Schedule, TagSpec
from lifeboat.schedule import next_run
schedule = Schedule("s", (TagSpec("hourly", dt.timedelta(hours=1), 24),
                          TagSpec("daily", dt.timedelta(days=1), 7)))
now = dt.datetime(2026, 11, 26, 19, 32, tzinfo=dt.UTC)
last = {"hourly": now - dt.timedelta(hours=1)}
for name in ("vm-web01", "vm-db01", "a"):
    plan = next_run(name, schedule, last, now)
    print(name, plan.time.isoformat(), sorted(plan.tags))
    plan = next_run(name, schedule, {"hourly": now, "daily": now}, now)
    print(name, plan.time.isoformat(), sorted(plan.tags))
"""


def test_kill_and_restart_gives_the_same_plans() -> None:
    """A fresh interpreter (different hash seed) computes exactly the same plans."""
    outputs = set()
    for seed in ("0", "1", "12345"):
        result = subprocess.run(
            [sys.executable, "-c", _RESTART_SCRIPT],
            env={**os.environ, "PYTHONHASHSEED": seed},
            cwd=Path(__file__).resolve().parents[1],
            capture_output=True,
            text=True,
            check=True,
        )
        outputs.add(result.stdout)
    assert len(outputs) == 1
    now = NOW
    expected = []
    for name in ("vm-web01", "vm-db01", "a"):
        for last in ({"hourly": now - H}, {"hourly": now, "daily": now}):
            plan = next_run(name, DEFAULT, last, now)
            expected.append(f"{name} {plan.time.isoformat()} {sorted(plan.tags)}")
    assert outputs == {"\n".join(expected) + "\n"}


# --- backoff ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("failures", "base", "cap", "delay"),
    [
        pytest.param(0, M, H, dt.timedelta(0), id="no-failures"),
        pytest.param(1, M, H, M, id="first-failure"),
        pytest.param(2, M, H, 2 * M, id="second"),
        pytest.param(3, M, H, 4 * M, id="third"),
        pytest.param(6, M, H, 32 * M, id="sixth"),
        pytest.param(7, M, H, H, id="capped-64m"),
        pytest.param(100, M, H, H, id="many"),
        pytest.param(10**9, M, H, H, id="absurdly-many"),
        pytest.param(1, 10 * S, 5 * M, 10 * S, id="custom-first"),
        pytest.param(5, 10 * S, 5 * M, 160 * S, id="custom-fifth"),
        pytest.param(6, 10 * S, 5 * M, 5 * M, id="custom-capped"),
    ],
)
def test_backoff(failures: int, base: dt.timedelta, cap: dt.timedelta, delay: dt.timedelta) -> None:
    assert backoff(failures, base, cap) == delay


def test_backoff_defaults() -> None:
    assert [backoff(n) for n in range(8)] == [
        dt.timedelta(0),
        M,
        2 * M,
        4 * M,
        8 * M,
        16 * M,
        32 * M,
        H,
    ]


def test_backoff_negative_rejected() -> None:
    with pytest.raises(ValueError):
        backoff(-1)
