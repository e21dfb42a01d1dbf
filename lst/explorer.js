// The LST explorer page (lst/explorer.py writes it, with this script and the run's data inline).
// State: the pair (s, t), the slider's position in the pair's recorded iterations, and the
// triangle (source s, blind spots a and b) with its chosen point. Every view is redrawn from the
// state by render() and renderTriangle(); nothing else changes the page.
"use strict";
const D = JSON.parse(document.getElementById("data").textContent);
const W = D.width, H = D.height, ROWS = D.rows.length, COLS = D.columns.length;
const SVG = "http://www.w3.org/2000/svg";
const state = {s: null, t: null, iters: [], a: null, b: null, point: 0};

function el(tag, attrs = {}, parent = null, text = null) {
  const svg = tag.startsWith("svg:");
  const e = svg ? document.createElementNS(SVG, tag.slice(4)) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  if (text !== null) e.textContent = text;
  if (parent) parent.appendChild(e);
  return e;
}
function fmt(v, d = 3) {  // v to d decimals; "n/a" where not recorded; never "-0.000"
  if (v === null || v === undefined) return "n/a";
  const rounded = +v.toFixed(d);
  return (rounded === 0 ? 0 : rounded).toFixed(d);
}
const hexRgb = h => [1, 3, 5].map(i => parseInt(h.slice(i, i + 2), 16));

function color(v) {  // the page's colour map (matplotlib's viridis, 11 stops), v in [0, 1]
  if (v === null) return "#ddd";
  const n = D.colormap.length - 1, x = Math.min(1, Math.max(0, v)) * n;
  const i = Math.min(Math.floor(x), n - 1), w = x - i;
  const c0 = hexRgb(D.colormap[i]), c1 = hexRgb(D.colormap[i + 1]);
  return `rgb(${c0.map((c, j) => Math.round(c + w * (c1[j] - c))).join(",")})`;
}

function thumb(parent, src, caption) {
  const fig = el("figure", {class: "thumb"}, parent);
  el("img", {src, alt: caption, width: 64, height: Math.round(64 * H / W)}, fig);
  el("figcaption", {}, fig, caption);
}

// ---- the pair grid -------------------------------------------------------------------------
function firstPair(s, t) { return D.runs.map(r => r.pairs[s][t]).find(p => p) || null; }

function buildGrid(root) {
  const sec = el("section", {id: "pairs"}, root);
  el("h2", {}, sec, "Pairs: a blind spot of every source (rows) towards every target " +
     `(columns: ${D.column_images ? "target classes" : "rounds, each with its own target"})`);
  el("p", {class: "muted"}, sec, `Thumbnails: ${D.runs[0].label}'s blind spots and their ` +
     "source-class confidence. Click one to walk its path." + (D.note ? ` Shown: ${D.note}.` : ""));
  const table = el("table", {id: "grid"}, sec);
  const head = el("tr", {}, table);
  el("th", {}, head, "source \\ target");
  D.columns.forEach((name, c) => {
    const th = el("th", {}, head, D.column_images ? null : name);
    if (D.column_images) thumb(th, D.images[D.column_images[c]], name);
  });
  for (let s = 0; s < ROWS; s++) {
    const row = el("tr", {}, table);
    thumb(el("th", {}, row), D.images[D.rows[s]], D.names[D.rows[s]]);
    for (let t = 0; t < COLS; t++) {
      const cell = el("td", {"data-s": s, "data-t": t}, row);
      const pair = firstPair(s, t);
      if (!pair) { cell.className = "off"; continue; }
      thumb(cell, pair.spot, fmt(pair.final, 2));
      cell.className = "pair";
      cell.addEventListener("click", () => selectPair(s, t));
    }
  }
}

// ---- one pair: the path, the straight line, the confidence -----------------------------------
function blendBox(parent, id, layers) {
  const box = el("div", {class: "blend", id, style: `width:${W}px;height:${H}px`}, parent);
  for (let i = 0; i < layers; i++) el("img", {class: "layer", width: W, height: H, alt: ""}, box);
  return box;
}

function buildWalk(root) {
  const sec = el("section", {id: "walk"}, root);
  el("h2", {id: "pair-title"}, sec);
  const controls = el("div", {class: "controls"}, sec);
  el("label", {for: "step"}, controls, "recorded iteration ");
  el("input", {type: "range", id: "step", min: 0, max: 0, value: 0, step: 1}, controls)
    .addEventListener("input", render);
  el("span", {id: "step-label"}, controls);
  const ends = el("div", {class: "ends"}, sec);
  for (const [id, name] of [["source-img", "source"], ["target-img", "target"]]) {
    const fig = el("figure", {}, ends);
    el("img", {id, width: W, height: H, alt: name}, fig);
    el("figcaption", {id: `${id}-caption`}, fig);
  }
  const columns = el("div", {class: "runs"}, sec);
  D.runs.forEach((run, r) => {
    const col = el("div", {class: "run", id: `run-${r}`}, columns);
    el("h3", {}, col, run.label);
    el("p", {class: "muted"}, col, run.file);
    const panels = el("div", {class: "panels"}, col);
    const path = el("div", {class: "panel"}, panels), line = el("div", {class: "panel"}, panels);
    el("h4", {}, path, "the LST path");
    el("div", {class: "frame", id: `frame-${r}`, style: `width:${W}px;height:${H}px`}, path);
    el("p", {class: "readout", id: `read-${r}`}, path);
    el("svg:svg", {id: `chart-${r}`, class: "chart", width: 380, height: 180}, path);
    el("h4", {}, line, "the straight line, at the same progress");
    blendBox(line, `line-${r}`, 2);
    el("p", {class: "readout", id: `lineread-${r}`}, line);
    el("svg:svg", {id: `fchart-${r}`, class: "chart", width: 380, height: 180}, line);
  });
}

function selectPair(s, t) {
  Object.assign(state, {s, t});
  const iters = new Set();
  for (const run of D.runs) {
    const pair = run.pairs[s][t];
    if (pair) pair.iters.forEach(i => iters.add(i));
  }
  state.iters = [...iters].sort((x, y) => x - y);
  const slider = document.getElementById("step");
  slider.max = state.iters.length - 1;
  slider.value = 0;
  const target = firstPair(s, t).target;
  document.getElementById("pair-title").textContent =
    `From '${D.names[s]}' towards '${D.names[target]}'` +
    (D.column_images ? "" : ` (${D.columns[t]})`);
  for (const [id, k] of [["source-img", s], ["target-img", target]]) {
    document.getElementById(id).src = D.images[k];
    document.getElementById(`${id}-caption`).textContent = `${id.split("-")[0]}: ${D.names[k]}`;
  }
  D.runs.forEach((run, r) => {
    const pair = run.pairs[s][t], frame = document.getElementById(`frame-${r}`);
    frame.style.backgroundImage = pair ? `url("${pair.strip}")` : "none";
    frame.style.backgroundSize = pair ? `${W * pair.iters.length}px ${H}px` : "";
    const [under, over] = document.getElementById(`line-${r}`).children;
    under.src = D.images[s];
    over.src = D.images[target];
  });
  for (const cell of document.querySelectorAll("#grid td.pair")) {
    cell.classList.toggle("chosen", +cell.dataset.s === s && +cell.dataset.t === t);
  }
  render();
  selectTriangle(s, t);
}

function straightConf(values, f) {  // linear between the 21 recorded points at k/20
  const n = values.length - 1, x = Math.min(1, Math.max(0, f)) * n;
  const i = Math.min(Math.floor(x), n - 1), w = x - i;
  if (values[i] === null || values[i + 1] === null) return null;
  return values[i] * (1 - w) + values[i + 1] * w;
}

function render() {
  const step = +document.getElementById("step").value, it = state.iters[step];
  document.getElementById("step-label").textContent =
    `iteration ${it} (${step + 1} of ${state.iters.length} recorded)`;
  D.runs.forEach((run, r) => renderRun(run, r, it));
}

function renderRun(run, r, it) {
  const pair = run.pairs[state.s][state.t];
  const frame = document.getElementById(`frame-${r}`), read = document.getElementById(`read-${r}`);
  if (!pair) {
    read.textContent = "not traversed: this model misclassifies the source";
    for (const id of [`chart-${r}`, `fchart-${r}`]) document.getElementById(id).replaceChildren();
    document.getElementById(`lineread-${r}`).textContent = "";
    return;
  }
  let k = 0;  // the last iterate of this walk at or before iteration `it`
  pair.iters.forEach((i, j) => { if (i <= it) k = j; });
  const iter = pair.iters[k], last = pair.iters.length - 1;
  frame.style.backgroundPosition = `${-k * W}px 0px`;
  const conf = pair.confs ? pair.confs[k] : [null, null];
  const left = pair.distance ? pair.distance[k] : null;
  const stopped = it > iter && k === last ? ` (its last recorded iterate: the walk stopped)` : "";
  const ends = run.recorded ? "" : " (this run recorded no iterates, --get_images: its " +
    "two ends only)";
  read.textContent = `iteration ${iter}${stopped}: p(source) = ${fmt(conf[0])}, ` +
    `p(target) = ${fmt(conf[1])}, distance left ${fmt(left)}${ends}`;
  const xs = pair.iters;
  const p0 = run.init_confs[state.s];
  chart(document.getElementById(`chart-${r}`), Math.max(1, xs[last]), "iteration", [
    {xs, ys: pair.confs ? pair.confs.map(c => c[0]) : [], color: "#1f77b4", name: "p(source)"},
    {xs, ys: pair.confs ? pair.confs.map(c => c[1]) : [], color: "#ff7f0e", name: "p(target)"},
    {xs, ys: pair.distance || [], color: "#777", name: "distance left", dash: "4 3"},
  ], [{x: iter, y: conf[0], color: "#1f77b4", cls: "marker-source"},
      {x: iter, y: conf[1], color: "#ff7f0e", cls: "marker-target"},
      {x: iter, y: left, color: "#777", cls: "marker-distance"}],
  run.pthresh === null ? null : p0 - run.pthresh);
  const f = left === null ? null : 1 - left;
  const over = document.getElementById(`line-${r}`).children[1];
  over.style.opacity = f === null ? 0 : Math.min(1, Math.max(0, f));
  const straight = pair.straight || [];
  const onLine = f === null || !pair.straight ? null : straightConf(straight, f);
  document.getElementById(`lineread-${r}`).textContent = f === null ? "no distance recorded" :
    `x_s + f (x_t - x_s), f = ${fmt(f)}: p(source) = ${fmt(onLine)} on the line ` +
    (pair.straight ? "(interpolated between the 21 points the run evaluated along it)" :
     "(not evaluated: no straight_confs in this run's _all_confs.pkl)") +
    ` against ${fmt(conf[0])} on the path`;
  const fs = straight.map((_, i) => i / (straight.length - 1));
  chart(document.getElementById(`fchart-${r}`), 1, "progress f = 1 - distance left", [
    {xs: fs, ys: straight, color: "#d62728", name: "straight line"},
    {xs: (pair.distance || []).map(d => 1 - d), ys: pair.confs ? pair.confs.map(c => c[0]) : [],
     color: "#1f77b4", name: "LST path"},
  ], f === null ? [] : [{x: f, y: onLine, color: "#d62728", cls: "marker-line"},
                        {x: f, y: conf[0], color: "#1f77b4", cls: "marker-path"}], null);
}

// A line chart in data coordinates: x in [0, xmax], y in [0, 1]. The svg's data-* attributes
// hold the mapping (left, top, width, height, xmax), so a marker's place can be read back.
function chart(svg, xmax, xlabel, lines, marks, threshold) {
  svg.replaceChildren();
  const L = 36, T = 8, PW = 330, PH = 120;
  Object.assign(svg.dataset, {left: L, top: T, width: PW, height: PH, xmax});
  const X = x => L + (x / xmax) * PW, Y = y => T + (1 - y) * PH;
  el("svg:rect", {x: L, y: T, width: PW, height: PH, class: "plot"}, svg);
  for (const y of [0, 0.5, 1]) el("svg:text", {x: L - 4, y: Y(y) + 4, class: "tick y"}, svg, y);
  for (const x of [0, xmax]) {
    el("svg:text", {x: X(x), y: T + PH + 14, class: "tick x"}, svg, +x.toFixed(2));
  }
  el("svg:text", {x: L + PW / 2, y: T + PH + 28, class: "axis"}, svg, xlabel);
  if (threshold !== null) {
    el("svg:line", {x1: L, x2: L + PW, y1: Y(threshold), y2: Y(threshold), class: "threshold"},
       svg);
  }
  lines.forEach((line, i) => {
    const points = line.xs.map((x, j) => [x, line.ys[j]]).filter(([, y]) => y !== null);
    el("svg:polyline", {points: points.map(([x, y]) => `${X(x)},${Y(y)}`).join(" "),
                        stroke: line.color, "stroke-dasharray": line.dash || "none",
                        class: "series"}, svg);
    el("svg:text", {x: L + 6 + 110 * i, y: T + PH + 44, style: `fill:${line.color}`}, svg,
       line.name);
  });
  for (const m of marks) {
    if (m.y === null) continue;
    el("svg:circle", {cx: X(m.x), cy: Y(m.y), r: 4.5, fill: m.color, class: `marker ${m.cls}`},
       svg);
  }
}

// ---- the triangles between a source and two of its blind spots -------------------------------
function buildTriangles(root) {
  const sec = el("section", {id: "triangles"}, root);
  el("h2", {}, sec, "Triangles: the source and two of its blind spots");
  el("p", {class: "muted"}, sec, "Each dot is one of the 66 points the run evaluated " +
     "(source-class confidence, colour); click one to see the image there, blended from the " +
     "source and the two blind spots.");
  const controls = el("div", {class: "controls"}, sec);
  for (const id of ["tri-a", "tri-b"]) {
    el("label", {for: id}, controls, id === "tri-a" ? "blind spots towards " : " and ");
    el("select", {id}, controls).addEventListener("change", () => {
      state[id.slice(-1)] = +document.getElementById(id).value;
      state.point = 0;
      renderTriangle();
    });
  }
  const legend = el("span", {class: "legend-bar"}, controls, " confidence 0 ");
  el("span", {class: "gradient", style: `background: linear-gradient(to right, ${
    D.colormap.join(",")})`}, legend);
  legend.appendChild(document.createTextNode(" 1"));
  const columns = el("div", {class: "runs"}, sec);
  D.runs.forEach((run, r) => {
    const col = el("div", {class: "run"}, columns);
    el("h3", {}, col, run.label);
    el("svg:svg", {id: `tri-${r}`, class: "heat", width: 300, height: 240}, col);
    blendBox(col, `triblend-${r}`, 3);
    el("p", {class: "readout", id: `triread-${r}`}, col);
  });
}

function columnName(s, c) {  // a column of row s: its target class, or its round and target
  const pair = firstPair(s, c);
  return D.column_images ? D.columns[c] : `${D.columns[c]}: ${D.names[pair.target]}`;
}

function selectTriangle(s, t) {
  const others = [...Array(COLS).keys()].filter(c => firstPair(s, c));
  state.a = t;
  state.b = others.find(c => c !== t);
  state.point = 0;
  for (const id of ["tri-a", "tri-b"]) {
    const select = document.getElementById(id);
    select.replaceChildren();
    for (const c of others) el("option", {value: c}, select, columnName(s, c));
    select.value = state[id.slice(-1)];
  }
  renderTriangle();
}

function renderTriangle() {
  const {s, a, b} = state;
  const lo = Math.min(a, b), hi = Math.max(a, b);
  const corners = {source: [50, 200], [lo]: [250, 200], [hi]: [150, 20]};
  D.runs.forEach((run, r) => {
    const svg = document.getElementById(`tri-${r}`), read = document.getElementById(`triread-${r}`);
    svg.replaceChildren();
    const m = run.hull_pairs.findIndex(([x, y]) => x === lo && y === hi);
    const both = run.pairs[s][lo] && run.pairs[s][hi];
    const confs = a === b || b === undefined || m < 0 || !both ? null : run.triangles[s][m];
    const layers = document.getElementById(`triblend-${r}`).children;
    if (!confs) {
      for (const layer of layers) layer.removeAttribute("src");
      read.textContent = a === b || b === undefined ? "pick two different blind spots" :
        "not evaluated: a blind spot is missing, or the run has no _all_confs.pkl here";
      return;
    }
    for (const [name, [x, y]] of Object.entries(corners)) {
      el("svg:text", {x, y: y + (y > 100 ? 32 : -6), class: "corner"}, svg,
         name === "source" ? "source" : `to ${columnName(s, +name)}`);
    }
    D.triangle.forEach(([wa, wb], p) => {  // weights of hull_pairs[m] = (lo, hi)
      const w0 = 1 - wa - wb;
      const x = w0 * corners.source[0] + wa * corners[lo][0] + wb * corners[hi][0];
      const y = w0 * corners.source[1] + wa * corners[lo][1] + wb * corners[hi][1];
      const dot = el("svg:circle", {cx: x, cy: y + 8, r: 8, fill: color(confs[p]),
                                    class: p === state.point ? "point chosen" : "point",
                                    "data-p": p}, svg);
      el("svg:title", {}, dot, `${fmt(confs[p])}`);
      dot.addEventListener("click", () => { state.point = p; renderTriangle(); });
    });
    const [wa, wb] = D.triangle[state.point], w0 = 1 - wa - wb;
    const [base, first, second] = layers;  // source, then spot lo at wa/(1-wb), spot hi at wb
    base.src = D.images[s];
    first.src = run.pairs[s][lo].spot;
    second.src = run.pairs[s][hi].spot;
    first.style.opacity = wb < 1 ? wa / (1 - wb) : 0;
    second.style.opacity = wb;
    read.textContent = `weights: source ${fmt(w0, 1)}, to ${columnName(s, lo)} ${fmt(wa, 1)}, ` +
      `to ${columnName(s, hi)} ${fmt(wb, 1)}: p(source) = ${fmt(confs[state.point])} (evaluated)`;
  });
}

const app = document.getElementById("app");
buildGrid(app);
buildWalk(app);
buildTriangles(app);
const start = document.querySelector("#grid td.pair");
if (start) selectPair(+start.dataset.s, +start.dataset.t);
