"""An interval as pprof, with greenprof's pprof encoder: one sample per
endpoint and stack, labelled ``method`` and ``path`` and with the static
tags, never with a greenlet (one label value per greenlet would be
unbounded)."""

from __future__ import annotations

from collections.abc import Iterable

from ..exporters._common import WEIGHTS, Weight, check_weight
from ..exporters._pprof import UNITS, Tables, encode_profile
from ._interval import Endpoint, Interval

__all__ = ["interval_pprof"]

_COMMENT = "greenprof continuous: on-CPU and off-CPU time and snapshots per endpoint and stack"


def interval_pprof(
    interval: Interval,
    *,
    weight: Weight = "on_cpu",
    endpoints: Iterable[Endpoint] | None = None,
) -> bytes:
    """The gzipped pprof of ``interval`` (of some of its ``endpoints``):
    sample types ``on_cpu``, ``off_cpu`` (nanoseconds) and ``snapshots``
    (count), ``weight`` the default one."""
    check_weight(weight)
    tables = Tables()
    sample_types = [tables.value_type(kind, UNITS[kind]) for kind in WEIGHTS]
    chosen = interval.stacks if endpoints is None else list(endpoints)
    static = sorted(interval.tags.items())
    samples = []
    for endpoint in sorted(chosen, key=lambda e: (e.path, e.method)):
        labels = [("method", endpoint.method), ("path", endpoint.path), *static]
        labels = [(key, value) for key, value in labels if value]
        stacks = interval.stacks.get(endpoint, {})
        for stack in sorted(stacks, key=lambda s: [(f.filename, f.lineno, f.function) for f in s]):
            samples.append(tables.labelled_sample(stack, list(stacks[stack]), labels))
    return encode_profile(
        tables,
        sample_types,
        samples,
        default_sample_type=weight,
        start_ns=interval.start_ns,
        duration_ns=max(0, interval.end_ns - interval.start_ns),
        comment=_COMMENT,
    )
