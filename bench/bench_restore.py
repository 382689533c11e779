"""Restore benchmark (issue 4): the reference image backed up by the real backupd and
restored by the real restored (both processes) on a loop-mounted XFS, against
`cp --sparse=always --reflink=never` (+ sync of the copy) of the same image on the same
filesystem in the same run. Caches are dropped before every measurement.

    make bench BENCH=restore                      # 4 GiB reference image, 5 rounds
    .venv/bin/python -m bench.bench_restore --size-mib 512

Figures:
- one restore's throughput / (cp + sync), median over the rounds;
- N parallel restores (N different revisions, each 1/N of the reference image, so the
  total data equals one image) aggregate throughput / (cp + sync);
- time from StartRestore to the first byte written, while worker-limit backups run
  on the host (and without load, for comparison).

A restore fsyncs its target before it reports success, so the fair baseline is a copy
that is made durable as well; plain cp (no sync) is printed too. `--reflink=never`
because cp on XFS would otherwise share the extents instead of copying. The loop
device's file lives in /dev/shm by default (as in bench_backup), so the figures measure
Lifeboat rather than a noisy virtual disk; the machine is still noisy, hence the median
of several rounds, each cp and restore pair measured back to back.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc

from bench.common import (
    GiB,
    MiB,
    add_backing_dir,
    drop_caches,
    jobs_config,
    report,
    timed,
    vm_hwm,
)
from lifeboat.model import FileSource, Job, Schedule, TagSpec
from lifeboat.v1 import (
    backup_pb2,
    backup_pb2_grpc,
    operations_pb2,
    operations_pb2_grpc,
    resources_pb2,
    restore_pb2,
    restore_pb2_grpc,
)
from tests.support.loopfs import loop_mount
from tests.support.processes import Daemon, fleet, free_port

Row = tuple[str, str, str, bool]
FINISHED = {
    resources_pb2.OPERATION_STATE_SUCCEEDED,
    resources_pb2.OPERATION_STATE_FAILED,
    resources_pb2.OPERATION_STATE_CANCELLED,
    resources_pb2.OPERATION_STATE_RETRY_LATER,
}
SCHEDULE = Schedule("bench", (TagSpec("daily", __import__("datetime").timedelta(days=1), 7),))


def write_image(path: Path, size: int) -> int:
    """First 3/4 random data, last 1/4 a hole; returns the data bytes."""
    data_end = size * 3 // 4
    with path.open("wb") as image:
        for offset in range(0, data_end, 64 * MiB):
            image.write(os.urandom(min(64 * MiB, data_end - offset)))
        image.truncate(size)
    return data_end


def job(name: str, source: Path) -> Job:
    return Job(name, "bench", SCHEDULE, FileSource(str(source)))


@dataclass
class Host:
    """The real backupd and restored of one host, with stubs."""

    backupd: Daemon
    restored: Daemon
    backup_channel: grpc.Channel
    restore_channel: grpc.Channel

    @property
    def backups(self) -> backup_pb2_grpc.BackupServiceStub:
        return backup_pb2_grpc.BackupServiceStub(self.backup_channel)

    @property
    def backup_operations(self) -> operations_pb2_grpc.OperationServiceStub:
        return operations_pb2_grpc.OperationServiceStub(self.backup_channel)

    @property
    def restores(self) -> restore_pb2_grpc.RestoreServiceStub:
        return restore_pb2_grpc.RestoreServiceStub(self.restore_channel)

    @property
    def restore_operations(self) -> operations_pb2_grpc.OperationServiceStub:
        return operations_pb2_grpc.OperationServiceStub(self.restore_channel)

    def start_backup(self, job: str) -> resources_pb2.Operation:
        request = backup_pb2.StartBackupRequest(job=job, tags=["daily"])
        return self.backups.StartBackup(request, timeout=30).operation

    def start_restore(self, job: str, target: Path) -> resources_pb2.Operation:
        request = restore_pb2.StartRestoreRequest(job=job, latest=True, target=str(target))
        return self.restores.StartRestore(request, timeout=30).operation

    @staticmethod
    def final(stub: operations_pb2_grpc.OperationServiceStub, name: str) -> resources_pb2.Operation:
        request = operations_pb2.GetOperationRequest(name=name)
        while True:
            operation = stub.GetOperation(request, timeout=30).operation
            if operation.state in FINISHED:
                return operation
            time.sleep(0.01)

    def wait_restore(self, name: str) -> resources_pb2.Operation:
        for _ in self.restore_operations.WatchOperation(
            operations_pb2.WatchOperationRequest(name=name)
        ):
            pass
        operation = self.final(self.restore_operations, name)
        if operation.state != resources_pb2.OPERATION_STATE_SUCCEEDED:
            raise RuntimeError(f"restore {name} failed: {operation.error}")
        return operation

    def wait_backup(self, name: str) -> resources_pb2.Operation:
        for _ in self.backup_operations.WatchOperation(
            operations_pb2.WatchOperationRequest(name=name)
        ):
            pass
        operation = self.final(self.backup_operations, name)
        if operation.state != resources_pb2.OPERATION_STATE_SUCCEEDED:
            raise RuntimeError(f"backup {name} failed: {operation.error}")
        return operation

    def running_backups(self) -> int:
        reply = self.backups.GetHostStatus(backup_pb2.GetHostStatusRequest(), timeout=30)
        return reply.running_backups


@contextmanager
def host(workdir: Path, fs: Path, worker_limit: int, jobs: list[Job]) -> Iterator[Host]:
    ports = free_port(), free_port()
    config = workdir / "bench-restore.yaml"
    config.write_text(
        f"global: {{base-dir: {fs}/repo, worker-limit: {worker_limit}, "
        f"restore-targets: [{fs}/restore]}}\n"
        f"hosts: {{bench: {{backupd: 127.0.0.1:{ports[0]}, restored: 127.0.0.1:{ports[1]}}}}}\n"
        "schedules: {bench: {daily: {interval: 1d, keep: 7}}}\n" + jobs_config(jobs)
    )
    with fleet(workdir) as running:
        backupd = running.start("backupd.cli", f"127.0.0.1:{ports[0]}", "--config", str(config))
        restored = running.start("restored.cli", f"127.0.0.1:{ports[1]}", "--config", str(config))
        with (
            grpc.insecure_channel(backupd.address) as backup_channel,
            grpc.insecure_channel(restored.address) as restore_channel,
        ):
            yield Host(backupd, restored, backup_channel, restore_channel)


def restore_seconds(host: Host, jobs: list[str], targets: Path) -> float:
    """Restore the newest revision of each job at once; seconds until the last one is done."""
    drop_caches()
    started = time.monotonic()
    names = [host.start_restore(name, targets / f"{name}.raw").name for name in jobs]
    finals = [host.wait_restore(name) for name in names]
    elapsed = time.monotonic() - started
    inside = max(
        (f.end_time.ToDatetime() - f.start_time.ToDatetime()).total_seconds() for f in finals
    )
    print(
        f"    ({len(jobs)} restore(s): {elapsed:.2f}s from the client, {inside:.2f}s in restored)"
    )
    return elapsed


def first_byte_seconds(host: Host, job: str, target: Path) -> float:
    """From StartRestore to the first progress with bytes written; the restore is then
    cancelled (its temporary file removed)."""
    started = time.monotonic()
    operation = host.start_restore(job, target)
    seconds = None
    for reply in host.restore_operations.WatchOperation(
        operations_pb2.WatchOperationRequest(name=operation.name)
    ):
        if reply.operation.bytes_done > 0:
            seconds = time.monotonic() - started
            break
    host.restore_operations.CancelOperation(
        operations_pb2.CancelOperationRequest(name=operation.name), timeout=30
    )
    host.final(host.restore_operations, operation.name)
    target.unlink(missing_ok=True)
    if seconds is None:
        raise RuntimeError(f"{operation.name} ended without writing")
    return seconds


def throughput_figures(
    host: Host, fs: Path, big: str, data: int, small: list[str], rounds: int, rows: list[Row]
) -> None:
    targets = fs / "restore"
    revision = fs / "repo" / big / "last"
    copy = targets / "cp.raw"
    cp_only = timed(["cp", "--sparse=always", "--reflink=never", str(revision), str(copy)])
    copy.unlink()
    print(
        f"  cp --sparse=always --reflink=never (no sync): {cp_only:.2f}s "
        f"({data / cp_only / MiB:.0f} MiB/s of data)"
    )
    durable = f"cp --sparse=always --reflink=never {revision} {copy} && sync {copy}"
    single_ratios, parallel_ratios = [], []
    for round_ in range(1, rounds + 1):
        cp_seconds = timed(["sh", "-c", durable])
        copy.unlink()
        cp_rate = data / cp_seconds
        one = restore_seconds(host, [big], targets)
        if round_ == 1:
            restored = targets / f"{big}.raw"
            if not filecmp.cmp(restored, revision, shallow=False):
                raise RuntimeError("the restored image differs from the revision")
            allocated = restored.stat().st_blocks * 512
            print(
                f"  restored image is byte-identical, {allocated / MiB:.0f} MiB allocated "
                f"for {data / MiB:.0f} MiB of data (sparse)"
            )
        (targets / f"{big}.raw").unlink()
        many = restore_seconds(host, small, targets)
        for name in small:
            (targets / f"{name}.raw").unlink()
        single_ratios.append(data / one / cp_rate)
        parallel_ratios.append(data / many / cp_rate)
        print(
            f"  round {round_}: cp+sync {cp_seconds:.2f}s ({cp_rate / MiB:.0f} MiB/s); "
            f"one restore {one:.2f}s ({data / one / MiB:.0f} MiB/s, "
            f"x{single_ratios[-1]:.2f}); {len(small)} parallel restores {many:.2f}s "
            f"({data / many / MiB:.0f} MiB/s aggregate, x{parallel_ratios[-1]:.2f})"
        )
    single, parallel = statistics.median(single_ratios), statistics.median(parallel_ratios)
    rows.append(("one restore / (cp + sync)", f"{single:.2f}", ">= 0.90", single >= 0.9))
    rows.append(
        (
            f"{len(small)} parallel restores / (cp + sync)",
            f"{parallel:.2f}",
            ">= 0.80",
            parallel >= 0.8,
        )
    )


def latency_figures(
    host: Host,
    fs: Path,
    big: str,
    small: list[str],
    worker_limit: int,
    samples: int,
    rows: list[Row],
) -> None:
    target = fs / "restore" / "latency.raw"
    drop_caches()
    idle = [first_byte_seconds(host, big, target) for _ in range(3)]
    print(f"  first byte without load: {', '.join(f'{s:.3f}s' for s in idle)}")
    loaded: list[float] = []
    busy_jobs = small[:worker_limit]
    while len(loaded) < samples:
        drop_caches()
        backups = [host.start_backup(name) for name in busy_jobs]
        if host.running_backups() < worker_limit:
            for operation in backups:
                host.wait_backup(operation.name)
            continue
        seconds = first_byte_seconds(host, big, target)
        still = host.running_backups()
        for operation in backups:
            host.wait_backup(operation.name)
        if still < worker_limit:
            print(f"  (sample of {seconds:.3f}s dropped: a backup ended before the first byte)")
            continue
        loaded.append(seconds)
    print(
        f"  first byte while {worker_limit} backups run: {', '.join(f'{s:.3f}s' for s in loaded)}"
    )
    worst = max(loaded)
    rows.append(
        (
            f"StartRestore to first byte, {worker_limit} backups running (max of {samples})",
            f"{worst:.3f}s",
            "<= 1s",
            worst <= 1.0,
        )
    )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench_restore")
    parser.add_argument("--size-mib", type=int, default=4096, help="image size (default 4 GiB)")
    parser.add_argument("--rounds", type=int, default=5, help="throughput rounds (median)")
    parser.add_argument("--parallel", type=int, default=4, help="parallel restores")
    parser.add_argument("--worker-limit", type=int, default=2, help="backups run at once")
    parser.add_argument("--latency-samples", type=int, default=5)
    add_backing_dir(parser)
    args, _ = parser.parse_known_args(argv)
    size = args.size_mib * MiB
    small_size = size // args.parallel
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="lifeboat-bench-", dir=args.backing_dir) as tmp:
        workdir = Path(tmp)
        with loop_mount("xfs", 4 * size + 2 * GiB, workdir) as fs:
            print(
                f"restore benchmark: {size / GiB:.2f} GiB image (3/4 data, 1/4 hole) on a "
                f"loop-mounted XFS (reflink=1) backed by {args.backing_dir}; "
                f"{args.parallel} parallel restores of {small_size / MiB:.0f} MiB images"
            )
            (fs / "restore").mkdir()
            big_source = fs / "vm-big.raw"
            small = [f"vm-small{i}" for i in range(args.parallel)]
            sources = {name: fs / f"{name}.raw" for name in small}
            jobs = [job("vm-big", big_source), *(job(name, sources[name]) for name in small)]
            with host(workdir, fs, args.worker_limit, jobs) as bench_host:
                data = write_image(big_source, size)
                bench_host.wait_backup(bench_host.start_backup("vm-big").name)
                big_source.unlink()  # the revision is the image now; keep the RAM
                for name in small:
                    write_image(sources[name], small_size)
                    bench_host.wait_backup(bench_host.start_backup(name).name)
                throughput_figures(bench_host, fs, "vm-big", data, small, args.rounds, rows)
                latency_figures(
                    bench_host,
                    fs,
                    "vm-big",
                    small,
                    args.worker_limit,
                    args.latency_samples,
                    rows,
                )
                peak = vm_hwm(bench_host.restored.process.pid)
                print(f"  restored peak RSS: {peak / 1e6:.0f} MB")
            subprocess.run(["sync"], check=False)
    return report(rows)


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
