"""Where a suspended greenlet waits: the program's frame that called into
gevent, and the gevent function it called, named even when gevent runs it
as compiled code that leaves no Python frame (``Event.wait``, ``Queue.get``,
locks, ``joinall``).

Used by the live dump, inside a signal handler: nothing here runs the
program's code (no ``getattr`` that could reach a property or
``__getattr__``), imports, switches or locks.
"""

from __future__ import annotations

import dis
import re
import sys
import types
from types import CodeType, FrameType
from typing import Any, Final, NamedTuple

from ._stack import code_name

#: Instructions that call; a suspended frame's ``f_lasti`` is at one.
_CALLS: Final = frozenset({"CALL", "CALL_KW", "CALL_FUNCTION_EX"})
#: Instructions inside a call expression that load nothing the name needs.
_PASSED: Final = frozenset({"PRECALL", "KW_NAMES", "PUSH_NULL", "NOP", "CACHE"})
#: Loads of an attribute of what is on the stack.
_ATTRIBUTES: Final = frozenset({"LOAD_ATTR", "LOAD_METHOD"})
#: Loads of a name (the head of a dotted name), by prefix.
_LOCAL_NAMES: Final = ("LOAD_FAST", "LOAD_DEREF", "LOAD_CLASSDEREF", "LOAD_NAME")
_GLOBAL_NAMES: Final = ("LOAD_GLOBAL", "LOAD_NAME", "LOAD_FROM_DICT_OR_GLOBALS")
#: gevent's compiled modules are named after the source module they are
#: built from: ``gevent._gevent_cevent`` from ``gevent/event.py``,
#: ``gevent._gevent_c_semaphore`` from ``gevent/_semaphore.py``.
_COMPILED: Final = re.compile(r"gevent\._gevent_c(_?)(\w+)")
#: Types whose ``__module__`` and ``__qualname__`` are plain fields (no
#: program code runs to read them).
_NAMED: Final = (
    types.FunctionType,
    types.BuiltinFunctionType,
    types.MethodDescriptorType,
    types.WrapperDescriptorType,
    types.ClassMethodDescriptorType,
)
_MISSING: Final = object()
_MODULE_DICT: Final = vars(types.ModuleType)["__dict__"]


class WaitSite(NamedTuple):
    """Where a suspended greenlet is."""

    #: The function it is suspended in, dotted (``gevent.hub.sleep``), or
    #: None when it cannot be named.
    function: str | None
    #: The innermost frame that is not gevent's: the program's call into
    #: ``function``. None when every frame is gevent's (the hub).
    caller: FrameType | None
    #: Whether ``function`` is gevent's: a wait on the event loop.
    in_gevent: bool


def wait_site(top: FrameType, instructions: dict[int, tuple[CodeType, list[Any]]]) -> WaitSite:
    """The wait site of a greenlet suspended with ``top`` as its top frame.

    ``instructions``: a cache of disassembled code for one dump.
    """
    frame: FrameType | None = top
    entry = None
    while frame is not None and is_gevent_module(_module_of(frame)):
        entry = frame
        frame = frame.f_back
    if entry is not None:
        return WaitSite(_frame_function(entry), frame, True)
    callee = _callee(top, instructions)
    if callee is None:
        return WaitSite(None, top, False)
    return WaitSite(callee, top, is_gevent_module(callee))


def is_gevent_module(name: str) -> bool:
    return name == "gevent" or name.startswith("gevent.")


def public_module(name: str) -> str:
    """``name`` with gevent's compiled module names mapped to their source
    module's, so a dump reads the same whether gevent is compiled or not."""
    found = _COMPILED.fullmatch(name)
    if found is None:
        return name
    return f"gevent.{found.group(1)}{found.group(2)}"


def _module_of(frame: FrameType) -> str:
    name = frame.f_globals.get("__name__")
    return name if type(name) is str else ""


def _frame_function(frame: FrameType) -> str:
    return f"{public_module(_module_of(frame))}.{code_name(frame.f_code)}"


def _callee(frame: FrameType, cache: dict[int, tuple[CodeType, list[Any]]]) -> str | None:
    """The dotted name of the function ``frame`` is calling, worked out from
    its bytecode: the call at ``f_lasti`` and the loads of its callable
    (the instructions starting where the call expression starts; arguments
    start after its parenthesis). Python 3.11+ (source positions)."""
    if sys.version_info < (3, 11):
        return None
    code = frame.f_code
    found = cache.get(id(code))
    if found is None:
        found = cache[id(code)] = (code, list(dis.get_instructions(code)))
    listing = found[1]
    lasti = frame.f_lasti
    index = next((i for i, ins in enumerate(listing) if ins.offset == lasti), None)
    if index is None or listing[index].opname not in _CALLS:
        return None
    where = listing[index].positions
    if where is None or where.lineno is None:
        return None
    start = (where.lineno, where.col_offset)
    names: list[str] = []
    for ins in reversed(listing[:index]):
        position = ins.positions
        if position is None or (position.lineno, position.col_offset) != start:
            continue  # an argument
        if ins.opname in _PASSED:
            continue
        if ins.opname in _ATTRIBUTES and isinstance(ins.argval, str):
            names.append(ins.argval)
            continue
        if ins.opname.startswith(_LOCAL_NAMES + _GLOBAL_NAMES) and isinstance(ins.argval, str):
            names.append(ins.argval)
            obj = _load(frame, ins.opname, ins.argval)
            names.reverse()
            return _name(obj, names)
        return None  # a call, a subscript...: not a plain dotted name
    return None


def _load(frame: FrameType, opname: str, name: str) -> object:
    """What the load instruction ``opname`` of ``name`` finds in ``frame``."""
    scopes: list[Any] = []
    if opname.startswith(_LOCAL_NAMES):
        scopes.append(frame.f_locals)
    if opname.startswith(_GLOBAL_NAMES):
        scopes += [frame.f_globals, frame.f_builtins]
    for scope in scopes:
        if type(scope) is dict or type(scope).__name__ == "FrameLocalsProxy":
            value = scope.get(name, _MISSING)
            if value is not _MISSING:
                return value
    return _MISSING


def _name(obj: object, names: list[str]) -> str:
    """The dotted name of ``obj`` followed by ``names[1:]``, attribute by
    attribute, without running any of the program's code; where that cannot
    be done, the names as the source spells them.

    (Types are checked with ``issubclass(type(obj), ...)`` here and below:
    ``isinstance`` may read a ``__class__`` property.)"""
    for attribute in names[1:]:
        if obj is _MISSING:
            break
        obj = _static_attribute(obj, attribute)
    named = qualified_name(obj) if obj is not _MISSING else None
    return named if named is not None else ".".join(names)


def _static_attribute(obj: object, name: str) -> object:
    """``obj.<name>`` where it is plain data: a module's global, an instance's
    ``__dict__`` entry or slot, a class's function. Never a property, a
    ``__getattr__`` or any other code of the program."""
    if issubclass(type(obj), types.ModuleType):
        return _MODULE_DICT.__get__(obj).get(name, _MISSING)
    kind = type(obj)
    mro: tuple[type, ...] = type.__dict__["__mro__"].__get__(kind)
    on_class = next((k.__dict__[name] for k in mro if name in k.__dict__), _MISSING)
    if type(on_class) is types.MemberDescriptorType:  # a slot
        try:
            return on_class.__get__(obj, kind)
        except AttributeError:
            return _MISSING
    if on_class is not _MISSING and _is_data_descriptor(on_class):
        return _MISSING  # a property or the like: it runs code
    instance_dict = _instance_dict(obj, mro)
    if instance_dict is not None and name in instance_dict:
        return instance_dict[name]
    if issubclass(type(obj), type):
        own: tuple[type, ...] = type.__dict__["__mro__"].__get__(obj)
        return next((k.__dict__[name] for k in own if name in k.__dict__), on_class)
    return on_class


def _is_data_descriptor(attribute: object) -> bool:
    mro: tuple[type, ...] = type.__dict__["__mro__"].__get__(type(attribute))
    return any("__set__" in k.__dict__ or "__delete__" in k.__dict__ for k in mro)


def _instance_dict(obj: object, mro: tuple[type, ...]) -> dict[str, Any] | None:
    for klass in mro:
        descriptor = klass.__dict__.get("__dict__")
        if descriptor is not None:
            if type(descriptor) is not types.GetSetDescriptorType:
                return None  # a property of the program's
            found = descriptor.__get__(obj, type(obj))
            return found if type(found) is dict else None
    return None


def qualified_name(obj: object) -> str | None:
    """``module.qualname`` of a function, method or class; None for other
    objects (reading their names could run the program's code)."""
    kind = type(obj)
    if issubclass(kind, (staticmethod, classmethod, types.MethodType)):
        obj = obj.__func__  # type: ignore[attr-defined]
        kind = type(obj)
    if issubclass(kind, _NAMED) or kind.__name__.endswith("cython_function_or_method"):
        module = getattr(obj, "__module__", None)
        if type(module) is not str:
            owner = getattr(obj, "__objclass__", None)
            module = owner.__module__ if issubclass(type(owner), type) else None
    elif issubclass(kind, type):
        module = type.__dict__["__module__"].__get__(obj)
    else:
        return None
    qualname = getattr(obj, "__qualname__", None)
    if type(qualname) is not str:
        return None
    return f"{public_module(module)}.{qualname}" if type(module) is str else qualname
