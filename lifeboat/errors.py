"""Domain errors. Each kind maps to one gRPC status code in `lifeboat.grpc_errors`;
domain code raises these and never imports grpc."""

from __future__ import annotations


class LifeboatError(Exception):
    """Base of every error that is reported to a caller."""


class InvalidArgument(LifeboatError):
    """The request (or config) is wrong; `field` names what."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


class NotFound(LifeboatError):
    pass


class AlreadyExists(LifeboatError):
    pass


class PermissionDenied(LifeboatError):
    pass


class ResourceExhausted(LifeboatError):
    """A limit was reached (worker slots, disk space)."""


class FailedPrecondition(LifeboatError):
    """The system is not in a state where the request can run."""


class Unavailable(LifeboatError):
    """A peer (host, cluster) cannot be reached; trying again may work."""


class DataLoss(LifeboatError):
    """Stored data does not match its checksums."""


class Cancelled(LifeboatError):
    pass


class RetryLater(LifeboatError):
    """The work cannot run now and should be tried again later (a job's freeze hook
    exited 75): the operation ends RETRY_LATER, not FAILED."""


class ConfigError(LifeboatError):
    """The config file is invalid; the message names the file, the key and the problem."""

    def __init__(self, path: str, key: str, problem: str) -> None:
        super().__init__(f"{path}: {key}: {problem}")
        self.path = path
        self.key = key
        self.problem = problem
