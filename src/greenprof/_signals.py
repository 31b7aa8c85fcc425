"""Exceptions that signal handlers raise inside greenprof's own code, given
back to the program: once, without running the handler again.

A Python signal handler runs between two bytecodes of whatever the main
thread runs, greenprof's tracer included. An exception it raises there
belongs to the program, but raising it from the tracer would make greenlet
drop the tracer and throw it into whichever greenlet is being switched to.
So the tracer catches it and hands it here: it is raised again, the same
object, at the next point where the main thread checks for signals, by a
one-shot handler put in place of the signal's own for that moment. The
signal's handler, which already ran, does not run again.
"""

from __future__ import annotations

import _thread
import signal
from types import CodeType, FrameType, TracebackType
from typing import Any

__all__ = ["redeliver"]

#: signal number -> (the handler to put back, exceptions waiting to be raised).
_armed: dict[int, tuple[Any, list[BaseException]]] = {}
#: ``id()`` of exceptions the one-shot handler raised -> their signal, in
#: case one lands in greenprof's code again (a few, the latest).
_raised: dict[int, int] = {}


def redeliver(exc: BaseException) -> bool:
    """Swallow ``exc`` (greenprof's own error: False), unless a signal
    handler raised it: then raise it again in the main thread at its next
    safe point (True). A Ctrl-C with Python's default handler is such an
    exception."""
    signum = _signal_of(exc)
    if signum is None:
        return False
    try:
        _arm(signum, exc)
    except (ValueError, OSError):  # not the main thread, or an odd signal
        if isinstance(exc, KeyboardInterrupt):
            _thread.interrupt_main()
    return True


def _signal_of(exc: BaseException) -> int | None:
    """The signal whose handler raised ``exc``, if one did."""
    handlers: dict[CodeType, int] = {}
    for signum in _python_signals():
        code = _code_of(signal.getsignal(signum))
        if code is not None:
            handlers[code] = signum
    traceback: TracebackType | None = exc.__traceback__
    while traceback is not None:
        code = traceback.tb_frame.f_code
        if code is _one_shot.__code__:  # our re-raise landed in greenprof again
            return _raised.get(id(exc))
        if code in handlers:
            return handlers[code]
        traceback = traceback.tb_next
    if isinstance(exc, KeyboardInterrupt):
        return int(signal.SIGINT)  # Python's default handler has no frame
    return None


def _python_signals() -> list[int]:
    return [int(s) for s in signal.valid_signals() if s not in (signal.SIGKILL, signal.SIGSTOP)]


def _code_of(handler: object) -> CodeType | None:
    function = getattr(handler, "__func__", handler)
    code = getattr(function, "__code__", None)
    return code if isinstance(code, CodeType) else None


def _arm(signum: int, exc: BaseException) -> None:
    """Raise ``exc`` at the main thread's next check for signals."""
    if signum in _armed:
        _, waiting = _armed[signum]
        if exc not in waiting:
            waiting.append(exc)
    else:
        previous = signal.signal(signum, _one_shot)  # raises off the main thread
        _armed[signum] = (previous, [exc])
    _thread.interrupt_main(signal.Signals(signum))


def _one_shot(signum: int, frame: FrameType | None) -> None:
    previous, waiting = _armed.get(signum, (None, []))
    if not waiting:  # a real signal, nothing of ours waiting: the program's handler
        _armed.pop(signum, None)
        _restore(signum, previous)
        if callable(previous):
            previous(signum, frame)
        return
    exc = waiting.pop(0)
    if waiting:
        _thread.interrupt_main(signal.Signals(signum))  # the next one, at the next check
    else:
        del _armed[signum]
        _restore(signum, previous)
    if len(_raised) >= 16:
        _raised.clear()
    _raised[id(exc)] = signum
    raise exc.with_traceback(None)


def _restore(signum: int, previous: Any) -> None:
    if previous is not None:
        signal.signal(signum, previous)
