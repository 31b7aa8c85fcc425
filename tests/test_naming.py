"""Naming a greenlet changes nothing the program can see: neither gevent's
own numbering of its greenlets nor the life of a greenlet class."""

from __future__ import annotations

import gc
import sys
import weakref

import gevent
import greenlet

import greenprof


def test_gevent_numbers_its_greenlets_in_the_order_the_program_asks_their_names() -> None:
    # gevent makes a greenlet's default name, Greenlet-N, when it is first
    # read, numbering greenlets in that order (gevent's own test__util
    # checks the numbers). greenprof names them without asking.
    profiler = greenprof.Profiler(follow_all=True)
    profiler.start()
    first = gevent.spawn(gevent.sleep, 0)
    second = gevent.spawn(gevent.sleep, 0)
    gevent.joinall([first, second])
    profiler.stop()
    names = {s.greenlet_name for s in profiler.snapshots}
    assert f"Greenlet-{id(first):#x}" in names
    assert f"Greenlet-{id(second):#x}" in names
    second_name = second.name  # the program asks for this one first
    assert first.name != second_name
    assert second.minimal_ident < first.minimal_ident


def test_a_greenlet_class_is_freed_after_greenprof_named_one_of_its_greenlets() -> None:
    # greenlet's own test_issue_245_reference_counting_subclass_no_threads
    # counts the references to such a class.
    class Worker(greenlet.greenlet):
        pass

    main = greenlet.getcurrent()
    references = sys.getrefcount(Worker)
    worker = Worker(lambda: main.switch())
    profiler = greenprof.Profiler()
    profiler.start(worker)
    worker.switch()
    profiler.stop()
    assert {s.greenlet_name for s in profiler.snapshots} == {f"Worker-{id(worker):#x}"}
    worker.throw(greenlet.GreenletExit)
    del worker
    gc.collect()
    assert sys.getrefcount(Worker) == references
    freed = weakref.ref(Worker)
    del Worker
    gc.collect()
    assert freed() is None


def test_a_class_is_told_from_a_freed_one_that_had_its_id() -> None:
    from greenprof import _naming

    class Old(greenlet.greenlet):
        name = "old"

    class New(greenlet.greenlet):
        name = "new"

    assert _naming.greenlet_name(Old(lambda: None)) == "old"
    # As if New had been made where Old was, after Old was freed.
    _naming._class_names[id(New)] = _naming._class_names[id(Old)]
    freed = weakref.ref(Old)
    del Old
    gc.collect()
    assert freed() is None
    assert _naming.greenlet_name(New(lambda: None)) == "new"
    assert _naming.greenlet_name(New(lambda: None)) == "new"  # and from its own entry


def test_the_names_of_classes_made_on_the_fly_take_bounded_memory() -> None:
    from greenprof import _naming

    for number in range(3 * _naming._MAX_CLASSES):
        cls = type(f"Made{number}", (greenlet.greenlet,), {"name": f"made-{number}"})
        assert _naming.greenlet_name(cls(lambda: None)) == f"made-{number}"
        assert len(_naming._class_names) <= _naming._MAX_CLASSES
