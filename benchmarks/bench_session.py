"""What one profiled request costs: greenprof as it was before sessions
shared one pipeline ("today"), against greenprof now ("new").

A "request" switches out and back 10 times, 28 frames deep: at the bottom
of its greenlet (the session started 26 frames under where it waits), and
as in a server, under 6 frames that stay between requests (a connection's
loop) and 6 new for each (``gevent.pywsgi``'s ``handle_one_request`` down
to the app), with 13 above the frame that starts the session; there a
``min_duration`` session's root, the last of those 6 new frames, has 13
under it. Today's greenprof is the source of commit ``BASELINE`` (taken with
``git archive`` from this repository), profiling each request with a
``Profiler()`` of its own, as its decorator and middleware did. The new one
is this checkout's, profiling each request with a session of one
``greenprof.profile()`` scope, as its decorator and middleware do. Each
round measures both, each in a process of its own, one after the other;
medians of the rounds are compared (this machine is shared: single rounds
move by several percent).

Each is measured with the session dropped (``min_duration`` longer than the
request: nothing is built) and kept, its snapshots read (built and
formatted). Printed: microseconds added to a request, and new / today.

Run: ``python benchmarks/bench_session.py [--quick] [--baseline REV]``.
Without git or the baseline commit, the new greenprof is compared with a
``Profiler()`` made per request in the new greenprof.

``--alternate REV`` compares commit ``REV`` with this checkout in one
process instead, both profiling each request with a ``profile()`` scope:
REV's ``greenprof`` is imported under another name, and the two take turns
in short blocks of requests (each with its own tracer installed), so a
busy machine slows both alike; printed: each one's median, and the median
of the ratios of the pairs with its quartiles. For a change to the switch
path or the session, where runs in separate processes differ by more than
the change.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import greenlet

#: The last commit before sessions shared a pipeline.
BASELINE = "b153dae"
DEPTH = 25
SWITCHES = 10
#: The server shape: frames kept between requests, and made for each, under
#: the frame that starts the session.
KEPT_FRAMES = 6
NEW_FRAMES = 6
SHAPES = ("bottom", "server")
NEVER = 3600.0
HERE = Path(__file__).resolve().parent
SRC = HERE.parent / "src"

_worker: greenlet.greenlet | None = None


def _partner() -> None:
    while True:
        _worker.switch()  # type: ignore[union-attr]


_PARTNER = greenlet.greenlet(_partner)


def handler_depth(shape: str) -> int:
    """``handler()``'s depth for a request as high, in ``shape``, as at the
    bottom (the server's frames and ``work()``'s between them stand in for
    as many of the handler's)."""
    return DEPTH if shape == "bottom" else DEPTH - KEPT_FRAMES - NEW_FRAMES - 1


def handler(depth: int) -> None:
    """A request: ``depth`` frames deep, then ``SWITCHES`` waits."""
    if depth:
        handler(depth - 1)
        return
    for _ in range(SWITCHES):
        _PARTNER.switch()


def under(frames: int, call: Callable[[], None]) -> None:
    """``call()`` from the last of ``frames`` (at least 1) frames of this."""
    if frames > 1:
        under(frames - 1, call)
        return
    call()


def per_request(body: Callable[[], None], requests: int, shape: str) -> float:
    """Microseconds per call of ``body``, run in a worker greenlet: at its
    bottom, or under a server's frames (``shape``)."""
    global _worker
    spent: list[float] = []

    def work() -> None:
        start = time.perf_counter()
        if shape == "server":
            for _ in range(requests):
                under(NEW_FRAMES, body)
        else:
            for _ in range(requests):
                body()
        spent.append((time.perf_counter() - start) / requests * 1e6)

    if shape == "server":
        _worker = greenlet.greenlet(lambda: under(KEPT_FRAMES, work))
    else:
        _worker = greenlet.greenlet(work)
    _worker.switch()
    return spent[0]


def measure(way: str, requests: int, shape: str) -> dict[str, float]:
    """In a child process: microseconds ``way`` adds to a request."""
    import greenprof

    depth = handler_depth(shape)

    def unprofiled() -> None:
        handler(depth)

    def profiler_each(read: bool, **options: float) -> Callable[[], None]:
        def body() -> None:
            profiler = greenprof.Profiler(**options)  # type: ignore[arg-type]
            profiler.start()
            handler(depth)
            profiler.stop()
            if read:
                profiler.snapshots  # noqa: B018 - built when read

        return body

    def scope(read: bool, **options: float) -> Callable[[], None]:
        return _scoped(greenprof, depth, read, options)

    make = profiler_each if way == "today" else scope
    bodies = {"dropped": make(False, min_duration=NEVER), "kept, read": make(True)}
    # Keep greenprof's tracer installed throughout, as in a service where
    # some request is always being profiled: each way pays for its session,
    # not for installing and removing the tracer.
    idle = greenprof.Profiler()
    never_runs = greenlet.greenlet(_nothing)  # held: a freed greenlet's watch goes
    idle.start(never_runs)
    try:
        per_request(unprofiled, requests, shape)  # warm up
        base = per_request(unprofiled, requests, shape)
        return {kind: per_request(body, requests, shape) - base for kind, body in bodies.items()}
    finally:
        idle.stop()


def alternate(rev: str, quick: bool) -> int:
    """Commit ``rev`` and this checkout in this one process, taking turns."""
    import greenprof

    with tempfile.TemporaryDirectory() as tmp:
        src = baseline_source(rev, Path(tmp))
        if src is None:
            print(f"cannot read commit {rev} of this repository", file=sys.stderr)
            return 2
        (src / "greenprof").rename(src / "greenprof_base")
        sys.path.insert(0, str(src))
        try:  # the files stay while it runs: a module may import another late
            base = importlib.import_module("greenprof_base")
            _take_turns(rev, {rev: base, "this checkout": greenprof}, quick)
        finally:
            sys.path.remove(str(src))
    return 0


def _take_turns(rev: str, ways: dict[str, Any], quick: bool) -> None:
    pairs, requests = (7, 200) if quick else (20, 300)
    print(
        f"Python {sys.version.split()[0]}; {rev} and this checkout in one process, taking "
        f"turns: {pairs} pairs of {requests} requests, each {SWITCHES} switches out and in"
    )
    print(f"{'request, session':<26} {rev:>12} {'this':>12} {'this / ' + rev:>14}  quartiles")
    for shape in SHAPES:
        depth = handler_depth(shape)

        def unprofiled(depth: int = depth) -> None:
            handler(depth)

        for kind, options, read in (
            ("dropped", {"min_duration": NEVER}, False),
            ("kept, read", {}, True),
        ):
            bodies = {name: _scoped(module, depth, read, options) for name, module in ways.items()}
            added: dict[str, list[float]] = {name: [] for name in ways}
            plain: list[float] = []
            profiled: dict[str, list[float]] = {name: [] for name in ways}
            for _ in range(pairs):
                for name, module in ways.items():
                    idle = module.Profiler()
                    never_runs = greenlet.greenlet(_nothing)
                    idle.start(never_runs)
                    try:
                        plain.append(per_request(unprofiled, requests, shape))
                        profiled[name].append(per_request(bodies[name], requests, shape))
                        added[name].append(profiled[name][-1] - plain[-1])
                    finally:
                        idle.stop()
            old, now = added[rev], added["this checkout"]
            ratios = [b / a for a, b in zip(old, now, strict=True) if a > 0]
            quartiles = statistics.quantiles(ratios, n=4)
            # The fastest blocks: what each costs when nothing else ran meanwhile.
            fastest = {name: min(profiled[name]) - min(plain) for name in ways}
            label = f"{shape}, {kind}"
            print(
                f"{label:<26} {statistics.median(old):>9.1f} us {statistics.median(now):>9.1f} us "
                f"{statistics.median(ratios):>14.2f}  {quartiles[0]:.2f}..{quartiles[2]:.2f}"
                f"  fastest: {fastest[rev]:.1f} / {fastest['this checkout']:.1f} us"
                f" = {fastest['this checkout'] / fastest[rev]:.2f}"
            )
    print(
        "(microseconds added to a request: medians, the ratios of the pairs, and the\n"
        " fastest blocks of each against the fastest unprofiled ones)"
    )


def _scoped(module: Any, depth: int, read: bool, options: dict[str, float]) -> Callable[[], None]:
    """A request profiled by one ``profile()`` scope of ``module``."""
    shared = module.profile(**options)

    def body() -> None:
        with shared as profiler:
            handler(depth)
        if read:
            profiler.snapshots  # noqa: B018 - built when read

    return body


def baseline_source(rev: str, into: Path) -> Path | None:
    """``src/`` of commit ``rev`` unpacked under ``into``, or None."""
    try:
        archive = subprocess.run(
            ["git", "-C", str(HERE.parent), "archive", "--format=tar", rev, "src"],
            capture_output=True,
            check=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    path = into / "archive.tar"
    path.write_bytes(archive)
    with tarfile.open(path) as tar:
        if hasattr(tarfile, "data_filter"):
            tar.extractall(into, filter="data")
        else:
            tar.extractall(into)
    return into / "src"


def run_child(src: Path, way: str, requests: int, shape: str) -> dict[str, float]:
    result = subprocess.run(
        [sys.executable, __file__, "--measure", way, f"--requests={requests}", f"--shape={shape}"],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": str(src)},
    )
    return json.loads(result.stdout)  # type: ignore[no-any-return]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run (tox -e bench)")
    parser.add_argument("--check", action="store_true", help="exit 1 unless new costs less")
    parser.add_argument("--baseline", default=BASELINE, help="today's commit")
    parser.add_argument("--measure", choices=("today", "new"), help=argparse.SUPPRESS)
    parser.add_argument("--requests", type=int, default=3000, help=argparse.SUPPRESS)
    parser.add_argument("--shape", choices=SHAPES, default="bottom", help=argparse.SUPPRESS)
    parser.add_argument(
        "--alternate", metavar="REV", help="compare commit REV with this checkout in one process"
    )
    options = parser.parse_args()
    if options.alternate:
        return alternate(options.alternate, options.quick)
    if options.measure:
        print(json.dumps(measure(options.measure, options.requests, options.shape)))
        return 0
    requests, rounds = (1000, 5) if options.quick else (3000, 11)
    with tempfile.TemporaryDirectory() as tmp:
        old_src = baseline_source(options.baseline, Path(tmp))
        today_label = f"today ({options.baseline})" if old_src else "Profiler() each"
        added: dict[tuple[str, str], list[dict[str, float]]] = {
            (way, shape): [] for way in ("today", "new") for shape in SHAPES
        }
        for _ in range(rounds):
            for shape in SHAPES:
                for way in ("today", "new"):
                    src = SRC if way == "new" else old_src or SRC
                    added[way, shape].append(run_child(src, way, requests, shape))
    print(
        f"Python {sys.version.split()[0]}; a request 28 frames deep, {SWITCHES} switches "
        f"out and in; medians of {rounds} interleaved rounds of {requests} requests"
    )
    met = True
    for shape in SHAPES:
        where = (
            "at the bottom of its greenlet"
            if shape == "bottom"
            else f"under {KEPT_FRAMES} + {NEW_FRAMES} server frames (kept + new a request)"
        )
        print(f"the request {where}:")
        print(f"{'session':<12} {today_label:>18} {'new':>18} {'new / today':>12}")
        for kind in ("dropped", "kept, read"):
            old, now = ([round_[kind] for round_ in added[way, shape]] for way in ("today", "new"))
            ratio = statistics.median(now) / statistics.median(old)
            print(
                f"{kind:<12} {statistics.median(old):>9.1f} us ±{_spread(old):>4.1f} "
                f"{statistics.median(now):>9.1f} us ±{_spread(now):>4.1f} {ratio:>12.2f}"
            )
            met = met and ratio < 1
    print("(microseconds added to a request: median ± half the interquartile range)")
    return 0 if met or not options.check else 1


def _spread(values: list[float]) -> float:
    quartiles = statistics.quantiles(values, n=4)
    return (quartiles[2] - quartiles[0]) / 2


def _nothing() -> None:
    return None


if __name__ == "__main__":
    sys.exit(main())
