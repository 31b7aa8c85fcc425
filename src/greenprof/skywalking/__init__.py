"""Apache SkyWalking: greenprof's snapshots as the agent's ``ThreadSnapshot``
messages, streamed to an OAP, for the profile tasks it sets.

- ``_wire``: the few protocol messages, encoded by hand (no protobuf);
- ``_client``: the collector's gRPC calls (grpc is the optional extra);
- ``_sink``: :class:`SkyWalkingSink`, a sink that queues and sends;
- ``_tasks``: :class:`ProfileTaskPoller`, profile tasks for any WSGI app;
- ``_agent``: :func:`install`, greenprof inside the SkyWalking Python agent.

The public names are also in ``greenprof.sinks`` and
``greenprof.integrations.skywalking``.
"""

from __future__ import annotations

from ._agent import AgentTakeover, install
from ._sink import SkyWalkingSink
from ._tasks import ProfileTask, ProfileTaskPoller

__all__ = ["AgentTakeover", "ProfileTask", "ProfileTaskPoller", "SkyWalkingSink", "install"]
