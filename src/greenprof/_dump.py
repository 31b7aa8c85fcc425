"""A text dump of every live greenlet and OS thread of the process: what
each greenlet does, where it waits and, when a greenprof session knows,
for how long.

Made inside a signal handler, in the main thread: it never switches
greenlets, takes no lock, imports nothing, runs none of the program's code
that it can avoid, and never reads gevent's lazily made greenlet names.
"""

from __future__ import annotations

import gc
import linecache
import os
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable
from types import CodeType, FrameType
from typing import Any, Final

import greenlet

from ._buffer import SAMPLE, START, SWITCH_IN, SWITCH_OUT, THROW, GreenletBuffer
from ._dispatcher import SwitchDispatcher, installed_dispatchers
from ._naming import greenlet_name
from ._stack import code_name
from ._threads import thread_ident
from ._waits import WaitSite, qualified_name, wait_site
from .snapshot import Frame

#: The innermost frames shown of each stack.
MAX_FRAMES: Final = 100
#: Wait sites listed in the summary, most frequent first.
TOP_WAIT_SITES: Final = 10

RUNNING: Final = "running"
SUSPENDED: Final = "suspended"
NOT_STARTED: Final = "not started"

# greenlet's own descriptors, not a subclass's: gevent's Greenlet overrides
# ``dead`` and ``__bool__`` with code of its own.
_GREENLET: Final = greenlet.greenlet.__dict__
_gr_frame: Final[Callable[[greenlet.greenlet], FrameType | None]] = _GREENLET["gr_frame"].__get__
_parent: Final[Callable[[greenlet.greenlet], greenlet.greenlet | None]] = _GREENLET[
    "parent"
].__get__
_dead: Final[Callable[[greenlet.greenlet], bool]] = _GREENLET["dead"].__get__
_started_and_alive: Final[Callable[[greenlet.greenlet], bool]] = _GREENLET["__bool__"]


class LiveGreenlet:
    """One greenlet as the dump found it."""

    __slots__ = (
        "glet",
        "is_hub",
        "is_main",
        "maybe_running",
        "root",
        "site",
        "state",
        "thread",
        "top",
    )

    def __init__(self, glet: greenlet.greenlet, thread: int | None, *, is_hub: bool) -> None:
        self.glet = glet
        #: ``id()`` of the main greenlet of its thread: the same for every
        #: greenlet of one thread, even where the thread's id is not known.
        self.root = id(_root(glet))
        self.thread = thread
        self.is_hub = is_hub
        self.is_main = _parent(glet) is None
        self.state = NOT_STARTED
        #: The top frame: where it is suspended, or runs now (if known).
        self.top: FrameType | None = None
        #: Where it waits, if suspended with a frame.
        self.site: WaitSite | None = None
        #: Suspended with no frame, in a thread where one such greenlet runs.
        self.maybe_running = False


class ProcessScan:
    """Everything the dump reads, read once, at the start."""

    def __init__(self, interrupted: FrameType | None) -> None:
        self.now_ns = time.perf_counter_ns()
        self.wall = time.time()
        self.main_thread = thread_ident()
        self.current = greenlet.getcurrent()
        self.thread_frames = sys._current_frames()
        self.dispatchers: list[SwitchDispatcher] = installed_dispatchers()
        self.instructions: dict[int, tuple[CodeType, list[Any]]] = {}
        self.thread_names = _thread_names(self.main_thread)
        hub_type = _gevent_class("gevent.hub", "Hub")
        # gevent's greenlets that know their OS thread: each thread's hub,
        # and the greenlet of each of its thread pools' worker threads.
        knowers = [
            (kind, attribute)
            for kind, attribute in (
                (hub_type, "thread_ident"),
                (_gevent_class("gevent.threadpool", "_WorkerGreenlet"), "_thread_ident"),
            )
            if kind is not None
        ]
        live = _live_greenlets(self.current)
        self._roots: dict[int, int] = {id(_root(self.current)): self.main_thread}
        for glet in live:
            for kind, attribute in knowers:
                if issubclass(type(glet), kind):
                    ident = getattr(glet, attribute, None)
                    if type(ident) is int and ident:
                        self._roots.setdefault(id(_root(glet)), ident)
        for dispatcher in self.dispatchers:
            for watch in list(dispatcher.watches.values()):
                watched = watch()
                if watched is not None:
                    self._roots.setdefault(id(_root(watched)), dispatcher.thread_id)
        self.greenlets = [
            LiveGreenlet(
                glet,
                self._roots.get(id(_root(glet))),
                is_hub=hub_type is not None and issubclass(type(glet), hub_type),
            )
            for glet in live
        ]
        self._find_states(interrupted)

    def _find_states(self, interrupted: FrameType | None) -> None:
        frameless: dict[tuple[int | None, int], list[LiveGreenlet]] = {}
        for live in self.greenlets:
            glet = live.glet
            if glet is self.current:
                live.state, live.top = RUNNING, interrupted
            elif _started_and_alive(glet):
                live.state, live.top = SUSPENDED, _gr_frame(glet)
                if live.top is None:
                    frameless.setdefault(_group(live), []).append(live)
        # A started greenlet with no frame runs now in its thread, or waits
        # in code that has no Python frame (a compiled function it was
        # spawned with). Only one runs per thread; the main thread's is
        # ``current``.
        for (thread, _), candidates in frameless.items():
            if thread == self.main_thread:
                continue
            if thread is not None and len(candidates) == 1:
                candidates[0].state = RUNNING
                candidates[0].top = self.thread_frames.get(thread)
            else:
                for live in candidates:
                    live.maybe_running = True
        for live in self.greenlets:
            if live.state == SUSPENDED and live.top is not None:
                live.site = wait_site(live.top, self.instructions)

    def last_switch(self, glet: greenlet.greenlet) -> tuple[bool, tuple[int, int] | None]:
        """Whether a greenprof session watches ``glet``, and the kind and
        ``perf_counter_ns()`` of the last switch a session kept of it."""
        watched = False
        best: tuple[int, int] | None = None
        for dispatcher in self.dispatchers:
            watch = dispatcher.watches.get(glet)
            if watch is None:
                continue
            watched = True
            for buffer in watch.buffers:
                found = _last_record(buffer)
                if found is not None and (best is None or found[1] > best[1]):
                    best = found
        return watched, best


def render_dump(interrupted: FrameType | None, signum: int | None = None) -> str:
    """The dump as text. Call it in the main thread with the frame the
    signal interrupted (the running greenlet's stack)."""
    scan = ProcessScan(interrupted)
    try:
        return _render(scan, signum)
    finally:
        # The scan holds this thread's frames, and they hold the scan: no
        # cycle left for the collector.
        scan.thread_frames.clear()


def _render(scan: ProcessScan, signum: int | None) -> str:
    lines: list[str] = []
    _header(lines, scan, signum)
    groups: dict[tuple[int | None, int], list[LiveGreenlet]] = {}
    for live in scan.greenlets:
        groups.setdefault(_group(live), []).append(live)
    shown: set[int] = set()
    for key in sorted(groups, key=lambda k: (k[0] is None, k[0] != scan.main_thread, k)):
        thread = key[0]
        members = sorted(groups[key], key=_order)
        lines.append("")
        lines.append(_thread_title(thread, scan, len(members)))
        if thread is not None:
            shown.add(thread)
            running = any(m.state == RUNNING and m.top is not None for m in members)
            if not running and thread != scan.main_thread:
                lines.append("  its running greenlet is not known; the thread's stack:")
                _stack(lines, scan.thread_frames.get(thread), "    ")
        for live in members:
            lines.append("")
            _greenlet(lines, live, scan)
    others = [t for t in scan.thread_frames if t not in shown and t != scan.main_thread]
    if others:
        lines.append("")
        lines.append("OS threads without known greenlets")
        for thread in sorted(others):
            lines.append("")
            lines.append(f"  {_thread_label(thread, scan)}")
            _stack(lines, scan.thread_frames.get(thread), "    ")
    return "\n".join(lines) + "\n"


def _live_greenlets(current: greenlet.greenlet) -> list[greenlet.greenlet]:
    """Every greenlet the garbage collector tracks that has not finished,
    roughly oldest first (the oldest generation first), and ``current``.

    Greenlets moved out of the collector's reach by ``gc.freeze()`` are not
    found, unless running now."""
    base = greenlet.greenlet
    # By type, not isinstance(): that may read a proxy's ``__class__``.
    found = [
        o
        for generation in (2, 1, 0)
        for o in gc.get_objects(generation)
        if issubclass(type(o), base) and not _dead(o)
    ]
    seen = {id(glet) for glet in found}
    for extra in (current, _root(current)):
        if id(extra) not in seen:
            seen.add(id(extra))
            found.append(extra)
    return found


def _gevent_class(module: str, name: str) -> type | None:
    """A class of gevent's, if that module is imported (never imported here)."""
    found = sys.modules.get(module)
    kind = vars(found).get(name) if found is not None else None
    return kind if issubclass(type(kind), type) else None


def _group(live: LiveGreenlet) -> tuple[int | None, int]:
    """Greenlets of one thread share it: the thread's id if known, else its
    main greenlet's."""
    return (live.thread, 0) if live.thread is not None else (None, live.root)


def _root(glet: greenlet.greenlet) -> greenlet.greenlet:
    """The main greenlet of ``glet``'s thread (parents never cross threads)."""
    parent = _parent(glet)
    while parent is not None:
        glet, parent = parent, _parent(parent)
    return glet


def _last_record(buffer: GreenletBuffer) -> tuple[int, int] | None:
    """The kind and time of the last record of ``buffer`` that is not a
    sample, if the buffer has kept everything since (none dropped)."""
    if buffer.dropped:
        return None
    records = buffer.records
    for back in range(1, 17):
        try:
            record = records[-back]  # from the right: a drain takes from the left
        except IndexError:
            return None
        if record[0] != SAMPLE:
            return record[0], record[1]
    return None


def _order(live: LiveGreenlet) -> tuple[int, int]:
    rank = {RUNNING: 0, SUSPENDED: 2, NOT_STARTED: 3}[live.state]
    if live.state != RUNNING and (live.is_main or live.is_hub):
        rank = 1
    return rank, 0 if live.is_main else 1


def _header(lines: list[str], scan: ProcessScan, signum: int | None) -> None:
    when = time.strftime("%Y-%m-%d %H:%M:%S %z", time.localtime(scan.wall))
    lines.append(f"greenprof dump of process {os.getpid()} at {when}{_by_signal(signum)}")
    gevent = sys.modules.get("gevent")
    versions = f"Python {sys.version.split()[0]}, greenlet {greenlet.__version__}"
    if gevent is not None:
        versions += f", gevent {vars(gevent).get('__version__', '?')}"
        monkey = sys.modules.get("gevent.monkey")
        if monkey is not None and vars(monkey).get("saved"):
            versions += " (monkey-patched)"
    lines.append(versions)
    states = Counter(live.state for live in scan.greenlets)
    unknown = any(live.thread is None for live in scan.greenlets)
    lines.append(
        f"{_count(len(scan.greenlets), 'live greenlet')} ({states[RUNNING]} running, "
        f"{states[SUSPENDED]} suspended, {states[NOT_STARTED]} not started); "
        f"{_count(len(scan.thread_frames), 'OS thread')}"
        + (", and greenlets of a thread greenprof cannot name" if unknown else "")
    )
    sites: Counter[str] = Counter()
    for live in scan.greenlets:
        if live.site is not None and not live.is_hub:
            sites[_site_text(live.site.function, live.site.caller)] += 1
    if sites:
        lines.append("")
        lines.append("Where suspended greenlets wait (count, function, caller):")
        for text, count in sites.most_common(TOP_WAIT_SITES):
            lines.append(f"  {count:6d}  {text}")
        if len(sites) > TOP_WAIT_SITES:
            lines.append(f"  ... and {len(sites) - TOP_WAIT_SITES} more places")


def _count(number: int, thing: str) -> str:
    return f"{number} {thing}" if number == 1 else f"{number} {thing}s"


def _by_signal(signum: int | None) -> str:
    if signum is None:
        return ""
    try:
        return f", on signal {signal.Signals(signum).name} ({signum})"
    except ValueError:
        return f", on signal {signum}"


def _thread_title(thread: int | None, scan: ProcessScan, count: int) -> str:
    if thread is None:
        return (
            f"Greenlets of an OS thread greenprof cannot name ({count}; it runs no "
            "gevent hub and no greenprof session)"
        )
    return f"{_thread_label(thread, scan)}: {_count(count, 'greenlet')}"


def _thread_label(thread: int, scan: ProcessScan) -> str:
    label = f"Thread {thread}"
    name = scan.thread_names.get(thread)
    if name:
        label += f" {name!r}"
    if thread == scan.main_thread:
        label += " (main thread)"
    elif thread not in scan.thread_frames:
        label += " (no longer running)"
    return label


def _thread_names(main_thread: int) -> dict[int, str]:
    """OS thread id -> name, from threading's own table, read without its
    lock (``enumerate()`` takes one the interrupted main thread may hold),
    and each name without the ``name`` property. Under gevent's patching
    the table's keys are greenlet ids: the main thread is named apart."""
    threading = sys.modules.get("threading")
    if threading is None:
        return {}
    names: dict[int, str] = {}
    found = vars(threading)
    active = found.get("_active")
    for ident, thread in list(active.items()) if type(active) is dict else ():
        name = _thread_name(thread)
        if type(ident) is int and name is not None:
            names[ident] = name
    main = _thread_name(found.get("_main_thread"))
    if main is not None:
        names[main_thread] = main
    return names


def _thread_name(thread: object) -> str | None:
    state = getattr(thread, "__dict__", None)
    name = state.get("_name") if type(state) is dict else None
    return name if type(name) is str else None


def _greenlet(lines: list[str], live: LiveGreenlet, scan: ProcessScan) -> None:
    glet = live.glet
    try:
        marks = "".join(
            mark for mark, on in ((" [main greenlet]", live.is_main), (" [hub]", live.is_hub)) if on
        )
        thread = live.thread if live.thread is not None else "unknown"
        lines.append(f"Greenlet {greenlet_name(glet)!r} id={id(glet)} thread={thread}{marks}")
        lines.append(f"  {_state_text(live, scan)}")
        site = live.site
        if site is not None:
            verb = "waits in" if site.in_gevent else "suspended in"
            loop = " (the event loop)" if live.is_hub else ""
            lines.append(f"  {verb}: {_site_text(site.function, site.caller)}{loop}")
        elif live.state == SUSPENDED:
            lines.append(f"  suspended in code with no Python frame; it runs {_run_of(glet)}")
            if live.maybe_running:
                lines.append("  (or it is the one running in its thread)")
        elif live.state == NOT_STARTED:
            lines.append(f"  will run: {_run_of(glet)}")
        if live.top is not None:
            lines.append("  stack (outermost first):")
            _stack(lines, live.top, "    ")
        elif live.state == RUNNING:
            lines.append("  stack: not known")
    except Exception as exc:  # one odd greenlet must not cost the rest of the dump
        lines.append(f"  (greenprof could not describe it: {type(exc).__name__}: {exc})")


def _state_text(live: LiveGreenlet, scan: ProcessScan) -> str:
    if live.state == NOT_STARTED:
        return "not started"
    if live.state == RUNNING:
        where = "interrupted by the signal" if live.glet is scan.current else "in its thread"
        text = f"running ({where})"
    else:
        text = "suspended"
    watched, last = scan.last_switch(live.glet)
    if last is not None:
        seconds = f"{(scan.now_ns - last[1]) / 1e9:.3f} s"
        if live.state == RUNNING and last[0] in (SWITCH_IN, THROW):
            return f"{text} for {seconds}, since it was switched in"
        if live.state == RUNNING and last[0] == START:
            return f"{text} for at least {seconds}, since a greenprof session started in it"
        if live.state == SUSPENDED and last[0] == SWITCH_OUT:
            return f"{text} for {seconds}, since it switched out"
    if watched:
        return f"{text} for an unknown time (its greenprof session did not keep its last switch)"
    return f"{text} for an unknown time (no greenprof session watches it)"


def _site_text(function: str | None, caller: FrameType | None) -> str:
    text = function if function is not None else "a function greenprof cannot name"
    if caller is not None:
        text += f", called from {_frame(caller)}"
    return text


def _run_of(glet: greenlet.greenlet) -> str:
    """What the greenlet was made to run: gevent keeps it in ``_run``, a
    plain greenlet in ``run`` until it starts; else its class's ``run``."""
    state = getattr(glet, "__dict__", None)
    run = state.get("_run") if type(state) is dict else None
    if run is None:
        try:
            run = _GREENLET["run"].__get__(glet)
        except AttributeError:
            mro: tuple[type, ...] = type.__dict__["__mro__"].__get__(type(glet))
            run = next((k.__dict__["run"] for k in mro if "run" in k.__dict__), None)
    name = qualified_name(run) if run is not None else None
    return name or "an unknown function"


def _frame(frame: FrameType) -> Frame:
    code = frame.f_code
    return Frame(code.co_filename, code_name(code), frame.f_lineno or code.co_firstlineno)


def _stack(lines: list[str], top: FrameType | None, indent: str) -> None:
    """The stack under ``top``, outermost first, like a traceback."""
    if top is None:
        lines.append(f"{indent}(no Python frame)")
        return
    frames: list[FrameType] = []
    frame: FrameType | None = top
    while frame is not None and len(frames) < MAX_FRAMES:
        frames.append(frame)
        frame = frame.f_back
    left_out = 0
    while frame is not None and left_out < 100_000:
        left_out += 1
        frame = frame.f_back
    if left_out:
        lines.append(f"{indent}... {left_out} outer frames left out")
    for frame in reversed(frames):
        where = _frame(frame)
        lines.append(f"{indent}{where}")
        source = linecache.getline(where.filename, where.lineno).strip()
        if source:
            lines.append(f"{indent}    {source}")
