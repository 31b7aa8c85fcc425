"""gunicorn: a whole-program profile of each worker, one file per worker.

In a gunicorn configuration file (``-c gunicorn.conf.py``)::

    from greenprof.integrations.gunicorn import post_fork, worker_exit

Each worker then records every greenlet it runs but the hub (its request
greenlets, with the app's frames and their wait sites), in greenlet mode,
from the moment it is forked until it exits. What it records goes to its
own JSON Lines file every few seconds, so memory stays flat however long
the worker lives, and what a worker recorded is in its file even when the
master later kills it. The environment sets it up:

``GREENPROF_OUTPUT``
    the file of each worker; ``{pid}`` is the worker's process id (default
    ``greenprof-{pid}.jsonl``; a path without ``{pid}`` gets ``.{pid}``
    before its extension, so workers never share a file).
``GREENPROF_MODE``
    ``greenlet`` (default) or ``hybrid``.
``GREENPROF_INTERVAL``
    seconds between two writes (default 5).

Or, for settings in code, ``post_fork, worker_exit = hooks(path=..., mode=...,
interval=..., **profiler_options)``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any, Final

from .._loop import BackgroundLoop
from .._profiler import Profiler
from ..exceptions import ConfigurationError
from ..sinks import JSONSink

__all__ = ["DEFAULT_OUTPUT", "hooks", "post_fork", "worker_exit", "worker_path"]

_logger = logging.getLogger("greenprof")

#: Where each worker writes, unless told otherwise.
DEFAULT_OUTPUT: Final = "greenprof-{pid}.jsonl"
#: Seconds between two writes of a worker's profile, unless told otherwise.
DEFAULT_INTERVAL: Final = 5.0

Hook = Callable[[Any, Any], None]


def worker_path(path: str, pid: int) -> str:
    """``path`` for the process ``pid``: ``{pid}`` replaced, or ``.{pid}``
    put before the extension when the path has no ``{pid}``."""
    if "{pid}" in path:
        return path.replace("{pid}", str(pid))
    stem, extension = _split_extension(path)
    return f"{stem}.{pid}{extension}"


def _split_extension(path: str) -> tuple[str, str]:
    folder, name = os.path.split(path)
    for extension in (".pb.gz", ".trace.json"):
        if name.endswith(extension) and len(name) > len(extension):
            return os.path.join(folder, name[: -len(extension)]), extension
    stem, extension = os.path.splitext(name)
    return os.path.join(folder, stem), extension


class _WorkerProfile:
    """The profile of this worker process: a session over every greenlet,
    written to its file now and then by a background thread."""

    def __init__(self, path: str, mode: str, interval: float, options: dict[str, Any]) -> None:
        self.path = worker_path(path, os.getpid())
        self.interval = interval
        self.sink = JSONSink(self.path)
        self.profiler = Profiler(
            mode=mode, follow_all=True, keep_snapshots=False, sinks=[self.sink], **options
        )
        self.loop = BackgroundLoop(self._write, name="greenprof-gunicorn")
        self.profiler.start()
        self.loop.start()

    def _write(self) -> float:
        self.profiler.flush(self.interval)
        return self.interval

    def finish(self) -> None:
        self.loop.stop(self.interval)
        if self.profiler.is_running:
            self.profiler.stop()
        if not self.profiler.flush(self.interval):
            _logger.warning("greenprof: could not write all of %s", self.path)


def hooks(
    path: str = DEFAULT_OUTPUT,
    *,
    mode: str = "greenlet",
    interval: float = DEFAULT_INTERVAL,
    **options: Any,
) -> tuple[Hook, Hook]:
    """gunicorn's ``post_fork`` and ``worker_exit`` hooks, profiling each
    worker into ``path`` (see the module's documentation); ``options`` go to
    its :class:`~greenprof.Profiler` (``max_depth``, ``only``, ...)."""
    if mode not in ("greenlet", "hybrid"):
        msg = (
            f"a worker's profile records its greenlets' switches: mode must be "
            f"'greenlet' or 'hybrid', not {mode!r}."
        )
        raise ConfigurationError(msg)
    if not isinstance(interval, (int, float)) or not 0 < interval <= 3600:
        msg = f"interval is the seconds between two writes, > 0 and <= 3600, not {interval!r}."
        raise ConfigurationError(msg)
    if not isinstance(path, str) or not path:
        msg = f"path is the file each worker writes (with {{pid}} in it), not {path!r}."
        raise ConfigurationError(msg)
    Profiler(mode=mode, **options)  # bad options fail here, in the master, not in each worker
    profile: list[_WorkerProfile] = []

    def post_fork(server: Any, worker: Any) -> None:
        profile.clear()  # a worker forked from a master that profiled: its own
        profile.append(_WorkerProfile(path, mode, float(interval), options))

    def worker_exit(server: Any, worker: Any) -> None:
        if profile:
            profile.pop().finish()

    return post_fork, worker_exit


def _from_environment(server: Any, worker: Any) -> None:
    interval = os.environ.get("GREENPROF_INTERVAL", "")
    try:
        seconds = float(interval) if interval else DEFAULT_INTERVAL
    except ValueError:
        msg = f"GREENPROF_INTERVAL must be a number of seconds, not {interval!r}."
        raise ConfigurationError(msg) from None
    start, finish = hooks(
        os.environ.get("GREENPROF_OUTPUT") or DEFAULT_OUTPUT,
        mode=os.environ.get("GREENPROF_MODE") or "greenlet",
        interval=seconds,
    )
    _environment_hooks[:] = [finish]
    start(server, worker)


_environment_hooks: list[Hook] = []


def post_fork(server: Any, worker: Any) -> None:
    """gunicorn's ``post_fork`` hook: profile this worker (settings from the
    environment, see the module's documentation)."""
    _from_environment(server, worker)


def worker_exit(server: Any, worker: Any) -> None:
    """gunicorn's ``worker_exit`` hook: stop the worker's profile and write
    the rest of it."""
    if _environment_hooks:
        _environment_hooks.pop()(server, worker)
