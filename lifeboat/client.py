"""Client side of the contracts: channels to hosts and services, watching operations.

Every channel of every Lifeboat client is made here: plaintext without an identity,
mTLS (verifying the server against the CA and the address dialled) with one."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import grpc

from lifeboat.errors import LifeboatError, Unavailable
from lifeboat.grpc_errors import error_for
from lifeboat.security import ClientIdentity
from lifeboat.v1 import operations_pb2, operations_pb2_grpc, resources_pb2

FINISHED_STATES = {
    resources_pb2.OPERATION_STATE_SUCCEEDED,
    resources_pb2.OPERATION_STATE_FAILED,
    resources_pb2.OPERATION_STATE_CANCELLED,
    resources_pb2.OPERATION_STATE_RETRY_LATER,
}


# Job statuses and revision lists of a big host exceed grpc's default 4 MiB.
MAX_MESSAGE_BYTES = 256 * 1024 * 1024
CALL_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
)
# The daemons' long-lived channels: a peer that comes back must be seen again within a
# poll or two, not after grpc's default reconnect backoff of up to two minutes. (Not for
# one-shot calls: this also shortens the connect timeout, which would turn "did not
# answer in time" into "cannot connect".)
PEER_OPTIONS = (
    *CALL_OPTIONS,
    ("grpc.initial_reconnect_backoff_ms", 200),
    ("grpc.min_reconnect_backoff_ms", 200),
    ("grpc.max_reconnect_backoff_ms", 2000),
)


@contextmanager
def channel(address: str, identity: ClientIdentity | None) -> Iterator[grpc.Channel]:
    """A blocking channel to a Lifeboat service, for a command's few calls."""
    if identity is None:
        opened = grpc.insecure_channel(address, options=CALL_OPTIONS)
    else:
        opened = grpc.secure_channel(address, identity.credentials(), options=CALL_OPTIONS)
    with opened:
        yield opened


def aio_channel(address: str, identity: ClientIdentity | None) -> grpc.aio.Channel:
    """A long-lived asyncio channel of a daemon to its peer; the caller closes it."""
    if identity is None:
        return grpc.aio.insecure_channel(address, options=PEER_OPTIONS)
    return grpc.aio.secure_channel(address, identity.credentials(), options=PEER_OPTIONS)


def failure(error: grpc.RpcError, peer: str, timeout: float) -> LifeboatError:
    """The domain error for a failed call to `peer`; a missed deadline says how long."""
    code = error.code() if hasattr(error, "code") else None  # aio errors are no grpc.Call
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return Unavailable(f"{peer}: no answer within {timeout:g}s")
    return error_for(error, peer)


async def acall(peer: str, method: Callable[..., Any], request: object, timeout: float) -> Any:
    """One asyncio unary call; failures become domain errors naming the peer."""
    try:
        return await method(request, timeout=timeout)
    except grpc.RpcError as error:
        raise failure(error, peer, timeout) from None


def call(peer: str, method: Callable[..., object], request: object, timeout: float) -> object:
    """One unary call; failures become domain errors naming the peer."""
    try:
        return method(request, timeout=timeout)
    except grpc.RpcError as error:
        raise failure(error, peer, timeout) from None


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
