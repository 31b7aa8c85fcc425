"""One greenlet trace dispatcher per OS thread: the switch path.

It chains whatever tracer was there, records raw stacks of watched greenlets
into their buffers, and never raises, switches, locks, logs or formats.
"""

from __future__ import annotations

import os
import sys
import time
import weakref
from collections.abc import Callable
from types import FrameType
from typing import Any

import greenlet

from ._buffer import EXIT, SWITCH_IN, SWITCH_OUT, THROW, GreenletBuffer
from ._signals import redeliver
from ._stack import (
    EMPTY_STACK,
    MARKS,
    RawStack,
    Root,
    StackNode,
    capture,
    mark_top,
    walk_to_root,
    walk_whole,
)
from ._threads import allocate_real_lock, original, thread_ident

TraceFunction = Callable[[str, Any], Any]

#: How far greenprof walks ``previous_trace_function`` links when it looks
#: for itself under another tracer.
_MAX_CHAIN = 32


_new_ref: Any = weakref.ref.__new__


class GreenletWatch(weakref.ref):  # type: ignore[type-arg]
    """The switch path's view of one watched greenlet, and its key: a weak
    reference to it (calling the watch gives the greenlet, or None once it
    was freed, when ``forget`` drops the watch).

    A watch hashes like its greenlet (a weak reference's own hash, in C,
    cached when the watch is made) and compares equal to it, so
    ``watches.get(greenlet)`` finds it while the dispatcher holds the greenlet
    only weakly. A miss (an unwatched greenlet) never runs Python code: the
    hashes differ. ``last_stack`` is where the greenlet is suspended: a
    greenlet resumes exactly where it switched out, so switch-in reuses it
    instead of walking frames again.
    """

    __slots__ = ("buffers", "depth", "last_stack", "marks", "repeats", "root", "root_buffer")

    buffers: tuple[GreenletBuffer, ...]
    depth: int
    last_stack: RawStack
    #: Whether its walks leave marks: if any of its buffers' do.
    marks: bool
    #: Whole walks in a row that found it where the last one did.
    repeats: int
    #: Where its whole walks stop (see ``_stack.walk_to_root``), or None:
    #: the frame under the one that started a session in the greenlet
    #: itself (a request's), with the frames under it, walked then. Good for
    #: every session watching it, whatever its depth: a walk that would be
    #: deeper carries on past it. Let go when that session stops
    #: (``root_buffer`` is its buffer), or when a walk finds that frame
    #: gone (set aside in ``SwitchDispatcher.gone_roots``: the switch path
    #: frees nothing).
    root: Root | None
    root_buffer: GreenletBuffer | None

    @classmethod
    def of(
        cls,
        glet: greenlet.greenlet,
        forget: Callable[[GreenletWatch], None],
        depth: int,
        marks: bool = MARKS,
    ) -> GreenletWatch:
        """A watch of ``glet``; ``forget`` is called with it once ``glet``
        is freed. (Made without ``__init__``: one is made per request.)"""
        watch: GreenletWatch = _new_ref(cls, glet, forget)
        hash(watch)  # computed now, while glet lives: kept for after
        watch.buffers = ()
        watch.depth = depth
        watch.last_stack = EMPTY_STACK
        watch.marks = marks
        watch.repeats = 0
        watch.root = None
        watch.root_buffer = None
        return watch

    __hash__ = weakref.ref.__hash__

    def __eq__(self, other: object) -> bool:
        return other is self or other is self()


class SwitchDispatcher:
    """The greenlet tracer of one OS thread, shared by every session there.

    It owns exactly two tracer functions, built once: ``trace`` when there is
    no previous tracer to chain, ``chained`` otherwise. Re-installing never
    builds new ones, so a library that saved one of them and puts it back
    later puts back a tracer greenprof still recognises and keeps current.
    """

    def __init__(self, thread_id: int) -> None:
        self.thread_id = thread_id
        self.watches: dict[object, GreenletWatch] = {}
        self.previous: TraceFunction | None = None
        self.installed = False
        self.detach_requested = False
        #: Exceptions swallowed in our own recording code.
        self.errors = 0
        #: Exceptions swallowed from the chained previous tracer.
        self.previous_errors = 0
        #: Times greenprof found its tracer removed by someone else and put it back.
        self.reinstalls = 0
        #: Sessions that need ``current`` (thread-mode sampling labels).
        self.tracking = 0
        #: Sessions that follow the greenlets their greenlets spawn.
        self.following = 0
        #: The target buffers of sessions that follow every greenlet of this
        #: thread (``follow_all``): a greenlet no watched one spawned is
        #: picked up by these. Replaced whole, so the tracer reads it as is.
        self.everything: tuple[GreenletBuffer, ...] = ()
        #: The greenlet running now, kept only while ``tracking``.
        self.current: greenlet.greenlet | None = None
        #: Switches seen while ``tracking``: a sampler reads it before and
        #: after looking at the thread, to know nothing switched in between.
        self.switches = 0
        self.set_running: Callable[[GreenletWatch | None], None]
        self.get_running: Callable[[], GreenletWatch | None]
        #: Makes the tracer look at every switch beyond watched greenlets:
        #: tracking, following, or a pending request to detach.
        self.set_attention: Callable[[bool], None]
        #: Roots the switch path found gone (see ``GreenletWatch.root``),
        #: freed at the next watch or unwatch.
        self.gone_roots: list[Root] = []
        self.trace, self.chained = _make_tracers(self)
        #: Drops a watch whose greenlet was freed (made once: it is every
        #: watch's weakref callback).
        self.forget = self._forget

    def is_ours(self, tracer: object) -> bool:
        return tracer is self.trace or tracer is self.chained

    # -- installation (always from the dispatcher's own thread) -------------

    def ensure_installed(self) -> None:
        """Install the tracer, or re-install it if something dropped it."""
        current: TraceFunction | None = greenlet.gettrace()  # type: ignore[assignment]
        if self.detach_requested:  # a session wants the tracer after all
            self.detach_requested = False
            self._update_attention()
        if self.is_ours(current):
            self.installed = True
            return
        if self.installed and self._receives_switches(current):
            return
        if self.installed:
            self.reinstalls += 1
        # Switches since we last heard of any may have changed who runs.
        self.set_running(self.watches.get(greenlet.getcurrent()))
        self.previous = current
        greenlet.settrace(self._tracer_for(current))
        self.detach_requested = False
        self.installed = True

    def _tracer_for(self, previous: object) -> TraceFunction:
        return self.trace if previous is None else self.chained

    def _update_attention(self) -> None:
        self.set_attention(bool(self.tracking or self.following or self.detach_requested))

    def start_tracking(self) -> None:
        """Keep ``current`` up to date (from this dispatcher's thread)."""
        self.tracking += 1
        self.current = greenlet.getcurrent()
        self._update_attention()
        self.ensure_installed()

    def stop_tracking(self) -> None:
        self.tracking -= 1
        if not self.tracking:
            self.current = None
        self._update_attention()

    def start_following(self) -> None:
        """Look at every switch for greenlets spawned by followed ones."""
        self.following += 1
        self._update_attention()
        self.ensure_installed()

    def stop_following(self) -> None:
        self.following -= 1
        self._update_attention()

    def follow_all(self, buffer: GreenletBuffer) -> None:
        """Pick every greenlet of this thread up for ``buffer``'s session
        (with ``start_following``)."""
        self.everything = (*self.everything, buffer)

    def unfollow_all(self, buffer: GreenletBuffer) -> None:
        self.everything = tuple(b for b in self.everything if b is not buffer)

    def _receives_switches(self, current: TraceFunction | None) -> bool:
        """Whether our tracer still runs, chained under ``current``, as far as
        the tracers' ``previous_trace_function`` links tell (gevent's do).

        An unknown tracer on top may or may not call ours: greenprof never
        switches greenlets to find out. It goes back on top, chaining that
        one; if that one calls ours too, the tracer ignores the nested call
        (see ``_make_tracers``), so no switch is recorded twice or missed.
        """
        tracer: Any = current
        for _ in range(_MAX_CHAIN):
            if tracer is None:
                return False
            if self.is_ours(tracer):
                return True
            tracer = getattr(tracer, "previous_trace_function", None)
        return False

    def release(self) -> None:
        """Uninstall once nothing is watched, restoring the previous tracer.

        When that cannot be done now (called from another thread, or another
        tracer sits on top of ours and chains it), the tracer removes itself
        at the first switch in its thread where it is on top again.
        """
        if self.watches or self.tracking or self.following:
            return
        if thread_ident() != self.thread_id or not self.is_ours(greenlet.gettrace()):
            self.detach_requested = True
            self._update_attention()
            return
        self.detach()

    def detach(self) -> None:
        """Put the previous tracer back (ours is on top, in our thread) and
        forget this dispatcher."""
        self.uninstall()
        with _registry_lock:
            if _registry.get(self.thread_id) is self:
                del _registry[self.thread_id]
                # Kept aside for this thread's next session: building one
                # (its tracers and their state) costs more than the session.
                if len(_spares) >= 64:
                    _spares.clear()  # threads come and go: keep it bounded
                _spares[self.thread_id] = self

    def reset(self) -> None:
        """Start afresh, as a new dispatcher would (a retired spare, reused)."""
        self.previous = None
        self.installed = self.detach_requested = False
        self.errors = self.previous_errors = self.reinstalls = 0
        self.tracking = self.following = self.switches = 0
        self.everything = ()
        self.current = None
        self.set_running(None)
        self._update_attention()

    def uninstall(self) -> None:
        # Also called from the tracer itself: no lock, nothing that switches.
        greenlet.settrace(self.previous)
        self.previous = None
        self.installed = False
        self.detach_requested = False
        self._update_attention()

    # -- watches ------------------------------------------------------------

    def watch(self, glet: greenlet.greenlet, buffer: GreenletBuffer) -> GreenletWatch:
        """Start recording ``glet``'s switches into ``buffer``."""
        if self.gone_roots:
            self.gone_roots.clear()
        watch = self.watches.get(glet)
        running = glet is greenlet.getcurrent()
        if watch is None:
            watch = GreenletWatch.of(glet, self.forget, buffer.depth, buffer.marks)
            if not running and glet.gr_frame is not None:
                # Suspended: it will resume right here. (Running now: its next
                # event is a switch-out, which captures its stack. Not started:
                # it starts with no stack.)
                watch.last_stack = capture(glet.gr_frame, buffer.depth, mark=watch.marks)
        else:
            watch.marks = watch.marks or buffer.marks
            if buffer.depth > watch.depth and not running and glet.gr_frame is not None:
                # A deeper session joins: its first switch-in gets the whole stack.
                watch.last_stack = capture(glet.gr_frame, buffer.depth, mark=watch.marks)
        watch.depth = max(watch.depth, buffer.depth)
        watch.buffers = (*watch.buffers, buffer)
        self.watches[watch] = watch
        if running:
            self.set_running(watch)
        return watch

    def watch_running(self, glet: greenlet.greenlet, buffer: GreenletBuffer) -> GreenletWatch:
        """``watch()`` of the greenlet running in this thread (a request's
        own), in fewer steps when nothing watches it yet."""
        if self.gone_roots or glet in self.watches:
            return self.watch(glet, buffer)
        watch = GreenletWatch.of(glet, self.forget, buffer.depth, buffer.marks)
        watch.buffers = (buffer,)
        self.watches[watch] = watch
        self.set_running(watch)
        return watch

    def unwatch(self, watch: GreenletWatch, buffer: GreenletBuffer) -> None:
        """Stop recording into ``buffer``; forget the greenlet if nothing else watches it."""
        if self.gone_roots:
            self.gone_roots.clear()
        if watch.root_buffer is buffer:  # the root its session set goes with it
            watch.root = watch.root_buffer = None
        buffers = watch.buffers
        if len(buffers) == 1 and buffers[0] is buffer:
            remaining: tuple[GreenletBuffer, ...] = ()
        else:
            remaining = tuple(b for b in buffers if b is not buffer)
        watch.buffers = remaining
        if remaining:
            watch.marks = any(b.marks for b in remaining)
        else:
            found = self.watches.pop(watch, None)
            if found is not None and found is not watch:
                self.watches[found] = found  # another watch of an equal greenlet: not ours
            if (
                self.get_running() is watch
                and thread_ident() == self.thread_id
                and watch() is greenlet.getcurrent()
            ):
                # Stopped in the greenlet itself (a request's session): its
                # next switch-out would capture its stack for no one. (From
                # another thread the tracer may be switching meanwhile, and a
                # watch that is not the current greenlet's is stale: either
                # way the tracer drops it at the next switch.)
                self.set_running(None)

    def _forget(self, watch: GreenletWatch) -> None:
        # Runs when the greenlet is freed: it will never switch again.
        if self.watches.get(watch) is watch:
            del self.watches[watch]


def _make_tracers(dispatcher: SwitchDispatcher) -> tuple[TraceFunction, TraceFunction]:
    """Build the dispatcher's tracer, and the same chaining its previous one.

    Everything the switch path touches is bound up front. ``running`` is the
    watch of the greenlet running now (the target of the last switch), so a
    switch costs one dict lookup, for the target, and a miss runs no Python
    code; a switch-out of a watched greenlet costs no lookup at all.
    """
    watches = dispatcher.watches
    get = watches.get
    gone_roots = dispatcher.gone_roots
    now = time.perf_counter_ns
    gettrace = greenlet.gettrace
    running: GreenletWatch | None = None
    # True while the tracer must look at every switch: see set_attention.
    attention = False

    def set_attention(value: bool) -> None:
        nonlocal attention
        attention = value

    def set_running(watch: GreenletWatch | None) -> None:
        nonlocal running
        running = watch

    def get_running() -> GreenletWatch | None:
        return running

    dispatcher.set_running = set_running
    dispatcher.get_running = get_running
    dispatcher.set_attention = set_attention

    # True while ``chained`` calls the previous tracer: a tracer that was on
    # top of ours and chains it, now under ours, calls ours again for the
    # same switch; that nested call is ignored.
    nested = False

    def trace(event: str, args: Any) -> None:
        nonlocal running
        if nested:
            return
        if event == "switch" or event == "throw":
            try:
                origin, target = args
                watch: GreenletWatch | None
                if running is not None and origin is not target:
                    watch = running
                    if watch() is not origin:  # switched while we were not installed
                        watch = get(origin)
                    if watch is not None:
                        frame = origin.gr_frame
                        if frame is None:  # ended; or suspended in a C callable run
                            watch.last_stack = EMPTY_STACK
                            record = (EXIT if origin.dead else SWITCH_OUT, now(), EMPTY_STACK)
                        else:
                            # From 3.12 the commonest case is inlined: the top
                            # frame is where it stopped last time, still in the
                            # same call (see _stack). Else a walk, leaving
                            # marks; or, before 3.12 and for sessions
                            # min_duration will likely drop, of the whole stack.
                            stack: RawStack
                            if MARKS and (
                                type(mark := frame.f_trace) is StackNode
                                and mark.owner == id(frame)
                                and frame.f_lasti == mark.lasti
                                and mark.code is frame.f_code
                                and mark.height <= watch.depth
                            ):
                                stack = mark.key
                            elif watch.marks:
                                stack = capture(frame, watch.depth)
                            else:
                                root = watch.root
                                if root is None:
                                    stack = walk_whole(frame, watch.depth)
                                else:
                                    stack = walk_to_root(frame, watch.depth, root)
                                    if stack[-1] is None:  # type: ignore[index]
                                        # Down to the bottom without meeting
                                        # it: it returned. Whole walks from
                                        # now on; the root is freed later.
                                        gone_roots.append(root)
                                        watch.root = None
                                last = watch.last_stack
                                if (
                                    MARKS
                                    and last is not None
                                    and stack is not None
                                    and stack[1] == last[1]
                                    and stack[0] is last[0]
                                ):
                                    # A third wait in a row at one place: a loop
                                    # in one frame, perhaps, whose next waits
                                    # there a node makes free. Once a run: a
                                    # loop calling a function that waits has a
                                    # new top frame each time.
                                    watch.repeats += 1
                                    if watch.repeats == 2:
                                        stack = mark_top(frame, stack, watch.depth)
                                else:
                                    watch.repeats = 0
                            watch.last_stack = stack
                            record = (SWITCH_OUT, now(), stack)
                        # GreenletBuffer.add(), inlined here and below.
                        for buffer in watch.buffers:
                            if buffer.count < buffer.limit:
                                buffer.count += 1
                                buffer.records.append(record)
                            else:
                                buffer.dropped += 1
                running = get(target)
                if running is not None and origin is not target:
                    # A local copy: a garbage collection started below may
                    # run code that unwatches it and resets ``running``.
                    entered = running
                    kind = SWITCH_IN if event == "switch" else THROW
                    record = (kind, now(), entered.last_stack)
                    for buffer in entered.buffers:
                        if buffer.count < buffer.limit:
                            buffer.count += 1
                            buffer.records.append(record)
                        else:
                            buffer.dropped += 1
                if attention:
                    attend(target)
            except BaseException as exc:
                if not redeliver(exc):  # a signal handler's is the program's, not an error
                    dispatcher.errors += 1

    def attend(target: greenlet.greenlet) -> None:
        # Everything beyond watched greenlets, off the common path.
        if dispatcher.tracking:
            dispatcher.current = target
            dispatcher.switches += 1
        if running is None and dispatcher.following:
            adopt(target)
        if (
            dispatcher.detach_requested
            and not watches
            and not dispatcher.tracking
            and not dispatcher.following
            and dispatcher.is_ours(gettrace())
        ):
            # The last session here was stopped from another thread, or while
            # another tracer sat on top of ours. (The entry in the registry
            # stays for the next session to reuse.)
            dispatcher.uninstall()

    def adopt(target: greenlet.greenlet) -> None:
        # ``target`` is not watched; watch it if a followed greenlet spawned
        # it (gevent records the spawner when config.track_greenlet_tree is
        # on, its default), or if a session follows every greenlet here, and
        # record this, its first switch-in.
        nonlocal running
        if not isinstance(target, greenlet.greenlet):
            return  # a tracer called by hand with stand-ins (gevent's monitor tests do)
        hub_module = sys.modules.get("gevent.hub")
        hub_class = hub_module.Hub if hub_module is not None else None
        if hub_class is not None and isinstance(target, hub_class):
            return  # the hub belongs to everyone
        spawner_ref = getattr(target, "spawning_greenlet", None)
        spawner = spawner_ref() if spawner_ref is not None else None
        parent = get(spawner) if spawner is not None else None
        followers = [b for b in parent.buffers if b.follow is not None] if parent else []
        adopted_by_all = not followers
        if adopted_by_all:
            followers = [b for b in dispatcher.everything if b.follow is not None]
            if not followers:
                return
            # Its parent where known: the greenlet that spawned it (not the hub,
            # which spawns for everyone: a server's request greenlets).
            if spawner is None or (hub_class is not None and isinstance(spawner, hub_class)):
                spawner_id = None
            else:
                spawner_id = id(spawner)
        watch = None
        for buffer in followers:
            child = buffer.follow(target, buffer)  # type: ignore[misc]
            if child is not None:  # None: that session is stopping
                if adopted_by_all:
                    child.parent_id = spawner_id
                watch = dispatcher.watch(target, child)
        if watch is not None:
            running = watch
            # It resumes where it was suspended (before anyone watched it):
            # the frame under greenprof's own here. (None: it starts now.)
            frame: FrameType | None = sys._getframe(1)
            while frame is not None and frame.f_code in own_code:
                frame = frame.f_back
            if frame is not None:
                watch.last_stack = capture(frame, watch.depth, mark=watch.marks)
            record = (SWITCH_IN, now(), watch.last_stack)
            for buffer in watch.buffers:
                buffer.add(record)

    def chained(event: str, args: Any) -> None:
        nonlocal nested
        if nested:
            return
        previous = dispatcher.previous  # read first: trace() may uninstall us
        trace(event, args)
        if previous is not None:
            nested = True
            try:
                previous(event, args)
            except BaseException as exc:
                if not redeliver(exc):
                    dispatcher.previous_errors += 1
            finally:
                nested = False

    own_code = frozenset(f.__code__ for f in (trace, chained, attend, adopt))
    return trace, chained


# -- the per-thread registry ---------------------------------------------------

_registry: dict[int, SwitchDispatcher] = {}
#: Per OS thread (a real thread-local, even under ``patch_all``): the
#: dispatcher made for it, which tells a thread's own from one an ended
#: thread with the same ident left in the registry.
_this_thread: Any = original("_local")()
#: Per thread, the dispatcher its last session left when it stopped (not
#: installed, watching nothing), for the next session there to reuse.
_spares: dict[int, SwitchDispatcher] = {}
_registry_lock = allocate_real_lock()


def dispatcher_for_current_thread() -> SwitchDispatcher:
    """The calling thread's dispatcher, installed and receiving switches."""
    ident = thread_ident()
    dispatcher = _registry.get(ident)  # only this thread adds its own
    mine = _this_thread.__dict__.get("dispatcher")
    if dispatcher is None or mine is not dispatcher:
        # None yet, or one left by an ended thread whose ident this one reuses.
        with _registry_lock:
            dispatcher = _spares.pop(ident, None)
            if dispatcher is None or dispatcher is not mine or dispatcher.watches:
                # A new one (a spare an ended thread with this ident left
                # goes): the only way the registry grows, so the one place
                # that lets ended threads' dispatchers go. Not when this
                # thread takes its own spare back, at each request of a
                # server that serves one at a time.
                _forget_dead_threads()
                dispatcher = SwitchDispatcher(ident)
            else:
                dispatcher.reset()
            _registry[ident] = _this_thread.dispatcher = dispatcher
    dispatcher.ensure_installed()
    return dispatcher


def dispatcher_here() -> SwitchDispatcher:
    """``dispatcher_for_current_thread()``, its commonest case (a request's
    session) in a few steps: this thread's own dispatcher, installed, its
    tracer on top."""
    dispatcher: SwitchDispatcher | None = _this_thread.__dict__.get("dispatcher")
    if dispatcher is not None and dispatcher.installed and not dispatcher.detach_requested:
        tracer = greenlet.gettrace()
        # Installed, so in the registry: only detach() takes it out, uninstalled.
        if tracer is dispatcher.trace or tracer is dispatcher.chained:
            return dispatcher
    return dispatcher_for_current_thread()


def installed_dispatcher(ident: int) -> SwitchDispatcher | None:
    """The dispatcher of thread ``ident``, if greenprof has one there."""
    return _registry.get(ident)


def installed_dispatchers() -> list[SwitchDispatcher]:
    """Every thread's dispatcher, from any thread (a copy, made in one step:
    threads add theirs meanwhile)."""
    return list(_registry.values())


def _forget_dead_threads() -> None:
    # Only the idents: the dict holds each thread's current frame, this
    # very frame included, and kept in a local it would make a cycle that
    # keeps the program's frames below this one (and their locals) alive
    # until the cyclic garbage collector runs.
    alive = set(sys._current_frames())
    for ident in [i for i in _registry if i not in alive]:
        del _registry[ident]
    for ident in [i for i in _spares if i not in alive]:
        del _spares[ident]


def _after_fork_in_child() -> None:
    global _registry_lock
    _registry_lock = allocate_real_lock()
    ident = thread_ident()
    for other in [i for i in _registry if i != ident]:
        del _registry[other]
    _spares.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)
