"""What the HTML page tests draw besides red and blue: requests to a gevent
WSGI server, one tagged session each, and a report of many greenlets."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import gevent
import gevent.socket

import greenprof
from greenprof import Frame, Report, Snapshot
from greenprof.sinks import JSONSink

from .conftest import serve
from .workloads import spin

# -- two endpoints, each with functions of its own -----------------------------------


def price_cart() -> None:
    spin(0.006)


def reserve_stock() -> None:
    gevent.sleep(0.004)


def checkout_handler() -> None:
    price_cart()
    reserve_stock()


def query_index() -> None:
    spin(0.003)  # three samples of 1 ms: drawn however the sampler's clock falls


def fetch_results() -> None:
    gevent.sleep(0.002)


def search_handler() -> None:
    query_index()
    fetch_results()


HANDLERS: dict[str, Callable[[], None]] = {"/checkout": checkout_handler, "/search": search_handler}
#: The functions only one endpoint runs.
OWN_FUNCTIONS = {
    "/checkout": {"checkout_handler", "price_cart", "reserve_stock"},
    "/search": {"search_handler", "query_index", "fetch_results"},
}


def record_requests(path: Path, paths: Iterable[str]) -> Report:
    """Serve a GET of each of ``paths`` at once with gevent's WSGI server,
    each request profiled (hybrid mode, 1 ms) as a session of its own tagged
    with its ``path``, ``method`` and a ``request_id`` of its own, into a
    JSONSink file at ``path``; the report read back from it."""
    sink = JSONSink(path)
    counter = iter(range(1_000_000))

    def app(environ: dict[str, object], start_response: Callable[..., object]) -> list[bytes]:
        where = str(environ["PATH_INFO"])
        tags = {"path": where, "method": "GET", "request_id": str(next(counter))}
        with greenprof.profile(sinks=[sink], mode="hybrid", dump_period=0.001, tags=tags):
            HANDLERS[where]()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    assert all(reply.startswith(b"HTTP/1.1 200") for reply in serve(app, list(paths)))
    return Report.from_file(path)


# -- greenlets made up, each of one run ----------------------------------------------


def one_run_each(runs: Iterable[tuple[str, tuple[Frame, ...], int]]) -> Report:
    """A report of one greenlet per ``(name, stack, nanoseconds)``, ids from
    1 in that order, each of which ran once, that long, at that stack."""
    snapshots = []
    for gid, (name, stack, duration) in enumerate(runs, start=1):
        start = 10_000_000 * gid
        for sequence, (event, at) in enumerate(
            (("switch_in", start), ("switch_out", start + duration))
        ):
            snapshots.append(
                Snapshot(
                    greenlet_id=gid,
                    greenlet_name=name,
                    thread_id=1,
                    event=event,
                    sequence=sequence,
                    timestamp_ns=at,
                    stack=stack,
                )
            )
    return Report(snapshots)


def many_greenlets(count: int) -> Report:
    """``count`` greenlets (ids 1..count) that each ran ``id`` microseconds
    in ``work``: greenlet ``count`` is the heaviest."""
    stack = (Frame("/app/work.py", "work", 3),)
    return one_run_each((f"worker-{gid}", stack, 1000 * gid) for gid in range(1, count + 1))
