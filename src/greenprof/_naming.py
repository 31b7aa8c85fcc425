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
    return f"{type(glet).__name__}-{hex(id(glet))}"  # hex(): cheaper than a format spec


#: ``id()`` of a greenlet class -> (a weak reference to it, the plain
#: string ``name`` it gives its greenlets, if any). Weak: a class made on
#: the fly (in a test, say) is freed as usual, and its reference count is
#: the program's business; an entry whose class was freed is found out by
#: its reference (another class may have its id by then). Not a
#: WeakKeyDictionary: its lookup, in Python, cost more than the rest of
#: naming a greenlet, once per kept request.
_class_names: dict[int, tuple[weakref.ref[type], str | None]] = {}
#: Entries kept at most (dead classes' entries are dropped when it is full).
_MAX_CLASSES = 1024


def _class_name(cls: type) -> str | None:
    """A ``name`` set on the class (not a property like gevent's)."""
    entry = _class_names.get(id(cls))
    if entry is not None and entry[0]() is cls:
        return entry[1]
    found = next((k.__dict__["name"] for k in cls.__mro__ if "name" in k.__dict__), None)
    name = found if isinstance(found, str) else None
    if len(_class_names) >= _MAX_CLASSES:
        # A copy made in one step (no item is allocated during it, so no
        # garbage collection lets another thread add a class meanwhile).
        for key, (ref, _) in _class_names.copy().items():
            if ref() is None:
                _class_names.pop(key, None)
        if len(_class_names) >= _MAX_CLASSES:
            _class_names.clear()
    _class_names[id(cls)] = (weakref.ref(cls), name)
    return name
