"""End to end: real lifeboat-backupd, lifeboat-restored and lifeboat-scheduler processes on
two hosts, file sources, a 20 s schedule. Revisions carry the right tags on the right host;
kill -9 and a restart change no next time and neither double nor miss a backup; reload by
SIGHUP and by RPC adds and removes jobs without touching a running backup. In plaintext
and over mTLS."""

from __future__ import annotations

import datetime as dt
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import grpc
import pytest

from lifeboat import client
from lifeboat import config as config_module
from lifeboat.schedule import next_run, next_slot, previous_slot
from lifeboat.v1 import (
    backup_pb2,
    backup_pb2_grpc,
    operations_pb2,
    operations_pb2_grpc,
    resources_pb2,
)
from lifeboat.v1 import scheduler_pb2 as pb
from lifeboat.v1 import scheduler_pb2_grpc as pb_grpc
from tests.support.processes import Daemon, Fleet, fleet, free_port, grpcurl
from tests.support.transport import Transport

pytestmark = pytest.mark.e2e

T = TypeVar("T")
SCHEDULES = {
    "fast": {"fast": {"interval": "20s", "keep": 5}, "slow": {"interval": "40s", "keep": 5}}
}
# vm-a's backups take this long (its freeze hook sleeps), so there is time to kill
# the scheduler or reload it while one runs.
HOOK_SECONDS = 4
SLACK = dt.timedelta(seconds=HOOK_SECONDS + 4)


def eventually(check: Callable[[], T | None], what: str, timeout: float = 40.0) -> T:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def utc(stamp: Any) -> dt.datetime:
    value: dt.datetime = stamp.ToDatetime(tzinfo=dt.UTC)
    return value


class Setup:
    def __init__(self, tmp_path: Path, running: Fleet, transport: Transport) -> None:
        self.tmp_path = tmp_path
        self.running = running
        self.transport = transport
        self.path = tmp_path / "lifeboat.yaml"
        self.scheduler_address = f"127.0.0.1:{free_port()}"
        self.hosts = {
            name: {
                "backupd": f"127.0.0.1:{free_port()}",
                "restored": f"127.0.0.1:{free_port()}",
                "base-dir": str(tmp_path / name),
            }
            for name in ("b1", "b2")
        }
        self.jobs: dict[str, dict[str, Any]] = {}
        self.former_hosts: dict[str, str] = {}
        self.scheduler: Daemon | None = None
        self.backupds: list[Daemon] = []

    def add_job(self, name: str, host: str, freeze: str = "") -> None:
        image = self.tmp_path / f"{name}.raw"
        image.write_bytes(random.randbytes(256 * 1024))
        self.jobs[name] = {
            "host": host,
            "schedule": "fast",
            "source": {"type": "file", "path": str(image)},
            **({"freeze-command": freeze} if freeze else {}),
        }

    def write(self) -> None:
        self.transport.write(
            self.path,
            {
                "global": {"base-dir": str(self.tmp_path / "repo"), "worker-limit": 2},
                "scheduler": {"listen": self.scheduler_address},
                "hosts": self.hosts,
                "schedules": SCHEDULES,
                "jobs": self.jobs,
            },
        )

    def config(self) -> config_module.Config:
        return config_module.load(str(self.path))

    def start_workers(self) -> None:
        for name, host in self.hosts.items():
            for module in ("backupd.cli", "restored.cli"):
                address = host[module.split(".")[0]]
                daemon = self.start(module, address, "--host", name)
                if module == "backupd.cli":
                    self.backupds.append(daemon)

    def reload_backupds(self) -> None:
        """SIGHUP every backupd and wait until each has its new jobs: a job the scheduler
        starts must be configured on its host."""
        marker = "jobs configured for host"
        for daemon in self.backupds:
            before = daemon.log().count(marker)
            daemon.process.send_signal(signal.SIGHUP)
            eventually(
                lambda d=daemon, n=before: d.log().count(marker) > n, f"{daemon.name} reload"
            )

    def start(self, module: str, address: str, *args: str) -> Daemon:
        daemon = self.running.start(
            module, address, "--config", str(self.path), *args, identity=self.transport.identity()
        )
        self.transport.assert_served(address)
        return daemon

    def start_scheduler(self) -> None:
        self.scheduler = self.start("scheduler.cli", self.scheduler_address)

    def views(self) -> dict[str, pb.JobView]:
        with client.channel(self.scheduler_address, self.transport.identity()) as channel:
            reply = pb_grpc.SchedulerServiceStub(channel).ListJobs(pb.ListJobsRequest(), timeout=10)
        return {view.job.name: view for view in reply.jobs}

    def revisions(self, job: str) -> list[resources_pb2.Revision]:
        host = self.hosts[self.host_of(job)]
        with client.channel(host["backupd"], self.transport.identity()) as channel:
            try:
                reply = backup_pb2_grpc.BackupServiceStub(channel).ListRevisions(
                    backup_pb2.ListRevisionsRequest(job=job), timeout=10
                )
            except grpc.RpcError as error:
                if error.code() == grpc.StatusCode.NOT_FOUND:
                    return []
                raise
        return list(reply.revisions)

    def backups(self, job: str, running_only: bool = False) -> list[resources_pb2.Operation]:
        host = self.hosts[self.host_of(job)]
        with client.channel(host["backupd"], self.transport.identity()) as channel:
            reply = operations_pb2_grpc.OperationServiceStub(channel).ListOperations(
                operations_pb2.ListOperationsRequest(
                    job=job, running_only=running_only, kind=resources_pb2.OPERATION_KIND_BACKUP
                ),
                timeout=10,
            )
        return list(reply.operations)

    def host_of(self, job: str) -> str:
        return str(self.jobs.get(job, {}).get("host") or self.former_hosts[job])

    def wait_revisions(self, job: str, count: int) -> list[resources_pb2.Revision]:
        return eventually(
            lambda: found if len(found := self.revisions(job)) >= count else None,
            f"{count} revisions of {job}",
        )

    def wait_running(self, job: str, after: dt.datetime) -> resources_pb2.Operation:
        def started() -> resources_pb2.Operation | None:
            running = self.backups(job, running_only=True)
            return running[0] if running and utc(running[0].create_time) >= after else None

        return eventually(started, f"a backup of {job} after {after}")

    def admin(self, *argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "lifeboat.admin", "--config", str(self.path), *argv],
            capture_output=True,
            text=True,
            timeout=30,
        )


def expected_tags(config: config_module.Config, job: str, slot: dt.datetime) -> list[str]:
    """The tags whose slot is exactly `slot`: fast always, slow on every other one."""
    schedule = config.jobs[job].schedule
    return sorted(tag.name for tag in schedule.tags if previous_slot(job, tag, slot) == slot)


def assert_one_revision_per_slot(
    config: config_module.Config,
    job: str,
    revisions: list[resources_pb2.Revision],
    until: dt.datetime | None = None,
) -> None:
    """After the first (catch-up) revision, exactly one revision per slot, right tags."""
    fast = next(tag for tag in config.jobs[job].schedule.tags if tag.name == "fast")
    first, *later = revisions
    slot = next_slot(job, fast, utc(first.create_time))
    for revision in later:
        written = utc(revision.create_time)
        assert slot <= written <= slot + SLACK, (
            f"{job}: revision {revision.id} at {written}, expected one after slot {slot}"
        )
        assert list(revision.tags) == expected_tags(config, job, slot), revision.id
        slot = next_slot(job, fast, written)
    assert slot + SLACK > (until or dt.datetime.now(dt.UTC)), f"{job}: slot {slot} has no revision"


def test_schedule_kill_restart_and_reload(tmp_path: Path, transport: Transport) -> None:
    with fleet(tmp_path) as running:
        setup = Setup(tmp_path, running, transport)
        setup.add_job("vm-a", "b1", freeze=f"sleep {HOOK_SECONDS}")
        setup.add_job("vm-b", "b2")
        setup.write()
        config = setup.config()
        setup.start_workers()
        setup.start_scheduler()

        # Never backed up: one catch-up backup each, with every tag, on its own host.
        for job in ("vm-a", "vm-b"):
            first = setup.wait_revisions(job, 1)[0]
            assert list(first.tags) == ["fast", "slow"]
            assert first.path.startswith(setup.hosts[config.jobs[job].host]["base-dir"])
        eventually(lambda: setup.views()["vm-a"].state == pb.JOB_STATE_WAITING, "vm-a idle")

        # The next times are the pure function of the hosts' revisions.
        before = setup.views()
        revisions_b = len(setup.revisions("vm-b"))
        for job, view in before.items():
            if view.state == pb.JOB_STATE_RUNNING:
                continue
            revisions = setup.revisions(job)
            times = {tag: utc(r.create_time) for r in revisions for tag in r.tags}
            plan = next_run(job, config.jobs[job].schedule, times, dt.datetime.now(dt.UTC))
            assert utc(view.next_run_time) == plan.time, job
            assert sorted(view.next_tags) == sorted(plan.tags), job

        # kill -9 while vm-a's slot backup runs; the restarted scheduler adopts it.
        slot_a = utc(before["vm-a"].next_run_time)
        setup.wait_running("vm-a", slot_a)
        backups_a = len(setup.backups("vm-a"))
        revisions_a = len(setup.revisions("vm-a"))
        assert setup.scheduler is not None
        setup.scheduler.kill()
        setup.start_scheduler()
        after = eventually(
            lambda: v if (v := setup.views())["vm-a"].state == pb.JOB_STATE_RUNNING else None,
            "the restarted scheduler to adopt vm-a's running backup",
        )
        if len(setup.revisions("vm-b")) == revisions_b:  # no vm-b slot in between
            assert after["vm-b"].next_run_time == before["vm-b"].next_run_time
            assert after["vm-b"].next_tags == before["vm-b"].next_tags
        written = setup.wait_revisions("vm-a", revisions_a + 1)[revisions_a]
        assert utc(written.create_time) >= slot_a
        assert list(written.tags) == expected_tags(config, "vm-a", slot_a)
        assert len(setup.backups("vm-a")) == backups_a, "a second backup of vm-a was started"

        jobs = setup.admin("jobs")
        assert jobs.returncode == 0, jobs.stderr
        assert "vm-a" in jobs.stdout and "vm-b" in jobs.stdout and " b2 " in jobs.stdout

        # SIGHUP while vm-a's next backup runs: vm-b goes, vm-c comes, vm-a carries on.
        eventually(lambda: setup.views()["vm-a"].state == pb.JOB_STATE_WAITING, "vm-a idle")
        slot_a2 = utc(setup.views()["vm-a"].next_run_time)
        setup.former_hosts["vm-b"] = "b2"
        removed = setup.jobs.pop("vm-b")
        setup.add_job("vm-c", "b2")
        setup.write()
        busy = setup.wait_running("vm-a", slot_a2)
        setup.reload_backupds()
        os.kill(setup.scheduler.process.pid, signal.SIGHUP)
        reloaded = setup.wait_revisions("vm-c", 1)
        assert list(reloaded[0].tags) == ["fast", "slow"]
        eventually(lambda: "vm-b" not in setup.views(), "vm-b to leave the schedule")
        eventually(lambda: not setup.backups("vm-b", running_only=True), "vm-b idle")
        vm_b_revisions = setup.revisions("vm-b")
        reload_time = dt.datetime.now(dt.UTC)
        eventually(lambda: not setup.backups("vm-a", running_only=True), "vm-a's backup to end")
        finished = next(op for op in setup.backups("vm-a") if op.name == busy.name)
        assert finished.state == resources_pb2.OPERATION_STATE_SUCCEEDED, finished.error
        fast_b = next(tag for tag in config.jobs["vm-b"].schedule.tags if tag.name == "fast")
        quiet_until = next_slot("vm-b", fast_b, dt.datetime.now(dt.UTC)) + SLACK
        time.sleep(max(0.0, (quiet_until - dt.datetime.now(dt.UTC)).total_seconds()))
        assert setup.revisions("vm-b") == vm_b_revisions, "a removed job was backed up"

        # ReloadConfig by RPC: a bad file changes nothing; then `lifeboat reload`.
        setup.jobs["vm-b"] = {**removed, "schedule": "hourly"}
        setup.write()
        bad = grpcurl(
            *transport.grpcurl_flags(),
            setup.scheduler_address,
            "lifeboat.v1.SchedulerService/ReloadConfig",
        )
        assert bad.returncode != 0 and "InvalidArgument" in bad.stderr, bad.stderr
        assert "jobs.vm-b.schedule: no schedule named 'hourly'" in bad.stderr, bad.stderr
        assert sorted(setup.views()) == ["vm-a", "vm-c"]
        setup.jobs["vm-b"] = removed
        setup.write()
        setup.reload_backupds()
        good = setup.admin("reload")
        assert good.returncode == 0, good.stderr
        assert good.stdout.splitlines() == ["added: vm-b", "removed: -", "changed: -"]
        assert sorted(setup.views()) == ["vm-a", "vm-b", "vm-c"]

        for job in ("vm-a", "vm-c"):
            assert_one_revision_per_slot(
                config_module.load(str(setup.path)), job, setup.revisions(job)
            )
        assert_one_revision_per_slot(config, "vm-b", vm_b_revisions, until=reload_time)
        log = setup.scheduler.log()
        assert "Traceback" not in log, log
