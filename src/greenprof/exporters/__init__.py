"""Profiles in the formats other tools read: collapsed stacks, speedscope, Chrome
trace events, pprof, an HTML flame graph and a text tree; and greenprof's
own JSON Lines.

Every renderer takes a :class:`~greenprof.Report` (``profiler.report()`` or
``Report.from_file(path)``), keeps greenlets apart (or, with ``group_by``,
merges every session of each tag value), and weighs stacks by on-CPU time,
off-CPU time or snapshot count. :data:`RENDERERS` lists them by name.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any, Final, cast

import attrs

from .._files import replace_file
from .._report import Report
from ..exceptions import ConfigurationError
from ._chrome import chrome_trace
from ._collapsed import collapsed
from ._common import WEIGHTS, Weight, check_weight, default_group
from ._html import html
from ._jsonl import jsonl
from ._pprof import pprof
from ._speedscope import SPEEDSCOPE_SCHEMA, speedscope
from ._text import text

__all__ = [
    "FORMATS",
    "RENDERERS",
    "SPEEDSCOPE_SCHEMA",
    "WEIGHTS",
    "Renderer",
    "chrome_trace",
    "collapsed",
    "default_group",
    "export",
    "format_for_path",
    "html",
    "jsonl",
    "renderer_for",
    "pprof",
    "speedscope",
    "text",
    "write",
]


@attrs.frozen
class Renderer:
    """One output format."""

    name: str
    #: ``function(report, group_by=...)``, and ``weight=...`` if it
    #: ``weighs``: text, or bytes if ``binary``.
    function: Callable[..., str | bytes]
    binary: bool
    #: Whether stacks are sized by the weight (else every weight is in it).
    weighs: bool
    #: File name endings that mean this format, longest first.
    extensions: tuple[str, ...]
    description: str

    def render(
        self, report: Report, *, weight: Weight = "on_cpu", group_by: str | None = None
    ) -> str | bytes:
        check_weight(weight)
        if self.weighs:
            return self.function(report, weight=weight, group_by=group_by)
        return self.function(report, group_by=group_by)

    def render_bytes(
        self, report: Report, *, weight: Weight = "on_cpu", group_by: str | None = None
    ) -> bytes:
        """What a file in this format holds: text is UTF-8 (a lone surrogate
        from a non-UTF-8 file name escaped)."""
        rendered = self.render(report, weight=weight, group_by=group_by)
        if self.binary:
            return cast(bytes, rendered)
        return cast(str, rendered).encode("utf-8", "backslashreplace")


#: Every format, by name.
RENDERERS: Final = {
    renderer.name: renderer
    for renderer in (
        Renderer(
            "jsonl",
            jsonl,
            binary=False,
            weighs=False,
            extensions=(".jsonl",),
            description="greenprof's own JSON Lines, every session whole (greenprof show)",
        ),
        Renderer(
            "collapsed",
            collapsed,
            binary=False,
            weighs=True,
            extensions=(".collapsed", ".folded"),
            description="folded stacks (flamegraph.pl, speedscope, Pyroscope)",
        ),
        Renderer(
            "speedscope",
            speedscope,
            binary=False,
            weighs=True,
            extensions=(".speedscope.json", ".json"),
            description="speedscope JSON: a timeline per greenlet",
        ),
        Renderer(
            "chrome",
            chrome_trace,
            binary=False,
            weighs=False,
            extensions=(".trace.json",),
            description="Chrome trace events (Perfetto UI, chrome://tracing)",
        ),
        Renderer(
            "pprof",
            pprof,
            binary=True,
            weighs=True,
            extensions=(".pb.gz", ".pprof"),
            description="gzipped pprof profile.proto (go tool pprof, Pyroscope)",
        ),
        Renderer(
            "html",
            html,
            binary=False,
            weighs=False,
            extensions=(".html", ".htm"),
            description="a self-contained HTML flame graph",
        ),
        Renderer(
            "text",
            text,
            binary=False,
            weighs=False,
            extensions=(".txt",),
            description="a call tree with on-CPU and off-CPU columns",
        ),
    )
}
#: The formats :func:`export` and the ``greenprof`` command know.
FORMATS: Final = tuple(RENDERERS)


def format_for_path(path: str | os.PathLike[str]) -> str | None:
    """The format a file name's ending stands for (``.pb.gz``: ``pprof``), or None."""
    name = os.fspath(path).lower()
    found = [
        (len(ending), renderer.name)
        for renderer in RENDERERS.values()
        for ending in renderer.extensions
        if name.endswith(ending)
    ]
    return max(found)[1] if found else None


def export(
    report: Report, format: str, *, weight: Weight = "on_cpu", group_by: str | None = None
) -> str | bytes:
    """Render ``report`` in ``format`` (one of :data:`FORMATS`): text, or
    bytes for a binary format (``pprof``). ``weight`` applies to the formats
    that weigh stacks (``collapsed``, ``speedscope``, ``pprof``: its default
    sample type); ``chrome`` is a timeline, ``html`` and ``text`` carry
    every weight, and ``jsonl`` every record. ``group_by`` merges the
    sessions of each value of that tag (not in ``jsonl``)."""
    return renderer_for(format).render(report, weight=weight, group_by=group_by)


def renderer_for(format: str) -> Renderer:
    """The :class:`Renderer` of ``format``, or ConfigurationError."""
    renderer = RENDERERS.get(format)
    if renderer is None:
        msg = f"format must be one of {', '.join(FORMATS)}, not {format!r}."
        raise ConfigurationError(msg)
    return renderer


def write(report: Report, format: str, path: str | os.PathLike[str], **options: Any) -> None:
    """:func:`export` ``report`` to the file at ``path`` (``weight=`` and
    ``group_by=`` as there). The file is replaced in one step: a reader sees
    the old file or the whole new one, and a failed write leaves the old."""
    replace_file(path, renderer_for(format).render_bytes(report, **options))
