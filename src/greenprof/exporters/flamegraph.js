/* greenprof's flame graph viewer: no dependencies, no network.
 *
 * It reads the profile from the JSON in the element #greenprof-data, written by
 * greenprof/exporters/_html.py:
 *
 *   greenlets  [{label, on_cpu, off_cpu, snapshots, switches}], heaviest first
 *   frames     [[function, file, line]], each distinct frame once
 *   stacks     [[greenlet, [frame, ...] outermost first, on_cpu_ns, off_cpu_ns, snapshots]]
 *   slices     [[greenlet, start_ns, duration_ns, samples, [resumed frames], [yielded frames]]]
 *   span_ns    from the first moment recorded to the last
 *
 * (greenlet and frame are indices into those lists; times are nanoseconds,
 * start_ns from the first moment recorded.) The stacks of the chosen greenlet,
 * or of all of them under one root, merge into a tree; each node is drawn as
 * an absolutely positioned <div class="frame"> with its callers above it and
 * a width in proportion to its weight. Text from the profile only ever goes
 * through textContent and dataset, never innerHTML.
 */
(() => {
  "use strict";

  const ROW_PX = 18; // one stack level
  const MIN_FRAME_PX = 0.5; // narrower nodes, and what they call, are not drawn
  const LABEL_MIN_PX = 24; // narrower frames get no text
  // Files of the libraries every greenlet waits in.
  const LIBRARY = /[\\/](gevent|greenlet)[\\/]/;
  const WEIGHTS = {
    on_cpu: { column: 2, name: "on-CPU time", hue: 0, hues: 55 },
    off_cpu: { column: 3, name: "off-CPU time", hue: 190, hues: 45 },
    snapshots: { column: 4, name: "snapshots", hue: 80, hues: 70 },
  };

  const data = JSON.parse(document.getElementById("greenprof-data").textContent);
  const frames = data.frames.map(([fn, file, line]) => ({ fn, file, line }));
  const greenlets = data.greenlets;

  const byId = (id) => document.getElementById(id);
  const chart = byId("chart");
  const details = byId("details");
  const tooltip = byId("tooltip");
  const picker = byId("greenlet");
  const search = byId("search");
  const searchInfo = byId("search-info");

  /** What is shown: greenlet index (-1: all), weight, zoom as a key path. */
  const state = { greenlet: -1, weight: "on_cpu", zoom: [], query: "" };
  let tree = null; // root of the current view
  let drawn = []; // the nodes drawn, by their frame's data-index

  // -- formatting ------------------------------------------------------------

  function amount(value, weight = state.weight) {
    if (weight === "snapshots") return value + (value === 1 ? " snapshot" : " snapshots");
    return ms(value) + " ms";
  }

  function ms(ns) {
    const value = ns / 1e6;
    return value.toFixed(value >= 100 ? 1 : value >= 1 ? 2 : 3);
  }

  function share(value, total) {
    return total > 0 ? ((100 * value) / total).toFixed(1) + "%" : "-";
  }

  function basename(path) {
    return path.slice(Math.max(path.lastIndexOf("/"), path.lastIndexOf("\\")) + 1);
  }

  function where(frame) {
    return frame.file + ":" + frame.line;
  }

  /** FNV-1a: the same function gets the same colour in every page. */
  function hash(text) {
    let h = 0x811c9dc5;
    for (let i = 0; i < text.length; i++) {
      h ^= text.charCodeAt(i);
      h = Math.imul(h, 0x01000193);
    }
    return h >>> 0;
  }

  function fill(node) {
    if (node.kind === "root") return "hsl(220, 12%, 72%)";
    if (node.kind === "greenlet") return "hsl(220, 14%, 83%)";
    const h = hash(node.name);
    const palette = WEIGHTS[state.weight];
    const hue = palette.hue + (h % palette.hues);
    const saturation = 60 + ((h >>> 8) % 25);
    const lightness = (state.weight === "on_cpu" ? 55 : 62) + ((h >>> 16) % 14);
    return "hsl(" + hue + ", " + saturation + "%, " + lightness + "%)";
  }

  // -- the tree ----------------------------------------------------------------

  function makeNode(key, name, kind, frame, parent) {
    return {
      key,
      name,
      kind,
      frame,
      parent,
      depth: parent ? parent.depth + 1 : 0,
      value: 0, // weight of this node and everything it called
      self: 0, // weight with this node innermost
      x: 0, // offset from the left edge of the root, in weight units
      children: new Map(),
      sorted: [],
      match: false,
    };
  }

  function childOf(parent, key, name, kind, frame) {
    let child = parent.children.get(key);
    if (child === undefined) {
      child = makeNode(key, name, kind, frame, parent);
      parent.children.set(key, child);
    }
    return child;
  }

  function buildTree() {
    const column = WEIGHTS[state.weight].column;
    const all = state.greenlet < 0;
    const root = all
      ? makeNode("all", "all greenlets", "root", null, null)
      : makeNode("g" + state.greenlet, greenlets[state.greenlet].label, "greenlet", null, null);
    for (const row of data.stacks) {
      const value = row[column];
      if (!value || (!all && row[0] !== state.greenlet)) continue;
      let node = root;
      node.value += value;
      if (all) {
        node = childOf(node, "g" + row[0], greenlets[row[0]].label, "greenlet", null);
        node.value += value;
      }
      for (const index of row[1]) {
        node = childOf(node, index, frames[index].fn, "function", frames[index]);
        node.value += value;
      }
      node.self += value;
    }
    place(root, 0);
    return root;
  }

  /** Children left to right, heaviest first. */
  function place(node, x) {
    node.x = x;
    node.sorted = Array.from(node.children.values()).sort(
      (a, b) => b.value - a.value || (a.name < b.name ? -1 : a.name > b.name ? 1 : 0),
    );
    for (const child of node.sorted) {
      place(child, x);
      x += child.value;
    }
  }

  function zoomed() {
    let node = tree;
    for (const key of state.zoom) {
      const next = node.children.get(key);
      if (next === undefined) break;
      node = next;
    }
    return node;
  }

  function pathTo(node) {
    const keys = [];
    for (let n = node; n.parent; n = n.parent) keys.unshift(n.key);
    return keys;
  }

  // -- drawing -------------------------------------------------------------------

  function render() {
    const focus = zoomed();
    const width = chart.clientWidth || 1000;
    const boxes = document.createDocumentFragment();
    let deepest = 0;
    drawn = [];

    const draw = (node, left, part, extra) => {
      const box = document.createElement("div");
      box.className = "frame " + node.kind + extra + (node.match ? " match" : "");
      box.style.left = left * 100 + "%";
      box.style.width = part * 100 + "%";
      box.style.top = node.depth * ROW_PX + "px";
      box.style.setProperty("--fill", fill(node));
      box.dataset.index = drawn.length;
      box.dataset.kind = node.kind;
      box.dataset.name = node.name;
      box.dataset.value = node.value;
      if (node.frame) {
        box.dataset.file = node.frame.file;
        box.dataset.line = node.frame.line;
      }
      if (part * width >= LABEL_MIN_PX) box.textContent = node.name;
      drawn.push(node);
      boxes.appendChild(box);
      deepest = Math.max(deepest, node.depth);
    };

    // What the zoomed node was called from spans the whole width, dimmed.
    for (let node = focus.parent; node; node = node.parent) draw(node, 0, 1, " ancestor");
    const visit = (node) => {
      const part = node.value / focus.value;
      if (part * width < MIN_FRAME_PX) return;
      const extra = node === focus && focus.parent ? " focus" : "";
      draw(node, (node.x - focus.x) / focus.value, part, extra);
      for (const child of node.sorted) visit(child);
    };
    if (focus.value > 0) visit(focus);

    chart.classList.toggle("searching", state.query.trim() !== "");
    chart.dataset.zoomed = focus === tree ? "" : focus.name;
    if (tree.value > 0) {
      chart.style.height = (deepest + 1) * ROW_PX + "px";
      chart.replaceChildren(boxes);
    } else {
      const empty = document.createElement("p");
      empty.className = "empty";
      empty.textContent = "Nothing recorded here with this weight: try another greenlet or weight.";
      chart.style.height = "";
      chart.replaceChildren(empty);
    }
    showDetails(null);
  }

  function describe(node) {
    const lines = [];
    if (node.frame) lines.push(where(node.frame));
    const total = amount(node.value) + " (" + share(node.value, tree.value) + ")";
    lines.push(WEIGHTS[state.weight].name + ": " + total);
    if (node.kind === "function") {
      lines.push("self: " + amount(node.self) + " (" + share(node.self, tree.value) + ")");
    }
    return lines;
  }

  function showDetails(node) {
    const focus = zoomed();
    const shown = node || (focus === tree ? null : focus);
    if (shown === null) {
      const total = `${tree.name} \u2014 ${WEIGHTS[state.weight].name}: ${amount(tree.value)}`;
      details.textContent = total + ". Hover a frame for details, click it to zoom.";
      return;
    }
    const name = document.createElement("strong");
    name.textContent = shown.name;
    details.replaceChildren(
      node ? "" : "Zoomed on ",
      name,
      " \u2014 " + describe(shown).join(" \u00b7 "),
    );
  }

  function showTooltip(node, event) {
    const name = document.createElement("strong");
    name.textContent = node.name;
    const lines = describe(node).map((text) => {
      const line = document.createElement("div");
      line.textContent = text;
      return line;
    });
    tooltip.replaceChildren(name, ...lines);
    tooltip.hidden = false;
    tooltip.style.left = "0px"; // measured at full width, not squeezed by the right edge
    const pad = 14;
    const x = Math.min(event.clientX + pad, window.innerWidth - tooltip.offsetWidth - 4);
    const y =
      event.clientY + pad + tooltip.offsetHeight > window.innerHeight
        ? event.clientY - pad - tooltip.offsetHeight
        : event.clientY + pad;
    tooltip.style.left = Math.max(4, x) + "px";
    tooltip.style.top = Math.max(4, y) + "px";
  }

  // -- search ----------------------------------------------------------------------

  /** Mark the function nodes whose name or file holds the query; sum the
   *  outermost matches so a recursive match is not counted twice. */
  function applySearch() {
    const query = state.query.trim().toLowerCase();
    let count = 0;
    let matched = 0;
    const visit = (node, inside) => {
      node.match =
        query !== "" &&
        node.kind === "function" &&
        (node.frame.fn.toLowerCase().includes(query) ||
          node.frame.file.toLowerCase().includes(query));
      if (node.match) {
        count++;
        if (!inside) matched += node.value;
      }
      for (const child of node.sorted) visit(child, inside || node.match);
    };
    visit(tree, false);
    searchInfo.dataset.matches = count;
    searchInfo.dataset.value = matched;
    searchInfo.textContent =
      query === ""
        ? ""
        : count +
          (count === 1 ? " frame matches: " : " frames match: ") +
          amount(matched) +
          ", " +
          share(matched, tree.value) +
          " of " +
          amount(tree.value);
  }

  // -- the slices table ---------------------------------------------------------

  function stackCell(stack, none) {
    const cell = document.createElement("td");
    if (stack.length === 0) {
      cell.className = "none";
      cell.textContent = none;
      return cell;
    }
    // The leaf is nearly always gevent's hub; the program's own innermost
    // frame says more, so it comes first.
    const leaf = frames[stack[stack.length - 1]];
    const own = stack
      .map((index) => frames[index])
      .filter((frame) => !LIBRARY.test(frame.file))
      .pop();
    const summary = document.createElement("summary");
    (own && own !== leaf ? [own, leaf] : [leaf]).forEach((frame, position) => {
      const name = document.createElement("code");
      name.textContent = frame.fn;
      summary.append(
        position ? " \u203a " : "",
        name,
        " " + basename(frame.file) + ":" + frame.line,
      );
    });
    const list = document.createElement("ol");
    for (const index of stack) {
      const item = document.createElement("li");
      const fn = document.createElement("code");
      fn.textContent = frames[index].fn;
      item.append(fn, " " + where(frames[index]));
      list.appendChild(item);
    }
    const more = document.createElement("details");
    more.append(summary, list);
    cell.appendChild(more);
    return cell;
  }

  function buildSlices() {
    const body = byId("slices-body");
    if (data.slices.length === 0) {
      const row = body.insertRow();
      const cell = row.insertCell();
      cell.colSpan = 6;
      cell.className = "none";
      cell.textContent = "No run slices: only switches delimit them (thread mode records none).";
      return;
    }
    for (const [greenlet, start, duration, samples, resumed, yielded] of data.slices) {
      const row = body.insertRow();
      row.dataset.greenlet = greenlet;
      row.insertCell().textContent = greenlets[greenlet].label;
      for (const text of [ms(duration), ms(start), String(samples)]) {
        const cell = row.insertCell();
        cell.className = "number";
        cell.textContent = text;
      }
      row.appendChild(stackCell(resumed, "(its first run)"));
      row.appendChild(stackCell(yielded, "(finished, or the session ended)"));
      row.addEventListener("click", (event) => {
        if (event.target.closest("details")) return;
        picker.value = String(greenlet);
        pick(greenlet);
        chart.scrollIntoView({ block: "nearest" });
      });
    }
  }

  function markSlices() {
    for (const row of byId("slices-body").rows) {
      row.classList.toggle("current", row.dataset.greenlet === String(state.greenlet));
    }
  }

  // -- controls -------------------------------------------------------------------

  function update() {
    tree = buildTree();
    applySearch();
    render();
    markSlices();
  }

  function pick(greenlet) {
    state.greenlet = greenlet;
    state.zoom = [];
    update();
  }

  function zoomTo(node) {
    state.zoom = pathTo(node);
    render();
  }

  function fillPicker() {
    const add = (value, text) => {
      const option = document.createElement("option");
      option.value = String(value);
      option.textContent = text;
      picker.appendChild(option);
    };
    add(-1, "All greenlets (" + greenlets.length + ")");
    greenlets.forEach((g, index) => {
      add(
        index,
        g.label + " \u2014 on-CPU " + ms(g.on_cpu) + " ms, off-CPU " + ms(g.off_cpu) + " ms",
      );
    });
  }

  function summarise() {
    const sum = (key) => greenlets.reduce((total, g) => total + g[key], 0);
    byId("summary").textContent = [
      greenlets.length + (greenlets.length === 1 ? " greenlet" : " greenlets"),
      "on-CPU " + ms(sum("on_cpu")) + " ms",
      "off-CPU " + ms(sum("off_cpu")) + " ms",
      sum("snapshots") + " snapshots",
      sum("switches") + " switches",
      "over " + ms(data.span_ns) + " ms",
    ].join(" \u00b7 ");
  }

  function frameOf(event) {
    const box = event.target.closest(".frame");
    return box && chart.contains(box) ? drawn[Number(box.dataset.index)] : null;
  }

  chart.addEventListener("click", (event) => {
    const node = frameOf(event);
    if (node) zoomTo(node);
  });
  chart.addEventListener("mousemove", (event) => {
    const node = frameOf(event);
    if (node === null) {
      tooltip.hidden = true;
      return;
    }
    showDetails(node);
    showTooltip(node, event);
  });
  chart.addEventListener("mouseleave", () => {
    tooltip.hidden = true;
    showDetails(null);
  });
  picker.addEventListener("change", () => pick(Number(picker.value)));
  for (const radio of document.querySelectorAll("input[name=weight]")) {
    radio.addEventListener("change", () => {
      state.weight = radio.value;
      update(); // the zoom path stays where it still exists
    });
  }
  search.addEventListener("input", () => {
    state.query = search.value;
    applySearch();
    render();
  });
  byId("reset").addEventListener("click", () => zoomTo(tree));
  document.addEventListener("keydown", (event) => {
    if (event.key === "/" && document.activeElement !== search) {
      event.preventDefault();
      search.focus();
    } else if (event.key === "Escape") {
      // In the search box, Esc clears the text first (the input does that itself).
      if (document.activeElement === search && search.value !== "") return;
      zoomTo(tree);
    }
  });
  let resizing = 0;
  window.addEventListener("resize", () => {
    clearTimeout(resizing);
    resizing = setTimeout(render, 100);
  });

  fillPicker();
  summarise();
  buildSlices();
  if (greenlets.length === 1) {
    // "All greenlets" would only add a row above the one there is.
    state.greenlet = 0;
    picker.value = "0";
  }
  update();
})();
