"""One greenlet trace dispatcher per OS thread: the switch path.

It chains whatever tracer was there, records raw stacks of watched greenlets
into their buffers, and never raises, switches, locks, logs or formats.
"""

from __future__ import annotations

import _thread
import os
import sys
import time
import weakref
from collections.abc import Callable
from typing import Any

import greenlet

from ._buffer import EXIT, SWITCH_IN, SWITCH_OUT, THROW, GreenletBuffer
from ._stack import EMPTY_STACK, RawStack, capture
from ._threads import allocate_real_lock, thread_ident

TraceFunction = Callable[[str, Any], Any]

#: How far greenprof walks ``previous_trace_function`` links when it looks
#: for itself under another tracer.
_MAX_CHAIN = 32


class GreenletWatch:
    """The switch path's view of one watched greenlet.

    ``last_stack`` is the stack the greenlet was suspended in: a greenlet
    always resumes exactly where it switched out, so switch-in reuses it
    instead of walking frames again.
    """

    __slots__ = ("buffers", "depth", "last_stack", "ref")

    def __init__(self, last_stack: RawStack, depth: int) -> None:
        self.buffers: tuple[GreenletBuffer, ...] = ()
        self.depth = depth
        self.last_stack = last_stack
        self.ref: weakref.ref[greenlet.greenlet] | None = None


class SwitchDispatcher:
    """The greenlet tracer of one OS thread, shared by every session there."""

    def __init__(self, thread_id: int) -> None:
        self.thread_id = thread_id
        self.watches: dict[int, GreenletWatch] = {}
        self.previous: TraceFunction | None = None
        self.installed = False
        self.detach_requested = False
        #: Exceptions swallowed in our own recording code.
        self.errors = 0
        #: Exceptions swallowed from the chained previous tracer.
        self.previous_errors = 0
        #: Times greenprof found its tracer removed by someone else and put it back.
        self.reinstalls = 0
        self.trace: TraceFunction = _make_trace(self)

    # -- installation (always from the dispatcher's own thread) -------------

    def ensure_installed(self) -> None:
        """Install the tracer, or re-install it if something dropped it."""
        current = greenlet.gettrace()
        if current is self.trace:
            self.installed = True
            return
        if self.installed and self._receives_switches(current):
            return
        if self.installed:
            self.reinstalls += 1
        self.previous = greenlet.settrace(self.trace)
        self.detach_requested = False
        self.installed = True

    def _receives_switches(self, current: TraceFunction | None) -> bool:
        """Whether our tracer still runs, chained under ``current``."""
        tracer: Any = current
        for _ in range(_MAX_CHAIN):
            if tracer is None:
                break
            if tracer is self.trace:
                return True
            tracer = getattr(tracer, "previous_trace_function", None)
        if current is None:
            return False
        # An unknown tracer on top: switch into a throwaway greenlet and see
        # whether our tracer hears of it.
        probe = greenlet.greenlet(_return_none)
        watch = GreenletWatch(EMPTY_STACK, 1)
        buffer = GreenletBuffer(
            limit=4, depth=1, greenlet_id=0, greenlet_name="probe", thread_id=0
        )
        watch.buffers = (buffer,)
        key = id(probe)
        # The probe's switches must not show up in the caller's own profile.
        caller_key = id(greenlet.getcurrent())
        caller_watch = self.watches.pop(caller_key, None)
        self.watches[key] = watch
        try:
            probe.switch()
        finally:
            if self.watches.get(key) is watch:
                del self.watches[key]
            if caller_watch is not None:
                self.watches[caller_key] = caller_watch
        return buffer.count > 0

    def release(self) -> None:
        """Uninstall once nothing is watched, restoring the previous tracer.

        From another thread, ask the dispatcher's own thread to do it at its
        next switch. When another tracer was installed on top of ours and
        chains it, ours cannot be taken out of the middle: it stays, passing
        every event through, until a later session in this thread reuses it.
        """
        if self.watches:
            return
        if thread_ident() != self.thread_id:
            self.detach_requested = True
            return
        if greenlet.gettrace() is self.trace:
            greenlet.settrace(self.previous)
            self.previous = None
            self.installed = False
            with _registry_lock:
                if _registry.get(self.thread_id) is self:
                    del _registry[self.thread_id]

    # -- watches ------------------------------------------------------------

    def watch(self, glet: greenlet.greenlet, buffer: GreenletBuffer) -> None:
        key = id(glet)
        watch = self.watches.get(key)
        if watch is None:
            if glet is greenlet.getcurrent() or glet.gr_frame is None:
                # Running now (its next event is a switch-out, which captures
                # its stack) or not started yet (it will start with no stack).
                last = EMPTY_STACK
            else:
                last = capture(glet.gr_frame, buffer.depth)
            watch = GreenletWatch(last, buffer.depth)
            watch.ref = weakref.ref(glet, _forgetter(self.watches, key))
        watch.depth = max(watch.depth, buffer.depth)
        watch.buffers = (*watch.buffers, buffer)
        self.watches[key] = watch

    def unwatch(self, key: int, buffer: GreenletBuffer) -> None:
        watch = self.watches.get(key)
        if watch is None:
            return
        remaining = tuple(b for b in watch.buffers if b is not buffer)
        if remaining:
            watch.buffers = remaining
        elif self.watches.get(key) is watch:
            del self.watches[key]


def _return_none() -> None:
    return None


def _forgetter(
    watches: dict[int, GreenletWatch], key: int
) -> Callable[[weakref.ref[greenlet.greenlet]], None]:
    # Runs when the greenlet is freed, before its id can be reused.
    def forget(ref: weakref.ref[greenlet.greenlet]) -> None:
        watch = watches.get(key)
        if watch is not None and watch.ref is ref:
            del watches[key]

    return forget


def _redeliver(exc: BaseException) -> None:
    # A Ctrl-C that lands inside our tracer belongs to the program: raising it
    # here would make greenlet drop the tracer and throw it into whichever
    # greenlet is being switched to. Raise it again at the next safe point.
    if isinstance(exc, KeyboardInterrupt):
        _thread.interrupt_main()


def _make_trace(dispatcher: SwitchDispatcher) -> TraceFunction:
    """Build the tracer closure; everything it touches is bound up front."""
    watches = dispatcher.watches
    get = watches.get
    now = time.perf_counter_ns
    gettrace = greenlet.gettrace
    settrace = greenlet.settrace

    def trace(event: str, args: Any) -> None:
        if event == "switch" or event == "throw":
            try:
                if watches:
                    origin, target = args
                    if origin is not target:
                        watch = get(id(origin))
                        if watch is not None:
                            frame = origin.gr_frame
                            if frame is None:
                                code = EXIT
                                stack = EMPTY_STACK
                            else:
                                code = SWITCH_OUT
                                stack = []
                                append = stack.append
                                limit = watch.depth
                                while frame is not None and limit:
                                    append(frame.f_code)
                                    append(frame.f_lasti)
                                    frame = frame.f_back
                                    limit -= 1
                                watch.last_stack = stack
                            record = (code, now(), stack)
                            for buffer in watch.buffers:
                                if buffer.count < buffer.limit:
                                    buffer.count += 1
                                    buffer.records.append(record)
                                else:
                                    buffer.dropped += 1
                        watch = get(id(target))
                        if watch is not None:
                            record = (
                                SWITCH_IN if event == "switch" else THROW,
                                now(),
                                watch.last_stack,
                            )
                            for buffer in watch.buffers:
                                if buffer.count < buffer.limit:
                                    buffer.count += 1
                                    buffer.records.append(record)
                                else:
                                    buffer.dropped += 1
                elif dispatcher.detach_requested:
                    dispatcher.detach_requested = False
                    if gettrace() is trace:
                        settrace(dispatcher.previous)
                        dispatcher.installed = False
            except Exception:
                dispatcher.errors += 1
            except BaseException as exc:
                dispatcher.errors += 1
                _redeliver(exc)
        previous = dispatcher.previous
        if previous is not None:
            try:
                previous(event, args)
            except Exception:
                dispatcher.previous_errors += 1
            except BaseException as exc:
                dispatcher.previous_errors += 1
                _redeliver(exc)

    return trace


# -- the per-thread registry ---------------------------------------------------

_registry: dict[int, SwitchDispatcher] = {}
_registry_lock = allocate_real_lock()


def dispatcher_for_current_thread() -> SwitchDispatcher:
    """The calling thread's dispatcher, installed and receiving switches."""
    ident = thread_ident()
    with _registry_lock:
        dispatcher = _registry.get(ident)
        if dispatcher is None:
            if len(_registry) >= 64:
                _forget_dead_threads()
            dispatcher = _registry[ident] = SwitchDispatcher(ident)
    dispatcher.ensure_installed()
    return dispatcher


def installed_dispatcher(ident: int) -> SwitchDispatcher | None:
    """The dispatcher of thread ``ident``, if greenprof has one there."""
    return _registry.get(ident)


def _forget_dead_threads() -> None:
    alive = sys._current_frames()
    for ident in [i for i in _registry if i not in alive]:
        del _registry[ident]


def _after_fork_in_child() -> None:
    global _registry_lock
    _registry_lock = allocate_real_lock()
    ident = thread_ident()
    for other in [i for i in _registry if i != ident]:
        del _registry[other]


os.register_at_fork(after_in_child=_after_fork_in_child)
