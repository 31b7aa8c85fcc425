"""A Flask app on gevent.pywsgi, with slow requests profiled by greenprof.

Run: ``python examples/flask_app.py [port]`` (needs Flask:
``pip install flask``), then request http://127.0.0.1:8000/slow and /fast.
Requests that take longer than 20 ms are written, one session each, to
``flask-profiles.jsonl``, tagged with their method, path, status, duration
and route; see them with ``greenprof show flask-profiles.jsonl`` (a summary
by path, then one tree per path).
"""

from __future__ import annotations

import sys

import gevent
from flask import Flask, request
from gevent import pywsgi

from greenprof.integrations.wsgi import ProfilerMiddleware
from greenprof.sinks import JSONSink


def load_order(order_id: int) -> dict[str, int]:
    gevent.sleep(0.05)  # the database
    return {"order": order_id}


def create_app(profile_path: str = "flask-profiles.jsonl") -> Flask:
    app = Flask(__name__)

    @app.before_request
    def tag_route() -> None:
        # The route template (/orders/<id>), not the raw path, for grouping.
        if request.url_rule is not None:
            request.environ.setdefault("greenprof.tags", {})["route"] = request.url_rule.rule

    @app.route("/slow")
    def slow() -> dict[str, int]:
        return load_order(7)

    @app.route("/fast")
    def fast() -> str:
        return "fast"

    app.wsgi_app = ProfilerMiddleware(  # type: ignore[method-assign]
        app.wsgi_app, sinks=[JSONSink(profile_path)], min_duration=0.02
    )
    return app


def main() -> None:
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 8000
    server = pywsgi.WSGIServer(("127.0.0.1", port), create_app())
    print(f"serving on http://127.0.0.1:{server.server_port}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
