"""`make bench BENCH=scheduler`: the real lifeboat-scheduler over 10,000 jobs on 10 hosts.

Stand-in backupd and restored grpc.aio servers (20 of them, in this process, on
127.0.0.1 ports) answer ListJobStatuses, GetJobStatus, StartBackup, GetHostStatus and
OperationService like real hosts, but a "backup" only takes BACKUP_SECONDS and writes
nothing. The real scheduler runs as a subprocess, so its RSS and CPU are its own.

Two runs:

* start-up: a daily/weekly schedule; 10 % of the jobs were never backed up, 10 % missed
  their slot, the rest are up to date. Measured: the catch-up scan (process start until
  every host was scanned and its first catch-up backup started), the time until every
  catch-up backup started, that exactly the due jobs got exactly one backup with the due
  tags, then RSS and the CPU of the idle scheduler (a daily schedule over 10,000 jobs
  leaves about one slot every 9 s).
* busy: a 10-minute schedule, nothing due at start, so about 17 slots a second arrive;
  with free slots on every host, dispatch lateness is the start time seen by the
  stand-in backupd minus the slot time (lifeboat.schedule.previous_slot).

Goals: RSS < 300 MB, idle CPU < 5 % of one core, catch-up scan < 30 s, lateness
p99 < 1 s. The scheduler has no machine limit to compare against (it moves no data);
the figures are absolute, CPU as a fraction of one core.

    make bench BENCH=scheduler
    .venv/bin/python -m bench.bench_scheduler --jobs 2000 --busy-seconds 20
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import itertools
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from bench.common import report
from lifeboat import config as config_module
from lifeboat.model import Schedule, TagSpec
from lifeboat.schedule import due_tags, previous_slot
from lifeboat.v1 import (
    backup_pb2,
    backup_pb2_grpc,
    operations_pb2,
    operations_pb2_grpc,
    resources_pb2,
)
from tests.support.processes import REPO, free_port, wait_serving

HOSTS = 10
JOBS = 10_000
WORKER_LIMIT = 25
BACKUP_SECONDS = 0.2
IDLE_SECONDS = 20.0
BUSY_SECONDS = 60.0
GOAL_RSS_MB = 300
GOAL_IDLE_CPU = 0.05
GOAL_SCAN_SECONDS = 30.0
GOAL_LATENESS_P99 = 1.0

D = dt.timedelta(days=1)
STARTUP_SCHEDULE = Schedule("startup", (TagSpec("daily", D, 7), TagSpec("weekly", 7 * D, 4)))
BUSY_SCHEDULE = Schedule("busy", (TagSpec("often", dt.timedelta(minutes=10), 6),))


def job_name(index: int) -> str:
    return f"vm-{index:05d}"


def host_name(index: int) -> str:
    return f"h{index:02d}"


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@dataclass
class Start:
    """One StartBackup the stand-in accepted."""

    job: str
    tags: tuple[str, ...]
    at: dt.datetime
    monotonic: float


@dataclass
class StandInHost:
    """What a stand-in backupd knows: tag times per job, running and finished operations."""

    name: str
    tag_times: dict[str, dict[str, dt.datetime]] = field(default_factory=dict)
    running: dict[str, resources_pb2.Operation] = field(default_factory=dict)
    operations: dict[str, resources_pb2.Operation] = field(default_factory=dict)
    starts: list[Start] = field(default_factory=list)
    refused: int = 0
    doubled: int = 0
    scans: list[float] = field(default_factory=list)
    counter: itertools.count[int] = field(default_factory=itertools.count)

    def status(self, job: str) -> resources_pb2.JobStatus:
        status = resources_pb2.JobStatus(job=job)
        for tag, when in self.tag_times.get(job, {}).items():
            status.last_tag_times[tag].FromDatetime(when)
        if job in self.running:
            status.running_operation.CopyFrom(self.running[job])
        return status

    def start(self, job: str, tags: list[str]) -> tuple[resources_pb2.Operation, bool]:
        if job in self.running:
            self.doubled += 1
            return self.running[job], False
        if len(self.running) >= WORKER_LIMIT:
            self.refused += 1
            raise LookupError("no free slot")
        operation = resources_pb2.Operation(
            name=f"backup-{job}-{next(self.counter)}",
            kind=resources_pb2.OPERATION_KIND_BACKUP,
            job=job,
            host=self.name,
            state=resources_pb2.OPERATION_STATE_RUNNING,
            tags=tags,
        )
        stamp = now()
        operation.create_time.FromDatetime(stamp)
        self.running[job] = operation
        self.operations[operation.name] = operation
        self.starts.append(Start(job, tuple(tags), stamp, time.monotonic()))
        asyncio.get_running_loop().call_later(BACKUP_SECONDS, self.finish, job)
        return operation, True

    def finish(self, job: str) -> None:
        operation = self.running.pop(job)
        operation.state = resources_pb2.OPERATION_STATE_SUCCEEDED
        stamp = now()
        operation.end_time.FromDatetime(stamp)
        times = self.tag_times.setdefault(job, {})
        for tag in operation.tags:
            times[tag] = stamp


class StandInBackupd(backup_pb2_grpc.BackupServiceServicer):
    def __init__(self, host: StandInHost) -> None:
        self.host = host

    async def ListJobStatuses(self, request: Any, context: Any) -> Any:
        self.host.scans.append(time.monotonic())
        jobs = self.host.tag_times.keys() | self.host.running.keys()
        return backup_pb2.ListJobStatusesResponse(
            statuses=[self.host.status(job) for job in sorted(jobs)]
        )

    async def GetJobStatus(self, request: Any, context: Any) -> Any:
        return backup_pb2.GetJobStatusResponse(status=self.host.status(request.job))

    async def StartBackup(self, request: Any, context: Any) -> Any:
        try:
            operation, started = self.host.start(request.job, list(request.tags))
        except LookupError as error:
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, str(error))
        return backup_pb2.StartBackupResponse(operation=operation, started=started)

    async def GetHostStatus(self, request: Any, context: Any) -> Any:
        return backup_pb2.GetHostStatusResponse(
            host=self.host.name,
            running_backups=len(self.host.running),
            worker_limit=WORKER_LIMIT,
        )


class StandInOperations(operations_pb2_grpc.OperationServiceServicer):
    """backupd's OperationService over the stand-in's operations; restored's has none."""

    def __init__(self, host: StandInHost | None) -> None:
        self.host = host

    async def ListOperations(self, request: Any, context: Any) -> Any:
        if self.host is None:
            return operations_pb2.ListOperationsResponse()
        return operations_pb2.ListOperationsResponse(operations=list(self.host.running.values()))

    async def GetOperation(self, request: Any, context: Any) -> Any:
        assert self.host is not None
        operation = self.host.operations.get(request.name)
        if operation is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"no operation {request.name}")
        return operations_pb2.GetOperationResponse(operation=operation)


async def serve(servicers: list[tuple[Any, Any]], address: str) -> grpc.aio.Server:
    server = grpc.aio.server()
    for add, servicer in servicers:
        add(servicer, server)
    server.add_insecure_port(address)
    await server.start()
    return server


@dataclass
class Fleet:
    hosts: list[StandInHost]
    addresses: list[tuple[str, str]]
    servers: list[grpc.aio.Server]
    jobs: dict[str, StandInHost]

    async def stop(self) -> None:
        await asyncio.gather(*(server.stop(None) for server in self.servers))

    def starts(self) -> list[Start]:
        return sorted((s for host in self.hosts for s in host.starts), key=lambda s: s.monotonic)


async def start_fleet(jobs: int) -> Fleet:
    hosts = [StandInHost(host_name(i)) for i in range(HOSTS)]
    addresses = [(f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}") for _ in hosts]
    servers = []
    for host, (backupd, restored) in zip(hosts, addresses, strict=True):
        servers.append(
            await serve(
                [
                    (backup_pb2_grpc.add_BackupServiceServicer_to_server, StandInBackupd(host)),
                    (
                        operations_pb2_grpc.add_OperationServiceServicer_to_server,
                        StandInOperations(host),
                    ),
                ],
                backupd,
            )
        )
        servers.append(
            await serve(
                [
                    (
                        operations_pb2_grpc.add_OperationServiceServicer_to_server,
                        StandInOperations(None),
                    )
                ],
                restored,
            )
        )
    owner = {job_name(i): hosts[i % HOSTS] for i in range(jobs)}
    return Fleet(hosts, addresses, servers, owner)


def write_config(
    path: Path, fleet: Fleet, schedule: Schedule, jobs: int, listen: str
) -> config_module.Config:
    lines = [
        f"global: {{base-dir: /srv/lifeboat, worker-limit: {WORKER_LIMIT}}}",
        f"scheduler: {{listen: {listen}}}",
        "hosts:",
    ]
    for host, (backupd, restored) in zip(fleet.hosts, fleet.addresses, strict=True):
        lines.append(f"  {host.name}: {{backupd: {backupd}, restored: {restored}}}")
    lines.append("schedules:")
    lines.append(f"  {schedule.name}:")
    for tag in schedule.tags:
        lines.append(
            f"    {tag.name}: {{interval: {int(tag.interval.total_seconds())}s, keep: {tag.keep}}}"
        )
    lines.append("jobs:")
    for index in range(jobs):
        name = job_name(index)
        lines.append(
            f"  {name}: {{host: {fleet.jobs[name].name}, schedule: {schedule.name}, "
            f"source: {{type: file, path: /images/{name}.raw}}}}"
        )
    path.write_text("\n".join(lines) + "\n")
    started = time.monotonic()
    config = config_module.load(str(path))
    print(f"  config of {jobs} jobs loads in {time.monotonic() - started:.2f}s")
    return config


class Scheduler:
    """The real lifeboat-scheduler as a subprocess."""

    def __init__(self, config: Path, listen: str, log: Path) -> None:
        self.listen = listen
        self.log_path = log
        self.started = time.monotonic()
        with log.open("wb") as sink:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "scheduler.cli", "--config", str(config)],
                cwd=REPO,
                stdout=sink,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                start_new_session=True,
            )

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks

    def memory(self, key: str) -> int:
        for line in Path(f"/proc/{self.process.pid}/status").read_text().splitlines():
            if line.startswith(f"{key}:"):
                return int(line.split()[1]) * 1024
        return 0

    def log_tail(self, lines: int = 20) -> str:
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, failed: bool = False) -> None:
        if failed:
            print(f"--- scheduler log (last lines) ---\n{self.log_tail()}", file=sys.stderr)
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


async def wait_for(condition: Any, what: str, timeout: float) -> float:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        await asyncio.sleep(0.05)
    return time.monotonic()


def seed_startup(fleet: Fleet, jobs: int, at: dt.datetime) -> dict[str, frozenset[str]]:
    """10 % never backed up, 10 % missed their slot, the rest up to date; returns the due tags."""
    due = {}
    for index in range(jobs):
        name = job_name(index)
        host = fleet.jobs[name]
        kind = (index // HOSTS) % 10  # jobs go round-robin to hosts: spread kinds over hosts
        if kind == 0:
            times: dict[str, dt.datetime] = {}
        elif kind == 1:
            times = {
                t.name: previous_slot(name, t, at) - dt.timedelta(hours=1)
                for t in STARTUP_SCHEDULE.tags
            }
        else:
            times = {
                t.name: previous_slot(name, t, at) + dt.timedelta(seconds=1)
                for t in STARTUP_SCHEDULE.tags
            }
        if times:
            host.tag_times[name] = times
        tags = due_tags(name, STARTUP_SCHEDULE, times, at)
        if tags:
            due[name] = tags
    return due


def seed_busy(fleet: Fleet, jobs: int, at: dt.datetime) -> None:
    for index in range(jobs):
        name = job_name(index)
        fleet.jobs[name].tag_times[name] = {
            t.name: previous_slot(name, t, at) + dt.timedelta(seconds=1) for t in BUSY_SCHEDULE.tags
        }


async def startup_run(args: argparse.Namespace, workdir: Path, rows: list[Any]) -> None:
    print(f"start-up: {args.jobs} jobs on {HOSTS} hosts, daily+weekly schedule")
    fleet = await start_fleet(args.jobs)
    listen = f"127.0.0.1:{free_port()}"
    config_path = workdir / "startup.yaml"
    write_config(config_path, fleet, STARTUP_SCHEDULE, args.jobs, listen)
    due = seed_startup(fleet, args.jobs, now())
    scheduler = Scheduler(config_path, listen, workdir / "scheduler-startup.log")
    try:
        await asyncio.to_thread(wait_serving, listen, 60.0)
        serving = time.monotonic() - scheduler.started
        every_host_started = await wait_for(
            lambda: all(host.starts for host in fleet.hosts), "every host's first backup", 120
        )
        scan = every_host_started - scheduler.started
        all_started = await wait_for(
            lambda: {s.job for s in fleet.starts()} >= due.keys(), "every catch-up backup", 300
        )
        catch_up = all_started - scheduler.started
        await wait_for(
            lambda: not any(host.running for host in fleet.hosts), "the catch-up to end", 60
        )
        await asyncio.sleep(3.0)  # let the scheduler take in the last results
        print(
            f"  serving after {serving:.2f}s; every host scanned and catching up after {scan:.2f}s; "
            f"all {len(due)} catch-up backups started after {catch_up:.2f}s "
            f"(worker-limit {WORKER_LIMIT}, backups of {BACKUP_SECONDS}s)"
        )
        starts = fleet.starts()
        by_job: dict[str, list[Start]] = {}
        for start in starts:
            by_job.setdefault(start.job, []).append(start)
        wrong_tags = [j for j, tags in due.items() if set(by_job[j][0].tags) != tags]
        twice = [j for j, s in by_job.items() if len(s) > 1]
        unexpected = [j for j in by_job if j not in due]
        refused = sum(host.refused for host in fleet.hosts)
        print(
            f"  {len(starts)} backups started: {len(twice)} jobs twice, {len(wrong_tags)} with "
            f"wrong tags, {len(unexpected)} not due at start (their slot came), "
            f"{refused} refused for lack of slots"
        )

        cpu_before, idle_started = scheduler.cpu_seconds(), time.monotonic()
        before = len(fleet.starts())
        await asyncio.sleep(args.idle_seconds)
        idle_cpu = (scheduler.cpu_seconds() - cpu_before) / (time.monotonic() - idle_started)
        print(
            f"  idle for {args.idle_seconds:.0f}s: {len(fleet.starts()) - before} backups started, "
            f"CPU {idle_cpu * 100:.2f}% of one core"
        )
        rss = scheduler.memory("VmRSS")
        peak = scheduler.memory("VmHWM")
        print(f"  RSS {rss / 2**20:.0f} MB (peak {peak / 2**20:.0f} MB)")
        rows += [
            (
                "start-up catch-up scan (s)",
                f"{scan:.2f}",
                f"< {GOAL_SCAN_SECONDS:.0f}",
                scan < GOAL_SCAN_SECONDS,
            ),
            (
                "catch-up: due jobs started once, right tags",
                f"{len(due) - len(wrong_tags) - len(twice)}/{len(due)}",
                "all",
                not wrong_tags and not twice and due.keys() <= by_job.keys(),
            ),
            (
                "idle CPU (fraction of one core)",
                f"{idle_cpu:.4f}",
                f"< {GOAL_IDLE_CPU}",
                idle_cpu < GOAL_IDLE_CPU,
            ),
            (
                "RSS after start-up, peak (MB)",
                f"{peak / 2**20:.0f}",
                f"< {GOAL_RSS_MB}",
                peak < GOAL_RSS_MB * 2**20,
            ),
        ]
    except BaseException:
        scheduler.stop(failed=True)
        raise
    finally:
        scheduler.stop()
        await fleet.stop()


async def busy_run(args: argparse.Namespace, workdir: Path, rows: list[Any]) -> None:
    print(f"busy: {args.jobs} jobs on {HOSTS} hosts, every 10 minutes")
    fleet = await start_fleet(args.jobs)
    listen = f"127.0.0.1:{free_port()}"
    config_path = workdir / "busy.yaml"
    write_config(config_path, fleet, BUSY_SCHEDULE, args.jobs, listen)
    seed_busy(fleet, args.jobs, now())
    scheduler = Scheduler(config_path, listen, workdir / "scheduler-busy.log")
    try:
        await asyncio.to_thread(wait_serving, listen, 60.0)
        await wait_for(lambda: all(h.scans for h in fleet.hosts), "every host scanned", 60)
        await asyncio.sleep(2.0)
        measured_from = now()
        cpu_before, started = scheduler.cpu_seconds(), time.monotonic()
        await asyncio.sleep(args.busy_seconds)
        cpu = (scheduler.cpu_seconds() - cpu_before) / (time.monotonic() - started)
        (tag,) = BUSY_SCHEDULE.tags
        late = sorted(
            (s.at - previous_slot(s.job, tag, s.at)).total_seconds()
            for s in fleet.starts()
            if previous_slot(s.job, tag, s.at) >= measured_from
        )
        expected = sum(
            1
            for index in range(args.jobs)
            if measured_from
            < previous_slot(job_name(index), tag, now())
            <= now() - dt.timedelta(seconds=2)
        )
        p50 = statistics.median(late) if late else float("nan")
        p99 = late[int(0.99 * (len(late) - 1))] if late else float("nan")
        refused = sum(host.refused for host in fleet.hosts)
        print(
            f"  {len(late)} slots in {args.busy_seconds:.0f}s (at least {expected} expected): "
            f"lateness p50 {p50 * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms, "
            f"max {late[-1] * 1000 if late else float('nan'):.1f} ms; {refused} refused"
        )
        rss = scheduler.memory("VmHWM")
        print(f"  CPU under load {cpu * 100:.1f}% of one core; RSS peak {rss / 2**20:.0f} MB")
        rows += [
            (
                "dispatch lateness p99 (s)",
                f"{p99:.3f}",
                f"< {GOAL_LATENESS_P99}",
                p99 < GOAL_LATENESS_P99,
            ),
            (
                "slots started in the window",
                f"{len(late)}",
                f">= {expected}",
                len(late) >= expected > 0,
            ),
            (
                "RSS under load, peak (MB)",
                f"{rss / 2**20:.0f}",
                f"< {GOAL_RSS_MB}",
                rss < GOAL_RSS_MB * 2**20,
            ),
        ]
    except BaseException:
        scheduler.stop(failed=True)
        raise
    finally:
        scheduler.stop()
        await fleet.stop()


async def run(args: argparse.Namespace) -> int:
    rows: list[Any] = []
    with tempfile.TemporaryDirectory(prefix="bench-scheduler-") as workdir:
        await startup_run(args, Path(workdir), rows)
        await busy_run(args, Path(workdir), rows)
    return report(rows)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench_scheduler")
    parser.add_argument("--jobs", type=int, default=JOBS)
    parser.add_argument("--idle-seconds", type=float, default=IDLE_SECONDS)
    parser.add_argument("--busy-seconds", type=float, default=BUSY_SECONDS)
    args, _ = parser.parse_known_args(argv)
    return asyncio.run(run(args))


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
