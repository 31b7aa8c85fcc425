"""Report.streamed and the end of greenprof run: the same numbers as a
Report holding every snapshot, read once from the spool, in memory that
does not grow with the run; and past its bounds, greenlets merged by kind
and a timeline cut, with every total kept."""

from __future__ import annotations

import gzip
import json
import random
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import attrs
import gevent
import pytest

import greenprof
from greenprof import Frame, Report, Session, Snapshot, exporters
from greenprof._run_output import in_time_order, write_profile
from greenprof._schema import encode_header, encode_session, encode_snapshot
from greenprof._spool import Spool
from greenprof.exceptions import ConfigurationError

from .workloads import spin

Stack = tuple[Frame, ...]


def time_order(snapshots: list[Snapshot]) -> list[Snapshot]:
    return sorted(snapshots, key=lambda s: (s.timestamp_ns, s.sequence))


def timeline(items: list[object]) -> list[tuple[object, ...]]:
    """Timeline items with their session (not part of their equality), in a
    fixed order."""
    return sorted(
        (*attrs.astuple(item, recurse=False), item.session_id)  # type: ignore[attr-defined]
        for item in items
    )


def assert_same(batch: Report, streamed: Report) -> None:
    assert streamed.greenlets == batch.greenlets
    assert sorted(streamed.stacks, key=repr) == sorted(batch.stacks, key=repr)
    assert streamed.counts() == batch.counts()
    assert timeline(streamed.slices) == timeline(batch.slices)
    assert timeline(streamed.waits) == timeline(batch.waits)
    assert timeline(streamed.segments) == timeline(batch.segments)
    assert streamed.first_snapshot_ns == batch.first_snapshot_ns
    assert streamed.last_snapshot_ns == batch.last_snapshot_ns
    assert streamed.timeline_cut_ns is None
    for weight in exporters.WEIGHTS:
        for format in ("collapsed", "pprof"):
            assert exporters.export(streamed, format, weight=weight) == exporters.export(
                batch, format, weight=weight
            )
    assert exporters.export(streamed, "text") == exporters.export(batch, "text")


def profiled_program(mode: str) -> tuple[list[Snapshot], list[Session]]:
    """A real gevent program, every greenlet recorded (as greenprof run does)."""

    def worker(index: int) -> None:
        for round in range(3):
            spin(0.0005 * (index % 3 + 1))
            gevent.sleep(0.001 * (round + 1))

    profiler = greenprof.Profiler(mode=mode, follow_all=mode != "thread", dump_period=0.001)
    with profiler:
        gevent.joinall([gevent.spawn(worker, index) for index in range(12)])
        spin(0.002)
    return profiler.snapshots, profiler.sessions


@pytest.mark.parametrize("mode", ["greenlet", "hybrid", "thread"])
def test_a_streamed_report_of_a_real_program_is_the_report_of_its_snapshots(mode: str) -> None:
    snapshots, sessions = profiled_program(mode)
    batch = Report(snapshots, sessions=sessions)
    streamed = Report.streamed(iter(time_order(snapshots)), sessions=sessions)
    assert streamed.snapshots == []
    assert len(batch.greenlets) > (1 if mode == "thread" else 12)
    assert_same(batch, streamed)


STACKS: list[Stack] = [
    (Frame("app.py", "main", 1), Frame("app.py", name, line))
    for name, line in (("handle", 10), ("wait", 20), ("parse", 30), ("render", 40))
]


def random_snapshots(seed: int, greenlets: int, mode: str) -> tuple[list[Snapshot], Session]:
    """Valid switch sequences of ``greenlets`` greenlets, interleaved at
    random, with samples in hybrid mode: some started by the session, some
    picked up, some still running or waiting at its stop."""
    rng = random.Random(seed)
    events: list[tuple[int, int, str, Stack]] = []
    bounds: dict[int, tuple[int, int]] = {}
    running: set[int] = set()
    stop = 1_000_000
    for gid in range(1, greenlets + 1):
        now = rng.randrange(1000, 100_000)
        targeted = rng.random() < 0.3
        if targeted:
            bounds[gid] = (now, stop)
            if rng.random() < 0.5:
                events.append((gid, now, "start", rng.choice(STACKS)))
                running.add(gid)
                state = "running"
            else:
                state = "waiting"
        else:
            state = "new"
        for _ in range(rng.randrange(1, 8)):
            now += rng.randrange(1, 20_000)
            if state == "running":
                if mode == "hybrid" and rng.random() < 0.5:
                    events.append((gid, now, "sample", rng.choice(STACKS)))
                    now += rng.randrange(1, 5_000)
                events.append((gid, now, "switch_out", rng.choice(STACKS)))
                state = "waiting"
            else:
                stack = () if state == "new" else rng.choice(STACKS)
                events.append((gid, now, rng.choice(["switch_in", "switch_in", "throw"]), stack))
                state = "running"
        if state == "running" and rng.random() < 0.6:
            events.append((gid, now + rng.randrange(1, 9_000), "exit", ()))
        elif not targeted and rng.random() < 0.5:
            bounds[gid] = (0, stop)  # still followed at the stop
    events.sort(key=lambda event: event[1])
    snapshots = [
        Snapshot(
            greenlet_id=gid * 16,
            greenlet_name=f"Greenlet-{gid * 16:#x}",
            thread_id=1,
            event=event,
            sequence=sequence,
            timestamp_ns=at,
            stack=stack,
            session_id="s",
        )
        for sequence, (gid, at, event, stack) in enumerate(events)
    ]
    session = Session(
        session_id="s",
        start_ns=1000,
        stop_ns=stop,
        mode=mode,
        dump_period_ns=1000,
        max_depth=128,
        max_snapshots=1000,
        dropped=0,
        running_at_start=frozenset(gid * 16 for gid in running),
        bounds={gid * 16: bound for gid, bound in bounds.items()},
    )
    return snapshots, session


@pytest.mark.parametrize("seed", range(20))
def test_a_streamed_report_is_the_report_of_the_same_snapshots(seed: int) -> None:
    mode = "hybrid" if seed % 2 else "greenlet"
    snapshots, session = random_snapshots(seed, 30, mode)
    batch = Report(snapshots, sessions=[session])
    assert_same(batch, Report.streamed(iter(snapshots), sessions=[session]))


def test_past_max_greenlets_ended_greenlets_are_merged_by_kind_and_totals_stay() -> None:
    snapshots, session = random_snapshots(7, 200, "hybrid")
    batch = Report(snapshots, sessions=[session])
    streamed = Report.streamed(iter(snapshots), sessions=[session], max_greenlets=20)
    ended = {s.greenlet_id for s in snapshots if s.event == "exit"}
    first = list(dict.fromkeys(s.greenlet_id for s in snapshots))[:20]
    # Every greenlet after the twentieth that ended is merged under its
    # kind (Greenlet-0x...: Greenlet); the others are still apart.
    (merged,) = [g for g in streamed.greenlets.values() if "merged" in g.greenlet_name]
    assert streamed.merged_greenlets == len(ended - set(first)) > 50
    assert merged.greenlet_name == f"Greenlet ({streamed.merged_greenlets} greenlets merged)"
    apart = set(streamed.greenlets) - {merged.greenlet_id}
    assert apart <= set(batch.greenlets)
    assert len(streamed.greenlets) == len(batch.greenlets) - streamed.merged_greenlets + 1
    for greenlet_id in apart:
        assert streamed.greenlets[greenlet_id] == batch.greenlets[greenlet_id]
    for field in ("wall_ns", "on_cpu_ns", "off_cpu_ns", "switches_in", "switches_out", "samples"):
        assert sum(getattr(g, field) for g in streamed.greenlets.values()) == sum(
            getattr(g, field) for g in batch.greenlets.values()
        )
    # Stack by stack, the same time and snapshot counts in all.
    merged_stacks = streamed.merged("all").stacks
    assert sorted(merged_stacks, key=repr) == sorted(batch.merged("all").stacks, key=repr)
    assert streamed.merged("all").counts() == batch.merged("all").counts()
    shown = exporters.export(streamed, "collapsed")
    assert "Greenlet (" in shown
    assert "[0x" not in shown.split("Greenlet (")[1].split(";")[0]  # no made-up id shown


def test_past_max_timeline_the_timeline_is_cut_and_totals_stay() -> None:
    snapshots, session = random_snapshots(3, 60, "hybrid")
    batch = Report(snapshots, sessions=[session])
    streamed = Report.streamed(iter(snapshots), sessions=[session], max_timeline=25)
    assert streamed.timeline_cut_ns is not None
    assert max(len(streamed.slices), len(streamed.waits), len(streamed.segments)) == 25
    cut = streamed.timeline_cut_ns
    for kept, whole in (
        (streamed.slices, batch.slices),
        (streamed.waits, batch.waits),
        (streamed.segments, batch.segments),
    ):
        # Whole up to the cut.
        assert timeline([x for x in whole if x.start_ns < cut]) == timeline(
            [x for x in kept if x.start_ns < cut]
        )
        assert len(kept) < len(whole)
    assert streamed.greenlets == batch.greenlets
    assert sorted(streamed.stacks, key=repr) == sorted(batch.stacks, key=repr)
    assert streamed.longest_slices(10) == batch.longest_slices(10)
    # speedscope then shows each greenlet's totals, as samples.
    document = json.loads(exporters.export(streamed, "speedscope"))
    assert {p["type"] for p in document["profiles"]} == {"sampled"}
    assert sum(sum(p["weights"]) for p in document["profiles"]) == sum(
        g.on_cpu_ns for g in batch.greenlets.values()
    )
    chrome = json.loads(exporters.export(streamed, "chrome"))
    assert chrome["otherData"]["timeline_cut_ns"] == streamed.timeline_cut_ns


def test_a_streamed_report_cannot_be_split_by_tag() -> None:
    snapshots, session = random_snapshots(1, 5, "greenlet")
    streamed = Report.streamed(iter(snapshots), sessions=[session])
    with pytest.raises(ConfigurationError, match="keeps no snapshots"):
        streamed.where({"path": "/"})


def test_in_time_order_puts_nearly_ordered_snapshots_in_order() -> None:
    snapshots, _ = random_snapshots(5, 40, "hybrid")
    shuffled = list(snapshots)
    rng = random.Random(5)
    for index in range(0, len(shuffled) - 5, 7):  # swaps a few places apart
        other = index + rng.randrange(1, 5)
        shuffled[index], shuffled[other] = shuffled[other], shuffled[index]
    assert shuffled != snapshots
    assert list(in_time_order(shuffled, window=10)) == snapshots


# -- the spool and the end of a run ------------------------------------------------------


def spool_of(snapshots: list[Snapshot], batches: list[slice]) -> Spool:
    """A spool that got ``snapshots`` in these batches, in this order."""
    spool = Spool()
    for part in batches:
        spool.export(snapshots[part])
    return spool


def test_the_spool_reads_back_in_sequence_order_batches_written_out_of_order() -> None:
    snapshots, session = random_snapshots(11, 30, "greenlet")
    third = len(snapshots) // 3
    spool = spool_of(snapshots, [slice(third, 2 * third), slice(0, third), slice(2 * third, None)])
    try:
        spool.export_sessions([session])
        path = spool.path()
        with open(path, "a") as file:
            file.write('{"type": "snapshot", "sequ')  # a torn last write
        assert list(spool.snapshots()) == snapshots
    finally:
        spool.remove()


@pytest.mark.parametrize("format", sorted(exporters.FORMATS))
def test_a_profile_written_from_a_stream_is_what_the_exporter_writes(
    tmp_path: Path, format: str
) -> None:
    snapshots, session = random_snapshots(2, 25, "hybrid")
    path = tmp_path / f"profile.{format}"
    tally = write_profile(iter(snapshots), session, format, str(path))
    assert tally.snapshots == len(snapshots)
    assert tally.greenlets == len({s.greenlet_id for s in snapshots})
    written = path.read_bytes()
    expected = exporters.renderer_for(format).render_bytes(Report(snapshots, sessions=[session]))
    if format == "pprof":  # the same profile; gzip's header may differ
        written, expected = gzip.decompress(written), gzip.decompress(expected)
    if format == "html":  # the same data; entries with equal weight may come in another order
        assert len(written) == len(expected)
    else:
        assert written == expected


def many_snapshots(count: int) -> Iterator[Snapshot]:
    """A long server run's worth: request greenlets one after another
    (their ids come back, as freed memory does), each switching in and
    out at a few wait sites, made one at a time."""
    root = Frame("server.py", "serve", 1)
    sites = [(root, Frame("server.py", "handle", 10), Frame("db.py", f"q{n}", n)) for n in range(8)]
    sequence = 0
    at = 1_000
    while sequence < count:
        gid = 0x1000 + (sequence // 10 % 64) * 16
        for index in range(10):
            event = ("switch_in", "switch_out")[index % 2] if index < 9 else "exit"
            stack = () if event == "exit" else sites[(sequence + index) % 8]
            yield Snapshot(gid, f"Greenlet-{gid:#x}", 1, event, sequence, at, stack, "s")
            sequence += 1
            at += 1_000


def peak_of_streaming(count: int, format: str, path: Path) -> int:
    session = Session("s", 0, 2_000 + count * 1_000, "greenlet", 10_000_000, 128, 10**9, 0)
    tracemalloc.start()
    try:
        write_profile(many_snapshots(count), session, format, str(path))
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("format", ["collapsed", "jsonl", "html"])
def test_the_end_of_a_run_takes_memory_that_does_not_grow_with_the_run(
    tmp_path: Path, format: str
) -> None:
    short = peak_of_streaming(15_000, format, tmp_path / "short")
    long = peak_of_streaming(60_000, format, tmp_path / "long")
    # Four times the snapshots; what is held is bounded (the timeline's
    # 10,000 items at most): far from four times the memory.
    assert long < short * 1.5, (short, long)
    # And far less than the snapshots themselves would take.
    assert long < 60_000 * 200


def test_encode_helpers_are_what_the_jsonl_exporter_writes() -> None:
    snapshots, session = random_snapshots(4, 3, "greenlet")
    lines = [encode_header(), *map(encode_snapshot, snapshots), encode_session(session)]
    expected = "".join(line + "\n" for line in lines)
    assert exporters.export(Report(snapshots, sessions=[session]), "jsonl") == expected
