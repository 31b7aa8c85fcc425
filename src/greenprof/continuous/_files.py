"""``FileExporter``: each interval as a pprof file in a folder, the newest
``keep`` kept."""

from __future__ import annotations

import contextlib
import os
import re
import time
from typing import Final

from .._files import replace_file
from .._validate import check_positive_int
from ..exceptions import ConfigurationError
from ._encode import interval_pprof
from ._interval import Interval

__all__ = ["FileExporter"]

#: ``greenprof-20260101T120000.000000Z-1234.pb.gz``: the interval's start
#: (UTC, to the microsecond) and the process; names sort by time.
_NAME: Final = re.compile(r"greenprof-\d{8}T\d{6}\.\d{6}Z-\d+(-\d+)?\.pb\.gz")


class FileExporter:
    """Writes each interval to ``directory`` as
    ``greenprof-<start, UTC>-<pid>.pb.gz`` (all endpoints, samples labelled
    ``method`` and ``path``; ``go tool pprof -tagfocus=path=/checkout``) and
    removes the oldest such files past ``keep`` (every process writing
    there counts: ``keep`` is the folder's). A file appears whole or not
    at all."""

    def __init__(self, directory: str | os.PathLike[str], *, keep: int = 60) -> None:
        check_positive_int("keep", keep)
        self.directory = os.fspath(directory)
        if not os.path.isdir(self.directory):
            msg = f"FileExporter's directory {self.directory!r} is not a folder: create it first."
            raise ConfigurationError(msg)
        self.keep = keep
        #: Files written, and files removed by rotation.
        self.written = 0
        self.removed = 0

    def publish(self, interval: Interval) -> None:
        seconds, nanos = divmod(interval.start_ns, 1_000_000_000)
        stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(seconds))
        base = f"greenprof-{stamp}.{nanos // 1000:06d}Z-{os.getpid()}"
        path = os.path.join(self.directory, base + ".pb.gz")
        number = 1
        while os.path.exists(path):  # two intervals closed within a microsecond (flush)
            path = os.path.join(self.directory, f"{base}-{number}.pb.gz")
            number += 1
        replace_file(path, interval_pprof(interval))
        self.written += 1
        self._rotate()

    def _rotate(self) -> None:
        names = sorted(name for name in os.listdir(self.directory) if _NAME.fullmatch(name))
        for name in names[: max(0, len(names) - self.keep)]:
            with contextlib.suppress(FileNotFoundError):  # another process removed it
                os.unlink(os.path.join(self.directory, name))
                self.removed += 1

    def flush(self, timeout: float | None = None) -> bool:
        return True  # each file is whole when publish returns

    def close(self) -> None:
        pass

    def __repr__(self) -> str:
        return f"FileExporter({self.directory!r}, keep={self.keep})"
