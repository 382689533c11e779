"""`make bench BENCH=status` (issue 11): status calls to the real backupd while a backup runs.

Two jobs with revisions written before backupd starts, through the repository's own
writer API (`JobDirectory.begin` ... `RevisionWriter.commit`: a real image, its manifest
and `.rev` with the verification a `VerifyRevision` records): `vm-few` with 10 revisions
and `vm-many` with 1,000. A third job, `vm-busy`, is backed up back to back from a larger
source the whole time, so every figure is taken while a backup runs on the host (its
temporary files come and go, its commits change the job directories). Its first, full
backup is done before: the ones measured against are incremental, as most are, and
spend their time reading and comparing in backupd's own process.

    make bench BENCH=status
    .venv/bin/python -m bench.bench_status --source-mib 512 --calls 100
    .venv/bin/python -m bench.bench_status --idle    # no backup meanwhile, no targets

Figures (targets: < 10 ms; 0 errors and p99 < 1 s):
- (a) one GetJobStatus at a time: p50 and p99 latency for 10 and for 1,000 revisions,
  and errors; the same (errors only) for the job being backed up and ListJobStatuses;
- (b) 1,000 calls at once (ListRevisions and GetJobStatus alternating, each with a 30 s
  deadline) on each job: errors and p99 latency.

The images are small (1 MiB), so each `.rev` records a one-window verification: real
backups of large images record hundreds of sampled windows, so re-reading them costs
more than here.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import random
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc

from backupd.verify import VerifyLimits, verify_against_manifest
from bench.common import Backupd, GiB, MiB, add_backing_dir, backupd, job, report
from lifeboat import client
from lifeboat.manifest import DEFAULT_BLOCK_SIZE, digest_file
from lifeboat.model import FileSource
from lifeboat.repository import JobDirectory, Repository, RevisionMeta
from lifeboat.v1 import backup_pb2, backup_pb2_grpc, resources_pb2
from tests.support.loopfs import loop_mount

Row = tuple[str, str, str, bool]

FEW, MANY, BUSY = "vm-few", "vm-many", "vm-busy"
REVISIONS = {FEW: 10, MANY: 1000}
IMAGE_SIZE = 1 * MiB
DATA_SIZE = 64 * 1024
CONCURRENT = 1000
DEADLINE = 30.0
SINGLE_TARGET = 0.010
CONCURRENT_TARGET = 1.0
FULL_CHECK = VerifyLimits(fraction=1.0, time_limit=60.0)


def write_revisions(repository: Repository, name: str, count: int) -> None:
    """`count` hourly revisions of `name`, the newest an hour ago, written as a backup would."""
    job_dir = repository.job(name)
    rng = random.Random(name)
    newest = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(hours=1)
    with job_dir.lock():
        for age in range(count, 0, -1):
            when = newest - dt.timedelta(hours=age - 1)
            write_revision(job_dir, f"{when:%Y%m%dT%H%M%SZ}-{rng.randrange(0x8000):04x}", when)


def write_revision(job_dir: JobDirectory, revision_id: str, when: dt.datetime) -> None:
    with job_dir.begin(revision_id) as writer:
        writer.start_from(None, IMAGE_SIZE)
        with open(writer.image_tmp_path, "r+b") as image:
            image.write(os.urandom(DATA_SIZE))
        manifest = digest_file(writer.image_tmp_path, DEFAULT_BLOCK_SIZE)
        fd = os.open(writer.image_tmp_path, os.O_RDONLY)
        try:
            verification = verify_against_manifest(
                fd, manifest, FULL_CHECK, lambda done, total: None, lambda: None
            )
        finally:
            os.close(fd)
        meta = RevisionMeta(
            id=revision_id,
            job=job_dir.name,
            timestamp=when,
            tags=["daily", "manual:bench"],
            size=IMAGE_SIZE,
            source={"type": "file", "path": f"/var/lib/images/{job_dir.name}.raw"},
            stats={"bytes-read": IMAGE_SIZE, "bytes-written": DATA_SIZE, "full": True},
            verification=verification,
        )
        writer.commit(meta, manifest)


def write_source(path: Path, size: int) -> None:
    with path.open("wb") as image:
        for offset in range(0, size, 64 * MiB):
            image.write(os.urandom(min(64 * MiB, size - offset)))


class BackupLoop:
    """Backs one job up back to back on a thread, until stopped; remembers when each ran."""

    def __init__(self, address: str, name: str) -> None:
        self.address = address
        self.name = name
        self.spans: list[tuple[float, float]] = []
        self.failures: list[str] = []
        self.running_since: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def back_up(self) -> None:
        """One backup, start to end (not counted in the spans)."""
        with client.channel(self.address, None) as channel:
            request = backup_pb2.StartBackupRequest(job=self.name, tags=["daily"])
            reply = backup_pb2_grpc.BackupServiceStub(channel).StartBackup(request, timeout=120)
        done = client.watch(self.address, None, reply.operation.name, show=False)
        if done.state != resources_pb2.OPERATION_STATE_SUCCEEDED:
            self.failures.append(done.error)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            self.running_since = started
            try:
                self.back_up()
            except Exception as error:  # a starved daemon: counted, and tried again
                self.failures.append(str(error)[:200])
            self.spans.append((started, time.monotonic()))
            self.running_since = None

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.ident is not None:
            self._thread.join(600)

    def coverage(self, start: float, end: float) -> float:
        """The share of [start, end] during which a backup was running."""
        spans = list(self.spans)
        if self.running_since is not None:
            spans.append((self.running_since, end))
        covered = sum(max(0.0, min(b, end) - max(a, start)) for a, b in spans)
        return covered / max(end - start, 1e-9)


def wait_running(daemon: Backupd, name: str, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    with client.channel(daemon.daemon.address, None) as channel:
        stub = backup_pb2_grpc.BackupServiceStub(channel)
        while time.monotonic() < deadline:
            status = stub.GetJobStatus(backup_pb2.GetJobStatusRequest(job=name), timeout=60)
            if status.status.running_operation.state == resources_pb2.OPERATION_STATE_RUNNING:
                return
            time.sleep(0.05)
    raise RuntimeError(f"no backup of {name} started within {timeout}s")


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def single_calls(
    address: str, method: str, request: object, calls: int, budget: float
) -> tuple[list[float], int]:
    """Latencies of one call at a time (at most `calls`, or `budget` seconds); errors."""
    times: list[float] = []
    errors = 0
    deadline = time.monotonic() + budget
    with client.channel(address, None) as channel:
        call = getattr(backup_pb2_grpc.BackupServiceStub(channel), method)
        call(request, timeout=DEADLINE)  # connected, and the job's view built
        while len(times) < calls and time.monotonic() < deadline:
            started = time.perf_counter()
            try:
                call(request, timeout=DEADLINE)
            except grpc.RpcError:
                errors += 1
            times.append(time.perf_counter() - started)
    return times, errors


async def concurrent_calls(address: str, name: str) -> tuple[list[float], dict[str, int]]:
    """CONCURRENT calls at once, ListRevisions and GetJobStatus alternating: latencies, errors
    by status code."""
    errors: dict[str, int] = {}

    async def one(stub: backup_pb2_grpc.BackupServiceAsyncStub, index: int) -> float:
        started = time.perf_counter()
        try:
            if index % 2:
                await stub.GetJobStatus(backup_pb2.GetJobStatusRequest(job=name), timeout=DEADLINE)
            else:
                request = backup_pb2.ListRevisionsRequest(job=name)
                await stub.ListRevisions(request, timeout=DEADLINE)
        except grpc.aio.AioRpcError as error:
            errors[error.code().name] = errors.get(error.code().name, 0) + 1
        return time.perf_counter() - started

    options = [("grpc.max_receive_message_length", 64 * MiB)]
    async with grpc.aio.insecure_channel(address, options=options) as channel:
        stub = backup_pb2_grpc.BackupServiceStub(channel)
        await channel.channel_ready()
        times = await asyncio.gather(*(one(stub, i) for i in range(CONCURRENT)))
    return list(times), errors


def describe(times: list[float]) -> str:
    return (
        f"{len(times)} calls: p50 {percentile(times, 0.5) * 1000:7.1f} ms  "
        f"p99 {percentile(times, 0.99) * 1000:7.1f} ms  max {max(times) * 1000:7.1f} ms"
    )


def latency_rows(label: str, times: list[float], errors: int) -> list[Row]:
    p50, p99 = percentile(times, 0.5), percentile(times, 0.99)
    return [
        (f"{label}: p50 (ms)", f"{p50 * 1000:.1f}", "< 10", p50 < SINGLE_TARGET),
        (f"{label}: p99 (ms)", f"{p99 * 1000:.1f}", "< 10", p99 < SINGLE_TARGET),
        (f"{label}: errors", str(errors), "0", not errors),
    ]


def one_at_a_time(address: str, loop: BackupLoop, calls: int, budget: float) -> list[Row]:
    """(a), and the same for the job being backed up and for ListJobStatuses (errors only)."""
    series: list[tuple[str, str, object, bool]] = [
        (f"GetJobStatus, {count} revisions", "GetJobStatus", status(name), True)
        for name, count in REVISIONS.items()
    ]
    series += [
        (f"GetJobStatus of {BUSY}", "GetJobStatus", status(BUSY), False),
        ("ListJobStatuses", "ListJobStatuses", backup_pb2.ListJobStatusesRequest(), False),
    ]
    rows: list[Row] = []
    for label, method, request, timed in series:
        started = time.monotonic()
        times, errors = single_calls(address, method, request, calls, budget)
        coverage = loop.coverage(started, time.monotonic())
        print(f"  (a) {label:28} one at a time: {describe(times)}")
        print(f"      errors {errors}; a backup ran {coverage:.0%} of the time")
        measured = latency_rows(label, times, errors)
        rows += measured if timed else measured[-1:]
    return rows


def all_at_once(address: str, loop: BackupLoop) -> list[Row]:
    """(b) for each job."""
    rows: list[Row] = []
    for name, count in REVISIONS.items():
        started = time.monotonic()
        times, errors = asyncio.run(concurrent_calls(address, name))
        coverage = loop.coverage(started, time.monotonic())
        failed = sum(errors.values())
        p99 = percentile(times, 0.99)
        print(f"  (b) {CONCURRENT} at once, {count:4d} revisions: {describe(times)}")
        print(f"      errors {failed} {errors or ''}; a backup ran {coverage:.0%} of the time")
        label = f"{CONCURRENT} at once, {count} revisions"
        rows.append((f"{label}: errors", str(failed), "0", not failed))
        rows.append((f"{label}: p99 (s)", f"{p99:.2f}", "< 1", p99 < CONCURRENT_TARGET))
    return rows


def status(name: str) -> backup_pb2.GetJobStatusRequest:
    return backup_pb2.GetJobStatusRequest(job=name)


@contextmanager
def busy_host(fs: Path, source_size: int, idle: bool) -> Iterator[tuple[Backupd, BackupLoop]]:
    """backupd on `fs/repo`, with a backup of `vm-busy` running back to back (unless idle)."""
    repository = Repository(fs / "repo")
    repository.create()
    started = time.monotonic()
    for name, count in REVISIONS.items():
        write_revisions(repository, name, count)
    print(f"  wrote {sum(REVISIONS.values())} revisions in {time.monotonic() - started:.1f}s")
    source = fs / "busy.raw"
    write_source(source, source_size)
    jobs = [job(name, FileSource(str(source))) for name in (*REVISIONS, BUSY)]
    with backupd(fs, repository.base_dir, jobs) as daemon:
        loop = BackupLoop(daemon.daemon.address, BUSY)
        started = time.monotonic()
        loop.back_up()
        print(f"  first (full) backup of {BUSY}: {time.monotonic() - started:.1f}s")
        if not idle:
            loop.start()
        try:
            if not idle:
                wait_running(daemon, BUSY)
            yield daemon, loop
        finally:
            loop.stop()
    print(
        f"  backups of {BUSY}: {len(loop.spans)}, failures {len(loop.failures)} {loop.failures[:2]}"
    )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench_status")
    parser.add_argument("--source-mib", type=int, default=1024, help="vm-busy's size (1 GiB)")
    parser.add_argument("--calls", type=int, default=200, help="one-at-a-time calls per job")
    parser.add_argument("--budget", type=float, default=20.0, help="seconds for those at most")
    parser.add_argument(
        "--idle", action="store_true", help="no backup meanwhile (for comparison: no targets)"
    )
    add_backing_dir(parser)
    args, _ = parser.parse_known_args([a for a in argv if a != "status"])
    source_size = args.source_mib * MiB
    with (
        tempfile.TemporaryDirectory(prefix="lifeboat-bench-", dir=args.backing_dir) as tmp,
        loop_mount("xfs", 2 * source_size + 2 * GiB, Path(tmp)) as fs,
    ):
        print(
            f"status benchmark: backupd with jobs of {REVISIONS[FEW]} and {REVISIONS[MANY]} "
            f"revisions, a {source_size / GiB:.2f} GiB job backed up back to back meanwhile, "
            f"on a loop-mounted XFS backed by {args.backing_dir}; {os.cpu_count()} cores"
        )
        with busy_host(fs, source_size, args.idle) as (daemon, loop):
            address = daemon.daemon.address
            rows = one_at_a_time(address, loop, args.calls, args.budget)
            rows += all_at_once(address, loop)
    return report(rows)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
