"""The workload the exporter tests record: a red and a blue greenlet, each
spinning (on-CPU) and sleeping (off-CPU) in functions of its own colour."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from pathlib import Path

import gevent
import greenlet

import greenprof
from greenprof.sinks import JSONSink, Sink


def spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def spin_until(seconds: float, enough: Callable[[], bool]) -> None:
    """``spin(seconds)``, then on until ``enough()`` (asked every 5 ms), for
    at most 20 s: a loaded machine can keep the sampling thread off the CPU
    for all of a short loop."""
    spin(seconds)
    give_up = time.perf_counter() + 20
    while not enough() and time.perf_counter() < give_up:
        spin(0.005)


def samples_of(profiler: greenprof.Profiler, greenlet_id: int | None = None) -> int:
    """How many samples ``profiler`` took so far (of ``greenlet_id``)."""
    count = 0
    for snapshot in profiler.snapshots:  # no generator: no frame of its own on top
        if snapshot.event == "sample" and greenlet_id in (None, snapshot.greenlet_id):
            count += 1
    return count


def red_wait() -> None:
    gevent.sleep(0.004)


def red_work() -> None:
    for _ in range(3):
        spin(0.002)
        red_wait()


def blue_wait() -> None:
    gevent.sleep(0.006)


def blue_work(then: Callable[[], None] | None = None) -> None:
    for _ in range(2):
        spin(0.003)
        blue_wait()
    if then is not None:
        then()


def record_red_and_blue(
    *,
    sinks: Callable[[], Iterable[Sink]] = tuple,
    blue_then: Callable[[], None] | None = None,
    attempts: int = 10,
) -> tuple[greenprof.Profiler, greenlet.greenlet, greenlet.greenlet]:
    """Run both greenlets, named ``red`` and ``blue``, profiled in hybrid mode
    with a 1 ms dump period; the stopped profiler and the two greenlets.

    Each greenlet's on-CPU time is in ``spin`` only if the sampler ran while
    it spun. A starved machine can keep the sampling thread off the CPU for
    all 12 ms of spinning; then the run is done again (up to ``attempts``
    times, each with new ``sinks()``), so that the report has what the
    exporters must show."""
    for _ in range(attempts):
        red, blue = gevent.spawn(red_work), gevent.spawn(blue_work, blue_then)
        red.name, blue.name = "red", "blue"
        profiler = greenprof.Profiler(mode="hybrid", dump_period=0.001, sinks=sinks())
        profiler.start(red)
        profiler.start(blue)
        gevent.joinall([red, blue])
        profiler.stop()
        spun = {
            s.greenlet_id
            for s in profiler.snapshots
            if s.event == "sample" and any(f.function == "spin" for f in s.stack)
        }
        if spun == {id(red), id(blue)}:
            return profiler, red, blue
    msg = f"no sample in spin for both greenlets in {attempts} recordings: {spun}"
    raise AssertionError(msg)


def recorded_red_work(directory: Path) -> Path:
    """Profile ``red_work`` in a greenlet into ``directory/profile.jsonl``."""
    path = directory / "profile.jsonl"
    worker = gevent.spawn(red_work)
    with greenprof.profile(worker, sinks=[JSONSink(path)]):
        worker.join()
    return path


# -- a shop: two endpoints of known CPU and wait time --------------------------------


def checkout(environ: dict[str, object], start_response: object) -> list[bytes]:
    spin(0.004)
    gevent.sleep(0.006)
    environ["greenprof.tags"] = {"route": "/checkout"}
    start_response("201 Created", [("Content-Type", "text/plain")])  # type: ignore[operator]
    return [b"ok"]


def search(environ: dict[str, object], start_response: object) -> list[bytes]:
    spin(0.001)
    gevent.sleep(0.002)
    start_response("404 Not Found", [("Content-Type", "text/plain")])  # type: ignore[operator]
    return [b"none"]


def shop(environ: dict[str, object], start_response: object) -> list[bytes]:
    if environ["PATH_INFO"] == "/checkout":
        return checkout(environ, start_response)
    if environ["PATH_INFO"] == "/boom":
        raise RuntimeError("boom")
    return search(environ, start_response)


# -- a blocking handler among normal ones ----------------------------------------------


def blocking_or_not(environ: dict[str, object], start_response: object) -> list[bytes]:
    if environ["PATH_INFO"] == "/block":
        gevent.sleep(0.001)  # resumes here
        spin(0.25)  # 250 ms without a yield
        gevent.sleep(0.001)  # yields here
    else:
        spin(0.0005)
        gevent.sleep(0.001)
    start_response("200 OK", [("Content-Type", "text/plain")])  # type: ignore[operator]
    return [b"ok"]


def slow_shop(environ: dict[str, object], start_response: object) -> list[bytes]:
    """Two endpoints of known CPU and wait time, long enough that a few
    hundred microseconds of the server's own work are under 2% of them."""
    if environ["PATH_INFO"] == "/checkout":
        spin(0.02)
        gevent.sleep(0.03)
    else:
        spin(0.01)
        gevent.sleep(0.015)
    start_response("200 OK", [("Content-Type", "text/plain")])  # type: ignore[operator]
    return [b"ok"]
