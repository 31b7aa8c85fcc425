"""Raw stacks on the switch path, readable frames later.

The switch path keeps ``[code, f_lasti, code, f_lasti, ...]`` innermost
first. The formatter turns raw stacks into :class:`~greenprof.Frame` tuples,
cached per code object and offset.
"""

from __future__ import annotations

import sys
from types import CodeType, FrameType

from ._threads import allocate_real_lock
from .snapshot import Frame

#: Innermost first, alternating code object and ``f_lasti``. Never mutated
#: once recorded: a switch-in record shares its switch-out's list.
RawStack = list[CodeType | int]

EMPTY_STACK: RawStack = []


def capture(frame: FrameType | None, depth: int) -> RawStack:
    """The innermost ``depth`` frames from ``frame`` outward, unformatted.

    Only ``(code, f_lasti)`` pairs are kept, never frame objects: holding a
    frame would keep its locals alive past its return, and letting go of it
    later would run their finalizers inside the tracer. (The tracer inlines
    this loop; this function serves everything off the switch path.)
    """
    raw: list[CodeType | int] = []
    append = raw.append
    while frame is not None and depth:
        append(frame.f_code)
        append(frame.f_lasti)
        frame = frame.f_back
        depth -= 1
    return raw


def _line_for_offset(code: CodeType, offset: int) -> int:
    for start, end, line in code.co_lines():
        if start <= offset < end:
            return line if line is not None else code.co_firstlineno
    return code.co_firstlineno


class FrameFormatter:
    """Turns raw stacks into ``Frame`` tuples; caches are bounded and per formatter.

    Frames are cached by ``(id(code), offset)``: hashing a code object hashes
    its contents, which made that most of a stack's formatting time. The
    code objects are kept in ``_codes`` while cached, so an id cannot be
    reused by another code object meanwhile. Profilers drain from any
    thread: a cache hit needs no lock; filling and clearing take one, so an
    entry is never stored while another thread lets its code objects go.
    """

    def __init__(self, max_entries: int = 1 << 16) -> None:
        self._max_entries = max_entries
        self._frames: dict[tuple[int, int], Frame] = {}
        self._codes: dict[int, CodeType] = {}
        # Whole stacks by their code ids and offsets: a service goes through
        # the same few paths again and again.
        self._stacks: dict[tuple[int, ...], tuple[Frame, ...]] = {}
        self._lock = allocate_real_lock()

    def frame(self, code: CodeType, offset: int) -> Frame:
        # Under self._lock.
        key = (id(code), offset)
        found = self._frames.get(key)
        if found is None:
            if len(self._frames) >= self._max_entries:
                self.clear()
            if sys.version_info >= (3, 11):
                name = code.co_qualname
            else:
                name = code.co_name
            found = Frame(code.co_filename, name, _line_for_offset(code, offset))
            self._codes[id(code)] = code
            self._frames[key] = found
        return found

    def clear(self) -> None:
        # Under self._lock. Together, and ``_codes`` last: the ids in stack
        # and frame keys are only safe while it keeps their code objects alive.
        self._frames.clear()
        self._stacks.clear()
        self._codes.clear()

    def stack(self, raw: RawStack, depth: int) -> tuple[Frame, ...]:
        """Outermost first, keeping at most the ``depth`` innermost frames."""
        pairs = min(len(raw) // 2, depth)
        codes, offsets = raw[0 : 2 * pairs : 2], raw[1 : 2 * pairs : 2]
        key: tuple[int, ...] = (*map(id, codes), *offsets)  # type: ignore[arg-type]
        found = self._stacks.get(key)
        if found is not None:
            return found
        with self._lock:
            keys = zip(map(id, codes), offsets, strict=True)
            try:
                frames = list(map(self._frames.__getitem__, keys))  # type: ignore[arg-type]
            except KeyError:  # a frame not seen yet
                frames = [
                    self.frame(code, offset)  # type: ignore[arg-type]
                    for code, offset in zip(codes, offsets, strict=True)
                ]
                # frame() may have cleared the caches half-way: keep every
                # code of ``key`` alive again.
                for code in codes:
                    self._codes[id(code)] = code  # type: ignore[assignment]
            frames.reverse()
            found = tuple(frames)
            if len(self._stacks) >= self._max_entries:
                self._stacks.clear()
            self._stacks[key] = found
        return found
