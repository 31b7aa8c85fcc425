"""What every exporter shares: weights, labels, stacks as shown, groups."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Final, Literal

from .._report import Report
from ..exceptions import ConfigurationError
from ..snapshot import Frame, Snapshot

Weight = Literal["on_cpu", "off_cpu", "snapshots"]
#: What a stack can be weighed by.
WEIGHTS: Final = ("on_cpu", "off_cpu", "snapshots")

Stack = tuple[Frame, ...]

#: Where an empty stack is shown: a greenlet's time before its first frame
#: was seen (a greenlet that ran from its start to its end, or to the
#: session's stop, without a switch), and its first ``switch_in``.
START_FRAME: Final = Frame("", "<greenlet start>", 0)
#: Where an ``exit`` snapshot (empty stack) is counted.
EXIT_FRAME: Final = Frame("", "<greenlet exit>", 0)


def check_weight(weight: str) -> None:
    if weight not in WEIGHTS:
        msg = f"weight must be one of {', '.join(WEIGHTS)}, not {weight!r}."
        raise ConfigurationError(msg)


#: The stacks ``shown`` gives an empty one: always the same objects.
_START_STACK: Final = (START_FRAME,)
_EXIT_STACK: Final = (EXIT_FRAME,)


def shown(stack: Stack, snapshot: Snapshot | None = None) -> Stack:
    """``stack`` as exporters show it: never empty (see ``START_FRAME``)."""
    if stack:
        return stack
    if snapshot is not None and snapshot.event == "exit":
        return _EXIT_STACK
    return _START_STACK


def weighted(report: Report, weight: str) -> Iterator[tuple[int, str, Stack, int]]:
    """``(greenlet_id, greenlet_name, stack, value)`` with value > 0 and a
    stack that is never empty."""
    check_weight(weight)
    if weight == "snapshots":
        counts: dict[tuple[int, str, Stack], int] = {}
        for (greenlet_id, name, stack, exited), count in report.counts().items():
            key = (greenlet_id, name, stack or ((EXIT_FRAME,) if exited else (START_FRAME,)))
            counts[key] = counts.get(key, 0) + count
        for (greenlet_id, name, stack), count in counts.items():
            yield greenlet_id, name, stack, count
        return
    merged: dict[tuple[int, str, Stack], int] = {}
    for cell in report.stacks:
        value = cell.on_cpu_ns if weight == "on_cpu" else cell.off_cpu_ns
        if value > 0:
            key = (cell.greenlet_id, cell.greenlet_name, shown(cell.stack))
            merged[key] = merged.get(key, 0) + value
    for (greenlet_id, name, stack), value in merged.items():
        yield greenlet_id, name, stack, value


def frame_label(frame: Frame) -> str:
    if not frame.filename:
        return frame.function  # a pseudo-frame: <greenlet start>
    return f"{frame.function} ({frame.filename}:{frame.lineno})"


def greenlet_label(greenlet_id: int, name: str) -> str:
    """``"name [0xid]"``; a merged entry (id 0 for a merged report's one,
    below 0 for the greenlets a streamed report merged) is its name."""
    if greenlet_id <= 0:
        return name or "greenlet"
    return f"{name or 'greenlet'} [{greenlet_id:#x}]"


def stack_values(report: Report) -> dict[tuple[int, str, Stack], list[int]]:
    """``(greenlet_id, greenlet_name, stack) -> [on_cpu_ns, off_cpu_ns, snapshots]``."""
    values: dict[tuple[int, str, Stack], list[int]] = {}
    for column, weight in enumerate(WEIGHTS):
        for greenlet_id, name, stack, value in weighted(report, weight):
            cell = values.setdefault((greenlet_id, name, stack), [0] * len(WEIGHTS))
            cell[column] += value
    return values


#: Views grouped by a tag show the sessions without it under this value.
NO_VALUE: Final = "(none)"
#: A tag is worth a view of its own when its sessions have at most this many
#: distinct values, and fewer than there are sessions with it: a request's
#: path, method or status, not its duration or id, whose view would be one
#: entry per session again.
TAG_VALUES: Final = 100


def viewable_tags(report: Report) -> list[str]:
    """The tags worth a view of their own (see :data:`TAG_VALUES`), sorted."""
    values: dict[str, set[str]] = {}
    sessions: dict[str, int] = {}
    for session in report.sessions:
        for key, value in session.tags.items():
            values.setdefault(key, set()).add(value)
            sessions[key] = sessions.get(key, 0) + 1
    return sorted(
        key for key, found in values.items() if len(found) <= min(TAG_VALUES, sessions[key] - 1)
    )


def default_group(report: Report) -> str | None:
    """What a view of many sessions groups by when not told: ``path``, when
    it is worth a view (a web service's profile is about its paths)."""
    return "path" if "path" in viewable_tags(report) else None


def _check_tag(report: Report, tag: str) -> None:
    if not any(tag in session.tags for session in report.sessions):
        tags = sorted({key for session in report.sessions for key in session.tags})
        msg = f"no session has the tag {tag!r}" + (
            f"; the sessions have {', '.join(tags)}." if tags else "; no session has tags."
        )
        raise ConfigurationError(msg)


def splits(report: Report, tag: str) -> dict[str, Report]:
    """``report.split_by(tag)``, the sessions without it under
    :data:`NO_VALUE`, or ConfigurationError naming the tags there are when
    no session has this one."""
    _check_tag(report, tag)
    return report.split_by(tag, missing=NO_VALUE)


def groups(report: Report, tag: str) -> dict[str, Report]:
    """Like :func:`splits`, each value's sessions merged (``report.group_by``)."""
    _check_tag(report, tag)
    return report.group_by(tag, missing=NO_VALUE)


def grouped(report: Report, group_by: str | None) -> list[tuple[str, Report]]:
    """``[(label, report)]``: one merged report per value of ``group_by``
    (heaviest first, labelled ``tag=value``), or ``report`` alone."""
    if group_by is None:
        return [("", report)]
    return [(f"{group_by}={value}", merged) for value, merged in groups(report, group_by).items()]


def timeline_tracks(report: Report) -> dict[tuple[str, int], str]:
    """One timeline track per greenlet of each session, in time order, with
    its label: ``name [0xid]``, and the session's number when the greenlet
    is in several sessions (a pool greenlet that served many requests, or
    nested sessions). A merged report's tracks are its unmerged greenlets'."""
    source = report.unmerged or report
    firsts: dict[tuple[str, int], tuple[int, str]] = {}
    for segment in source.segments:
        key = (segment.session_id, segment.greenlet_id)
        if key not in firsts:
            firsts[key] = (segment.start_ns, segment.greenlet_name)
    sessions_of: dict[int, int] = {}
    for _, greenlet_id in firsts:
        sessions_of[greenlet_id] = sessions_of.get(greenlet_id, 0) + 1
    number = {s.session_id: index for index, s in enumerate(source.sessions, 1)}
    tracks = {}
    for key in sorted(firsts, key=lambda key: (firsts[key][0], key)):
        session_id, greenlet_id = key
        label = greenlet_label(greenlet_id, firsts[key][1])
        if sessions_of[greenlet_id] > 1:
            label += f" (session {number.get(session_id, '?')})"
        tracks[key] = label
    return tracks


def origin_ns(report: Report) -> int:
    """The first moment the report knows of: times in exports count from it."""
    starts = [s.start_ns for s in report.sessions if s.start_ns]
    starts += [s.start_ns for s in report.slices[:1]] + [w.start_ns for w in report.waits[:1]]
    first = report.first_snapshot_ns
    starts += [first] if first is not None else []
    return min(starts, default=0)
