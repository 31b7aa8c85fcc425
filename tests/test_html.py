"""The HTML flame graph: one self-contained page that draws, and works, in headless Chromium."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path
from typing import Any

import gevent
import pytest

import greenprof
from greenprof.exporters._html import SLICES
from greenprof.exporters._html import html as html_page

from .workloads import record_red_and_blue

EVIL = "</script><script>alert(1)</script>"
EVIL_FILE = "<!--<script>evil.py"


def _evil_template() -> None:
    gevent.sleep(0.003)


def _renamed(func: types.FunctionType, name: str, filename: str) -> types.FunctionType:
    changes: dict[str, Any] = {"co_name": name, "co_filename": filename}
    if sys.version_info >= (3, 11):
        changes["co_qualname"] = name
    return types.FunctionType(func.__code__.replace(**changes), func.__globals__)


#: A real function whose name and file would end the page's <script> early.
evil = _renamed(_evil_template, EVIL, EVIL_FILE)


@pytest.fixture(scope="module")
def workload() -> tuple[greenprof.Report, dict[str, str]]:
    """The report of a red and a blue greenlet, and each one's label."""
    profiler, red, blue = record_red_and_blue(blue_then=evil)
    labels = {"red": f"red [{id(red):#x}]", "blue": f"blue [{id(blue):#x}]"}
    return profiler.report(), labels


#: Records errors and drives the page's controls; see its opening comment.
DRIVER = (Path(__file__).parent / "flamegraph_driver.js").read_text(encoding="utf-8")

CHARSET = '<meta charset="utf-8">'


def run_in_chromium(page: str, tmp: Path, *, query: str = "") -> tuple[dict[str, Any], str]:
    """Load ``page`` with the driver in headless Chromium: (what the driver
    recorded, Chromium's log)."""
    chromium = shutil.which("chromium")
    if chromium is None:
        message = "Chromium is needed to run the page (Debian: apt-get install chromium)"
        if os.environ.get("CI"):  # .ci/run installs it: missing there is a failure
            pytest.fail(message)
        pytest.skip(message)
    assert page.count(CHARSET) == 1
    driver = f"<script>const QUERY = {json.dumps(query)};{DRIVER}</script>"
    path = tmp / "page.html"
    path.write_text(page.replace(CHARSET, CHARSET + driver), encoding="utf-8")
    result = subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={tmp / 'profile'}",
            "--window-size=1280,900",
            "--virtual-time-budget=5000",
            "--enable-logging=stderr",
            "--v=0",
            "--dump-dom",
            path.as_uri(),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    found = re.search(r'<pre id="test-results">(.*?)</pre>', result.stdout, re.DOTALL)
    assert found, f"the driver wrote no results; Chromium said:\n{result.stderr[-3000:]}"
    return json.loads(html.unescape(found.group(1))), result.stderr


@pytest.fixture(scope="module")
def browsed(
    workload: tuple[greenprof.Report, dict[str, str]], tmp_path_factory: pytest.TempPathFactory
) -> tuple[dict[str, Any], str]:
    report, _ = workload
    page = html_page(report, title="red & blue <greenlets>")
    return run_in_chromium(page, tmp_path_factory.mktemp("chromium"), query="red_w")


def views_by_label(seen: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The driver's views keyed by greenlet label ("all" for all greenlets)."""
    labels = {value: text.split(" \u2014 ")[0] for value, text in seen["options"]}
    return {"all" if value == "-1" else labels[value]: v for value, v in seen["views"].items()}


def test_page_loads_without_errors_and_draws_frames(browsed: tuple[dict[str, Any], str]) -> None:
    seen, log = browsed
    assert seen["errors"] == []
    assert seen["alerts"] == []
    assert seen["empty"] == []
    assert seen["views"]["-1"]["on_cpu"]["frames"] > 5
    # Chromium's own log: nothing written to the console, nothing uncaught.
    console = [line for line in log.splitlines() if ":CONSOLE" in line or "Uncaught" in line]
    assert console == []


def functions_in(
    report: greenprof.Report, greenlet_ids: set[int], weight: str
) -> tuple[set[str], set[str]]:
    """The functions with some ``weight`` in the report for those greenlets,
    and those with at least 2% of it: wide enough that the page must draw them."""
    cells: list[tuple[tuple[greenprof.Frame, ...], int]]
    if weight == "snapshots":
        cells = [(s.stack, 1) for s in report.snapshots if s.greenlet_id in greenlet_ids]
    else:
        cells = [
            (t.stack, getattr(t, f"{weight}_ns"))
            for t in report.stacks
            if t.greenlet_id in greenlet_ids
        ]
    by_function: dict[str, int] = {}
    for stack, value in cells:
        for function in {frame.function for frame in stack}:
            by_function[function] = by_function.get(function, 0) + value
    total = sum(value for _, value in cells)
    present = {f for f, value in by_function.items() if value > 0}
    return present, {f for f, value in by_function.items() if value >= 0.02 * total}


def test_each_view_draws_the_functions_of_its_greenlets_and_no_others(
    browsed: tuple[dict[str, Any], str], workload: tuple[greenprof.Report, dict[str, str]]
) -> None:
    seen, _ = browsed
    report, labels = workload
    views = views_by_label(seen)
    assert set(views) == {"all", labels["red"], labels["blue"]}
    ids = {
        label: gid
        for gid in report.greenlets
        for label in labels.values()
        if f"[{gid:#x}]" in label
    }
    for label, view in views.items():
        shown = set(ids.values()) if label == "all" else {ids[label]}
        for weight in ("on_cpu", "off_cpu", "snapshots"):
            present, wide = functions_in(report, shown, weight)
            assert wide <= set(view[weight]["functions"]) <= present, (label, weight)
    red, blue = views[labels["red"]], views[labels["blue"]]
    assert "red_work" in red["on_cpu"]["functions"]
    assert {"red_work", "red_wait", "sleep"} <= set(red["off_cpu"]["functions"])
    assert {"blue_work", "blue_wait", EVIL} <= set(blue["off_cpu"]["functions"])
    for view in red.values():
        assert not any(name.startswith("blue_") or name == EVIL for name in view["functions"])
        assert view["greenlets"] == [labels["red"]]  # the root, alone
    for view in blue.values():
        assert not any(name.startswith("red_") for name in view["functions"])
        assert view["greenlets"] == [labels["blue"]]
    everything = views["all"]["off_cpu"]
    assert sorted(everything["greenlets"]) == sorted(labels.values())  # side by side
    assert {"red_wait", "blue_wait"} <= set(everything["functions"])


def test_weights_switch_what_is_drawn(browsed: tuple[dict[str, Any], str]) -> None:
    everything = browsed[0]["views"]["-1"]
    # Off-CPU time sits at the wait sites, in gevent's sleep; spin never waits.
    assert "sleep" in everything["off_cpu"]["functions"]
    assert "spin" not in everything["off_cpu"]["functions"]
    # The switches out are snapshots too, taken at the same wait sites.
    assert "sleep" in everything["snapshots"]["functions"]


def test_clicking_a_frame_zooms_it_to_the_full_width_and_reset_zooms_out(
    browsed: tuple[dict[str, Any], str],
) -> None:
    zoom = browsed[0]["zoom"]
    assert zoom["before"] < zoom["chart"] * 0.9
    assert zoom["after"] == pytest.approx(zoom["chart"], abs=1)
    assert zoom["ancestors"] >= 2  # "all greenlets" and the greenlet, dimmed above it
    assert zoom["zoomed"] == zoom["name"]
    assert zoom["name"] in zoom["details"]
    assert zoom["reset"] == pytest.approx(zoom["before"], abs=0.5)
    assert zoom["name"] in browsed[0]["tooltip"]
    assert " ms (" in browsed[0]["tooltip"]


def test_search_highlights_matching_frames_with_their_share(
    browsed: tuple[dict[str, Any], str], workload: tuple[greenprof.Report, dict[str, str]]
) -> None:
    found = browsed[0]["search"]
    assert "red_work" in found["names"]
    assert set(found["names"]) <= {"red_work", "red_wait"}
    report, _ = workload
    red = next(g for g in report.greenlets.values() if g.greenlet_name == "red")
    # red_work is the outermost frame of every red stack; red_wait, called by
    # it, is not counted again.
    assert found["value"] == red.on_cpu_ns
    everyone = sum(g.on_cpu_ns for g in report.greenlets.values())
    shown = re.fullmatch(
        r"(\d+) frames? match(?:es)?: [\d.]+ ms, ([\d.]+)% of [\d.]+ ms", found["info"]
    )
    assert shown, found["info"]
    assert int(shown[1]) == found["matches"] >= 1
    assert float(shown[2]) == pytest.approx(100 * red.on_cpu_ns / everyone, abs=0.06)


def test_the_longest_slices_are_listed(
    browsed: tuple[dict[str, Any], str], workload: tuple[greenprof.Report, dict[str, str]]
) -> None:
    report, _ = workload
    assert len(report.slices) >= 7  # four of red's, four of blue's
    assert browsed[0]["slices"] == min(len(report.slices), SLICES)


def test_names_that_look_like_markup_stay_text(
    browsed: tuple[dict[str, Any], str], workload: tuple[greenprof.Report, dict[str, str]]
) -> None:
    seen, _ = browsed
    _, labels = workload
    assert seen["scripts"] == 3  # the driver's, the data and the viewer: none injected
    assert seen["alerts"] == []
    blue = views_by_label(seen)[labels["blue"]]["off_cpu"]
    assert EVIL in blue["texts"]
    assert EVIL_FILE in blue["files"]


def test_the_page_fetches_nothing_and_escapes_its_data(
    workload: tuple[greenprof.Report, dict[str, str]],
) -> None:
    page = html_page(workload[0], title="<b>t</b>")
    assert "http://" not in page
    assert "https://" not in page
    assert not re.search(r"""(src|href)\s*=|@import|url\(""", page, re.IGNORECASE)
    assert page.lower().count("<script") == 2
    assert page.lower().count("</script") == 2
    assert "<!--" not in page
    assert EVIL not in page
    assert "<title>&lt;b&gt;t&lt;/b&gt;</title>" in page
    assert "default-src 'none'" in page
    data = re.search(r'<script type="application/json" id="greenprof-data">(.*?)</script>', page)
    assert data
    profile = json.loads(data.group(1))
    assert next(f[:2] for f in profile["frames"] if f[0] == EVIL) == [EVIL, EVIL_FILE]
    # Each frame is listed once; stacks refer to them by index.
    assert len({tuple(f) for f in profile["frames"]}) == len(profile["frames"])


def test_stacks_in_the_page_add_up_to_the_report(
    workload: tuple[greenprof.Report, dict[str, str]],
) -> None:
    report, _ = workload
    page = html_page(report)
    data = re.search(r'id="greenprof-data">(.*?)</script>', page)
    assert data
    profile = json.loads(data.group(1))
    for index, greenlet in enumerate(profile["greenlets"]):
        totals = next(
            g
            for g in report.greenlets.values()
            if greenlet["label"].endswith(f"[{g.greenlet_id:#x}]")
        )
        rows = [row for row in profile["stacks"] if row[0] == index]
        assert sum(row[2] for row in rows) == totals.on_cpu_ns == greenlet["on_cpu"]
        assert sum(row[3] for row in rows) == totals.off_cpu_ns == greenlet["off_cpu"]
        assert sum(row[4] for row in rows) == greenlet["snapshots"]
        assert greenlet["snapshots"] == sum(
            1 for s in report.snapshots if s.greenlet_id == totals.greenlet_id
        )
    stack = next(row for row in profile["stacks"] if row[1])[1]
    names = [profile["frames"][i][0] for i in stack]
    assert names[0] in {"red_work", "blue_work"}  # outermost first


def test_an_empty_report_says_so(tmp_path: Path) -> None:
    seen, log = run_in_chromium(html_page(greenprof.Report([])), tmp_path)
    assert seen["errors"] == []
    assert seen["empty"]
    assert seen["views"]["-1"]["on_cpu"]["frames"] == 0
    assert ":CONSOLE" not in log
