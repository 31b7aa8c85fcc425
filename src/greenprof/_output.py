"""Where the commands write a profile: a file whose format follows its
extension (``exporters.RENDERERS``), ``-`` for stdout, ``{pid}`` for the
writing process's id, and the file of a process ``greenprof run`` forked."""

from __future__ import annotations

import os
import sys
from typing import Final

import attrs

from . import exporters
from ._report import Report
from .exceptions import ConfigurationError
from .exporters._common import Weight

__all__ = ["PID", "STDOUT", "Destination", "write_report"]

#: In an output path, replaced by the id of the process that writes it.
PID: Final = "{pid}"
#: The output path that means stdout.
STDOUT: Final = "-"
#: The format ``greenprof run`` writes unless told otherwise.
DEFAULT_FORMAT: Final = "jsonl"


@attrs.frozen
class Destination:
    """Where ``greenprof run`` writes, and in which format."""

    #: As given: a path, maybe with ``{pid}`` in it, or ``-``.
    template: str
    format: str

    @classmethod
    def of(cls, output: str | None, format: str | None) -> Destination:
        """From ``-o`` and ``--format``: the format follows the output's
        extension unless given, and the default file is ``greenprof`` with
        the format's extension. ConfigurationError when neither tells."""
        if output is None:
            format = format or DEFAULT_FORMAT
            return cls("greenprof" + exporters.renderer_for(format).extensions[0], format)
        if format is None:
            format = DEFAULT_FORMAT if output == STDOUT else exporters.format_for_path(output)
        if format is None:
            known = ", ".join(
                f"{ending} ({renderer.name})"
                for renderer in exporters.RENDERERS.values()
                for ending in renderer.extensions
            )
            msg = f"cannot tell the format from {output!r}: give --format, or end it in {known}"
            raise ConfigurationError(msg)
        exporters.renderer_for(format)  # ConfigurationError for an unknown one
        return cls(output, format)

    def path(self, pid: int, *, forked: bool = False) -> str | None:
        """The path the process ``pid`` writes to: ``{pid}`` replaced by it,
        or, in a forked child of a path without ``{pid}``, the pid put before
        the extension, so that no process replaces another's file. None for
        a forked child of ``-``: stdout is its parent's."""
        if self.template == STDOUT:
            return None if forked else STDOUT
        if PID in self.template or not forked:
            return self.template.replace(PID, str(pid))
        return with_pid(self.template, pid, exporters.renderer_for(self.format).extensions)


def with_pid(path: str, pid: int, extensions: tuple[str, ...]) -> str:
    """``path`` with ``.pid`` before its extension: before the format's own
    (``out.pb.gz`` -> ``out.4242.pb.gz``), else before the last one
    (``out.data`` -> ``out.4242.data``), else at the end."""
    folder, name = os.path.split(path)
    lower = name.lower()
    for ending in extensions:
        if lower.endswith(ending) and len(name) > len(ending):
            stem, extension = name[: -len(ending)], name[-len(ending) :]
            break
    else:
        stem, extension = os.path.splitext(name)
    return os.path.join(folder, f"{stem}.{pid}{extension}")


def write_report(
    report: Report,
    format: str,
    path: str,
    *,
    weight: Weight = "on_cpu",
    group_by: str | None = None,
) -> None:
    """Write ``report`` in ``format`` to ``path``, replaced in one step, or
    to stdout for ``-``: a text format as text, a binary one to its buffer
    (``weight`` and ``group_by`` as ``exporters.export`` takes them)."""
    if path != STDOUT:
        exporters.write(report, format, path, weight=weight, group_by=group_by)
        return
    rendered = exporters.export(report, format, weight=weight, group_by=group_by)
    if isinstance(rendered, bytes):
        sys.stdout.flush()
        sys.stdout.buffer.write(rendered)
        sys.stdout.buffer.flush()
    else:
        sys.stdout.write(rendered)
        sys.stdout.flush()
