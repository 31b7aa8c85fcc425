/* Runs first in the page under test (tests/test_html.py puts it right after
 * <meta charset>, ahead of the page's Content-Security-Policy, which it need
 * not pass): it records every error, CSP violation and alert, drives the
 * controls once the page has loaded, and writes what it saw as JSON into
 * the element #test-results (and posts it to the parent page, if framed).
 * CONFIG is defined before it:
 *
 *   query    the text to search
 *   explore  true: draw every view, every "Show" choice, library frames
 *            hidden and shown, each weight, and record each (see snap()):
 *            views[view]["merged" | "side" | entry][collapsed | expanded][weight]
 */
(() => {
  const out = { errors: [], alerts: [] };
  const record = (text) => out.errors.push(String(text));
  window.addEventListener(
    "error",
    (event) => {
      const target = event.target;
      record(event.message || "failed to load " + (target.src || target.href || target.tagName));
    },
    true,
  );
  window.addEventListener("unhandledrejection", (event) => record("rejection: " + event.reason));
  document.addEventListener("securitypolicyviolation", (event) =>
    record("CSP blocked " + event.blockedURI + " (" + event.violatedDirective + ")"),
  );
  const consoleError = console.error;
  console.error = (...args) => {
    record("console.error: " + args.join(" "));
    consoleError(...args);
  };
  window.alert = (text) => out.alerts.push(String(text));

  const $ = (id) => document.getElementById(id);
  const boxes = () => Array.from(document.querySelectorAll("#chart .frame"));
  const kind = (k) => boxes().filter((box) => box.dataset.kind === k);
  const unique = (items) => Array.from(new Set(items)).sort();
  const described = (box) => ({
    name: box.dataset.name,
    kind: box.dataset.kind,
    value: Number(box.dataset.value),
  });
  /** What the chart draws now. */
  const snap = () => {
    const root = boxes().find((box) => box.dataset.depth === "0");
    return {
      frames: boxes().length,
      functions: unique(kind("function").map((box) => box.dataset.name)),
      entries: kind("entry").map((box) => box.dataset.name),
      libraries: kind("library").map((box) => ({
        name: box.dataset.name,
        frames: Number(box.dataset.frames),
      })),
      root: root ? described(root) : null,
      children: boxes()
        .filter((box) => box.dataset.depth === "1")
        .map(described),
      texts: kind("function")
        .map((box) => box.textContent)
        .filter((text) => text),
      files: unique(kind("function").map((box) => box.dataset.file)),
    };
  };
  const options = (id) =>
    Array.from($(id).options).map((option) => [option.value, option.textContent, option.disabled]);
  const choose = (id, value) => {
    $(id).value = value;
    $(id).dispatchEvent(new Event("change"));
  };
  const weigh = (value) =>
    document.querySelector("input[name=weight][value=" + value + "]").click();
  const hideLibrary = (on) => {
    if ($("hide-library").checked !== on) $("hide-library").click();
  };
  const hover = (box) => {
    box.dispatchEvent(new MouseEvent("mousemove", { bubbles: true, clientX: 50, clientY: 50 }));
    return {
      name: box.dataset.name,
      tooltip: $("tooltip").hidden ? "" : $("tooltip").textContent,
      details: $("details").textContent,
    };
  };
  // The page must never scroll sideways, whatever is shown.
  let widest = 0;
  const measure = () => {
    widest = Math.max(widest, document.documentElement.scrollWidth);
  };
  const pseudo = {}; // tooltips of pseudo-frames (file ""), by name
  const libraryTips = {}; // tooltips of library nodes, by name

  function explore() {
    out.views = {};
    out.showOptions = {};
    out.opened = {}; // what "Show" picks when the view is picked
    for (const [view, text] of options("view")) {
      choose("view", view);
      const key = text.split(" (")[0];
      out.opened[key] = $("show").value;
      out.showOptions[key] = options("show");
      out.views[key] = {};
      for (const [show, , disabled] of out.showOptions[key]) {
        if (disabled) continue;
        choose("show", show);
        const seen = (out.views[key][show] = { collapsed: {}, expanded: {} });
        for (const hidden of [true, false]) {
          hideLibrary(hidden);
          for (const weight of ["off_cpu", "snapshots", "on_cpu"]) {
            weigh(weight);
            seen[hidden ? "collapsed" : "expanded"][weight] = snap();
            measure();
            const fake = kind("function").find((box) => box.dataset.file === "");
            if (fake && !(fake.dataset.name in pseudo)) pseudo[fake.dataset.name] = hover(fake);
            const folded = kind("library")[0];
            if (folded && !(folded.dataset.name in libraryTips)) {
              libraryTips[folded.dataset.name] = hover(folded);
            }
          }
        }
      }
    }
  }

  function drive() {
    out.scripts = document.scripts.length;
    out.viewport = { width: window.innerWidth };
    out.viewOptions = options("view");
    const initial = {
      view: $("view").value,
      show: $("show").value,
      hideLibrary: $("hide-library").checked,
      showOptions: options("show"),
      snap: snap(),
      empty: Array.from(document.querySelectorAll("#chart .empty")).map((p) => p.textContent),
    };
    const chart = $("chart").getBoundingClientRect();
    initial.chart = {
      left: chart.left,
      right: chart.right,
      boxesLeft: Math.min(...boxes().map((box) => box.getBoundingClientRect().left)),
      boxesRight: Math.max(...boxes().map((box) => box.getBoundingClientRect().right)),
    };
    out.initial = initial;
    measure();
    if (CONFIG.explore) explore();
    out.pseudo = pseudo;
    out.libraryTips = libraryTips;
    // Back to how the page opened.
    choose("view", initial.view);
    choose("show", initial.show);
    hideLibrary(true);
    weigh("on_cpu");

    out.slices = $("slices-body").rows.length;
    for (const more of document.querySelectorAll("#slices details")) more.open = true;
    measure();
    if (kind("function").length > 0) {
      const chartWidth = $("chart").getBoundingClientRect().width;
      const widestBox = kind("function").sort((a, b) => b.dataset.value - a.dataset.value)[0];
      const name = widestBox.dataset.name;
      const before = widestBox.getBoundingClientRect().width;
      widestBox.dispatchEvent(new MouseEvent("click", { bubbles: true }));
      const focus = kind("function").find(
        (box) => box.dataset.name === name && !box.classList.contains("ancestor"),
      );
      out.zoom = {
        name,
        depth: Number(focus.dataset.depth),
        before,
        chart: chartWidth,
        after: focus.getBoundingClientRect().width,
        ancestors: document.querySelectorAll("#chart .ancestor").length,
        zoomed: $("chart").dataset.zoomed,
        details: $("details").textContent,
      };
      out.tooltip = hover(focus).tooltip;
      $("reset").click();
      out.zoom.reset = kind("function")
        .find((box) => box.dataset.name === name)
        .getBoundingClientRect().width;
      // A folded run of library frames zooms like any node.
      const folded = kind("library")[0];
      if (folded) {
        folded.dispatchEvent(new MouseEvent("click", { bubbles: true }));
        out.libraryZoom = {
          name: folded.dataset.name,
          zoomed: $("chart").dataset.zoomed,
          width: Array.from(document.querySelectorAll("#chart .library.focus")).map(
            (box) => box.getBoundingClientRect().width,
          ),
          chart: chartWidth,
        };
        $("reset").click();
      }
    }
    $("search").value = CONFIG.query;
    $("search").dispatchEvent(new Event("input"));
    out.search = {
      info: $("search-info").textContent,
      matches: Number($("search-info").dataset.matches),
      value: Number($("search-info").dataset.value),
      names: unique(
        boxes()
          .filter((box) => box.classList.contains("match"))
          .map((box) => box.dataset.name),
      ),
    };
    $("search").value = "";
    $("search").dispatchEvent(new Event("input"));
    // A row of the slices table shows its greenlet.
    const row = $("slices-body").rows[0];
    if (row && row.dataset.greenlet !== undefined) {
      row.cells[0].click();
      out.slicePick = {
        view: $("view").value,
        show: $("show").value,
        greenlet: row.dataset.greenlet,
        root: snap().root,
        current: document.querySelectorAll("#slices-body tr.current").length,
      };
    }
    measure();
    out.viewport.scrollWidth = widest;
  }

  window.addEventListener("load", () => {
    try {
      drive();
    } catch (error) {
      record("driver: " + error + " " + error.stack);
    }
    const pre = document.createElement("pre");
    pre.id = "test-results";
    pre.textContent = JSON.stringify(out);
    document.body.appendChild(pre);
    // In a frame (a screen narrower than Chromium's window), the page holding
    // it writes the results where --dump-dom sees them.
    if (window.parent !== window) window.parent.postMessage(pre.textContent, "*");
  });
})();
