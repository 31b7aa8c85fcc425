"""Raw stacks on the switch path, readable frames later.

The switch path keeps ``(code, f_lasti, code, f_lasti, ...)`` outermost
first, and re-walks only the frames that changed since the greenlet's last
switch. The formatter turns raw stacks into :class:`~greenprof.Frame` tuples,
cached per code object and offset.
"""

from __future__ import annotations

import inspect
import sys
from types import CodeType, FrameType

from .snapshot import Frame

#: Outermost first, alternating code object and ``f_lasti``.
RawStack = tuple[CodeType | int, ...]

EMPTY_STACK: RawStack = ()

# A frame of these can be suspended and resumed under another caller, so its
# position in a stack proves nothing about the frames below it.
_RESUMABLE = (
    inspect.CO_GENERATOR
    | inspect.CO_COROUTINE
    | inspect.CO_ASYNC_GENERATOR
    | inspect.CO_ITERABLE_COROUTINE
)


class StackTracker:
    """The last captured stack of one greenlet, to capture the next one cheaply.

    Between two switches of a greenlet the outer part of its stack is usually
    the very same frames, still waiting in the same calls. ``capture`` walks
    from the innermost frame outward only until it meets a frame it captured
    last time: a plain function frame that is still running was called before
    that capture, so every frame outside it is unchanged, offsets included.
    Generator and coroutine frames are never used as such an anchor.

    The tracker holds the frames of the last captured stack (the keys of
    ``positions``) until the next capture or :meth:`clear`; their locals live
    that long.
    """

    __slots__ = ("depth", "positions", "raw")

    def __init__(self, depth: int) -> None:
        self.depth = depth
        #: Frame -> its index in the last captured stack, outermost = 0.
        self.positions: dict[FrameType, int] = {}
        #: The last captured stack, outermost first, two items a frame.
        self.raw: list[CodeType | int] = []

    def capture(self, frame: FrameType | None) -> RawStack:
        positions = self.positions
        raw = self.raw
        get = positions.get
        fresh: list[FrameType] = []
        append = fresh.append
        limit = self.depth
        position = None
        while frame is not None and limit:
            position = get(frame)
            if position is not None:
                break
            append(frame)
            frame = frame.f_back
            limit -= 1
        if position is None or frame is None:
            # Nothing shared (a new stack, or deeper than ``depth``).
            positions.clear()
            raw.clear()
        else:
            # Forget what was above the anchor last time: it has returned.
            while positions:
                last, index = positions.popitem()
                if index <= position:
                    positions[last] = index
                    break
            del raw[2 * position + 2 :]
            # The anchor itself may wait in another call now.
            raw[2 * position + 1] = frame.f_lasti
        index = len(raw) >> 1
        for frame in reversed(fresh):
            code = frame.f_code
            if not code.co_flags & _RESUMABLE:
                positions[frame] = index
            raw.append(code)
            raw.append(frame.f_lasti)
            index += 1
        return tuple(raw)

    def clear(self) -> None:
        self.positions.clear()
        self.raw.clear()


def _line_for_offset(code: CodeType, offset: int) -> int:
    for start, end, line in code.co_lines():
        if start <= offset < end:
            return line if line is not None else code.co_firstlineno
    return code.co_firstlineno


class FrameFormatter:
    """Turns raw stacks into ``Frame`` tuples; caches are bounded and per formatter."""

    def __init__(self, max_entries: int = 1 << 16) -> None:
        self._max_entries = max_entries
        self._frames: dict[tuple[CodeType, int], Frame] = {}

    def frame(self, code: CodeType, offset: int) -> Frame:
        key = (code, offset)
        found = self._frames.get(key)
        if found is None:
            if len(self._frames) >= self._max_entries:
                self._frames.clear()
            if sys.version_info >= (3, 11):
                name = code.co_qualname
            else:
                name = code.co_name
            found = Frame(code.co_filename, name, _line_for_offset(code, offset))
            self._frames[key] = found
        return found

    def stack(self, raw: RawStack, depth: int) -> tuple[Frame, ...]:
        """Outermost first, keeping at most the ``depth`` innermost frames."""
        frame = self.frame
        first = max(0, len(raw) // 2 - depth)
        return tuple(
            frame(raw[2 * i], raw[2 * i + 1])  # type: ignore[arg-type]
            for i in range(first, len(raw) // 2)
        )
