"""Raw stacks on the switch path, readable frames later.

A raw stack is a chain of :class:`StackNode` objects, innermost first: the
code objects and ``f_lasti`` of one or more frames, and a link to the node
of the frames below. Stacks of one greenlet share their outer nodes, so a
snapshot costs (and is formatted for) the frames that changed since the
last one, not the depth of the stack.

How the switch path knows what did not change (Python 3.12+): it leaves the
node of each frame it walked in that frame's ``f_trace`` slot. A frame found
later with its own node still there is the very same frame object, alive
all along (a new frame starts with ``f_trace`` unset, and a dead one takes
its ``f_trace`` with it), so it is still in the same call, and so is every
frame below it: the rest of the stack is that node's. No frame is ever held,
so nothing is kept alive and nothing is freed on the switch path. Generator
and coroutine frames are never marked (they can be resumed from another
caller); a node found on another frame than its own is not trusted, nor one
that would make the stack deeper than the walk's limit; a frame whose
``f_trace`` something else set (a debugger, coverage) is walked every time
and left alone.

Before 3.12 a frame's ``f_trace`` is also what lets code set its
``f_lineno`` (an error otherwise, and a crash if it is let through), and
Python calls it on every line while any ``sys.settrace`` tracer runs; so
there greenprof marks nothing and walks the whole stack each time, into one
node.
"""

from __future__ import annotations

import sys
from operator import is_
from types import CodeType, FrameType
from typing import Any, Final

from ._threads import allocate_real_lock
from .snapshot import Frame

#: ``co_flags`` of code whose frames can be resumed from another caller
#: (generators, coroutines, async generators): never marked.
UNTRUSTED_CODE: Final = 0x20 | 0x80 | 0x100 | 0x200
#: Whether the switch path leaves nodes in ``f_trace`` (see above).
MARKS: Final = sys.version_info >= (3, 12)


def code_name(code: CodeType) -> str:
    """The name a frame of ``code`` is shown by: qualified on 3.11+."""
    if sys.version_info >= (3, 11):
        return code.co_qualname
    return code.co_name


class StackNode:
    """A few frames of a raw stack, and the node of the frames below.

    ``code`` and ``lasti`` (``f_lasti``) say where the node's first
    (innermost) frame was; ``rest`` is ``(code, f_lasti, ...)`` for more
    frames below it in this node, innermost first (empty for a node that
    marks a frame). ``outer`` is None at the bottom of the greenlet's stack
    or where a walk stopped at its limit; ``height`` counts the frames of
    the whole chain. ``owner`` is ``id()`` of the frame whose ``f_trace``
    holds this node (0: none). ``frames`` caches the formatted stack,
    outermost first.

    Python calls a frame's ``f_trace`` only while a ``sys.settrace`` tracer
    runs, and only for frames that tracer left alone. A node then hands the
    event to that tracer, as if the frame's ``f_trace`` had been unset: a
    tool that gives its own function only to frames whose ``f_trace`` is
    None (a debugger, coverage) still sees their events, and what it
    returns becomes the frame's ``f_trace``, as it would have. A tool that
    sets an attribute on what it finds in ``f_trace`` may do so.
    """

    __slots__ = ("__dict__", "code", "frames", "height", "lasti", "outer", "owner", "rest")

    code: CodeType
    lasti: int
    rest: tuple[CodeType | int, ...]
    outer: StackNode | None
    height: int
    owner: int
    frames: tuple[Frame, ...] | None

    def __init__(
        self,
        code: CodeType,
        lasti: int,
        outer: StackNode | None,
        rest: tuple[CodeType | int, ...] = (),
    ) -> None:
        self.code = code
        self.lasti = lasti
        self.rest = rest
        self.outer = outer
        self.height = 1 + len(rest) // 2 + (outer.height if outer is not None else 0)
        self.owner = 0
        self.frames = None

    def __call__(self, frame: FrameType, event: str, arg: Any) -> Any:
        tracer: Any = sys.gettrace()
        return tracer(frame, event, arg) if tracer is not None else None

    def __repr__(self) -> str:
        return f"<StackNode {self.code.co_name} at {self.lasti}, {self.height} frame(s)>"


#: A stack with no frames (a greenlet that has not started, or has ended).
RawStack = StackNode | None
EMPTY_STACK: RawStack = None

_new_node = object.__new__
#: The height of a node whose chain is still being built: never trusted.
_UNMEASURED: Final = sys.maxsize // 2


def trusted(node: StackNode, frame: FrameType, above: int, depth: int) -> bool:
    """Whether ``node``, found in ``frame.f_trace`` after walking ``above``
    frames, stands for ``frame`` and everything below it."""
    return node.owner == id(frame) and node.code is frame.f_code and node.height + above <= depth


def capture(frame: FrameType | None, depth: int, *, mark: bool = MARKS) -> RawStack:
    """The stack whose top frame is ``frame``, innermost first, at most
    ``depth`` frames.

    A frame whose own node is in its ``f_trace`` ends the walk (see the
    module docstring). With ``mark`` the frames walked above it get a node
    each, left in their ``f_trace``; without, they go into one node and
    nothing is written (before 3.12, and for a sampler reading another
    thread's frames). A walk that reaches ``depth`` frames first keeps
    those, unmarked. Runs on the switch path: nothing here raises, switches
    or frees a user object. (The tracer inlines the case where the top
    frame is unchanged.)
    """
    if not MARKS:
        return walk_whole(frame, depth) if frame is not None else None
    if not mark:
        return _capture_run(frame, depth)
    top = frame
    head = _new_node(StackNode)
    node = head
    walked = 0
    while frame is not None:
        found = frame.f_trace
        if type(found) is StackNode and trusted(found, frame, walked, depth):
            lasti = frame.f_lasti
            if lasti == found.lasti:
                base = found
            else:  # the same call, at another place now
                base = _new_node(StackNode)
                base.code = found.code
                base.lasti = lasti
                base.rest = ()
                base.outer = found.outer
                base.height = found.height
                base.owner = found.owner
                base.frames = None
                frame.f_trace = base
            node.outer = base
            return _measure(head.outer, walked, base.height)
        if walked == depth:
            node.outer = None
            _unmark(top, head.outer)
            return _measure(head.outer, walked, 0)
        new = _new_node(StackNode)
        new.code = code = frame.f_code
        new.lasti = frame.f_lasti
        new.rest = ()
        new.frames = None
        # Complete before it is published in f_trace, and untrusted until
        # _measure() gives it its height: a sampler thread may read it.
        new.outer = None
        new.height = _UNMEASURED
        node.outer = new
        node = new
        if (found is None or type(found) is StackNode) and not code.co_flags & UNTRUSTED_CODE:
            new.owner = id(frame)
            frame.f_trace = new
        else:
            new.owner = 0
        frame = frame.f_back
        walked += 1
    node.outer = None
    return _measure(head.outer, walked, 0)


def _measure(first: StackNode | None, walked: int, below: int) -> RawStack:
    """Set the heights of the ``walked`` new nodes from ``first`` down, on
    top of ``below`` frames."""
    node = first
    height = walked + below
    while walked:
        node.height = height  # type: ignore[union-attr]
        height -= 1
        walked -= 1
        node = node.outer  # type: ignore[union-attr]
    return first


def _unmark(frame: FrameType | None, node: StackNode | None) -> None:
    """Take back the marks of a walk that stopped at its limit: the nodes
    below them are missing."""
    while frame is not None and node is not None:
        if frame.f_trace is node:
            frame.f_trace = None
        node.owner = 0
        frame = frame.f_back
        node = node.outer


def _capture_run(frame: FrameType | None, depth: int) -> RawStack:
    """``capture()`` without marking: the frames above the first trusted
    mark (if any), in one node."""
    pairs: list[CodeType | int] = []
    append = pairs.append
    walked = 0
    base: StackNode | None = None
    while frame is not None and walked < depth:
        found = frame.f_trace
        if type(found) is StackNode and trusted(found, frame, walked, depth):
            if frame.f_lasti == found.lasti:
                base = found
            else:
                base = StackNode(found.code, frame.f_lasti, found.outer)
            break
        append(frame.f_code)
        append(frame.f_lasti)
        frame = frame.f_back
        walked += 1
    return _run(pairs, base)


def walk_whole(frame: FrameType, depth: int) -> RawStack:
    """The innermost ``depth`` frames in one node, trusting no mark: the
    switch path before 3.12, where there are none. Unrolled: this loop is
    most of such a snapshot's cost."""
    if depth <= 0:
        return None
    node = _new_node(StackNode)
    node.code = frame.f_code
    node.lasti = frame.f_lasti
    frame = frame.f_back  # type: ignore[assignment]
    pairs: list[CodeType | int] = []
    append = pairs.append
    limit = depth - 1
    while frame is not None and limit > 0:
        append(frame.f_code)
        append(frame.f_lasti)
        frame = frame.f_back  # type: ignore[assignment]
        if frame is None:
            break
        append(frame.f_code)
        append(frame.f_lasti)
        frame = frame.f_back  # type: ignore[assignment]
        if frame is None:
            break
        append(frame.f_code)
        append(frame.f_lasti)
        frame = frame.f_back  # type: ignore[assignment]
        if frame is None:
            break
        append(frame.f_code)
        append(frame.f_lasti)
        frame = frame.f_back  # type: ignore[assignment]
        limit -= 4
    if len(pairs) > 2 * (depth - 1):
        del pairs[2 * (depth - 1) :]  # up to 3 frames too many
    node.rest = tuple(pairs)
    node.outer = None
    node.height = 1 + len(pairs) // 2
    node.owner = 0
    node.frames = None
    return node


def _run(pairs: list[CodeType | int], base: StackNode | None) -> RawStack:
    """One unmarked node for ``pairs`` on top of ``base``."""
    if not pairs:
        return base
    node = _new_node(StackNode)
    node.code = pairs[0]  # type: ignore[assignment]
    node.lasti = pairs[1]  # type: ignore[assignment]
    node.rest = tuple(pairs[2:])
    node.outer = base
    node.height = len(pairs) // 2 + (base.height if base is not None else 0)
    node.owner = 0
    node.frames = None
    return node


def _same_run(
    rest: tuple[CodeType | int, ...],
    seen: list[tuple[CodeType, tuple[CodeType | int, ...], tuple[Frame, ...]]],
) -> tuple[Frame, ...] | None:
    """The stack of the entry of ``seen`` whose frames below the top are
    ``rest`` (the same code objects: equal bytecode elsewhere is another
    stack), if any."""
    for _, other, frames in seen:
        if other == rest and all(map(is_, rest[0::2], other[0::2])):
            return frames
    return None


def _line_for_offset(code: CodeType, offset: int) -> int:
    for start, end, line in code.co_lines():
        if start <= offset < end:
            return line if line is not None else code.co_firstlineno
    return code.co_firstlineno


class FrameFormatter:
    """Turns raw stacks into ``Frame`` tuples.

    Each node keeps its formatted stack, so a node shared by many snapshots
    is formatted once; and formatted stacks are shared by content (keyed by
    the formatted stack below and the node's code ids and offsets), so the
    same path taken again with new frames costs one lookup a node. Codes are
    kept in ``_codes`` while their ids are in keys, so an id is never reused
    meanwhile. Profilers drain from any thread: a cache hit, or a stack like
    the last one, needs no lock; filling and clearing take one.
    """

    def __init__(self, max_entries: int = 1 << 16) -> None:
        self._max_entries = max_entries
        # Stacks are up to ``max_depth`` frames long: fewer of them.
        self._max_stacks = max(1, max_entries // 4)
        self._frames: dict[tuple[int, int], Frame] = {}
        # (id(stack below), ids of a node's codes, its offsets) -> (stack,
        # stack below): the value keeps the stack below alive, so its id
        # stays its own.
        self._stacks: dict[tuple[int, ...], tuple[tuple[Frame, ...], tuple[Frame, ...]]] = {}
        self._codes: dict[int, CodeType] = {}
        self._lock = allocate_real_lock()
        # The last node of several frames formatted, and the stack below it
        # (replaced whole, so read without the lock). Before 3.12 every
        # snapshot is one such node, walked anew: a greenlet waiting at the
        # same place again makes a new node equal to the last one, and
        # comparing with that costs less than the key. (From 3.12 only a
        # sampler's captures make such nodes.)
        self._last: tuple[StackNode, tuple[Frame, ...]] | None = None
        # (id(stack below), id(top code), top offset, len(rest)) -> a few
        # (top code, rest, stack) formatted with that top: see frames().
        self._tops: dict[
            tuple[int, ...], list[tuple[CodeType, tuple[CodeType | int, ...], tuple[Frame, ...]]]
        ] = {}

    def after_fork_in_child(self) -> None:
        """A new lock: a thread of the parent may have held this one at the fork."""
        self._lock = allocate_real_lock()

    def _frame(self, code: CodeType, offset: int) -> Frame:
        # Under self._lock.
        key = (id(code), offset)
        found = self._frames.get(key)
        if found is None:
            found = Frame(code.co_filename, code_name(code), _line_for_offset(code, offset))
            self._frames[key] = found
        return found

    def stack(self, raw: RawStack, depth: int) -> tuple[Frame, ...]:
        """Outermost first, keeping at most the ``depth`` innermost frames."""
        frames = self.frames(raw)
        return frames[-depth:] if len(frames) > depth else frames

    def frames(self, raw: RawStack) -> tuple[Frame, ...]:
        """Every frame of ``raw``, outermost first."""
        if raw is None:
            return ()
        found = raw.frames
        if found is not None:
            return found
        chain: list[StackNode] = []
        node: StackNode | None = raw
        while node is not None and node.frames is None:
            chain.append(node)
            node = node.outer
        below = node.frames if node is not None else None
        frames: tuple[Frame, ...] = below or ()
        stacks = self._stacks
        for node in reversed(chain):
            rest = node.rest
            if rest:
                # None below matches nothing: nothing was formatted yet.
                last, last_below = self._last or (node, None)
                if (
                    last_below is frames
                    and last.lasti == node.lasti
                    and last.code is node.code
                    and last.rest == rest
                    # == matches distinct code objects with equal bytecode;
                    # only the same code objects are the same stack.
                    and all(map(is_, rest[0::2], last.rest[0::2]))
                ):
                    frames = node.frames = last.frames  # type: ignore[assignment]
                    continue
                # A stack formatted before (a request's wait sites come back
                # again and again): found by its top frame, the frames under
                # it and its length, then compared directly; cheaper than
                # hashing a key of every frame.
                top = (id(frames), id(node.code), node.lasti, len(rest))
                seen = self._tops.get(top)
                found = _same_run(rest, seen) if seen is not None else None
                if found is not None:
                    self._last = (node, frames)
                    frames = node.frames = found
                    continue
                key: tuple[int, ...] = (
                    id(frames),
                    id(node.code),
                    node.lasti,
                    *map(id, rest[0::2]),
                    *rest[1::2],  # type: ignore[arg-type]
                )
            else:
                key = (id(frames), id(node.code), node.lasti)
            hit = stacks.get(key)
            below = frames
            frames = self._add(key, frames, node) if hit is None else hit[0]
            node.frames = frames
            if rest:
                self._last = (node, below)
                self._remember(top, node, frames)
        return frames

    def _remember(self, top: tuple[int, ...], node: StackNode, frames: tuple[Frame, ...]) -> None:
        with self._lock:
            seen = self._tops.setdefault(top, [])
            if len(seen) >= 8:
                del seen[0]
            # The node's code stays alive in the entry: its id in ``top`` stays its own.
            seen.append((node.code, node.rest, frames))

    def _add(
        self, key: tuple[int, ...], below: tuple[Frame, ...], node: StackNode
    ) -> tuple[Frame, ...]:
        with self._lock:
            if len(self._stacks) >= self._max_stacks or len(self._frames) >= self._max_entries:
                # ``_codes`` last: ids in keys are safe only while it keeps
                # their code objects alive.
                self._stacks.clear()
                self._frames.clear()
                self._tops.clear()
                self._codes.clear()
            codes = [node.code, *node.rest[0::2]]
            offsets = [node.lasti, *node.rest[1::2]]
            more = [
                self._frame(code, offset)  # type: ignore[arg-type]
                for code, offset in zip(codes, offsets, strict=True)
            ]
            more.reverse()
            frames = (*below, *more)
            for code in codes:
                self._codes[id(code)] = code  # type: ignore[assignment]
            self._stacks[key] = (frames, below)
        return frames
