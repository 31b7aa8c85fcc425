"""ContinuousProfiler: requests served by gevent.pywsgi on 127.0.0.1, folded
per endpoint into bounded intervals, and the files FileExporter writes."""

from __future__ import annotations

import itertools
import logging
import os
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import gevent
import pytest

import greenprof
from greenprof import Frame
from greenprof.continuous import (
    OTHER,
    OTHER_STACK,
    ContinuousProfiler,
    Endpoint,
    FileExporter,
    Interval,
)
from greenprof.continuous._interval import IntervalTable
from greenprof.exceptions import ConfigurationError, NotRunningError

from .conftest import function_name, run_python, serve
from .profile_proto import decode_labelled
from .workloads import checkout, shop, spin

CHECKOUT = Endpoint("GET", "/checkout")  # the route the app tags it with
SEARCH = Endpoint("GET", "/search")
MS = 1_000_000


class Published:
    """An exporter that keeps what it is given."""

    def __init__(self) -> None:
        self.intervals: list[Interval] = []

    def publish(self, interval: Interval) -> None:
        self.intervals.append(interval)

    def flush(self, timeout: float | None = None) -> bool:
        return True

    def close(self) -> None:
        pass


@pytest.fixture
def published() -> Published:
    return Published()


@pytest.fixture
def profiler(published: Published) -> Iterator[ContinuousProfiler]:
    profiler = ContinuousProfiler(interval=3600, sample_rate=1.0, exporters=[published])
    yield profiler
    if profiler.is_running:
        profiler.stop()


def leaf_functions(stacks: dict[tuple[Frame, ...], list[int]], column: int) -> dict[str, int]:
    totals: dict[str, int] = {}
    for stack, values in stacks.items():
        totals[stack[-1].function] = totals.get(stack[-1].function, 0) + values[column]
    return totals


@pytest.mark.parametrize("mode", ["greenlet", "hybrid"])
def test_each_endpoint_gets_its_requests_cpu_and_wait_time(mode: str, published: Published) -> None:
    profiler = ContinuousProfiler(
        interval=3600, sample_rate=1.0, mode=mode, dump_period=0.001, exporters=[published]
    )
    app = profiler.install(shop)
    served_ns = {"/checkout": 0, "/search": 0}
    with profiler:
        for path in ["/checkout"] * 6 + ["/search"] * 4:
            began = time.perf_counter_ns()
            serve(app, [path])  # one at a time: a request waits only in its sleep
            served_ns[path] += time.perf_counter_ns() - began
    (interval,) = published.intervals
    assert set(interval.stacks) == {CHECKOUT, SEARCH}
    assert interval.requests == 10
    on, off, snapshots = interval.totals(CHECKOUT)
    # checkout spins 4 ms and sleeps 6 ms, search 1 ms and 2 ms: at least
    # that, and no more than the time their requests were being served (a
    # loaded machine makes that longer, for both). Off-CPU time may fall a
    # little short: the OS can take the CPU from the process between
    # sleep() arming its timer and switching out, which is time running.
    assert on >= 6 * 4 * MS
    assert off >= 0.75 * 6 * 6 * MS
    assert on + off >= 6 * (4 + 6) * MS
    assert on + off <= served_ns["/checkout"]
    assert snapshots >= 6 * 4  # start, switch out, switch in, stop each
    search_on, search_off, _ = interval.totals(SEARCH)
    assert search_on >= 4 * 1 * MS
    assert search_off >= 0.75 * 4 * 2 * MS
    assert search_on + search_off >= 4 * (1 + 2) * MS
    assert search_on + search_off <= served_ns["/search"]
    stacks = interval.stacks[CHECKOUT]
    # Off-CPU: waiting in gevent.sleep, called by checkout.
    waits = [stack for stack, values in stacks.items() if values[1]]
    assert waits
    assert all(any(f.function == "sleep" for f in stack) for stack in waits)
    assert all(any(f.function == function_name(checkout) for f in stack) for stack in waits)
    if mode == "hybrid":  # samples inside the slice: time goes to spin
        # (how much depends on when the OS runs the sampler thread, and it
        # waits for the GIL: on a loaded machine a slice may get its first
        # sample late or none; the slice's own time is checked above)
        spun = sum(v[0] for stack, v in stacks.items() if stack[-1].function == function_name(spin))
        assert spun > 0
    else:  # a run slice goes where it yielded: into gevent.sleep from checkout
        (ran,) = [v[0] for stack, v in stacks.items() if stack in waits and v[0]]
        assert ran >= 6 * 4 * MS


def test_requests_are_profiled_only_while_it_runs(
    profiler: ContinuousProfiler, published: Published
) -> None:
    app = profiler.install(shop)
    serve(app, ["/checkout"])
    profiler.start()
    profiler.stop()
    serve(app, ["/checkout"])
    assert [i.requests for i in published.intervals] == [0]
    assert profiler.stats.requests == 0
    with pytest.raises(NotRunningError, match="start"):
        profiler.stop()


def test_sample_rate_picks_a_share_of_requests(published: Published) -> None:
    profiler = ContinuousProfiler(interval=3600, sample_rate=0.0, exporters=[published])
    with profiler:
        serve(profiler.install(shop), ["/search"] * 5)
    assert published.intervals[-1].requests == 0
    assert published.intervals[-1].stacks == {}


def test_an_interval_closes_every_interval_seconds(published: Published) -> None:
    profiler = ContinuousProfiler(interval=0.2, sample_rate=1.0, exporters=[published])
    app = profiler.install(shop)
    with profiler:
        deadline = time.monotonic() + 60
        while len(published.intervals) < 3 and time.monotonic() < deadline:
            serve(app, ["/search"])
    closed = published.intervals
    assert len(closed) >= 3
    # Back to back, from the first start to the last end.
    for before, after in itertools.pairwise(closed):
        assert before.end_ns == after.start_ns
    assert sum(i.requests for i in closed) == profiler.stats.requests
    assert profiler.stats.intervals == len(closed)


def test_the_profile_is_pprof_with_endpoint_and_static_labels_only(
    published: Published, profile_pb2: ModuleType, tmp_path: Path
) -> None:
    profiler = ContinuousProfiler(
        interval=3600,
        sample_rate=1.0,
        tags={"service": "shop", "version": "1.2"},
        exporters=[published, FileExporter(tmp_path)],
    )
    with profiler:
        serve(profiler.install(shop), ["/checkout"] * 2 + ["/search"] * 3)
    (interval,) = published.intervals
    (name,) = os.listdir(tmp_path)
    profile = decode_labelled(profile_pb2, (tmp_path / name).read_bytes())
    assert profile.sample_types == [
        ("on_cpu", "nanoseconds"),
        ("off_cpu", "nanoseconds"),
        ("snapshots", "count"),
    ]
    keys = {key for labels in profile.samples for key, _ in labels}
    assert keys == {"method", "path", "service", "version"}  # never a greenlet
    for endpoint in (CHECKOUT, SEARCH):
        found = profile.totals(path=endpoint.path, method="GET", service="shop", version="1.2")
        assert found == interval.totals(endpoint)
        assert found[0] > 0
    assert profile.message.time_nanos == interval.start_ns
    assert profile.message.duration_nanos == interval.end_ns - interval.start_ns


def test_file_exporter_keeps_the_newest_files(tmp_path: Path, profile_pb2: ModuleType) -> None:
    exporter = FileExporter(tmp_path, keep=3)
    (tmp_path / "notes.txt").write_text("not a profile")
    starts = [1_700_000_000_000_000_000 + n * 60 * 10**9 for n in range(5)]
    for start in starts:
        table = IntervalTable(start, max_stacks=10, max_endpoints=10)
        table.add(SEARCH, (Frame("app.py", "handler", 3),), [start % 997, 5, 1])
        exporter.publish(table.close(start + 60 * 10**9, {}))
    names = sorted(os.listdir(tmp_path))
    assert names[-1] == "notes.txt"
    assert names[:3] == [
        f"greenprof-{stamp}.000000Z-{os.getpid()}.pb.gz"
        for stamp in ("20231114T221520", "20231114T221620", "20231114T221720")
    ]
    assert (exporter.written, exporter.removed) == (5, 2)
    newest = decode_labelled(profile_pb2, (tmp_path / names[2]).read_bytes())
    assert newest.totals(path="/search") == [starts[-1] % 997, 5, 1]


def test_caps_hold_for_a_million_requests_over_10000_stacks_and_500_endpoints() -> None:
    stacks = [(Frame("app.py", "handler", 1), Frame("lib.py", f"f{n}", n)) for n in range(10_000)]
    endpoints = [Endpoint("GET", f"/e{n}") for n in range(500)]
    table = IntervalTable(0, max_stacks=2_000, max_endpoints=100)
    for n in range(900_000):
        table.add(endpoints[n % 500], stacks[(n * 7919) % 10_000], (3, 2, 1))
    # Past the caps, more traffic takes no more memory. The first two traced
    # stretches settle: the first replaces each entry's untraced numbers by
    # traced ones, and on 3.10 the second keeps one frame (440 bytes) for the
    # table's fold into "other". Only what greenprof's own code holds counts:
    # a thread left by another test may allocate meanwhile (1.3 kB once in CI).
    only_greenprof = [
        tracemalloc.Filter(True, os.path.join(os.path.dirname(greenprof.__file__), "*"))
    ]
    tracemalloc.start()
    used = []
    for start, end in ((900_000, 925_000), (925_000, 950_000), (950_000, 1_000_000)):
        for n in range(start, end):
            table.add(endpoints[n % 500], stacks[(n * 7919) % 10_000], (3, 2, 1))
        held = tracemalloc.take_snapshot().filter_traces(only_greenprof)
        used.append(sum(stat.size for stat in held.statistics("filename")))
    tracemalloc.stop()
    assert used[0] > 0  # the table's entries are seen
    assert used[2] - used[1] < 1_000
    interval = table.close(1, {})
    assert len(interval.stacks) == 101  # 100 endpoints and "other"
    assert Endpoint(OTHER, OTHER) in interval.stacks
    entries = sum(len(s) for s in interval.stacks.values())
    others = sum(OTHER_STACK in s for s in interval.stacks.values())
    assert entries - others == 2_000
    # Nothing lost: every request's time is somewhere.
    assert [sum(interval.totals(e)[c] for e in interval.stacks) for c in range(3)] == [
        3_000_000,
        2_000_000,
        1_000_000,
    ]
    assert interval.requests == 1_000_000
    assert interval.endpoints_folded == 1_000_000 * 400 // 500
    assert interval.stacks_folded > 0


def test_a_failing_exporter_is_counted_and_logged_once(
    caplog: pytest.LogCaptureFixture, published: Published
) -> None:
    class Broken(Published):
        def publish(self, interval: Interval) -> None:
            raise OSError("disk full")

    broken = Broken()
    profiler = ContinuousProfiler(interval=3600, sample_rate=1.0, exporters=[broken, published])
    app = profiler.install(shop)
    with caplog.at_level(logging.WARNING, logger="greenprof"), profiler:
        replies = serve(app, ["/search"] * 3)
        profiler.flush()
    assert all(b"404" in reply.split(b"\r\n", 1)[0] for reply in replies)
    assert profiler.stats.exporter_failures == 2
    assert len([r for r in caplog.records if "disk full" in r.getMessage()]) == 1
    assert [i.requests for i in published.intervals] == [3, 0]


def test_requests_in_many_greenlets_at_once_fold_into_one_interval(
    profiler: ContinuousProfiler, published: Published
) -> None:
    app = profiler.install(shop)
    with profiler:
        jobs = [gevent.spawn(serve, app, ["/checkout", "/search"]) for _ in range(10)]
        gevent.joinall(jobs, raise_error=True)
    assert published.intervals[-1].requests == 20


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"interval": 0}, "interval"),
        ({"interval": float("inf")}, "interval"),
        ({"sample_rate": 1.5}, "sample_rate"),
        ({"mode": "thread"}, "mode"),
        ({"max_stacks": 0}, "max_stacks"),
        ({"max_endpoints": True}, "max_endpoints"),
        ({"tags": {"service": 1}}, "tags"),
        ({"exporters": Published()}, r"exporters=\[exporter\]"),
        ({"exporters": [object()]}, "publish, flush, close"),
        ({"max_depth": 0}, "max_depth"),
    ],
)
def test_bad_options_raise_a_clear_error(options: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        ContinuousProfiler(**options)  # type: ignore[arg-type]


def test_file_exporter_checks_its_folder(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="not a folder"):
        FileExporter(tmp_path / "missing")
    with pytest.raises(ConfigurationError, match="keep"):
        FileExporter(tmp_path, keep=0)


def test_a_forked_worker_profiles_and_publishes_its_own_requests(tmp_path: Path) -> None:
    found = run_python(
        f"""
        from gevent import monkey; monkey.patch_all()
        import json, os, time
        from greenprof.continuous import ContinuousProfiler, FileExporter
        from tests.conftest import serve
        from tests.workloads import shop

        profiler = ContinuousProfiler(
            interval=0.2, sample_rate=1.0, exporters=[FileExporter({str(tmp_path)!r})]
        )
        app = profiler.install(shop)
        profiler.start()
        serve(app, ["/checkout"])  # the parent's request, before the fork
        pid = os.fork()
        if pid == 0:  # a worker: its own requests, published by its own loop
            serve(app, ["/search", "/search"])
            deadline = time.monotonic() + 60
            while profiler.stats.intervals < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            os._exit(0 if profiler.stats.requests == 2 else 3)
        _, status = os.waitpid(pid, 0)
        profiler.stop()
        print(json.dumps({{"child": pid, "status": status, "parent": profiler.stats.requests}}))
        """,
        PYTHONPATH=os.pathsep.join(
            [str(Path(__file__).parent.parent), os.environ.get("PYTHONPATH", "")]
        ),
    )
    assert found["status"] == 0
    assert found["parent"] == 1
    # The child's loop, back after the fork, wrote files under its own pid.
    assert any(name.endswith(f"-{found['child']}.pb.gz") for name in os.listdir(tmp_path))
