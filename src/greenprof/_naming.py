"""How greenprof names a greenlet in snapshots."""

from __future__ import annotations

import greenlet


def greenlet_name(glet: greenlet.greenlet) -> str:
    """gevent's ``name`` where there is one, else ``main`` or type and address."""
    name = getattr(glet, "name", None)
    if isinstance(name, str) and name:
        return name
    if glet.parent is None:
        return "main"
    return f"{type(glet).__name__}-{id(glet):#x}"
