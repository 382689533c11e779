"""Client side of the contracts: channels to hosts and services, watching operations.

Every channel of every Lifeboat client is made here: plaintext without an identity,
mTLS (verifying the server against the CA and the address dialled) with one."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import grpc

from lifeboat.errors import LifeboatError
from lifeboat.grpc_errors import error_for
from lifeboat.security import ClientIdentity
from lifeboat.v1 import operations_pb2, operations_pb2_grpc, resources_pb2

FINISHED_STATES = {
    resources_pb2.OPERATION_STATE_SUCCEEDED,
    resources_pb2.OPERATION_STATE_FAILED,
    resources_pb2.OPERATION_STATE_CANCELLED,
    resources_pb2.OPERATION_STATE_RETRY_LATER,
}


ChannelOptions = Sequence[tuple[str, Any]]


@contextmanager
def channel(
    address: str, identity: ClientIdentity | None, options: ChannelOptions = ()
) -> Iterator[grpc.Channel]:
    """A blocking channel to a Lifeboat service."""
    if identity is None:
        opened = grpc.insecure_channel(address, options=options)
    else:
        opened = grpc.secure_channel(address, identity.credentials(), options=options)
    with opened:
        yield opened


def aio_channel(
    address: str, identity: ClientIdentity | None, options: ChannelOptions = ()
) -> grpc.aio.Channel:
    """An asyncio channel to a Lifeboat service; the caller closes it."""
    if identity is None:
        return grpc.aio.insecure_channel(address, options=options)
    return grpc.aio.secure_channel(address, identity.credentials(), options=options)


def call(peer: str, method: Callable[..., object], request: object, timeout: float) -> object:
    """One unary call; failures become domain errors naming the peer."""
    try:
        return method(request, timeout=timeout)
    except grpc.RpcError as error:
        raise error_for(error, peer) from None


def format_bytes(count: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    return f"{count:.1f} TiB"


def progress_line(operation: resources_pb2.Operation) -> str:
    """One line: state, bar, bytes, throughput, ETA."""
    state = resources_pb2.OperationState.Name(operation.state).removeprefix("OPERATION_STATE_")
    total = operation.bytes_total
    fraction = operation.bytes_done / total if total else 0.0
    width = 30
    bar = "#" * int(fraction * width) + "-" * (width - int(fraction * width))
    eta = f" ETA {operation.eta.seconds}s" if operation.HasField("eta") else ""
    rate = format_bytes(operation.throughput_bytes_per_second)
    return (
        f"{operation.name} {state.lower():<9} [{bar}] {fraction * 100:5.1f}% "
        f"{format_bytes(operation.bytes_done)}/{format_bytes(total)} {rate}/s{eta}"
    )


def watch(
    address: str, identity: ClientIdentity | None, name: str, show: bool = True
) -> resources_pb2.Operation:
    """Stream an operation until it ends, drawing a progress bar on a terminal."""
    interactive = show and sys.stderr.isatty()
    last = resources_pb2.Operation()
    last_print = 0.0
    with channel(address, identity) as opened:
        stub = operations_pb2_grpc.OperationServiceStub(opened)
        try:
            for reply in stub.WatchOperation(operations_pb2.WatchOperationRequest(name=name)):
                last = reply.operation
                if interactive:
                    print("\r" + progress_line(last), end="", file=sys.stderr, flush=True)
                elif show and time.monotonic() - last_print > 5:
                    print(progress_line(last), file=sys.stderr, flush=True)
                    last_print = time.monotonic()
        except grpc.RpcError as error:
            raise error_for(error, address) from None
    if interactive:
        print(file=sys.stderr)
    if last.state not in FINISHED_STATES:
        raise LifeboatError(f"{address}: watch of {name} ended before the operation did")
    return last
