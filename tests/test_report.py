"""Report's time attribution, checked to the nanosecond on hand-made snapshots."""

from __future__ import annotations

import random

from greenprof import Frame, GreenletTime, Report, RunSlice, Snapshot

from .workloads import record_red_and_blue

Stack = tuple[Frame, ...]

MAIN = Frame("app.py", "main", 1)
HANDLE = Frame("app.py", "handle", 20)
#: Where a greenlet resumed or yielded: ``main -> handle -> <leaf>``.
RESUME: Stack = (MAIN, HANDLE, Frame("app.py", "resume", 30))
WAIT: Stack = (MAIN, HANDLE, Frame("app.py", "wait", 40))
WAIT2: Stack = (MAIN, Frame("app.py", "wait_again", 50))
#: Sampled stacks while running.
A: Stack = (MAIN, HANDLE, Frame("app.py", "parse", 60))
B: Stack = (MAIN, HANDLE, Frame("app.py", "compute", 70))
C: Stack = (MAIN, Frame("app.py", "render", 80))


def snaps(*events: tuple[int, str, int, Stack]) -> list[Snapshot]:
    """Snapshots from ``(greenlet_id, event, timestamp_ns, stack)``, sequenced
    in the order given."""
    return [
        Snapshot(
            greenlet_id=gid,
            greenlet_name=f"g{gid}",
            thread_id=1,
            event=event,
            sequence=sequence,
            timestamp_ns=timestamp,
            stack=stack,
            session_id="s",
        )
        for sequence, (gid, event, timestamp, stack) in enumerate(events)
    ]


def times(report: Report, gid: int) -> dict[Stack, tuple[int, int]]:
    """``{stack: (on_cpu_ns, off_cpu_ns)}`` of one greenlet, zero cells dropped."""
    return {
        t.stack: (t.on_cpu_ns, t.off_cpu_ns)
        for t in report.stacks
        if t.greenlet_id == gid and (t.on_cpu_ns or t.off_cpu_ns)
    }


# -- off-CPU -------------------------------------------------------------------


def test_off_cpu_from_switch_out_to_switch_in_goes_to_the_switch_out_stack() -> None:
    report = Report(
        snaps(
            (1, "switch_in", 1000, ()),
            (1, "switch_out", 1500, WAIT),
            (1, "switch_in", 4000, WAIT),
            (1, "switch_out", 4200, WAIT2),
        )
    )
    assert times(report, 1) == {WAIT: (500, 2500), WAIT2: (200, 0)}


def test_throw_ends_a_wait_like_switch_in() -> None:
    report = Report(
        snaps(
            (1, "switch_in", 1000, ()),
            (1, "switch_out", 1300, WAIT),
            (1, "throw", 2000, WAIT),
            (1, "exit", 2100, ()),
        )
    )
    # Off: 1300..2000 at WAIT. On: 1000..1300 (yielded at WAIT) and
    # 2000..2100 (ended in exit, resumed at WAIT).
    assert times(report, 1) == {WAIT: (400, 700)}
    assert report.greenlets[1].switches_in == 2
    assert report.greenlets[1].switches_out == 1


def test_greenlet_waiting_at_the_end_without_stop_counts_no_off_cpu() -> None:
    report = Report(snaps((1, "switch_in", 1000, ()), (1, "switch_out", 1400, WAIT)))
    assert times(report, 1) == {WAIT: (400, 0)}
    assert report.greenlets[1].off_cpu_ns == 0


# -- on-CPU without samples ---------------------------------------------------


def test_run_slice_without_samples_goes_to_its_switch_out_stack() -> None:
    report = Report(snaps((1, "switch_in", 1000, RESUME), (1, "switch_out", 1800, WAIT)))
    assert times(report, 1) == {WAIT: (800, 0)}
    assert report.slices == [RunSlice(1, "g1", 1000, 800, RESUME, WAIT, 0)]


def test_final_slice_ending_in_exit_goes_to_the_stack_it_resumed_in() -> None:
    report = Report(snaps((1, "switch_in", 1000, RESUME), (1, "exit", 1600, ())))
    assert times(report, 1) == {RESUME: (600, 0)}
    assert report.slices == [RunSlice(1, "g1", 1000, 600, RESUME, (), 0)]


# -- on-CPU with hybrid samples ------------------------------------------------


def test_hybrid_samples_split_the_slice_at_midpoints() -> None:
    report = Report(
        snaps(
            (1, "switch_in", 1000, RESUME),
            (1, "sample", 1200, A),
            (1, "sample", 1600, B),
            (1, "sample", 1700, C),
            (1, "switch_out", 2000, WAIT),
        )
    )
    # Edges: 1000 | (1200+1600)/2 = 1400 | (1600+1700)/2 = 1650 | 2000.
    assert times(report, 1) == {A: (400, 0), B: (250, 0), C: (350, 0)}
    assert report.greenlets[1].on_cpu_ns == 1000
    assert report.greenlets[1].samples == 3
    assert report.slices == [RunSlice(1, "g1", 1000, 1000, RESUME, WAIT, 3)]


def test_hybrid_midpoints_round_down_and_still_sum_to_the_slice() -> None:
    report = Report(
        snaps(
            (1, "switch_in", 1000, RESUME),
            (1, "sample", 1201, A),
            (1, "sample", 1602, B),
            (1, "switch_out", 2000, WAIT),
        )
    )
    # Midpoint (1201 + 1602) // 2 = 1401.
    assert times(report, 1) == {A: (401, 0), B: (599, 0)}


def test_hybrid_samples_of_the_same_stack_add_up() -> None:
    report = Report(
        snaps(
            (1, "switch_in", 1000, RESUME),
            (1, "sample", 1100, A),
            (1, "sample", 1500, B),
            (1, "sample", 1900, A),
            (1, "switch_out", 2000, WAIT),
        )
    )
    # Edges: 1000 | 1300 | 1700 | 2000: A gets 300 + 300, B 400.
    assert times(report, 1) == {A: (600, 0), B: (400, 0)}


def test_hybrid_samples_belong_only_to_their_own_slice() -> None:
    report = Report(
        snaps(
            (1, "switch_in", 1000, RESUME),
            (1, "sample", 1100, A),
            (1, "switch_out", 1200, WAIT),
            (1, "switch_in", 1500, WAIT),
            (1, "switch_out", 1900, WAIT2),
        )
    )
    # The first slice (200) is all A's; the second, sampleless (400), WAIT2's.
    assert times(report, 1) == {A: (200, 0), WAIT: (0, 300), WAIT2: (400, 0)}
    assert [s.samples for s in report.slices] == [1, 0]


def test_hybrid_sample_before_the_first_switch_starts_the_slice_without_bounds() -> None:
    report = Report(
        snaps(
            (1, "sample", 1000, A),
            (1, "sample", 1400, B),
            (1, "switch_out", 2000, WAIT),
        )
    )
    # Running since the first sample: edges 1000 | 1200 | 2000.
    assert times(report, 1) == {A: (200, 0), B: (800, 0)}
    assert report.slices == [RunSlice(1, "g1", 1000, 1000, (), WAIT, 2)]


# -- session bounds -------------------------------------------------------------


def test_first_switch_out_counts_on_cpu_from_the_session_start() -> None:
    report = Report(snaps((1, "switch_out", 1500, WAIT)), bounds={1: (1000, 0)})
    assert times(report, 1) == {WAIT: (500, 0)}
    assert report.slices == [RunSlice(1, "g1", 1000, 500, (), WAIT, 0)]


def test_greenlet_still_waiting_at_stop_counts_off_cpu_up_to_stop() -> None:
    report = Report(snaps((1, "switch_out", 1500, WAIT)), bounds={1: (1000, 3000)})
    assert times(report, 1) == {WAIT: (500, 1500)}
    assert report.greenlets[1].wall_ns == 2000


def test_greenlet_still_running_at_stop_counts_on_cpu_to_its_resume_stack() -> None:
    report = Report(
        snaps(
            (1, "switch_out", 1500, WAIT),
            (1, "switch_in", 2000, WAIT2),
        ),
        bounds={1: (1000, 3000)},
    )
    # On: 1000..1500 at WAIT, 2000..3000 at the resume stack WAIT2.
    assert times(report, 1) == {WAIT: (500, 500), WAIT2: (1000, 0)}
    assert report.slices[-1] == RunSlice(1, "g1", 2000, 1000, WAIT2, (), 0)


def test_greenlet_still_running_at_stop_counts_on_cpu_to_its_samples() -> None:
    report = Report(
        snaps(
            (1, "switch_in", 1000, ()),
            (1, "sample", 1400, A),
            (1, "sample", 2000, B),
        ),
        bounds={1: (1000, 3000)},
    )
    # Edges 1000 | 1700 | 3000: the last sample's stack runs to stop.
    assert times(report, 1) == {A: (700, 0), B: (1300, 0)}
    assert report.slices == [RunSlice(1, "g1", 1000, 2000, (), (), 2)]


def test_greenlet_waiting_at_the_session_start_counts_off_cpu_from_start() -> None:
    report = Report(
        snaps((1, "switch_in", 1500, WAIT), (1, "switch_out", 1700, WAIT2)),
        bounds={1: (1000, 2000)},
    )
    # It resumed at WAIT, so it was waiting there since the start.
    assert times(report, 1) == {WAIT: (0, 500), WAIT2: (200, 300)}


def test_first_run_counts_nothing_before_it_starts() -> None:
    report = Report(
        snaps((1, "switch_in", 1500, ()), (1, "switch_out", 1700, WAIT)),
        bounds={1: (1000, 2000)},
    )
    assert times(report, 1) == {WAIT: (200, 300)}
    assert report.greenlets[1].wall_ns == 500


def test_without_bounds_the_first_event_time_is_the_start() -> None:
    report = Report(
        snaps(
            (1, "switch_out", 1500, WAIT),
            (1, "switch_in", 2000, WAIT),
            (1, "switch_out", 2300, WAIT2),
        )
    )
    assert times(report, 1) == {WAIT: (0, 500), WAIT2: (300, 0)}
    assert report.slices[0] == RunSlice(1, "g1", 1500, 0, (), WAIT, 0)
    assert report.greenlets[1].wall_ns == 800


def test_bounds_of_one_greenlet_do_not_apply_to_another() -> None:
    report = Report(
        snaps((1, "switch_out", 1500, WAIT), (2, "switch_out", 1600, WAIT2)),
        bounds={1: (1000, 3000)},
    )
    assert times(report, 1) == {WAIT: (500, 1500)}
    assert times(report, 2) == {}
    assert report.greenlets[2].wall_ns == 0


# -- thread mode ---------------------------------------------------------------

THREAD_SAMPLES = (
    (7, "sample", 1_000, A),
    (7, "sample", 10_001_000, A),
    (8, "sample", 15_000_000, C),
    (7, "sample", 20_001_000, B),
)


def test_thread_mode_samples_are_counted_per_greenlet() -> None:
    report = Report(snaps(*THREAD_SAMPLES), dump_period_ns=10_000_000)
    assert report.greenlets[7].samples == 3
    assert report.greenlets[8].samples == 1
    assert report.greenlets[7].switches_in == report.greenlets[7].switches_out == 0


def test_thread_mode_samples_each_add_one_dump_period_of_on_cpu() -> None:
    report = Report(snaps(*THREAD_SAMPLES), dump_period_ns=10_000_000)
    assert times(report, 7) == {A: (20_000_000, 0), B: (10_000_000, 0)}
    assert times(report, 8) == {C: (10_000_000, 0)}
    assert report.greenlets[7].on_cpu_ns == report.greenlets[7].wall_ns == 30_000_000
    assert report.greenlets[8].on_cpu_ns == 10_000_000
    assert report.slices == []


def test_sample_while_waiting_adds_one_dump_period() -> None:
    report = Report(
        snaps(
            (1, "switch_in", 1000, ()),
            (1, "switch_out", 1200, WAIT),
            (1, "sample", 1500, A),
        ),
        dump_period_ns=10_000_000,
    )
    assert times(report, 1) == {WAIT: (200, 0), A: (10_000_000, 0)}
    assert report.greenlets[1].on_cpu_ns == 10_000_200
    assert report.greenlets[1].samples == 1


# -- per-greenlet totals -----------------------------------------------------------


def test_greenlet_totals_add_up_and_count_switches() -> None:
    report = Report(
        snaps(
            (1, "switch_in", 1000, ()),
            (1, "sample", 1100, A),
            (1, "switch_out", 1300, WAIT),
            (1, "throw", 1800, WAIT),
            (1, "switch_out", 1900, WAIT2),
            (1, "switch_in", 2500, WAIT2),
            (1, "exit", 2600, ()),
        )
    )
    assert report.greenlets[1] == GreenletTime(
        greenlet_id=1,
        greenlet_name="g1",
        wall_ns=1600,
        on_cpu_ns=500,
        off_cpu_ns=1100,
        switches_in=3,
        switches_out=2,
        samples=1,
    )
    total = report.greenlets[1]
    assert total.wall_ns == total.on_cpu_ns + total.off_cpu_ns
    assert sum(on for on, _ in times(report, 1).values()) == total.on_cpu_ns
    assert sum(off for _, off in times(report, 1).values()) == total.off_cpu_ns


# -- longest slices ------------------------------------------------------------------


def test_longest_slices_returns_the_n_longest_in_descending_duration() -> None:
    report = Report(
        snaps(
            (1, "switch_in", 1000, ()),
            (1, "switch_out", 1100, WAIT),  # 100
            (2, "switch_in", 1100, ()),
            (2, "sample", 1200, A),
            (2, "sample", 1300, B),
            (2, "switch_out", 1600, WAIT2),  # 500
            (1, "switch_in", 1600, WAIT),
            (1, "switch_out", 1900, WAIT2),  # 300
            (2, "switch_in", 1900, WAIT2),
            (2, "exit", 1950, ()),  # 50
        )
    )
    assert report.longest_slices(2) == [
        RunSlice(2, "g2", 1100, 500, (), WAIT2, 2),
        RunSlice(1, "g1", 1600, 300, WAIT, WAIT2, 0),
    ]
    assert [s.duration_ns for s in report.longest_slices()] == [500, 300, 100, 50]
    assert report.longest_slices(10)[-1] == RunSlice(2, "g2", 1900, 50, WAIT2, (), 0)
    assert [s.start_ns for s in report.slices] == [1000, 1100, 1600, 1900]


# -- several greenlets ------------------------------------------------------------------


def test_several_greenlets_are_kept_apart() -> None:
    report = Report(
        snaps(
            (1, "switch_in", 1000, ()),
            (1, "switch_out", 1200, WAIT),
            (2, "switch_in", 1200, ()),
            (2, "sample", 1300, A),
            (2, "switch_out", 1500, WAIT),
            (1, "switch_in", 1500, WAIT),
            (1, "exit", 1600, ()),
            (2, "switch_in", 1600, WAIT),
            (2, "switch_out", 2000, WAIT2),
        )
    )
    # The same stack in two greenlets gives two cells, never one.
    assert times(report, 1) == {WAIT: (300, 300)}
    assert times(report, 2) == {A: (300, 0), WAIT: (0, 100), WAIT2: (400, 0)}
    assert {(t.greenlet_id, t.greenlet_name) for t in report.stacks} == {
        (1, "g1"),
        (2, "g2"),
    }
    assert report.greenlets[1].wall_ns == 600
    assert report.greenlets[2].wall_ns == 800
    assert report.self_ns(1, "parse") == 0
    assert report.total_ns(2, "wait", on_cpu=False) == 100
    assert report.total_ns(3, "main") == 0


# -- self vs total -----------------------------------------------------------------------


def test_self_counts_the_innermost_frame_and_total_any_frame() -> None:
    report = Report(
        snaps(
            (1, "switch_in", 1000, ()),
            (1, "sample", 1100, A),  # main > handle > parse
            (1, "sample", 1500, B),  # main > handle > compute
            (1, "sample", 1700, C),  # main > render
            (1, "switch_out", 2000, WAIT),  # main > handle > wait
            (1, "switch_in", 2600, WAIT),
            (1, "switch_out", 2700, WAIT2),  # main > wait_again
            (1, "switch_in", 3000, WAIT2),
            (1, "exit", 3050, ()),
        )
    )
    # On: A 300, B 300, C 400, WAIT2 100 + 50. Off: WAIT 600, WAIT2 300.
    assert times(report, 1) == {
        A: (300, 0),
        B: (300, 0),
        C: (400, 0),
        WAIT: (0, 600),
        WAIT2: (150, 300),
    }
    assert report.self_ns(1, "parse") == 300
    assert report.self_ns(1, "handle") == 0
    assert report.total_ns(1, "handle") == 600
    assert report.total_ns(1, "main") == 1150
    assert report.self_ns(1, "wait", on_cpu=False) == 600
    assert report.self_ns(1, "handle", on_cpu=False) == 0
    assert report.total_ns(1, "handle", on_cpu=False) == 600
    assert report.total_ns(1, "main", on_cpu=False) == 900
    assert report.self_ns(1, "wait_again") == 150
    assert report.self_ns(1, "missing") == report.total_ns(1, "missing") == 0


# -- ordering ------------------------------------------------------------------


def test_snapshots_out_of_order_are_sorted_by_timestamp_then_sequence() -> None:
    ordered = snaps(
        (1, "switch_in", 1000, ()),
        (1, "sample", 1200, A),
        (1, "sample", 1200, B),  # same time: sequence decides
        (1, "switch_out", 2000, WAIT),
        (1, "switch_in", 2500, WAIT),
        (1, "switch_out", 2600, WAIT2),
    )
    shuffled = list(ordered)
    random.Random(1).shuffle(shuffled)
    assert shuffled != ordered
    expected = Report(ordered)
    report = Report(reversed(shuffled))
    assert report.snapshots == ordered
    # Edges 1000 | 1200 | 2000: A gets the slice start, B runs to the end.
    assert times(report, 1) == {A: (200, 0), B: (800, 0), WAIT: (0, 500), WAIT2: (100, 0)}
    assert report.stacks == expected.stacks
    assert report.slices == expected.slices
    assert report.greenlets == expected.greenlets


def test_sessions_in_one_list_are_replayed_apart() -> None:
    import attrs

    first = snaps((1, "switch_out", 1_000, WAIT), (1, "switch_in", 2_000, WAIT))
    second = [
        attrs.evolve(s, session_id="t", timestamp_ns=s.timestamp_ns + 500_000_000)
        for s in snaps((1, "switch_out", 1_000, WAIT), (1, "switch_in", 4_000, WAIT))
    ]
    report = Report([*first, *second])
    # 1,000 + 3,000 ns of waiting; nothing for the half second between them.
    assert times(report, 1) == {WAIT: (0, 4_000)}
    assert report.greenlets[1].off_cpu_ns == 4_000
    assert report.greenlets[1].switches_out == 2
    assert [w.duration_ns for w in report.waits] == [1_000, 3_000]
    # Without bounds each session starts at its first snapshot.
    assert [s.duration_ns for s in report.slices] == [0, 0]


def test_a_report_without_timeline_adds_up_the_same_time() -> None:
    profiler, _, _ = record_red_and_blue()
    snapshots, sessions = profiler.snapshots, profiler.sessions
    full = Report(snapshots, sessions=sessions)
    lean = Report(snapshots, sessions=sessions, timeline=False)
    assert full.segments
    assert lean.segments == []
    assert lean.stacks == full.stacks
    assert lean.slices == full.slices
    assert lean.waits == full.waits
    assert lean.greenlets == full.greenlets
    assert lean.merged("all").stacks == full.merged("all").stacks
    assert lean.split_by("missing", missing="-")["-"].segments == []
