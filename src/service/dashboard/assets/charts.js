// Charts drawn as SVG: line charts of a job's training curve and a bar chart of the
// channels each layer kept. Each has a title and a text description for screen
// readers.

import { h, s, count } from "./dom.js";

const W = 480;
const H = 220;
const PAD = { left: 52, right: 12, top: 10, bottom: 28 };

function ticks(min, max, n = 4) {
  if (min === max) return [min];
  const out = [];
  for (let i = 0; i <= n; i += 1) out.push(min + ((max - min) * i) / n);
  return out;
}

function label(v) {
  const a = Math.abs(v);
  if (a >= 1000) return count(Math.round(v));
  if (a >= 10) return v.toFixed(0);
  if (a >= 1) return v.toFixed(2);
  return v.toFixed(3);
}

/**
 * A line chart: `series` is [{name, points: [[x, y], ...]}] (up to two), drawn on
 * shared axes. `yRange` fixes the y axis ([min, max]); otherwise it fits the data.
 */
export function lineChart({ id, title, xLabel, series, yRange }) {
  const all = series.flatMap((se) => se.points);
  const titleId = `${id}-title`;
  const descId = `${id}-desc`;
  const last = series
    .map((se) => (se.points.length ? `${se.name} ${label(se.points[se.points.length - 1][1])}` : null))
    .filter(Boolean)
    .join(", ");
  const svg = s("svg", {
    id,
    class: "chart",
    viewBox: `0 0 ${W} ${H}`,
    role: "img",
    "aria-labelledby": `${titleId} ${descId}`,
    "data-points": all.length,
  });
  svg.append(
    s("title", { id: titleId }, title),
    s("desc", { id: descId }, all.length ? `${all.length} points; at the last ${xLabel}: ${last}` : "No data yet"),
  );
  const legend = h(
    "div",
    { class: "legend" },
    series.map((se, i) => h("span", { class: `key${i + 1}` }, se.name)),
  );
  const figure = h("figure", { class: "chart" }, h("figcaption", {}, title), svg, legend);
  if (all.length === 0) {
    svg.append(s("text", { x: W / 2, y: H / 2, "text-anchor": "middle" }, "waiting for training steps"));
    return figure;
  }
  const xs = all.map((p) => p[0]);
  const ys = all.map((p) => p[1]);
  const x0 = Math.min(...xs);
  const x1 = Math.max(...xs, x0 + 1);
  let [y0, y1] = yRange || [Math.min(...ys), Math.max(...ys)];
  if (y0 === y1) {
    // A flat line (no group regrown yet): an axis from zero, not around the value.
    y0 = Math.min(0, y0);
    y1 = y0 === y1 ? y1 + 1 : y1;
  }
  const px = (x) => PAD.left + ((x - x0) / (x1 - x0)) * (W - PAD.left - PAD.right);
  const py = (y) => H - PAD.bottom - ((y - y0) / (y1 - y0)) * (H - PAD.top - PAD.bottom);
  for (const t of ticks(y0, y1)) {
    svg.append(
      s("line", { class: "gridline", x1: PAD.left, x2: W - PAD.right, y1: py(t), y2: py(t) }),
      s("text", { x: PAD.left - 6, y: py(t) + 4, "text-anchor": "end" }, label(t)),
    );
  }
  for (const t of ticks(x0, x1)) {
    svg.append(s("text", { x: px(t), y: H - 8, "text-anchor": "middle" }, count(Math.round(t))));
  }
  svg.append(
    s("line", { class: "axis", x1: PAD.left, x2: PAD.left, y1: PAD.top, y2: H - PAD.bottom }),
    s("line", { class: "axis", x1: PAD.left, x2: W - PAD.right, y1: H - PAD.bottom, y2: H - PAD.bottom }),
  );
  series.forEach((se, i) => {
    if (se.points.length === 0) return;
    const d = se.points
      .map(([x, y], k) => `${k === 0 ? "M" : "L"}${px(x).toFixed(1)},${py(y).toFixed(1)}`)
      .join(" ");
    svg.append(s("path", { class: `line s${i + 1}`, d, "data-series": se.name }));
  });
  return figure;
}

/**
 * Horizontal bars of each layer's output channels before (light) and after (dark)
 * pruning, from the report's compaction.layers.
 */
export function layerChart(layers) {
  const rowH = 16;
  const labelW = 190;
  const width = 520;
  const height = layers.length * rowH + 24;
  const max = Math.max(1, ...layers.map((l) => l.out_channels_before));
  const bar = (n) => ((width - labelW - 50) * n) / max;
  const changed = layers.filter((l) => l.out_channels_after < l.out_channels_before).length;
  const svg = s("svg", {
    id: "layer-chart",
    class: "chart",
    viewBox: `0 0 ${width} ${height}`,
    role: "img",
    "aria-labelledby": "layer-chart-title layer-chart-desc",
    "data-layers": layers.length,
  });
  svg.append(
    s("title", { id: "layer-chart-title" }, "Output channels per layer, before and after"),
    s("desc", { id: "layer-chart-desc" }, `${layers.length} layers, ${changed} of them pruned`),
  );
  layers.forEach((layer, i) => {
    const y = 4 + i * rowH;
    const name = layer.node.length > 30 ? `…${layer.node.slice(-29)}` : layer.node;
    svg.append(
      s("text", { x: labelW - 6, y: y + 11, "text-anchor": "end" }, s("title", {}, layer.node), name),
      s("rect", { class: "bar1", x: labelW, y, width: bar(layer.out_channels_before), height: rowH - 4 }),
      s("rect", { class: "bar2", x: labelW, y: y + 3, width: bar(layer.out_channels_after), height: rowH - 10 }),
      s(
        "text",
        { x: labelW + bar(layer.out_channels_before) + 4, y: y + 11 },
        `${layer.out_channels_after}/${layer.out_channels_before}`,
      ),
    );
  });
  return h(
    "figure",
    { class: "chart" },
    h("figcaption", {}, "Channels per layer"),
    h(
      "div",
      { class: "legend" },
      h("span", { class: "bar-before" }, "before"),
      h("span", { class: "bar-after" }, "after"),
    ),
    // The chart scrolls when a model has many layers: focusable, so that a
    // keyboard can scroll it too.
    h("div", { class: "layer-chart", tabindex: "0", role: "region", "aria-label": "Channels per layer (scrolls)" }, svg),
  );
}

/** Horizontal bars of an op histogram ({op: count}). */
export function histogram(id, title, counts) {
  const entries = Object.entries(counts).sort((a, b) => b[1] - a[1]);
  const rowH = 18;
  const labelW = 120;
  const width = 420;
  const max = Math.max(1, ...entries.map((e) => e[1]));
  const svg = s("svg", {
    id,
    class: "chart",
    viewBox: `0 0 ${width} ${entries.length * rowH + 8}`,
    role: "img",
    "aria-label": `${title}: ${entries.map(([op, n]) => `${op} ${n}`).join(", ")}`,
  });
  entries.forEach(([op, n], i) => {
    const y = 4 + i * rowH;
    const w = ((width - labelW - 40) * n) / max;
    svg.append(
      s("text", { x: labelW - 6, y: y + 12, "text-anchor": "end" }, op),
      s("rect", { class: "bar2", x: labelW, y: y + 2, width: w, height: rowH - 6 }),
      s("text", { x: labelW + w + 4, y: y + 12 }, String(n)),
    );
  });
  return h("figure", { class: "chart" }, h("figcaption", {}, title), svg);
}
