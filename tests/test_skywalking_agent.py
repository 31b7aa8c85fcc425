"""greenprof inside the real SkyWalking Python agent (apache-skywalking 1.2.0)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import pytest

from .conftest import GREENPROF_DIR
from .fake_oap import FakeOAP, task_command

tracing_pb2 = pytest.importorskip("skywalking.protocol.language_agent.Tracing_pb2")

APP = textwrap.dedent(
    """
    import json, os, sys
    from skywalking import agent, config, profile
    from skywalking.profile.profile_service import ProfileTaskExecutionService

    # A real task lasts minutes; here one "minute" of task duration lasts a
    # second, so the test sees the agent report it finished.
    ProfileTaskExecutionService.MINUTE_TO_MILLIS = 1000
    agent.start()

    import greenprof.integrations.skywalking as greenprof_skywalking
    takeover = greenprof_skywalking.install()

    import gevent, gevent.socket
    from gevent import pywsgi
    from flask import Flask

    app = Flask(__name__)

    def slow_work():
        gevent.sleep(0.05)

    @app.route("/slow")
    def slow():
        slow_work()
        return "slow"

    @app.route("/fast")
    def fast():
        return "fast"

    if sys.version_info >= (3, 12):
        # apache-skywalking 1.2.0 loads no plugin on Python 3.12+ (its loader
        # never executes the plugin modules), so its Flask plugin is missing:
        # open the entry span the way that plugin does.
        from skywalking import Component, Layer
        from skywalking.trace.context import get_context

        flask_app = app.wsgi_app

        def traced(environ, start_response):
            with get_context().new_entry_span(op=environ["PATH_INFO"]) as span:
                span.layer = Layer.Http
                span.component = Component.Flask
                return flask_app(environ, start_response)

        app.wsgi_app = traced

    continuous = None
    if os.environ.get("WITH_CONTINUOUS"):
        # greenprof's continuous profiling, on the same requests.
        from greenprof.continuous import ContinuousProfiler

        continuous = ContinuousProfiler(interval=3600, sample_rate=1.0)
        app.wsgi_app = continuous.install(app.wsgi_app)
        continuous.start()

    def get(port, path):
        sock = gevent.socket.create_connection(("127.0.0.1", port))
        sock.sendall(f"GET {path} HTTP/1.0\\r\\nHost: x\\r\\n\\r\\n".encode())
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
        sock.close()
        return data

    for _ in range(500):  # wait for the agent to fetch and start the task
        if profile.profile_task_execution_service.task_execution_context.get() is not None:
            break
        gevent.sleep(0.02)
    server = pywsgi.WSGIServer(("127.0.0.1", 0), app, log=None)
    server.start()
    jobs = [gevent.spawn(get, server.server_port, path) for path in ["/slow"] * 3 + ["/fast"] * 2]
    gevent.joinall(jobs, raise_error=True)
    flushed = takeover.sink.flush(10)
    for _ in range(500):  # the task ends (3 s) and is reported finished
        if profile.profile_task_execution_service.task_execution_context.get() is None:
            break
        gevent.sleep(0.02)
    gevent.sleep(1.5)  # the agent reports the last segments
    server.stop()
    totals = {}
    if continuous is not None:
        continuous.stop()
        interval = continuous.latest
        totals = {e.path: interval.totals(e) for e in interval.stacks}
    print(json.dumps({"flushed": flushed, "continuous": totals}))
    sys.stdout.flush()
    os._exit(0)
    """
)


@pytest.mark.parametrize(
    ("patched", "continuous"),
    [(False, False), (True, False), (True, True)],
    ids=["plain", "patch_all", "patch_all-with-continuous-profiling"],
)
def test_agent_requests_are_profiled_with_its_segment_ids_and_the_task_finishes(
    patched: bool, continuous: bool
) -> None:
    # Under monkey.patch_all the agent switches grpc into gevent mode and its
    # own task check breaks on gevent's Queue: both are what greenprof must
    # live with.
    app = ("from gevent import monkey; monkey.patch_all()\n" if patched else "") + APP
    with FakeOAP() as oap:
        now_ms = int(time.time() * 1000)
        oap.commands = [
            task_command(
                serial="sn",
                task_id="task-7",
                endpoint="/slow",
                start_ms=now_ms,
                duration_min=3,  # "minutes" that last a second each here
                max_sampling_count=5,  # the agent refuses 10 or more
            )
        ]
        env = {
            **os.environ,
            "SW_AGENT_COLLECTOR_BACKEND_SERVICES": oap.address,
            "SW_AGENT_NAME": "shop",
            "SW_AGENT_INSTANCE_NAME": "shop-1",
            "SW_AGENT_COLLECTOR_GET_PROFILE_TASK_INTERVAL": "1",
            "SW_AGENT_METER_REPORTER_ACTIVE": "False",
            "SW_AGENT_LOG_REPORTER_ACTIVE": "False",
            "SW_AGENT_PVM_METER_REPORTER_ACTIVE": "False",
            "WITH_CONTINUOUS": "1" if continuous else "",
        }
        result = subprocess.run(
            [sys.executable, "-c", app], capture_output=True, text=True, env=env, timeout=120
        )
        assert result.returncode == 0, result.stderr[-3000:]
        outcome = json.loads(result.stdout.strip().splitlines()[-1])
        assert outcome["flushed"] is True
        snapshots = list(oap.snapshots)
        segments = [tracing_pb2.SegmentObject.FromString(raw) for raw in oap.segments]
        finished = list(oap.finished)
    entry_ops = {
        segment.traceSegmentId: next(
            span.operationName for span in segment.spans if span.spanId == 0
        )
        for segment in segments
    }
    entry_spans = {
        segment.traceSegmentId: next(span for span in segment.spans if span.spanId == 0)
        for segment in segments
    }
    slow_segments = {sid for sid, op in entry_ops.items() if op == "/slow"}
    fast_segments = {sid for sid, op in entry_ops.items() if op == "/fast"}
    assert len(slow_segments) == 3
    assert len(fast_segments) == 2
    profiled = {m.segment_id for m in snapshots}
    assert profiled == slow_segments  # the agent's own segment ids, /slow only
    assert {m.task_id for m in snapshots} == {"task-7"}
    for segment_id in profiled:
        mine = sorted(m.sequence for m in snapshots if m.segment_id == segment_id)
        assert mine == list(range(len(mine)))
        assert any(
            any(".slow_work: " in s for s in m.signatures)
            for m in snapshots
            if m.segment_id == segment_id
        )
    assert not any(s.startswith(GREENPROF_DIR) for m in snapshots for s in m.signatures)
    for message in snapshots:  # inside the request's entry span
        span = entry_spans[message.segment_id]
        assert span.startTime <= message.time_ms <= span.endTime
    assert ("shop", "shop-1", "task-7") in finished
    if continuous:  # both profiled the same requests, each to its own
        totals = outcome["continuous"]
        assert set(totals) == {"/slow", "/fast"}
        slow, fast = totals["/slow"], totals["/fast"]
        assert slow[1] >= 3 * 45_000_000  # off-CPU: three requests waiting 50 ms each
        assert fast[1] < slow[1] / 10
        assert min(slow[2], fast[2]) > 0  # snapshots of each
