"""A sink that appends snapshots to a JSON Lines file (see ``greenprof._schema``)."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable, Sequence

from .._schema import encode_header, encode_session, encode_snapshot
from ..exceptions import SinkClosedError
from ..snapshot import Session, Snapshot


class JSONSink:
    """Appends snapshots and sessions to ``path``, one JSON object a line.

    The file starts with a header line naming the format and its version;
    :func:`greenprof.load` and :meth:`greenprof.Report.from_file` read it
    back. Each export opens the file in append mode and writes its whole
    batch with one ``write``, so the file is complete after every export,
    several profilers (and processes) can share it, and no file handle stays
    open between requests.
    """

    #: Its export writes one local file, never waits for the network:
    #: greenprof calls it in the thread that stops a session, so the file
    #: holds the session when ``stop()`` returns.
    export_never_blocks = True

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
        text = "".join(line + "\n" for line in lines)
        if not text:
            return
        with self._lock, open(self.path, "a", encoding="utf-8") as file:
            if file.tell() == 0:
                text = encode_header() + "\n" + text
            file.write(text)

    def flush(self, timeout: float | None = None) -> bool:
        # Every export closes the file, so there is never anything pending.
        return True

    def close(self) -> None:
        self._closed = True

    def __repr__(self) -> str:
        return f"JSONSink({self.path!r})"
