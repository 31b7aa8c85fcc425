"""FrameFormatter: raw stacks to Frames, through its caches, stays exact."""

from __future__ import annotations

import pickle
import sys
import traceback
import weakref
from collections.abc import Callable
from types import FrameType

import attrs
import pytest

from greenprof import Snapshot
from greenprof._stack import FrameFormatter, capture

from .conftest import never_called


def expected(frame: FrameType, depth: int) -> list[tuple[str, str, int]]:
    summary = traceback.extract_stack(frame)[-depth:]
    return [(entry.filename, entry.name, entry.lineno or 0) for entry in summary]


def formatted(
    formatter: FrameFormatter, frame: FrameType, depth: int
) -> list[tuple[str, str, int]]:
    return [
        (f.filename, f.function.rpartition(".")[2], f.lineno)
        for f in formatter.stack(capture(frame, depth, mark=False), depth)
    ]


def nest(levels: int, seen: list[FrameType]) -> None:
    if levels:
        nest(levels - 1, seen)
        nest_again(levels - 1, seen)  # same depth, another line and function
    else:
        seen.append(sys._getframe(1))


def nest_again(levels: int, seen: list[FrameType]) -> None:
    nest(levels, seen)


def test_stacks_through_tiny_caches_are_the_stacks_traceback_sees() -> None:
    frames: list[FrameType] = []
    nest(4, frames)
    # Frames are kept alive here on purpose, to compare them afterwards.
    wanted = [(frame, depth) for frame in frames for depth in (3, 7, 100)]
    for max_entries in (1, 2, 5, 1 << 16):
        formatter = FrameFormatter(max_entries=max_entries)
        for _ in range(3):  # cold, then cached (or evicted and rebuilt)
            for frame, depth in wanted:
                assert formatted(formatter, frame, depth) == expected(frame, depth)


def test_the_same_code_at_another_offset_is_another_stack() -> None:
    formatter = FrameFormatter()
    raws = []

    def here() -> None:
        raws.append(capture(sys._getframe(), 2, mark=False))

    here()
    here()  # the same two code objects; the caller is one line further
    first, second = (formatter.stack(raw, 2) for raw in raws)
    assert first[-1] == second[-1]  # here() itself, at the same line
    assert first[0].lineno + 1 == second[0].lineno


def test_build_cuts_one_raw_stack_to_each_buffers_depth() -> None:
    # Records of two buffers of different max_depth share a raw stack (as
    # switch-ins share their switch-out's): each snapshot gets its own depth.
    from greenprof._build import build

    def raw_here() -> object:
        return capture(sys._getframe(), 128)

    raw = nest_call(6, raw_here)
    deep_meta = (128, 1, "deep", 7, None, False)
    shallow_meta = (3, 2, "shallow", 7, None, False)
    pending = [
        ((2, 10, raw), deep_meta),
        ((0, 11, raw), deep_meta),
        ((2, 12, raw), shallow_meta),
        ((0, 13, raw), shallow_meta),
        ((2, 14, raw), deep_meta),
    ]
    out: list[Snapshot] = []
    build(pending, out, session_id="s", first_sequence=0, offset_ns=0)
    depths = [len(snapshot.stack) for snapshot in out]
    assert depths[2:4] == [3, 3]
    assert depths[0] == depths[1] == depths[4] > 8
    assert [s.greenlet_name for s in out] == ["deep", "deep", "shallow", "shallow", "deep"]
    assert out[2].stack == out[0].stack[-3:]


def nest_call(levels: int, call: Callable[[], object]) -> object:
    if levels:
        return nest_call(levels - 1, call)
    return call()


@pytest.mark.parametrize("draft", ["draft", "setters"])
def test_build_makes_snapshots_as_their_constructor_does(
    draft: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # build() fills a draft object and turns it into a Snapshot; with the
    # draft taken away (a CPython that refused it), it calls slot setters.
    from greenprof import _build
    from greenprof.snapshot import SNAPSHOT_DRAFT

    assert SNAPSHOT_DRAFT is not None
    if draft == "setters":
        monkeypatch.setattr(_build, "SNAPSHOT_DRAFT", None)
    else:  # the draft must be what builds them
        monkeypatch.setattr(_build, "SNAPSHOT_SETTERS", (never_called,) * 9)
    raw = nest_call(3, lambda: capture(sys._getframe(), 128, mark=False))
    meta = (128, 11, "worker", 7, 5, False)
    pending = [((0, 100, raw), meta), ((4, 150, raw, 12, "other"), meta), ((2, 190, None), meta)]
    out: list[Snapshot] = []
    _build.build(pending, out, session_id="s1", first_sequence=3, offset_ns=1000)
    stack = _build.FORMATTER.stack(raw, 128)
    assert len(stack) > 3
    assert out == [
        Snapshot(11, "worker", 7, "switch_in", 3, 1100, stack, "s1", 5),
        Snapshot(12, "other", 7, "sample", 4, 1150, stack, "s1", 5),
        Snapshot(11, "worker", 7, "switch_out", 5, 1190, (), "s1", 5),
    ]
    for snapshot in out:
        assert type(snapshot) is Snapshot
        assert hash(snapshot) == hash(attrs.evolve(snapshot))
        assert pickle.loads(pickle.dumps(snapshot)) == snapshot
        with pytest.raises(TypeError):
            weakref.ref(snapshot)  # a plain value: see Snapshot's docstring
        assert repr(snapshot).startswith("Snapshot(greenlet_id=")
        with pytest.raises(attrs.exceptions.FrozenInstanceError):
            snapshot.sequence = 0  # type: ignore[misc]
