"""A sink that appends snapshots to a JSON Lines file (see ``greenprof._schema``)."""

from __future__ import annotations

import contextlib
import errno
import io
import os
import threading
from collections.abc import Iterable, Iterator, Sequence

from .._schema import encode_header, encode_session, encode_snapshot
from ..exceptions import SinkClosedError
from ..snapshot import Session, Snapshot

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks, appends still whole
    fcntl = None  # type: ignore[assignment]


class JSONSink:
    """Appends snapshots and sessions to ``path``, one JSON object a line.

    The file starts with a header line naming the format and its version;
    :func:`greenprof.load` and :meth:`greenprof.Report.from_file` read it
    back. Each export opens the file in append mode and writes its whole
    batch, so the file is complete after every export, several profilers
    (and processes) can share it, and no file handle stays open between
    requests.

    A write cut short (a full disk) is undone: the file is cut back to where
    the batch began and the export raises, so the profiler retries the
    whole batch later (at its next hand-over or ``flush()``) and no snapshot
    is torn or written twice. A torn line left by someone else (a killed
    process) is closed before the batch, so it costs that line only.
    """

    #: Its export writes one local file, never waits for the network:
    #: greenprof calls it in the thread that stops a session, so the file
    #: holds the session when ``stop()`` returns.
    export_never_blocks = True
    #: Its flush has nothing to wait for (see ``flush``): called in the
    #: caller's thread too, so ``flush()`` lets no other greenlet run for it.
    flush_never_blocks = True

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self._lock = threading.Lock()
        self._closed = False

    def export(self, batch: Sequence[Snapshot]) -> None:
        self._append(map(encode_snapshot, batch))

    def export_sessions(self, sessions: Sequence[Session]) -> None:
        self._append(map(encode_session, sessions))

    def _append(self, lines: Iterable[str]) -> None:
        if self._closed:
            msg = f"JSONSink({self.path!r}) is closed; create a new one to write again."
            raise SinkClosedError(msg)
        data = "".join(line + "\n" for line in lines).encode("utf-8")
        if not data:
            return
        with self._lock, self._open() as file, _exclusive(file):
            _append_lines(file, data)

    def _open(self) -> io.FileIO:
        """The file, for appending and reading its end, unbuffered: each
        write reaches the OS at once, so a failed one is seen where it fails."""
        return io.FileIO(self.path, "a+")

    def flush(self, timeout: float | None = None) -> bool:
        # Every export closes the file, so there is never anything pending.
        return True

    def close(self) -> None:
        self._closed = True

    def __repr__(self) -> str:
        return f"JSONSink({self.path!r})"


@contextlib.contextmanager
def _exclusive(file: io.FileIO) -> Iterator[None]:
    """Hold the file's advisory lock: another JSONSink (another process) may
    not append between our measuring its end and cutting a failed batch off."""
    if fcntl is None:  # pragma: no cover
        yield
        return
    fcntl.flock(file.fileno(), fcntl.LOCK_EX)
    try:
        yield
    finally:
        fcntl.flock(file.fileno(), fcntl.LOCK_UN)


def _append_lines(file: io.FileIO, data: bytes) -> None:
    """Append ``data`` (whole lines) entirely, or leave the file as it was."""
    end = file.seek(0, os.SEEK_END)
    if end == 0:
        data = encode_header().encode() + b"\n" + data
    elif not _ends_a_line(file, end):
        data = b"\n" + data  # a torn line before us: ours start on a line of their own
    try:
        _write_all(file, data)
    except BaseException:
        with contextlib.suppress(OSError):  # if it fails, the next batch's newline saves it
            file.truncate(end)
        raise


def _ends_a_line(file: io.FileIO, end: int) -> bool:
    file.seek(end - 1)
    return file.read(1) == b"\n"


def _write_all(file: io.FileIO, data: bytes) -> None:
    """Write all of ``data``: an unbuffered write may write part of it (a
    disk filling up) and say so, and the next one raises."""
    view = memoryview(data)
    while view:
        written = file.write(view)
        if not written:
            raise OSError(errno.EIO, f"writing to {file.name!r} wrote nothing")
        view = view[written:]
