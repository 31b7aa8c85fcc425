"""One session, from ``start()`` to ``stop()``: its targets, the greenlets it
picked up, their raw records, and what is built of them when read.

Cheap to make: everything checked or shared lives in the pipeline
(``_pipeline``); a session only registers its watches and, at ``stop()``,
takes them down and keeps its raw records.
"""

from __future__ import annotations

import _thread
import contextlib
import gc
import itertools
import logging
import os
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable
from types import CodeType, FrameType
from typing import TYPE_CHECKING, Any, Final, TypeGuard

import greenlet

from ._buffer import EXIT, START, STOP, GreenletBuffer
from ._build import Taken, build, in_time_order, meta_of
from ._delivery import Batch
from ._dispatcher import (
    GreenletWatch,
    SwitchDispatcher,
    dispatcher_for_current_thread,
    dispatcher_here,
    installed_dispatcher,
)
from ._naming import greenlet_name
from ._sampler import SAMPLER, HybridTaker, ThreadTaker
from ._signals import redeliver
from ._stack import (
    capture,
    clear_interned_if_full,
    rootless_walk,
    start_walk,
    walk_to_root,
)
from ._threads import allocate_real_lock, thread_ident
from .exceptions import (
    AlreadyProfilingError,
    DeadGreenletError,
    NotAGreenletError,
    WrongThreadError,
)
from .snapshot import SESSION_DRAFT, SESSION_SETTERS, Session, Snapshot

if TYPE_CHECKING:
    from ._pipeline import Pipeline

__all__ = ["Run"]

_logger = logging.getLogger("greenprof")


class _SessionIds:
    """Session ids: 32 hex digits, a random per-process half and a counter.

    Unique across processes like ``uuid4().hex``, without reading the OS's
    random source for each session (a request-scoped profiler makes one per
    request, and that read alone cost several microseconds here). A session
    takes its number when it is made and its id when one is first needed:
    the id of a number is the same whichever thread asks first.
    """

    def __init__(self) -> None:
        self.numbers = itertools.count()
        self.reseed()

    def reseed(self) -> None:
        # Also in a forked child, which must not repeat its parent's ids.
        # (The numbers go on: a session the child inherited keeps its own.)
        self.prefix = os.urandom(8).hex()

    def id_of(self, number: int) -> str:
        return f"{self.prefix}{number:016x}"

    def __call__(self) -> str:
        return self.id_of(next(self.numbers))


#: A new session id.
new_session_id: Final = _SessionIds()
os.register_at_fork(after_in_child=new_session_id.reseed)
_numbers: Final = new_session_id.numbers

#: Locks the sessions share, a session's picked by its number: one lock
#: per session would be one more object per request, and these few can be
#: made anew in a forked child, where a lock some thread of the parent held
#: at the fork would stay held for ever. (No code holds two at once.)
_STRIPES: Final = 64
_locks: list[_thread.LockType] = [allocate_real_lock() for _ in range(_STRIPES)]


def _remake_locks() -> None:
    _locks[:] = [allocate_real_lock() for _ in range(_STRIPES)]


os.register_at_fork(after_in_child=_remake_locks)

#: ``(greenlet ref, buffer, dispatcher)`` of a greenlet a session picked up.
Child = tuple["weakref.ref[greenlet.greenlet]", GreenletBuffer, SwitchDispatcher]


class _Target:
    """A greenlet (or thread) the program asked to profile."""

    __slots__ = ("buffer", "dispatcher", "key", "ref", "taker", "tracking", "watch")

    def __init__(
        self, key: int, buffer: GreenletBuffer, dispatcher: SwitchDispatcher | None
    ) -> None:
        self.key = key
        self.buffer = buffer
        #: Gives the target (its watch, for a greenlet), or None once freed.
        self.ref: Callable[[], object] = _gone
        self.dispatcher = dispatcher
        self.watch: GreenletWatch | None = None
        self.taker: HybridTaker | ThreadTaker | None = None
        self.tracking = False


class Run:
    """One session of a profiler.

    Who writes what: ``start()``, ``stop()`` and the reading methods run in
    the program's threads, under ``lock`` when they touch the buffers list;
    the switch path only appends to ``adopted`` (``follow_spawned``) and to
    the buffers' records; the sampler thread appends samples to buffers.
    """

    __slots__ = (
        "__weakref__",
        "adopted",
        "batches",
        "bounds",
        "buffers",
        "built",
        "children",
        "discarded",
        "dispatchers",
        "dropped_done",
        "ending",
        "handed",
        "pipeline",
        "raw",
        "running_at_start",
        "sequence",
        "session",
        "session_handed",
        "session_id",
        "session_number",
        "start_ns",
        "stop_ns",
        "stopping",
        "tags",
        "targets",
    )

    def __init__(
        self, pipeline: Pipeline, session_id: str | None, tags: dict[str, str] | None
    ) -> None:
        self.pipeline = pipeline
        #: Made by ``id()`` when first needed, unless given.
        self.session_id = session_id
        self.session_number = next(_numbers)
        #: Copied into the session's record when it stops; None: the
        #: pipeline's (the profiler's were never read or changed).
        self.tags = tags
        self.targets: dict[int, _Target] = {}
        #: Buffers whose records are not all taken yet.
        self.buffers: list[GreenletBuffer] = []
        #: Greenlets the switch path picked up (``follow_spawned``): a deque,
        #: which the tracer appends to without a lock (made when following).
        self.adopted: deque[Child] = _NO_CHILDREN
        self.children: list[Child] = []
        #: ``greenlet_id`` -> (start, stop) wall-clock ns of its part of the
        #: session; stop is 0 while it runs.
        self.bounds: dict[int, tuple[int, int]] = {}
        self.running_at_start: set[int] = set()
        self.dispatchers: list[SwitchDispatcher] = []
        self.dropped_done: dict[int, int] = {}
        #: ``id()`` of picked-up greenlets' entries found ended once, to let go next time.
        self.ending: set[int] = _NO_ENDING
        self.start_ns = 0
        self.stop_ns = 0
        self.stopping = False
        self.discarded = False
        #: Snapshots built so far, in order; ``handed`` of them went to the
        #: sinks. (Without ``keep_snapshots``: those not handed over yet.)
        self.built: list[Snapshot] = []
        self.handed = 0
        #: Records taken from the buffers and not built yet (see ``compact``).
        self.raw: list[Taken] = []
        #: Snapshots built in all: the next one's sequence number.
        self.sequence = 0
        #: What was handed to the sinks, to call back if the session is discarded.
        self.batches: list[Batch] = []
        self.session: Session | None = None
        self.session_handed = False

    @property
    def lock(self) -> _thread.LockType:
        """This session's lock (one of a few shared ones, made anew after fork)."""
        return _locks[self.session_number % _STRIPES]

    def id(self) -> str:
        """The session's id, made now if need be (from any thread)."""
        session_id = self.session_id
        if session_id is None:
            session_id = self.session_id = new_session_id.id_of(self.session_number)
        return session_id

    @property
    def running(self) -> bool:
        return bool(self.targets)

    # -- starting ------------------------------------------------------------------

    def start(
        self, target: greenlet.greenlet | threading.Thread | None, caller: FrameType | None
    ) -> None:
        """Profile ``target`` (default: the calling greenlet) from now on;
        ``caller``: the frame that called greenprof (or a greenprof frame
        above it)."""
        pipeline = self.pipeline
        current = greenlet.getcurrent()
        if pipeline.plain and (target is None or target is current) and not self.targets:
            self._start_here(current, caller)
            return
        options = pipeline.options
        mode = options.mode
        if target is None or target is current:
            glet = current  # the request's own greenlet: nothing to check
        elif isinstance(target, threading.Thread) and mode == "thread":
            self._start_thread(target)
            return
        elif _check_target(target, current):  # it raises instead
            glet = target
        key = id(glet)
        dispatcher = dispatcher_for_current_thread()
        with self.lock:
            if self.targets:
                self._check_not_running(key, glet)
                if options.follow_spawned and self._picked_up(dispatcher, glet):
                    return  # recorded already, once, as a greenlet it picked up
            buffer = self._new_buffer(glet, dispatcher.thread_id)
            record = _Target(key, buffer, dispatcher)
            started = time.perf_counter_ns()
            running = glet is current
            if running and mode != "thread" and buffer.limit:
                # Where the session starts: a request that never yields still
                # shows where its time went.
                start_stack = capture(_caller(caller), buffer.depth, mark=buffer.marks)
                buffer.add((START, started, start_stack))
            if mode == "thread":
                dispatcher.start_tracking()
                record.tracking = True
                record.taker = ThreadTaker(
                    thread_id=dispatcher.thread_id,
                    thread_name=_thread_name(dispatcher.thread_id),
                    dispatcher=dispatcher,
                    buffer=buffer,
                    period_ns=options.period_ns,
                )
                record.ref = weakref.ref(glet)
            else:
                if options.follow_spawned:
                    if self.adopted is _NO_CHILDREN:
                        self.adopted = deque()
                        _compact_while_running(self)
                    buffer.follow = self._adopt
                    dispatcher.start_following()
                    if options.follow_all and not self._follows_all(dispatcher, key):
                        # Once per session and thread: every buffer there
                        # picks each new greenlet up, once more each.
                        dispatcher.follow_all(buffer)
                if mode == "hybrid":
                    record.taker = HybridTaker(dispatcher=dispatcher, period_ns=options.period_ns)
                    buffer.sampler = record.taker
                record.watch = record.ref = dispatcher.watch(glet, buffer)
            replaced = self._register(record, started, running=running)
            if dispatcher not in self.dispatchers:
                self.dispatchers.append(dispatcher)
        if replaced is not None and replaced.taker is not None:
            SAMPLER.unsubscribe(replaced.taker)
        if record.taker is not None:
            SAMPLER.subscribe(record.taker)

    def _start_here(self, glet: greenlet.greenlet, caller: FrameType | None) -> None:
        """``start()`` in its commonest case, a request's: its first target,
        the calling greenlet, in greenlet mode, following nothing. The same
        steps as the general case, fewer of them (this runs per request).
        No lock: the session is not visible to another thread yet."""
        pipeline = self.pipeline
        options = pipeline.options
        dispatcher = dispatcher_here()
        key = id(glet)
        # Positional: keywords cost more than the rest of the call. Named if
        # the session is kept (see _name_targets).
        limit, depth, marks = options.max_snapshots, options.max_depth, pipeline.marks
        buffer = GreenletBuffer(limit, depth, key, None, dispatcher.thread_id, marks)
        if pipeline.delivery.slice_watchers:
            buffer.run = weakref.ref(self)
        started = time.perf_counter_ns()
        buffer.count = 1  # max_snapshots >= 1: the start record always fits
        record = _Target(key, buffer, dispatcher)
        record.watch = record.ref = watch = dispatcher.watch_running(glet, buffer)
        caller = _caller(caller)
        if caller is None:
            start_stack = None
        elif watch.root is None:  # nothing marked but the root
            start_stack, root = start_walk(caller, depth, marks)
            if root is not None and not marks:
                # Its switch-outs walk down to the frame under the caller, not
                # further: the frames under that one stay as this walk found
                # them. (A session that marks finds the root by its node.)
                watch.root = root
                watch.root_buffer = buffer
        else:  # another session's root (nested): its walks stop there already
            start_stack = rootless_walk(caller, depth, marks)
        buffer.records.append((START, started, start_stack))
        self.start_ns = wall = pipeline.offset_ns + started
        self.targets[key] = record
        self.buffers.append(buffer)
        self.running_at_start.add(key)
        self.bounds[key] = (wall, 0)
        self.dispatchers.append(dispatcher)

    def _start_thread(self, thread: threading.Thread) -> None:
        ident = thread.ident
        if ident is None or not thread.is_alive():
            msg = f"{thread!r} is not running; start the thread before profiling it."
            raise DeadGreenletError(msg)
        options = self.pipeline.options
        with self.lock:
            self._check_not_running(ident, thread)
            dispatcher = installed_dispatcher(ident)
            buffer = GreenletBuffer(
                limit=options.max_snapshots,
                depth=options.max_depth,
                greenlet_id=0,
                greenlet_name=f"thread {thread.name}",
                thread_id=ident,
            )
            record = _Target(ident, buffer, None)
            record.ref = weakref.ref(thread)
            record.taker = ThreadTaker(
                thread_id=ident,
                thread_name=thread.name,
                dispatcher=dispatcher if dispatcher is not None and dispatcher.tracking else None,
                buffer=buffer,
                period_ns=options.period_ns,
            )
            replaced = self._register(record, time.perf_counter_ns())
        if replaced is not None and replaced.taker is not None:
            SAMPLER.unsubscribe(replaced.taker)
        SAMPLER.subscribe(record.taker)

    def _register(self, record: _Target, started: int, *, running: bool = False) -> _Target | None:
        """Add ``record`` (under self.lock); the target it replaces, if any:
        one that ended, whose id (or thread ident) the new one reuses. Its
        watch and counters are taken down here, its sampling by the caller,
        out of the lock (``_retire``)."""
        pipeline = self.pipeline
        wall = pipeline.offset_ns + started  # pipeline.wall_ns(started), inlined
        if not self.start_ns:
            self.start_ns = wall
        old = self.targets.get(record.key)
        if old is not None:
            self._take_down(old)
        self.targets[record.key] = record
        self.buffers.append(record.buffer)
        if pipeline.options.mode != "thread":
            # Thread mode samples whatever runs: bounds and who was running
            # at the start say nothing about what its samples show.
            if running:
                self.running_at_start.add(record.key)
            self.bounds[record.buffer.greenlet_id] = (wall, 0)
        return old

    def _take_down(self, target: _Target) -> None:
        """Undo what watching an ended ``target`` holds up: its watch, and
        the following and tracking it counts for in its dispatcher."""
        options = self.pipeline.options
        dispatcher, buffer, watch = target.dispatcher, target.buffer, target.watch
        if watch is not None and dispatcher is not None:
            if options.follow_spawned:
                dispatcher.stop_following()
                if options.follow_all:
                    dispatcher.unfollow_all(buffer)
            dispatcher.unwatch(watch, buffer)
        elif target.tracking and dispatcher is not None:
            dispatcher.stop_tracking()

    def _follows_all(self, dispatcher: SwitchDispatcher, key: int) -> bool:
        """Whether one of this session's targets picks up every greenlet of
        ``dispatcher``'s thread already (under self.lock); not the one at
        ``key``, which the target starting there replaces and takes down."""
        everything = dispatcher.everything
        return any(
            target.buffer in everything for target in self.targets.values() if target.key != key
        )

    def _picked_up(self, dispatcher: SwitchDispatcher, glet: greenlet.greenlet) -> bool:
        """Whether this session records ``glet`` already, because it followed
        it there (under self.lock)."""
        watch = dispatcher.watches.get(glet)
        return watch is not None and any(
            getattr(buffer.follow, "__self__", None) is self for buffer in watch.buffers
        )

    def _check_not_running(self, key: int, thing: object) -> None:
        existing = self.targets.get(key)
        if existing is not None and existing.ref() is thing:
            what = _describe(thing) if isinstance(thing, greenlet.greenlet) else repr(thing)
            msg = (
                f"This profiler is already profiling {what}. "
                "Stop it first, or use a second Profiler to nest sessions."
            )
            raise AlreadyProfilingError(msg)

    def _new_buffer(self, glet: greenlet.greenlet, thread_id: int) -> GreenletBuffer:
        # May run inside the tracer (``_adopt``): nothing here may switch.
        options = self.pipeline.options
        limit, depth = options.max_snapshots, options.max_depth
        if options.only is not None:
            try:
                keep = bool(options.only(glet))
            except BaseException as exc:
                keep = True  # a broken filter must not hide a greenlet
                redeliver(exc)  # nor swallow a Ctrl-C
            if not keep:
                # Muted: followed, not recorded (max_snapshots is >= 1), and
                # with depth 0 no stack is walked for it.
                limit = depth = 0
        buffer = GreenletBuffer(
            limit=limit,
            depth=depth,
            greenlet_id=id(glet),
            greenlet_name=greenlet_name(glet),
            thread_id=thread_id,
            marks=self.pipeline.marks,
        )
        if self.pipeline.delivery.slice_watchers:
            buffer.run = weakref.ref(self)
        return buffer

    def _adopt(self, child: greenlet.greenlet, parent: GreenletBuffer) -> GreenletBuffer | None:
        # Runs inside the tracer: no lock, nothing that could switch.
        if self.stopping:
            return None
        buffer = self._new_buffer(child, parent.thread_id)
        buffer.parent_id = parent.greenlet_id
        buffer.follow = parent.follow  # one bound method for all
        buffer.sampler = parent.sampler
        dispatcher = installed_dispatcher(parent.thread_id)
        if dispatcher is not None:
            self.adopted.append((weakref.ref(child), buffer, dispatcher))
        return buffer

    def _take_adopted(self) -> None:
        # Under self.lock.
        while self.adopted:
            child = self.adopted.popleft()
            self.children.append(child)
            self.buffers.append(child[1])

    # -- stopping --------------------------------------------------------------------

    def stop(self, caller: FrameType | None) -> None:
        """Take every watch down; the records stay, to be built when read.
        ``caller``: the frame that called greenprof (or a greenprof frame
        above it)."""
        with _locks[self.session_number % _STRIPES]:  # self.lock, one call less
            targets = list(self.targets.values())
            self.targets.clear()
            # From here no compaction takes this session's buffers: with no
            # targets left it would drop them before the stop record lands.
            self.stopping = True
        if self.pipeline.plain and len(targets) == 1:
            self._stop_one(targets[0], caller)
            return
        for target in targets:
            if target.taker is not None:
                SAMPLER.unsubscribe(target.taker)
        recheck_tracer(targets)  # counts a tracer other code removed
        stopped_perf = time.perf_counter_ns()
        stopped = self.stop_ns = self.pipeline.offset_ns + stopped_perf  # wall_ns(), inlined
        self.stopping = True  # no more adoptions (the tracer may be in another thread)
        options = self.pipeline.options
        # Shorter than min_duration: nothing recorded will be read, so where
        # it stops is not walked.
        discarding = stopped - self.start_ns < options.min_duration_ns
        current = greenlet.getcurrent()
        bounds = self.bounds
        released = None
        for target in targets:
            buffer, watch = target.buffer, target.watch
            if watch is not None and target.dispatcher is not None:  # greenlet and hybrid modes
                if buffer.limit and not discarding and watch() is current:
                    # Where the session stops, in the greenlet it ran in.
                    caller = _caller(caller)
                    stop_stack = capture(caller, buffer.depth, mark=buffer.marks)
                    buffer.add((STOP, stopped_perf, stop_stack))
                bounds[buffer.greenlet_id] = (bounds[buffer.greenlet_id][0], stopped)
            self._take_down(target)
        if self.adopted or self.children:
            self._stop_children(stopped)
            self.compact()  # the children's buffers and watches go now; their records stay
        for target in targets:
            if target.dispatcher is not None and target.dispatcher is not released:
                released = target.dispatcher
                released.release()
        clear_interned_if_full()
        if discarding:
            self.discard()
            return
        _name_targets(targets)
        if any(target.buffer.dropped for target in targets):
            self._report_drops([t.buffer for t in targets])

    def _stop_one(self, target: _Target, caller: FrameType | None) -> None:
        """``stop()`` in its commonest case, a request's: one greenlet, in
        greenlet mode, following nothing (no sampling, no children). The
        same steps as the general case, fewer of them (this runs per
        request)."""
        dispatcher, buffer, watch = target.dispatcher, target.buffer, target.watch
        assert dispatcher is not None  # greenlet mode: a watch in this dispatcher
        assert watch is not None
        tracer = greenlet.gettrace()
        if not (tracer is dispatcher.trace or tracer is dispatcher.chained):
            recheck_tracer((target,))  # counts a tracer other code removed
        stopped_perf = time.perf_counter_ns()
        stopped = self.stop_ns = self.pipeline.offset_ns + stopped_perf
        discarding = stopped - self.start_ns < self.pipeline.options.min_duration_ns
        if buffer.limit and not discarding and watch() is greenlet.getcurrent():
            caller = _caller(caller)
            root = watch.root
            if root is None or caller is None or buffer.marks:
                stop_stack = capture(caller, buffer.depth, mark=buffer.marks)
            else:
                stop_stack = walk_to_root(caller, buffer.depth, root)
            buffer.add((STOP, stopped_perf, stop_stack))
        bounds = self.bounds
        bounds[buffer.greenlet_id] = (bounds[buffer.greenlet_id][0], stopped)
        dispatcher.unwatch(watch, buffer)
        if not dispatcher.watches:  # else release() has nothing to do
            dispatcher.release()
        clear_interned_if_full()
        if discarding:
            self.discard()
            return
        if buffer.greenlet_name is None:
            _name_targets((target,))
        if buffer.dropped:
            self._report_drops([buffer])

    def _stop_children(self, stopped: int) -> None:
        """Stop watching the greenlets the session picked up."""
        with self.lock:
            self._take_adopted()
            children = self.children
        for child_ref, child_buffer, child_dispatcher in children:
            child = child_ref()
            watch = child_dispatcher.watches.get(child) if child is not None else None
            if watch is not None:
                child_dispatcher.unwatch(watch, child_buffer)
            self.bounds[child_buffer.greenlet_id] = (0, stopped)
        for _, _, child_dispatcher in children:
            child_dispatcher.release()
        with self.lock:
            self.children = []

    def discard(self) -> None:
        """Drop everything recorded, unformatted; call back what went to the sinks."""
        with _locks[self.session_number % _STRIPES]:  # self.lock, one call less
            for buffer in self.buffers:
                buffer.records.clear()
            self.buffers = []
            # New lists only if something was taken or built (a reader may
            # hold the old ones): a request's dropped session has neither.
            if self.raw:
                self.raw = []
            if self.built:
                self.built = []
            self.handed = self.sequence = 0
            self.discarded = True
            for batch in self.batches:
                batch.cancelled = True

    def _report_drops(self, buffers: list[GreenletBuffer]) -> None:
        for buffer in buffers:
            if buffer.dropped and buffer.limit:
                _logger.warning(
                    "greenprof: kept the first %d snapshots of %s and dropped %d "
                    "more; raise max_snapshots to keep them.",
                    buffer.limit,
                    buffer.greenlet_name,
                    buffer.dropped,
                )

    # -- reading -----------------------------------------------------------------------

    def snapshots(self) -> list[Snapshot]:
        """Every snapshot so far, built now if need be (from any thread)."""
        with _locks[self.session_number % _STRIPES]:  # self.lock, one call less
            self._build_pending()
            return self.built

    def compact(self) -> None:
        """Take the records out of the buffers, and let the buffers of
        greenlets that ended go (from any thread, now and then while a
        following session runs): what a long session keeps is then its
        records alone, in forms the garbage collector does not track, and
        not a buffer, queue and watch per greenlet it ever picked up."""
        with self.lock:
            if not self.discarded:
                self.raw.extend(self._take_records())

    def compact_if_free(self) -> None:
        """:meth:`compact`, unless the session's lock is held (by this very
        thread, perhaps: a garbage collection may start anywhere)."""
        lock = self.lock
        if not lock.acquire(False):
            return
        try:
            if not (self.discarded or self.stopping or self.stop_ns):
                self.raw.extend(self._take_records())
        finally:
            lock.release()

    def _build_pending(self) -> None:
        # Under self.lock.
        buffers = self.buffers
        if len(buffers) == 1 and self.stop_ns and not self.raw and self.pipeline.plain:
            # A request's session, read once it stopped: one buffer, which
            # nothing appends to any more (no switch path: its watch is
            # gone; no sampler in greenlet mode).
            (buffer,) = buffers
            self.buffers = []
            self._let_go(buffer)
            records = buffer.records
            if not records:
                return
            taken: list[Taken] = [(tuple(records), meta_of(buffer))]
            records.clear()
        else:
            self.raw.extend(self._take_records())
            if not self.raw:
                return
            taken, self.raw = self.raw, []
        before = len(self.built)
        build(
            in_time_order(taken),
            self.built,
            session_id=self.id(),
            first_sequence=self.sequence,
            offset_ns=self.pipeline.offset_ns,
        )
        self.sequence += len(self.built) - before

    def _let_go(self, buffer: GreenletBuffer) -> None:
        """Count what ``buffer``, no longer kept, dropped (under self.lock)."""
        if buffer.dropped and buffer.limit:
            self.dropped_done[buffer.greenlet_id] = (
                self.dropped_done.get(buffer.greenlet_id, 0) + buffer.dropped
            )

    def _take_records(self) -> list[Taken]:
        """Every buffer's records not taken yet (under self.lock); buffers of
        greenlets no longer profiled are let go."""
        if self.adopted:
            self._take_adopted()
        if not self.buffers:
            return []
        targets = self.targets
        if targets:
            _name_targets(targets.values())
            live = {id(t.buffer) for t in targets.values()}
        else:  # stopped
            live = set()
        if not self.stop_ns:
            # A picked-up greenlet that ended records nothing more: let it go
            # (a server's session picks up a greenlet per request).
            self._let_ended_children_go()
            live.update(id(child[1]) for child in self.children)
        drained: list[Taken] = []
        keep: list[GreenletBuffer] = []
        for buffer in self.buffers:
            records = buffer.drain()
            if records:
                drained.append((records, meta_of(buffer)))
            if id(buffer) in live:
                keep.append(buffer)
            else:
                self._let_go(buffer)
        self.buffers = keep
        return drained

    def _let_ended_children_go(self) -> None:
        # Under self.lock, while the session runs. A greenlet found ended is
        # let go now if its exit record is in (nothing else comes then), else
        # the next time only: the tracer may still be appending that record,
        # in the program's thread, as it is found dead here. (Not so fast in
        # hybrid mode: a sample taken as it ended may land after its exit.)
        alive: list[Child] = []
        ending = self.ending
        if ending is _NO_ENDING:
            ending = self.ending = set()
        for child in self.children:
            glet = child[0]()
            if glet is not None and not glet.dead:
                alive.append(child)
                continue
            records = child[1].records
            exited = bool(records) and records[-1][0] == EXIT and child[1].sampler is None
            if not exited and id(child) not in ending:
                ending.add(id(child))
                alive.append(child)
                continue
            ending.discard(id(child))
            _, buffer, dispatcher = child
            watch = dispatcher.watches.get(glet) if glet is not None else None
            if watch is not None:  # ended, not freed yet: it never switches again
                dispatcher.unwatch(watch, buffer)
        self.children = alive

    def to_hand_over(self) -> Batch | None:
        """What the sinks have not received yet, as a batch (and, once the
        session stopped, its Session), or None."""
        with self.lock:
            if self.discarded:
                return None
            self._build_pending()
            snapshots = self.built[self.handed :]
            sessions = [self._record()] if self.stop_ns and not self.session_handed else []
            if not snapshots and not sessions:
                return None
            self.session_handed = bool(sessions) or self.session_handed
            batch = Batch(snapshots, sessions)
            if self.pipeline.options.keep_snapshots:
                self.handed = len(self.built)
                self.batches.append(batch)
            else:  # the sinks have them: memory stays flat over a long run
                self.built = []
                self.handed = 0
            return batch

    def handed_over(self) -> list[Batch]:
        """What went to the sinks so far (for a sink added later)."""
        with self.lock:
            return [b for b in self.batches if not b.cancelled]

    def dropped(self) -> dict[int, int]:
        """``greenlet_id`` -> snapshots dropped, for the greenlets that dropped any."""
        with self.lock:
            return self._dropped()

    def _dropped(self) -> dict[int, int]:
        # Under self.lock.
        dropped = dict(self.dropped_done)
        for buffer in [*self.buffers, *(child[1] for child in list(self.adopted))]:
            if buffer.dropped and buffer.limit:
                dropped[buffer.greenlet_id] = dropped.get(buffer.greenlet_id, 0) + buffer.dropped
        return dropped

    def record(self) -> Session:
        """This session as a :class:`~greenprof.Session` (``stop_ns`` 0
        while it runs); built once it stopped."""
        with self.lock:
            return self._record()

    def _record(self) -> Session:
        # Under self.lock.
        if self.session is not None:
            return self.session
        options = self.pipeline.options
        session = _new_session(
            self.id(),
            self.start_ns,
            self.stop_ns,
            options.mode,
            options.period_ns,
            options.max_depth,
            options.max_snapshots,
            sum(self._dropped().values()),
            frozenset(self.running_at_start),
            dict(self.bounds),
            dict(self.tags if self.tags is not None else options.tags),
        )
        if self.stop_ns:
            self.session = session
        return session

    def progress(self) -> tuple[int, int]:
        """``(greenlets followed, records so far)``, cheaply, from any thread."""
        with self.lock:
            greenlets = len(self.targets) + len(self.children) + len(self.adopted)
            pending = sum(len(buffer.records) for buffer in self.buffers)
            pending += sum(len(records) for records, _ in self.raw)
            pending += sum(len(child[1].records) for child in list(self.adopted))
            return greenlets, self.sequence + pending


def _gone() -> None:
    return None


#: How often a running session that follows greenlets is compacted.
COMPACT_EVERY: Final = 0.5
#: Running sessions that follow greenlets (let go once stopped).
_following: set[Run] = set()
#: ``time.monotonic()`` of the last compaction.
_compacted_at = 0.0


def _compact_on_collection(phase: str, info: dict[str, int]) -> None:
    """Compact the running sessions that follow greenlets as a garbage
    collection starts: at every full one (``gc.collect()``, or the
    collector's oldest generation), else at most every COMPACT_EVERY seconds.

    Each compaction takes the sessions' records out of their buffers and
    lets the buffer, watch and weak reference of each greenlet that ended
    go. A program that records allocates (each record is a tuple), so its
    collections come often enough, and no thread of greenprof's own is
    needed: a program that counts its OS threads sees none. Whoever counts
    objects after ``gc.collect()`` (a leak check run again and again) finds
    none of greenprof's, and the collection does not traverse them. A
    collection may start in any thread, at any allocation, greenprof's
    tracer included: a session whose lock is held is left for the next
    one, and nothing is ever raised."""
    global _compacted_at
    if phase != "start" or not _following:
        return
    try:
        now = time.monotonic()
        if info.get("generation") != 2 and now - _compacted_at < COMPACT_EVERY:
            return
        _compacted_at = now
        if sys.is_finalizing():  # the program is gone: nothing to keep small
            _following.clear()
            return
        for run in list(_following):
            if run.stop_ns or run.stopping or run.discarded:
                _following.discard(run)
            else:
                run.compact_if_free()
    except BaseException as exc:  # never into the collector
        redeliver(exc)  # a signal handler's, raised again where it can be seen


def _compact_while_running(run: Run) -> None:
    _following.add(run)
    if _compact_on_collection not in gc.callbacks:
        gc.callbacks.append(_compact_on_collection)


def _name_targets(targets: Iterable[_Target]) -> None:
    """Name the buffers of targets the fast start left unnamed: reading a
    greenlet's name costs more than many a request's session, and a dropped
    session never needs it. (A greenlet already freed gets its address.)"""
    for target in targets:
        buffer = target.buffer
        if buffer.greenlet_name is None:
            glet = target.ref()
            buffer.greenlet_name = (
                greenlet_name(glet)
                if isinstance(glet, greenlet.greenlet)
                else f"greenlet-{buffer.greenlet_id:#x}"
            )


#: The ``ending`` of every session until one of its greenlets ends.
_NO_ENDING: Final[set[int]] = set()

#: The ``adopted`` of every session that follows nothing: always empty.
_NO_CHILDREN: Final[deque[Child]] = deque(maxlen=0)


def _new_session(*values: object) -> Session:
    """A Session from values right by construction, without ``__init__``'s
    converters and checks (a request-scoped profiler makes one per kept
    request): filled as a draft that becomes one (3.12+), else with its
    slot setters."""
    if SESSION_DRAFT is not None:
        draft: Any = object.__new__(SESSION_DRAFT)
        (
            draft.session_id,
            draft.start_ns,
            draft.stop_ns,
            draft.mode,
            draft.dump_period_ns,
            draft.max_depth,
            draft.max_snapshots,
            draft.dropped,
            draft.running_at_start,
            draft.bounds,
            draft.tags,
        ) = values
        draft.__class__ = Session
        made: Session = draft
        return made
    session = object.__new__(Session)
    for setter, value in zip(SESSION_SETTERS, values, strict=True):
        setter(session, value)
    return session


def recheck_tracer(targets: Iterable[_Target]) -> None:
    """Re-install the calling thread's tracer if other code removed it."""
    ident = thread_ident()
    checked = None
    for target in targets:
        dispatcher = target.dispatcher
        if (
            dispatcher is not None
            and dispatcher is not checked
            and dispatcher.thread_id == ident
            and (dispatcher.watches or dispatcher.tracking)
        ):
            checked = dispatcher
            dispatcher.ensure_installed()


#: greenprof's own source files start with this.
_PACKAGE_DIR: Final = os.path.dirname(os.path.abspath(__file__)) + os.sep
#: Frames of ``contextlib`` right above greenprof's own run greenprof's
#: context managers (``@contextmanager`` ones).
_CONTEXTLIB: Final = contextlib.__file__


#: ``id()`` of a code object -> whether it is greenprof's own (or
#: contextlib's, above it). By id: hashing a code object hashes its
#: contents. An id can be reused only once its code object is gone, and
#: greenprof's own never go: a stale entry always says "not ours", rightly.
_ours: dict[int, bool] = {}


def _is_ours(code: CodeType) -> bool:
    if len(_ours) > 4096:
        _ours.clear()  # code made on the fly (exec, lambdas in a loop) keeps coming
    filename = code.co_filename
    found = _ours[id(code)] = filename.startswith(_PACKAGE_DIR) or filename == _CONTEXTLIB
    return found


def _caller(frame: FrameType | None) -> FrameType | None:
    """The innermost frame from ``frame`` down that is not greenprof's: where
    the program called into greenprof (``start()``, the decorator, the
    middleware)."""
    ours = _ours.get
    while frame is not None:
        code = frame.f_code
        found = ours(id(code))
        if not (found if found is not None else _is_ours(code)):
            break
        frame = frame.f_back
    return frame


def _root(glet: greenlet.greenlet) -> greenlet.greenlet:
    while glet.parent is not None:
        glet = glet.parent
    return glet


def _thread_name(ident: int) -> str:
    for thread in threading.enumerate():
        if thread.ident == ident:
            return thread.name
    return str(ident)


def _describe(glet: greenlet.greenlet) -> str:
    return f"greenlet {greenlet_name(glet)!r}"


def _check_target(glet: object, current: greenlet.greenlet) -> TypeGuard[greenlet.greenlet]:
    if not isinstance(glet, greenlet.greenlet):
        msg = (
            f"greenprof profiles greenlets, not {type(glet).__name__} objects "
            f"({glet!r}). Pass a greenlet.greenlet or gevent.Greenlet, or "
            "nothing to profile the calling greenlet."
        )
        raise NotAGreenletError(msg)
    if glet.dead:
        msg = (
            f"{_describe(glet)} has already finished, so it will never switch "
            "again. Start profiling before it ends, e.g. before start()/spawn()."
        )
        raise DeadGreenletError(msg)
    if _root(glet) is not _root(current):
        msg = (
            f"{_describe(glet)} belongs to another OS thread. greenlet.settrace "
            "works per thread, so start() must be called from the thread that "
            "runs the greenlet (for example from inside it)."
        )
        raise WrongThreadError(msg)
    return True
