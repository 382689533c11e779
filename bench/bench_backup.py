"""Backup benchmark (issue 3): the reference image on a loop-mounted XFS, measured against
`cp --sparse=always` (made durable with `sync`, as a backup is) and a plain read of the
same file in the same run. Caches are dropped before every measurement; each figure is
the median of several rounds, baseline and Lifeboat interleaved, because this machine's
I/O is noisy.

    make bench BENCH=backup                # 4 GiB reference image, file and Ceph
    make bench BENCH="backup --ceph-objectstore bluestore"
    .venv/bin/python -m bench.bench_backup --size-mib 512 --rounds 1 --no-ceph
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.common import (
    Backupd,
    GiB,
    MiB,
    add_backing_dir,
    apply_changes_to_file,
    backupd,
    change_plan,
    changed_bytes,
    cpu_seconds,
    job,
    report,
    timed,
    vm_hwm,
    write_reference_image,
)
from lifeboat import client
from lifeboat.model import CephRbdSource, FileSource, Job
from lifeboat.v1 import backup_pb2, backup_pb2_grpc
from tests.support.ceph import OBJECTSTORES, CephCluster
from tests.support.loopfs import loop_mount

Row = tuple[str, str, str, bool]


def free_bytes(path: Path) -> int:
    stat = os.statvfs(path)
    return stat.f_bfree * stat.f_frsize


def median(values: list[float]) -> float:
    return statistics.median(values)


def forget_job(daemon: Backupd, name: str) -> None:
    """Delete a job's revisions so that the next backup of it is full again (one by one:
    DeleteJobData is only for jobs no longer configured)."""
    with client.channel(daemon.daemon.address, None) as channel:
        stub = backup_pb2_grpc.BackupServiceStub(channel)
        listed = stub.ListRevisions(backup_pb2.ListRevisionsRequest(job=name), timeout=60)
        for revision in listed.revisions:
            request = backup_pb2.DeleteRevisionRequest(
                job=name, revision_id=revision.id, confirm_revision_id=revision.id
            )
            stub.DeleteRevision(request, timeout=60)


def full_rounds(
    daemon: Backupd, backup_job: Job, rounds: int, baseline: Callable[[], float]
) -> tuple[list[float], list[float]]:
    """(baseline seconds, full backup seconds) per round, interleaved; the last revision stays."""
    base, full = [], []
    for round_number in range(rounds):
        base.append(baseline())
        if round_number:
            forget_job(daemon, backup_job.name)
        full.append(daemon.backup(backup_job)[0])
    return base, full


def file_figures(fs: Path, size: int, rounds: int, rows: list[Row]) -> None:
    image = fs / "vm.raw"
    write_reference_image(image, size)
    copy = fs / "cp.raw"
    durable = f"cp --sparse=always --reflink=never {image} {copy} && sync {copy}"

    def cp_sync() -> float:
        seconds = timed(["sh", "-c", durable])
        copy.unlink()
        return seconds

    backup_job = job("vm-file", FileSource(str(image)))
    with backupd(fs, fs / "repo", [backup_job]) as daemon:
        cp_times, full_times = full_rounds(daemon, backup_job, rounds, cp_sync)
        cp_s, full_s = median(cp_times), median(full_times)
        print(
            f"  cp --sparse=always --reflink=never + sync: {fmt(cp_times)} -> {size / cp_s / MiB:.0f} MiB/s"
        )
        print(
            f"  full backup:                               {fmt(full_times)} -> {size / full_s / MiB:.0f} MiB/s"
        )
        rows.append(
            (
                "full backup / (cp + sync) throughput",
                f"{cp_s / full_s:.2f}",
                ">= 0.80",
                cp_s / full_s >= 0.8,
            )
        )

        read_times, inc_times, used_ratios = [], [], []
        for round_number in range(rounds):
            plan = change_plan(size, seed=round_number + 1)
            apply_changes_to_file(image, plan)
            read_times.append(timed(["cat", str(image)]))
            os.sync()
            before = free_bytes(fs)
            seconds, operation = daemon.backup(backup_job)
            os.sync()
            inc_times.append(seconds)
            used_ratios.append((before - free_bytes(fs)) / changed_bytes(plan))
            written = daemon.revision("vm-file", operation.revision_id).stats.bytes_written
        print(f"  read source once (cat):                    {fmt(read_times)}")
        print(
            f"  incremental backup:                        {fmt(inc_times)}; last wrote {written / MiB:.1f} MiB for {changed_bytes(plan) / MiB:.1f} MiB changed"
        )
        ratio = median(inc_times) / median(read_times)
        rows.append(("incremental (file) / read once", f"{ratio:.2f}", "<= 1.30", ratio <= 1.3))
        space = median(used_ratios)
        rows.append(("incremental space / changed bytes", f"{space:.2f}", "<= 2.00", space <= 2))
        peak = vm_hwm(daemon.daemon.process.pid)
        rows.append(("backupd peak RSS (MB)", f"{peak / 1e6:.0f}", "< 300", peak < 300e6))
    shutil.rmtree(fs / "repo")  # room for the Ceph figures' revisions


def change_rbd_image(cluster: CephCluster, name: str, size: int, seed: int) -> None:
    import rados
    import rbd

    connection = rados.Rados(conffile=str(cluster.conf))
    connection.connect()
    try:
        with connection.open_ioctx(cluster.pool) as ioctx, rbd.Image(ioctx, name) as opened:
            for offset, length in change_plan(size, seed=seed):
                opened.write(os.urandom(length), offset)
    finally:
        connection.shutdown()


def ceph_backups(
    daemon: Backupd, cluster: CephCluster, backup_job: Job, size: int, rounds: int, seed: int
) -> tuple[list[float], list[float]]:
    """(seconds, CPU seconds of backupd and the Ceph daemons) of each backup: full ones,
    each into an empty repository, for seed 0; else incrementals after changing the image."""
    pids = [daemon.daemon.process.pid, *cluster.pids().values()]
    seconds, cpu = [], []
    for round_number in range(rounds):
        if not seed and round_number:
            forget_job(daemon, backup_job.name)
        elif seed:
            change_rbd_image(cluster, backup_job.name, size, seed=seed + round_number)
        used_before = cpu_seconds(pids)
        seconds.append(daemon.backup(backup_job)[0])
        cpu.append(cpu_seconds(pids) - used_before)
    return seconds, cpu


def ceph_figures(
    fs: Path, size: int, rounds: int, workdir: Path, objectstore: str, rows: list[Row]
) -> None:
    # Room for the image and the blocks its snapshots keep.
    os.environ["CEPH_MEMSTORE_BYTES"] = os.environ["CEPH_BLUESTORE_BYTES"] = str(size * 3)
    cluster = CephCluster.start(workdir / "ceph", objectstore=objectstore)
    print(f"  Ceph: one {objectstore} OSD in {workdir}")
    try:
        started = time.monotonic()
        cluster.rbd("import", "--no-progress", str(fs / "vm.raw"), f"{cluster.pool}/vm-ceph")
        print(f"  rbd import of the image: {time.monotonic() - started:.1f}s")
        backup_job = job("vm-ceph", CephRbdSource(cluster.pool, "vm-ceph", conf=str(cluster.conf)))
        with backupd(fs, fs / "repo-ceph", [backup_job]) as daemon:
            full_times, full_cpu = ceph_backups(daemon, cluster, backup_job, size, rounds, 0)
            inc_times, inc_cpu = ceph_backups(daemon, cluster, backup_job, size, rounds, 100)
        # For reference: what the verification sample costs in the incremental.
        with backupd(fs, fs / "repo-ceph", [backup_job], verify_fraction=0) as daemon:
            unverified, _ = ceph_backups(daemon, cluster, backup_job, size, rounds, 200)
        print(
            f"  full backup from Ceph:        {fmt(full_times)} -> {size / median(full_times) / MiB:.0f} MiB/s"
        )
        print(f"  incremental backup from Ceph: {fmt(inc_times)}")
        print(f"  the same, verify-fraction 0:  {fmt(unverified)} (for reference, no target)")
        # Here the Ceph daemons share this machine's cores with backupd: the CPU both use
        # bounds the time of either backup (for reference, no target).
        print(
            f"  CPU of backupd + Ceph daemons: full {fmt(full_cpu)}, incremental "
            f"{fmt(inc_cpu)} -> {median(inc_cpu) / median(full_cpu):.3f}; {os.cpu_count()} cores"
        )
        ratio = median(inc_times) / median(full_times)
        rows.append(
            (
                f"incremental (Ceph, {objectstore}) / full",
                f"{ratio:.3f}",
                "<= 0.10",
                ratio <= 0.1,
            )
        )
    finally:
        cluster.stop()


def fmt(values: list[float]) -> str:
    return f"median {median(values):6.2f}s of [{', '.join(f'{v:.2f}' for v in values)}]"


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench_backup")
    parser.add_argument("--size-mib", type=int, default=4096, help="image size (default 4 GiB)")
    parser.add_argument("--rounds", type=int, default=5, help="measurements per figure (median)")
    parser.add_argument("--no-ceph", action="store_true", help="skip the Ceph figures")
    parser.add_argument(
        "--ceph-objectstore",
        choices=OBJECTSTORES,
        default="memstore",
        help="the Ceph OSD's store: memstore (RAM) or bluestore on a file in the backing dir",
    )
    add_backing_dir(parser)
    args, _ = parser.parse_known_args(argv)
    size = args.size_mib * MiB
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="lifeboat-bench-", dir=args.backing_dir) as tmp:
        workdir = Path(tmp)
        # Room for the image, its cp copy (or a full revision whose predecessor XFS is still
        # freeing) and one repository's revisions; allocated up front so that whoever
        # writes first does not pay for the backing store.
        with loop_mount("xfs", 3 * size + GiB, workdir, preallocate=True) as fs:
            print(
                f"backup benchmark: {size / GiB:.2f} GiB image on a loop-mounted XFS (reflink=1) "
                f"backed by {args.backing_dir}, {args.rounds} rounds, caches dropped before each"
            )
            file_figures(fs, size, args.rounds, rows)
            if not args.no_ceph:
                ceph_figures(fs, size, args.rounds, workdir, args.ceph_objectstore, rows)
    return report(rows)


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
