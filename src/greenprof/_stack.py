"""Raw stacks on the switch path, readable frames later.

A raw stack is a chain of tuples, innermost first: the code objects and
``f_lasti`` of one or more frames, and the tuple of the frames below.
Stacks of one greenlet share their outer tuples, so a snapshot costs (and
is formatted for) the frames that changed since the last one, not the depth
of the stack; and from 3.12 the same path makes the same tuples, even in
new frames (every request's), so it is formatted once.

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
node. From 3.12 a session with a ``min_duration`` marks nothing either (see
``GreenletBuffer.marks``): most such sessions are dropped unread, and on a
server's switch path a whole walk costs less than marking. Such a walk
stops at the session's root, the frame under the one that called
``start()``, which ``start()`` marks (see ``start_walk``): the one frame
the start of any session marks.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
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
    """The mark left in a frame's ``f_trace`` (3.12+): where the frame was
    when a walk passed it, and the raw stack it stands for.

    ``code`` and ``lasti`` (``f_lasti``) say where the frame was; ``key``
    is the raw stack of that frame and every frame below it, ``(code,
    lasti, raw stack below)``; ``height`` counts the frames of ``key``.
    ``owner`` is ``id()`` of the frame whose ``f_trace`` holds this node (0:
    none). Nodes live in frames only: records hold their ``key``, never a
    node, so a frame's node goes with the frame; but for a session's root
    (see ``start_walk``), which its greenlet's watch holds too, until the
    session stops or a walk finds the frame gone.

    Python calls a frame's ``f_trace`` only while a ``sys.settrace`` tracer
    runs, and only for frames that tracer left alone. A node then hands the
    event to that tracer, as if the frame's ``f_trace`` had been unset: a
    tool that gives its own function only to frames whose ``f_trace`` is
    None (a debugger, coverage) still sees their events, and what it
    returns becomes the frame's ``f_trace``, as it would have. A tool that
    sets an attribute on what it finds in ``f_trace`` may do so.
    """

    __slots__ = ("__dict__", "code", "height", "key", "lasti", "owner")

    code: CodeType
    lasti: int
    height: int
    owner: int
    key: tuple[Any, ...]

    def __init__(self, code: CodeType, lasti: int, below: StackNode | None) -> None:
        self.code = code
        self.lasti = lasti
        self.height = 1 + (below.height if below is not None else 0)
        self.owner = 0
        self.key = (code, lasti, below.key if below is not None else None)

    def __call__(self, frame: FrameType, event: str, arg: Any) -> Any:
        tracer: Any = sys.gettrace()
        return tracer(frame, event, arg) if tracer is not None else None

    def __repr__(self) -> str:
        return f"<StackNode {self.code.co_name} at {self.lasti}, {self.height} frame(s)>"


#: A raw stack, innermost frame first: ``(code, f_lasti, code, f_lasti,
#: ..., below)``, one or more frames and then the raw stack of the frames
#: under them (None at the bottom, or where a walk stopped at its limit).
#: Stacks of one greenlet share the tuples of their outer frames. Only
#: exact tuples, code objects, ints and None: the garbage collector stops
#: tracking such a tuple at its first collection, so records kept for a
#: long session cost it nothing (a node or a list would be traversed at
#: every full collection, for as long as the session runs).
RawStack = tuple[Any, ...] | None
EMPTY_STACK: RawStack = None

_new_node = object.__new__
#: The height of a node whose chain is still being built: never trusted.
_UNMEASURED: Final = sys.maxsize // 2


def height(raw: RawStack) -> int:
    """How many frames ``raw`` holds."""
    frames = 0
    while raw is not None:
        frames += len(raw) >> 1
        raw = raw[-1]
    return frames


def trusted(node: StackNode, frame: FrameType, above: int, depth: int) -> bool:
    """Whether ``node``, found in ``frame.f_trace`` after walking ``above``
    frames, stands for ``frame`` and everything below it."""
    return node.owner == id(frame) and node.code is frame.f_code and node.height + above <= depth


def capture(frame: FrameType | None, depth: int, *, mark: bool = MARKS) -> RawStack:
    """The stack whose top frame is ``frame``, innermost first, at most
    ``depth`` frames.

    A frame whose own node is in its ``f_trace`` ends the walk (see the
    module docstring). With ``mark`` the frames walked above it get a node
    each, left in their ``f_trace``; without, they go into one tuple and
    nothing is written (before 3.12, for a sampler reading another
    thread's frames, and for a session with a ``min_duration``). A walk
    that reaches ``depth`` frames first keeps those, unmarked. Runs on the
    switch path: nothing here raises, switches or frees a user object.
    (The tracer inlines the case where the top frame is unchanged.)
    """
    if not MARKS:
        return walk_whole(frame, depth) if frame is not None else None
    if not mark:
        return _capture_run(frame, depth)
    top = frame
    nodes: list[StackNode] = []  # the new ones, top first
    append = nodes.append
    node_type = StackNode
    walked = 0
    while frame is not None:
        found = frame.f_trace
        if found is not None and type(found) is node_type and trusted(found, frame, walked, depth):
            lasti = frame.f_lasti
            if lasti == found.lasti:
                base = found
            else:  # the same call, at another place now
                base = _new_node(node_type)
                base.code = code = found.code
                base.lasti = lasti
                base.height = found.height
                base.owner = found.owner
                base.key = _interned(code, lasti, found.key[2])
                frame.f_trace = base
            if not walked:
                return base.key
            return _measure(nodes, base.height, base.key)
        if walked == depth:
            _unmark(top, nodes)
            return _measure(nodes, 0, None)
        new = _new_node(node_type)
        new.code = code = frame.f_code
        new.lasti = frame.f_lasti
        # Complete before it is published in f_trace, and untrusted until
        # _measure() gives it its height: a sampler thread may read it.
        new.height = _UNMEASURED
        append(new)
        if (found is None or type(found) is node_type) and not code.co_flags & UNTRUSTED_CODE:
            new.owner = id(frame)
            frame.f_trace = new
        else:
            new.owner = 0
        frame = frame.f_back
        walked += 1
    return _measure(nodes, 0, None)


#: Raw stack tuples of one frame (3.12+), found by the ``id()`` of the raw
#: stack below and the frame's ``f_lasti`` (above an address's bits, so two
#: live stacks below never share a slot at a given offset) and checked
#: against the code: the same path, walked again in new frames (every
#: request's), makes the very same tuples, so reading its snapshots finds
#: them formatted already, and records share them. The value keeps the
#: stack below alive, so the id in its slot stays its own. A slot taken by
#: another code at the same place goes to the newer one. Once full it takes no
#: more until a session's ``stop()`` clears it (the tracer of any thread
#: may add to it; each step is atomic). It stays after the last session,
#: up to ``MAX_INTERNED`` small tuples, as the formatter's caches do.
_INTERNED: dict[int, tuple[Any, ...]] = {}
MAX_INTERNED: Final = 1 << 14


def _interned(code: CodeType, lasti: int, below: RawStack) -> tuple[Any, ...]:
    """The one raw stack tuple of ``code`` at ``lasti`` on top of ``below``."""
    interned = _INTERNED
    slot = id(below) ^ lasti << 48
    found = interned.get(slot)
    if found is None or found[2] is not below or found[1] != lasti or found[0] is not code:
        found = (code, lasti, below)
        if len(interned) < MAX_INTERNED:  # full: cleared by a stop(), off the switch path
            interned[slot] = found
    return found


def clear_interned_if_full() -> None:
    """Start the table of raw stacks afresh once it is full (a session's
    ``stop()``: freeing its tuples, and the code objects only they held,
    never happens on the switch path)."""
    if len(_INTERNED) >= MAX_INTERNED:
        _INTERNED.clear()


def _measure(nodes: list[StackNode], below: int, key: RawStack) -> RawStack:
    """Give the new ``nodes`` (top first) their keys, on top of the raw
    stack ``key``, and their heights, on top of ``below`` frames; the top
    one's key. Bottom up, each node's key before its height: a node is
    trusted once it has its height, and all below it are complete."""
    height = below
    interned = _INTERNED
    for new in reversed(nodes):
        code = new.code
        lasti = new.lasti
        # _interned(), its hit inlined: a path walked before is the common case.
        found = interned.get(id(key) ^ lasti << 48)
        if found is None or found[2] is not key or found[1] != lasti or found[0] is not code:
            found = _interned(code, lasti, key)
        new.key = key = found
        height += 1
        new.height = height
    return key


def _unmark(frame: FrameType | None, nodes: list[StackNode]) -> None:
    """Take back the marks of a walk that stopped at its limit (``nodes``,
    top first, from ``frame`` down): the nodes below them are missing."""
    for node in nodes:
        if frame is None:
            break
        if frame.f_trace is node:
            frame.f_trace = None
        node.owner = 0
        frame = frame.f_back


def _capture_run(frame: FrameType | None, depth: int) -> RawStack:
    """``capture()`` without marking: the frames above the first trusted
    mark (if any), in one tuple."""
    pairs: list[Any] = []
    append = pairs.append
    walked = 0
    base: RawStack = None
    while frame is not None and walked < depth:
        found = frame.f_trace
        if type(found) is StackNode and trusted(found, frame, walked, depth):
            if frame.f_lasti == found.lasti:
                base = found.key
            else:
                base = (found.code, frame.f_lasti, found.key[2])
            break
        append(frame.f_code)
        append(frame.f_lasti)
        frame = frame.f_back
        walked += 1
    return _run(pairs, base)


def walk_whole(frame: FrameType, depth: int) -> RawStack:
    """The innermost ``depth`` frames in one tuple, trusting no mark: the
    switch path before 3.12, where there are none, and from 3.12 for
    sessions that mark nothing (``GreenletBuffer.marks``). Unrolled: this loop is
    most of such a snapshot's cost."""
    if depth <= 0:
        return None
    pairs: list[Any] = [frame.f_code, frame.f_lasti]
    append = pairs.append
    frame = frame.f_back  # type: ignore[assignment]
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
    if len(pairs) > 2 * depth:
        del pairs[2 * depth :]  # up to 3 frames too many
    append(None)
    return tuple(pairs)


#: Frames under a root that make it worth its cost (``start_walk``): a walk
#: down to a root looks at each frame's ``f_trace`` too, which costs about
#: half a plain step; fewer frames under it save less than that costs.
MIN_UNDER_ROOT: Final = 4

#: Where a greenlet's whole walks may stop (3.12+, see ``walk_to_root``):
#: the node in the root frame's ``f_trace``, the raw stack under that frame,
#: and the most frames a walk may take down to it.
Root = tuple[StackNode, RawStack, int]


def start_walk(caller: FrameType, depth: int, read: bool) -> tuple[RawStack, Root | None]:
    """The stack a session's ``start()`` records, ``caller``'s (at most
    ``depth`` frames), and where the whole walks of ``caller``'s greenlet
    may stop from now on (see ``walk_to_root``): at the frame under
    ``caller``, the root, marked here (or found marked already, when it
    lives on from one request to the next: then the frames under it are not
    walked again) with the raw stack of the frames under it, walked whole.
    The stack is ``caller``'s frame on top of the root's key.

    No root (``rootless_walk()``'s stack, and None) before 3.12, near the
    bottom of a greenlet (fewer than ``MIN_UNDER_ROOT`` frames under it),
    for a generator's frame, one whose ``f_trace`` another tool set, or a
    stack cut at ``depth``.

    With ``read`` (a session that will likely be read: one that marks), the
    raw stack under the root is the very tuple of the last request's that
    had the same frames there (see ``_same_below``), so the root's key, and
    every key its marking walks build on it, are the same tuples too:
    formatted once, not at every request. (Marking every frame of this walk
    instead would cost more than the walk.)"""
    root = caller.f_back
    if not MARKS or root is None or depth < MIN_UNDER_ROOT + 3:
        return rootless_walk(caller, depth, read), None
    found = root.f_trace
    if found is None and not root.f_code.co_flags & UNTRUSTED_CODE:
        under = root.f_back
        below = walk_whole(under, depth - 2) if under is not None else None
        frames = (len(below) - 1) >> 1 if below is not None else 0  # one tuple
        if frames + 2 >= depth or frames < MIN_UNDER_ROOT:
            if read:
                return rootless_walk(caller, depth, read), None
            return (caller.f_code, caller.f_lasti, root.f_code, root.f_lasti, below), None
        if read:
            below = _same_below(below)  # type: ignore[arg-type]
            key = _interned(root.f_code, root.f_lasti, below)
        else:
            key = (root.f_code, root.f_lasti, below)
        node = _mark(root, key, frames + 1)
    elif (
        type(found) is StackNode
        and trusted(found, root, 0, depth)
        and MIN_UNDER_ROOT < found.height < depth - 1
    ):
        below = found.key[2]
        frames = found.height - 1
        node = found
        if found.lasti != root.f_lasti:
            # Moved on since it was marked: a new node, as capture() makes,
            # else the next marking walk would replace it with one.
            node = _mark(root, _interned(found.code, root.f_lasti, below), found.height)
    else:
        return rootless_walk(caller, depth, read), None
    top = (
        _interned(caller.f_code, caller.f_lasti, node.key)
        if read
        else (caller.f_code, caller.f_lasti, node.key)
    )
    return top, (node, below, depth - frames)


def rootless_walk(caller: FrameType, depth: int, read: bool) -> RawStack:
    """A start walk that sets no root (see ``start_walk``): marked, for a
    session that will likely be read (its switch-outs then stop where it
    did, or at a root another session set), else whole."""
    return capture(caller, depth) if read else walk_whole(caller, depth)


#: The raw stacks under session roots (``start_walk``), by their top code's
#: ``id()``, its offset and their length, then compared: a server's next
#: request walks the same frames under its root again, and gets the very
#: same tuple, so the keys of its stacks above are the same tuples too
#: (``_interned``), formatted once for all its requests. The tuples keep
#: their code objects alive, so an id stays its own. Emptied when full, at a
#: session's start (never on the switch path).
_BELOW: dict[tuple[int, int, int], tuple[tuple[Any, ...], tuple[Any, ...]]] = {}
MAX_BELOW: Final = 1 << 8


def _same_below(below: tuple[Any, ...]) -> tuple[Any, ...]:
    """The one tuple equal to ``below``, a whole walk under a root."""
    key = (id(below[0]), below[1], len(below))
    found = _BELOW.get(key)
    codes = below[0::2]
    # == matches distinct code objects with equal bytecode: only the same
    # code objects are the same stack.
    if found is not None and found[0] == below and all(map(is_, found[1], codes)):
        return found[0]
    if len(_BELOW) >= MAX_BELOW:
        _BELOW.clear()
    _BELOW[key] = (below, codes)
    return below


def _mark(frame: FrameType, key: tuple[Any, ...], height: int) -> StackNode:
    """A node for ``frame``, standing for ``key`` (``height`` frames), left
    in its ``f_trace`` (off the walks' hot loops)."""
    node = _new_node(StackNode)
    node.code = key[0]
    node.lasti = key[1]
    node.key = key
    node.height = height
    node.owner = id(frame)
    frame.f_trace = node  # complete before it is published: a sampler may read it
    return node


def walk_to_root(frame: FrameType, depth: int, root: Root) -> RawStack:
    """``walk_whole()``, cut short at the root (see ``start_walk``): the frames
    from ``frame`` down to the root frame in one tuple, and the raw stack
    under it, walked once when the session started. The root frame is
    known by its node, still in its ``f_trace``: the very frame, alive all
    along, so the frames under it are where they were (see the module
    docstring), and only its own offset is read again. A stack where the
    root is not met within the frames ``depth`` leaves room for (another
    walk replaced its node, or it returned) is walked whole from there on.
    """
    node, below, above = root
    pairs: list[Any] = []
    append = pairs.append
    left = above
    while True:
        append(frame.f_code)
        append(frame.f_lasti)
        if frame.f_trace is node and node.owner == id(frame) and node.code is frame.f_code:
            # (A tracer may copy a frame's f_trace into its callees.)
            append(below)
            return tuple(pairs)
        frame = frame.f_back  # type: ignore[assignment]
        if frame is None:
            append(None)
            return tuple(pairs)
        left -= 1
        if not left:  # the root not met within its frames: the rest as a whole walk
            append(walk_whole(frame, depth - above))
            return tuple(pairs)


def mark_top(frame: FrameType, stack: tuple[Any, ...], depth: int) -> RawStack:
    """Leave a node in ``frame``, the top frame of ``stack`` (a whole walk
    from it, just made: see ``walk_whole``), so that its next switch-out at
    the same place takes ``stack`` as it is; the stack to record, the
    node's key (``stack`` itself if nothing is marked: a walk cut at
    ``depth``, a generator's frame, or another tool's ``f_trace``).

    For a session that marks nothing else (``GreenletBuffer.marks``) and
    waits at the same place three times in a row: one node, for a loop
    that waits in one frame, instead of a whole walk at each of its
    waits."""
    frames = height(stack)  # its first tuple, and the stack under a root (walk_to_root)
    found = frame.f_trace
    if (
        frames >= depth
        or (found is not None and type(found) is not StackNode)
        or frame.f_code.co_flags & UNTRUSTED_CODE
    ):
        return stack
    return _mark(frame, (stack[0], stack[1], stack[2:] if len(stack) > 3 else stack[2]), frames).key


def _run(pairs: list[Any], below: RawStack) -> RawStack:
    """The frames of ``pairs`` on top of ``below``, in one tuple."""
    if not pairs:
        return below
    pairs.append(below)
    return tuple(pairs)


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

    Each raw stack's formatted stack is kept (in ``_done``, by the tuple's
    id; the tuple in ``_done_raw``), so the outer frames stacks share are
    formatted once; and formatted stacks are shared by content (keyed by the
    formatted stack below and the codes' ids and offsets), so the same path
    taken again in new tuples costs one lookup a tuple. Codes are kept in
    ``_codes`` while their ids are in keys, so an id is never reused
    meanwhile. Profilers drain from any thread: a cache hit, or a stack like
    the last one, needs no lock; filling and clearing take one.
    """

    def __init__(self, max_entries: int = 1 << 16) -> None:
        self._max_entries = max_entries
        # Stacks are up to ``max_depth`` frames long: fewer of them.
        self._max_stacks = max(1, max_entries // 4)
        # Raw stacks kept with their frames: most are seen once or twice.
        self._max_done = max(1, max_entries // 16)
        self._frames: dict[tuple[int, int], Frame] = {}
        # (id(stack below), ids of a tuple's codes, its offsets) -> (stack,
        # stack below): the value keeps the stack below alive, so its id
        # stays its own.
        self._stacks: dict[tuple[int, ...], tuple[tuple[Frame, ...], tuple[Frame, ...]]] = {}
        self._codes: dict[int, CodeType] = {}
        # id(raw stack) -> its frames, and id(raw stack) -> the raw stack,
        # kept so that its id stays its own. Two dicts, not one of pairs: a
        # pair holding frames is an object the garbage collector tracks, and
        # entries live long enough to reach its oldest generation, whose
        # growth is what starts a full collection (one every second or so
        # in a busy server, when every request's stacks were new pairs).
        # Written frames first, cleared raw stacks first: a raw stack found
        # in ``_done_raw`` with no frames is a miss.
        self._done: dict[int, tuple[Frame, ...]] = {}
        self._done_raw: dict[int, tuple[Any, ...]] = {}
        self._lock = allocate_real_lock()
        # The last raw stack of several frames formatted: (it, its codes and
        # the raw stack below (``[0::2]``), the stack below, the stack).
        # Before 3.12 every snapshot is one such tuple, walked anew: a
        # greenlet waiting at the same place again makes a new tuple equal
        # to the last one, and comparing with that costs less than the key.
        # (From 3.12 a sampler's captures, and the switch path's for
        # sessions that mark nothing, make such tuples.)
        self._last: (
            tuple[tuple[Any, ...], tuple[Any, ...], tuple[Frame, ...], tuple[Frame, ...]] | None
        ) = None
        # (id(stack below), id(top code), top offset, len(rest)) -> a few
        # (top code, rest, stack) formatted with that top: see frames().
        self._tops: dict[
            tuple[int, ...], list[tuple[CodeType, tuple[Any, ...], tuple[Frame, ...]]]
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

    def hits(
        self,
    ) -> tuple[Callable[[int], tuple[Any, ...] | None], Callable[[int], tuple[Frame, ...] | None]]:
        """``frames()``'s hit, for a loop that inlines it (``build``): two
        getters by a raw stack's id, ``(raw_of, frames_of)``. ``raw`` is
        formatted if ``raw_of(id(raw)) is raw`` and then ``frames_of(id(raw))``
        is not None (the tables are cleared in place, raw stacks first)."""
        return self._done_raw.get, self._done.get

    def stack(self, raw: RawStack, depth: int) -> tuple[Frame, ...]:
        """Outermost first, keeping at most the ``depth`` innermost frames."""
        frames = self.frames(raw)
        return frames[-depth:] if len(frames) > depth else frames

    def frames(self, raw: RawStack) -> tuple[Frame, ...]:
        """Every frame of ``raw``, outermost first."""
        if raw is None:
            return ()
        done = self._done
        done_raw = self._done_raw
        if done_raw.get(id(raw)) is raw:
            hit = done.get(id(raw))
            if hit is not None:
                return hit
        chain: list[tuple[Any, ...]] = []
        node: RawStack = raw
        frames: tuple[Frame, ...] = ()
        while type(node) is tuple:  # a raw stack's tuples end in None
            if done_raw.get(id(node)) is node:
                hit = done.get(id(node))
                if hit is not None:
                    frames = hit
                    break
            chain.append(node)
            node = node[-1]
        if len(done) + len(chain) > self._max_done:
            with self._lock:
                done_raw.clear()
                done.clear()
        stacks = self._stacks
        for node in reversed(chain):
            code: CodeType = node[0]
            lasti: int = node[1]
            if len(node) > 3:
                # None below matches nothing: nothing was formatted yet.
                last = self._last
                if (
                    last is not None
                    and last[2] is frames
                    and last[0] == node
                    # == matches distinct code objects with equal bytecode;
                    # only the same code objects are the same stack.
                    and all(map(is_, node[0::2], last[1]))
                ):
                    frames = last[3]
                    done[id(node)] = frames
                    done_raw[id(node)] = node
                    continue
                rest = node[2:-1]
                # A stack formatted before (a request's wait sites come back
                # again and again): found by its top frame, the frames under
                # it and its length, then compared directly; cheaper than
                # hashing a key of every frame.
                top = (id(frames), id(code), lasti, len(rest))
                seen = self._tops.get(top)
                found = _same_run(rest, seen) if seen is not None else None
                if found is not None:
                    self._last = (node, node[0::2], frames, found)
                    frames = found
                    done[id(node)] = frames
                    done_raw[id(node)] = node
                    continue
                key: tuple[int, ...] = (
                    id(frames),
                    id(code),
                    lasti,
                    *map(id, rest[0::2]),
                    *rest[1::2],
                )
            else:
                rest = ()
                key = (id(frames), id(code), lasti)
            stacked = stacks.get(key)
            below = frames
            frames = self._add(key, frames, code, lasti, rest) if stacked is None else stacked[0]
            done[id(node)] = frames
            done_raw[id(node)] = node
            if rest:
                self._last = (node, node[0::2], below, frames)
                self._remember(top, code, rest, frames)
        return frames

    def _remember(
        self, top: tuple[int, ...], code: CodeType, rest: tuple[Any, ...], frames: tuple[Frame, ...]
    ) -> None:
        with self._lock:
            seen = self._tops.setdefault(top, [])
            if len(seen) >= 8:
                del seen[0]
            # The code stays alive in the entry: its id in ``top`` stays its own.
            seen.append((code, rest, frames))

    def _add(
        self,
        key: tuple[int, ...],
        below: tuple[Frame, ...],
        code: CodeType,
        lasti: int,
        rest: tuple[Any, ...],
    ) -> tuple[Frame, ...]:
        with self._lock:
            if len(self._stacks) >= self._max_stacks or len(self._frames) >= self._max_entries:
                # ``_codes`` last: ids in keys are safe only while it keeps
                # their code objects alive.
                self._stacks.clear()
                self._frames.clear()
                self._tops.clear()
                self._done_raw.clear()
                self._done.clear()
                self._codes.clear()
            codes = [code, *rest[0::2]]
            offsets = [lasti, *rest[1::2]]
            more = [self._frame(c, o) for c, o in zip(codes, offsets, strict=True)]
            more.reverse()
            frames = (*below, *more)
            for c in codes:
                self._codes[id(c)] = c
            self._stacks[key] = (frames, below)
        return frames
