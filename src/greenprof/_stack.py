"""Raw stacks on the switch path, readable frames later.

A raw stack is a chain of :class:`StackNode` objects, innermost first: a
frame's code object and ``f_lasti``, and a link to the node of the frame
below. Stacks of one greenlet share their
outer nodes, so a snapshot costs (and is formatted for) the frames that
changed since the last one, not the depth of the stack.

How the switch path knows what did not change: it leaves the node of a frame
it walked in that frame's ``f_trace`` slot. A frame found later with its node
still there is the very same frame object, alive all along (a new frame
starts with ``f_trace`` unset, and a dead one takes its ``f_trace`` with it),
so it is still in the same call, and so is every frame below it: the rest of
the stack is that node's. No frame is ever held, so nothing is kept alive
and nothing is freed on the switch path. Generator and coroutine frames are
never trusted that way (they can be resumed from another caller), and a
frame whose ``f_trace`` something else set (a debugger, coverage) is walked
every time and left alone.
"""

from __future__ import annotations

import sys
from types import CodeType, FrameType
from typing import Any, Final

from ._threads import allocate_real_lock
from .snapshot import Frame

#: ``co_flags`` of code whose frames can be resumed from another caller:
#: generators, coroutines, async generators.
UNTRUSTED_CODE: Final = 0x20 | 0x80 | 0x100 | 0x200


class StackNode:
    """One frame of a raw stack, and the node of the frame below it.

    ``code`` and ``lasti`` (``f_lasti``) say where the frame was; ``outer``
    is None at the bottom of the greenlet's stack (or where a walk stopped
    at its depth limit). ``frames`` caches the formatted stack, outermost
    first, this frame last.

    A node in a frame's ``f_trace`` describes that frame and everything
    below it. Python calls ``f_trace`` only while a ``sys.settrace`` tracer
    runs, and only for frames that tracer left alone; a node then does
    nothing and returns None, so tracing of that frame stays as it was.
    """

    __slots__ = ("code", "frames", "lasti", "outer")

    code: CodeType
    lasti: int
    outer: StackNode | None
    frames: tuple[Frame, ...] | None

    def __init__(self, code: CodeType, lasti: int, outer: StackNode | None) -> None:
        self.code = code
        self.lasti = lasti
        self.outer = outer
        self.frames = None

    def __call__(self, frame: FrameType, event: str, arg: Any) -> None:
        return None

    def __repr__(self) -> str:
        return f"<StackNode {self.code.co_name} at {self.lasti}>"


#: A stack with no frames (a greenlet that has not started, or has ended).
RawStack = StackNode | None
EMPTY_STACK: RawStack = None

_new_node = object.__new__


def capture(frame: FrameType | None, depth: int, *, mark: bool = True) -> RawStack:
    """The stack whose top frame is ``frame``, innermost first.

    A frame carrying a node from an earlier walk ends the walk (see the
    module docstring); with ``mark``, the frames above it get new nodes,
    each left in its frame's ``f_trace``. Without ``mark`` nothing is
    written: for a sampler reading another thread's frames. A walk that
    reaches ``depth`` frames first keeps those, unmarked: what is below them
    is unknown. Runs on the switch path: nothing here raises, switches or
    frees a user object. (The tracer inlines the case where the top frame
    is unchanged.)
    """
    top = frame
    first: StackNode | None = None
    node: StackNode | None = None
    limit = depth
    while frame is not None:
        found = frame.f_trace
        if found.__class__ is StackNode and not found.code.co_flags & UNTRUSTED_CODE:
            lasti = frame.f_lasti
            if lasti == found.lasti:
                base = found
            else:  # the same call, at another place now
                base = _new_node(StackNode)
                base.code = found.code
                base.lasti = lasti
                base.outer = found.outer
                base.frames = None
                if mark:
                    frame.f_trace = base
            if node is None:
                return base
            node.outer = base
            return first
        if not limit:
            if mark:
                _unmark(top, first)
            return first
        new = _new_node(StackNode)
        new.code = frame.f_code
        new.lasti = frame.f_lasti
        new.outer = None
        new.frames = None
        if node is None:
            first = new
        else:
            node.outer = new
        node = new
        if mark and (found is None or found.__class__ is StackNode):
            frame.f_trace = new
        frame = frame.f_back
        limit -= 1
    return first


def _unmark(frame: FrameType | None, node: StackNode | None) -> None:
    """Take back the marks a walk that stopped at its depth limit left:
    the nodes below them are missing."""
    while frame is not None and node is not None:
        if frame.f_trace is node:
            frame.f_trace = None
        frame = frame.f_back
        node = node.outer


def _line_for_offset(code: CodeType, offset: int) -> int:
    for start, end, line in code.co_lines():
        if start <= offset < end:
            return line if line is not None else code.co_firstlineno
    return code.co_firstlineno


class FrameFormatter:
    """Turns raw stacks into ``Frame`` tuples.

    Each node keeps its formatted stack, so a node shared by many snapshots
    is formatted once; and formatted stacks are shared by content (keyed by
    the stack below, the code's id and the offset), so the same path taken
    again with new frames costs one lookup a frame. Codes are kept in
    ``_codes`` while their ids are in keys, so an id is never reused
    meanwhile. Profilers drain from any thread: a cache hit needs no lock;
    filling and clearing take one.
    """

    def __init__(self, max_entries: int = 1 << 16) -> None:
        self._max_entries = max_entries
        self._frames: dict[tuple[int, int], Frame] = {}
        # (id(stack below), id(code), offset) -> (stack, stack below): the
        # value keeps the stack below alive, so its id stays its own.
        self._stacks: dict[tuple[int, int, int], tuple[tuple[Frame, ...], tuple[Frame, ...]]] = {}
        self._codes: dict[int, CodeType] = {}
        self._lock = allocate_real_lock()

    def _frame(self, code: CodeType, offset: int) -> Frame:
        # Under self._lock.
        key = (id(code), offset)
        found = self._frames.get(key)
        if found is None:
            if sys.version_info >= (3, 11):
                name = code.co_qualname
            else:
                name = code.co_name
            found = Frame(code.co_filename, name, _line_for_offset(code, offset))
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
            key = (id(frames), id(node.code), node.lasti)
            hit = stacks.get(key)
            frames = self._add(key, frames, node.code, node.lasti) if hit is None else hit[0]
            node.frames = frames
        return frames

    def _add(
        self, key: tuple[int, int, int], below: tuple[Frame, ...], code: CodeType, offset: int
    ) -> tuple[Frame, ...]:
        with self._lock:
            if len(self._stacks) >= self._max_entries or len(self._frames) >= self._max_entries:
                # ``_codes`` last: ids in keys are safe only while it keeps
                # their code objects alive.
                self._stacks.clear()
                self._frames.clear()
                self._codes.clear()
            frames = (*below, self._frame(code, offset))
            self._codes[id(code)] = code
            self._stacks[key] = (frames, below)
        return frames
