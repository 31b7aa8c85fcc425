"""One interval of continuous profiling: per endpoint and stack, on-CPU ns,
off-CPU ns and snapshots, in memory bounded by caps whatever the traffic.

A request's session is folded in with :class:`~greenprof.Report`'s own
attribution, so an interval says what ``profiler.report()`` would have
said of the same requests, added up per endpoint.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Final

import attrs

from .._report import Report
from ..exporters._common import shown
from ..snapshot import Frame, Session, Snapshot

__all__ = ["OTHER", "OTHER_STACK", "Endpoint", "Interval", "IntervalTable", "endpoint_of"]

Stack = tuple[Frame, ...]

#: The endpoint label of requests past ``max_endpoints``.
OTHER: Final = "other"
#: The one stack, per endpoint, that takes the time of stacks past ``max_stacks``.
OTHER_STACK: Final = (Frame("", "<other stacks>", 0),)


@attrs.frozen
class Endpoint:
    """What a request is labelled with: its method and its route template
    (the app's ``route`` tag) or else its path."""

    method: str
    path: str


@attrs.frozen
class Interval:
    """What the requests that ended from ``start_ns`` to ``end_ns`` (wall
    clock ns) spent, per endpoint and exact stack, outermost frame first:
    ``[on_cpu_ns, off_cpu_ns, snapshots]``."""

    start_ns: int
    end_ns: int
    #: The profiler's static tags (service, version, host).
    tags: Mapping[str, str]
    stacks: Mapping[Endpoint, Mapping[Stack, Sequence[int]]]
    #: Requests folded in.
    requests: int = 0
    #: Stack entries that found the stack cap reached and went to ``OTHER_STACK``.
    stacks_folded: int = 0
    #: Requests that found the endpoint cap reached and went to ``OTHER``.
    endpoints_folded: int = 0

    def totals(self, endpoint: Endpoint) -> list[int]:
        """``[on_cpu_ns, off_cpu_ns, snapshots]`` of one endpoint."""
        total = [0, 0, 0]
        for values in self.stacks.get(endpoint, {}).values():
            for column, value in enumerate(values):
                total[column] += value
        return total


def endpoint_of(session: Session) -> Endpoint:
    """The endpoint of a request's session: the WSGI middleware's ``method``
    and ``path`` tags, the app's ``route`` tag first when it set one."""
    tags = session.tags
    return Endpoint(tags.get("method", ""), tags.get("route") or tags.get("path", ""))


class IntervalTable:
    """The interval being filled. Never more than ``max_stacks`` distinct
    (endpoint, stack) entries plus one ``OTHER_STACK`` per endpoint, and
    never more than ``max_endpoints`` endpoints plus ``OTHER``. Not thread
    safe: its owner holds a lock."""

    def __init__(self, start_ns: int, *, max_stacks: int, max_endpoints: int) -> None:
        self.start_ns = start_ns
        self.max_stacks = max_stacks
        self.max_endpoints = max_endpoints
        self.cells: dict[Endpoint, dict[Stack, list[int]]] = {}
        #: Distinct (endpoint, stack) entries, ``OTHER_STACK`` ones not counted.
        self.entries = 0
        self.requests = 0
        self.stacks_folded = 0
        self.endpoints_folded = 0
        # (id(endpoint's stacks), id(stack)) -> (stack, its values): the
        # formatter hands the same stack object out for the same frames, so
        # a stack seen before is found without hashing its frames again.
        # The stack is kept, so its id stays its own.
        self._seen: dict[tuple[int, int], tuple[Stack, list[int]]] = {}

    def add_session(self, session: Session, snapshots: Sequence[Snapshot]) -> None:
        """Fold one request's session in: its time per stack as
        :class:`~greenprof.Report` attributes it, and its snapshots."""
        report = Report(snapshots, sessions=[session], timeline=False)
        stacks = self._stacks_of(endpoint_of(session))
        for cell in report.stacks:
            if cell.on_cpu_ns or cell.off_cpu_ns:
                self._add(stacks, shown(cell.stack), cell.on_cpu_ns, cell.off_cpu_ns, 0)
        for snapshot in report.snapshots:
            self._add(stacks, shown(snapshot.stack, snapshot), 0, 0, 1)
        self.requests += 1

    def add(self, endpoint: Endpoint, stack: Stack, values: Sequence[int]) -> None:
        """Add ``[on_cpu_ns, off_cpu_ns, snapshots]`` of one stack (one request)."""
        self._add(self._stacks_of(endpoint), stack, *values)
        self.requests += 1

    def _stacks_of(self, endpoint: Endpoint) -> dict[Stack, list[int]]:
        stacks = self.cells.get(endpoint)
        if stacks is None:
            if len(self.cells) >= self.max_endpoints and endpoint.path != OTHER:
                self.endpoints_folded += 1
                return self._stacks_of(Endpoint(OTHER, OTHER))
            stacks = self.cells[endpoint] = {}
        return stacks

    def _add(
        self, stacks: dict[Stack, list[int]], stack: Stack, on_cpu: int, off_cpu: int, count: int
    ) -> None:
        key = (id(stacks), id(stack))
        seen = self._seen.get(key)
        if seen is not None and seen[0] is stack:
            values = seen[1]
        else:
            values = self._values(stacks, stack)
            if values is not stacks.get(OTHER_STACK):  # its own entry
                if len(self._seen) >= 4 * self.max_stacks:
                    self._seen.clear()  # new objects for the same stacks: start afresh
                self._seen[key] = (stack, values)
        values[0] += on_cpu
        values[1] += off_cpu
        values[2] += count

    def _values(self, stacks: dict[Stack, list[int]], stack: Stack) -> list[int]:
        values = stacks.get(stack)
        if values is None:
            if self.entries >= self.max_stacks and stack != OTHER_STACK:
                self.stacks_folded += 1
                stack = OTHER_STACK
                values = stacks.get(stack)
            if values is None:
                values = stacks[stack] = [0, 0, 0]
                if stack != OTHER_STACK:
                    self.entries += 1
        return values

    def close(self, end_ns: int, tags: Mapping[str, str]) -> Interval:
        return Interval(
            start_ns=self.start_ns,
            end_ns=end_ns,
            tags=dict(tags),
            stacks=self.cells,
            requests=self.requests,
            stacks_folded=self.stacks_folded,
            endpoints_folded=self.endpoints_folded,
        )
