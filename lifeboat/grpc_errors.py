"""The one place where domain errors become gRPC status codes."""

from __future__ import annotations

import grpc

from lifeboat import errors

_STATUS_BY_ERROR: tuple[tuple[type[errors.LifeboatError], grpc.StatusCode], ...] = (
    (errors.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.ConfigError, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (errors.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (errors.ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.Unavailable, grpc.StatusCode.UNAVAILABLE),
    (errors.DataLoss, grpc.StatusCode.DATA_LOSS),
    (errors.Cancelled, grpc.StatusCode.CANCELLED),
)

_ERROR_BY_STATUS: dict[grpc.StatusCode, type[errors.LifeboatError]] = {
    code: kind for kind, code in _STATUS_BY_ERROR if kind is not errors.ConfigError
}


def status_for(error: errors.LifeboatError) -> grpc.StatusCode:
    for kind, code in _STATUS_BY_ERROR:
        if isinstance(error, kind):
            return code
    return grpc.StatusCode.INTERNAL


def error_for(rpc_error: grpc.RpcError, peer: str) -> errors.LifeboatError:
    """The domain error for a failed call to a peer; unreachable peers become Unavailable."""
    code = rpc_error.code() if hasattr(rpc_error, "code") else grpc.StatusCode.UNKNOWN
    details = rpc_error.details() if hasattr(rpc_error, "details") else str(rpc_error)
    message = f"{peer}: {details}"
    if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
        return errors.Unavailable(message)
    kind = _ERROR_BY_STATUS.get(code, errors.LifeboatError)
    if kind is errors.InvalidArgument:
        return errors.InvalidArgument(peer, details or "")
    return kind(message)
