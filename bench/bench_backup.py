"""Backup benchmark (issue 3): the reference image on a loop-mounted XFS, measured against
`cp --sparse=always` and a plain read of the same file in the same run, caches dropped
before every measurement.

    make bench BENCH=backup                # 4 GiB reference image, file and Ceph
    .venv/bin/python -m bench.bench_backup --size-mib 512 --no-ceph
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

from bench.common import (
    GiB,
    MiB,
    apply_changes_to_file,
    backupd,
    change_plan,
    changed_bytes,
    job,
    report,
    timed,
    vm_hwm,
    write_reference_image,
)
from lifeboat.model import CephRbdSource, FileSource
from tests.support.ceph import CephCluster
from tests.support.loopfs import loop_mount


def free_bytes(path: Path) -> int:
    stat = os.statvfs(path)
    return stat.f_bfree * stat.f_frsize


def file_figures(fs: Path, size: int, rows: list[tuple[str, str, str, bool]]) -> None:
    image = fs / "vm.raw"
    write_reference_image(image, size)
    copy = fs / "cp.raw"
    cp_only = timed(["cp", "--sparse=always", "--reflink=never", str(image), str(copy)])
    copy.unlink()
    # A backup is durable when it reports success; the fair baseline is a copy made durable too.
    durable = f"cp --sparse=always --reflink=never {image} {copy} && sync {copy}"
    cp_seconds = timed(["sh", "-c", durable])
    copy.unlink()
    cp_rate = size / cp_seconds
    print(
        f"  cp --sparse=always --reflink=never: {cp_only:.2f}s ({size / cp_only / MiB:.0f} MiB/s); "
        f"with sync of the copy: {cp_seconds:.2f}s ({cp_rate / MiB:.0f} MiB/s)"
    )

    with backupd(fs, fs / "repo") as daemon:
        full_seconds, _ = daemon.backup(job("vm-file", FileSource(str(image))))
        peak = vm_hwm(daemon.daemon.process.pid)
        full_rate = size / full_seconds
        print(f"  full backup: {full_seconds:.2f}s ({full_rate / MiB:.0f} MiB/s)")
        rows.append(
            (
                "full backup / (cp + sync) throughput",
                f"{full_rate / cp_rate:.2f}",
                ">= 0.80",
                full_rate >= 0.8 * cp_rate,
            )
        )

        plan = change_plan(size)
        apply_changes_to_file(image, plan)
        changed = changed_bytes(plan)
        read_seconds = timed(["cat", str(image)])
        print(f"  read source once (cat): {read_seconds:.2f}s; changed {changed / MiB:.1f} MiB")
        os.sync()
        before = free_bytes(fs)
        inc_seconds, operation = daemon.backup(job("vm-file", FileSource(str(image))))
        os.sync()
        used = before - free_bytes(fs)
        revision = daemon.revision("vm-file", operation.revision_id)
        print(
            f"  incremental backup: {inc_seconds:.2f}s, wrote {revision.stats.bytes_written / MiB:.1f} MiB, "
            f"filesystem space used {used / MiB:.1f} MiB"
        )
        rows.append(
            (
                "incremental (file) / read once",
                f"{inc_seconds / read_seconds:.2f}",
                "<= 1.30",
                inc_seconds <= 1.3 * read_seconds,
            )
        )
        rows.append(
            (
                "incremental space / changed bytes",
                f"{used / changed:.2f}",
                "<= 2.00",
                used <= 2 * changed,
            )
        )
        peak = max(peak, vm_hwm(daemon.daemon.process.pid))
        rows.append(("backupd peak RSS (MB)", f"{peak / 1e6:.0f}", "< 300", peak < 300e6))


def ceph_figures(
    fs: Path, size: int, workdir: Path, rows: list[tuple[str, str, str, bool]]
) -> None:
    import rados
    import rbd

    os.environ["CEPH_MEMSTORE_BYTES"] = str(size * 3)
    cluster = CephCluster.start(workdir / "ceph")
    try:
        image = fs / "vm.raw"
        started = time.monotonic()
        cluster.rbd("import", "--no-progress", str(image), f"{cluster.pool}/vm-ceph")
        print(f"  rbd import of the image: {time.monotonic() - started:.1f}s")
        source = CephRbdSource(cluster.pool, "vm-ceph", conf=str(cluster.conf))
        with backupd(fs, fs / "repo-ceph") as daemon:
            full_seconds, _ = daemon.backup(job("vm-ceph", source))
            print(
                f"  full backup from Ceph: {full_seconds:.2f}s ({size / full_seconds / MiB:.0f} MiB/s)"
            )
            connection = rados.Rados(conffile=str(cluster.conf))
            connection.connect()
            with (
                connection.open_ioctx(cluster.pool) as ioctx,
                rbd.Image(ioctx, "vm-ceph") as opened,
            ):
                for offset, length in change_plan(size, seed=2):
                    opened.write(os.urandom(length), offset)
            connection.shutdown()
            inc_seconds, _ = daemon.backup(job("vm-ceph", source))
            print(f"  incremental backup from Ceph: {inc_seconds:.2f}s")
            rows.append(
                (
                    "incremental (Ceph) / full (Ceph)",
                    f"{inc_seconds / full_seconds:.3f}",
                    "<= 0.10",
                    inc_seconds <= 0.1 * full_seconds,
                )
            )
    finally:
        cluster.stop()


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench_backup")
    parser.add_argument("--size-mib", type=int, default=4096, help="image size (default 4 GiB)")
    parser.add_argument("--no-ceph", action="store_true", help="skip the Ceph figures")
    parser.add_argument(
        "--backing-dir",
        default="/dev/shm",
        help="where the loop device's file lives (default /dev/shm: RAM, so the figures measure "
        "Lifeboat, not a noisy virtual disk)",
    )
    args, _ = parser.parse_known_args(argv)
    size = args.size_mib * MiB
    rows: list[tuple[str, str, str, bool]] = []
    with tempfile.TemporaryDirectory(prefix="lifeboat-bench-", dir=args.backing_dir) as tmp:
        workdir = Path(tmp)
        # Room for the image, its cp copy and two revisions; allocated up front so that
        # whoever writes first does not pay for the backing store.
        with loop_mount("xfs", 5 * size // 2 + GiB, workdir, preallocate=True) as fs:
            print(
                f"backup benchmark: {size / GiB:.2f} GiB image on a loop-mounted XFS (reflink=1) "
                f"backed by {args.backing_dir}"
            )
            file_figures(fs, size, rows)
            if not args.no_ceph:
                ceph_figures(fs, size, workdir, rows)
    return report(rows)


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
