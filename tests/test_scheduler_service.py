"""SchedulerService through a real in-process grpc.aio server on port 0, scheduling real
backupd servers (in-process, real worker, file sources) on real ports.

The scheduler runs on a clock the test turns by hand (tests.support.clock), and so does
the in-process backupd's `lifeboat.clock.now`: delays and slots take no time, and once the
clock settled, what the scheduler did is all it does until the clock moves. Backups
themselves run in real time; a freeze hook waiting for a gate file holds one while the
test looks."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import random
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest
import yaml

from backupd import server as backupd_server
from backupd.worker import BackupWorker
from lifeboat import clock
from lifeboat import config as config_module
from lifeboat.admin import main as admin_main
from lifeboat.bootstrap import GrpcDaemon
from lifeboat.config import HostConfig
from lifeboat.model import Schedule, TagSpec
from lifeboat.operation_service import operation_service
from lifeboat.operations import OperationKind, OperationRegistry, OperationState
from lifeboat.schedule import next_run, next_slot, previous_slot
from lifeboat.v1 import resources_pb2
from lifeboat.v1 import scheduler_pb2 as pb
from lifeboat.v1 import scheduler_pb2_grpc as pb_grpc
from scheduler import server as scheduler_server
from scheduler.fleet import Scheduler
from scheduler.hosts import HostClient, HostClientFactory
from scheduler.remote import grpc_clients
from scheduler.settings import SchedulerSettings
from tests.support.bad_configs import BAD_FILES, Spoiler, mend
from tests.support.clock import FakeClock
from tests.support.processes import free_port

T = TypeVar("T")
S = dt.timedelta(seconds=1)

SCHEDULES = {
    "default": {"hourly": {"interval": "1h", "keep": 24}, "daily": {"interval": "1d", "keep": 7}},
}
# The scheduler's own delays: time is turned by hand, so they need not be short.
SETTINGS = SchedulerSettings()
POLL = SETTINGS.poll_interval


def schedule_of(config: config_module.Config, name: str = "default") -> Schedule:
    return config.schedules[name]


def tag_spec(config: config_module.Config, name: str) -> TagSpec:
    return next(tag for tag in schedule_of(config).tags if tag.name == name)


def quiet_name(prefix: str, config: config_module.Config, window: dt.timedelta) -> str:
    """A job name with no slot of the default schedule within `window` of now, so the
    only backups a test sees are the ones it expects, and whose next slot is an hourly
    one alone (not also its daily one)."""
    now = clock.now()
    schedule = schedule_of(config)
    hourly, daily = tag_spec(config, "hourly"), tag_spec(config, "daily")
    for index in range(100_000):
        name = f"{prefix}-{index}"
        if all(
            next_slot(name, tag, now - window) > now + window for tag in schedule.tags
        ) and next_slot(name, hourly, now) < next_slot(name, daily, now):
            return name
    raise AssertionError("no quiet job name")


async def eventually(
    check: Callable[[], Awaitable[T | None]],
    what: str,
    timeout: float = 20.0,
    interval: float = 0.01,
) -> T:
    """Wait (in real time) for something real to happen: a backup to end, a revision."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = await check()
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(interval)


class Fleet:
    """Real in-process backupd servers and one scheduler on port 0, on one fake clock."""

    def __init__(self, tmp_path: Path, fake: FakeClock) -> None:
        self.tmp_path = tmp_path
        self.clock = fake
        self.hosts: dict[str, dict[str, Any]] = {}
        self.jobs: dict[str, dict[str, Any]] = {}
        self.worker_limit = 2
        self.backupds: dict[str, tuple[GrpcDaemon, BackupWorker]] = {}
        self.backupd_limits: dict[str, int | None] = {}
        self.others: list[GrpcDaemon] = []
        self.scheduler_daemon: GrpcDaemon | None = None
        self.scheduler: Scheduler | None = None
        self.channel: grpc.aio.Channel | None = None
        self.stub: pb_grpc.SchedulerServiceStub | None = None
        self.path = tmp_path / "lifeboat.yaml"
        self.address = ""
        self.gate = tmp_path / "gate"

    def add_host(self, name: str) -> None:
        self.hosts[name] = {
            "backupd": f"127.0.0.1:{free_port()}",
            "restored": f"127.0.0.1:{free_port()}",
            "base-dir": str(self.tmp_path / name),
        }

    def add_job(self, name: str, host: str, freeze: str = "", path: str = "") -> None:
        source = path or str(self.tmp_path / f"{name}.raw")
        if not path:
            Path(source).write_bytes(random.randbytes(64 * 1024))
        self.jobs[name] = {
            "host": host,
            "schedule": "default",
            "source": {"type": "file", "path": source},
            **({"freeze-command": freeze} if freeze else {}),
        }

    def gated(self) -> str:
        """A freeze hook that holds the job's backups until the gate opens."""
        return f"while [ ! -e {self.gate} ]; do sleep 0.01; done"

    def open_gate(self) -> None:
        self.gate.touch()

    def close_gate(self) -> None:
        self.gate.unlink(missing_ok=True)

    def write(self, path: Path | None = None, worker_limit: int | None = None) -> Path:
        path = path or self.path
        document = {
            "global": {
                "base-dir": str(self.tmp_path / "repo"),
                "worker-limit": worker_limit or self.worker_limit,
            },
            "hosts": self.hosts,
            "schedules": SCHEDULES,
            "jobs": self.jobs,
        }
        path.write_text(yaml.safe_dump(document))
        return path

    def config(self) -> config_module.Config:
        return config_module.load(str(self.write()))

    async def start_backupd(self, host: str, worker_limit: int | None = None) -> BackupWorker:
        path = self.write(self.tmp_path / f"backupd-{host}.yaml", worker_limit)
        daemon, worker = backupd_server.build(
            config_module.load(str(path)), host, self.hosts[host]["backupd"]
        )
        await daemon.start()
        self.backupds[host] = (daemon, worker)
        self.backupd_limits[host] = worker_limit
        return worker

    async def reload_backupds(self) -> None:
        """Write every backupd's config file again and reload it, as SIGHUP does: a job the
        scheduler starts must be configured on its host."""
        for host, (daemon, _) in self.backupds.items():
            self.write(self.tmp_path / f"backupd-{host}.yaml", self.backupd_limits[host])
            await daemon.reload()

    async def start_restored(self, host: str, registry: OperationRegistry) -> None:
        """restored's real OperationService over a registry the test fills."""
        registry.bind_loop(asyncio.get_running_loop())
        daemon = GrpcDaemon("restored", self.hosts[host]["restored"], [operation_service(registry)])
        await daemon.start()
        self.others.append(daemon)

    async def start_scheduler(
        self, clients: HostClientFactory | None = None
    ) -> pb_grpc.SchedulerServiceStub:
        """Start the scheduler and let it settle: every host scanned, due backups started."""
        daemon, scheduler = scheduler_server.build(
            self.config(), "127.0.0.1:0", SETTINGS, clients, self.clock
        )
        port = await daemon.start()
        self.address = f"127.0.0.1:{port}"
        scheduler.start()
        self.scheduler_daemon, self.scheduler = daemon, scheduler
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        self.stub = pb_grpc.SchedulerServiceStub(self.channel)
        await self.settle()
        return self.stub

    async def turn(self, seconds: float) -> None:
        """Move the clock on; wait until every host task of the scheduler sleeps again."""
        assert self.scheduler is not None
        await self.clock.turn(seconds, len(self.scheduler.hosts))

    async def settle(self) -> None:
        """Let the scheduler act on what it was told (RunJob, reload) at this time."""
        await self.turn(0)

    async def finish_backups(self) -> None:
        """Let every running backup end, then the scheduler's next poll see how."""

        async def none_running() -> bool:
            return not any(
                worker.registry.running(OperationKind.BACKUP)
                for _, worker in self.backupds.values()
            )

        await eventually(none_running, "running backups to end")
        await self.turn(POLL)

    def worker(self, host: str) -> BackupWorker:
        return self.backupds[host][1]

    async def job(self, name: str) -> pb.JobView:
        assert self.stub is not None
        return (await self.stub.GetJob(pb.GetJobRequest(job=name))).job

    def revisions(self, host: str, job: str) -> list[Any]:
        worker = self.worker(host)
        return worker.list_revisions(job) if (worker.settings.base_dir / job).is_dir() else []

    def backups(self, host: str, job: str) -> list[Any]:
        return self.worker(host).registry.select(job=job, kind=OperationKind.BACKUP)

    async def wait_revisions(self, host: str, job: str, count: int) -> list[Any]:
        async def enough() -> list[Any] | None:
            found = self.revisions(host, job)
            return found if len(found) >= count else None

        return await eventually(enough, f"{count} revisions of {job} on {host}")

    async def idle(self, name: str) -> pb.JobView:
        """The job's view once its backup ended and the scheduler saw it end."""
        await self.finish_backups()
        view = await self.job(name)
        assert view.state != pb.JOB_STATE_RUNNING, view
        assert view.last_result not in (
            resources_pb2.OPERATION_STATE_UNSPECIFIED,
            resources_pb2.OPERATION_STATE_RUNNING,
        ), view
        return view

    async def stop(self) -> None:
        self.open_gate()  # a held backup would hold up its worker's shutdown
        if self.channel is not None:
            await self.channel.close()
        if self.scheduler_daemon is not None:
            await self.scheduler_daemon.stop(grace=0)
        for daemon, _ in self.backupds.values():
            await daemon.stop(grace=0)
        for daemon in self.others:
            await daemon.stop(grace=0)


@pytest.fixture
async def fleet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Fleet]:
    fake = FakeClock(clock.now())
    monkeypatch.setattr(clock, "now", fake.now)  # backupd's revisions and operations
    running = Fleet(tmp_path, fake)
    try:
        yield running
    finally:
        await running.stop()


def when(view: pb.JobView, field: str) -> dt.datetime | None:
    if not view.HasField(field):
        return None
    stamp: dt.datetime = getattr(view, field).ToDatetime(tzinfo=dt.UTC)
    return stamp


def tag_times(revisions: list[Any]) -> dict[str, dt.datetime]:
    times: dict[str, dt.datetime] = {}
    for meta in revisions:
        for tag in meta.tags:
            times[tag] = max(times.get(tag, meta.timestamp), meta.timestamp)
    return times


async def backup_at(worker: BackupWorker, job: str, tags: list[str], at: dt.datetime) -> None:
    """A real revision whose timestamp is `at` (the clock is turned back while it is written)."""
    real_now = clock.now
    offset = at - real_now()
    clock.now = lambda: real_now() + offset  # type: ignore[assignment]
    try:
        record, started = await worker.start_backup(job, tags)
        assert started
        async for update in worker.registry.watch(record.name):
            record = update
        assert record.state == OperationState.SUCCEEDED, record.error
    finally:
        clock.now = real_now  # type: ignore[assignment]


# --- catch-up and slots -----------------------------------------------------------------


async def test_never_backed_up_job_runs_at_once_then_waits_for_its_slot(fleet: Fleet) -> None:
    fleet.add_host("b1")
    config = fleet.config()
    name = quiet_name("vm-new", config, dt.timedelta(minutes=2))
    fleet.add_job(name, "b1")
    await fleet.start_backupd("b1")
    await fleet.start_scheduler()

    view = await fleet.idle(name)
    revisions = fleet.revisions("b1", name)
    assert [r.tags for r in revisions] == [["daily", "hourly"]]
    assert view.last_result == resources_pb2.OPERATION_STATE_SUCCEEDED
    assert view.state == pb.JOB_STATE_WAITING
    assert when(view, "last_backup_time") == revisions[0].timestamp
    expected = next_run(name, schedule_of(config), tag_times(revisions), clock.now())
    assert when(view, "next_run_time") == expected.time
    assert set(view.next_tags) == expected.tags == {"hourly"}
    assert view.job.host == "b1" and view.job.schedule.name == "default"


def catch_up_name(config: config_module.Config, last: dt.datetime) -> str:
    """A job whose daily slot did not pass since `last` and whose hourly slot is not near."""
    now = clock.now()
    hourly, daily = tag_spec(config, "hourly"), tag_spec(config, "daily")
    for index in range(100_000):
        name = f"vm-late-{index}"
        if (
            previous_slot(name, daily, now) < last - dt.timedelta(minutes=1)
            and next_slot(name, hourly, now) > now + dt.timedelta(minutes=2)
            and previous_slot(name, hourly, now) < now - dt.timedelta(minutes=2)
        ):
            return name
    raise AssertionError("no suitable job name")


async def caught_up(fleet: Fleet) -> tuple[str, config_module.Config]:
    """A job backed up 5 hours ago (daily and hourly) and caught up since (hourly)."""
    fleet.add_host("b1")
    last = clock.now() - dt.timedelta(hours=5)
    name = catch_up_name(fleet.config(), last)
    fleet.add_job(name, "b1")
    config = fleet.config()
    worker = await fleet.start_backupd("b1")
    await backup_at(worker, name, ["daily", "hourly"], last)
    await fleet.start_scheduler()
    await fleet.idle(name)
    return name, config


async def test_missed_slots_make_one_catch_up_backup_of_the_due_tags(fleet: Fleet) -> None:
    name, config = await caught_up(fleet)
    await fleet.turn(POLL)  # a wrong second backup would start by now

    revisions = fleet.revisions("b1", name)
    assert [r.tags for r in revisions] == [["daily", "hourly"], ["hourly"]]
    assert len(fleet.backups("b1", name)) == 2  # the old one and exactly one catch-up
    view = await fleet.job(name)
    hourly = tag_spec(config, "hourly")
    assert when(view, "next_run_time") == next_slot(name, hourly, clock.now())
    assert list(view.next_tags) == ["hourly"]


def delete_newest_revision(fleet: Fleet, name: str) -> None:
    """By hand, as an operator might: the .rev first (it commits the revision), then the rest."""
    job_dir = fleet.worker("b1").settings.base_dir / name
    newest = fleet.revisions("b1", name)[-1].id
    for suffix in (".rev", "", ".sums"):
        (job_dir / f"{newest}{suffix}").unlink()


def delete_every_revision(fleet: Fleet, name: str) -> None:
    """What DeleteJobData leaves: no job directory at all."""
    shutil.rmtree(fleet.worker("b1").settings.base_dir / name)


@pytest.mark.parametrize(
    ("delete", "kept", "tags"),
    [
        pytest.param(delete_newest_revision, 1, ["hourly"], id="newest-revision-deleted"),
        pytest.param(delete_every_revision, 0, ["daily", "hourly"], id="every-revision-deleted"),
    ],
)
async def test_revisions_deleted_behind_its_back_are_noticed_at_the_next_scan(
    fleet: Fleet,
    caplog: pytest.LogCaptureFixture,
    delete: Callable[[Fleet, str], None],
    kept: int,
    tags: list[str],
) -> None:
    caplog.set_level(logging.INFO, logger="lifeboat.scheduler")
    name, _ = await caught_up(fleet)
    planned = when(await fleet.job(name), "next_run_time")
    assert planned is not None and planned > clock.now() + dt.timedelta(minutes=2)
    delete(fleet, name)
    assert len(fleet.revisions("b1", name)) == kept

    next_scan = SETTINGS.scan_interval  # the first scan was at the start, at 0
    await fleet.turn(next_scan - fleet.clock.monotonic() - 1)
    assert len(fleet.backups("b1", name)) == 2
    assert when(await fleet.job(name), "next_run_time") == planned  # not scanned yet

    await fleet.turn(1)  # the scan: the job is due again, at once
    assert len(fleet.backups("b1", name)) == 3
    assert fleet.backups("b1", name)[-1].tags == tuple(tags)
    assert f"{name}: the newest revision tagged {','.join(tags)} is gone from host b1" in (
        caplog.text
    )
    revisions = await fleet.wait_revisions("b1", name, kept + 1)
    assert revisions[-1].tags == tags


async def test_running_backup_is_adopted_not_doubled(fleet: Fleet) -> None:
    fleet.add_host("b1")
    name = quiet_name("vm-busy", fleet.config(), dt.timedelta(minutes=2))
    fleet.add_job(name, "b1", freeze=fleet.gated())
    worker = await fleet.start_backupd("b1")
    record, _ = await worker.start_backup(name, ["daily", "hourly"])

    await fleet.start_scheduler()
    view = await fleet.job(name)
    assert view.state == pb.JOB_STATE_RUNNING
    assert view.next_tags == ["hourly"]  # projected: after the running one succeeds
    fleet.open_gate()
    view = await fleet.idle(name)
    assert view.last_result == resources_pb2.OPERATION_STATE_SUCCEEDED
    assert [op.name for op in fleet.backups("b1", name)] == [record.name]
    assert len(fleet.revisions("b1", name)) == 1


# --- load, failures, hosts --------------------------------------------------------------


async def test_no_free_slot_on_backupd_is_retried_soon_not_a_failure(
    fleet: Fleet, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="lifeboat.scheduler")
    fleet.add_host("b1")
    config = fleet.config()
    slow = quiet_name("vm-slow", config, dt.timedelta(minutes=2))
    quick = quiet_name("vm-quick", config, dt.timedelta(minutes=2))
    fleet.add_job(slow, "b1", freeze=fleet.gated())
    fleet.add_job(quick, "b1", freeze=fleet.gated())
    await fleet.start_backupd("b1", worker_limit=1)  # the scheduler believes it is 2
    await fleet.start_scheduler()
    assert "is busy, retrying soon" in caplog.text
    started = [job for job in (slow, quick) if fleet.backups("b1", job)]
    assert len(started) == 1

    fleet.open_gate()
    await fleet.finish_backups()
    await fleet.turn(SETTINGS.busy_retry)
    await fleet.finish_backups()
    for job in (slow, quick):
        view = await fleet.job(job)
        assert view.failures == 0, view.last_error
        assert view.last_result == resources_pb2.OPERATION_STATE_SUCCEEDED
        assert len(fleet.revisions("b1", job)) == 1


async def test_failing_job_backs_off_exponentially_and_blocks_nobody(fleet: Fleet) -> None:
    fleet.add_host("b1")
    config = fleet.config()
    broken = quiet_name("vm-broken", config, dt.timedelta(minutes=5))
    fine = quiet_name("vm-fine", config, dt.timedelta(minutes=5))
    fleet.add_job(broken, "b1", path=str(fleet.tmp_path / "missing.raw"))
    fleet.add_job(fine, "b1")
    fleet.worker_limit = 1
    await fleet.start_backupd("b1")
    await fleet.start_scheduler()  # the broken one first: its name sorts first

    await fleet.finish_backups()  # it failed; the fine one starts meanwhile
    base = SETTINGS.failure_backoff_base
    first = await fleet.job(broken)
    assert first.state == pb.JOB_STATE_BACKING_OFF
    assert first.failures == 1 and first.backoff.ToTimedelta() == base
    assert first.last_result == resources_pb2.OPERATION_STATE_FAILED
    assert "missing.raw" in first.last_error
    await fleet.wait_revisions("b1", fine, 1)
    await fleet.finish_backups()
    assert len(fleet.backups("b1", broken)) == 1

    await fleet.turn(base.total_seconds())
    await fleet.finish_backups()
    second = await fleet.job(broken)
    assert second.failures == 2 and second.backoff.ToTimedelta() == 2 * base
    attempts = fleet.backups("b1", broken)
    assert attempts[1].create_time - attempts[0].end_time >= base  # waited for the backoff


async def test_retry_later_runs_again_after_a_short_delay(fleet: Fleet) -> None:
    fleet.add_host("b1")
    name = quiet_name("vm-frozen", fleet.config(), dt.timedelta(minutes=5))
    fleet.add_job(name, "b1", freeze="exit 75")
    await fleet.start_backupd("b1")
    await fleet.start_scheduler()

    view = await fleet.idle(name)
    assert view.last_result == resources_pb2.OPERATION_STATE_RETRY_LATER
    assert view.failures == 0 and view.state == pb.JOB_STATE_WAITING
    first = fleet.backups("b1", name)[0]
    assert first.end_time is not None
    retry = when(view, "next_run_time")
    assert retry is not None
    delay = SETTINGS.retry_later_delay
    assert first.end_time + delay <= retry <= first.end_time + delay + POLL * S
    await fleet.turn((retry - clock.now()).total_seconds())
    attempts = fleet.backups("b1", name)
    assert len(attempts) == 2
    assert attempts[1].create_time >= retry


async def test_unreachable_host_is_reported_and_retried_while_others_carry_on(
    fleet: Fleet,
) -> None:
    fleet.add_host("b1")
    fleet.add_host("b2")
    config = fleet.config()
    here = quiet_name("vm-here", config, dt.timedelta(minutes=5))
    there = quiet_name("vm-there", config, dt.timedelta(minutes=5))
    fleet.add_job(here, "b1")
    fleet.add_job(there, "b2")
    await fleet.start_backupd("b1")
    await fleet.start_scheduler()

    await fleet.wait_revisions("b1", here, 1)
    view = await fleet.job(there)
    assert view.state == pb.JOB_STATE_HOST_UNREACHABLE
    assert fleet.hosts["b2"]["backupd"] in view.last_error
    assert not view.HasField("next_run_time")

    await fleet.start_backupd("b2")  # the host comes back

    async def backed_up() -> bool:
        # gRPC itself waits (in real time) before it dials the address again.
        await fleet.turn(SETTINGS.host_backoff_base.total_seconds())
        return bool(fleet.backups("b2", there))

    await eventually(backed_up, "b2 to be scanned again", interval=0.1)
    view = await fleet.idle(there)
    assert view.last_result == resources_pb2.OPERATION_STATE_SUCCEEDED
    assert view.last_error == ""


async def test_restores_defer_backups_until_they_finish(fleet: Fleet) -> None:
    fleet.add_host("b1")
    name = quiet_name("vm-restoring", fleet.config(), dt.timedelta(minutes=2))
    fleet.add_job(name, "b1")
    registry = OperationRegistry("b1")
    await fleet.start_restored("b1", registry)
    restore = registry.create(OperationKind.RESTORE, name, target="/srv/restore/x.raw")
    registry.start(restore)
    await fleet.start_backupd("b1")
    await fleet.start_scheduler()

    assert (await fleet.job(name)).state == pb.JOB_STATE_DEFERRED
    await fleet.turn(SETTINGS.restore_poll_interval)  # restored is asked again: still busy
    assert (await fleet.job(name)).state == pb.JOB_STATE_DEFERRED
    assert fleet.backups("b1", name) == []
    registry.finish(restore, OperationState.SUCCEEDED)
    await fleet.turn(SETTINGS.restore_poll_interval)
    assert len(fleet.backups("b1", name)) == 1
    await fleet.wait_revisions("b1", name, 1)


async def test_unreachable_restored_does_not_block_backups(
    fleet: Fleet, caplog: pytest.LogCaptureFixture
) -> None:
    fleet.add_host("b1")  # nothing listens on its restored address
    name = quiet_name("vm-alone", fleet.config(), dt.timedelta(minutes=2))
    fleet.add_job(name, "b1")
    await fleet.start_backupd("b1")
    await fleet.start_scheduler()
    await fleet.wait_revisions("b1", name, 1)
    assert "restored does not answer" in caplog.text


# --- RunJob, ListJobs -------------------------------------------------------------------


async def test_run_job_with_tags_and_with_the_next_slot(fleet: Fleet) -> None:
    fleet.add_host("b1")
    name = quiet_name("vm-manual", fleet.config(), dt.timedelta(minutes=2))
    fleet.add_job(name, "b1", freeze=fleet.gated())
    await fleet.start_backupd("b1")
    stub = await fleet.start_scheduler()
    fleet.open_gate()
    await fleet.idle(name)
    fleet.close_gate()

    reply = await stub.RunJob(pb.RunJobRequest(job=name, tags=["manual:before-upgrade"]))
    assert reply.started and list(reply.operation.tags) == ["manual:before-upgrade"]
    assert reply.operation.kind == resources_pb2.OPERATION_KIND_BACKUP
    again = await stub.RunJob(pb.RunJobRequest(job=name, tags=["hourly"]))
    assert not again.started and again.operation.name == reply.operation.name
    assert (await fleet.job(name)).state == pb.JOB_STATE_RUNNING
    fleet.open_gate()
    await fleet.wait_revisions("b1", name, 2)
    await fleet.idle(name)

    next_slot_run = await stub.RunJob(pb.RunJobRequest(job=name))
    assert next_slot_run.started and list(next_slot_run.operation.tags) == ["hourly"]
    revisions = await fleet.wait_revisions("b1", name, 3)
    assert [r.tags for r in revisions] == [
        ["daily", "hourly"],
        ["manual:before-upgrade"],
        ["hourly"],
    ]


@pytest.mark.parametrize(
    ("request_", "code", "words"),
    [
        pytest.param(pb.RunJobRequest(job="nope"), grpc.StatusCode.NOT_FOUND, "nope", id="unknown"),
        pytest.param(pb.RunJobRequest(), grpc.StatusCode.INVALID_ARGUMENT, "job", id="no-job"),
        pytest.param(
            pb.RunJobRequest(job="vm-x", tags=["weekly"]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "tags",
            id="tag-not-in-schedule",
        ),
        pytest.param(
            pb.RunJobRequest(job="x" * 4000), grpc.StatusCode.NOT_FOUND, "xxx", id="long-job"
        ),
        pytest.param(
            pb.RunJobRequest(job="vm-x", tags=["t" * 4000]),
            grpc.StatusCode.INVALID_ARGUMENT,
            "tags",
            id="long-tag",
        ),
    ],
)
async def test_run_job_bad_requests(
    fleet: Fleet, request_: pb.RunJobRequest, code: grpc.StatusCode, words: str
) -> None:
    fleet.add_host("b1")
    fleet.add_job("vm-x", "b1")
    await fleet.start_backupd("b1")
    stub = await fleet.start_scheduler()
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.RunJob(request_)
    assert raised.value.code() == code
    assert words in (raised.value.details() or "")
    assert len(raised.value.details() or "") < 300


async def test_list_jobs_by_host(fleet: Fleet) -> None:
    fleet.add_host("b1")
    fleet.add_host("b2")
    fleet.add_job("vm-1", "b1")
    fleet.add_job("vm-2", "b2")
    fleet.add_job("vm-3", "b2")
    stub = await fleet.start_scheduler()
    every = await stub.ListJobs(pb.ListJobsRequest())
    assert [v.job.name for v in every.jobs] == ["vm-1", "vm-2", "vm-3"]
    on_b2 = await stub.ListJobs(pb.ListJobsRequest(host="b2"))
    assert [(v.job.name, v.job.host) for v in on_b2.jobs] == [("vm-2", "b2"), ("vm-3", "b2")]
    for host in ("b9", "b" * 4000):
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.ListJobs(pb.ListJobsRequest(host=host))
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert (raised.value.details() or "").startswith("host: ")
        assert len(raised.value.details() or "") < 300


# --- reload -----------------------------------------------------------------------------


async def test_reload_adds_removes_and_changes_jobs_without_touching_running_backups(
    fleet: Fleet,
) -> None:
    fleet.add_host("b1")
    config = fleet.config()
    busy = quiet_name("vm-busy", config, dt.timedelta(minutes=2))
    gone = quiet_name("vm-gone", config, dt.timedelta(minutes=2))
    new = quiet_name("vm-new", config, dt.timedelta(minutes=2))
    fleet.add_job(busy, "b1", freeze=fleet.gated())
    fleet.add_job(gone, "b1")
    await fleet.start_backupd("b1")
    stub = await fleet.start_scheduler()
    await fleet.wait_revisions("b1", gone, 1)
    await eventually(lambda: _true(fleet.backups("b1", gone)[0].state.finished), "gone's end")
    await fleet.turn(POLL)
    assert (await fleet.job(busy)).state == pb.JOB_STATE_RUNNING
    running = fleet.backups("b1", busy)[0]

    del fleet.jobs[gone]
    fleet.add_job(new, "b1")
    fleet.jobs[busy]["sla-factor"] = 2.0
    await fleet.reload_backupds()
    fleet.write()
    reply = await stub.ReloadConfig(pb.ReloadConfigRequest())
    assert list(reply.jobs_added) == [new]
    assert list(reply.jobs_removed) == [gone]
    assert list(reply.jobs_changed) == [busy]

    listed = await stub.ListJobs(pb.ListJobsRequest())
    assert sorted(v.job.name for v in listed.jobs) == sorted([busy, new])
    assert (await fleet.job(busy)).job.sla_factor == 2.0
    await fleet.settle()
    await fleet.wait_revisions("b1", new, 1)
    fleet.open_gate()
    view = await fleet.idle(busy)
    assert view.last_result == resources_pb2.OPERATION_STATE_SUCCEEDED
    assert running.state == OperationState.SUCCEEDED  # not interrupted
    assert len(fleet.revisions("b1", gone)) == 1  # its data stays
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.GetJob(pb.GetJobRequest(job=gone))
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND


async def _true(value: bool) -> bool:
    return value


async def refused_reload(fleet: Fleet, caplog: pytest.LogCaptureFixture) -> str:
    """ReloadConfig's INVALID_ARGUMENT details; SIGHUP's reload logs them in one line."""
    assert fleet.stub is not None and fleet.scheduler_daemon is not None
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await fleet.stub.ReloadConfig(pb.ReloadConfigRequest())
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    details = raised.value.details() or ""
    caplog.clear()
    await fleet.scheduler_daemon.reload()  # what SIGHUP runs
    failures = [r.getMessage() for r in caplog.records if "reload failed" in r.getMessage()]
    assert failures == [f"scheduler reload failed, keeping the old config: {details}"]
    return details


@pytest.mark.parametrize("spoil", BAD_FILES)
async def test_reload_with_a_bad_config_keeps_the_old_one(
    fleet: Fleet, caplog: pytest.LogCaptureFixture, spoil: Spoiler
) -> None:
    fleet.add_host("b1")
    fleet.add_job("vm-1", "b1")
    stub = await fleet.start_scheduler()
    problem = spoil(fleet.path)

    details = await refused_reload(fleet, caplog)
    assert details.startswith(f"{fleet.path}: ") and problem in details, details
    listed = await stub.ListJobs(pb.ListJobsRequest())
    assert [v.job.name for v in listed.jobs] == ["vm-1"]

    mend(fleet.path)
    fleet.add_job("vm-2", "b1")
    fleet.write()
    reply = await stub.ReloadConfig(pb.ReloadConfigRequest())
    assert list(reply.jobs_added) == ["vm-2"]


def no_client_for(name: str) -> HostClientFactory:
    """The real gRPC clients, but making one for host `name` fails (as a bug would)."""
    make = grpc_clients(SETTINGS)

    def client(host: HostConfig) -> HostClient:
        if host.name == name:
            raise RuntimeError(f"no client for {host.name}")
        return make(host)

    return client


async def test_a_failure_applying_a_config_keeps_the_old_one(
    fleet: Fleet, caplog: pytest.LogCaptureFixture
) -> None:
    fleet.add_host("b1")
    fleet.add_job("vm-1", "b1")
    stub = await fleet.start_scheduler(no_client_for("b2"))
    restored = fleet.hosts["b1"]["restored"]
    fleet.hosts["b1"]["restored"] = f"127.0.0.1:{free_port()}"  # b1 gets a new scheduler
    fleet.add_host("b2")
    fleet.add_job("vm-2", "b2")
    fleet.write()

    details = await refused_reload(fleet, caplog)
    assert details == f"{fleet.path}: (reload): RuntimeError: no client for b2"
    listed = await stub.ListJobs(pb.ListJobsRequest())
    assert [(v.job.name, v.job.host) for v in listed.jobs] == [("vm-1", "b1")]
    assert (await fleet.job("vm-1")).job.host == "b1"
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.ListJobs(pb.ListJobsRequest(host="b2"))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    fleet.hosts["b1"]["restored"] = restored
    del fleet.hosts["b2"], fleet.jobs["vm-2"]
    fleet.add_job("vm-3", "b1")
    fleet.write()
    reply = await stub.ReloadConfig(pb.ReloadConfigRequest())
    assert list(reply.jobs_added) == ["vm-3"]


async def test_sighup_reload_moves_a_job_to_another_host(fleet: Fleet) -> None:
    fleet.add_host("b1")
    fleet.add_host("b2")
    name = quiet_name("vm-moving", fleet.config(), dt.timedelta(minutes=2))
    fleet.add_job(name, "b1")
    await fleet.start_backupd("b1")
    await fleet.start_backupd("b2")
    await fleet.start_scheduler()
    await fleet.idle(name)

    fleet.jobs[name]["host"] = "b2"
    await fleet.reload_backupds()
    fleet.write()
    assert fleet.scheduler_daemon is not None
    await fleet.scheduler_daemon.reload()  # what SIGHUP runs
    await fleet.settle()
    revisions = await fleet.wait_revisions("b2", name, 1)
    assert revisions[0].tags == ["daily", "hourly"]  # new to b2: never backed up there
    assert (await fleet.job(name)).job.host == "b2"


# --- the admin client -------------------------------------------------------------------


def admin(*argv: str) -> int:
    with pytest.raises(SystemExit) as exited:
        admin_main(list(argv))
    return int(exited.value.code or 0)


async def test_admin_jobs_run_and_reload(fleet: Fleet, capsys: pytest.CaptureFixture[str]) -> None:
    fleet.add_host("b1")
    fleet.add_host("b2")
    name = quiet_name("vm-admin", fleet.config(), dt.timedelta(minutes=2))
    fleet.add_job(name, "b1")
    fleet.add_job("vm-away", "b2")
    await fleet.start_backupd("b1")
    await fleet.start_scheduler()
    await fleet.idle(name)
    config = str(fleet.path)
    common = ("--scheduler", fleet.address)

    assert await asyncio.to_thread(admin, "--config", config, "jobs", *common) == 0
    out, err = capsys.readouterr()
    header, *rows = out.splitlines()
    assert header.split() == [
        "JOB",
        "HOST",
        "LAST",
        "BACKUP",
        "(UTC)",
        "NEXT",
        "RUN",
        "(UTC)",
        "TAGS",
        "STATE",
    ]
    ours = next(row for row in rows if row.startswith(name))
    assert " b1 " in ours and " hourly " in ours and ours.endswith("waiting")
    assert " ago)" in ours and "(in " in ours
    away = next(row for row in rows if row.startswith("vm-away"))
    assert away.endswith("host-unreachable") and "vm-away: host b2 backupd" in err

    code = await asyncio.to_thread(
        admin, "--config", config, "run", name, "--tag", "manual:check", "--wait", *common
    )
    out, _ = capsys.readouterr()
    assert code == 0 and " succeeded revision " in out
    assert fleet.revisions("b1", name)[-1].tags == ["manual:check"]

    del fleet.jobs["vm-away"]
    fleet.write()
    assert await asyncio.to_thread(admin, "--config", config, "reload", *common) == 0
    out, _ = capsys.readouterr()
    assert out.splitlines() == ["added: -", "removed: vm-away", "changed: -"]

    assert await asyncio.to_thread(admin, "--config", config, "run", "vm-nope", *common) == 1
    _, err = capsys.readouterr()
    assert "vm-nope" in err


async def test_reload_adds_and_removes_hosts(fleet: Fleet) -> None:
    fleet.add_host("b1")
    fleet.add_host("b2")  # never answers
    fleet.add_host("b3")
    fleet.add_job("vm-1", "b1")
    fleet.add_job("vm-2", "b2")
    await fleet.start_backupd("b1")
    await fleet.start_backupd("b3")
    del fleet.hosts["b3"]
    stub = await fleet.start_scheduler()
    assert (await fleet.job("vm-2")).state == pb.JOB_STATE_HOST_UNREACHABLE

    fleet.add_host("b3")
    fleet.hosts["b3"]["backupd"] = fleet.backupds["b3"][0].listen
    del fleet.hosts["b2"], fleet.jobs["vm-2"]
    fleet.add_job("vm-3", "b3")
    await fleet.reload_backupds()
    fleet.write()
    reply = await stub.ReloadConfig(pb.ReloadConfigRequest())
    assert (list(reply.jobs_added), list(reply.jobs_removed)) == (["vm-3"], ["vm-2"])
    await fleet.settle()
    await fleet.wait_revisions("b3", "vm-3", 1)
    listed = await stub.ListJobs(pb.ListJobsRequest())
    assert [(v.job.name, v.job.host) for v in listed.jobs] == [("vm-1", "b1"), ("vm-3", "b3")]
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.ListJobs(pb.ListJobsRequest(host="b2"))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
