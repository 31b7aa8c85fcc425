"""greenprof against the profilers a gevent user would otherwise pick.

Every profiler in ``peers.py`` runs every workload in one process, the
profilers interleaved within each repeat, and the script prints medians and
ratios to the unprofiled run of this same process (absolute numbers on a
shared machine mean little). Work is deterministic: seeded plans, and CPU
bursts that do a fixed amount of Python work (formatting rows), not a fixed
time, so a profiler that slows Python code down shows it.

1. storm: 1,000 greenlets parked 30 frames deep; the main greenlet switches
   into each in turn (2,000 switches a round), one of them profiled. Cost
   per switch over the storm, and per switch of the profiled greenlet alone
   (a ping-pong with it), counting the profiler's ``stop()`` (greenprof
   formats its records then; SkyWalking did so on the switch).
2. deep: one greenlet recurses anew to a seeded depth of 50-200 before each
   switch. Cost per profiled switch, and the deepest stack each one kept
   (greenprof with ``max_depth=256`` here; its default keeps 128 frames).
3. web: a ``gevent.pywsgi`` app in this process; each request formats rows
   three times (0.1-0.3 ms each), asks an in-process backend over a local
   socket, and sleeps twice (1-3 ms). A client in another process holds 32
   keep-alive connections for a fixed time. Requests per second, p50/p99
   latency, server CPU per request; every request profiled. One more row,
   for information: greenlet mode keeping only requests over 100 ms
   (``min_duration``, as a production service would run it; none is).
4. accuracy: requests at once, each a few steps of ``decode`` (pure CPU,
   10-40 ms), ``fetch`` (a 5-20 ms gevent sleep) and ``notify`` (1-5 ms),
   timing themselves for the truth; every request profiled. Error: the sum
   over requests of |estimate - truth| over the sum of truth, for the CPU
   function (on-CPU time) and the waits (off-CPU time). cProfile keeps one
   profile for everything, so its figures are compared with all requests'.
   The bursts are longer than the 10 ms period on purpose: the point is
   where long bursts go. A sampler misses a burst shorter than its period
   now and then, and hybrid mode then gives that burst to the next wait.

Columns: throughput against unprofiled; CPU overhead (CPU time against
unprofiled, minus one); records (snapshots or samples) per request, or per
profiled switch; error against the truth (on-CPU / off-CPU); the fraction of
records taken while another greenlet ran.

Targets (issue 7):

- web, every request profiled in greenlet mode: throughput at least 95% of
  unprofiled, and no worse than SkyWalking's GreenletProfiler in
  throughput, p50, p99, CPU, records per request or requests with records;
- a snapshot at a 30-frame stack at least 30x cheaper than SkyWalking's
  GreenletProfiler per switch, counting greenprof's formatting at ``stop()``
  (the switch path alone is printed for information);
- CPU overhead on the request workloads (web, accuracy) at most a tenth of
  yappi's greenlet backend (the cheaper of its two clocks);
- no foreign records in greenlet and hybrid modes; time within 5% of the
  truth: off-CPU in greenlet mode, on- and off-CPU in hybrid mode (greenlet
  mode sees a CPU burst only from its ends: the burst goes to the wait that
  follows it, as README.rst says, and its on-CPU error is printed for
  information).

Run: ``python benchmarks/bench_peers.py [--quick] [--check]``; without
``--quick`` it also writes ``benchmarks/results/peers-py3XX.json`` and
``peers-py3XX.png`` for the Python running it (greenprof takes its snapshots
differently before 3.12: see README.rst).
"""

from __future__ import annotations

import argparse
import functools
import gc
import itertools
import json
import platform
import random
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import gevent
import gevent.pywsgi
import gevent.server
import gevent.socket
import greenlet

from bench_switch import DEPTH, wait_deep
from peers import DUMP_PERIOD, Greenprof, Outcome, Peer, Session, make_peers

HERE = Path(__file__).parent
RESULTS = HERE / "results"
WORKLOADS = ("storm", "deep", "web", "accuracy")
#: Result files are per Python version: ``peers-py312.json``.
_STEM = f"peers-py{sys.version_info[0]}{sys.version_info[1]}"
Metrics = dict[str, Any]
#: The web workload's extra, informational row.
SLOW_ONLY = "greenprof slow only"


# -- the work itself -----------------------------------------------------------


def _row(i: int) -> str:
    return f"{i:>6}|{i * 2654435761 % 1000003:>8}|{'x' * (i % 7)}"


def crunch(rows: int) -> int:
    """Fixed CPU work: about 0.55 us a row on CPython 3.11 here."""
    out = []
    for i in range(rows):
        out.append(_row(i))
    return len("".join(out))


def _median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _rotations(peers: list[Peer], repeats: int) -> list[list[Peer]]:
    """Each repeat runs every peer, starting one further along each time."""
    return [peers[r % len(peers) :] + peers[: r % len(peers)] for r in range(repeats)]


# -- 1. switch storm -----------------------------------------------------------


def _storm_once(peer: Peer, size: int, rounds: int, pingpongs: int) -> Metrics:
    main = greenlet.getcurrent()
    ring = [greenlet.greenlet(functools.partial(wait_deep, main, DEPTH)) for _ in range(size)]
    for glet in ring:
        glet.switch()
    target = ring[size // 2]
    peer.start_run()
    gc.disable()
    try:
        session = peer.begin(target)
        start = time.perf_counter_ns()
        for _ in range(rounds):
            for glet in ring:
                glet.switch()
        peer.end(session)
        storm = time.perf_counter_ns() - start
        path, profiled, _, outcome = _switch_into(peer, target, pingpongs)
    finally:
        gc.enable()
        peer.stop_run()
    return {
        "ns_per_switch": storm / (2 * size * rounds),
        "ns_per_profiled_switch": profiled / (2 * pingpongs),
        "ns_per_profiled_switch_path": path / (2 * pingpongs),
        "records_per_switch": outcome.records / (2 * pingpongs),
    }


def _switch_into(
    peer: Peer, target: greenlet.greenlet, times: int
) -> tuple[int, int, Session, Outcome]:
    """Profile ``target`` while switching into it ``times`` times: ns spent
    switching, ns including the profiler's ``end()``, the session and its outcome."""
    session = peer.begin(target)
    switch = target.switch
    start = time.perf_counter_ns()
    for _ in range(times):
        switch()
    path = time.perf_counter_ns() - start
    outcome = peer.end(session)
    return path, time.perf_counter_ns() - start, session, outcome


def storm(quick: bool) -> dict[str, Metrics]:
    size, rounds, pingpongs, repeats = (1000, 20, 3000, 3) if quick else (1000, 60, 10000, 7)
    peers = make_peers(max_snapshots=4 * max(pingpongs, rounds) + 100)
    runs: dict[str, list[Metrics]] = {p.name: [] for p in peers}
    for order in _rotations(peers, repeats):
        for peer in order:
            runs[peer.name].append(_storm_once(peer, size, rounds, pingpongs))
    result = _medians(runs)
    base = result["unprofiled"]
    for metrics in result.values():
        metrics["throughput"] = base["ns_per_switch"] / metrics["ns_per_switch"]
        metrics["cpu_overhead"] = metrics["ns_per_switch"] / base["ns_per_switch"] - 1
        metrics["added_ns_per_profiled_switch"] = (
            metrics["ns_per_profiled_switch"] - base["ns_per_profiled_switch"]
        )
        metrics["added_ns_per_profiled_switch_path"] = (
            metrics["ns_per_profiled_switch_path"] - base["ns_per_profiled_switch_path"]
        )
        metrics["records"] = metrics.pop("records_per_switch")
    result["_settings"] = {"greenlets": size, "depth": DEPTH, "rounds": rounds, "repeats": repeats}
    return result


# -- 2. deep stacks --------------------------------------------------------------


def _descend(main: greenlet.greenlet, depth: int) -> None:
    if depth > 1:
        _descend(main, depth - 1)
    else:
        main.switch()


def _deep_body(main: greenlet.greenlet, depths: list[int]) -> None:
    for depth in itertools.cycle(depths):
        _descend(main, depth)


def _deep_once(peer: Peer, depths: list[int], round_trips: int) -> Metrics:
    main = greenlet.getcurrent()
    worker = greenlet.greenlet(functools.partial(_deep_body, main, depths))
    worker.switch()
    peer.start_run()
    gc.disable()
    try:
        path, elapsed, session, outcome = _switch_into(peer, worker, round_trips)
    finally:
        gc.enable()
        peer.stop_run()
    return {
        "ns_per_switch": elapsed / (2 * round_trips),
        "ns_per_switch_path": path / (2 * round_trips),
        "records": outcome.records / (2 * round_trips),
        "deepest": session.deepest,
    }


def deep(quick: bool) -> dict[str, Metrics]:
    round_trips, repeats = (2000, 3) if quick else (6000, 7)
    rng = random.Random(11)
    depths = [rng.randint(50, 200) for _ in range(64)]
    peers = make_peers(max_snapshots=4 * round_trips + 100, max_depth=256)
    runs: dict[str, list[Metrics]] = {p.name: [] for p in peers}
    for order in _rotations(peers, repeats):
        for peer in order:
            runs[peer.name].append(_deep_once(peer, depths, round_trips))
    result = _medians(runs)
    base = result["unprofiled"]
    for metrics in result.values():
        metrics["throughput"] = base["ns_per_switch"] / metrics["ns_per_switch"]
        metrics["cpu_overhead"] = metrics["ns_per_switch"] / base["ns_per_switch"] - 1
        metrics["added_ns_per_switch"] = metrics["ns_per_switch"] - base["ns_per_switch"]
        metrics["added_ns_per_switch_path"] = (
            metrics["ns_per_switch_path"] - base["ns_per_switch_path"]
        )
    result["_settings"] = {"depths": "50-200", "round_trips": round_trips, "repeats": repeats}
    return result


# -- 3. web --------------------------------------------------------------------


def _backend(sock: gevent.socket.socket, address: object) -> None:
    """An in-process "database": one request line in, 2 KB out."""
    try:
        sock.recv(1024)
        sock.sendall(b"r" * 2048)
    finally:
        sock.close()


def query_backend(address: tuple[str, int]) -> int:
    with gevent.socket.create_connection(address) as sock:
        sock.sendall(b"SELECT 1\n")
        size = 0
        while chunk := sock.recv(65536):
            size += len(chunk)
    return size


class _Server(gevent.pywsgi.WSGIServer):
    def handle(self, sock: Any, address: Any) -> None:
        # pywsgi sends headers and body in two writes: without this, Nagle's
        # algorithm and the client's delayed ACK add 40 ms to every
        # keep-alive request after the first.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        super().handle(sock, address)


class WebService:
    """The gevent.pywsgi app, with whichever profiler is on around each request."""

    def __init__(self, seed: int = 7) -> None:
        rng = random.Random(seed)
        self.plans = [
            [(rng.randint(180, 540), rng.uniform(0.001, 0.003)) for _ in range(3)]
            for _ in range(1000)
        ]
        self.backend = gevent.server.StreamServer(("127.0.0.1", 0), _backend)
        self.backend.start()
        self.server = _Server(("127.0.0.1", 0), self.app, log=None)
        self.server.start()
        self.reset(None)

    def reset(self, peer: Peer | None) -> None:
        self.peer = peer
        self.served = 0
        self.profiled = 0
        self.records = 0
        self.foreign = 0
        self.covered = 0

    def handle(self, plan: list[tuple[int, float]]) -> bytes:
        size = 0
        for step, (rows, wait) in enumerate(plan):
            size += crunch(rows)
            if step == 0:
                size += query_backend(self.backend.address)
            else:
                gevent.sleep(wait)
        return b"%d\n" % size

    def app(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        number = int(environ["PATH_INFO"].rpartition("/")[2] or 0)
        peer = self.peer
        session = peer.begin() if peer is not None and peer.per_request else None
        try:
            body = self.handle(self.plans[number % len(self.plans)])
        finally:
            if peer is not None and session is not None:
                outcome = peer.end(session)
                self.profiled += 1
                self.records += outcome.records
                self.foreign += outcome.foreign
                self.covered += outcome.records > 0
        self.served += 1
        start_response(
            "200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))]
        )
        return [body]


def _web_once(
    service: WebService, peer: Peer, concurrency: int, duration: float, warmup: float
) -> Metrics:
    host, port = service.server.address[:2]
    service.reset(peer)
    peer.start_run(concurrency)
    try:
        cpu = time.process_time()
        client = subprocess.Popen(
            [
                sys.executable,
                str(HERE / "loadgen.py"),
                host,
                str(port),
                f"--concurrency={concurrency}",
                f"--duration={duration}",
                f"--warmup={warmup}",
            ],
            stdout=subprocess.PIPE,
        )
        while client.poll() is None:
            gevent.sleep(0.02)
        cpu = time.process_time() - cpu
    finally:
        peer.stop_run()
    assert client.stdout is not None
    load = json.loads(client.stdout.read())
    gevent.sleep(0.1)  # let the server's connections close
    records = service.records / service.profiled if service.profiled else None
    return {
        "rps": load["rps"],
        "p50_ms": load["p50_ms"],
        "p99_ms": load["p99_ms"],
        "errors": load["errors"],
        "cpu_per_request_ms": cpu / service.served * 1000 if service.served else float("nan"),
        "records": records,
        "covered": service.covered / service.profiled if service.profiled else None,
        "records_total": service.records,
        "foreign_total": service.foreign,
        "orphans": peer.orphans,
    }


#: Client connections of the web workload; and its (seconds, warm-up, repeats)
#: for a quick run and a full one.
WEB_CONCURRENCY = 32
WEB_QUICK = (1.5, 0.3, 3)
WEB_FULL = (4.0, 0.5, 7)


def web_runs(
    peers: list[Peer],
    quick: bool,
    service: WebService | None = None,
    rounds: int | None = None,
) -> dict[str, list[Metrics]]:
    """Every peer's runs of the web workload, interleaved, on one server
    (``service``, else a new one), ``rounds`` times (default: 3 quick, 7
    full); the server is stopped after."""
    duration, warmup, repeats = WEB_QUICK if quick else WEB_FULL
    repeats = rounds or repeats
    service = service if service is not None else WebService()
    runs: dict[str, list[Metrics]] = {p.name: [] for p in peers}
    try:
        _web_once(service, peers[0], WEB_CONCURRENCY, 1.0, 0.2)  # warm the process up
        for order in _rotations(peers, repeats):
            for peer in order:
                runs[peer.name].append(_web_once(service, peer, WEB_CONCURRENCY, duration, warmup))
    finally:
        service.server.stop()
        service.backend.stop()
    return runs


def web(quick: bool) -> dict[str, Metrics]:
    duration, warmup, repeats = WEB_QUICK if quick else WEB_FULL
    peers = make_peers()
    # For information: every request profiled, and kept only if it took
    # longer than 100 ms (none does here), as ProfilerMiddleware(min_duration=0.1)
    # would leave it running in production.
    slow_only = Greenprof("greenlet", min_duration=0.1, name=SLOW_ONLY)
    peers.insert([p.name for p in peers].index("greenprof greenlet") + 1, slow_only)
    runs = web_runs(peers, quick)
    result = _medians_with_foreign(runs)
    for name, metrics in runs.items():
        result[name]["errors"] = sum(m["errors"] for m in metrics)
    base = result["unprofiled"]
    for metrics in result.values():
        metrics["throughput"] = metrics["rps"] / base["rps"]
        metrics["cpu_overhead"] = metrics["cpu_per_request_ms"] / base["cpu_per_request_ms"] - 1
    result["_settings"] = {
        "concurrency": WEB_CONCURRENCY,
        "seconds": duration,
        "warmup": warmup,
        "repeats": repeats,
    }
    return result


# -- 4. accuracy ---------------------------------------------------------------

#: The functions timed, and whether their truth is on-CPU time.
FUNCTIONS = {"decode": True, "fetch": False, "notify": False}


def decode(rows: int, truth: dict[str, float]) -> None:
    start = time.perf_counter()
    crunch(rows)
    truth["decode"] += time.perf_counter() - start


def fetch(wait: float, truth: dict[str, float]) -> None:
    start = time.perf_counter()
    gevent.sleep(wait)
    truth["fetch"] += time.perf_counter() - start


def notify(wait: float, truth: dict[str, float]) -> None:
    start = time.perf_counter()
    gevent.sleep(wait)
    truth["notify"] += time.perf_counter() - start


def serve(plan: list[tuple[int, float, float]], truth: dict[str, float]) -> None:
    for rows, fetch_wait, notify_wait in plan:
        decode(rows, truth)
        fetch(fetch_wait, truth)
        notify(notify_wait, truth)


def _accuracy_once(peer: Peer, plans: list[list[tuple[int, float, float]]]) -> Metrics:
    truths = [dict.fromkeys(FUNCTIONS, 0.0) for _ in plans]
    sessions: list[Any] = [None] * len(plans)
    outcomes: list[Any] = []

    def request(index: int) -> None:
        session = peer.begin(keep=True)
        try:
            serve(plans[index], truths[index])
        finally:
            outcomes.append(peer.end(session))
            sessions[index] = session

    peer.start_run(len(plans))
    try:
        cpu, wall = time.process_time(), time.perf_counter()
        gevent.joinall([gevent.spawn(request, i) for i in range(len(plans))], raise_error=True)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    finally:
        peer.stop_run()
    metrics: Metrics = {
        "cpu_s": cpu,
        "wall_s": wall,
        "records": sum(o.records for o in outcomes) / len(outcomes),
        "covered": sum(o.records > 0 for o in outcomes) / len(outcomes),
        "records_total": sum(o.records for o in outcomes),
        "foreign_total": sum(o.foreign for o in outcomes),
    }
    if not peer.profiles:
        return metrics
    for kind, on_cpu in (("on", True), ("off", False)):
        error = truth = 0.0
        for function in (f for f, cpu_truth in FUNCTIONS.items() if cpu_truth == on_cpu):
            if peer.separates_greenlets:
                for session, own in zip(sessions, truths, strict=True):
                    error += abs(peer.estimate(session, function, on_cpu) - own[function])
                    truth += own[function]
            else:  # one profile for the whole process: compare with all requests
                everyone = sum(own[function] for own in truths)
                error += abs(peer.estimate(sessions[0], function, on_cpu) - everyone)
                truth += everyone
        metrics[f"error_{kind}"] = error / truth if truth else None
    return metrics


def accuracy(quick: bool) -> dict[str, Metrics]:
    requests, steps, repeats = (8, 2, 3) if quick else (12, 4, 5)
    rng = random.Random(3)
    plans = [
        [
            (rng.randint(18_000, 72_000), rng.uniform(0.005, 0.020), rng.uniform(0.001, 0.005))
            for _ in range(steps)
        ]
        for _ in range(requests)
    ]
    peers = make_peers()
    runs: dict[str, list[Metrics]] = {p.name: [] for p in peers}
    for order in _rotations(peers, repeats):
        for peer in order:
            runs[peer.name].append(_accuracy_once(peer, plans))
    result = _medians_with_foreign(runs)
    base = result["unprofiled"]
    for metrics in result.values():
        metrics["throughput"] = base["wall_s"] / metrics["wall_s"]
        metrics["cpu_overhead"] = metrics["cpu_s"] / base["cpu_s"] - 1
    result["_settings"] = {"requests": requests, "steps": steps, "repeats": repeats}
    return result


def _medians(runs: dict[str, list[Metrics]]) -> dict[str, Metrics]:
    """Per peer, the median of each numeric metric over its runs."""
    result: dict[str, Metrics] = {}
    for name, metrics in runs.items():
        merged: Metrics = {}
        for key in metrics[0]:
            values = [m[key] for m in metrics if isinstance(m.get(key), int | float)]
            merged[key] = _median(values) if values else None
        result[name] = merged
    return result


def _medians_with_foreign(runs: dict[str, list[Metrics]]) -> dict[str, Metrics]:
    """Medians per profiler, and the foreign fraction over all its runs' records."""
    result = _medians(runs)
    for name, metrics in runs.items():
        records = sum(m["records_total"] for m in metrics)
        foreign = sum(m["foreign_total"] for m in metrics)
        result[name]["foreign"] = foreign / records if records else None
    return result


# -- output -----------------------------------------------------------------------


def _ratio(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _count(value: float | None) -> str:
    return "-" if not value else f"{value:.1f}" if value < 1000 else f"{value:,.0f}"


def _added(total: float, path: float) -> str:
    """Added ns per switch; the switch path's share when stop() costs more."""
    if total - path > 0.1 * abs(total):
        return f"{total:+,.0f} ns/switch ({path:+,.0f} on the switch itself)"
    return f"{total:+,.0f} ns/switch"


def _notes(workload: str, name: str, metrics: Metrics) -> str:
    if workload == "storm":
        if name == "unprofiled":
            return (
                f"{metrics['ns_per_switch']:,.0f} ns/switch; profiled greenlet alone "
                f"{metrics['ns_per_profiled_switch']:,.0f} ns/switch"
            )
        return "profiled greenlet " + _added(
            metrics["added_ns_per_profiled_switch"], metrics["added_ns_per_profiled_switch_path"]
        )
    if workload == "deep":
        if name == "unprofiled":
            return f"{metrics['ns_per_switch']:,.0f} ns/switch"
        notes = _added(metrics["added_ns_per_switch"], metrics["added_ns_per_switch_path"])
        if metrics.get("deepest") and metrics["records"] >= 0.5:
            notes += f"; deepest stack kept {metrics['deepest']:.0f}"
        return notes
    notes = (
        f"{metrics['rps']:,.0f} rps, p50 {metrics['p50_ms']:.1f} ms, p99 {metrics['p99_ms']:.1f} ms"
        if workload == "web"
        else f"{metrics['cpu_s']:.2f} s CPU"
    )
    if metrics.get("covered") is not None and metrics.get("records"):
        notes += f"; {metrics['covered']:.0%} of requests with records"
    if name == SLOW_ONLY:
        notes += "; kept only if over 100 ms (none is)"
    if metrics.get("orphans"):
        notes += f"; {metrics['orphans']:,.0f} records after their request ended"
    return notes


def print_table(results: dict[str, dict[str, Metrics]]) -> None:
    header = (
        f"{'workload':<9} {'profiler':<20} {'throughput':>10} {'CPU overhead':>12} "
        f"{'records':>9} {'error on/off':>15} {'foreign':>8}  notes"
    )
    print(header)
    print("-" * len(header))
    for workload, table in results.items():
        for name, metrics in table.items():
            if name.startswith("_"):
                continue
            error = "-"
            if metrics.get("error_on") is not None:
                error = f"{_percent(metrics['error_on'])}/{_percent(metrics['error_off'])}"
            print(
                f"{workload:<9} {name:<20} {_ratio(metrics.get('throughput')):>10} "
                f"{_percent(metrics.get('cpu_overhead')):>12} {_count(metrics.get('records')):>9} "
                f"{error:>15} {_percent(metrics.get('foreign')):>8}  "
                f"{_notes(workload, name, metrics)}"
            )
        print()


Target = tuple[str, float, str, bool]


def _targets(results: dict[str, dict[str, Metrics]]) -> list[Target]:
    """(what, measured, wanted, met); ``wanted`` "info" is not a target."""
    rows: list[Target] = []
    web_ = results.get("web")
    if web_:
        ours, sky = web_["greenprof greenlet"], web_["SkyWalking greenlet"]
        value = ours["throughput"]
        rows.append(("web throughput, greenlet mode / unprofiled", value, ">= 0.95", value >= 0.95))
        higher_is_better = {"rps": True, "p50_ms": False, "p99_ms": False}
        higher_is_better |= {"cpu_per_request_ms": False, "records": True, "covered": True}
        for key, higher in higher_is_better.items():
            mine, theirs = ours[key] or 0.0, sky[key] or 0.0
            ratio = mine / theirs if theirs else float("inf")
            met = mine >= theirs if higher else mine <= theirs
            label = f"web {key.removesuffix('_ms')}, greenlet mode / SkyWalking greenlet"
            rows.append((label, ratio, ">= 1" if higher else "<= 1", met))
    storm_ = results.get("storm")
    if storm_:
        ours, sky = storm_["greenprof greenlet"], storm_["SkyWalking greenlet"]
        for suffix, label, wanted in (
            ("", "snapshot at 30 frames: SkyWalking greenlet / greenprof", ">= 30"),
            ("_path", "  (the switch alone, greenprof formats later)", "info"),
        ):
            mine = ours["added_ns_per_profiled_switch" + suffix]
            ratio = (
                sky["added_ns_per_profiled_switch" + suffix] / mine if mine > 0 else float("inf")
            )
            rows.append((label, ratio, wanted, ratio >= 30 or wanted == "info"))
    for workload in ("web", "accuracy"):
        table = results.get(workload)
        if not table:
            continue
        yappi = min(table["yappi wall"]["cpu_overhead"], table["yappi cpu"]["cpu_overhead"])
        value = table["greenprof greenlet"]["cpu_overhead"] / yappi
        rows.append(
            (f"{workload} CPU overhead, greenlet mode / yappi", value, "<= 0.1", value <= 0.1)
        )
        for mode in ("greenlet", "hybrid"):
            value = table[f"greenprof {mode}"]["foreign"] or 0.0
            rows.append((f"{workload} foreign records, {mode} mode", value, "0", value == 0))
    accuracy_ = results.get("accuracy")
    if accuracy_:
        for mode, kind in (("greenlet", "off"), ("hybrid", "on"), ("hybrid", "off")):
            value = accuracy_[f"greenprof {mode}"][f"error_{kind}"]
            rows.append(
                (f"accuracy {kind}-CPU error, {mode} mode", value, "<= 0.05", value <= 0.05)
            )
        value = accuracy_["greenprof greenlet"]["error_on"]
        rows.append(("  (on-CPU error, greenlet mode: bursts seen from their ends)", value, "info",
                     True))  # fmt: skip
        for name in ("greenprof thread", "SkyWalking greenlet", "SkyWalking thread"):
            value = max(accuracy_[name]["error_on"], accuracy_[name]["error_off"])
            rows.append((f"  (worse of on/off-CPU error, {name})", value, "info", True))
    return rows


def print_targets(rows: list[Target]) -> bool:
    ok = True
    for label, value, target, met in rows:
        ok &= met
        verdict = "" if target == "info" else ("met" if met else "MISSED")
        print(f"{label:<62} {value:>8.3f}  target {target:<8} {verdict}")
    return ok


def write_results(results: dict[str, dict[str, Metrics]], targets: list[Target]) -> None:
    RESULTS.mkdir(exist_ok=True)
    document = {
        "python": sys.version.split()[0],
        "greenlet": greenlet.__version__,
        "gevent": gevent.__version__,
        "machine": f"{platform.machine()}, {platform.system()}",
        "command": "python benchmarks/bench_peers.py",
        "dump_period_s": DUMP_PERIOD,
        "workloads": results,
        "targets": [
            {"target": label, "value": value, "wanted": wanted, "met": met}
            for label, value, wanted, met in targets
        ],
    }
    (RESULTS / f"{_STEM}.json").write_text(json.dumps(document, indent=2) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no chart (it is in tox -e bench)")
        return
    _chart(plt, results)
    print(f"wrote {RESULTS / (_STEM + '.json')} and {RESULTS / (_STEM + '.png')}")


def _chart(plt: Any, results: dict[str, dict[str, Metrics]]) -> None:
    names = [p.name for p in make_peers() if p.name != "unprofiled" and p.name in results["web"]]
    y = list(range(len(names)))[::-1]
    figure, axes = plt.subplots(2, 2, figsize=(14, 9.5))
    figure.suptitle(
        f"greenprof and its peers: CPython {sys.version.split()[0]}, "
        "python benchmarks/bench_peers.py (greenprof in green)",
        fontsize=13,
    )

    def panel(
        ax: Any,
        series: list[tuple[str, list[float | None]]],
        title: str,
        text: Callable[[float], str],
        clip: float | None = None,
    ) -> None:
        height = 0.8 / len(series)
        for index, (label, values) in enumerate(series):
            offset = (len(series) - 1) / 2 * height - index * height
            colours = [
                ("tab:green" if n.startswith("greenprof") else "tab:gray")
                if len(series) == 1
                else f"C{index}"
                for n in names
            ]
            shown = [min(v, clip) if clip and v is not None else (v or 0.0) for v in values]
            ax.barh([p + offset for p in y], shown, height=height, color=colours, label=label)
            for position, value, bar in zip(y, values, shown, strict=True):
                if value is not None:
                    ax.text(bar, position + offset, " " + text(value), va="center", fontsize=7)
        ax.set_yticks(y, names)
        ax.set_title(title, fontsize=11)
        ax.grid(axis="x", linewidth=0.3)
        if len(series) > 1:
            ax.legend(fontsize=8, loc="best")

    storm_ = results["storm"]
    panel(
        axes[0][0],
        [("", [max(storm_[n]["added_ns_per_profiled_switch"], 1.0) for n in names])],
        "storm: ns added to each switch of the profiled greenlet (log scale)",
        lambda v: f"{v:,.0f}",
    )
    axes[0][0].set_xscale("log")
    web_ = results["web"]
    panel(
        axes[0][1],
        [("", [web_[n]["throughput"] for n in names])],
        "web: requests/s against unprofiled, every request profiled",
        lambda v: f"{v:.2f}",
    )
    axes[0][1].set_xlim(0, 1.12)
    axes[0][1].axvline(1.0, color="black", linewidth=0.8)
    axes[0][1].axvline(0.95, color="tab:red", linewidth=0.8, linestyle="--")
    accuracy_ = results["accuracy"]
    panel(
        axes[1][0],
        [
            ("web (server CPU per request)", [web_[n]["cpu_overhead"] for n in names]),
            ("accuracy workload (process CPU)", [accuracy_[n]["cpu_overhead"] for n in names]),
        ],
        "CPU overhead against unprofiled",
        lambda v: f"{v:.0%}",
    )
    panel(
        axes[1][1],
        [
            ("on-CPU error", [accuracy_[n].get("error_on") for n in names]),
            ("off-CPU error", [accuracy_[n].get("error_off") for n in names]),
            ("foreign records", [accuracy_[n].get("foreign") for n in names]),
        ],
        "accuracy: error vs truth; foreign records (bars stop at 150%)",
        lambda v: f"{v:.0%}",
        clip=1.5,
    )
    figure.tight_layout()
    figure.savefig(RESULTS / f"{_STEM}.png", dpi=80)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run (tox -e bench)")
    parser.add_argument("--check", action="store_true", help="exit 1 if a target is missed")
    parser.add_argument(
        "--workloads",
        default=",".join(WORKLOADS),
        help=f"comma-separated subset of {', '.join(WORKLOADS)}",
    )
    options = parser.parse_args()
    chosen = [w for w in options.workloads.split(",") if w]
    unknown = set(chosen) - set(WORKLOADS)
    if unknown:
        parser.error(f"unknown workload(s): {', '.join(sorted(unknown))}")
    runners = {"storm": storm, "deep": deep, "web": web, "accuracy": accuracy}
    print(
        f"Python {sys.version.split()[0]}, greenlet {greenlet.__version__}, gevent "
        f"{gevent.__version__}; samplers every {DUMP_PERIOD * 1000:.0f} ms "
        f"(pyinstrument 1 ms); medians of interleaved runs\n",
        flush=True,
    )
    results: dict[str, dict[str, Metrics]] = {}
    for workload in WORKLOADS:
        if workload in chosen:
            started = time.perf_counter()
            results[workload] = runners[workload](options.quick)
            print(f"({workload}: {time.perf_counter() - started:.0f} s)", flush=True)
    print()
    print_table(results)
    targets = _targets(results)
    ok = print_targets(targets)
    if not options.quick and set(chosen) == set(WORKLOADS):
        write_results(results, targets)
    return 0 if ok or not options.check else 1


if __name__ == "__main__":
    sys.exit(main())
