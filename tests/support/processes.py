"""Start the real daemons as processes for end-to-end tests."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from lifeboat import client
from lifeboat.security import ClientIdentity

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def alive(pid: int) -> bool:
    """Whether a process with this pid exists (a zombie counts)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def gone_within(pids: list[int], seconds: float) -> bool:
    """Whether the processes are gone within `seconds`: a stopped daemon is an orphan until
    init reaps it, which on a busy machine can lag."""
    deadline = time.monotonic() + seconds
    while any(alive(pid) for pid in pids):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_serving(
    address: str,
    timeout: float = 20.0,
    service: str = "",
    identity: ClientIdentity | None = None,
) -> None:
    """Block until the health service at `address` says SERVING."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        with client.channel(address, identity) as channel:
            try:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=service), timeout=1.0
                )
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError as error:
                last_error = error
        time.sleep(0.1)
    raise TimeoutError(f"{address} not SERVING after {timeout}s: {last_error}")


@dataclass
class Daemon:
    name: str
    address: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def terminate(self, timeout: float = 20.0) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@dataclass
class Fleet:
    """Daemons started for one test; stopped (killed if need be) at the end."""

    workdir: Path
    daemons: list[Daemon] = field(default_factory=list)

    def start(
        self,
        module: str,
        address: str,
        *args: str,
        wait: bool = True,
        identity: ClientIdentity | None = None,
    ) -> Daemon:
        name = module.split(".")[0]
        log_path = self.workdir / f"{name}-{len(self.daemons)}.log"
        with log_path.open("wb") as log_file:
            process = subprocess.Popen(
                [sys.executable, "-m", module, "--listen", address, *args],
                stdout=log_file,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
                start_new_session=True,
            )
        daemon = Daemon(name, address, process, log_path)
        self.daemons.append(daemon)
        if wait:
            try:
                wait_serving(address, identity=identity)
            except TimeoutError as error:
                raise TimeoutError(f"{error}\n--- {name} log ---\n{daemon.log()}") from None
        return daemon

    def stop_all(self) -> None:
        for daemon in self.daemons:
            with contextlib.suppress(subprocess.TimeoutExpired):
                daemon.terminate(timeout=15)
            daemon.kill()


@contextlib.contextmanager
def fleet(workdir: Path) -> Iterator[Fleet]:
    running = Fleet(workdir)
    try:
        yield running
    finally:
        running.stop_all()


def lifeboat(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The admin client `lifeboat --config CONFIG ARGS...` as a process."""
    return subprocess.run(
        [sys.executable, "-m", "lifeboat.admin", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )


def grpcurl(*args: str, timeout: float = 20.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "grpcurl"), *args], capture_output=True, text=True, timeout=timeout
    )
