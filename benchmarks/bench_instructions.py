"""What one profiled request costs, in instructions counted under valgrind:
a commit against this checkout, with none of a shared machine's noise.

``bench_session.py``'s request (10 switches out and in, at the bottom of
its greenlet and as in a server), profiled by one ``greenprof.profile()``
scope and dropped by ``min_duration``, kept and never read, or kept and
read. Each is run in a process of its own under ``valgrind
--tool=cachegrind`` twice, with ``--requests`` more requests the second
time; the difference, less the same for the unprofiled request, is what
greenprof adds to a request, in instructions. The counts repeat to within
half a percent from run to run (hash seeds fixed), where timings on this
shared machine move by 10 to 25%: a change of a few percent shows. Instructions
are not time (a cache miss costs no instruction), so a change that the
count favours is then timed with ``bench_session.py --alternate REV``.

Printed: instructions added to a request by commit ``REV``'s greenprof and
by this checkout's, and this / REV.

``--misses``: this checkout alone, with valgrind's cache simulation on:
instructions and first-level cache misses (instruction and data) per
request, and misses per 1,000 instructions, the unprofiled request's
against what each session adds. It shows why a session's share of the
time is larger than its share of the instructions.

``--web``: this checkout alone, on ``bench_web_cost.py``'s
``gevent.pywsgi`` workload instead (its server under valgrind, with the
cache simulated; a client in a process of its own sends the requests on
one keep-alive connection): instructions and first-level misses each layer
adds to a web request, and the unprofiled count over the layer's, the
instruction-count twin of ``bench_web_cost.py``'s throughput ratio. Its
layers, among them its two references (``peers.StrippedRecorder``, the
least a pure-Python recorder can do for the same stacks, kept and read or
dropped unread), and the parts of a session: one started and stopped with
none of the request's switches inside it (dropped, and kept and read), and
a kept session never read.

Run: ``python benchmarks/bench_instructions.py REV [--requests N]``,
``python benchmarks/bench_instructions.py --misses [--requests N]`` or
``python benchmarks/bench_instructions.py --web [--requests N]`` (needs
valgrind, and git for ``REV``; about 4, 10 and 15 minutes).
"""

from __future__ import annotations

import argparse
import compileall
import concurrent.futures
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import greenlet

from bench_session import (
    NEVER,
    SHAPES,
    SRC,
    _nothing,
    _scoped,
    baseline_source,
    handler,
    handler_depth,
    per_request,
)

#: What is counted: the unprofiled request, then each way of profiling it.
WAYS = ("unprofiled", "dropped", "kept, unread", "kept, read")
#: Requests run before counting starts, in both runs of a pair.
WARM_UP = 200
Executor = concurrent.futures.ThreadPoolExecutor


def child(way: str, shape: str, requests: int) -> None:
    """Run ``requests`` requests of ``way`` (after a warm-up), in this
    process, under valgrind."""
    import greenprof

    if shape == "web":
        web_child(way, requests)
        return
    depth = handler_depth(shape)
    if way == "unprofiled":

        def body() -> None:
            handler(depth)

    else:
        options = {"min_duration": NEVER} if way == "dropped" else {}
        body = _scoped(greenprof, depth, way == "kept, read", options)
    # greenprof's tracer stays installed throughout, as in bench_session.py.
    idle = greenprof.Profiler()
    never_runs = greenlet.greenlet(_nothing)
    idle.start(never_runs)
    per_request(body, WARM_UP, shape)
    if requests:
        per_request(body, requests, shape)
    idle.stop()


#: The counters read from valgrind's summary: instructions, and with the
#: cache simulated, first-level instruction and data cache misses.
COUNTERS = {"instructions": r"I\s+refs", "I1 misses": r"I1\s+misses", "D1 misses": r"D1\s+misses"}


def count(src: Path, way: str, shape: str, requests: int, cache: bool = False) -> dict[str, int]:
    """What valgrind counted for a whole child process: its instructions,
    and with ``cache`` its first-level cache misses too."""
    result = subprocess.run(
        [
            "valgrind",
            "--tool=cachegrind",
            f"--cache-sim={'yes' if cache else 'no'}",
            "--cachegrind-out-file=/dev/null",
            sys.executable,
            __file__,
            "--child",
            way,
            shape,
            str(requests),
        ],
        capture_output=True,
        text=True,
        check=False,
        env={
            **os.environ,
            "PYTHONPATH": os.pathsep.join([str(src), str(Path(__file__).parent)]),
            "PYTHONHASHSEED": "0",  # dicts laid out alike in every run
        },
    )
    counted: dict[str, int] = {}
    for name, pattern in COUNTERS.items():
        found = re.search(pattern + r":\s+([\d,]+)", result.stderr)
        if found is not None:
            counted[name] = int(found.group(1).replace(",", ""))
    wanted = COUNTERS if cache else ("instructions",)
    if result.returncode or any(name not in counted for name in wanted):
        raise RuntimeError(f"{way}, {shape}, under valgrind, failed:\n{result.stderr}")
    return counted


def compile_all(*folders: Path) -> None:
    """Byte-compile every module first: else the two runs of a pair race
    to compile and write them, and the one that does counts it."""
    for folder in folders:
        compileall.compile_dir(str(folder), quiet=1)


def per_request_counts(
    src: Path, way: str, shape: str, requests: int, pool: Executor, cache: bool = False
) -> dict[str, float]:
    """What a request of ``way`` costs, per counter (both runs in parallel)."""
    short = pool.submit(count, src, way, shape, 0, cache)
    long = pool.submit(count, src, way, shape, requests, cache)
    more, less = long.result(), short.result()
    return {name: (more[name] - less[name]) / requests for name in more}


def per_request_count(src: Path, way: str, shape: str, requests: int, pool: Executor) -> float:
    """Instructions a request of ``way`` costs (both runs in parallel)."""
    return per_request_counts(src, way, shape, requests, pool)["instructions"]


def misses(requests: int) -> None:
    """This checkout's request: instructions and first-level cache misses
    added by each way of profiling it, and misses per 1,000 instructions,
    the request's own against what greenprof adds."""
    compile_all(SRC, Path(__file__).parent)
    print(
        f"Python {sys.version.split()[0]}; a request's instructions and first-level "
        f"cache misses, simulated by valgrind over {requests} requests"
    )
    print(
        f"{'request, session':<26} {'instructions':>13} {'I1 misses':>10} {'D1 misses':>10}"
        f" {'I1 / 1000':>10} {'D1 / 1000':>10}"
    )
    with Executor(max_workers=2) as pool:
        for shape in SHAPES:
            counted = {
                way: per_request_counts(SRC, way, shape, requests, pool, cache=True) for way in WAYS
            }
            base = counted["unprofiled"]
            for way in WAYS:
                row = dict(counted[way])
                if way != "unprofiled":  # what greenprof adds
                    row = {name: row[name] - base[name] for name in row}
                per_1000 = {
                    name: 1000 * row[name] / max(row["instructions"], 1)
                    for name in ("I1 misses", "D1 misses")
                }
                print(
                    f"{shape + ', ' + way:<26} {row['instructions']:>13,.0f}"
                    f" {row['I1 misses']:>10,.0f} {row['D1 misses']:>10,.0f}"
                    f" {per_1000['I1 misses']:>10.1f} {per_1000['D1 misses']:>10.1f}"
                )
    print("(the unprofiled request, then what each session adds to it)")


#: The web workload's layers counted by ``--web``: ``bench_web_cost.py``'s
#: (its two references, the stripped recorder's rows, last), with the parts
#: of a session before those.
WEB_WAYS = (
    "unprofiled",
    "tracer, no session",
    "session, dropped",
    "session, kept",
    "session, kept, unread",
    "session, dropped, no switch",
    "session, kept, no switch",
    "stripped recorder, dropped",
    "stripped recorder, kept, read",
)


def web_layers() -> list[Any]:
    """``WEB_WAYS``' peers."""
    from bench_web_cost import NEVER, layers
    from peers import Greenprof, Outcome, Session

    class Unread(Greenprof):
        """Kept and never read: ``stop()`` alone."""

        def end(self, session: Session) -> Outcome:
            session.data.stop()
            return Outcome()

    class NoSwitch(Greenprof):
        """Started and stopped (and read) before the request's work, none
        of whose switches are then inside it."""

        def begin(self, target: Any = None, keep: bool = False) -> Session:
            Greenprof.end(self, Greenprof.begin(self, target, keep))
            return Session(greenlet.getcurrent())

        def end(self, session: Session) -> Outcome:
            return Outcome()

    more = [
        Unread("greenlet", name="session, kept, unread"),
        NoSwitch("greenlet", name="session, dropped, no switch", min_duration=NEVER),
        NoSwitch("greenlet", name="session, kept, no switch"),
    ]
    return [peer for peer in [*layers(), *more] if peer.name in WEB_WAYS]


#: The client: ``--requests`` requests on one keep-alive connection.
WEB_CLIENT = """
import http.client, sys
connection = http.client.HTTPConnection(sys.argv[1], int(sys.argv[2]))
for number in range(int(sys.argv[3])):
    connection.request("GET", f"/{number}")
    response = connection.getresponse()
    response.read()
    assert response.status == 200, response.status
"""


def web_child(way: str, requests: int) -> None:
    """Serve ``requests`` web requests with ``way`` on (after a warm-up), in
    this process, under valgrind."""
    import gevent.subprocess

    import greenprof
    from bench_peers import WebService

    (peer,) = [p for p in web_layers() if p.name == way]
    service = WebService()
    host, port = service.server.address[:2]

    def load(count: int) -> None:
        # Waited for without polling: a wakeup every few milliseconds would
        # count as many instructions as the run took seconds.
        client = gevent.subprocess.Popen(
            [sys.executable, "-c", WEB_CLIENT, host, str(port), str(count)]
        )
        if client.wait():
            raise RuntimeError(f"{way}: the client failed")

    idle = None
    if way.startswith("session"):
        # As when requests overlap: another session keeps greenprof's
        # tracer installed between two requests.
        never_runs = greenlet.greenlet(_nothing)  # held: freed, its watch would go
        idle = greenprof.Profiler()
        idle.start(never_runs)
    service.reset(peer)
    peer.start_run(1)
    load(WEB_WARM_UP)
    if requests:
        load(requests)
    peer.stop_run()
    if idle is not None:
        idle.stop()
    if service.served != WEB_WARM_UP + requests:
        raise RuntimeError(f"{way}: served {service.served} requests, not {WEB_WARM_UP + requests}")
    service.server.stop()
    service.backend.stop()


#: Web requests served before counting starts, in both runs of a pair.
WEB_WARM_UP = 100


def web(requests: int) -> None:
    """``--web``: what each layer adds to a web request."""
    compile_all(SRC, Path(__file__).parent)
    print(
        f"Python {sys.version.split()[0]}; a web request's instructions and first-level "
        f"cache misses, simulated by valgrind over {requests} requests"
    )
    print(
        f"{'layer':<31} {'instructions':>13} {'I1 misses':>10} {'D1 misses':>10}"
        f" {'unprofiled / layer':>19}"
    )
    with Executor(max_workers=2) as pool:
        counted = {
            way: per_request_counts(SRC, way, "web", requests, pool, cache=True) for way in WEB_WAYS
        }
    base = counted["unprofiled"]
    for way in WEB_WAYS:
        row = dict(counted[way])
        ratio = base["instructions"] / row["instructions"]
        if way != "unprofiled":  # what it adds
            row = {name: row[name] - base[name] for name in row}
        print(
            f"{way:<31} {row['instructions']:>+13,.0f} {row['I1 misses']:>+10,.0f}"
            f" {row['D1 misses']:>+10,.0f} {ratio:>19.3f}"
        )
    print("(the unprofiled request, then what each layer adds to it)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rev", nargs="?", help="the commit to compare this checkout with")
    parser.add_argument(
        "--requests", type=int, default=None, help="requests counted (1000; --web: 300)"
    )
    parser.add_argument(
        "--misses",
        action="store_true",
        help="this checkout alone, with the cache misses valgrind simulates",
    )
    parser.add_argument(
        "--web",
        action="store_true",
        help="this checkout alone, on the web workload, with the cache misses",
    )
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.child:
        way, shape, requests = options.child
        child(way, shape, int(requests))
        return 0
    if options.rev is None and not (options.misses or options.web):
        parser.error("name the commit to compare with, e.g. HEAD~1")
    if options.misses and options.web:
        parser.error("--web counts its cache misses too: give one of --misses and --web")
    if options.rev is not None and (options.misses or options.web):
        parser.error("--misses and --web count this checkout alone: give no commit with them")
    if shutil.which("valgrind") is None:
        print("valgrind is not installed: it counts the instructions", file=sys.stderr)
        return 2
    requests = options.requests if options.requests is not None else 300 if options.web else 1000
    if options.misses:
        misses(requests)
        return 0
    if options.web:
        web(requests)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        old_src = baseline_source(options.rev, Path(tmp))
        if old_src is None:
            print(f"cannot read commit {options.rev} of this repository", file=sys.stderr)
            return 2
        compile_all(old_src, SRC, Path(__file__).parent)
        print(
            f"Python {sys.version.split()[0]}; instructions a request costs, counted under "
            f"valgrind over {requests} requests; {options.rev} and this checkout"
        )
        print(
            f"{'request, session':<26} {options.rev:>14} {'this':>14} {'this / ' + options.rev:>14}"
        )
        with Executor(max_workers=2) as pool:
            for shape in SHAPES:
                counted = {
                    (name, way): per_request_count(src, way, shape, requests, pool)
                    for name, src in (("old", old_src), ("new", SRC))
                    for way in WAYS
                }
                for way in WAYS:
                    old, new = counted["old", way], counted["new", way]
                    if way != "unprofiled":  # what greenprof adds
                        old -= counted["old", "unprofiled"]
                        new -= counted["new", "unprofiled"]
                    print(
                        f"{shape + ', ' + way:<26} {old:>14,.0f} {new:>14,.0f} {new / old:>14.3f}"
                    )
    print("(instructions a request costs unprofiled, and what each session adds to it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
