"""Run every greenprof benchmark; ``--quick`` for a short run (``tox -e bench``).

``bench_peers.py`` runs last and ends with the table of greenprof against
the other profilers, every workload in one table.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).parent
BENCHMARKS = [
    "bench_switch.py",
    "bench_modes.py",
    "bench_session.py",
    "bench_gc.py",
    "bench_web_cost.py",
    "bench_continuous.py",
    "bench_run_memory.py",
    "bench_peers.py",
]


def main() -> int:
    failed = 0
    for name in BENCHMARKS:
        print(f"== {name}", flush=True)
        failed |= subprocess.call([sys.executable, str(HERE / name), *sys.argv[1:]])
    return failed


if __name__ == "__main__":
    sys.exit(main())
