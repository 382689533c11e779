"""`make run`: the whole system on localhost with an embedded default config.

Writes ./var/lifeboat.yaml and sample images under ./var/images, then starts
backupd, restored, the scheduler and the monitor as child processes. Ctrl-C
(or SIGTERM) stops them all with SIGTERM and waits for them.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

VAR = Path("var").resolve()
SAMPLE_SIZE = 64 * 1024 * 1024
SAMPLE_JOBS = ("vm-web01", "vm-db01")

CONFIG_TEMPLATE = """\
# Embedded default config of `make run`: one host, file sources, short intervals.
global:
  base-dir: {var}/backups
  worker-limit: 2
  restore-targets: [{var}/restores]
  restore-within: 10m
scheduler: {{listen: 127.0.0.1:9410}}
monitor: {{listen: 127.0.0.1:9413, http: 127.0.0.1:9414}}
hosts:
  localhost: {{backupd: 127.0.0.1:9411, restored: 127.0.0.1:9412}}
schedules:
  default:
    frequent: {{interval: 2m, keep: 10}}
    hourly: {{interval: 1h, keep: 24}}
    daily: {{interval: 1d, keep: 7}}
jobs:
{jobs}"""

JOB_TEMPLATE = """\
  {name}:
    host: localhost
    schedule: default
    source: {{type: file, path: {var}/images/{name}.raw}}
"""

DAEMONS: tuple[tuple[str, str, list[str]], ...] = (
    ("lifeboat-backupd", "backupd.cli", ["--host", "localhost"]),
    ("lifeboat-restored", "restored.cli", ["--host", "localhost"]),
    ("lifeboat-scheduler", "scheduler.cli", []),
    ("lifeboat-monitor", "monitor.cli", []),
)


def write_sample_image(path: Path, seed: int) -> None:
    """A sparse image: random data in the first half, scattered blocks, a hole at the end."""
    rng = random.Random(seed)
    with path.open("wb") as image:
        image.write(rng.randbytes(SAMPLE_SIZE // 2))
        for _ in range(64):
            image.seek(rng.randrange(SAMPLE_SIZE // 2, SAMPLE_SIZE - 4096))
            image.write(rng.randbytes(4096))
        image.truncate(SAMPLE_SIZE)


def prepare() -> Path:
    for sub in ("images", "backups", "restores"):
        (VAR / sub).mkdir(parents=True, exist_ok=True)
    for seed, name in enumerate(SAMPLE_JOBS):
        image = VAR / "images" / f"{name}.raw"
        if not image.exists():
            write_sample_image(image, seed)
    config = VAR / "lifeboat.yaml"
    jobs = "".join(JOB_TEMPLATE.format(name=name, var=VAR) for name in SAMPLE_JOBS)
    config.write_text(CONFIG_TEMPLATE.format(var=VAR, jobs=jobs))
    return config


def start(config: Path) -> list[tuple[str, subprocess.Popen[bytes]]]:
    children = []
    for name, module, extra in DAEMONS:
        command = [sys.executable, "-m", module, "--config", str(config), *extra]
        children.append((name, subprocess.Popen(command, start_new_session=True)))
    return children


def stop(children: list[tuple[str, subprocess.Popen[bytes]]]) -> None:
    for _, child in children:
        if child.poll() is None:
            child.send_signal(signal.SIGTERM)
    for name, child in children:
        try:
            child.wait(timeout=20)
        except subprocess.TimeoutExpired:
            print(f"{name} did not stop in 20 s; killing it", file=sys.stderr)
            child.kill()
            child.wait()


def main() -> None:
    config = prepare()
    os.environ["LIFEBOAT_CONFIG"] = str(config)
    print(f"config: {config}", file=sys.stderr)
    children = start(config)
    stop_requested = False

    def request_stop(signum: int, frame: object) -> None:
        nonlocal stop_requested
        stop_requested = True

    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    print(
        "lifeboat running: scheduler 127.0.0.1:9410, backupd :9411, restored :9412, "
        "monitor :9413 (HTTP :9414). Ctrl-C stops all.",
        file=sys.stderr,
    )
    try:
        while not stop_requested:
            for name, child in children:
                if child.poll() is not None:
                    print(f"{name} exited with status {child.returncode}", file=sys.stderr)
                    stop_requested = True
            time.sleep(0.2)
    finally:
        stop(children)
    print("lifeboat stopped", file=sys.stderr)


if __name__ == "__main__":
    main()
