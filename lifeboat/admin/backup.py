"""Admin subcommands for backups: `lifeboat backup`, `lifeboat revisions`, `lifeboat verify`."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from lifeboat import client
from lifeboat.admin.table import table
from lifeboat.config import Config
from lifeboat.errors import NotFound
from lifeboat.model import Job
from lifeboat.v1 import backup_pb2, backup_pb2_grpc, resources_pb2

EXIT_OK = 0
EXIT_FAILED = 1


def register(subparsers: Any) -> None:
    backup = subparsers.add_parser("backup", help="back up a job now")
    backup.add_argument("job")
    backup.add_argument(
        "--tag", action="append", required=True, help="tag of the new revision (repeatable)"
    )
    backup.add_argument("--wait", action="store_true", help="wait for the end, with a progress bar")
    backup.set_defaults(func=run_backup)

    revisions = subparsers.add_parser("revisions", help="list a job's revisions")
    revisions.add_argument("job")
    revisions.set_defaults(func=run_revisions)

    verify = subparsers.add_parser("verify", help="check a revision against its checksums")
    verify.add_argument("job")
    verify.add_argument(
        "revision", nargs="?", default="", help="revision id (default: last, the newest good)"
    )
    verify.add_argument("--no-wait", action="store_true", help="start it and return")
    verify.set_defaults(func=run_verify)


def job_of(config: Config, name: str) -> Job:
    try:
        return config.jobs[name]
    except KeyError:
        raise NotFound(f"no job named {name!r} in {config.path}") from None


def backupd_address(config: Config, job: Job) -> str:
    return config.host(job.host).backupd


def finish(operation: resources_pb2.Operation) -> int:
    state = resources_pb2.OperationState.Name(operation.state).removeprefix("OPERATION_STATE_")
    detail = f": {operation.error}" if operation.error else ""
    revision = f" revision {operation.revision_id}" if operation.revision_id else ""
    print(f"{operation.name} {state.lower()}{revision}{detail}")
    return EXIT_OK if operation.state == resources_pb2.OPERATION_STATE_SUCCEEDED else EXIT_FAILED


def run_backup(args: argparse.Namespace, config: Config) -> int:
    job = job_of(config, args.job)
    address = backupd_address(config, job)
    with client.channel(address, args.identity) as channel:
        stub = backup_pb2_grpc.BackupServiceStub(channel)
        request = backup_pb2.StartBackupRequest(job=job.name, tags=args.tag)
        reply: Any = client.call(address, stub.StartBackup, request, args.timeout)
    operation = reply.operation
    if not reply.started:
        print(f"a backup of {job.name} is already running: {operation.name}", file=sys.stderr)
    if not args.wait:
        print(operation.name)
        return EXIT_OK
    return finish(client.watch(address, args.identity, operation.name))


def revision_row(revision: resources_pb2.Revision) -> list[str]:
    stats = revision.stats
    verification = resources_pb2.VerificationState.Name(revision.verification.state)
    if revision.damage and not revision.checksum_algorithm:  # its .rev cannot be read
        created = revision.create_time.ToDatetime().strftime("%Y-%m-%d %H:%M:%S")
        return [revision.id, created, "?", "?", "?", "damaged", "?"]
    trust = resources_pb2.Trust.Name(revision.trust).removeprefix("TRUST_").lower()
    return [
        revision.id,
        revision.create_time.ToDatetime().strftime("%Y-%m-%d %H:%M:%S"),
        ",".join(revision.tags),
        client.format_bytes(revision.size),
        "full" if stats.full else client.format_bytes(stats.bytes_written),
        f"{trust}, damaged" if revision.damage else trust,
        verification.removeprefix("VERIFICATION_STATE_").lower(),
    ]


def run_revisions(args: argparse.Namespace, config: Config) -> int:
    job = job_of(config, args.job)
    address = backupd_address(config, job)
    with client.channel(address, args.identity) as channel:
        stub = backup_pb2_grpc.BackupServiceStub(channel)
        request = backup_pb2.ListRevisionsRequest(job=job.name)
        reply: Any = client.call(address, stub.ListRevisions, request, args.timeout)
    header = ["REVISION", "CREATED (UTC)", "TAGS", "SIZE", "WRITTEN", "TRUST", "VERIFIED"]
    print("\n".join(table(header, [revision_row(r) for r in reply.revisions])))
    for revision in reply.revisions:
        if revision.damage:
            print(f"revision {revision.id} damaged: {revision.damage}")
    return EXIT_OK


def run_verify(args: argparse.Namespace, config: Config) -> int:
    job = job_of(config, args.job)
    address = backupd_address(config, job)
    with client.channel(address, args.identity) as channel:
        stub = backup_pb2_grpc.BackupServiceStub(channel)
        request = backup_pb2.VerifyRevisionRequest(job=job.name, revision_id=args.revision)
        reply: Any = client.call(address, stub.VerifyRevision, request, args.timeout)
    if args.no_wait:
        print(reply.operation.name)
        return EXIT_OK
    return finish(client.watch(address, args.identity, reply.operation.name))
