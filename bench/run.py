"""`make bench`: run every benchmark module (bench/bench_*.py) and print its figures.

Each module has `main(argv: list[str]) -> int`; `make bench BENCH=backup` runs one.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
from pathlib import Path


def modules(selected: list[str]) -> list[str]:
    found = sorted(
        info.name
        for info in pkgutil.iter_modules([str(Path(__file__).parent)])
        if info.name.startswith("bench_")
    )
    if selected:
        found = [name for name in found if name.removeprefix("bench_") in selected]
    return found


def main() -> int:
    selected = [name for name in sys.argv[1:] if not name.startswith("-")]
    status = 0
    for name in modules(selected):
        print(f"== {name}", flush=True)
        module = importlib.import_module(f"bench.{name}")
        status |= module.main(sys.argv[1:])
    return status


if __name__ == "__main__":
    raise SystemExit(main())
