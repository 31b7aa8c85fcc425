"""Fault injection: whatever greenprof is asked to do, the program does what
it would have done without it.

Each seed draws a random gevent and greenlet program (see ``fault_programs``)
and runs it twice, in fresh threads: as it is, and with greenprof sessions
started and stopped at random points by the program's own greenlets, in
random modes, with random options and sinks. The two runs must log the same
steps, values and exceptions in the same order, end in the same state, and
free the same objects at the same points (one known limit of the sampling
modes is an xfail: see ``SAMPLER_HELD``). The profiled run must also leave
no tracer behind, swallow no error in its tracer, raise nothing from a
correct call, and record only greenlets its sessions were started on or
picked up.

The default run checks 20 seeds on programs of 10 to 60 greenlets, in about
a second. A soak: ``GREENPROF_FAULT_SEEDS=1000`` runs seeds 0-999 (``=A:B``
runs seeds A to B-1) on programs of 50 to 300 greenlets
(``GREENPROF_FAULT_GREENLETS=LO-HI`` sets another range), about a minute
per thousand on CPython 3.11 or 3.12.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

from .fault_programs import (
    Entry,
    Outcome,
    Program,
    check_recorded,
    execute,
    first_difference,
)

#: The seeds a default run checks, on short programs: about a second in all.
DEFAULT_SEEDS = range(20)
DEFAULT_GREENLETS = (10, 60)
SOAK_GREENLETS = (50, 300)


def _seeds() -> tuple[list[int], tuple[int, int]]:
    spec = os.environ.get("GREENPROF_FAULT_SEEDS")
    sizes = os.environ.get("GREENPROF_FAULT_GREENLETS")
    if not spec:
        seeds = list(DEFAULT_SEEDS)
        greenlets = DEFAULT_GREENLETS
    else:
        first, _, last = spec.rpartition(":")
        seeds = list(range(int(first or 0), int(last)))
        greenlets = SOAK_GREENLETS
    if sizes:
        low, _, high = sizes.partition("-")
        greenlets = (int(low), int(high or low))
    return seeds, greenlets


SEEDS, GREENLETS = _seeds()


def rerun(seed: int) -> str:
    return (
        f"GREENPROF_FAULT_SEEDS={seed}:{seed + 1} "
        f"GREENPROF_FAULT_GREENLETS={GREENLETS[0]}-{GREENLETS[1]} "
        "pytest tests/test_fault_injection.py"
    )


def frees_moved(plain: list[Entry], profiled: list[Entry]) -> bool:
    """Whether two traces differ only in where objects were freed."""

    def split(trace: list[Entry]) -> tuple[list[Entry], list[Entry]]:
        freed = [entry for entry in trace if entry[:2] == ("~", "freed")]
        return [entry for entry in trace if entry[:2] != ("~", "freed")], sorted(freed)

    return split(plain) == split(profiled)


#: A known limit of the hybrid and thread modes (README, "No frame is
#: held"): a sample holds the sampled thread's frames while it is taken; if
#: that thread gets the GIL back meanwhile and returns from one of them, the
#: call's locals are freed when the sample ends, in the sampling thread.
#: Rare (about one short program in 2000 here); told apart by the program's
#: tokens freed outside its thread, with nothing else in the traces moved.
#: (The same with the greenlet a sample holds, dropped by the program
#: meanwhile, is not told apart: it fails, about once in 1000 soak programs
#: on 3.12.)
SAMPLER_HELD = "the sampling thread held a frame of the program as its call returned"


def assert_same_behaviour(seed: int, plain: Outcome, profiled: Outcome) -> None:
    assert plain.error is None, f"seed {seed}: the program itself failed:\n{plain.error}"
    assert profiled.error is None, f"seed {seed}, profiled run:\n{profiled.error}"
    if plain.trace != profiled.trace:
        hint = ""
        moved = frees_moved(plain.trace, profiled.trace)
        if moved:
            hint = "\n(only where objects were freed differs: something held them longer)"
        difference = first_difference(plain.trace, profiled.trace)
        if moved and profiled.freed_elsewhere:
            tokens = ", ".join(map(str, profiled.freed_elsewhere))
            pytest.xfail(f"seed {seed}: {SAMPLER_HELD} (tokens {tokens}): {difference}")
        pytest.fail(f"seed {seed} ({rerun(seed)}): {difference}{hint}")


@pytest.mark.parametrize("seed", SEEDS)
def test_a_profiled_run_does_what_the_unprofiled_run_does(seed: int) -> None:
    program = Program(seed, greenlets=GREENLETS)
    plain = execute(program, profiled=False)
    profiled = execute(program, profiled=True)
    assert plain.freed_elsewhere == []
    assert profiled.problems == [], f"seed {seed} ({rerun(seed)}):\n" + "\n".join(profiled.problems)
    recorded = check_recorded(profiled)
    assert recorded == [], f"seed {seed} ({rerun(seed)}):\n" + "\n".join(recorded[:20])
    assert_same_behaviour(seed, plain, profiled)


# -- the oracle itself ---------------------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2, 3])  # 1: plain greenlets, no gevent
def test_a_seed_makes_the_same_run_twice(seed: int) -> None:
    program = Program(seed, greenlets=GREENLETS)
    first, second = execute(program, profiled=False), execute(program, profiled=False)
    assert first.error is None
    assert first.trace == second.trace
    steps = {entry[1] for entry in first.trace}
    if program.plain:
        assert steps >= {"raw", "raw_begin", "switch_got", "final"}
        assert "spawn" not in steps
    else:
        assert steps >= {"spawn", "begin", "slept", "finally", "final"}


def test_the_profiled_runs_use_greenprof_in_every_way_drawn() -> None:
    modes: set[str] = set()
    follows: set[tuple[bool, bool]] = set()
    snapshots = dropped = sink_failures = decorated = 0
    for seed in range(10):
        profiling = execute(Program(seed, greenlets=GREENLETS), profiled=True).profiling
        assert profiling is not None
        for handle in profiling.every_handle():
            for session in handle.sessions:
                modes.add(session.options.mode)
                follows.add((session.options.follow_spawned, session.options.follow_all))
            stats = handle.profiler.stats
            snapshots += stats.snapshots
            dropped += stats.dropped
            sink_failures += stats.sink_failures
        decorated += sum(map(len, profiling.callers))
    assert modes == {"greenlet", "hybrid", "thread"}
    assert follows == {(False, False), (True, False), (True, True)}
    assert snapshots > 300
    assert dropped > 0  # small max_snapshots
    assert sink_failures > 0
    assert decorated > 10


def test_the_oracle_notices_a_tracer_that_breaks_the_program() -> None:
    calls = 0

    def breaks_at_the_tenth_switch(event: str, args: Any) -> None:
        nonlocal calls
        calls += 1
        if calls == 10:
            msg = "a broken tracer"
            raise RuntimeError(msg)  # greenlet throws it into the greenlet switched to

    program = Program(2, greenlets=GREENLETS)
    assert not program.plain
    plain = execute(program, profiled=False)
    broken = execute(program, profiled=False, tracer=breaks_at_the_tenth_switch)
    assert calls == 10
    assert broken.trace != plain.trace
    difference = first_difference(plain.trace, broken.trace)
    assert "RuntimeError" in repr(broken.trace), difference
