"""The measured restore throughput of one host, and what it predicts.

Throughput is data bytes (holes excluded: they cost nothing) per second of the last
`SAMPLES` successful restores to files, block devices and RBD images, summed (so a
long restore weighs more than a short one). Streams are not counted: their pace is
the client's. The samples are kept in `<base-dir>/.restore-throughput` (YAML,
replaced atomically) so predictions survive a restart of restored.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

import yaml

from lifeboat import clock
from lifeboat.repository import replace_file

log = logging.getLogger("lifeboat.restored")

SAMPLES = 10
MIN_SAMPLE_BYTES = 1024 * 1024
"""Smaller restores are dominated by set-up and fsync; they would understate the rate."""
FILE_NAME = ".restore-throughput"


@dataclass(frozen=True)
class Sample:
    data_bytes: int
    seconds: float
    time: dt.datetime


class ThroughputMeter:
    def __init__(self, path: Path | None) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._samples: list[Sample] = self._load()

    def record(self, data_bytes: int, seconds: float) -> None:
        if data_bytes < MIN_SAMPLE_BYTES or seconds <= 0:
            return
        with self._lock:
            self._samples = [*self._samples, Sample(data_bytes, seconds, clock.now())][-SAMPLES:]
            self._save(self._samples)

    def bytes_per_second(self) -> float:
        """Zero until a restore has been measured."""
        with self._lock:
            samples = list(self._samples)
        seconds = sum(s.seconds for s in samples)
        return sum(s.data_bytes for s in samples) / seconds if seconds > 0 else 0.0

    def predict(self, data_bytes: int) -> dt.timedelta | None:
        rate = self.bytes_per_second()
        if rate <= 0:
            return None
        return dt.timedelta(seconds=data_bytes / rate)

    def _load(self) -> list[Sample]:
        if self.path is None:
            return []
        try:
            document = yaml.safe_load(self.path.read_text())
        except FileNotFoundError:
            return []
        except (OSError, yaml.YAMLError) as error:
            log.warning("ignoring unreadable %s: %s", self.path, error)
            return []
        try:
            return [
                Sample(int(s["data-bytes"]), float(s["seconds"]), s["time"])
                for s in document["samples"]
            ][-SAMPLES:]
        except (KeyError, TypeError, ValueError) as error:
            log.warning("ignoring malformed %s: %s", self.path, error)
            return []

    def _save(self, samples: list[Sample]) -> None:
        if self.path is None:
            return
        document = {
            "samples": [
                {"data-bytes": s.data_bytes, "seconds": round(s.seconds, 3), "time": s.time}
                for s in samples
            ]
        }
        try:
            replace_file(self.path, yaml.safe_dump(document, sort_keys=False).encode())
        except OSError as error:
            log.warning("cannot record restore throughput in %s: %s", self.path, error)
