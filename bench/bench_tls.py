"""TLS benchmark (security issue): what mTLS costs a caller, against plaintext, in the same
run, with the real daemons (processes) and real certificates.

    make bench BENCH=tls
    .venv/bin/python -m bench.bench_tls --size-mib 256 --calls 500

Two fleets of one host share one repository: one serves plaintext on loopback, the other
mTLS with roles. Figures:
- unary call latency (OperationService/ListOperations on backupd: in memory, so the figure
  is the RPC and its guard, not the disk), p50 and p99 over --calls calls on one channel;
- a new connection and its first call (the handshake), median of --connections;
- ReadRevision stream throughput of a revision of --size-mib, median of --rounds, with the
  revision in the page cache, against `cat` of the same file (the machine's own limit).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from bench.common import MiB, report, write_reference_image
from lifeboat import client
from lifeboat.security import ClientIdentity
from lifeboat.v1 import (
    backup_pb2,
    backup_pb2_grpc,
    operations_pb2,
    operations_pb2_grpc,
    resources_pb2,
    restore_pb2,
    restore_pb2_grpc,
)
from tests.support import pki as pki_module
from tests.support.pki import ADMIN, HOST, OPERATOR
from tests.support.processes import Fleet, fleet, free_port

Row = tuple[str, str, str, bool]
JOB = "vm-bench"


@dataclass
class Side:
    """One fleet: how to reach its backupd and restored, and as whom."""

    name: str
    backupd: str
    restored: str
    identity: ClientIdentity | None


def fleet_config(base_dir: Path, source: Path, backupd: str, restored: str) -> dict[str, Any]:
    return {
        "global": {"base-dir": str(base_dir), "verify-fraction": 0.0},
        "hosts": {HOST: {"backupd": backupd, "restored": restored}},
        "schedules": {"bench": {"daily": {"interval": "1d", "keep": 7}}},
        "jobs": {
            JOB: {
                "host": HOST,
                "schedule": "bench",
                "source": {"type": "file", "path": str(source)},
            }
        },
    }


def start_side(
    running: Fleet,
    workdir: Path,
    name: str,
    config: dict[str, Any],
    identity: ClientIdentity | None,
) -> Side:
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    host = config["hosts"][HOST]
    for module, address in (("backupd.cli", host["backupd"]), ("restored.cli", host["restored"])):
        running.start(module, address, "--config", str(path), identity=identity)
    return Side(name, host["backupd"], host["restored"], identity)


@contextmanager
def two_sides(workdir: Path, source: Path) -> Iterator[tuple[Side, Side]]:
    pki = pki_module.make_pki(workdir / "tls")
    base_dir = workdir / "repo"

    def addresses() -> tuple[str, str]:
        return f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"

    with fleet(workdir) as running:
        plain = start_side(
            running, workdir, "plaintext", fleet_config(base_dir, source, *addresses()), None
        )
        secure_config = pki_module.merge(fleet_config(base_dir, source, *addresses()), pki.config())
        secure = start_side(running, workdir, "mtls", secure_config, pki.identity(ADMIN))
        secure.identity = pki.identity(OPERATOR)  # measured as the control plane calls
        yield plain, secure


def back_up(side: Side) -> str:
    with client.channel(side.backupd, side.identity) as channel:
        stub = backup_pb2_grpc.BackupServiceStub(channel)
        reply = stub.StartBackup(backup_pb2.StartBackupRequest(job=JOB, tags=["daily"]), timeout=30)
    operation = client.watch(side.backupd, side.identity, reply.operation.name, show=False)
    if operation.state != resources_pb2.OPERATION_STATE_SUCCEEDED:
        raise RuntimeError(f"backup failed: {operation.error}")
    return operation.revision_id


def unary_latencies(side: Side, calls: int) -> list[float]:
    request = operations_pb2.ListOperationsRequest(running_only=True)
    samples = []
    with client.channel(side.backupd, side.identity) as channel:
        stub = operations_pb2_grpc.OperationServiceStub(channel)
        stub.ListOperations(request, timeout=10)  # connect outside the measurement
        for _ in range(calls):
            started = time.perf_counter()
            stub.ListOperations(request, timeout=10)
            samples.append(time.perf_counter() - started)
    return samples


def first_call_latencies(side: Side, connections: int) -> list[float]:
    request = operations_pb2.ListOperationsRequest(running_only=True)
    samples = []
    for _ in range(connections):
        started = time.perf_counter()
        with client.channel(side.backupd, side.identity) as channel:
            operations_pb2_grpc.OperationServiceStub(channel).ListOperations(request, timeout=10)
        samples.append(time.perf_counter() - started)
    return samples


def stream_seconds(side: Side, revision_id: str) -> tuple[float, int]:
    request = restore_pb2.ReadRevisionRequest(job=JOB, revision_id=revision_id)
    received = 0
    started = time.perf_counter()
    with client.channel(side.restored, side.identity) as channel:
        for reply in restore_pb2_grpc.RestoreServiceStub(channel).ReadRevision(
            request, timeout=600
        ):
            received += len(reply.data)
    return time.perf_counter() - started, received


def cat_seconds(path: Path) -> float:
    started = time.perf_counter()
    subprocess.run(["cat", str(path)], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f} ms"


def latency_rows(plain: Side, secure: Side, calls: int, connections: int) -> list[Row]:
    latencies = {side.name: unary_latencies(side, calls) for side in (plain, secure)}
    firsts = {side.name: first_call_latencies(side, connections) for side in (plain, secure)}
    p99 = {name: percentile(values, 0.99) for name, values in latencies.items()}
    for name, values in latencies.items():
        print(
            f"  unary {name}: p50 {ms(percentile(values, 0.5))}, p99 {ms(p99[name])}, "
            f"first call on a new connection {ms(statistics.median(firsts[name]))}"
        )
    ratio = p99["mtls"] / p99["plaintext"]
    handshake = statistics.median(firsts["mtls"])
    return [
        ("unary p99 mTLS / plaintext", f"{ratio:.2f}", "<= 2", ratio <= 2),
        ("unary p99 mTLS", ms(p99["mtls"]), "<= 5 ms", p99["mtls"] <= 0.005),
        ("new connection + call, mTLS", ms(handshake), "<= 50 ms", handshake <= 0.05),
    ]


def stream_rows(plain: Side, secure: Side, revision: str, image: Path, rounds: int) -> list[Row]:
    rates: dict[str, list[float]] = {"plaintext": [], "mtls": [], "cat": []}
    for _ in range(rounds):
        for side in (plain, secure):
            seconds, received = stream_seconds(side, revision)
            rates[side.name].append(received / seconds)
        rates["cat"].append(image.stat().st_size / cat_seconds(image))
    median = {name: statistics.median(values) for name, values in rates.items()}
    for name, value in median.items():
        print(f"  ReadRevision {name}: {value / MiB:.0f} MiB/s (median of {rounds})")
    tls_ratio = median["mtls"] / median["plaintext"]
    return [
        ("ReadRevision mTLS / plaintext", f"{tls_ratio:.2f}", ">= 0.7", tls_ratio >= 0.7),
        (
            "ReadRevision mTLS / cat",
            f"{median['mtls'] / median['cat']:.2f}",
            "reference",
            True,
        ),
    ]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench_tls")
    parser.add_argument("--size-mib", type=int, default=1024, help="image size (default 1 GiB)")
    parser.add_argument("--calls", type=int, default=2000, help="unary calls per side")
    parser.add_argument("--connections", type=int, default=50, help="new connections per side")
    parser.add_argument("--rounds", type=int, default=5, help="ReadRevision rounds (median)")
    parser.add_argument("--dir", default="/dev/shm", help="where the repository lives")
    args, _ = parser.parse_known_args(argv)
    with tempfile.TemporaryDirectory(prefix="lifeboat-bench-tls-", dir=args.dir) as tmp:
        workdir = Path(tmp)
        source = workdir / "vm-bench.raw"
        write_reference_image(source, args.size_mib * MiB)
        with two_sides(workdir, source) as (plain, secure):
            revision = back_up(plain)
            source.unlink()  # the revision holds the image now
            image = workdir / "repo" / JOB / revision
            print(
                f"tls benchmark: {args.calls} unary calls, {args.connections} new connections, "
                f"{args.rounds} streams of a {args.size_mib} MiB revision (3/4 data) in {args.dir}"
            )
            rows = latency_rows(plain, secure, args.calls, args.connections)
            rows += stream_rows(plain, secure, revision, image, args.rounds)
    return report(rows)


if __name__ == "__main__":
    import sys

    raise SystemExit(main(sys.argv[1:]))
