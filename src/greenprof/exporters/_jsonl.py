"""greenprof's own JSON Lines (schema 2, what ``JSONSink`` writes): a report
written back as a file that ``greenprof show``, ``convert`` and
``Report.from_file`` read, every session whole."""

from __future__ import annotations

from .._report import Report
from .._schema import encode_header, encode_session, encode_snapshot
from ..exceptions import ConfigurationError

__all__ = ["jsonl"]


def jsonl(report: Report, *, group_by: str | None = None) -> str:
    """A header line, then every snapshot and every session of ``report``.

    A report narrowed by ``Report.where()`` gives the file of those sessions
    only. Merging (``group_by``) makes no new records, so it is refused
    rather than ignored.
    """
    if group_by is not None:
        msg = (
            "the jsonl format keeps every session as it was recorded, so it "
            f"cannot merge them by {group_by!r}; write another format, or "
            "leave group_by out."
        )
        raise ConfigurationError(msg)
    lines = [
        encode_header(),
        *map(encode_snapshot, report.snapshots),
        *map(encode_session, report.sessions),
    ]
    return "".join(line + "\n" for line in lines)
