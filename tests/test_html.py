"""The HTML flame graph: one self-contained page that draws, and works, in headless Chromium."""

from __future__ import annotations

import html
import json
import os
import re
import sys
import types
from pathlib import Path
from typing import Any

import gevent
import pytest
from gevent import baseserver, pywsgi

import greenprof
from greenprof import Frame, Report, Session, exporters
from greenprof.exceptions import ConfigurationError
from greenprof.exporters._common import TAG_VALUES, stack_values
from greenprof.exporters._html import SLICES
from greenprof.exporters._html import html as html_page

from .conftest import function_name, run_chromium
from .html_workloads import OWN_FUNCTIONS, many_greenlets, one_run_each, record_requests
from .workloads import record_red_and_blue

EVIL = "</script><script>alert(1)</script>"
EVIL_FILE = "<!--<script>evil.py"
WEIGHTS = ("on_cpu", "off_cpu", "snapshots")


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
def workload() -> tuple[Report, dict[str, str]]:
    """The report of a red and a blue greenlet, and each one's label."""
    profiler, red, blue = record_red_and_blue(blue_then=evil)
    labels = {"red": f"red [{id(red):#x}]", "blue": f"blue [{id(blue):#x}]"}
    return profiler.report(), labels


#: Records errors and drives the page's controls; see its opening comment.
DRIVER = (Path(__file__).parent / "flamegraph_driver.js").read_text(encoding="utf-8")

CHARSET = '<meta charset="utf-8">'

Seen = dict[str, Any]


#: Headless Chromium's window is at least this wide; a narrower screen is
#: an <iframe> of its size, in which the page's viewport is that narrow.
MIN_WINDOW_WIDTH = 500

#: The page holding a narrow screen: the driver in the page posts what it saw
#: here (a file:// frame may not be read across), where --dump-dom finds it.
FRAME = """<!DOCTYPE html>
<html><head><meta charset="utf-8"></head>
<body style="margin: 0">
<iframe src="page.html" style="display: block; border: 0; width: {width}px; height: {height}px">
</iframe>
<script>
addEventListener("message", (event) => {{
  const pre = document.createElement("pre");
  pre.id = "test-results";
  pre.textContent = event.data;
  document.body.appendChild(pre);
}});
</script>
</body></html>
"""


def run_in_chromium(
    page: str, tmp: Path, *, query: str = "", explore: bool = True, size: str = "1280,900"
) -> tuple[Seen, str]:
    """Load ``page`` with the driver in headless Chromium, on a screen ``size``
    ("width,height") big: (what the driver recorded, Chromium's log)."""
    assert page.count(CHARSET) == 1
    config = json.dumps({"query": query, "explore": explore})
    driver = f"<script>const CONFIG = {config};{DRIVER}</script>"
    path = tmp / "page.html"
    path.write_text(page.replace(CHARSET, CHARSET + driver), encoding="utf-8")
    width, height = (int(n) for n in size.split(","))
    if width < MIN_WINDOW_WIDTH:
        path = tmp / "screen.html"
        path.write_text(FRAME.format(width=width, height=height), encoding="utf-8")
        size = f"{MIN_WINDOW_WIDTH},{height}"
    result = run_chromium(path.as_uri(), str(tmp / "profile"), size=size, budget_ms=5000)
    found = re.search(r'<pre id="test-results">(.*?)</pre>', result.stdout, re.DOTALL)
    assert found, f"the driver wrote no results; Chromium said:\n{result.stderr[-3000:]}"
    return json.loads(html.unescape(found.group(1))), result.stderr


def console_lines(log: str) -> list[str]:
    """Chromium's own log: what was written to the console, or not caught."""
    return [line for line in log.splitlines() if ":CONSOLE" in line or "Uncaught" in line]


def profile_of(page: str) -> dict[str, Any]:
    """The JSON the page's viewer reads."""
    data = re.search(r'<script type="application/json" id="greenprof-data">(.*?)</script>', page)
    assert data
    profile: dict[str, Any] = json.loads(data.group(1))
    return profile


def view_key(option_text: str) -> str:
    """ "path (2 values)" -> "path"."""
    return option_text.split(" (")[0]


def show_value(seen: Seen, view: str, label: str) -> str:
    """The "Show" option of ``view`` for the entry labelled ``label`` (and no tags)."""
    (value,) = [
        value for value, text, _ in seen["showOptions"][view] if text.split(" \u2014 ")[0] == label
    ]
    return str(value)


def functions_in(report: Report, greenlet_ids: set[int], weight: str) -> tuple[set[str], set[str]]:
    """The functions with some ``weight`` in the report for those greenlets
    (pseudo-frames included: stacks as the exporters show them), and those
    with at least 2% of it: wide enough that the page must draw them."""
    column = WEIGHTS.index(weight)
    cells = [
        (stack, values[column])
        for (gid, _, stack), values in stack_values(report).items()
        if gid in greenlet_ids
    ]
    by_function: dict[str, int] = {}
    for stack, value in cells:
        for function in {frame.function for frame in stack}:
            by_function[function] = by_function.get(function, 0) + value
    total = sum(value for _, value in cells)
    present = {f for f, value in by_function.items() if value > 0}
    return present, {f for f, value in by_function.items() if value >= 0.02 * total}


# -- red and blue: the greenlet view ---------------------------------------------------


@pytest.fixture(scope="module")
def browsed(
    workload: tuple[Report, dict[str, str]], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Seen, str]:
    report, _ = workload
    page = html_page(report, title="red & blue <greenlets>")
    return run_in_chromium(page, tmp_path_factory.mktemp("chromium"), query="red_w")


def test_page_loads_without_errors_and_draws_frames(browsed: tuple[Seen, str]) -> None:
    seen, log = browsed
    assert seen["errors"] == []
    assert seen["alerts"] == []
    initial = seen["initial"]
    assert initial["empty"] == []
    # No tags: greenlets, every one merged into one tree.
    assert [view_key(text) for _, text, _ in seen["viewOptions"]] == ["greenlet"]
    assert (initial["view"], initial["show"], initial["hideLibrary"]) == ("0", "merged", True)
    assert initial["snap"]["frames"] > 5
    assert console_lines(log) == []


def test_each_choice_draws_the_functions_of_its_greenlets_and_no_others(
    browsed: tuple[Seen, str], workload: tuple[Report, dict[str, str]]
) -> None:
    seen, _ = browsed
    report, labels = workload
    shown = seen["views"]["greenlet"]
    ids = {
        label: gid
        for gid in report.greenlets
        for label in labels.values()
        if f"[{gid:#x}]" in label
    }
    red = show_value(seen, "greenlet", labels["red"])
    blue = show_value(seen, "greenlet", labels["blue"])
    assert set(shown) == {"merged", "side", red, blue}
    which = {"merged": set(ids.values()), "side": set(ids.values())}
    which |= {red: {ids[labels["red"]]}, blue: {ids[labels["blue"]]}}
    for show, greenlets in which.items():
        for weight in WEIGHTS:
            present, wide = functions_in(report, greenlets, weight)
            drawn = shown[show]["expanded"][weight]["functions"]
            assert wide <= set(drawn) <= present, (show, weight)
            assert set(shown[show]["collapsed"][weight]["functions"]) <= set(drawn)
    for weight in WEIGHTS:
        red_view, blue_view = shown[red]["expanded"][weight], shown[blue]["expanded"][weight]
        assert not any(name.startswith("blue_") or name == EVIL for name in red_view["functions"])
        assert not any(name.startswith("red_") for name in blue_view["functions"])
        # One greenlet: it is the root, alone.
        assert red_view["root"]["name"] == labels["red"]
        assert red_view["entries"] == [labels["red"]]
        assert blue_view["entries"] == [labels["blue"]]
        # Side by side: a node per greenlet under the root.
        side = shown["side"]["expanded"][weight]
        assert sorted(side["entries"]) == sorted(labels.values())
        assert {child["name"] for child in side["children"]} == set(labels.values())
        # Merged: no greenlet level, the outermost frames under the root.
        merged = shown["merged"]["expanded"][weight]
        assert merged["entries"] == []
        assert merged["root"]["kind"] == "root"
        outermost = {
            stack[0].function for (_, _, stack), values in stack_values(report).items() if values
        }
        assert {child["name"] for child in merged["children"]} <= outermost
        assert {child["kind"] for child in merged["children"]} == {"function"}
    assert {"red_work", "red_wait", "sleep"} <= set(shown[red]["expanded"]["off_cpu"]["functions"])
    assert {"blue_work", "blue_wait", EVIL} <= set(shown[blue]["expanded"]["off_cpu"]["functions"])
    assert {"red_work", "blue_work"} <= {
        child["name"] for child in shown["merged"]["expanded"]["on_cpu"]["children"]
    }


def test_weights_switch_what_is_drawn(browsed: tuple[Seen, str]) -> None:
    everything = browsed[0]["views"]["greenlet"]["merged"]["collapsed"]
    # Off-CPU time sits at the wait sites, in gevent's sleep; spin never waits.
    # (sleep is a stack's innermost frame: it stays drawn among library frames.)
    assert "sleep" in everything["off_cpu"]["functions"]
    assert "spin" not in everything["off_cpu"]["functions"]
    # The switches out are snapshots too, taken at the same wait sites.
    assert "sleep" in everything["snapshots"]["functions"]
    assert "spin" in everything["on_cpu"]["functions"]


def test_clicking_a_frame_zooms_it_to_the_full_width_and_reset_zooms_out(
    browsed: tuple[Seen, str],
) -> None:
    zoom = browsed[0]["zoom"]
    assert zoom["before"] < zoom["chart"] * 0.9
    assert zoom["after"] == pytest.approx(zoom["chart"], abs=1)
    assert zoom["ancestors"] == zoom["depth"] >= 1  # what it was called from, dimmed above
    assert zoom["zoomed"] == zoom["name"]
    assert zoom["name"] in zoom["details"]
    assert zoom["reset"] == pytest.approx(zoom["before"], abs=0.5)
    assert zoom["name"] in browsed[0]["tooltip"]
    assert " ms (" in browsed[0]["tooltip"]


def test_search_highlights_matching_frames_with_their_share(
    browsed: tuple[Seen, str], workload: tuple[Report, dict[str, str]]
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


def test_the_longest_slices_are_listed_and_a_row_shows_its_greenlet(
    browsed: tuple[Seen, str], workload: tuple[Report, dict[str, str]]
) -> None:
    seen, _ = browsed
    report, labels = workload
    assert len(report.slices) >= 7  # four of red's, four of blue's
    assert seen["slices"] == min(len(report.slices), SLICES)
    picked = seen["slicePick"]
    assert picked["view"] == "0"
    assert picked["show"] == picked["greenlet"]
    assert picked["root"]["name"] in labels.values()
    assert picked["current"] >= 1


def test_names_that_look_like_markup_stay_text(
    browsed: tuple[Seen, str], workload: tuple[Report, dict[str, str]]
) -> None:
    seen, _ = browsed
    _, labels = workload
    assert seen["scripts"] == 3  # the driver's, the data and the viewer: none injected
    assert seen["alerts"] == []
    blue = seen["views"]["greenlet"][show_value(seen, "greenlet", labels["blue"])]
    assert EVIL in blue["expanded"]["off_cpu"]["texts"]
    assert EVIL_FILE in blue["expanded"]["off_cpu"]["files"]


def test_pseudo_frames_show_no_place(browsed: tuple[Seen, str]) -> None:
    pseudo = browsed[0]["pseudo"]
    # The greenlets' first runs and exits are in the snapshot weight.
    assert {"<greenlet start>", "<greenlet exit>"} & set(pseudo)
    for name, hovered in pseudo.items():
        assert hovered["tooltip"].startswith(name)
        assert name in hovered["details"]
        for text in (hovered["tooltip"], hovered["details"]):
            assert ":0" not in text, text


def test_the_page_fetches_nothing_and_escapes_its_data(
    workload: tuple[Report, dict[str, str]],
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
    profile = profile_of(page)
    assert next(f[:2] for f in profile["frames"] if f[0] == EVIL) == [EVIL, EVIL_FILE]
    # Each frame is listed once; stacks refer to them by index.
    assert len({tuple(f) for f in profile["frames"]}) == len(profile["frames"])


def test_stacks_in_the_page_add_up_to_the_report(
    workload: tuple[Report, dict[str, str]],
) -> None:
    report, _ = workload
    profile = profile_of(html_page(report))
    (greenlets,) = profile["views"]
    assert greenlets["key"] == "greenlet" == profile["view"]
    for index, greenlet in enumerate(greenlets["entries"]):
        totals = next(
            g
            for g in report.greenlets.values()
            if greenlet["label"].endswith(f"[{g.greenlet_id:#x}]")
        )
        rows = [row for row in greenlets["stacks"] if row[0] == index]
        assert sum(row[2] for row in rows) == totals.on_cpu_ns == greenlet["on_cpu"]
        assert sum(row[3] for row in rows) == totals.off_cpu_ns == greenlet["off_cpu"]
        assert sum(row[4] for row in rows) == greenlet["snapshots"]
        assert greenlet["snapshots"] == sum(
            1 for s in report.snapshots if s.greenlet_id == totals.greenlet_id
        )
    frames = profile["frames"]
    stack = next(row[1] for row in greenlets["stacks"] if frames[row[1][0]][1])
    names = [frames[i][0] for i in stack]
    assert names[0] in {"red_work", "blue_work"}  # outermost first
    # An empty stack is a pseudo-frame with no file and no line, never nothing.
    assert all(row[1] for row in greenlets["stacks"])
    assert {tuple(f) for f in frames if not f[1]} <= {
        ("<greenlet start>", "", 0),
        ("<greenlet exit>", "", 0),
    }


def test_an_empty_report_says_so(tmp_path: Path) -> None:
    seen, log = run_in_chromium(html_page(Report([])), tmp_path)
    assert seen["errors"] == []
    assert seen["initial"]["empty"]
    assert seen["initial"]["snap"]["frames"] == 0
    assert console_lines(log) == []


# -- many requests: views by tag ------------------------------------------------------


@pytest.fixture(scope="module")
def requests(tmp_path_factory: pytest.TempPathFactory) -> Report:
    """Six GETs of /checkout and six of /search, served at once by gevent's
    WSGI server, one tagged session each, read back from their file."""
    folder = tmp_path_factory.mktemp("requests")
    return record_requests(folder / "requests.jsonl", ["/checkout", "/search"] * 6)


@pytest.fixture(scope="module")
def browsed_requests(
    requests: Report, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Seen, str]:
    page = html_page(requests, title="shop")
    return run_in_chromium(page, tmp_path_factory.mktemp("chromium"), query="price")


def test_a_page_of_many_requests_opens_on_path_all_merged(
    browsed_requests: tuple[Seen, str], requests: Report
) -> None:
    seen, log = browsed_requests
    assert seen["errors"] == []
    assert console_lines(log) == []
    assert len(requests.sessions) == 12
    # request_id has a value per session: no view; method, path and greenlets do.
    views = [view_key(text) for _, text, _ in seen["viewOptions"]]
    assert views == ["greenlet", "method", "path"]
    initial = seen["initial"]
    assert view_key({v: t for v, t, _ in seen["viewOptions"]}[initial["view"]]) == "path"
    assert initial["show"] == "merged"
    assert initial["hideLibrary"] is True
    groups = requests.group_by("path")
    assert [text.split(" \u2014 ")[0] for _, text, _ in initial["showOptions"][2:]] == [
        f"path={value}" for value in groups
    ]  # heaviest first, after "All, merged" and "All, side by side"
    merged = seen["views"]["path"]["merged"]
    for weight in WEIGHTS:
        column = WEIGHTS.index(weight)
        everything = [
            (stack, values[column])
            for group in groups.values()
            for (_, _, stack), values in stack_values(group).items()
        ]
        expanded, collapsed = merged["expanded"][weight], merged["collapsed"][weight]
        # One tree, the sum of every value's: no greenlet or value level.
        assert expanded["root"]["value"] == sum(value for _, value in everything)
        assert collapsed["root"]["value"] == expanded["root"]["value"]
        assert expanded["entries"] == collapsed["entries"] == []
        # Under the root, the program's outermost frames: gevent's server.
        outermost = {stack[0].function for stack, value in everything if value}
        assert {child["name"] for child in expanded["children"]} <= outermost
        assert {child["kind"] for child in expanded["children"]} == {"function"}
        assert "_handle_and_close_when_done" in {c["name"] for c in expanded["children"]}
        # ... folded, with the rest of the server's frames, into one node.
        (folded,) = collapsed["children"]
        assert folded["kind"] == "library"
        assert folded["name"].startswith("6 library frames (gevent)")
    # Side by side: a node per value under the root.
    side = seen["views"]["path"]["side"]["collapsed"]["on_cpu"]
    assert sorted(side["entries"]) == sorted(f"path={value}" for value in groups)
    # A request's greenlet is labelled with what it served.
    greenlet_options = [text for _, text, _ in seen["showOptions"]["greenlet"]]
    assert any("path=/checkout" in text and "request_id=" in text for text in greenlet_options)


def test_picking_a_path_draws_only_its_handler_with_its_totals(
    browsed_requests: tuple[Seen, str], requests: Report
) -> None:
    seen, _ = browsed_requests
    groups = requests.group_by("path")
    assert set(groups) == {"/checkout", "/search"}
    for value, group in groups.items():
        (other,) = set(groups) - {value}
        totals = group.greenlets[0]
        expected = {
            "on_cpu": totals.on_cpu_ns,
            "off_cpu": totals.off_cpu_ns,
            "snapshots": len(group.snapshots),
        }
        assert all(expected.values())
        shown = seen["views"]["path"][show_value(seen, "path", f"path={value}")]
        for mode in ("collapsed", "expanded"):
            for weight in WEIGHTS:
                view = shown[mode][weight]
                assert view["root"] == {
                    "name": f"path={value}",
                    "kind": "entry",
                    "value": expected[weight],
                }
                assert not set(view["functions"]) & OWN_FUNCTIONS[other], (value, mode, weight)
                present, wide = functions_in(group, {0}, weight)
                if mode == "expanded":
                    assert wide <= set(view["functions"]) <= present
        handler = "checkout_handler" if value == "/checkout" else "search_handler"
        work = "price_cart" if value == "/checkout" else "query_index"
        wait = "reserve_stock" if value == "/checkout" else "fetch_results"
        assert {handler, work, "spin"} <= set(shown["collapsed"]["on_cpu"]["functions"])
        assert {handler, wait, "sleep"} <= set(shown["collapsed"]["off_cpu"]["functions"])
    # A view of one value opens on it: "All" would add nothing.
    assert seen["opened"]["method"] == "0"
    assert seen["opened"]["path"] == "merged"


def test_library_frames_fold_by_default_and_unfold_when_unchecked(
    browsed_requests: tuple[Seen, str],
) -> None:
    seen, _ = browsed_requests
    server = {
        function_name(baseserver._handle_and_close_when_done),
        function_name(pywsgi.WSGIServer.handle),
        function_name(pywsgi.WSGIHandler.run_application),
    }
    shown = seen["views"]["path"][show_value(seen, "path", "path=/checkout")]
    for weight in WEIGHTS:
        collapsed, expanded = shown["collapsed"][weight], shown["expanded"][weight]
        assert not server & set(collapsed["functions"])
        assert server <= set(expanded["functions"])
        assert collapsed["libraries"]
        assert expanded["libraries"] == []
        assert all(group["frames"] >= 2 for group in collapsed["libraries"])
        assert collapsed["frames"] < expanded["frames"]
    # The innermost frame stays, library or not: where it waited.
    assert "sleep" in shown["collapsed"]["off_cpu"]["functions"]
    # A folded node names the functions it folds in its tooltip.
    tips = seen["libraryTips"]
    assert any("_handle_and_close_when_done" in tip["tooltip"] for tip in tips.values())
    assert all(":0" not in tip["tooltip"] for tip in tips.values())
    # And zooms like any node.
    zoom = seen["libraryZoom"]
    assert zoom["zoomed"] == zoom["name"]
    assert zoom["width"] == [pytest.approx(zoom["chart"], abs=1)]


def test_search_counts_each_stack_once_whether_frames_are_folded_or_not(
    browsed_requests: tuple[Seen, str], requests: Report
) -> None:
    found = browsed_requests[0]["search"]
    assert found["names"] == ["price_cart"]
    groups = requests.group_by("path")
    priced = sum(
        values[0]
        for group in groups.values()
        for (_, _, stack), values in stack_values(group).items()
        if any(frame.function == "price_cart" for frame in stack)
    )
    assert found["value"] == priced > 0


@pytest.mark.parametrize("page", ["requests", "red and blue"])
def test_a_phone_screen_never_scrolls_sideways_and_still_draws(
    page: str,
    requests: Report,
    workload: tuple[Report, dict[str, str]],
    tmp_path: Path,
) -> None:
    report = requests if page == "requests" else workload[0]
    seen, log = run_in_chromium(html_page(report, title=EVIL * 3), tmp_path, size="390,844")
    assert seen["errors"] == []
    assert console_lines(log) == []
    assert seen["viewport"]["width"] == 390
    # Every view, every choice, both library settings, every slice opened.
    assert seen["views"]
    assert seen["viewport"]["scrollWidth"] <= seen["viewport"]["width"]
    initial = seen["initial"]
    assert initial["snap"]["frames"] > 5
    chart = initial["chart"]
    assert chart["left"] >= 0
    assert chart["right"] <= 390
    assert chart["boxesLeft"] >= chart["left"] - 1
    assert chart["boxesRight"] <= chart["right"] + 1


# -- many greenlets, tags -------------------------------------------------------------


def test_the_picker_lists_the_heaviest_500_and_all_still_has_every_one(tmp_path: Path) -> None:
    report = many_greenlets(503)
    seen, _ = run_in_chromium(html_page(report), tmp_path, explore=False)
    assert seen["errors"] == []
    options = seen["initial"]["showOptions"]
    assert [value for value, _, _ in options[:2]] == ["merged", "side"]
    listed = options[2:-1]
    assert len(listed) == 500
    assert listed[0][1].startswith("worker-503 [0x1f7]")  # the heaviest first
    assert listed[-1][1].startswith("worker-4 [0x4]")
    assert not any(disabled for _, _, disabled in listed)
    note = options[-1]
    assert note[2]  # disabled: a note, not a choice
    assert "500" in note[1]
    assert "3 more" in note[1]
    everyone = sum(g.on_cpu_ns for g in report.greenlets.values())
    assert seen["initial"]["snap"]["root"]["value"] == everyone


def sessions_report(tags: list[dict[str, str]]) -> Report:
    return Report(
        [],
        sessions=[Session(f"s{n}", 1_000 * n, 1_000 * n + 500, tags=t) for n, t in enumerate(tags)],
    )


def test_tags_with_a_value_per_session_or_too_many_values_get_no_view() -> None:
    count = 2 * (TAG_VALUES + 1)
    report = sessions_report(
        [
            {
                "path": f"/p{n % 3}",
                "status": "200" if n % 2 else "500",
                "shard": str(n % (TAG_VALUES + 1)),  # twice each, but too many
                "request_id": str(n),  # one each
            }
            for n in range(count)
        ]
    )
    profile = profile_of(html_page(report))
    assert [view["key"] for view in profile["views"]] == ["greenlet", "path", "status"]
    assert profile["view"] == "path"
    path = profile["views"][1]
    assert sorted(entry["label"] for entry in path["entries"]) == [
        "path=/p0",
        "path=/p1",
        "path=/p2",
    ]
    assert sum(entry["sessions"] for entry in path["entries"]) == count
    # Asked for, any tag gets its view, and the page opens on it.
    forced = profile_of(html_page(report, group_by="request_id"))
    assert [view["key"] for view in forced["views"]] == ["greenlet", "path", "request_id", "status"]
    assert forced["view"] == "request_id"


def test_group_by_opens_on_its_view_whose_entries_are_the_merged_reports(
    requests: Report,
) -> None:
    page = exporters.export(requests, "html", group_by="method")
    assert isinstance(page, str)
    profile = profile_of(page)
    assert profile["view"] == "method"
    path = next(view for view in profile["views"] if view["key"] == "path")
    for index, (value, group) in enumerate(requests.group_by("path").items()):
        entry = path["entries"][index]
        assert entry["label"] == f"path={value}"
        assert entry["sessions"] == len(group.sessions)
        rows = [row for row in path["stacks"] if row[0] == index]
        assert sum(row[2] for row in rows) == entry["on_cpu"] == group.greenlets[0].on_cpu_ns
        assert sum(row[3] for row in rows) == entry["off_cpu"] == group.greenlets[0].off_cpu_ns
        assert sum(row[4] for row in rows) == entry["snapshots"] == len(group.snapshots)


def test_group_by_a_tag_no_session_has_is_an_error(requests: Report) -> None:
    with pytest.raises(ConfigurationError, match=r"no session has the tag 'user'.*path"):
        html_page(requests, group_by="user")
    with pytest.raises(ConfigurationError, match="'user'"):
        exporters.export(requests, "html", group_by="user")
    with pytest.raises(ConfigurationError, match="no session has tags"):
        html_page(Report([]), group_by="path")


#: Files of library code, and the library the page names for each.
LIBRARY_FILES = {
    "/srv/venv/lib/python3.12/site-packages/requests/api.py": "requests",
    "/usr/lib/python3/dist-packages/six.py": "six",
    "/home/me/src/gevent/src/gevent/hub.py": "gevent",
    "/srv/venv/lib/python3.12/greenlet/__init__.py": "greenlet",
    os.path.join(os.path.dirname(greenprof.__file__), "integrations", "wsgi.py"): "greenprof",
    "/usr/lib/python3.12/runpy.py": "runpy",
    "<frozen runpy>": "runpy",
    "/usr/lib/python3.12/importlib/__init__.py": "importlib",
    "/usr/lib/python3.12/threading.py": "threading",
    "/usr/lib/python3.12/contextlib.py": "contextlib",
    "/usr/lib/python3.12/socketserver.py": "socketserver",
}
#: Files of the program's own code (the standard library at large included).
OWN_FILES = ("/app/shop/threading_utils.py", "/usr/lib/python3.12/json/decoder.py", "main.py")


def test_which_files_are_library_code(tmp_path: Path) -> None:
    def stack(*middle: tuple[str, str]) -> tuple[Frame, ...]:
        inner = [Frame(file, function, 10 + n) for n, (file, function) in enumerate(middle)]
        return (Frame("/app/main.py", "main", 1), *inner, Frame("/app/main.py", "leaf", 2))

    runs = [
        (f"lib{n}", stack((f, "outer"), (f, "inner")), 1_000) for n, f in enumerate(LIBRARY_FILES)
    ]
    runs += [(f"own{n}", stack((f, "outer"), (f, "inner")), 1_000) for n, f in enumerate(OWN_FILES)]
    # A run of library frames that ends the stack keeps its last frame drawn.
    gevent_hub = "/srv/venv/lib/python3.12/site-packages/gevent/hub.py"
    waits = ("get", "wait", "switch")
    main = Frame("/app/main.py", "main", 1)
    runs.append(
        ("leaf", (main, *(Frame(gevent_hub, f, 10 + n) for n, f in enumerate(waits))), 1_000)
    )
    report = one_run_each(runs)
    seen, _ = run_in_chromium(html_page(report), tmp_path)
    assert seen["errors"] == []
    shown = seen["views"]["greenlet"]
    for gid, (name, _, _) in enumerate(runs, start=1):
        view = shown[show_value(seen, "greenlet", f"{name} [{gid:#x}]")]
        collapsed = view["collapsed"]["on_cpu"]
        assert view["expanded"]["on_cpu"]["libraries"] == []
        if name.startswith("lib"):
            library = LIBRARY_FILES[list(LIBRARY_FILES)[int(name[3:])]]
            assert collapsed["libraries"] == [
                {"name": f"2 library frames ({library})", "frames": 2}
            ], name
            assert collapsed["functions"] == ["leaf", "main"]
        elif name.startswith("own"):
            assert collapsed["libraries"] == [], name
            assert collapsed["functions"] == ["inner", "leaf", "main", "outer"]
        else:
            assert collapsed["libraries"] == [{"name": "2 library frames (gevent)", "frames": 2}]
            assert collapsed["functions"] == ["main", "switch"]
    # The page learns greenprof's own folder from Python, wherever it is installed.
    own = profile_of(html_page(report))["own_dir"]
    assert own == os.path.dirname(os.path.abspath(greenprof.__file__)) + os.sep
