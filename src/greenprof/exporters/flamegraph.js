/* greenprof's flame graph viewer: no dependencies, no network.
 *
 * It reads the profile from the JSON in the element #greenprof-data, written by
 * greenprof/exporters/_html.py:
 *
 *   frames    [[function, file, line]], each distinct frame once (file "" and
 *             line 0: a pseudo-frame such as <greenlet start>, which has no place)
 *   views     [{key, entries, stacks}]: first "greenlet" (one entry per
 *             greenlet), then one per tag key (one entry per value, every
 *             session with it merged), entries heaviest first:
 *     entries [{label, on_cpu, off_cpu, snapshots, switches, sessions?, tags?}]
 *             (sessions: how many a tag value merges; tags: those of a
 *             greenlet's session, when it was in one only)
 *     stacks  [[entry, [frame, ...] outermost first, on_cpu_ns, off_cpu_ns, snapshots]]
 *   view      the key of the view to open on
 *   slices    [[greenlet entry, start_ns, duration_ns, samples, [resumed frames],
 *              [yielded frames], tags of the session it ran in ("path=/x status=200")]]
 *   sessions  how many sessions the profile holds
 *   span_ns   from the first moment recorded to the last
 *   own_dir   greenprof's own package folder: its frames are library code
 *
 * (entry and frame are indices into those lists; times are nanoseconds,
 * start_ns from the first moment recorded.) The stacks of the chosen entry,
 * or of all of them (merged, or side by side under one root), merge into a
 * tree; each node is drawn as an absolutely positioned <div class="frame">
 * with its callers above it and a width in proportion to its weight. Text
 * from the profile only ever goes through textContent and dataset, never
 * innerHTML.
 */
(() => {
  "use strict";

  const ROW_PX = 18; // one stack level
  const MIN_FRAME_PX = 0.5; // narrower nodes, and what they call, are not drawn
  const LABEL_MIN_PX = 24; // narrower frames get no text
  // The "Show" picker lists this many entries at most: a file of thousands
  // of requests would make a picker nobody can scroll. The rest are in "All".
  const PICKER_ENTRIES = 500;
  const HIDDEN_NAMES = 12; // a library node's tooltip names this many of its functions
  const WEIGHTS = {
    on_cpu: { column: 2, name: "on-CPU time", hue: 0, hues: 55 },
    off_cpu: { column: 3, name: "off-CPU time", hue: 190, hues: 45 },
    snapshots: { column: 4, name: "snapshots", hue: 80, hues: 70 },
  };

  // Library code: what the program runs on rather than what it is. Decided on
  // the file's path alone, so that a page made on another machine than the
  // one profiled still knows it. Each pattern's group names the library.
  const LIBRARY_PATHS = [
    /[\\/](?:site|dist)-packages[\\/]([^\\/]+)/, // anything installed
    /[\\/](gevent|greenlet|importlib)[\\/]/, // also from a source checkout
    /[\\/](runpy|threading|contextlib|socketserver)\.py$/, // the standard library's plumbing
    /^<frozen ([A-Za-z_]+)/, // <frozen runpy>, <frozen importlib._bootstrap>
  ];

  const data = JSON.parse(document.getElementById("greenprof-data").textContent);

  /** The library a file belongs to ("gevent", "requests"), or "" for the program's own. */
  function libraryOf(file) {
    if (file === "") return ""; // a pseudo-frame
    if (data.own_dir && file.startsWith(data.own_dir)) return "greenprof";
    for (const pattern of LIBRARY_PATHS) {
      const found = pattern.exec(file);
      if (found) return found[1].replace(/\.py$/, "");
    }
    return "";
  }

  const frames = data.frames.map(([fn, file, line]) => ({
    fn,
    file,
    line,
    library: libraryOf(file),
  }));
  const views = data.views;
  const GREENLETS = 0; // views[0] has one entry per greenlet; the slices point into it

  const byId = (id) => document.getElementById(id);
  const chart = byId("chart");
  const details = byId("details");
  const tooltip = byId("tooltip");
  const viewPicker = byId("view");
  const showPicker = byId("show");
  const libraryBox = byId("hide-library");
  const search = byId("search");
  const searchInfo = byId("search-info");

  /** What is shown: a view (index into views), which of its entries ("merged",
   *  "side", or an entry index), weight, library frames folded or not, zoom
   *  as a key path, search text. */
  const state = {
    view: 0,
    show: "merged",
    weight: "on_cpu",
    hideLibrary: true,
    zoom: [],
    query: "",
  };
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

  function plural(count, one, many) {
    return count + " " + (count === 1 ? one : many);
  }

  function basename(path) {
    return path.slice(Math.max(path.lastIndexOf("/"), path.lastIndexOf("\\")) + 1);
  }

  /** "file:line", or "" for a pseudo-frame: it has no place to show. */
  function where(frame, short = false) {
    if (frame.file === "") return "";
    return (short ? basename(frame.file) : frame.file) + ":" + frame.line;
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
    if (node.kind === "entry") return "hsl(220, 14%, 83%)";
    if (node.kind === "library") return "hsl(220, 8%, 89%)";
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
      kind, // root, entry, function or library (a run of library frames)
      frame,
      parent,
      depth: parent ? parent.depth + 1 : 0,
      value: 0, // weight of this node and everything it called
      self: 0, // weight with this node innermost
      x: 0, // offset from the left edge of the root, in weight units
      children: new Map(),
      sorted: [],
      hidden: kind === "library" ? new Set() : null, // frame indices folded into it
      entry: null, // the view's entry, for an entry node
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

  /** The rows of the current view that go into the tree. */
  function* rows() {
    const column = WEIGHTS[state.weight].column;
    const single = typeof state.show === "number";
    for (const row of views[state.view].stacks) {
      if (row[column] && (!single || row[0] === state.show)) yield row;
    }
  }

  /** Add one stack under `node`; return its innermost node.
   *
   * With library frames hidden, a run of two or more consecutive library
   * frames becomes one node, keyed by the run's first frame so that the
   * stacks entering the library at the same place still share it. The
   * innermost frame of a stack stays visible even in a library: it is where
   * the time was spent, or waited (gevent's sleep, a socket's recv), and it
   * keeps the self time on a real function. A lone library frame is drawn
   * as itself: a node standing for one frame would only hide its name. */
  function addStack(node, stack, value) {
    let at = 0;
    while (at < stack.length) {
      const index = stack[at];
      if (state.hideLibrary && frames[index].library) {
        let end = at;
        while (end < stack.length && frames[stack[end]].library) end++;
        if (end === stack.length) end--; // the innermost frame stays
        if (end - at >= 2) {
          node = childOf(node, "lib:" + index, "", "library", null);
          for (let k = at; k < end; k++) node.hidden.add(stack[k]);
          node.value += value;
          at = end;
          continue;
        }
      }
      node = childOf(node, index, frames[index].fn, "function", frames[index]);
      node.value += value;
      at++;
    }
    return node;
  }

  /** "3 library frames (gevent, greenprof)": once every stack is in, since a
   *  node folds the runs of every stack that went through it. */
  function nameLibraryNodes(node) {
    if (node.kind === "library") {
      const libraries = new Set(Array.from(node.hidden, (index) => frames[index].library));
      node.name =
        plural(node.hidden.size, "library frame", "library frames") +
        " (" +
        Array.from(libraries).join(", ") +
        ")";
    }
    for (const child of node.children.values()) nameLibraryNodes(child);
  }

  function allName(view) {
    const count = view.entries.length;
    const noun =
      view.key === views[GREENLETS].key
        ? plural(count, "greenlet", "greenlets")
        : plural(count, view.key + " value", view.key + " values");
    return "all " + noun + (state.show === "merged" ? ", merged" : "");
  }

  function buildTree() {
    const view = views[state.view];
    const single = typeof state.show === "number";
    const side = state.show === "side";
    const column = WEIGHTS[state.weight].column;
    const root = single
      ? makeNode("e" + state.show, view.entries[state.show].label, "entry", null, null)
      : makeNode("all", allName(view), "root", null, null);
    if (single) root.entry = view.entries[state.show];
    for (const row of rows()) {
      const value = row[column];
      let node = root;
      node.value += value;
      // Side by side, each entry is a node of its own under the root; merged,
      // equal stacks of every entry add up, rooted at the program's frames.
      if (side) {
        node = childOf(node, "e" + row[0], view.entries[row[0]].label, "entry", null);
        node.entry = view.entries[row[0]];
        node.value += value;
      }
      addStack(node, row[1], value).self += value;
    }
    nameLibraryNodes(root);
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
      box.dataset.depth = node.depth;
      if (node.frame) {
        box.dataset.file = node.frame.file;
        box.dataset.line = node.frame.line;
      }
      if (node.hidden) box.dataset.frames = node.hidden.size;
      if (part * width >= LABEL_MIN_PX) box.textContent = node.name;
      // Without text, no padding either: it would draw a sliver 7 px wide.
      else box.classList.add("bare");
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
      empty.textContent = "Nothing recorded here with this weight: try another entry or weight.";
      chart.style.height = "";
      chart.replaceChildren(empty);
    }
    showDetails(null);
  }

  /** The functions a library node folds, outermost first, a dozen at most. */
  function hiddenNames(node) {
    const names = Array.from(node.hidden, (index) => frames[index].fn);
    const more = names.length - HIDDEN_NAMES;
    const shown = names.slice(0, HIDDEN_NAMES).join(" \u203a ");
    return "folds " + shown + (more > 0 ? " \u203a \u2026 " + more + " more" : "");
  }

  function describe(node) {
    const lines = [];
    if (node.frame && node.frame.file !== "") lines.push(where(node.frame));
    if (node.kind === "library") lines.push(hiddenNames(node));
    if (node.entry && node.entry.tags) lines.push(node.entry.tags);
    if (node.entry && node.entry.sessions) {
      lines.push(plural(node.entry.sessions, "session", "sessions"));
    }
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

  /** Mark the nodes whose function or file holds the query (a library node
   *  when one of the frames it folds does). What matches is summed over the
   *  stacks themselves, each stack once: exact whether library frames are
   *  folded or not, and a recursive match is not counted twice. */
  function applySearch() {
    const query = state.query.trim().toLowerCase();
    const hit = (index) =>
      frames[index].fn.toLowerCase().includes(query) ||
      frames[index].file.toLowerCase().includes(query);
    let count = 0;
    const visit = (node) => {
      node.match =
        query !== "" &&
        (node.kind === "function"
          ? hit(node.key) // a function node's key is its frame's index
          : node.kind === "library" && Array.from(node.hidden).some(hit));
      if (node.match) count++;
      for (const child of node.sorted) visit(child);
    };
    visit(tree);
    let matched = 0;
    if (query !== "") {
      const column = WEIGHTS[state.weight].column;
      for (const row of rows()) if (row[1].some(hit)) matched += row[column];
    }
    searchInfo.dataset.matches = count;
    searchInfo.dataset.value = matched;
    searchInfo.textContent =
      query === ""
        ? ""
        : (count === 1 ? "1 frame matches: " : count + " frames match: ") +
          amount(matched) +
          ", " +
          share(matched, tree.value) +
          " of " +
          amount(tree.value);
  }

  // -- the slices table ---------------------------------------------------------

  function frameText(frame, short) {
    const place = where(frame, short);
    return place ? " " + place : "";
  }

  function stackCell(stack, none) {
    const cell = document.createElement("td");
    cell.className = "stack";
    if (stack.length === 0) {
      cell.classList.add("none");
      cell.textContent = none;
      return cell;
    }
    // The leaf is nearly always gevent's hub; the program's own innermost
    // frame says more, so it comes first.
    const leaf = frames[stack[stack.length - 1]];
    const own = stack
      .map((index) => frames[index])
      .filter((frame) => !frame.library)
      .pop();
    const summary = document.createElement("summary");
    (own && own !== leaf ? [own, leaf] : [leaf]).forEach((frame, position) => {
      const name = document.createElement("code");
      name.textContent = frame.fn;
      summary.append(position ? " \u203a " : "", name, frameText(frame, true));
    });
    const list = document.createElement("ol");
    for (const index of stack) {
      const item = document.createElement("li");
      const fn = document.createElement("code");
      fn.textContent = frames[index].fn;
      item.append(fn, frameText(frames[index], false));
      list.appendChild(item);
    }
    const more = document.createElement("details");
    more.append(summary, list);
    cell.appendChild(more);
    return cell;
  }

  function buildSlices() {
    const body = byId("slices-body");
    const greenlets = views[GREENLETS].entries;
    if (data.slices.length === 0) {
      const row = body.insertRow();
      const cell = row.insertCell();
      cell.colSpan = 6;
      cell.className = "none";
      cell.textContent = "No run slices: only switches delimit them (thread mode records none).";
      return;
    }
    // On a narrow screen each row is a card (see flamegraph.css): every cell
    // carries its column's name.
    const headers = Array.from(byId("slices").querySelectorAll("thead th"), (th) => th.textContent);
    for (const [greenlet, start, duration, samples, resumed, yielded, tags] of data.slices) {
      const row = body.insertRow();
      row.dataset.greenlet = greenlet;
      const label = row.insertCell();
      label.className = "label";
      label.textContent = greenlets[greenlet].label;
      if (tags) {
        // What the request was: which one blocked the loop is the question.
        const line = document.createElement("div");
        line.className = "tags";
        line.textContent = tags;
        label.appendChild(line);
      }
      for (const text of [ms(duration), ms(start), String(samples)]) {
        const cell = row.insertCell();
        cell.className = "number";
        cell.textContent = text;
      }
      row.appendChild(stackCell(resumed, "(its first run)"));
      row.appendChild(stackCell(yielded, "(finished, or the session ended)"));
      Array.from(row.cells).forEach((cell, column) => {
        if (column > 0) cell.dataset.label = headers[column];
      });
      row.addEventListener("click", (event) => {
        if (event.target.closest("details")) return;
        if (state.view !== GREENLETS) {
          state.view = GREENLETS;
          viewPicker.value = String(GREENLETS);
          fillShow();
        }
        pick(greenlet);
        chart.scrollIntoView({ block: "nearest" });
      });
    }
  }

  function markSlices() {
    const current = state.view === GREENLETS ? String(state.show) : "";
    for (const row of byId("slices-body").rows) {
      row.classList.toggle("current", row.dataset.greenlet === current);
    }
  }

  // -- controls -------------------------------------------------------------------

  function update() {
    tree = buildTree();
    applySearch();
    render();
    markSlices();
  }

  function entryText(entry) {
    const parts = [entry.label];
    if (entry.tags) parts.push(entry.tags);
    let text = parts.join(" ") + " \u2014 on-CPU " + ms(entry.on_cpu) + " ms";
    text += ", off-CPU " + ms(entry.off_cpu) + " ms";
    if (entry.sessions) text += ", " + plural(entry.sessions, "session", "sessions");
    return text;
  }

  function option(value, text) {
    const item = document.createElement("option");
    item.value = String(value);
    item.textContent = text;
    return item;
  }

  function fillViews() {
    views.forEach((view, index) => {
      const count = view.entries.length;
      const text =
        index === GREENLETS
          ? "greenlet (" + count + ")"
          : view.key + " (" + plural(count, "value", "values") + ")";
      viewPicker.appendChild(option(index, text));
    });
  }

  function fillShow() {
    const view = views[state.view];
    const entries = view.entries;
    showPicker.replaceChildren(
      option("merged", "All, merged"),
      option("side", "All, side by side"),
      ...entries.slice(0, PICKER_ENTRIES).map((entry, index) => option(index, entryText(entry))),
    );
    if (entries.length > PICKER_ENTRIES) {
      const rest = entries.length - PICKER_ENTRIES;
      const text = `(the heaviest ${PICKER_ENTRIES} are listed; ${rest} more are in All)`;
      const note = option("", text);
      note.disabled = true;
      showPicker.appendChild(note);
    }
  }

  /** An entry past the picker's cap gets an option when something asks for
   *  it (a row of the slices table), so that the picker says what is shown. */
  function ensureOption(index) {
    if (showPicker.querySelector('option[value="' + index + '"]')) return;
    const note = showPicker.querySelector("option[disabled]");
    showPicker.insertBefore(option(index, entryText(views[state.view].entries[index])), note);
  }

  function pickView(index) {
    state.view = index;
    const count = views[index].entries.length;
    // One entry: "All" would only add a row above it. Else the same "All" as before.
    state.show = count === 1 ? 0 : state.show === "side" ? "side" : "merged";
    fillShow();
    showPicker.value = String(state.show);
    state.zoom = [];
    update();
  }

  function pick(show) {
    if (typeof show === "number") ensureOption(show);
    showPicker.value = String(show);
    state.show = show;
    state.zoom = [];
    update();
  }

  function zoomTo(node) {
    state.zoom = pathTo(node);
    render();
  }

  function summarise() {
    const greenlets = views[GREENLETS].entries;
    const sum = (key) => greenlets.reduce((total, g) => total + g[key], 0);
    byId("summary").textContent = [
      ...(data.sessions ? [plural(data.sessions, "session", "sessions")] : []),
      plural(greenlets.length, "greenlet", "greenlets"),
      "on-CPU " + ms(sum("on_cpu")) + " ms",
      "off-CPU " + ms(sum("off_cpu")) + " ms",
      plural(sum("snapshots"), "snapshot", "snapshots"),
      plural(sum("switches"), "switch", "switches"),
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
  viewPicker.addEventListener("change", () => pickView(Number(viewPicker.value)));
  showPicker.addEventListener("change", () => {
    const value = showPicker.value;
    pick(value === "merged" || value === "side" ? value : Number(value));
  });
  libraryBox.addEventListener("change", () => {
    state.hideLibrary = libraryBox.checked;
    update(); // the zoom path stays as far as it still exists
  });
  for (const radio of document.querySelectorAll("input[name=weight]")) {
    radio.addEventListener("change", () => {
      state.weight = radio.value;
      update();
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

  fillViews();
  summarise();
  buildSlices();
  // Browsers may restore form controls on a reload: the page opens as
  // documented whatever they kept.
  libraryBox.checked = state.hideLibrary;
  document.querySelector("input[name=weight][value=" + state.weight + "]").checked = true;
  const initial = Math.max(
    0,
    views.findIndex((view) => view.key === data.view),
  );
  viewPicker.value = String(initial);
  pickView(initial);
})();
