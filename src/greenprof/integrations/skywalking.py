"""SkyWalking profile tasks: poll the OAP for them and profile matching
requests (:class:`ProfileTaskPoller`), or take profiling over inside the
SkyWalking Python agent (:func:`install`). See ``greenprof.skywalking``."""

from __future__ import annotations

from ..skywalking import AgentTakeover, ProfileTask, ProfileTaskPoller, install

__all__ = ["AgentTakeover", "ProfileTask", "ProfileTaskPoller", "install"]
