"""`lifeboat restore`: restore a revision of a job through its host's restored."""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from typing import Any

from lifeboat import client
from lifeboat import config as config_module
from lifeboat.errors import LifeboatError, NotFound
from lifeboat.security import ClientIdentity
from lifeboat.v1 import (
    operations_pb2,
    operations_pb2_grpc,
    resources_pb2,
    restore_pb2,
    restore_pb2_grpc,
)

POLL_SECONDS = 0.2


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "restore",
        help="restore a revision to a file, block device or RBD image",
        description="Restore a revision of JOB on its backup host (the newest good revision "
        "unless --revision or --tag says otherwise).",
    )
    parser.add_argument("job", metavar="JOB")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--revision", metavar="ID", help="a revision id")
    which.add_argument("--tag", metavar="TAG", help="the newest good revision with this tag")
    parser.add_argument(
        "--target",
        required=True,
        metavar="PATH|rbd:POOL/IMAGE",
        help="absolute path on the backup host (file or block device) or an RBD image",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace an existing target")
    parser.add_argument("--wait", action="store_true", help="show progress until the restore ends")
    parser.add_argument(
        "--host", metavar="HOST", help="the job's backup host (default: from the config)"
    )
    parser.set_defaults(func=run)


def _host(args: argparse.Namespace, config: config_module.Config) -> config_module.HostConfig:
    if args.host:
        return config.host(args.host)
    job = config.jobs.get(args.job)
    if job is None:
        raise NotFound(f"job {args.job!r} is not in {config.path}; name its host with --host")
    return config.host(job.host)


def _request(args: argparse.Namespace) -> restore_pb2.StartRestoreRequest:
    request = restore_pb2.StartRestoreRequest(
        job=args.job, target=args.target, overwrite=args.overwrite
    )
    if args.revision:
        request.revision_id = args.revision
    elif args.tag:
        request.tag = args.tag
    else:
        request.latest = True
    return request


def _wait(
    address: str, identity: ClientIdentity | None, name: str, timeout: float
) -> resources_pb2.Operation:
    """Show progress until the operation ends; its final state comes from GetOperation,
    because a watch can end on the update just before the final one."""
    with contextlib.suppress(LifeboatError):  # a real problem shows again below
        client.watch(address, identity, name)
    request = operations_pb2.GetOperationRequest(name=name)
    with client.channel(address, identity) as channel:
        stub = operations_pb2_grpc.OperationServiceStub(channel)
        while True:
            reply = client.call(address, stub.GetOperation, request, timeout)
            assert isinstance(reply, operations_pb2.GetOperationResponse)
            if reply.operation.state in client.FINISHED_STATES:
                return reply.operation
            time.sleep(POLL_SECONDS)


def run(args: argparse.Namespace, config: config_module.Config) -> int:
    address = _host(args, config).restored
    with client.channel(address, args.identity) as channel:
        stub = restore_pb2_grpc.RestoreServiceStub(channel)
        reply = client.call(address, stub.StartRestore, _request(args), args.timeout)
    assert isinstance(reply, restore_pb2.StartRestoreResponse)
    operation = reply.operation
    print(
        f"{operation.name}: restoring revision {operation.revision_id} of {operation.job} "
        f"to {operation.target}"
    )
    if not args.wait:
        return 0
    final = _wait(address, args.identity, operation.name, args.timeout)
    if final.state != resources_pb2.OPERATION_STATE_SUCCEEDED:
        state = resources_pb2.OperationState.Name(final.state).removeprefix("OPERATION_STATE_")
        print(f"lifeboat: {final.name} {state.lower()}: {final.error}", file=sys.stderr)
        return 1
    seconds = (final.end_time.ToDatetime() - final.start_time.ToDatetime()).total_seconds()
    print(
        f"{final.name}: restored {client.format_bytes(final.bytes_done)} of data to "
        f"{final.target} in {seconds:.1f}s"
    )
    return 0
