"""What the benchmarks share: the reference image, baselines, a real backupd, timing."""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from lifeboat import client
from lifeboat.model import FileSource, Job, Schedule, Source, TagSpec
from lifeboat.v1 import backup_pb2, backup_pb2_grpc, resources_pb2
from tests.support.processes import Daemon, fleet, free_port

MiB = 1024 * 1024
GiB = 1024 * MiB
CHANGED_WRITES = 2000
CHANGED_REGION = 32 * MiB
SCHEDULE = Schedule("bench", (TagSpec("daily", __import__("datetime").timedelta(days=1), 7),))


def add_backing_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backing-dir",
        default="/dev/shm",
        help="where the loop device's file lives (default /dev/shm: RAM, so the figures measure "
        "Lifeboat, not a noisy virtual disk)",
    )


def drop_caches() -> None:
    """Start every measurement with cold caches (needs root), so baselines and Lifeboat compare fairly."""
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def timed(command: list[str]) -> float:
    drop_caches()
    started = time.monotonic()
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return time.monotonic() - started


def write_reference_image(path: Path, size: int) -> None:
    """First 3/4 random data, last 1/4 a hole (the issue's 4 GiB reference at size=4 GiB)."""
    data_end = size * 3 // 4
    with path.open("wb") as image:
        for _ in range(0, data_end, 64 * MiB):
            image.write(os.urandom(64 * MiB))
        image.truncate(size)


def change_plan(size: int, seed: int = 1) -> list[tuple[int, int]]:
    """~1% change: 2,000 random 4 KiB writes plus one 32 MiB region (offset, length)."""
    rng = random.Random(seed)
    data_end = size * 3 // 4
    writes = [(rng.randrange(0, data_end // 4096) * 4096, 4096) for _ in range(CHANGED_WRITES)]
    region = rng.randrange(0, (data_end - CHANGED_REGION) // MiB) * MiB
    return [*writes, (region, CHANGED_REGION)]


def changed_bytes(plan: list[tuple[int, int]]) -> int:
    covered: set[int] = set()
    for offset, length in plan:
        covered.update(range(offset // 4096, (offset + length) // 4096))
    return len(covered) * 4096


def apply_changes_to_file(path: Path, plan: list[tuple[int, int]]) -> None:
    with path.open("r+b") as image:
        for offset, length in plan:
            image.seek(offset)
            image.write(os.urandom(length))


def vm_hwm(pid: int) -> int:
    """Peak resident memory of a process, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return 0


def cpu_seconds(pids: list[int]) -> float:
    """User plus system CPU time the processes (all their threads) have used so far."""
    ticks = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        ticks += int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


@dataclass
class Backupd:
    daemon: Daemon
    host: str = "bench"

    def backup(self, job: Job) -> tuple[float, resources_pb2.Operation]:
        drop_caches()
        address = self.daemon.address
        started = time.monotonic()
        with client.channel(address, None) as channel:
            stub = backup_pb2_grpc.BackupServiceStub(channel)
            request = backup_pb2.StartBackupRequest(job=job.name, tags=["daily"])
            reply = stub.StartBackup(request, timeout=30)
        operation = client.watch(address, None, reply.operation.name, show=False)
        elapsed = time.monotonic() - started
        if operation.state != resources_pb2.OPERATION_STATE_SUCCEEDED:
            raise RuntimeError(f"backup failed: {operation.error}")
        return elapsed, operation

    def revision(self, job: str, revision_id: str) -> resources_pb2.Revision:
        with client.channel(self.daemon.address, None) as channel:
            stub = backup_pb2_grpc.BackupServiceStub(channel)
            request = backup_pb2.GetRevisionRequest(job=job, revision_id=revision_id)
            reply: backup_pb2.GetRevisionResponse = stub.GetRevision(request, timeout=30)
        return reply.revision


def jobs_config(jobs: Sequence[Job]) -> str:
    """The `jobs:` section of a config file (JSON is YAML): backupd backs up only these."""
    section: dict[str, object] = {}
    for each in jobs:
        source = each.source
        if isinstance(source, FileSource):
            described = {"type": "file", "path": source.path}
        else:
            described = {"type": "ceph-rbd", "pool": source.pool, "image": source.image}
            described |= {"conf": source.conf, "id": source.id}
        section[each.name] = {
            "host": each.host,
            "schedule": each.schedule.name,
            "source": described,
        }
    return f"jobs: {json.dumps(section)}\n"


@contextmanager
def backupd(
    workdir: Path,
    base_dir: Path,
    jobs: Sequence[Job],
    worker_limit: int = 2,
    verify_fraction: float = 0.05,
) -> Iterator[Backupd]:
    port = free_port()
    config = workdir / "bench.yaml"
    config.write_text(
        f"global: {{base-dir: {base_dir}, worker-limit: {worker_limit}, "
        f"verify-fraction: {verify_fraction}}}\n"
        f"hosts: {{bench: {{backupd: 127.0.0.1:{port}, restored: 127.0.0.1:{free_port()}}}}}\n"
        "schedules: {bench: {daily: {interval: 1d, keep: 7}}}\n" + jobs_config(jobs)
    )
    with fleet(workdir) as running:
        yield Backupd(running.start("backupd.cli", f"127.0.0.1:{port}", "--config", str(config)))


def job(name: str, source: Source) -> Job:
    return Job(name, "bench", SCHEDULE, source)


def report(rows: list[tuple[str, str, str, bool]]) -> int:
    """Print (figure, value, target, met) rows; exit status 1 if a target is missed."""
    width = max(len(row[0]) for row in rows)
    for figure, value, target, met in rows:
        print(
            f"  {figure.ljust(width)}  {value:>22}  target {target:<12} {'ok' if met else 'MISSED'}"
        )
    sys.stdout.flush()
    return 0 if all(row[3] for row in rows) else 1
