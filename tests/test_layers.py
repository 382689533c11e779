"""Domain code never imports grpc or generated code, directly or through another module.

Every module of the service packages is domain code unless it is listed here as part of
the RPC layer (servers, servicers, clients, conversions); a new module is domain code
until someone decides otherwise, and this test then keeps it so.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.support.processes import REPO

PACKAGES = ("lifeboat", "scheduler", "backupd", "restored", "monitor")
RPC_LAYER = {
    "lifeboat.bootstrap",
    "lifeboat.client",
    "lifeboat.convert",
    "lifeboat.grpc_errors",
    "lifeboat.host_daemon",
    "lifeboat.operation_service",
    "lifeboat.request_bounds",
    "lifeboat.security",
    "lifeboat.devrun",
    "lifeboat.admin",
    "scheduler.remote",
    "monitor.rpc",
    "monitor.check",
}
RPC_MODULE_NAMES = {"server", "service", "cli", "__main__"}
FORBIDDEN = ("grpc", "grpc_health", "grpc_reflection", "google.protobuf", "lifeboat.v1")


def module_names() -> list[str]:
    names = []
    for package in PACKAGES:
        for path in sorted((REPO / package).rglob("*.py")):
            parts = path.relative_to(REPO).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            names.append(".".join(parts))
    return names


def is_domain(name: str) -> bool:
    if name.startswith("lifeboat.v1") or name.split(".")[-1] in RPC_MODULE_NAMES:
        return False
    return not any(name == rpc or name.startswith(rpc + ".") for rpc in RPC_LAYER)


def test_domain_modules_import_no_grpc() -> None:
    domain = [name for name in module_names() if is_domain(name)]
    assert "backupd.worker" in domain and "lifeboat.repository" in domain
    probe = (
        "import importlib, sys\n"
        f"for name in {domain!r}:\n"
        "    importlib.import_module(name)\n"
        f"loaded = sorted(m for m in sys.modules if m.startswith({FORBIDDEN!r}))\n"
        "print(' '.join(loaded))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=REPO, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == [], "domain code pulls in the RPC layer"


def test_the_rpc_layer_list_names_modules_that_exist() -> None:
    names = set(module_names())
    missing = {rpc for rpc in RPC_LAYER if rpc not in names}
    assert not missing, missing
    assert Path(REPO / "lifeboat" / "v1").is_dir()
