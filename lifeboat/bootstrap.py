"""The one way every Lifeboat daemon serves gRPC.

A `grpc.aio` server with the standard health service (one status per
service and the overall ""), server reflection, one interceptor that maps
domain errors to status codes and logs each call, graceful stop on
SIGTERM/SIGINT and config reload on SIGHUP.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from lifeboat import access, errors
from lifeboat.access import Access
from lifeboat.bounds import clip
from lifeboat.config import Config, ServerSecurity, reload_error
from lifeboat.grpc_errors import status_for
from lifeboat.repository import Repository, validate_job_name
from lifeboat.request_bounds import check_request
from lifeboat.security import Guard

log = logging.getLogger("lifeboat.rpc")
audit_log = logging.getLogger("lifeboat.audit")

# Appends one line to a job's own log, where the job has a directory on this host.
JobLog = Callable[[str, str], Awaitable[None]]

GRACE_SECONDS = 10.0


@dataclass(frozen=True)
class ServiceSpec:
    """One gRPC service to serve: its full name and how to add it to a server."""

    full_name: str
    register: Callable[[grpc.aio.Server], None]


async def _abort_for(error: BaseException, context: grpc.aio.ServicerContext, method: str) -> None:
    if isinstance(error, NotImplementedError):
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, f"{method} is not implemented")
    if isinstance(error, errors.LifeboatError):
        code = status_for(error)
        log.info("%s failed: %s %s", method, code.name, error)
        await context.abort(code, str(error))
    log.exception("%s crashed", method, exc_info=error)
    await context.abort(
        grpc.StatusCode.INTERNAL, f"internal error: {type(error).__name__}: {clip(str(error))}"
    )


def _is_abort(error: BaseException) -> bool:
    # context.abort() raises grpc's own AbortError; it must pass through untouched.
    return type(error).__name__ == "AbortError" or isinstance(error, asyncio.CancelledError)


def _result_of(context: grpc.aio.ServicerContext, error: BaseException | None) -> str:
    if error is None:
        return "OK"
    if isinstance(error, errors.LifeboatError):
        return status_for(error).name
    code = context.code() if _is_abort(error) else None
    return code.name if isinstance(code, grpc.StatusCode) else "INTERNAL"


def _job_of(request: Any, response: Any) -> str:
    """The job a call concerns: named by the request, or by the operation it answers with."""
    job = getattr(request, "job", None)
    if isinstance(job, str) and job:
        return job
    operation = getattr(response, "operation", None)
    return operation.job if operation is not None else ""


def audit_to_job_log(repository: Repository) -> JobLog:
    """Audit lines of a job go to its log in `repository`, where the job has a directory."""

    async def write(job: str, line: str) -> None:
        await asyncio.to_thread(repository.job(job).append_log_if_present, line)

    return write


class CallGuard:
    """Every call of a Lifeboat service: authorize, bound the request, map errors, audit."""

    def __init__(self, guard: Guard, job_log: JobLog | None) -> None:
        self.guard = guard
        self.job_log = job_log

    async def admit(
        self, request: Any, context: grpc.aio.ServicerContext, method: str
    ) -> access.Caller:
        caller = self.guard.caller(context.auth_context())
        refusal = access.refusal(method, caller)
        if refusal is not None:
            log.warning("refused %s to %s", access.short_method(method), caller.name)
            await self.audit(method, caller, request, None, "PERMISSION_DENIED")
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, refusal)
        try:
            check_request(request)
        except errors.InvalidArgument as error:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(error))
        return caller

    async def audit(
        self,
        method: str,
        caller: access.Caller,
        request: Any,
        response: Any,
        result: str,
    ) -> None:
        if method not in access.AUDITED:
            return
        job = _job_of(request, response)
        try:
            shown = validate_job_name(job)
        except errors.InvalidArgument:
            job, shown = "", clip(job) if job else "-"
        role = caller.role.label if caller.role is not None else "none"
        line = (
            f"audit caller={caller.name} role={role} rpc={access.short_method(method)} "
            f"job={shown} result={result}"
        )
        audit_log.info("%s", line)
        if job and self.job_log is not None:
            try:
                await self.job_log(job, line)
            except (OSError, errors.LifeboatError) as error:
                audit_log.error("cannot write the audit line to the log of job %s: %s", job, error)

    def unary(self, behavior: Callable[..., Awaitable[Any]], method: str) -> Callable[..., Any]:
        async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = time.monotonic()
            caller = await self.admit(request, context, method)
            try:
                response = await behavior(request, context)
            except Exception as error:
                await self.audit(method, caller, request, None, _result_of(context, error))
                if _is_abort(error):
                    raise
                await _abort_for(error, context, method)
            await self.audit(method, caller, request, response, "OK")
            log.debug("%s ok in %.3fs", method, time.monotonic() - started)
            return response

        return call

    def stream(
        self, behavior: Callable[..., AsyncIterator[Any]], method: str
    ) -> Callable[..., Any]:
        async def call(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
            await self.admit(request, context, method)
            try:
                async for item in behavior(request, context):
                    yield item
            except Exception as error:
                if _is_abort(error):
                    raise
                await _abort_for(error, context, method)

        return call


class GuardInterceptor(grpc.aio.ServerInterceptor):
    """Applies one CallGuard to every method but health and reflection."""

    def __init__(self, call_guard: CallGuard) -> None:
        self.call_guard = call_guard
        # A method's handler never changes: wrap it once, not on every call.
        self._guarded: dict[str, grpc.RpcMethodHandler] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = handler_call_details.method
        guarded = self._guarded.get(method)
        if guarded is not None:
            return guarded
        handler = await continuation(handler_call_details)
        if handler is None or access.service_of(method) in access.OPEN_SERVICES:
            return handler
        guarded = self._guard(handler, method)
        self._guarded[method] = guarded
        return guarded

    def _guard(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self.call_guard.unary(handler.unary_unary, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self.call_guard.stream(
                    cast(Callable[..., AsyncIterator[Any]], handler.unary_stream), method
                ),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        # Lifeboat has no client-streaming methods: whatever this is, it has no rule, and
        # no handler makes gRPC answer UNIMPLEMENTED.
        return cast(grpc.RpcMethodHandler, None)


class GrpcDaemon:
    """A started gRPC server with health and reflection; stops gracefully."""

    def __init__(
        self,
        name: str,
        listen: str,
        services: Sequence[ServiceSpec],
        on_reload: Callable[[], Awaitable[None]] | None = None,
        on_stop: Callable[[], Awaitable[None]] | None = None,
        guard: Guard | None = None,
        section: Callable[[Config], ServerSecurity] | None = None,
        job_log: JobLog | None = None,
        config_path: str = "",
    ) -> None:
        """`guard` decides who may call (default: plaintext, every caller local admin);
        `section` picks this daemon's part of a reloaded config; `job_log` receives the
        audit lines of calls that concern a job; `config_path` is the file `on_reload`
        re-reads, named when the reload fails."""
        self.name = name
        self.listen = listen
        self.services = list(services)
        self.on_reload = on_reload
        self.on_stop = on_stop
        self.guard = guard or Guard(None, Access({}))
        self.section = section
        self.job_log = job_log
        self.config_path = config_path
        self.health = health.aio.HealthServicer()  # type: ignore[attr-defined]
        self.server: grpc.aio.Server | None = None
        self.port = 0
        self._stopped = asyncio.Event()

    async def start(self) -> int:
        """Bind and start serving; returns the bound port (useful with port 0)."""
        server = grpc.aio.server(
            interceptors=[GuardInterceptor(CallGuard(self.guard, self.job_log))]
        )
        for service in self.services:
            service.register(server)
        health_pb2_grpc.add_HealthServicer_to_server(self.health, server)
        names = [s.full_name for s in self.services]
        names += [
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ]
        reflection.enable_server_reflection(names, server)
        try:
            if self.guard.tls is None:
                self.port = server.add_insecure_port(self.listen)
            else:
                self.port = server.add_secure_port(self.listen, self.guard.tls.credentials)
        except RuntimeError as error:
            raise errors.Unavailable(f"cannot listen on {self.listen}: {error}") from None
        await server.start()
        self.server = server
        for name in ["", *(s.full_name for s in self.services)]:
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        log.info("%s serving on %s", self.name, self.listen.rsplit(":", 1)[0] + f":{self.port}")
        return self.port

    async def stop(self, grace: float = GRACE_SECONDS) -> None:
        """Stop accepting calls, let running ones finish within `grace`, then stop."""
        if self.server is None or self._stopped.is_set():
            return
        self._stopped.set()
        log.info("%s stopping (grace %.0fs)", self.name, grace)
        await self.health.enter_graceful_shutdown()
        if self.on_stop is not None:
            await self.on_stop()
        await self.server.stop(grace)
        log.info("%s stopped", self.name)

    def reload_security(self, config: Config) -> None:
        """Apply a reloaded config's roles and certificates (new connections get them)."""
        if self.section is None:
            return
        try:
            self.guard.reload(config, self.section(config))
        except errors.ConfigError as error:
            log.error("%s keeps its certificate: %s", self.name, error)

    async def reload(self) -> None:
        """Re-read the config (SIGHUP). Whatever fails, one line says so and the daemon
        serves on with the config it had."""
        if self.on_reload is None:
            return
        log.info("%s reloading config", self.name)
        try:
            await self.on_reload()
        except Exception as error:
            failure = reload_error(self.config_path, error)
            log.error("%s reload failed, keeping the old config: %s", self.name, failure)
            if failure is not error:
                log.debug("%s reload failure", self.name, exc_info=error)

    async def run_until_signalled(self) -> None:
        """Serve until SIGTERM or SIGINT; SIGHUP reloads."""
        loop = asyncio.get_running_loop()
        stop_requested = asyncio.Event()
        pending: set[asyncio.Task[None]] = set()

        def request_reload() -> None:
            task = loop.create_task(self.reload())
            pending.add(task)
            task.add_done_callback(pending.discard)

        loop.add_signal_handler(signal.SIGTERM, stop_requested.set)
        loop.add_signal_handler(signal.SIGINT, stop_requested.set)
        loop.add_signal_handler(signal.SIGHUP, request_reload)
        try:
            await stop_requested.wait()
        finally:
            for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(sig)
            await self.stop()
