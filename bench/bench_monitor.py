"""`make bench BENCH=monitor`: check_lifeboat against a monitor watching 1,000 jobs on 5 hosts.

Stand-in backupd/restored grpc.aio servers (and a stand-in scheduler) run in this
process on 127.0.0.1 and answer like busy hosts: 200 jobs each, with revisions,
restore estimates and a running restore. The real `lifeboat-monitor` runs as a
subprocess polling them every second; the real `check_lifeboat` console script is
run as a subprocess, end to end, as Nagios would.

Goals: a check_lifeboat run completes in < 300 ms wall time; the monitor's RSS
stays < 200 MB. The machine's own limit is measured in the same run: the wall time
of a bare Python process that imports grpc and makes one health call to the
monitor (what any Python gRPC plugin costs at least).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import duration_pb2, timestamp_pb2

from lifeboat.v1 import (
    backup_pb2,
    backup_pb2_grpc,
    operations_pb2,
    operations_pb2_grpc,
    resources_pb2,
    restore_pb2,
    restore_pb2_grpc,
    scheduler_pb2,
    scheduler_pb2_grpc,
)

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
HOSTS = 5
JOBS = 1000
RUNS = 20
GOAL_SECONDS = 0.300
GOAL_RSS_MB = 200
POLL_INTERVAL = 1.0
GiB = 1 << 30


def job_name(index: int) -> str:
    return f"vm-{index:04d}"


def host_name(index: int) -> str:
    return f"backup{index + 1:02d}"


def host_of(job: int) -> int:
    return job % HOSTS


def stamp(when: dt.datetime) -> timestamp_pb2.Timestamp:
    result = timestamp_pb2.Timestamp()
    result.FromDatetime(when)
    return result


def seconds(value: float) -> duration_pb2.Duration:
    result = duration_pb2.Duration()
    result.FromTimedelta(dt.timedelta(seconds=value))
    return result


def revision(job: str, when: dt.datetime, trust: int = resources_pb2.TRUST_TRUSTED) -> Any:
    rev_id = when.strftime("%Y%m%dT%H%M%SZ") + "-3f9a"
    failed = trust == resources_pb2.TRUST_DISTRUSTED
    return resources_pb2.Revision(
        id=rev_id,
        job=job,
        create_time=stamp(when),
        parent_id="20261126T183200Z-0b1c",
        tags=["daily", "hourly"],
        size=20 * GiB,
        block_size=16384,
        checksum_algorithm="xxh3-128",
        trust=trust,
        verification=resources_pb2.Verification(
            state=(
                resources_pb2.VERIFICATION_STATE_FAILED
                if failed
                else resources_pb2.VERIFICATION_STATE_PASSED
            ),
            verify_time=stamp(when),
            against="source",
            blocks_checked=13,
            blocks_total=1310720,
        ),
        stats=resources_pb2.RevisionStats(
            bytes_read=20 * GiB, bytes_written=300 << 20, blocks_changed=19200, duration=seconds(95)
        ),
        path=f"/srv/lifeboat/{job}/{rev_id}",
    )


def job_status(index: int, now: dt.datetime) -> Any:
    """A realistic status; a few jobs are stale or distrusted so the check has names to list."""
    name = job_name(index)
    newest = now - dt.timedelta(minutes=(index * 7) % 55 + 1)
    if index % 250 == 3:
        newest = now - dt.timedelta(days=2, hours=3)
    status = resources_pb2.JobStatus(
        job=name, revision_count=31, bytes_used=40 * GiB + index * 4096
    )
    trust = resources_pb2.TRUST_DISTRUSTED if index % 333 == 5 else resources_pb2.TRUST_TRUSTED
    status.last_revision.CopyFrom(revision(name, newest, trust))
    status.last_good_revision.CopyFrom(revision(name, newest - dt.timedelta(hours=1)))
    if trust == resources_pb2.TRUST_TRUSTED:
        status.last_good_revision.CopyFrom(status.last_revision)
    for tag in ("hourly", "daily"):
        status.last_tag_times[tag].CopyFrom(stamp(newest))
    return status


class StandInBackupd(backup_pb2_grpc.BackupServiceServicer):
    """Answers are built once: the stand-ins must cost next to nothing, the monitor is measured."""

    def __init__(self, host: int) -> None:
        self.host = host
        now = dt.datetime.now(dt.UTC)
        self.statuses = backup_pb2.ListJobStatusesResponse(
            statuses=[
                job_status(i, now)
                for i in range(JOBS)
                if host_of(i) == host and i % 400 != 7  # a few never backed up
            ]
        )

    async def ListJobStatuses(self, request: Any, context: Any) -> Any:
        return self.statuses

    async def GetHostStatus(self, request: Any, context: Any) -> Any:
        return backup_pb2.GetHostStatusResponse(
            host=host_name(self.host),
            base_dir="/srv/lifeboat",
            free_bytes=3 << 40,
            total_bytes=10 << 40,
            running_backups=2,
            worker_limit=2,
            reflink=True,
            time=stamp(dt.datetime.now(dt.UTC)),
        )


class StandInRestored(restore_pb2_grpc.RestoreServiceServicer):
    def __init__(self, host: int) -> None:
        self.host = host
        self.estimates = self._estimates()

    async def ListRestoreEstimates(self, request: Any, context: Any) -> Any:
        return self.estimates

    def _estimates(self) -> Any:
        return restore_pb2.ListRestoreEstimatesResponse(
            estimates=[
                restore_pb2.RestoreEstimate(
                    job=job_name(i),
                    size=20 * GiB,
                    predicted_duration=seconds(20 * GiB / (400 << 20)),
                    restore_within=seconds(4 * 3600),
                    meets_restore_within=True,
                )
                for i in range(JOBS)
                if host_of(i) == self.host
            ],
            throughput_bytes_per_second=float(400 << 20),
            running_restores=1,
        )


class StandInOperations(operations_pb2_grpc.OperationServiceServicer):
    def __init__(self, host: int) -> None:
        self.host = host

    async def ListOperations(self, request: Any, context: Any) -> Any:
        started = dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5)
        job = job_name(self.host)
        return operations_pb2.ListOperationsResponse(
            operations=[
                resources_pb2.Operation(
                    name=f"restore-{job}-1",
                    kind=resources_pb2.OPERATION_KIND_RESTORE,
                    job=job,
                    host=host_name(self.host),
                    state=resources_pb2.OPERATION_STATE_RUNNING,
                    start_time=stamp(started),
                    bytes_done=10 * GiB,
                    bytes_total=20 * GiB,
                    eta=seconds(300),
                    restore_within=seconds(4 * 3600),
                    meets_restore_within=True,
                )
            ]
        )


class StandInScheduler(scheduler_pb2_grpc.SchedulerServiceServicer):
    def __init__(self) -> None:
        self.jobs = self._jobs()

    async def ListJobs(self, request: Any, context: Any) -> Any:
        return self.jobs

    @staticmethod
    def _jobs() -> Any:
        soon = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=30)
        return scheduler_pb2.ListJobsResponse(
            jobs=[
                scheduler_pb2.JobView(
                    job=resources_pb2.Job(name=job_name(i), host=host_name(host_of(i))),
                    state=scheduler_pb2.JOB_STATE_WAITING,
                    next_run_time=stamp(soon),
                )
                for i in range(JOBS)
            ]
        )


class StandIns:
    """The stand-in servers, on their own event loop in a thread."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.servers: list[grpc.aio.Server] = []
        self.ports: dict[str, int] = {}
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)

    def start(self) -> None:
        self.thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(30)

    async def _serve(self, name: str, *adders: Callable[[grpc.aio.Server], None]) -> None:
        server = grpc.aio.server()
        for add in adders:
            add(server)
        self.ports[name] = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        self.servers.append(server)

    async def _start(self) -> None:
        for host in range(HOSTS):
            backupd, restored, ops = (
                StandInBackupd(host),
                StandInRestored(host),
                StandInOperations(host),
            )
            await self._serve(
                f"{host_name(host)}.backupd",
                lambda s, b=backupd: backup_pb2_grpc.add_BackupServiceServicer_to_server(b, s),
            )
            await self._serve(
                f"{host_name(host)}.restored",
                lambda s, r=restored: restore_pb2_grpc.add_RestoreServiceServicer_to_server(r, s),
                lambda s, o=ops: operations_pb2_grpc.add_OperationServiceServicer_to_server(o, s),
            )
        scheduler = StandInScheduler()
        await self._serve(
            "scheduler",
            lambda s: scheduler_pb2_grpc.add_SchedulerServiceServicer_to_server(scheduler, s),
        )

    def stop(self) -> None:
        async def stop_all() -> None:
            for server in self.servers:
                await server.stop(0)

        asyncio.run_coroutine_threadsafe(stop_all(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def write_config(path: Path, ports: dict[str, int], monitor: int, http: int) -> None:
    lines = [
        "global: {base-dir: /srv/lifeboat, restore-within: 4h}",
        f"scheduler: {{listen: 127.0.0.1:{ports['scheduler']}}}",
        f"monitor: {{listen: 127.0.0.1:{monitor}, http: 127.0.0.1:{http}, "
        f"poll-interval: {POLL_INTERVAL}}}",
        "hosts:",
    ]
    for host in range(HOSTS):
        name = host_name(host)
        lines.append(
            f"  {name}: {{backupd: 127.0.0.1:{ports[name + '.backupd']}, "
            f"restored: 127.0.0.1:{ports[name + '.restored']}}}"
        )
    lines += [
        "schedules:",
        "  default: {hourly: {interval: 1h, keep: 24}, daily: {interval: 1d, keep: 7}}",
        "jobs:",
    ]
    for i in range(JOBS):
        lines.append(
            f"  {job_name(i)}: {{host: {host_name(host_of(i))}, schedule: default, "
            f"source: {{type: ceph-rbd, pool: rbd, image: {job_name(i)}.root}}}}"
        )
    path.write_text("\n".join(lines) + "\n")


def timed(argv: list[str]) -> tuple[float, subprocess.CompletedProcess[str]]:
    env = {k: v for k, v in os.environ.items() if k != "LIFEBOAT_CONFIG"}
    started = time.perf_counter()
    result = subprocess.run(argv, capture_output=True, text=True, timeout=30, env=env, cwd=REPO)
    return time.perf_counter() - started, result


def series(argv: list[str], runs: int) -> tuple[list[float], subprocess.CompletedProcess[str]]:
    times = []
    result: subprocess.CompletedProcess[str] | None = None
    for _ in range(runs):
        elapsed, result = timed(argv)
        times.append(elapsed)
    assert result is not None
    return times, result


def describe(times: list[float]) -> str:
    ordered = sorted(times)
    p90 = ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]
    return (
        f"min {ordered[0] * 1000:6.1f} ms  median {statistics.median(ordered) * 1000:6.1f} ms  "
        f"p90 {p90 * 1000:6.1f} ms  max {ordered[-1] * 1000:6.1f} ms"
    )


def rss_mb(pid: int) -> tuple[float, float]:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()
    return int(fields["VmRSS"].split()[0]) / 1024, int(fields["VmHWM"].split()[0]) / 1024


def wait_for_data(address: str, deadline: float) -> str:
    """Until the monitor answers and every host and the scheduler have answered it."""
    line = ""
    while time.monotonic() < deadline:
        _, result = timed([str(BIN / "check_lifeboat"), "-H", address])
        line = result.stdout
        if not any(
            problem in line
            for problem in ("no data", " unreachable", "scheduler unavailable", "cannot reach")
        ):
            return line
        time.sleep(0.2)
    raise RuntimeError(f"the monitor did not get data from every host: {line}")


def http_times(url: str, runs: int) -> tuple[list[float], int]:
    times, size = [], 0
    for _ in range(runs):
        started = time.perf_counter()
        try:
            with urllib.request.urlopen(url, timeout=10) as reply:
                size = len(reply.read())
        except urllib.error.HTTPError as error:  # /check answers 503 when CRITICAL
            size = len(error.read())
        times.append(time.perf_counter() - started)
    return times, size


BASELINE = (
    "import grpc, sys; from grpc_health.v1 import health_pb2, health_pb2_grpc; "
    "ch = grpc.insecure_channel(sys.argv[1]); "
    "health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)"
)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench_monitor")
    parser.add_argument("--runs", type=int, default=RUNS)
    args, _ = parser.parse_known_args([a for a in argv if a != "monitor"])
    stand_ins = StandIns()
    stand_ins.start()
    monitor_port, http_port = free_port(), free_port()
    address = f"127.0.0.1:{monitor_port}"
    with tempfile.TemporaryDirectory(prefix="bench-monitor-") as workdir:
        config = Path(workdir) / "lifeboat.yaml"
        write_config(config, stand_ins.ports, monitor_port, http_port)
        log = (Path(workdir) / "monitor.log").open("wb")
        process = subprocess.Popen(
            [str(BIN / "lifeboat-monitor"), "--config", str(config), "--log-level", "WARNING"],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
        try:
            return measure(args.runs, address, http_port, config, process.pid)
        finally:
            process.terminate()
            process.wait(20)
            log.close()
            stand_ins.stop()


def measure(runs: int, address: str, http_port: int, config: Path, pid: int) -> int:
    started = time.monotonic()
    line = wait_for_data(address, started + 30)
    print(
        f"monitor: {JOBS} jobs on {HOSTS} hosts, poll-interval {POLL_INTERVAL:g}s, "
        f"all hosts answered after {time.monotonic() - started:.1f}s"
    )
    print(f"  {line.strip()[:160]}...")

    python = [sys.executable, "-c", "pass"]
    bare, _ = series(python, runs)
    grpc_call, _ = series([sys.executable, "-c", BASELINE, address], runs)
    check_h, result = series([str(BIN / "check_lifeboat"), "-H", address], runs)
    check_job, _ = series([str(BIN / "check_lifeboat"), "-H", address, "--job", job_name(42)], runs)
    check_cfg, _ = series([str(BIN / "check_lifeboat"), "--config", str(config)], runs)
    check_http, check_size = http_times(f"http://127.0.0.1:{http_port}/check", runs)
    metrics_http, metrics_size = http_times(f"http://127.0.0.1:{http_port}/metrics", runs)
    time.sleep(3 * POLL_INTERVAL)  # a few more poll cycles before reading memory
    rss, hwm = rss_mb(pid)

    median_check = statistics.median(check_h)
    limit = statistics.median(grpc_call)
    print(f"exit status of check_lifeboat: {result.returncode} ({len(result.stdout)} bytes)")
    print(f"python -c pass                        {describe(bare)}")
    print(f"limit: python + grpc + 1 health call  {describe(grpc_call)}")
    print(f"check_lifeboat -H                     {describe(check_h)}")
    print(f"check_lifeboat -H --job               {describe(check_job)}")
    print(f"check_lifeboat --config (1000 jobs)   {describe(check_cfg)}")
    print(f"HTTP GET /check   ({check_size:6d} B)      {describe(check_http)}")
    print(f"HTTP GET /metrics ({metrics_size:6d} B)      {describe(metrics_http)}")
    print(
        f"check_lifeboat median {median_check * 1000:.1f} ms = {median_check / limit:.2f} x the "
        f"limit ({limit * 1000:.1f} ms); goal < {GOAL_SECONDS * 1000:.0f} ms"
    )
    print(f"monitor RSS {rss:.1f} MB (peak {hwm:.1f} MB); goal < {GOAL_RSS_MB} MB")
    print("load average during the run: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    ok = median_check < GOAL_SECONDS and hwm < GOAL_RSS_MB
    print("monitor goals:", "MET" if ok else "MISSED")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
