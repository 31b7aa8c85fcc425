"""A plain WSGI app for gunicorn's gevent worker, profiled by greenprof.

Run: ``gunicorn -c examples/gunicorn.conf.py examples.gunicorn_app:app``
from the repository root. Slow requests (over 20 ms) are written to
``gunicorn-profiles-<pid>.jsonl``, one file per worker.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

import gevent

from greenprof.integrations.wsgi import ProfilerMiddleware
from greenprof.sinks import JSONSink


def render_report() -> bytes:
    gevent.sleep(0.05)  # a slow backend call
    return b"report"


def application(environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
    body = render_report() if environ.get("PATH_INFO") == "/slow" else b"fast"
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [body]


directory = os.environ.get("GREENPROF_PROFILE_DIR", ".")
app = ProfilerMiddleware(
    application,
    sinks=[JSONSink(os.path.join(directory, f"gunicorn-profiles-{os.getpid()}.jsonl"))],
    min_duration=0.02,
)
