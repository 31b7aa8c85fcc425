"""greenprof run: a program run as python runs it (arguments, sys.path,
__main__, exit status, tracebacks), its profile written where -o says,
in one piece, and the errors greenprof reports on one line."""

from __future__ import annotations

import gzip
import json
import os
import re
import sys
import textwrap
from pathlib import Path

import pytest

import greenprof
from greenprof import exporters
from greenprof._launch import Launch, Program, split_arguments
from greenprof._output import with_pid

from .conftest import GREENPROF_DIR, greenprof_command, never_called, python_command

REPORTER = """
import json, sys, __main__
import sibling

spec = getattr(__main__, "__spec__", None)
print(json.dumps({
    "argv": sys.argv,
    "path0": sys.path[0],
    "name": __name__,
    "file": __main__.__file__,
    "spec": spec.name if spec else None,
    "main_is_this_module": sys.modules["__main__"].__dict__ is globals(),
    "sibling": sibling.VALUE,
}))
"""


def write(path: Path, code: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(code))
    return path


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def test_a_script_gets_what_python_gives_it(tmp_path: Path) -> None:
    write(tmp_path / "app" / "main.py", REPORTER)
    write(tmp_path / "app" / "sibling.py", "VALUE = 'found next to main.py'\n")
    program = ["app/main.py", "--flag", "x", "--", "-m", "mod", "-o", "out.txt"]
    plain = python_command(*program, cwd=tmp_path)
    profiled = greenprof_command("run", "-o", "profile.jsonl", *program, cwd=tmp_path)
    assert plain.returncode == profiled.returncode == 0, profiled.stderr
    seen = json.loads(profiled.stdout)
    assert seen == json.loads(plain.stdout)
    assert seen["argv"] == program  # everything after the script, untouched
    assert seen["path0"] == str((tmp_path / "app").resolve())
    # Options after the script were the program's: greenprof wrote its own file.
    assert files_in(tmp_path) == ["app", "profile.jsonl"]


#: What pip writes as the ``greenprof`` console script.
CONSOLE_SCRIPT = """
import sys
from greenprof._cli import main
if __name__ == "__main__":
    sys.exit(main())
"""


@pytest.mark.parametrize("dash_m", [["-m", "mymod"], ["-mmymod"]])
def test_a_module_gets_what_python_gives_it(tmp_path: Path, dash_m: list[str]) -> None:
    write(tmp_path / "mymod.py", REPORTER)
    write(tmp_path / "sibling.py", "VALUE = 'found in the current folder'\n")
    # Started as the console script is: python puts the script's folder,
    # not the current one, first on sys.path, and greenprof must put it right.
    launcher = write(tmp_path / "bin" / "greenprof", CONSOLE_SCRIPT)
    arguments = ["--flag", "x", "--", "--flag"]
    plain = python_command(*dash_m, *arguments, cwd=tmp_path)
    profiled = python_command(
        str(launcher), "run", "--mode", "hybrid", *dash_m, *arguments, cwd=tmp_path
    )
    assert plain.returncode == profiled.returncode == 0, profiled.stderr
    seen = json.loads(profiled.stdout)
    assert seen == json.loads(plain.stdout)
    assert seen["argv"] == [str(tmp_path / "mymod.py"), *arguments]
    assert seen["spec"] == "mymod"
    assert (tmp_path / "greenprof.jsonl").exists()


@pytest.mark.parametrize(
    "body",
    [
        "sys.exit(3)",
        "sys.exit('bye')",
        "raise SystemExit",
        "os._exit(5)",
        "fail()",
        "raise KeyboardInterrupt",
        "sys.exit(256 + 7)",
    ],
)
def test_the_program_ends_as_under_python(tmp_path: Path, body: str) -> None:
    script = write(
        tmp_path / "prog.py",
        f"""
        import os, sys
        import gevent

        def fail():
            gevent.sleep(0.001)
            raise ValueError("bad input")

        gevent.spawn(gevent.sleep, 0.001).join()
        {body}
        """,
    )
    out = tmp_path / "out.jsonl"
    plain = python_command(str(script))
    profiled = greenprof_command("run", "-o", str(out), str(script))
    assert profiled.returncode == plain.returncode
    *program_lines, last = profiled.stderr.splitlines(keepends=True)
    # The same traceback as python's: none of greenprof's frames in it.
    assert "".join(program_lines) == plain.stderr
    assert last.startswith("greenprof: ")
    assert f"written to {out}" in last
    assert greenprof.Report.from_file(out).sessions


CPU_ONLY = """
total = 0
for i in range(200_000):
    total += i * i
"""


def test_a_program_that_never_switches_still_gets_its_profile(tmp_path: Path) -> None:
    script = write(tmp_path / "cpu.py", CPU_ONLY)
    out = tmp_path / "cpu.jsonl"
    result = greenprof_command("run", "-o", str(out), str(script))
    assert result.returncode == 0, result.stderr
    report = greenprof.Report.from_file(out)
    (session,) = report.sessions
    (main,) = report.greenlets.values()
    assert main.greenlet_name == "main"
    assert main.on_cpu_ns == main.wall_ns == session.duration_ns > 0
    assert result.stderr == (
        f"greenprof: 2 snapshots of 1 greenlet written to {out}; no greenlet switched, so "
        "greenlet mode saw none of the program's stacks (--mode hybrid samples them)\n"
    )


# -- where and how the profile is written -------------------------------------------

PROGRAM = """
import gevent

def fetch(n):
    gevent.sleep(0.001 * n)

gevent.joinall([gevent.spawn(fetch, n) for n in range(1, 3)])
"""


def sniff(data: bytes) -> str:
    """The format of a written profile, told from its content alone."""
    if data[:2] == b"\x1f\x8b":
        gzip.decompress(data)
        return "pprof"
    text = data.decode()
    if text.startswith('{"format": "greenprof-snapshots"'):
        return "jsonl"
    if text.lstrip().lower().startswith("<!doctype html"):
        return "html"
    if text.startswith("{"):
        document = json.loads(text)
        if "traceEvents" in document:
            return "chrome"
        if document.get("$schema") == exporters.SPEEDSCOPE_SCHEMA:
            return "speedscope"
    if "on-CPU ms" in text:
        return "text"
    lines = text.splitlines()
    if lines and all(re.fullmatch(r"\S[^;]*(;[^;]+)* \d+", line) for line in lines):
        return "collapsed"
    return "unknown"


@pytest.mark.parametrize(
    ("name", "format"),
    [
        ("p.jsonl", "jsonl"),
        ("p.json", "speedscope"),
        ("p.speedscope.json", "speedscope"),
        ("p.trace.json", "chrome"),
        ("p.html", "html"),
        ("p.pprof", "pprof"),
        ("p.pb.gz", "pprof"),
        ("p.txt", "text"),
        ("p.collapsed", "collapsed"),
        ("p.folded", "collapsed"),
    ],
)
def test_the_output_format_follows_the_extension(tmp_path: Path, name: str, format: str) -> None:
    script = write(tmp_path / "prog.py", PROGRAM)
    result = greenprof_command("run", "-o", str(tmp_path / name), str(script))
    assert result.returncode == 0, result.stderr
    assert sniff((tmp_path / name).read_bytes()) == format
    assert files_in(tmp_path) == sorted([name, "prog.py"])  # and no temporary file


def test_format_wins_over_the_extension_and_names_the_default_file(tmp_path: Path) -> None:
    script = write(tmp_path / "prog.py", PROGRAM)
    chosen = greenprof_command(
        "run", "--format", "collapsed", "-o", "p.jsonl", "prog.py", cwd=tmp_path
    )
    assert chosen.returncode == 0, chosen.stderr
    assert sniff((tmp_path / "p.jsonl").read_bytes()) == "collapsed"
    for format, default in (("text", "greenprof.txt"), ("speedscope", "greenprof.speedscope.json")):
        result = greenprof_command("run", "--format", format, str(script), cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert sniff((tmp_path / default).read_bytes()) == format
    plain = greenprof_command("run", str(script), cwd=tmp_path)
    assert plain.returncode == 0, plain.stderr
    assert sniff((tmp_path / "greenprof.jsonl").read_bytes()) == "jsonl"
    assert files_in(tmp_path) == [
        "greenprof.jsonl",
        "greenprof.speedscope.json",
        "greenprof.txt",
        "p.jsonl",
        "prog.py",
    ]


def test_dash_writes_to_stdout_text_or_bytes(tmp_path: Path) -> None:
    import subprocess

    from .conftest import GREENPROF

    script = write(tmp_path / "prog.py", PROGRAM)
    text = greenprof_command("run", "-o", "-", "--format", "text", str(script), cwd=tmp_path)
    assert text.returncode == 0, text.stderr
    assert sniff(text.stdout.encode()) == "text"
    assert "fetch" in text.stdout
    assert text.stderr.endswith("written to stdout\n")
    for format, expected in (("pprof", "pprof"), ("jsonl", "jsonl")):
        options = ["--format", format] if format != "jsonl" else []  # jsonl: the default
        done = subprocess.run(
            [*GREENPROF, "run", "-o", "-", *options, str(script)],
            capture_output=True,
            timeout=300,
            cwd=tmp_path,
        )
        assert done.returncode == 0, done.stderr
        assert sniff(done.stdout) == expected
    assert files_in(tmp_path) == ["prog.py"]


def test_pid_in_the_output_path_is_the_process_id(tmp_path: Path) -> None:
    script = write(tmp_path / "prog.py", "import os\nprint(os.getpid())\n")
    result = greenprof_command("run", "-o", "profile-{pid}.jsonl", str(script), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    pid = int(result.stdout)
    assert files_in(tmp_path) == sorted([f"profile-{pid}.jsonl", "prog.py"])
    assert greenprof.Report.from_file(tmp_path / f"profile-{pid}.jsonl").sessions


@pytest.mark.parametrize(
    ("path", "pid", "extensions", "expected"),
    [
        ("out/profile.jsonl", 42, (".jsonl",), "out/profile.42.jsonl"),
        ("p.pb.gz", 42, (".pb.gz", ".pprof"), "p.42.pb.gz"),
        ("P.PB.GZ", 7, (".pb.gz", ".pprof"), "P.7.PB.GZ"),
        ("p.trace.json", 7, (".trace.json",), "p.7.trace.json"),
        ("p.data", 7, (".jsonl",), "p.7.data"),
        ("profile", 7, (".jsonl",), "profile.7"),
    ],
)
def test_a_forked_childs_file_has_its_pid_before_the_extension(
    path: str, pid: int, extensions: tuple[str, ...], expected: str
) -> None:
    assert with_pid(path, pid, extensions) == expected


# -- errors: one line, a documented status, nothing run or written ---------------------

RECORDS_THAT_IT_RAN = """
open("ran", "w").close()
"""


@pytest.mark.parametrize(
    ("program", "message"),
    [
        (["nonexist.py"], "greenprof: cannot open nonexist.py: No such file or directory"),
        (
            ["-m", "no_such_module"],
            "greenprof: cannot run -m no_such_module: No module named no_such_module",
        ),
        (
            ["-m", "package"],
            "greenprof: cannot run -m package: No module named package.__main__; "
            "'package' is a package and cannot be directly executed",
        ),
        (
            ["folder"],
            "greenprof: cannot run folder: can't find '__main__' module in 'folder'",
        ),
    ],
)
def test_a_program_that_cannot_be_found_changes_nothing(
    tmp_path: Path, program: list[str], message: str
) -> None:
    (tmp_path / "package").mkdir()
    (tmp_path / "package" / "__init__.py").write_text("")
    (tmp_path / "folder").mkdir()
    existing = tmp_path / "profile.jsonl"
    existing.write_text("an older profile\n")
    before = files_in(tmp_path)
    result = greenprof_command("run", "-o", str(existing), *program, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr == message + "\n"
    assert existing.read_text() == "an older profile\n"
    assert files_in(tmp_path) == before


def test_a_script_that_does_not_compile_fails_as_under_python(tmp_path: Path) -> None:
    script = write(tmp_path / "broken.py", "def f(:\n")
    plain = python_command(str(script))
    profiled = greenprof_command("run", "-o", str(tmp_path / "p.jsonl"), str(script))
    assert profiled.returncode == plain.returncode == 1
    assert profiled.stderr == plain.stderr
    assert files_in(tmp_path) == ["broken.py"]


@pytest.mark.parametrize(
    ("output", "reason"),
    [
        ("missing/profile.jsonl", "No such file or directory"),
        ("a-file/profile.jsonl", "Not a directory"),
        ("a-folder", "Is a directory"),
    ],
)
def test_an_output_that_cannot_be_written_is_refused_before_the_program_runs(
    tmp_path: Path, output: str, reason: str
) -> None:
    write(tmp_path / "prog.py", RECORDS_THAT_IT_RAN)
    (tmp_path / "a-file").write_text("")
    (tmp_path / "a-folder").mkdir()
    result = greenprof_command("run", "--format", "jsonl", "-o", output, "prog.py", cwd=tmp_path)
    assert result.returncode == 73
    assert result.stderr == f"greenprof: cannot write {output}: {reason}\n"
    assert not (tmp_path / "ran").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes to any folder")
def test_a_folder_without_write_permission_is_refused(tmp_path: Path) -> None:
    write(tmp_path / "prog.py", RECORDS_THAT_IT_RAN)
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o555)
    result = greenprof_command("run", "-o", "locked/p.jsonl", "prog.py", cwd=tmp_path)
    assert result.returncode == 73
    assert result.stderr == "greenprof: cannot write locked/p.jsonl: Permission denied\n"
    assert not (tmp_path / "ran").exists()


@pytest.mark.parametrize(("exit_code", "status"), [(0, 73), (5, 5)])
def test_an_output_gone_by_the_end_is_one_line_and_keeps_a_failure(
    tmp_path: Path, exit_code: int, status: int
) -> None:
    script = write(
        tmp_path / "prog.py",
        f"""
        import shutil, sys
        shutil.rmtree("out")
        sys.exit({exit_code})
        """,
    )
    (tmp_path / "out").mkdir()
    result = greenprof_command("run", "-o", "out/p.jsonl", str(script), cwd=tmp_path)
    assert result.returncode == status
    assert result.stderr == "greenprof: cannot write out/p.jsonl: No such file or directory\n"


@pytest.mark.parametrize(
    ("options", "complaint"),
    [
        (["--format", "svg"], "argument --format: invalid choice: 'svg'"),
        (["-o", "profile.xyz"], "cannot tell the format from 'profile.xyz'"),
        (
            ["--interval", "0"],
            "argument --interval/--dump-period: expected seconds, at least 0.001",
        ),
        (["--dump-period", "soon"], "expected seconds, at least 0.001, not 'soon'"),
        (["--max-depth", "0"], "argument --max-depth: expected a whole number >= 1, not '0'"),
        (["--min-duration", "-1"], "argument --min-duration: expected seconds, a number >= 0"),
        (["--progress-interval", "0"], "argument --progress-interval: expected seconds, > 0"),
        (
            ["--interval", "1e300"],
            "dump_period is in seconds; 1e+300 is longer than a program runs",
        ),
        (["--outpt", "x.jsonl"], "unrecognized arguments: --outpt"),
        ([], "run needs a script or -m module to run"),
    ],
)
def test_bad_usage_is_one_line_and_status_2(
    tmp_path: Path, options: list[str], complaint: str
) -> None:
    write(tmp_path / "prog.py", RECORDS_THAT_IT_RAN)
    program = ["prog.py"] if options else []
    result = greenprof_command("run", *options, *program, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("greenprof")
    assert result.stderr.count("\n") == 1
    assert complaint in result.stderr
    assert files_in(tmp_path) == ["prog.py"]


# -- options --------------------------------------------------------------------------


def test_version_is_greenprofs() -> None:
    result = greenprof_command("--version")
    assert result.returncode == 0
    assert result.stdout == f"greenprof {greenprof.__version__}\n"


def test_every_option_of_every_command_has_help() -> None:
    from greenprof._cli import _parser

    parser, run = _parser()
    commands = next(a for a in parser._actions if a.dest == "command")
    parsers = [parser, *commands.choices.values()]  # type: ignore[union-attr]
    assert run in parsers
    for each in parsers:
        for action in each._actions:
            assert action.help, f"{each.prog} {action.option_strings or action.dest} has no help"
    shown = greenprof_command("--help").stdout
    assert re.search(r"^ +run +run a Python program \(script or -m module\)", shown, re.M)
    assert re.search(r"^ +demo +see why: thread sampling", shown, re.M)
    run_help = greenprof_command("run", "--help").stdout
    assert run_help.startswith("usage: greenprof run [options] (script.py | -m module)")
    for line in ("  .pb.gz, .pprof", "  .jsonl", "73: the output cannot be written"):
        assert line in run_help


def test_interval_and_max_depth_reach_the_profile(tmp_path: Path) -> None:
    script = write(
        tmp_path / "deep.py",
        """
        import gevent

        def down(n):
            if n:
                down(n - 1)
            else:
                for _ in range(20_000):
                    pass
                gevent.sleep(0.001)

        for _ in range(3):
            down(10)
        """,
    )
    out = tmp_path / "deep.jsonl"
    result = greenprof_command(
        "run",
        "--mode",
        "hybrid",
        "--interval",
        "0.005",
        "--max-depth",
        "3",
        "-o",
        str(out),
        str(script),
    )
    assert result.returncode == 0, result.stderr
    report = greenprof.Report.from_file(out)
    (session,) = report.sessions
    assert session.dump_period_ns == 5_000_000
    assert session.max_depth == 3
    depths = {len(s.stack) for s in report.snapshots}
    assert max(depths) == 3


def test_min_duration_writes_no_profile_of_a_shorter_run(tmp_path: Path) -> None:
    script = write(tmp_path / "quick.py", "pass\n")
    existing = tmp_path / "p.jsonl"
    existing.write_text("an older profile\n")
    result = greenprof_command("run", "--min-duration", "60", "-o", str(existing), str(script))
    assert result.returncode == 0
    assert re.fullmatch(
        r"greenprof: no profile written: process \d+ ran [\d.e-]+ s, less than --min-duration\n",
        result.stderr,
    )
    assert existing.read_text() == "an older profile\n"
    kept = greenprof_command("run", "--min-duration", "0", "-o", str(existing), str(script))
    assert kept.returncode == 0, kept.stderr
    assert greenprof.Report.from_file(existing).sessions


@pytest.mark.parametrize("options", [["--min-duration", "60"], ["-o", "-"]])
def test_a_run_that_writes_no_profile_leaves_no_spool_behind(
    tmp_path: Path, options: list[str]
) -> None:
    import subprocess

    from .conftest import GREENPROF

    # A forked child of "-o -" writes nothing either (stdout is its parent's).
    script = write(tmp_path / "quick.py", "import os, gevent\ngevent.sleep(0)\nos.fork()\n")
    spools = tmp_path / "tmp"
    spools.mkdir()
    result = subprocess.run(
        [*GREENPROF, "run", "--no-progress", *options, str(script)],
        cwd=tmp_path,
        env={**os.environ, "TMPDIR": str(spools)},
        capture_output=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert b"no profile" in result.stderr
    assert list(spools.iterdir()) == []


# -- greenprof's frames are not the program's -------------------------------------------

MIXED = """
import gevent

def crunch():
    total = 0
    for i in range(300_000):
        total += i

def child():
    crunch()
    gevent.sleep(0.002)

def main():
    for _ in range(4):
        crunch()
        gevent.spawn(child).join()

main()
"""


def launcher_frame(filename: str) -> bool:
    return (
        filename.startswith(GREENPROF_DIR)
        or "runpy" in filename
        or "importlib" in filename
        or filename.endswith("pkgutil.py")
    )


@pytest.mark.parametrize("mode", ["greenlet", "hybrid", "thread"])
@pytest.mark.parametrize("as_module", [False, True])
def test_no_stack_starts_in_greenprof_runpy_or_importlib(
    tmp_path: Path, mode: str, as_module: bool
) -> None:
    script = write(tmp_path / "mixed.py", MIXED)
    out = tmp_path / "mixed.jsonl"
    program = ["-m", "mixed"] if as_module else [str(script)]
    result = greenprof_command(
        "run", "--mode", mode, "--interval", "0.001", "-o", str(out), *program, cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr
    snapshots = greenprof.load(out)
    assert snapshots
    for snapshot in snapshots:
        for frame in snapshot.stack[:1]:
            assert not launcher_frame(frame.filename), snapshot
    main_stacks = [s.stack for s in snapshots if s.greenlet_name == "main" and s.stack]
    assert main_stacks
    assert {(stack[0].filename, stack[0].function) for stack in main_stacks} == {
        (str(script), "<module>")
    }


@pytest.mark.parametrize("mode", ["thread", "hybrid"])
def test_a_standard_library_program_is_the_programs(tmp_path: Path, mode: str) -> None:
    # Run by greenprof's launcher, its samples are all in the standard
    # library: they are the program's, not greenprof at work.
    data = tmp_path / "in.json"
    data.write_text(json.dumps([{"row": i, "cells": list(range(20))} for i in range(100_000)]))
    out = tmp_path / "tool.jsonl"
    result = greenprof_command(
        "run", "--mode", mode, "--interval", "0.001", "-o", str(out),
        "-m", "json.tool", "--indent", "2", str(data), os.devnull,
        cwd=tmp_path,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    samples = [s for s in greenprof.load(out) if s.event == "sample"]
    # How many depends on when Python hands the sampler the GIL (on 3.10,
    # from 20 to 800 samples of about a second): any at all means they are
    # the program's.
    assert len(samples) >= 5
    tool = os.path.join("json", "tool.py")
    in_tool = [s for s in samples if any(f.filename.endswith(tool) for f in s.stack)]
    assert len(in_tool) >= 0.9 * len(samples)
    for sample in samples:  # none taken as greenprof's launcher finds the module
        assert sample.stack
        assert not sample.stack[-1].filename.startswith(GREENPROF_DIR)


# -- the arguments, split as python splits them -----------------------------------------

WITH_VALUES = {"-o", "--output", "--mode", "-m"}


@pytest.mark.parametrize(
    ("args", "own", "program"),
    [
        (
            ["-o", "p.jsonl", "app.py", "-o", "x", "--", "y"],
            ["-o", "p.jsonl"],
            Program("app.py", False, ("-o", "x", "--", "y")),
        ),
        (
            ["--mode=hybrid", "-m", "pkg.mod", "--flag", "-m", "x"],
            ["--mode=hybrid"],
            Program("pkg.mod", True, ("--flag", "-m", "x")),
        ),
        (["--patch", "-mpkg", "--"], ["--patch"], Program("pkg", True, ("--",))),
        (["--patch", "--", "-odd.py", "a"], ["--patch"], Program("-odd.py", False, ("a",))),
        (["--mode", "thread", "--", "--"], ["--mode", "thread"], Program("--", False, ())),
        (["--patch", "-o"], ["--patch", "-o"], None),
        (["-m"], ["-m"], None),
        (["--"], [], None),
    ],
)
def test_options_end_at_the_script_or_module(
    args: list[str], own: list[str], program: Program | None
) -> None:
    assert split_arguments(args, WITH_VALUES) == (own, program)


BROWSER = """#!{python}
import os, sys
# What a browser would get: the URL, and whether the file was there to show.
path = sys.argv[1].removeprefix("file://")
with open(os.environ["BROWSER_RECORD"], "w") as record:
    record.write(sys.argv[1] + "\\n" + str(os.path.getsize(path)) + "\\n")
"""


def test_open_shows_the_html_profile_in_the_browser_once_written(tmp_path: Path) -> None:
    import sys

    script = write(tmp_path / "prog.py", PROGRAM)
    browser = tmp_path / "browser.py"
    browser.write_text(BROWSER.format(python=sys.executable))
    browser.chmod(0o755)
    record = tmp_path / "opened.txt"
    env = {**os.environ, "BROWSER": str(browser), "BROWSER_RECORD": str(record)}
    result = greenprof_command(
        "run", "--open", "-o", "profile.html", str(script), cwd=tmp_path, env=env
    )
    assert result.returncode == 0, result.stderr
    profile = tmp_path / "profile.html"
    url, size = record.read_text().splitlines()
    assert url == profile.resolve().as_uri()
    assert int(size) == profile.stat().st_size > 0  # opened after it was whole


@pytest.mark.parametrize("output", [["-o", "p.jsonl"], ["-o", "-", "--format", "html"], []])
def test_open_without_an_html_file_is_refused_before_the_program_runs(
    tmp_path: Path, output: list[str]
) -> None:
    script = write(tmp_path / "prog.py", "open('ran', 'w').close()\n")
    result = greenprof_command("run", "--open", *output, str(script), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr == "greenprof: --open needs an HTML file: -o FILE.html, or --format html\n"
    assert files_in(tmp_path) == ["prog.py"]


def test_open_without_a_browser_says_so_and_keeps_the_status(tmp_path: Path) -> None:

    script = write(tmp_path / "prog.py", "import sys\nsys.exit(3)\n")
    missing = tmp_path / "no-such-browser"
    env = {**os.environ, "BROWSER": str(missing), "PATH": str(tmp_path), "DISPLAY": ""}
    env.pop("WAYLAND_DISPLAY", None)
    result = greenprof_command("run", "--open", "-o", "p.html", str(script), cwd=tmp_path, env=env)
    assert result.returncode == 3
    assert (tmp_path / "p.html").exists()
    assert result.stderr.endswith(
        "greenprof: found no web browser to open p.html in; open it yourself\n"
    )


def test_the_programs_sys_path_entry_is_resolved_before_it_runs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Resolved by prepare(), before any session starts: resolving it as the
    # program started let a hybrid sampler catch the main thread in
    # posixpath.realpath, below the program's first frame.
    folder = tmp_path / "real"
    folder.mkdir()
    script = write(folder / "where.py", "import sys\nseen = sys.path[0]\n")
    (tmp_path / "link.py").symlink_to(script)
    launch = Launch(Program(str(tmp_path / "link.py"), is_module=False))
    launch.prepare()
    monkeypatch.setattr(os.path, "realpath", never_called)
    saved = sys.path[:]
    main = sys.modules["__main__"]
    try:
        assert launch.run().status == 0
        assert sys.modules["__main__"].seen == str(folder)
    finally:
        sys.path[:] = saved
        sys.modules["__main__"] = main
