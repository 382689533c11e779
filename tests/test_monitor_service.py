"""MonitorService, /check, /metrics, check_lifeboat and `lifeboat status` against real
in-process backupd and restored servers (real revisions, real gRPC on real sockets).

A stand-in SchedulerService (real gRPC, answering ListJobs only) supplies next run
times here. The monitor runs on a clock the test turns by hand (tests.support.clock), and
so does `lifeboat.clock.now`, which the in-process daemons read: polls happen when the
clock passes a poll interval, not before, and no test sleeps to let time pass. RPCs and
backups themselves run in real time.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import os
import random
import socket
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest

import backupd.server
import monitor.server
import restored.server
from lifeboat import clock, convert
from lifeboat import config as config_module
from lifeboat.admin import main as admin_main
from lifeboat.bootstrap import GrpcDaemon, ServiceSpec
from lifeboat.v1 import (
    backup_pb2,
    backup_pb2_grpc,
    monitor_pb2,
    monitor_pb2_grpc,
    operations_pb2,
    operations_pb2_grpc,
    resources_pb2,
    scheduler_pb2,
    scheduler_pb2_grpc,
)
from monitor import check as check_plugin
from monitor.core import Monitor
from monitor.poller import CONNECT_MARGIN
from tests.support.clock import FakeClock
from tests.support.images import flip_byte
from tests.support.processes import BIN, free_port
from tests.support.waiting import until

S = dt.timedelta(seconds=1)
H = dt.timedelta(hours=1)
POLL = S  # the config's poll-interval
POLL_LOOP = 1  # the one task of the monitor that sleeps on the clock between polls
EARLY = dt.timedelta(seconds=0.25)  # before a due time (a binary fraction: exact sums)
NEXT_RUN = dt.datetime(2030, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
JOBS = {"vm-db01": "backup01", "vm-mail": "backup02", "vm-web01": "backup01"}


def started_daemon(built: Any) -> GrpcDaemon:
    """build() of the workers returns the daemon, or (daemon, worker) once their issue lands."""
    return built[0] if isinstance(built, tuple) else built


class StandInScheduler(scheduler_pb2_grpc.SchedulerServiceServicer):
    async def ListJobs(
        self, request: scheduler_pb2.ListJobsRequest, context: grpc.aio.ServicerContext
    ) -> scheduler_pb2.ListJobsResponse:
        return scheduler_pb2.ListJobsResponse(
            jobs=[
                scheduler_pb2.JobView(
                    job=resources_pb2.Job(name=name), next_run_time=convert.timestamp(NEXT_RUN)
                )
                for name in JOBS
            ]
        )


class SlowBackupService(backup_pb2_grpc.BackupServiceServicer):
    """A backupd that never answers; `asked` is set once the monitor asked it."""

    def __init__(self) -> None:
        self.asked = asyncio.Event()

    async def ListJobStatuses(
        self, request: backup_pb2.ListJobStatusesRequest, context: grpc.aio.ServicerContext
    ) -> backup_pb2.ListJobStatusesResponse:
        self.asked.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def GetHostStatus(
        self, request: backup_pb2.GetHostStatusRequest, context: grpc.aio.ServicerContext
    ) -> backup_pb2.GetHostStatusResponse:
        self.asked.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


def write_config(
    tmp_path: Path, ports: dict[str, int], hosts: tuple[str, ...], poll_interval: dt.timedelta
) -> Path:
    host_lines = "".join(
        f"  {h}: {{backupd: 127.0.0.1:{ports[h + '.backupd']}, "
        f"restored: 127.0.0.1:{ports[h + '.restored']}, base-dir: {tmp_path}/{h}}}\n"
        for h in hosts
    )
    job_lines = "".join(
        f"  {job}: {{host: {host}, schedule: default, source: {{type: file, path: {tmp_path}/{job}.raw}}}}\n"
        for job, host in JOBS.items()
    )
    path = tmp_path / "lifeboat.yaml"
    path.write_text(
        f"global: {{base-dir: {tmp_path}/repo}}\n"
        f"scheduler: {{listen: 127.0.0.1:{ports['scheduler']}}}\n"
        f"monitor: {{listen: 127.0.0.1:{ports['monitor']}, http: 127.0.0.1:{ports['http']}, "
        f"poll-interval: {poll_interval.total_seconds():g}s}}\n"
        f"hosts:\n{host_lines}"
        "schedules: {default: {hourly: {interval: 1h, keep: 24}, daily: {interval: 1d, keep: 7}}}\n"
        f"jobs:\n{job_lines}"
    )
    return path


class Fleet:
    """Real backupd and restored per host, a stand-in scheduler and the monitor, in-process,
    on one fake clock."""

    def __init__(
        self,
        tmp_path: Path,
        fake: FakeClock,
        hosts: tuple[str, ...] = ("backup01", "backup02"),
        poll_interval: dt.timedelta = POLL,
    ) -> None:
        self.tmp_path = tmp_path
        self.clock = fake
        names = [f"{h}.{d}" for h in hosts for d in ("backupd", "restored")]
        self.ports = {name: free_port() for name in [*names, "scheduler", "monitor", "http"]}
        self.config_path = write_config(tmp_path, self.ports, hosts, poll_interval)
        self.config = config_module.load(str(self.config_path))
        self.daemons: dict[str, GrpcDaemon] = {}
        self.monitor: Monitor | None = None
        self._channels: dict[str, grpc.aio.Channel] = {}
        for job in JOBS:
            (tmp_path / f"{job}.raw").write_bytes(random.randbytes(1 << 20))

    def address(self, name: str) -> str:
        return f"127.0.0.1:{self.ports[name]}"

    async def start_backupd(self, host: str) -> None:
        name = f"{host}.backupd"
        self.daemons[name] = started_daemon(
            backupd.server.build(self.config, host, self.address(name))
        )
        await self.daemons[name].start()

    async def start_restored(self, host: str) -> None:
        name = f"{host}.restored"
        self.daemons[name] = started_daemon(
            restored.server.build(self.config, host, self.address(name))
        )
        await self.daemons[name].start()

    async def start_scheduler(self) -> None:
        servicer = StandInScheduler()
        spec = ServiceSpec(
            scheduler_pb2.DESCRIPTOR.services_by_name["SchedulerService"].full_name,
            lambda server: scheduler_pb2_grpc.add_SchedulerServiceServicer_to_server(
                servicer, server
            ),
        )
        self.daemons["scheduler"] = GrpcDaemon("scheduler", self.address("scheduler"), [spec])
        await self.daemons["scheduler"].start()

    async def start_monitor(self) -> Monitor:
        daemon, self.monitor = monitor.server.build(
            self.config, self.address("monitor"), clock=self.clock
        )
        self.daemons["monitor"] = daemon
        await daemon.start()
        await self.monitor.start()
        return self.monitor

    async def stop(self, name: str) -> None:
        await self.daemons.pop(name).stop(grace=0)

    async def stop_all(self) -> None:
        for channel in self._channels.values():
            await channel.close(None)
        # The monitor first, so it does not see the others go.
        for name in sorted(self.daemons, key=lambda name: name != "monitor"):
            await self.stop(name)

    def channel(self, name: str) -> grpc.aio.Channel:
        if name not in self._channels:
            self._channels[name] = grpc.aio.insecure_channel(self.address(name))
        return self._channels[name]

    async def poll(self) -> None:
        """Poll every daemon now, whatever the clock says."""
        assert self.monitor is not None
        await self.monitor.poller.poll_once()

    async def answered(self, *daemons: str) -> None:
        """Wait until each daemon (named as in `ports`) answered a poll or failed one."""
        assert self.monitor is not None
        poller = self.monitor.poller

        def polled(daemon: str) -> bool:
            snapshot = poller.snapshot()
            if daemon == "scheduler":
                return snapshot.scheduler.polled
            host, kind = daemon.split(".")
            return bool(getattr(snapshot.hosts[host], kind).polled)

        await until(lambda: all(polled(daemon) for daemon in daemons), f"polls of {daemons}")

    async def turn(self, by: dt.timedelta) -> None:
        """Move the clock on, let the poller start the polls that time asks for, and wait
        for their answers (real RPCs, each ending by its own real deadline at the latest)."""
        assert self.monitor is not None
        await self.clock.turn(by.total_seconds(), POLL_LOOP)
        await self.monitor.poller.polls_ended()

    async def check(self, job: str = "", host: str = "") -> monitor_pb2.CheckSlaResponse:
        stub = monitor_pb2_grpc.MonitorServiceStub(self.channel("monitor"))
        return await stub.CheckSla(monitor_pb2.CheckSlaRequest(job=job, host=host), timeout=5)

    async def report(self, job: str = "", host: str = "") -> monitor_pb2.GetSlaReportResponse:
        stub = monitor_pb2_grpc.MonitorServiceStub(self.channel("monitor"))
        return await stub.GetSlaReport(
            monitor_pb2.GetSlaReportRequest(job=job, host=host), timeout=5
        )

    async def _wait(self, host: str, name: str) -> resources_pb2.Operation:
        stub = operations_pb2_grpc.OperationServiceStub(self.channel(f"{host}.backupd"))
        last = resources_pb2.Operation()
        async for reply in stub.WatchOperation(
            operations_pb2.WatchOperationRequest(name=name), timeout=60
        ):
            last = reply.operation
        return last

    async def backup(self, job: str) -> resources_pb2.Operation:
        host = JOBS[job]
        stub = backup_pb2_grpc.BackupServiceStub(self.channel(f"{host}.backupd"))
        request = backup_pb2.StartBackupRequest(job=job, tags=["hourly", "daily"])
        reply = await stub.StartBackup(request, timeout=10)
        done = await self._wait(host, reply.operation.name)
        assert done.state == resources_pb2.OPERATION_STATE_SUCCEEDED, done.error
        return done

    async def verify(self, job: str) -> resources_pb2.Operation:
        host = JOBS[job]
        stub = backup_pb2_grpc.BackupServiceStub(self.channel(f"{host}.backupd"))
        reply = await stub.VerifyRevision(backup_pb2.VerifyRevisionRequest(job=job), timeout=10)
        return await self._wait(host, reply.operation.name)

    def image(self, job: str, revision_id: str) -> Path:
        return self.config.hosts[JOBS[job]].base_dir / job / revision_id


def shared_fake_clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    """A clock for the monitor, also the in-process daemons' `clock.now` (revision times)."""
    fake = FakeClock(clock.now().replace(microsecond=0))
    monkeypatch.setattr(clock, "now", fake.now)
    return fake


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    return shared_fake_clock(monkeypatch)


@pytest.fixture
async def fleet(tmp_path: Path, fake: FakeClock) -> AsyncIterator[Fleet]:
    running = Fleet(tmp_path, fake)
    try:
        for host in ("backup01", "backup02"):
            await running.start_backupd(host)
            await running.start_restored(host)
        await running.start_scheduler()
        await running.start_monitor()
        await running.poll()
        yield running
    finally:
        await running.stop_all()


# -- MonitorService ----------------------------------------------------------------------


async def test_check_follows_backups_and_time(fleet: Fleet) -> None:
    waiting = await fleet.check()
    assert waiting.state == resources_pb2.SLA_STATE_OK, waiting.summary
    assert waiting.summary == "LIFEBOAT OK - 3 of 3 jobs within SLA"

    await fleet.backup("vm-web01")
    await fleet.backup("vm-mail")
    await fleet.poll()
    fresh = await fleet.check()
    assert (fresh.state, fresh.exit_code) == (resources_pb2.SLA_STATE_OK, 0)
    assert fresh.perfdata.startswith(
        "jobs=3 outside_sla=0 warning=0 unknown=0 hosts=2 hosts_unreachable=0 oldest_good_age="
    )

    # Past every grace: vm-db01's first hourly slot comes within 1h of the start, its
    # window is 1h30m, so 3h is beyond it whatever the wall clock says.
    await fleet.turn(3 * H)
    late = await fleet.check()
    assert (late.state, late.exit_code) == (resources_pb2.SLA_STATE_CRITICAL, 2)
    assert late.summary == (
        "LIFEBOAT CRITICAL - 3 of 3 jobs outside SLA: vm-db01 (never), "
        "vm-mail, vm-web01 (last good 3h00m ago)"
    )
    assert "outside_sla=3" in late.perfdata


async def test_report_fields(fleet: Fleet) -> None:
    backed_up = fleet.clock.now()
    done = await fleet.backup("vm-web01")
    await fleet.turn(90 * S)
    report = await fleet.report()
    assert [j.job for j in report.jobs] == ["vm-db01", "vm-mail", "vm-web01"]
    web = report.jobs[2]
    assert (web.host, web.state) == ("backup01", resources_pb2.SLA_STATE_OK)
    assert web.sla_window.ToTimedelta() == 1.5 * H
    assert web.last_good_time.ToDatetime(dt.UTC) == backed_up
    assert web.last_good_age.ToTimedelta() == 90 * S
    assert web.next_run_time.ToDatetime(dt.UTC) == NEXT_RUN
    assert web.revision_count == 1 and web.bytes_used > 0
    assert web.reason.startswith("last good ")
    revision_path = fleet.image("vm-web01", done.revision_id)
    assert revision_path.exists()
    assert report.jobs[0].reason == "waiting for first backup"
    assert not report.jobs[0].HasField("last_good_time")

    assert [h.host for h in report.hosts] == ["backup01", "backup02"]
    for host in report.hosts:
        assert host.reachable and not host.error, host.error
        assert 0 < host.free_bytes <= host.total_bytes
        assert host.data_age.ToTimedelta() == dt.timedelta(0), "polled as the clock turned"
    assert report.scheduler.reachable
    assert report.scheduler.address == fleet.address("scheduler")

    only = await fleet.report(host="backup02")
    assert [j.job for j in only.jobs] == ["vm-mail"]
    assert [h.host for h in only.hosts] == ["backup02"]


@pytest.mark.parametrize(
    ("filters", "field"),
    [
        pytest.param({"job": "vm-nope"}, "vm-nope", id="job"),
        pytest.param({"host": "b9"}, "b9", id="host"),
        pytest.param({"job": "j" * 4000}, "jjj", id="long-job"),
        pytest.param({"host": "h" * 4000}, "hhh", id="long-host"),
    ],
)
async def test_unknown_filter_is_not_found(
    fleet: Fleet, filters: dict[str, str], field: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await fleet.check(**filters)
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert field in (caught.value.details() or "")
    assert len(caught.value.details() or "") < 300


async def test_scheduler_down_is_reported_but_not_judged(fleet: Fleet) -> None:
    await fleet.backup("vm-web01")
    await fleet.stop("scheduler")
    await fleet.poll()
    answer = await fleet.check(job="vm-web01")
    assert answer.state == resources_pb2.SLA_STATE_OK
    assert answer.summary == "LIFEBOAT OK - 1 of 1 job within SLA; scheduler unavailable"
    report = await fleet.report(job="vm-web01")
    assert not report.scheduler.reachable and report.scheduler.error
    assert report.jobs[0].next_run_time.ToDatetime(dt.UTC) == NEXT_RUN, "kept from the last answer"


async def test_stopped_backupd_is_unknown(fleet: Fleet) -> None:
    for job in JOBS:
        await fleet.backup(job)
    await fleet.poll()
    assert (await fleet.check()).state == resources_pb2.SLA_STATE_OK
    await fleet.stop("backup02.backupd")
    await fleet.poll()
    host_check = await fleet.check(host="backup02")
    assert (host_check.state, host_check.exit_code) == (resources_pb2.SLA_STATE_UNKNOWN, 3)
    assert host_check.summary == "LIFEBOAT UNKNOWN - 1 unknown: vm-mail (host backup02 unreachable)"
    assert (await fleet.check(host="backup01")).state == resources_pb2.SLA_STATE_OK
    overall = await fleet.check()
    assert overall.state == resources_pb2.SLA_STATE_UNKNOWN
    assert "hosts_unreachable=1" in overall.perfdata
    report = await fleet.report(host="backup02")
    assert not report.hosts[0].reachable
    assert "backupd" in report.hosts[0].error
    assert report.hosts[0].free_bytes > 0, "the last answer is kept"
    assert report.jobs[0].reason.startswith("backupd of host backup02 unreachable: ")


async def test_corrupted_revision_is_warning(fleet: Fleet) -> None:
    await fleet.backup("vm-web01")
    newest = await fleet.backup("vm-web01")
    await fleet.backup("vm-db01")
    await fleet.backup("vm-mail")
    flip_byte(fleet.image("vm-web01", newest.revision_id), 4096)
    verified = await fleet.verify("vm-web01")
    assert verified.state == resources_pb2.OPERATION_STATE_FAILED
    await fleet.poll()
    answer = await fleet.check(job="vm-web01")
    assert (answer.state, answer.exit_code) == (resources_pb2.SLA_STATE_WARNING, 1)
    assert answer.summary == (
        "LIFEBOAT WARNING - 1 warning: vm-web01 (newest revision distrusted; verification failed)"
    )
    assert (await fleet.check()).state == resources_pb2.SLA_STATE_WARNING


async def test_restored_down_puts_restores_in_doubt(fleet: Fleet) -> None:
    for job in JOBS:
        await fleet.backup(job)
    await fleet.stop("backup01.restored")
    await fleet.poll()
    answer = await fleet.check()
    assert answer.state == resources_pb2.SLA_STATE_WARNING
    assert answer.summary == (
        "LIFEBOAT WARNING - 2 warnings: vm-db01, vm-web01 (restored of host backup01 unreachable)"
    )
    report = await fleet.report(host="backup01")
    assert not report.hosts[0].reachable and "restored" in report.hosts[0].error


async def test_polls_in_the_background_every_interval(fleet: Fleet) -> None:
    for job in JOBS:
        await fleet.backup(job)
    await fleet.turn(POLL - EARLY)
    report = await fleet.report()
    assert {j.reason for j in report.jobs} == {"waiting for first backup"}, "not polled yet"
    await fleet.turn(EARLY)
    report = await fleet.report()
    assert all(j.reason.startswith("last good ") for j in report.jobs), report.jobs

    await fleet.stop("backup01.backupd")
    await fleet.turn(dt.timedelta(0))
    assert (await fleet.check(host="backup01")).state == resources_pb2.SLA_STATE_OK
    await fleet.turn(POLL)
    assert (await fleet.check(host="backup01")).state == resources_pb2.SLA_STATE_UNKNOWN

    await fleet.start_backupd("backup01")
    # The monitor's channel reconnects after grpc's reconnect backoff (real time, at most
    # 2s); the poll after that sees the host again.
    deadline = time.monotonic() + 5
    while (await fleet.check(host="backup01")).state != resources_pb2.SLA_STATE_OK:
        assert time.monotonic() < deadline, "a backupd that comes back is seen again"
        await asyncio.sleep(0.05)
        await fleet.turn(POLL)


# Longer than the test runs, so only the poller's own deadline, on the fake clock, can end
# a poll of the slow host: the RPC's real deadline (the poll interval as well) never comes.
SLOW_POLL = dt.timedelta(minutes=5)


async def test_slow_host_never_blocks_a_check(tmp_path: Path, fake: FakeClock) -> None:
    running = Fleet(tmp_path, fake, hosts=("backup01", "backup02"), poll_interval=SLOW_POLL)
    try:
        await running.start_backupd("backup01")
        await running.start_restored("backup01")
        await running.start_restored("backup02")
        servicer = SlowBackupService()
        spec = ServiceSpec(
            backup_pb2.DESCRIPTOR.services_by_name["BackupService"].full_name,
            lambda server: backup_pb2_grpc.add_BackupServiceServicer_to_server(servicer, server),
        )
        slow = GrpcDaemon("slow", running.address("backup02.backupd"), [spec])
        running.daemons["backup02.backupd"] = slow
        await slow.start()
        await running.start_scheduler()
        await running.start_monitor()
        # The poll of backup02 is under way, and never ends; the others' are real RPCs:
        # their answers must be in before the clock moves past their deadlines.
        await until(servicer.asked.is_set, "the monitor to ask backup02")
        others = ("scheduler", "backup01.backupd", "backup01.restored", "backup02.restored")
        await running.answered(*others)

        started = time.monotonic()
        answer = await running.check()
        # A check that waited for that poll would never have answered; a generous guard on
        # top, since a check is about wall time.
        assert time.monotonic() - started < 5, "a check never waits for a poll"
        assert answer.state == resources_pb2.SLA_STATE_UNKNOWN
        assert "vm-mail (no data from host backup02)" in answer.summary
        assert (await running.check(host="backup01")).state == resources_pb2.SLA_STATE_OK

        # The poller gives up at its deadline (the poll interval, plus the margin for
        # connecting), not before; the next interval's polls of the others go on meanwhile.
        given_up = SLOW_POLL + CONNECT_MARGIN * S
        # (Not running.turn: it would wait for every poll under way, backup02's too.)
        await running.clock.turn((given_up - EARLY).total_seconds(), POLL_LOOP)
        report = await running.report(host="backup02")
        assert (report.hosts[0].reachable, report.hosts[0].error) == (False, "not polled yet")
        assert report.jobs[0].reason == "no data about the host"
        await running.turn(EARLY)
        report = await running.report(host="backup02")
        seconds = SLOW_POLL.total_seconds()
        assert report.hosts[0].error.endswith(f"no answer within {seconds:g}s")
        assert report.jobs[0].state == resources_pb2.SLA_STATE_UNKNOWN
        backup01 = await running.report(host="backup01")
        # Polled as the interval passed, while backup02's poll hung (its answer arrived in
        # real time, before or after the last turn).
        assert backup01.hosts[0].reachable and backup01.hosts[0].data_age.ToTimedelta() <= EARLY
        assert (await running.check(host="backup01")).state == resources_pb2.SLA_STATE_OK
    finally:
        await running.stop_all()


async def test_reload_keeps_known_since_and_adds_jobs(fleet: Fleet) -> None:
    assert fleet.monitor is not None
    before = dict(fleet.monitor.poller.known_since)
    text = fleet.config_path.read_text().replace(
        "jobs:\n",
        f"jobs:\n  vm-new: {{host: backup02, schedule: default, source: {{type: file, path: {fleet.tmp_path}/new.raw}}}}\n",
    )
    fleet.config_path.write_text(text)
    await fleet.turn(90 * S)
    await fleet.daemons["monitor"].reload()
    after = fleet.monitor.poller.known_since
    assert {name: after[name] for name in before} == before
    assert after["vm-new"] == fleet.clock.now() == max(before.values()) + 90 * S
    await fleet.poll()
    assert [j.job for j in (await fleet.report(host="backup02")).jobs] == ["vm-mail", "vm-new"]


# -- HTTP ----------------------------------------------------------------------------------


def http_get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as reply:
            return reply.status, reply.headers["Content-Type"], reply.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.headers["Content-Type"], error.read().decode()


async def test_http_check_and_metrics(fleet: Fleet) -> None:
    base = f"http://{fleet.address('http')}"
    await fleet.backup("vm-web01")
    await fleet.poll()
    status, _, body = await asyncio.to_thread(http_get, f"{base}/check")
    expected = await fleet.check()
    assert (status, body) == (200, f"{expected.summary} | {expected.perfdata}\n")

    status, _, body = await asyncio.to_thread(http_get, f"{base}/check?job=vm-web01")
    assert status == 200 and body.startswith("LIFEBOAT OK - 1 of 1 job within SLA |")
    status, _, body = await asyncio.to_thread(http_get, f"{base}/check?job=vm-nope")
    assert status == 404 and body.startswith("LIFEBOAT UNKNOWN - no job named 'vm-nope'")
    status, _, body = await asyncio.to_thread(http_get, f"{base}/check?jb=vm-web01")
    assert status == 400 and "jb" in body

    status, content_type, body = await asyncio.to_thread(http_get, f"{base}/metrics")
    assert status == 200 and content_type.startswith("text/plain; version=0.0.4")
    assert 'lifeboat_job_sla_state{job="vm-web01",host="backup01"} 0' in body
    assert 'lifeboat_job_revisions{job="vm-web01",host="backup01"} 1' in body
    assert 'lifeboat_host_up{host="backup02"} 1' in body
    assert 'lifeboat_job_last_good_timestamp_seconds{job="vm-web01"' in body
    assert 'lifeboat_host_repository_free_bytes{host="backup01"} ' in body

    await fleet.turn(2 * H)
    status, _, body = await asyncio.to_thread(http_get, f"{base}/check")
    assert status == 503 and body.startswith("LIFEBOAT CRITICAL - ")


# -- check_lifeboat --------------------------------------------------------------------------


def run_plugin(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = check_plugin.main(args)
    out = capsys.readouterr().out
    return code, out


async def test_check_lifeboat(
    fleet: Fleet, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    address = fleet.address("monitor")
    monkeypatch.delenv(config_module.CONFIG_VARIABLE, raising=False)
    for job in JOBS:
        await fleet.backup(job)
    await fleet.poll()

    code, out = await asyncio.to_thread(run_plugin, ["-H", address], capsys)
    assert code == 0
    assert out.startswith("LIFEBOAT OK - 3 of 3 jobs within SLA | jobs=3 outside_sla=0 ")
    assert out.count("\n") == 1

    code, out = await asyncio.to_thread(
        run_plugin, ["--config", str(fleet.config_path), "--job", "vm-mail"], capsys
    )
    assert (code, out.split(" |")[0]) == (0, "LIFEBOAT OK - 1 of 1 job within SLA")

    await fleet.stop("backup02.backupd")
    await fleet.poll()
    code, out = await asyncio.to_thread(run_plugin, ["-H", address, "--host", "backup02"], capsys)
    assert (code, out.split(" |")[0]) == (
        3,
        "LIFEBOAT UNKNOWN - 1 unknown: vm-mail (host backup02 unreachable)",
    )

    await fleet.turn(2 * H)
    code, out = await asyncio.to_thread(run_plugin, ["-H", address, "--host", "backup01"], capsys)
    assert (code, out.split(" |")[0]) == (
        2,
        "LIFEBOAT CRITICAL - 2 of 2 jobs outside SLA: vm-db01, vm-web01 (last good 2h00m ago)",
    )
    code, out = await asyncio.to_thread(run_plugin, ["-H", address, "--job", "vm-nope"], capsys)
    assert (code, out) == (3, f"LIFEBOAT UNKNOWN - no job named 'vm-nope' in {fleet.config_path}\n")

    # The real console script, as Nagios runs it.
    process = await asyncio.create_subprocess_exec(
        str(BIN / "check_lifeboat"),
        "-H",
        address,
        "-t",
        "5",
        stdout=asyncio.subprocess.PIPE,
        env={k: v for k, v in os.environ.items() if k != config_module.CONFIG_VARIABLE},
    )
    stdout, _ = await process.communicate()
    assert process.returncode == 2
    assert stdout.decode().split(" |")[0] == (
        "LIFEBOAT CRITICAL - 2 of 3 jobs outside SLA: vm-db01, vm-web01 (last good 2h00m ago); "
        "1 unknown: vm-mail (host backup02 unreachable)"
    )


@contextlib.contextmanager
def silent_listener() -> Any:
    """A TCP port that accepts connections into its backlog but never answers."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield f"127.0.0.1:{listener.getsockname()[1]}"


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        pytest.param(
            lambda closed, silent: ["-H", closed, "-t", "2"],
            "LIFEBOAT UNKNOWN - cannot reach the monitor at {closed}: ",
            id="monitor-down",
        ),
        pytest.param(
            lambda closed, silent: ["-H", silent, "-t", "0.5"],
            "LIFEBOAT UNKNOWN - the monitor at {silent} did not answer within 0.5s",
            id="monitor-late",
        ),
        pytest.param(
            lambda closed, silent: ["-H", closed, "-t", "soon"],
            "LIFEBOAT UNKNOWN - argument -t/--timeout: not a number of seconds: 'soon'",
            id="bad-timeout",
        ),
        pytest.param(
            lambda closed, silent: ["--bogus"],
            "LIFEBOAT UNKNOWN - unrecognized arguments: --bogus",
            id="bad-usage",
        ),
    ],
)
def test_check_lifeboat_unknown(
    args: Callable[[str, str], list[str]], expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    closed = f"127.0.0.1:{free_port()}"
    with silent_listener() as silent:
        started = time.monotonic()
        try:
            code = check_plugin.main(args(closed, silent))
        except SystemExit as exit_:
            code = int(exit_.code or 0)
        elapsed = time.monotonic() - started
    out = capsys.readouterr().out
    assert code == 3
    assert out.startswith(expected.format(closed=closed, silent=silent)), out
    assert out.count("\n") == 1
    assert elapsed < 3


def test_plugin_defaults_match_the_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert f"127.0.0.1:{check_plugin.DEFAULT_PORT}" == config_module.DEFAULT_MONITOR
    assert check_plugin.CONFIG_VARIABLE == config_module.CONFIG_VARIABLE
    bad = tmp_path / "bad.yaml"
    bad.write_text("global: {worker-limit: many}\n")
    assert check_plugin.main(["--config", str(bad)]) == 3
    assert capsys.readouterr().out == (
        f"LIFEBOAT UNKNOWN - invalid config: {bad}: global.worker-limit: expected an integer, "
        "got 'many'\n"
    )


@pytest.mark.parametrize(
    ("given", "port", "address"),
    [
        pytest.param("monitor01", None, "monitor01:9413", id="name"),
        pytest.param("monitor01:1234", None, "monitor01:1234", id="name-port"),
        pytest.param("monitor01", 1234, "monitor01:1234", id="port-option"),
        pytest.param("0.0.0.0:9413", None, "127.0.0.1:9413", id="wildcard"),
        pytest.param("::1", None, "[::1]:9413", id="ipv6"),
        pytest.param("[::1]:1234", None, "[::1]:1234", id="ipv6-port"),
        pytest.param("[::]:9413", None, "[::1]:9413", id="ipv6-wildcard"),
    ],
)
def test_monitor_address(given: str, port: int | None, address: str) -> None:
    assert check_plugin.with_port(given, port) == address


# -- lifeboat status -------------------------------------------------------------------------


def run_admin(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        admin_main(args)
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


async def test_lifeboat_status(fleet: Fleet, capsys: pytest.CaptureFixture[str]) -> None:
    await fleet.backup("vm-web01")
    await fleet.stop("backup02.backupd")
    await fleet.poll()
    code, out, err = await asyncio.to_thread(
        run_admin, ["--config", str(fleet.config_path), "status"], capsys
    )
    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == [
        "JOB",
        "HOST",
        "STATE",
        "LAST",
        "GOOD",
        "SLA",
        "WINDOW",
        "NEXT",
        "RUN",
        "REASON",
    ]
    rows = {line.split()[0]: line.split() for line in lines[1:4]}
    assert rows["vm-web01"][:3] == ["vm-web01", "backup01", "OK"]
    assert rows["vm-web01"][4:6] == ["ago", "1h30m"]
    assert rows["vm-db01"][2:6] == ["OK", "never", "1h30m", "in"]
    assert rows["vm-mail"][2] == "UNKNOWN"
    hosts = {line.split()[0]: line.split() for line in lines[6:8]}
    assert hosts["backup01"][1] == "yes" and hosts["backup02"][1] == "NO"
    assert lines[-1] == f"scheduler {fleet.address('scheduler')}: reachable"

    code, out, err = await asyncio.to_thread(
        run_admin, ["--config", str(fleet.config_path), "status", "--job", "vm-nope"], capsys
    )
    assert code == 1 and "vm-nope" in err
