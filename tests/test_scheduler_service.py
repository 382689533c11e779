"""SchedulerService through a real in-process grpc.aio server on port 0, scheduling real
backupd servers (in-process, real worker, file sources) on real ports."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import random
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
from lifeboat.model import Schedule, TagSpec
from lifeboat.operation_service import operation_service
from lifeboat.operations import OperationKind, OperationRegistry, OperationState
from lifeboat.schedule import next_run, next_slot, previous_slot
from lifeboat.v1 import resources_pb2
from lifeboat.v1 import scheduler_pb2 as pb
from lifeboat.v1 import scheduler_pb2_grpc as pb_grpc
from scheduler import server as scheduler_server
from scheduler.fleet import Scheduler
from scheduler.settings import SchedulerSettings
from tests.support.processes import free_port

T = TypeVar("T")
S = dt.timedelta(seconds=1)

SCHEDULES = {
    "default": {"hourly": {"interval": "1h", "keep": 24}, "daily": {"interval": "1d", "keep": 7}},
}
FAST = SchedulerSettings(
    call_timeout=5.0,
    poll_interval=0.1,
    busy_retry=0.2,
    restore_poll_interval=0.2,
    restore_check_cache=0.0,
    retry_later_delay=dt.timedelta(seconds=1),
    failure_backoff_base=dt.timedelta(seconds=1),
    host_backoff_base=dt.timedelta(milliseconds=200),
    host_backoff_cap=dt.timedelta(seconds=1),
)


def schedule_of(config: config_module.Config, name: str = "default") -> Schedule:
    return config.schedules[name]


def tag_spec(config: config_module.Config, name: str) -> TagSpec:
    return next(tag for tag in schedule_of(config).tags if tag.name == name)


def quiet_name(prefix: str, config: config_module.Config, window: dt.timedelta) -> str:
    """A job name with no slot of the default schedule within `window` of now, so the
    only backups a test sees are the ones it expects."""
    now = clock.now()
    schedule = schedule_of(config)
    for index in range(100_000):
        name = f"{prefix}-{index}"
        if all(next_slot(name, tag, now - window) > now + window for tag in schedule.tags):
            return name
    raise AssertionError("no quiet job name")


async def eventually(
    check: Callable[[], Awaitable[T | None]], what: str, timeout: float = 20.0
) -> T:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        result = await check()
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


class Fleet:
    """Real in-process backupd servers and one scheduler on port 0."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
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
        self, settings: SchedulerSettings = FAST
    ) -> pb_grpc.SchedulerServiceStub:
        daemon, scheduler = scheduler_server.build(self.config(), "127.0.0.1:0", settings)
        port = await daemon.start()
        self.address = f"127.0.0.1:{port}"
        scheduler.start()
        self.scheduler_daemon, self.scheduler = daemon, scheduler
        self.channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        self.stub = pb_grpc.SchedulerServiceStub(self.channel)
        return self.stub

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

    async def wait_idle(self, name: str) -> pb.JobView:
        async def idle() -> pb.JobView | None:
            view = await self.job(name)
            settled = view.state != pb.JOB_STATE_RUNNING and view.last_result not in (
                resources_pb2.OPERATION_STATE_UNSPECIFIED,
                resources_pb2.OPERATION_STATE_RUNNING,
            )
            return view if settled else None

        return await eventually(idle, f"{name} to finish its backup")

    async def stop(self) -> None:
        if self.channel is not None:
            await self.channel.close()
        if self.scheduler_daemon is not None:
            await self.scheduler_daemon.stop(grace=0)
        for daemon, _ in self.backupds.values():
            await daemon.stop(grace=0)
        for daemon in self.others:
            await daemon.stop(grace=0)


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[Fleet]:
    running = Fleet(tmp_path)
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

    view = await fleet.wait_idle(name)
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


async def test_missed_slots_make_one_catch_up_backup_of_the_due_tags(fleet: Fleet) -> None:
    fleet.add_host("b1")
    last = clock.now() - dt.timedelta(hours=5)
    name = catch_up_name(fleet.config(), last)
    fleet.add_job(name, "b1")
    config = fleet.config()
    worker = await fleet.start_backupd("b1")
    await backup_at(worker, name, ["daily", "hourly"], last)

    await fleet.start_scheduler()
    await fleet.wait_revisions("b1", name, 2)
    view = await fleet.wait_idle(name)
    await asyncio.sleep(0.5)  # time enough for a wrong second backup to start
    revisions = fleet.revisions("b1", name)
    assert [r.tags for r in revisions] == [["daily", "hourly"], ["hourly"]]
    assert len(fleet.backups("b1", name)) == 2  # the old one and exactly one catch-up
    hourly = tag_spec(config, "hourly")
    assert when(view, "next_run_time") == next_slot(name, hourly, clock.now())
    assert list(view.next_tags) == ["hourly"]


async def test_running_backup_is_adopted_not_doubled(fleet: Fleet) -> None:
    fleet.add_host("b1")
    name = quiet_name("vm-busy", fleet.config(), dt.timedelta(minutes=2))
    fleet.add_job(name, "b1", freeze="sleep 1.5")
    worker = await fleet.start_backupd("b1")
    record, _ = await worker.start_backup(name, ["daily", "hourly"])

    await fleet.start_scheduler()
    view = await eventually(
        lambda: _state(fleet, name, pb.JOB_STATE_RUNNING), "the running backup to show"
    )
    assert view.next_tags == ["hourly"]  # projected: after the running one succeeds
    view = await fleet.wait_idle(name)
    assert view.last_result == resources_pb2.OPERATION_STATE_SUCCEEDED
    assert [op.name for op in fleet.backups("b1", name)] == [record.name]
    assert len(fleet.revisions("b1", name)) == 1


async def _state(fleet: Fleet, name: str, state: int) -> pb.JobView | None:
    view = await fleet.job(name)
    return view if view.state == state else None


# --- load, failures, hosts --------------------------------------------------------------


async def test_no_free_slot_on_backupd_is_retried_soon_not_a_failure(
    fleet: Fleet, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="lifeboat.scheduler")
    fleet.add_host("b1")
    config = fleet.config()
    slow = quiet_name("vm-slow", config, dt.timedelta(minutes=2))
    quick = quiet_name("vm-quick", config, dt.timedelta(minutes=2))
    fleet.add_job(slow, "b1", freeze="sleep 1")
    fleet.add_job(quick, "b1", freeze="sleep 1")
    await fleet.start_backupd("b1", worker_limit=1)  # the scheduler believes it is 2
    await fleet.start_scheduler()

    async def both_done() -> bool:
        views = [await fleet.job(slow), await fleet.job(quick)]
        for view in views:
            assert view.failures == 0, view.last_error
            assert view.last_result != resources_pb2.OPERATION_STATE_FAILED
        return all(fleet.revisions("b1", job) for job in (slow, quick))

    await eventually(both_done, "both jobs backed up")
    assert "is busy, retrying soon" in caplog.text


async def test_failing_job_backs_off_exponentially_and_blocks_nobody(fleet: Fleet) -> None:
    fleet.add_host("b1")
    config = fleet.config()
    broken = quiet_name("vm-broken", config, dt.timedelta(minutes=2))
    fine = quiet_name("vm-fine", config, dt.timedelta(minutes=2))
    fleet.add_job(broken, "b1", path=str(fleet.tmp_path / "missing.raw"))
    fleet.add_job(fine, "b1")
    fleet.worker_limit = 1
    await fleet.start_backupd("b1")
    await fleet.start_scheduler()

    first = await eventually(
        lambda: _state(fleet, broken, pb.JOB_STATE_BACKING_OFF), "the first failure"
    )
    assert first.failures == 1 and first.backoff.ToTimedelta() == S
    assert first.last_result == resources_pb2.OPERATION_STATE_FAILED
    assert "missing.raw" in first.last_error
    await fleet.wait_revisions("b1", fine, 1)

    async def failed_twice() -> pb.JobView | None:
        view = await fleet.job(broken)
        return view if view.failures >= 2 else None

    second = await failed_twice_within(failed_twice)
    assert second.backoff.ToTimedelta() == 2 * S
    attempts = fleet.backups("b1", broken)
    assert attempts[1].create_time - attempts[0].end_time >= S * 0.9  # waited for the backoff


async def failed_twice_within(check: Callable[[], Awaitable[pb.JobView | None]]) -> pb.JobView:
    return await eventually(check, "the second failure", timeout=10)


async def test_retry_later_runs_again_after_a_short_delay(fleet: Fleet) -> None:
    fleet.add_host("b1")
    name = quiet_name("vm-frozen", fleet.config(), dt.timedelta(minutes=2))
    fleet.add_job(name, "b1", freeze="exit 75")
    await fleet.start_backupd("b1")
    await fleet.start_scheduler()

    view = await fleet.wait_idle(name)
    assert view.last_result == resources_pb2.OPERATION_STATE_RETRY_LATER
    assert view.failures == 0 and view.state == pb.JOB_STATE_WAITING
    first = fleet.backups("b1", name)[0]
    assert first.end_time is not None
    retry = when(view, "next_run_time")
    assert retry is not None
    assert abs((retry - first.end_time).total_seconds() - 1.0) < 0.5
    await eventually(lambda: _true(len(fleet.backups("b1", name)) >= 2), "the retry", timeout=5)
    attempts = fleet.backups("b1", name)
    assert attempts[1].create_time >= retry


async def _true(value: bool) -> bool:
    return value


async def test_unreachable_host_is_reported_and_retried_while_others_carry_on(
    fleet: Fleet,
) -> None:
    fleet.add_host("b1")
    fleet.add_host("b2")
    config = fleet.config()
    here = quiet_name("vm-here", config, dt.timedelta(minutes=2))
    there = quiet_name("vm-there", config, dt.timedelta(minutes=2))
    fleet.add_job(here, "b1")
    fleet.add_job(there, "b2")
    await fleet.start_backupd("b1")
    await fleet.start_scheduler()

    await fleet.wait_revisions("b1", here, 1)
    view = await eventually(
        lambda: _state(fleet, there, pb.JOB_STATE_HOST_UNREACHABLE), "b2 to be unreachable"
    )
    assert fleet.hosts["b2"]["backupd"] in view.last_error
    assert not view.HasField("next_run_time")

    await fleet.start_backupd("b2")  # the host comes back
    await fleet.wait_revisions("b2", there, 1)
    view = await fleet.wait_idle(there)
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

    await eventually(lambda: _state(fleet, name, pb.JOB_STATE_DEFERRED), "the deferral")
    await asyncio.sleep(0.5)
    assert fleet.backups("b1", name) == []
    registry.finish(restore, OperationState.SUCCEEDED)
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
    fleet.add_job(name, "b1", freeze="sleep 0.5")
    await fleet.start_backupd("b1")
    stub = await fleet.start_scheduler()
    await fleet.wait_idle(name)

    reply = await stub.RunJob(pb.RunJobRequest(job=name, tags=["manual:before-upgrade"]))
    assert reply.started and list(reply.operation.tags) == ["manual:before-upgrade"]
    assert reply.operation.kind == resources_pb2.OPERATION_KIND_BACKUP
    again = await stub.RunJob(pb.RunJobRequest(job=name, tags=["hourly"]))
    assert not again.started and again.operation.name == reply.operation.name
    assert (await fleet.job(name)).state == pb.JOB_STATE_RUNNING
    await fleet.wait_revisions("b1", name, 2)
    await fleet.wait_idle(name)

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
    fleet.add_job(busy, "b1", freeze="sleep 1.5")
    fleet.add_job(gone, "b1")
    await fleet.start_backupd("b1")
    stub = await fleet.start_scheduler()
    await fleet.wait_idle(gone)
    await eventually(lambda: _state(fleet, busy, pb.JOB_STATE_RUNNING), "busy to run")
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
    await fleet.wait_revisions("b1", new, 1)
    view = await fleet.wait_idle(busy)
    assert view.last_result == resources_pb2.OPERATION_STATE_SUCCEEDED
    assert running.state == OperationState.SUCCEEDED  # not interrupted
    assert len(fleet.revisions("b1", gone)) == 1  # its data stays
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.GetJob(pb.GetJobRequest(job=gone))
    assert raised.value.code() == grpc.StatusCode.NOT_FOUND


async def test_reload_with_a_bad_config_keeps_the_old_one(fleet: Fleet) -> None:
    fleet.add_host("b1")
    fleet.add_job("vm-1", "b1")
    stub = await fleet.start_scheduler()
    fleet.jobs["vm-2"] = {"host": "b1", "schedule": "nightly", "source": {"type": "file"}}
    fleet.write()
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.ReloadConfig(pb.ReloadConfigRequest())
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "jobs.vm-2.schedule" in (raised.value.details() or "")
    listed = await stub.ListJobs(pb.ListJobsRequest())
    assert [v.job.name for v in listed.jobs] == ["vm-1"]


async def test_sighup_reload_moves_a_job_to_another_host(fleet: Fleet) -> None:
    fleet.add_host("b1")
    fleet.add_host("b2")
    name = quiet_name("vm-moving", fleet.config(), dt.timedelta(minutes=2))
    fleet.add_job(name, "b1")
    await fleet.start_backupd("b1")
    await fleet.start_backupd("b2")
    await fleet.start_scheduler()
    await fleet.wait_revisions("b1", name, 1)
    await fleet.wait_idle(name)

    fleet.jobs[name]["host"] = "b2"
    await fleet.reload_backupds()
    fleet.write()
    assert fleet.scheduler_daemon is not None
    await fleet.scheduler_daemon.reload()  # what SIGHUP runs
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
    await fleet.wait_idle(name)
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
    await eventually(lambda: _state(fleet, "vm-2", pb.JOB_STATE_HOST_UNREACHABLE), "b2 down")

    fleet.add_host("b3")
    fleet.hosts["b3"]["backupd"] = fleet.backupds["b3"][0].listen
    del fleet.hosts["b2"], fleet.jobs["vm-2"]
    fleet.add_job("vm-3", "b3")
    await fleet.reload_backupds()
    fleet.write()
    reply = await stub.ReloadConfig(pb.ReloadConfigRequest())
    assert (list(reply.jobs_added), list(reply.jobs_removed)) == (["vm-3"], ["vm-2"])
    await fleet.wait_revisions("b3", "vm-3", 1)
    listed = await stub.ListJobs(pb.ListJobsRequest())
    assert [(v.job.name, v.job.host) for v in listed.jobs] == [("vm-1", "b1"), ("vm-3", "b3")]
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.ListJobs(pb.ListJobsRequest(host="b2"))
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
