"""The memory ``greenprof run`` costs a server over a long run, and at its end.

A ``gevent.pywsgi`` server (handlers that format rows, then wait on
``gevent.sleep``) is loaded by ``loadgen.py`` from another process, 32
keep-alive connections, for a fixed time; then it gets SIGTERM. It runs
three ways, in interleaved rounds: unprofiled (``python server.py``), and
under ``greenprof run`` writing ``.jsonl`` (copied from the spool) and
``.html`` (built from a report streamed from the spool). For each, the
server's peak RSS while it served (``VmHWM`` just before SIGTERM) and over
its whole life (``ru_maxrss`` from ``wait4``, which takes in writing the
profile), and the seconds from SIGTERM to its end. Medians with half the
interquartile range. Target (issue 14): a 15 s run costs at most a few tens
of MB over unprofiled; ``--check`` exits 1 past 50 MB.

Run: ``python benchmarks/bench_run_memory.py [--quick] [--check]``
(about 5 minutes; ``--quick``: 3 s of load, 2 rounds, about 30 s).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent

SERVER = textwrap.dedent(
    """
    import json
    import gevent
    from gevent import pywsgi

    def rows(number):
        return json.dumps([{"id": number, "n": n, "name": f"row {n}"} for n in range(40)])

    def lookup(number):
        gevent.sleep(0.001)  # a backend's answer
        return number * 7

    def app(environ, start_response):
        number = int(environ["PATH_INFO"].rsplit("/", 1)[-1] or 0)
        body = rows(lookup(number)).encode()
        start_response("200 OK", [("Content-Length", str(len(body)))])
        return [body]

    server = pywsgi.WSGIServer(("127.0.0.1", 0), app, log=None)
    server.start()
    print(server.server_port, flush=True)
    server.serve_forever()
    """
)

#: What the budget allows over unprofiled: "a few tens of MB".
TARGET_MB = 50.0
CONCURRENCY = 32
FULL = (15.0, 5)  # seconds of load, rounds
QUICK = (3.0, 2)


def vm_hwm_mb(pid: int) -> float:
    """Peak resident memory of ``pid`` so far."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc: Linux only")


def one_round(command: list[str], folder: Path, seconds: float) -> dict[str, Any]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    server = subprocess.Popen(
        command, cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env
    )
    try:
        assert server.stdout is not None
        port = server.stdout.readline().strip()
        load = subprocess.run(
            [
                sys.executable,
                str(HERE / "loadgen.py"),
                "127.0.0.1",
                port,
                "--concurrency",
                str(CONCURRENCY),
                "--duration",
                str(seconds),
                "--warmup",
                "0.5",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        served = json.loads(load.stdout)
        serving_mb = vm_hwm_mb(server.pid)
        signalled = time.perf_counter()
        server.send_signal(signal.SIGTERM)
        _, _, usage = os.wait4(server.pid, 0)
        ended = time.perf_counter()
        server.returncode = -signal.SIGTERM  # reaped by wait4
        error = server.stderr.read() if server.stderr is not None else ""
    finally:
        if server.returncode is None:
            server.kill()
            server.wait()
    if served["errors"]:
        raise RuntimeError(f"{served['errors']} requests failed")
    return {
        "rps": served["rps"],
        "serving_mb": serving_mb,
        "peak_mb": usage.ru_maxrss / 1024,  # kB on Linux
        "exit_s": ended - signalled,
        "profile_mb": _size_mb(folder),
        "summary": error.strip().splitlines()[-1] if error.strip() else "",
    }


def _size_mb(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.glob("profile.*")) / 1e6


def spread(values: list[float]) -> float:
    """Half the interquartile range."""
    if len(values) < 2:
        return 0.0
    quartiles = statistics.quantiles(values, n=4, method="inclusive")
    return (quartiles[2] - quartiles[0]) / 2


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 s of load, 2 rounds")
    parser.add_argument("--check", action="store_true", help=f"exit 1 past {TARGET_MB:g} MB")
    options = parser.parse_args()
    seconds, rounds = QUICK if options.quick else FULL
    greenprof = [sys.executable, "-m", "greenprof", "run", "--no-progress"]
    ways = {
        "unprofiled": [sys.executable, "server.py"],
        "greenprof run, .jsonl": [*greenprof, "-o", "profile.jsonl", "server.py"],
        "greenprof run, .html": [*greenprof, "-o", "profile.html", "server.py"],
    }
    results: dict[str, list[dict[str, Any]]] = {way: [] for way in ways}
    with tempfile.TemporaryDirectory() as scratch:
        for number in range(rounds):
            order = list(ways)
            order = order[number % len(order) :] + order[: number % len(order)]
            for way in order:
                folder = Path(scratch) / f"{way.split(',')[-1].strip(' .')}-{number}"
                folder.mkdir()
                (folder / "server.py").write_text(SERVER)
                results[way].append(one_round(ways[way], folder, seconds))
    print(
        f"Python {sys.version.split()[0]}; gevent.pywsgi server, {CONCURRENCY} connections, "
        f"{seconds:g} s of load, {rounds} interleaved rounds; medians ± half the IQR"
    )
    print(
        f"{'':<24}{'req/s':>13}{'RSS serving':>17}{'RSS peak':>16}"
        f"{'SIGTERM to end':>17}{'profile':>11}"
    )
    for way, measured in results.items():
        row = f"{way:<24}"
        for key, unit, width in (
            ("rps", "", 13),
            ("serving_mb", " MB", 17),
            ("peak_mb", " MB", 16),
            ("exit_s", " s", 17),
            ("profile_mb", " MB", 11),
        ):
            values = [m[key] for m in measured]
            digits = 2 if key == "profile_mb" else 1
            text = f"{statistics.median(values):.{digits}f}{unit}"
            if key != "profile_mb":
                text += f" ±{spread(values):.1f}"
            row += f"{text:>{width}}"
        print(row)
    for way, measured in results.items():
        if measured[-1]["summary"]:
            print(f"  {way}: {measured[-1]['summary']}")
    base = statistics.median(m["peak_mb"] for m in results["unprofiled"])
    met_all = True
    print(f"target: a run costs at most {TARGET_MB:g} MB of peak RSS over unprofiled")
    for way in list(ways)[1:]:
        added = statistics.median(m["peak_mb"] for m in results[way]) - base
        met = added <= TARGET_MB
        met_all = met_all and met
        print(f"  {way:<24} {added:+7.1f} MB  {'met' if met else 'MISSED'}")
    return 0 if met_all or not options.check else 1


if __name__ == "__main__":
    sys.exit(main())
