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

from lifeboat import errors
from lifeboat.grpc_errors import status_for

log = logging.getLogger("lifeboat.rpc")

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
        grpc.StatusCode.INTERNAL, f"internal error: {type(error).__name__}: {error}"
    )


def _wrap_unary(behavior: Callable[..., Awaitable[Any]], method: str) -> Callable[..., Any]:
    async def call(request: Any, context: grpc.aio.ServicerContext) -> Any:
        started = time.monotonic()
        try:
            response = await behavior(request, context)
        except (errors.LifeboatError, Exception) as error:
            if _is_abort(error):
                raise
            await _abort_for(error, context, method)
        log.debug("%s ok in %.3fs", method, time.monotonic() - started)
        return response

    return call


def _wrap_stream(behavior: Callable[..., AsyncIterator[Any]], method: str) -> Callable[..., Any]:
    async def call(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        try:
            async for item in behavior(request, context):
                yield item
        except (errors.LifeboatError, Exception) as error:
            if _is_abort(error):
                raise
            await _abort_for(error, context, method)

    return call


def _is_abort(error: BaseException) -> bool:
    # context.abort() raises grpc's own AbortError; it must pass through untouched.
    return type(error).__name__ == "AbortError" or isinstance(error, asyncio.CancelledError)


class ErrorMappingInterceptor(grpc.aio.ServerInterceptor):
    """Turns domain errors into status codes and logs every failed call."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not method.startswith("/lifeboat."):
            return handler
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary(handler.unary_unary, method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                _wrap_stream(cast(Callable[..., AsyncIterator[Any]], handler.unary_stream), method),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler


class GrpcDaemon:
    """A started gRPC server with health and reflection; stops gracefully."""

    def __init__(
        self,
        name: str,
        listen: str,
        services: Sequence[ServiceSpec],
        on_reload: Callable[[], Awaitable[None]] | None = None,
        on_stop: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        self.name = name
        self.listen = listen
        self.services = list(services)
        self.on_reload = on_reload
        self.on_stop = on_stop
        self.health = health.aio.HealthServicer()  # type: ignore[attr-defined]
        self.server: grpc.aio.Server | None = None
        self.port = 0
        self._stopped = asyncio.Event()

    async def start(self) -> int:
        """Bind and start serving; returns the bound port (useful with port 0)."""
        server = grpc.aio.server(interceptors=[ErrorMappingInterceptor()])
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
            self.port = server.add_insecure_port(self.listen)
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

    async def reload(self) -> None:
        if self.on_reload is None:
            return
        log.info("%s reloading config", self.name)
        try:
            await self.on_reload()
        except errors.LifeboatError as error:
            log.error("%s reload failed, keeping the old config: %s", self.name, error)

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
