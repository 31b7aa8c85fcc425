"""Other people's tests, with greenprof running in every test process.

Runs test modules of gevent's own test suite (``gevent.tests``, shipped in
the gevent wheel) and of greenlet's (``greenlet.tests``) once without
greenprof (the baseline) and once per profiled configuration, and compares
them test by test. A temporary ``sitecustomize`` put first on
``PYTHONPATH`` (chaining any other one) starts
``greenprof.Profiler(follow_spawned=True, mode=MODE)``, or
``follow_all=True``, on the main greenlet of every Python process the tests
start, each test module's and every subprocess a test spawns, and stops it
at exit, writing only a few counters (snapshots, tracer errors) to a file
per process. Before each test the driver calls the session's ``flush()``,
which puts greenprof's tracer back if an earlier test took it away (as a
program that flushes now and then would), so that every test runs profiled.

Every test that passes in the baseline and fails profiled is rerun once,
profiled and baseline: it is *flaky* if it passes on that rerun or fails in
the baseline too, else a *regression*. ``JUSTIFIED`` lists the tests that
inspect what greenprof must change to work at all (the global greenlet
tracer, the process's threads), each with its reason; ``KNOWN`` lists the
regressions whose cause is known and not fixed yet. The exit status is 1
if a regression is left (a known one too, unless ``--allow-known``).

Slow (minutes: every module runs once per configuration, one or two at a
time) and so not part of the test run or of ``benchmarks/run.py``. Needs
gevent, greenlet, and for greenlet's leak checks ``objgraph`` (a test-only
package, never a greenprof dependency: ``pip install objgraph``)::

    python benchmarks/foreign_suites.py --subset --mode both --follow both
    python benchmarks/foreign_suites.py --suite greenlet --follow all
    python benchmarks/foreign_suites.py test__event test_greenlet --mode hybrid

``--python`` runs the tests with another interpreter (it must import
greenprof, gevent and greenlet); ``--json`` writes every outcome to a file;
``--keep`` keeps every run's output.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import fnmatch
import itertools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

#: gevent's test modules for greenlets, the hub, pools, queues, events,
#: locks, pywsgi, sockets, monkey-patching, thread pools and timeouts.
GEVENT_SUBSET = (
    # greenlets
    "test__greenlet",
    "test__greenletset",
    "test__GreenletExit",
    "test__util",
    "test__local",
    "test__exc_info",
    "test__contextvars",
    # the hub and the loop
    "test__hub",
    "test__hub_join",
    "test__hub_join_timeout",
    "test__destroy",
    "test__api",
    "test__sleep0",
    "test___monitor",
    "test___ident",
    # pools
    "test__pool",
    # queues
    "test__queue",
    "test__monkey_queue",
    # events
    "test__event",
    "test__iwait",
    "test__joinall",
    # locks
    "test__lock",
    "test__semaphore",
    # pywsgi and servers
    "test__pywsgi",
    "test__server",
    "test__server_pywsgi",
    # sockets
    "test__socket",
    "test__socket_close",
    "test__socket_timeout",
    "test__socket_send_memoryview",
    "test__socketpair",
    # monkey-patching
    "test__monkey",
    "test__monkey_module_run",
    "test__monkey_hub_in_thread",
    "test__monkey_logging",
    "test__monkey_multiple_imports",
    "test__threading_vs_settrace",
    # thread pools
    "test__threadpool",
    "test__threadpool_executor_patched",
    # timeouts
    "test__timeout",
    "test__api_timeout",
)

#: greenlet's test modules: all but test_version (its version string).
GREENLET_SUBSET = (
    "test_greenlet",
    "test_leaks",
    "test_gc",
    "test_generator",
    "test_generator_nested",
    "test_throw",
    "test_tracing",
    "test_weakref",
    "test_contextvars",
    "test_cpp",
    "test_extension_interface",
    "test_greenlet_trash",
    "test_interpreter_shutdown",
    "test_stack_saved",
)

SUITES = {"gevent": "gevent.tests", "greenlet": "greenlet.tests"}
MODES = ("greenlet", "hybrid")
FOLLOWS = ("spawned", "all")


@dataclass(frozen=True)
class Explained:
    """Failures of tests that pass in the baseline, explained: which ones
    (``fnmatch`` patterns on the module, on ``Class.method`` and on the
    class name of what failed the test; the modes), and why."""

    suite: str
    module: str
    tests: tuple[str, ...]
    modes: tuple[str, ...]
    reason: str
    error: str = "*"
    follows: tuple[str, ...] = FOLLOWS

    def covers(self, suite: str, module: str, test: str, config: str, error: str) -> bool:
        mode, follow = config.split("+")
        return (
            suite == self.suite
            and mode in self.modes
            and follow in self.follows
            and fnmatch.fnmatchcase(module, self.module)
            and any(fnmatch.fnmatchcase(test, pattern) for pattern in self.tests)
            and fnmatch.fnmatchcase(error, self.error)
        )


#: Justified exceptions: tests that inspect what greenprof must change to
#: work at all, the global greenlet tracer or the process's threads.
#: (README.rst, "Other people's tests", says what the last run showed.)
JUSTIFIED: tuple[Explained, ...] = (
    Explained(
        "gevent",
        "test__hub",
        ("TestPeriodicMonitoringThread.test_kill_removes_trace",),
        MODES,
        "asserts greenlet.gettrace() is None once gevent's monitor is killed: the "
        "monitor chained greenprof's tracer and puts it back",
    ),
    Explained(
        "gevent",
        "test___monitor",
        (
            "TestPeriodicMonitorBlocking.test_previous_trace",
            "TestPeriodicMonitoringThread.test_call_dead_hub",
            "TestPeriodicMonitoringThread.test_call_destroyed_hub",
            "TestPeriodicMonitoringThread.test_hub_wref",
        ),
        MODES,
        "asserts greenlet.gettrace() is None once gevent's monitor is gone (in the test "
        "or in tearDown): it is greenprof's, which the monitor chained",
    ),
    Explained(
        "gevent",
        "test__monkey_module_run",
        ("TestRun.test_threadpool_*_after_patch*",),
        ("hybrid",),
        "its script prints len(sys._current_frames()), the process's OS threads: hybrid "
        "mode's sampler is one, a real OS thread from the session's start",
    ),
    Explained(
        "greenlet",
        "test_leaks",
        ("TestLeaks.test_untracked_memory_doesnt_increase",),
        MODES,
        "measures the process's memory (USS) as rounds of 10,000 short greenlets run: a "
        "follow_all session records every one of them, and keeps what it recorded until "
        "it is read or handed to a sink (nothing reads this one): the memory is the "
        "profile's",
        error="AssertionError",
        follows=("all",),
    ),
)

#: Regressions whose cause is known and not fixed yet: still regressions
#: (the exit status is 1 unless --allow-known), reported apart.
KNOWN: tuple[Explained, ...] = ()


# -- what runs inside the test processes ------------------------------------

#: Put first on PYTHONPATH: starts greenprof in every Python process when
#: GREENPROF_SUITE_MODE is set, silently (tests compare their children's
#: output), and writes a few counters per process at exit.
SITECUSTOMIZE = '''\
"""greenprof's foreign_suites.py: profile this process from start-up."""
import os
import sys


def _chain():
    # Run the sitecustomize this one hides, if there is one.
    import importlib.machinery
    import importlib.util

    here = os.path.dirname(os.path.abspath(__file__))
    path = [p for p in sys.path if os.path.abspath(p or os.curdir) != here]
    spec = importlib.machinery.PathFinder.find_spec("sitecustomize", path)
    if spec is not None and spec.loader is not None:
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)


def _start(mode, follow, stats_dir):
    import atexit
    import json
    import time

    facts = {"pid": os.getpid(), "argv": sys.argv[:3], "mode": mode, "follow": follow}

    def write():
        try:
            name = os.path.join(stats_dir, "%d-%d.json" % (os.getpid(), time.monotonic_ns()))
            with open(name, "w") as f:
                json.dump(facts, f)
        except Exception:
            pass

    try:
        import greenprof

        profiler = greenprof.Profiler(
            mode=mode, follow_spawned=True, follow_all=follow == "all"
        )
        profiler.start()
    except BaseException as exc:
        facts["error"] = "start: %r" % (exc,)
        write()
        return
    # For the driver, which calls flush() before each test: it puts
    # greenprof's tracer back if a test took it away.
    globals()["greenprof_profiler"] = profiler
    if mode == "hybrid":
        # Let the sampler's thread start before start-up goes on. CPython
        # switches its raw allocator for a moment right after start-up (and
        # at exit): a thread that starts then, in dev mode (its debug
        # allocator), frees its start-up block with the wrong allocator and
        # aborts the process ("munmap_chunk(): invalid pointer"), greenprof
        # or not.
        from greenprof._sampler import SAMPLER

        deadline = time.monotonic() + 5
        while SAMPLER.thread_id is None and time.monotonic() < deadline:
            time.sleep(0.0001)

    def stop():
        try:
            profiler.stop()
            stats = profiler.stats
            facts.update(
                snapshots=stats.snapshots,
                dropped=stats.dropped,
                tracer_errors=stats.tracer_errors,
                tracer_reinstalls=stats.tracer_reinstalls,
            )
            if os.environ.get("GREENPROF_SUITE_BUILD"):
                facts["built"] = len(profiler.snapshots)
        except BaseException as exc:
            facts["error"] = "stop: %r" % (exc,)
        write()

    atexit.register(stop)


try:
    _chain()
finally:
    if os.environ.get("GREENPROF_SUITE_MODE"):
        _start(
            os.environ["GREENPROF_SUITE_MODE"],
            os.environ.get("GREENPROF_SUITE_FOLLOW", "spawned"),
            os.environ["GREENPROF_SUITE_STATS"],
        )
'''

#: Runs one test module the way its suite does (gevent's as ``__main__``,
#: greenlet's through ``unittest``), writing one JSON line per outcome.
DRIVER = '''\
"""greenprof's foreign_suites.py: run one test module, record each outcome."""
import atexit
import json
import os
import runpy
import sys
import unittest

kind, out_path, module = sys.argv[1:4]
names = sys.argv[4:]
out = open(out_path, "a", buffering=1)
atexit.register(out.close)
result_class = unittest.result.TestResult
profiler = getattr(sys.modules.get("sitecustomize"), "greenprof_profiler", None)


def key(test):
    name = test.id()
    for prefix in ("__main__.", module + "."):
        if name.startswith(prefix):
            return name[len(prefix):]
    return name.replace("(__main__.", "(").replace("(" + module + ".", "(")


def recorder(outcome, method):
    def record(self, test, *args):
        failed = outcome
        if method.__name__ == "addSubTest":
            failed = "pass" if args[1] is None else "fail"
        note = {"test": key(test), "outcome": failed}
        if failed == "fail":
            err = args[-1] if args else None  # exc_info, or a string (unexpected success)
            note["error"] = err[0].__name__ if isinstance(err, tuple) else "UnexpectedSuccess"
        out.write(json.dumps(note) + "\\n")
        return method(self, test, *args)

    return record


for name, outcome in (
    ("addSuccess", "pass"),
    ("addExpectedFailure", "pass"),
    ("addFailure", "fail"),
    ("addError", "fail"),
    ("addUnexpectedSuccess", "fail"),
    ("addSkip", "skip"),
    ("addSubTest", None),
):
    setattr(result_class, name, recorder(outcome, getattr(result_class, name)))

if profiler is not None:
    # A test may have removed greenprof's tracer (settrace(None), or a
    # tracer that stopped chaining it): flush() puts it back, as it does in
    # a program that flushes now and then, so every test runs profiled.
    start_test = result_class.startTest

    def startTest(self, test):
        profiler.flush()
        return start_test(self, test)

    result_class.startTest = startTest

if kind == "gevent":
    # gevent's runner runs a module from its folder: some import their neighbours.
    sys.path.insert(1, os.environ["GREENPROF_SUITE_TESTS_DIR"])
    sys.argv = [module, *names]
    runpy.run_module(module, run_name="__main__", alter_sys=True)
else:
    unittest.main(module=None, argv=["unittest", *([module + "." + n for n in names] or [module])])
'''


# -- running ---------------------------------------------------------------------

#: The pseudo-test standing for a module's process as a whole: it fails if
#: the process timed out, crashed, or exited with an error while no test
#: failed. (A module that is a script, not unittest tests, is only this.)
PROCESS = "<process>"


@dataclass
class ModuleRun:
    """One test module run once in one configuration."""

    suite: str
    module: str
    config: str
    #: ``Class.method`` -> "pass", "fail" or "skip".
    outcomes: dict[str, str] = field(default_factory=dict)
    #: ``Class.method`` -> the class name of what failed it.
    errors: dict[str, str] = field(default_factory=dict)
    returncode: int | None = None
    timed_out: bool = False
    seconds: float = 0.0
    #: What greenprof's sessions in the profiled processes counted.
    processes: int = 0
    snapshots: int = 0
    tracer_errors: int = 0
    tracer_reinstalls: int = 0
    greenprof_errors: list[str] = field(default_factory=list)

    def counts(self) -> tuple[int, int, int]:
        """Tests passed, failed, skipped (the process counts when it failed,
        or when it is all there is)."""
        values = [o for t, o in self.outcomes.items() if t != PROCESS]
        process = self.outcomes.get(PROCESS)
        if process == "fail" or not values:
            values.append(process or "fail")
        return values.count("pass"), values.count("fail"), values.count("skip")


class Runner:
    """Runs test modules in subprocesses, baseline or profiled."""

    def __init__(self, python: str, work: Path, timeout: float, build: bool) -> None:
        self.python = python
        self.work = work
        self.timeout = timeout
        self.build = build
        (work / "sitecustomize.py").write_text(SITECUSTOMIZE)
        (work / "_greenprof_suite_driver.py").write_text(DRIVER)
        self.numbers = itertools.count(1)
        code = "import os, gevent.tests as t; print(os.path.dirname(t.__file__))"
        self.gevent_tests = subprocess.check_output([python, "-c", code], text=True).strip()

    def env(self, config: str, stats_dir: Path) -> dict[str, str]:
        env = dict(os.environ)
        path = env.get("PYTHONPATH")
        env["PYTHONPATH"] = str(self.work) + (os.pathsep + path if path else "")
        # What gevent's own test runner sets (gevent.testing.testrunner).
        env.setdefault("PYTHONFAULTHANDLER", "true")
        env.setdefault("PYTHONDEVMODE", "1")
        env.setdefault("GEVENTTEST_QUIET", "True")
        env.setdefault("GEVENTTEST_USE_RESOURCES", "-network")  # no internet needed
        env.pop("PYTHONSAFEPATH", None)
        env["GREENPROF_SUITE_TESTS_DIR"] = self.gevent_tests
        for name in ("GREENPROF_SUITE_MODE", "GREENPROF_SUITE_FOLLOW", "GREENPROF_SUITE_BUILD"):
            env.pop(name, None)
        if config != "baseline":
            mode, follow = config.split("+")
            env["GREENPROF_SUITE_MODE"] = mode
            env["GREENPROF_SUITE_FOLLOW"] = follow
            env["GREENPROF_SUITE_STATS"] = str(stats_dir)
            if self.build:
                env["GREENPROF_SUITE_BUILD"] = "1"
        return env

    def run(
        self, suite: str, module: str, config: str, names: Sequence[str] | None = None
    ) -> ModuleRun:
        """Run ``module`` (only the tests ``names``, if given) in ``config``."""
        where = Path(tempfile.mkdtemp(prefix=f"{next(self.numbers):04d}-", dir=self.work))
        stats_dir = where / "stats"
        stats_dir.mkdir()
        results = where / "results.jsonl"
        command = [self.python, "-u", "-m", "_greenprof_suite_driver", suite, str(results)]
        command += [f"{SUITES[suite]}.{module}", *(names or ())]
        (where / "command.txt").write_text(f"{config}\n{' '.join(command)}\n")
        run = ModuleRun(suite, module, config)
        started = time.monotonic()
        with open(where / "output.txt", "wb") as output:
            process = subprocess.Popen(
                command,
                cwd=where,
                env=self.env(config, stats_dir),
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # its own group: a timeout ends its children too
            )
            try:
                run.returncode = process.wait(self.timeout)
            except subprocess.TimeoutExpired:
                run.timed_out = True
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
        run.seconds = time.monotonic() - started
        if results.exists():
            for line in results.read_text().splitlines():
                note = json.loads(line)
                test, outcome = note["test"], note["outcome"]
                previous = run.outcomes.get(test)
                # A test fails if any part of it failed (subtests), and is
                # skipped only if nothing else was reported for it.
                if previous is None or previous == "skip" or outcome == "fail":
                    run.outcomes[test] = outcome
                if outcome == "fail":
                    run.errors.setdefault(test, note.get("error", "?"))
        failed_tests = "fail" in run.outcomes.values()
        if run.timed_out or (run.returncode != 0 and not failed_tests):
            run.outcomes[PROCESS] = "fail"
            run.errors[PROCESS] = "Timeout" if run.timed_out else f"exit status {run.returncode}"
        else:
            run.outcomes[PROCESS] = "pass"
        for stats in stats_dir.glob("*.json"):
            facts = json.loads(stats.read_text())
            run.processes += 1
            run.snapshots += facts.get("snapshots", 0)
            run.tracer_errors += facts.get("tracer_errors", 0)
            run.tracer_reinstalls += facts.get("tracer_reinstalls", 0)
            if "error" in facts:
                run.greenprof_errors.append(facts["error"])
        return run


def rerun_names(tests: Iterable[str]) -> list[str] | None:
    """What to pass to unittest to rerun ``tests``: the methods, the class
    for a class fixture's error; None: the whole module (module fixtures,
    the process)."""
    names: list[str] = []
    for test in tests:
        if test == PROCESS or test.startswith(("setUpModule", "tearDownModule")):
            return None
        name = test.split(" (", 1)[1].rstrip(")") if " (" in test else test
        if name not in names:
            names.append(name)
    return names


@dataclass
class Verdict:
    """A test that passed in the baseline and failed profiled."""

    suite: str
    module: str
    test: str
    config: str
    #: "regression", "known" (a regression whose cause is known),
    #: "justified" or "flaky".
    kind: str
    why: str


def judge(
    runner: Runner, baseline: ModuleRun, profiled: ModuleRun, *, rerun: bool
) -> list[Verdict]:
    """The tests that pass in ``baseline`` and fail in ``profiled``, rerun
    once (profiled and baseline, together) to tell flaky ones apart."""
    suite, module, config = profiled.suite, profiled.module, profiled.config
    verdicts = []
    suspects = []
    for test, outcome in sorted(profiled.outcomes.items()):
        if outcome != "fail" or baseline.outcomes.get(test) != "pass":
            continue
        error = profiled.errors.get(test, "?")
        found = next((j for j in JUSTIFIED if j.covers(suite, module, test, config, error)), None)
        if found is not None:
            verdicts.append(Verdict(suite, module, test, config, "justified", found.reason))
        else:
            suspects.append(test)
    if not suspects:
        return verdicts
    if rerun:
        names = rerun_names(suspects)
        again = runner.run(suite, module, config, names)
        base_again = runner.run(suite, module, "baseline", names)
    for test in suspects:
        error = profiled.errors.get(test, "?")
        if not rerun:
            kind, why = "regression", f"{error}, not rerun"
        elif again.outcomes.get(test) == "pass":
            kind, why = "flaky", f"{error}, then passed profiled"
        elif base_again.outcomes.get(test) == "fail":
            kind, why = "flaky", f"{error}, then failed in the baseline too"
        else:
            kind, why = "regression", f"{error}, twice"
            known = next((k for k in KNOWN if k.covers(suite, module, test, config, error)), None)
            if known is not None:
                kind, why = "known", known.reason
        verdicts.append(Verdict(suite, module, test, config, kind, why))
    return verdicts


# -- reporting ---------------------------------------------------------------------

KINDS = ("regression", "known", "justified", "flaky")


def cell(run: ModuleRun | None) -> str:
    if run is None:
        return "-"
    passed, failed, skipped = run.counts()
    mark = ""
    if run.timed_out:
        mark = " T"
    elif run.returncode is not None and run.returncode < 0:
        mark = " C"  # killed by a signal: a crash
    elif run.outcomes.get(PROCESS) == "fail":
        mark = " X"
    return f"{passed}/{failed}/{skipped}{mark}"


def print_table(
    modules: Sequence[tuple[str, str]],
    configs: Sequence[str],
    runs: dict[tuple[str, str, str], ModuleRun],
    verdicts: Sequence[Verdict],
) -> None:
    columns = ["baseline", *configs]
    width = max(len(module) for _, module in modules) + 2
    print()
    print("Tests passed/failed/skipped per module. X: the process failed, C: it crashed,")
    print("T: it timed out. reg: regressions in any mode (known ones included).")
    print(f"{'suite':10}{'module':{width}}" + "".join(f"{c:>18}" for c in columns) + "   reg")
    totals = {c: [0, 0, 0] for c in columns}
    for suite, module in modules:
        row = f"{suite:10}{module:{width}}"
        for config in columns:
            run = runs.get((suite, module, config))
            row += f"{cell(run):>18}"
            if run is not None:
                for i, n in enumerate(run.counts()):
                    totals[config][i] += n
        regressions = sum(
            1
            for v in verdicts
            if v.suite == suite and v.module == module and v.kind in ("regression", "known")
        )
        print(row + f"{regressions:>6}")
    total = f"{'':10}{'total':{width}}"
    for config in columns:
        total += f"{'/'.join(map(str, totals[config])):>18}"
    print(total)


def print_verdicts(configs: Sequence[str], verdicts: Sequence[Verdict], *, verbose: bool) -> None:
    for config in configs:
        mine = [v for v in verdicts if v.config == config]
        counts = ", ".join(f"{sum(1 for v in mine if v.kind == k)} {k}" for k in KINDS)
        print(f"\n{config}: tests passing in the baseline and failing profiled: {counts}")
        explained: dict[tuple[str, str], list[Verdict]] = {}
        for v in mine:
            if v.kind in ("regression", "flaky") or verbose:
                print(f"  {v.kind:10} {v.suite}.{v.module}: {v.test} ({v.why})")
            else:
                explained.setdefault((v.kind, v.why), []).append(v)
        for (kind, why), found in explained.items():
            if len(found) <= 4:
                tests = ", ".join(f"{v.module}: {v.test}" for v in found)
            else:
                tests = f"{len(found)} tests in {', '.join(sorted({v.module for v in found}))}"
            print(f"  {kind:10} {tests}\n             ({why})")


def print_greenprof(configs: Sequence[str], runs: dict[tuple[str, str, str], ModuleRun]) -> None:
    print("\ngreenprof in the profiled processes (the test runs and their children):")
    for config in configs:
        mine = [r for k, r in runs.items() if k[2] == config]
        processes = sum(r.processes for r in mine)
        snapshots = sum(r.snapshots for r in mine)
        errors = sum(r.tracer_errors for r in mine)
        print(f"  {config}: {processes} processes, {snapshots} snapshots, {errors} tracer errors")
        removed = sorted((r.module, r.tracer_reinstalls) for r in mine if r.tracer_reinstalls)
        if removed:
            listed = ", ".join(f"{module} ({n})" for module, n in removed)
            print(
                f"    tests took greenprof's tracer away, put back before the next test: {listed}"
            )
        for run in mine:
            for error in run.greenprof_errors[:3]:
                print(f"    {run.suite}.{run.module}: {error}")


# -- the command line ----------------------------------------------------------------


def versions(python: str) -> str:
    code = (
        "import sys, gevent, greenlet, greenprof; "
        "print('Python %s, gevent %s, greenlet %s, greenprof %s' % (sys.version.split()[0], "
        "gevent.__version__, greenlet.__version__, greenprof.__version__))"
    )
    return subprocess.check_output([python, "-c", code], text=True).strip()


def has_objgraph(python: str) -> bool:
    return subprocess.call([python, "-c", "import objgraph"], stderr=subprocess.DEVNULL) == 0


def whole_suite(python: str, suite: str) -> list[str]:
    prefix = "test__" if suite == "gevent" else "test_"
    code = (
        f"import pkgutil, {SUITES[suite]} as p; "
        "print('\\n'.join(m.name for m in pkgutil.iter_modules(p.__path__)))"
    )
    names = subprocess.check_output([python, "-c", code], text=True).split()
    return sorted(n for n in names if n.startswith(prefix))


def chosen_modules(args: argparse.Namespace) -> list[tuple[str, str]]:
    suites = ("gevent", "greenlet") if args.suite == "both" else (args.suite,)
    if args.modules:
        picked = []
        for given in args.modules:
            name = given.rsplit(".", 1)[-1]
            suite = "gevent" if name.startswith("test__") else "greenlet"
            if suite in suites:
                picked.append((suite, name))
        return picked
    modules: list[tuple[str, str]] = []
    for suite in suites:
        if args.whole:
            names: Iterable[str] = whole_suite(args.python, suite)
        else:
            names = GEVENT_SUBSET if suite == "gevent" else GREENLET_SUBSET
        modules += [(suite, name) for name in names]
    return modules


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Run gevent's and greenlet's own tests with and without greenprof."
    )
    parser.add_argument("modules", nargs="*", help="test modules (test__event, test_greenlet)")
    parser.add_argument("--suite", choices=(*SUITES, "both"), default="both")
    parser.add_argument("--mode", choices=(*MODES, "both"), default="both")
    parser.add_argument(
        "--follow",
        choices=(*FOLLOWS, "both"),
        default="spawned",
        help="follow_spawned=True, or follow_all=True (every greenlet of the thread)",
    )
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--subset", action="store_true", help="the chosen modules (the default)")
    which.add_argument("--whole", action="store_true", help="every test module of the suites")
    parser.add_argument("--python", default=sys.executable, help="the interpreter to test with")
    parser.add_argument("--jobs", type=int, choices=(1, 2), default=1, help="modules at once")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per module run")
    parser.add_argument("--no-rerun", action="store_true", help="do not rerun what failed")
    parser.add_argument(
        "--allow-known", action="store_true", help="exit 0 when only known regressions are left"
    )
    parser.add_argument("--build", action="store_true", help="also build every snapshot at exit")
    parser.add_argument("--verbose", action="store_true", help="list every known regression")
    parser.add_argument("--json", type=Path, help="write every outcome to this file")
    parser.add_argument("--keep", action="store_true", help="keep every run's output")
    args = parser.parse_args(argv)

    modules = chosen_modules(args)
    if not modules:
        parser.error("no test module chosen")
    if any(suite == "greenlet" for suite, _ in modules) and not has_objgraph(args.python):
        print(
            "greenlet's tests need objgraph, a test-only package (never a greenprof "
            f"dependency): {args.python} -m pip install objgraph",
            file=sys.stderr,
        )
        return 2
    modes = MODES if args.mode == "both" else (args.mode,)
    follows = FOLLOWS if args.follow == "both" else (args.follow,)
    configs = [f"{mode}+{follow}" for mode in modes for follow in follows]
    about = versions(args.python)
    print(about)
    print(f"{len(modules)} test modules; baseline, then {', '.join(configs)}", flush=True)

    work = Path(tempfile.mkdtemp(prefix="greenprof-suites-"))
    runner = Runner(args.python, work, args.timeout, args.build)
    runs: dict[tuple[str, str, str], ModuleRun] = {}
    started = time.monotonic()

    def one_module(suite: str, module: str) -> list[Verdict]:
        found = []
        baseline = runs[suite, module, "baseline"] = runner.run(suite, module, "baseline")
        for config in configs:
            profiled = runs[suite, module, config] = runner.run(suite, module, config)
            found += judge(runner, baseline, profiled, rerun=not args.no_rerun)
        regressions = sum(1 for v in found if v.kind in ("regression", "known"))
        print(f"  {suite}.{module}: {regressions} regressions", flush=True)
        return found

    verdicts: list[Verdict] = []
    with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
        for found in pool.map(lambda m: one_module(*m), modules):
            verdicts += found

    print_table(modules, configs, runs, verdicts)
    print_verdicts(configs, verdicts, verbose=args.verbose)
    print_greenprof(configs, runs)
    print(f"\n{about}; {time.monotonic() - started:.0f} s")
    if args.json is not None:
        record = {
            "versions": about,
            "runs": [run.__dict__ for run in runs.values()],
            "verdicts": [v.__dict__ for v in verdicts],
        }
        args.json.write_text(json.dumps(record, indent=1))
    if args.keep:
        print(f"every run's output: {work}")
    else:
        shutil.rmtree(work, ignore_errors=True)
    blocking = ("regression",) if args.allow_known else ("regression", "known")
    return 1 if any(v.kind in blocking for v in verdicts) else 0


if __name__ == "__main__":
    sys.exit(main())
