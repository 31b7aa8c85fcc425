"""``greenprof demo``: thread sampling against greenlet snapshots, on a live service.

A small ``gevent.pywsgi`` service on 127.0.0.1 serves two kinds of requests
to many concurrent clients (greenlets of this process, over real sockets).
One ``/checkout`` request is profiled in ``thread`` mode (what periodic
samplers do), then another in ``greenlet`` mode, while the others keep
running. The demo counts the snapshots that came from other greenlets,
prints the greenlet-mode profile as a tree and writes it as an HTML flame
graph.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable
from typing import IO, Any

import gevent  # type: ignore[import-untyped,unused-ignore]
import gevent.pywsgi  # type: ignore[import-untyped,unused-ignore]
import gevent.socket  # type: ignore[import-untyped,unused-ignore]

from . import exporters
from ._profiler import Profiler
from ._scope import profile
from .snapshot import Snapshot

MODES = ("thread", "greenlet", "hybrid")

#: Functions only ``/search`` requests run: seeing one in a profile of a
#: ``/checkout`` request means the profile shows another request.
SEARCH_FUNCTIONS = frozenset({"parse_query", "query_index", "rank_results", "search"})


def burn(seconds: float) -> None:
    """CPU work that holds the loop (rendering, parsing, ...)."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def query_database() -> None:
    gevent.sleep(0.004)


def call_payment_api() -> None:
    gevent.sleep(0.008)


def render_invoice() -> None:
    burn(0.005)


def checkout() -> bytes:
    query_database()
    call_payment_api()
    render_invoice()
    return b"paid\n"


def parse_query() -> None:
    burn(0.001)


def query_index() -> None:
    gevent.sleep(0.003)


def rank_results() -> None:
    burn(0.002)


def search() -> bytes:
    parse_query()
    query_index()
    query_index()
    rank_results()
    return b"found\n"


class Service:
    """The demo's WSGI app; ``/checkout?profile=MODE`` profiles that request."""

    def __init__(self) -> None:
        #: mode -> (the profiled request's greenlet id, its profiler)
        self.profiled: dict[str, tuple[int, Profiler]] = {}

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., object]
    ) -> Iterable[bytes]:
        path, query = environ["PATH_INFO"], environ.get("QUERY_STRING", "")
        if path == "/checkout" and query.startswith("profile="):
            mode = query.partition("=")[2]
            with profile(mode=mode, dump_period=0.001) as profiler:
                body = checkout()
            self.profiled[mode] = (id(gevent.getcurrent()), profiler)
        elif path == "/checkout":
            body = checkout()
        else:
            body = search()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [body]


def fetch(address: tuple[str, int], path: str) -> bytes:
    """One HTTP/1.0 GET over a gevent socket; the response's body."""
    with gevent.socket.create_connection(address) as connection:
        connection.sendall(f"GET {path} HTTP/1.0\r\nHost: demo\r\n\r\n".encode())
        chunks = []
        while chunk := connection.recv(65536):
            chunks.append(chunk)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    if not head.startswith((b"HTTP/1.1 200", b"HTTP/1.0 200")):
        msg = f"the demo service answered {head[:80]!r} to {path}"
        raise RuntimeError(msg)
    return body


def _foreign(snapshots: list[Snapshot], me: int) -> tuple[int, int, int]:
    """``(snapshots counted, from another greenlet, showing /search code)``."""
    other = sum(s.greenlet_id != me for s in snapshots)
    search_code = sum(any(f.function in SEARCH_FUNCTIONS for f in s.stack) for s in snapshots)
    return len(snapshots), other, search_code


def run(output: str, *, clients: int = 50, color: bool = False, out: IO[str] | None = None) -> int:
    """Run the demo; write the HTML flame graph to ``output``. 0: as expected."""
    out = sys.stdout if out is None else out
    service = Service()
    server = gevent.pywsgi.WSGIServer(("127.0.0.1", 0), service, log=None)
    server.start()
    address = (server.server_host, server.server_port)
    running = True
    served = 0

    def client(number: int) -> None:
        nonlocal served
        while running:
            fetch(address, "/search" if number % 2 else "/checkout")
            served += 1

    workers = [gevent.spawn(client, number) for number in range(clients)]
    try:
        gevent.sleep(0.2)  # let the load build up
        for mode in MODES:
            fetch(address, f"/checkout?profile={mode}")
            gevent.sleep(0.05)
    finally:
        running = False
        gevent.joinall(workers, timeout=10)
        server.stop(timeout=1)
    for worker in workers:
        if worker.exception is not None:
            raise worker.exception

    rows = {
        mode: _foreign(service.profiled[mode][1].snapshots, service.profiled[mode][0])
        for mode in MODES
    }
    print(
        f"greenprof demo: a gevent.pywsgi service on {address[0]}:{address[1]} served "
        f"{served:,} requests to {clients} concurrent clients.\nOne /checkout request "
        "was profiled in each mode while the others ran.\n",
        file=out,
    )
    print(f"{'':<34}" + "".join(f"{mode + ' mode':>15}" for mode in MODES), file=out)
    lines = (
        ("snapshots of the request", [f"{total}" for total, _, _ in rows.values()]),
        (
            "  taken while another greenlet ran",
            [f"{other} ({other / max(total, 1):.0%})" for total, other, _ in rows.values()],
        ),
        ("  showing /search code", [f"{search}" for _, _, search in rows.values()]),
    )
    for label, cells in lines:
        print(f"{label:<34}" + "".join(f"{cell:>15}" for cell in cells), file=out)
    print(
        "\nThread mode samples the OS thread, whichever greenlet runs there; greenlet "
        "mode\nrecords the request at its own switches; hybrid mode adds samples taken "
        "only\nwhile the request runs, to see inside CPU bursts.\n",
        file=out,
    )
    _, profiler = service.profiled["hybrid"]
    report = profiler.report()
    print("The hybrid-mode profile of its request (on-CPU and off-CPU time):\n", file=out)
    print(exporters.text(report, color=color, min_share=0.01), file=out)
    page = exporters.html(report, title="greenprof demo: one /checkout request")
    with open(output, "w", encoding="utf-8") as file:
        file.write(page)
    print(
        f"Flame graph written to {os.path.abspath(output)}; open it in a browser.",
        file=out,
    )
    clean = all(rows[mode][1] == rows[mode][2] == 0 for mode in ("greenlet", "hybrid"))
    return 0 if clean and rows["thread"][0] else 1
