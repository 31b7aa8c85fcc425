"""How greenprof names a greenlet in snapshots."""

from __future__ import annotations

import weakref

import greenlet


def greenlet_name(glet: greenlet.greenlet) -> str:
    """The name the program gave the greenlet, else ``main`` or its type and
    address.

    Never gevent's default name: ``Greenlet.name`` makes one up on first
    read (``Greenlet-N``, numbered in the order greenlets are first asked
    for it), so reading it would change the names the program's own logs
    and reprs show. An assigned name is in the instance's ``__dict__``.
    """
    state = getattr(glet, "__dict__", None)
    name = state.get("name") if state else None
    if name is None:
        name = _class_name(type(glet))
    if isinstance(name, str) and name:
        return name
    if glet.parent is None:
        return "main"
    return f"{type(glet).__name__}-{id(glet):#x}"


#: Greenlet class -> the plain string ``name`` it gives its greenlets, if
#: any. Weakly keyed: a class made on the fly (in a test, say) is freed as
#: usual, and its reference count is the program's business.
_class_names: weakref.WeakKeyDictionary[type, str | None] = weakref.WeakKeyDictionary()


def _class_name(cls: type) -> str | None:
    """A ``name`` set on the class (not a property like gevent's)."""
    try:
        return _class_names[cls]
    except KeyError:
        found = next((k.__dict__["name"] for k in cls.__mro__ if "name" in k.__dict__), None)
        name = found if isinstance(found, str) else None
        _class_names[cls] = name
        return name
