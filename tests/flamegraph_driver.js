/* Runs first in the page under test (tests/test_html.py puts it right after
 * <meta charset>, ahead of the page's Content-Security-Policy, which it need
 * not pass): it records every error, CSP violation and alert, drives the
 * controls once the page has loaded, and writes what it saw as JSON into
 * the element #test-results. QUERY, the text to search, is defined before it.
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
  const view = () => ({
    frames: boxes().length,
    functions: Array.from(new Set(kind("function").map((box) => box.dataset.name))).sort(),
    greenlets: kind("greenlet").map((box) => box.dataset.name),
    texts: kind("function")
      .map((box) => box.textContent)
      .filter((text) => text),
    files: Array.from(new Set(kind("function").map((box) => box.dataset.file))).sort(),
  });
  const pick = (value) => {
    $("greenlet").value = value;
    $("greenlet").dispatchEvent(new Event("change"));
  };
  const weigh = (value) =>
    document.querySelector("input[name=weight][value=" + value + "]").click();

  function drive() {
    out.scripts = document.scripts.length;
    out.options = Array.from($("greenlet").options).map((option) => [
      option.value,
      option.textContent,
    ]);
    out.empty = Array.from(document.querySelectorAll("#chart .empty")).map((p) => p.textContent);
    out.views = {};
    for (const [value] of out.options) {
      pick(value);
      out.views[value] = {};
      for (const weight of ["off_cpu", "snapshots", "on_cpu"]) {
        weigh(weight);
        out.views[value][weight] = view();
      }
    }
    pick("-1");
    out.slices = $("slices-body").rows.length;
    if (kind("function").length === 0) return;
    const chartWidth = $("chart").getBoundingClientRect().width;
    const widest = kind("function").sort((a, b) => b.dataset.value - a.dataset.value)[0];
    const name = widest.dataset.name;
    const before = widest.getBoundingClientRect().width;
    widest.dispatchEvent(new MouseEvent("click", { bubbles: true }));
    const focus = kind("function").find(
      (box) => box.dataset.name === name && !box.classList.contains("ancestor"),
    );
    out.zoom = {
      name,
      before,
      chart: chartWidth,
      after: focus.getBoundingClientRect().width,
      ancestors: document.querySelectorAll("#chart .ancestor").length,
      zoomed: $("chart").dataset.zoomed,
      details: $("details").textContent,
    };
    focus.dispatchEvent(new MouseEvent("mousemove", { bubbles: true, clientX: 50, clientY: 50 }));
    out.tooltip = $("tooltip").hidden ? "" : $("tooltip").textContent;
    $("reset").click();
    out.zoom.reset = kind("function")
      .find((box) => box.dataset.name === name)
      .getBoundingClientRect().width;
    $("search").value = QUERY;
    $("search").dispatchEvent(new Event("input"));
    out.search = {
      info: $("search-info").textContent,
      matches: Number($("search-info").dataset.matches),
      value: Number($("search-info").dataset.value),
      names: Array.from(
        new Set(
          boxes()
            .filter((box) => box.classList.contains("match"))
            .map((box) => box.dataset.name),
        ),
      ),
    };
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
  });
})();
