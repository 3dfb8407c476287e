// Line charts drawn as SVG, no library: one <circle> per point carrying the numbers it plots
// (data-t: the bucket's start in Unix seconds, data-v: the value as the API answered it), so
// what a chart shows can be read back from the page (the browser tests compare it with the API).
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
const PALETTE = [
  "#1a5fb4", "#c01c28", "#26a269", "#e66100", "#613583",
  "#865e3c", "#0e8a8a", "#a51d7d", "#5e5c64", "#98a000",
];
const WIDTH = 960, HEIGHT = 260, LEFT = 70, RIGHT = 16, TOP = 12, BOTTOM = 30;
const TIME_STEPS = [60, 300, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400, 172800, 604800];
// Steps for an axis of durations in seconds: whole seconds, minutes, hours, days.
const DURATION_STEPS = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400,
  172800, 432000, 864000];

function svgElement(name, attributes) {
  const element = document.createElementNS(SVG_NS, name);
  for (const [key, value] of Object.entries(attributes || {})) element.setAttribute(key, String(value));
  return element;
}

// Ticks at multiples of a round step, about four of them; `durations`: steps of DURATION_STEPS.
function niceTicks(low, high, durations) {
  const raw = (high - low) / 4;
  const power = 10 ** Math.floor(Math.log10(raw));
  const step = (durations && DURATION_STEPS.find((s) => s >= raw)) ||
    [1, 2, 2.5, 5, 10].map((m) => m * power).find((s) => s >= raw);
  const ticks = [];
  for (let tick = Math.ceil(low / step) * step; tick <= high + step * 1e-9; tick += step) ticks.push(tick);
  return ticks;
}

function utc(seconds, withDay) {
  const text = new Date(seconds * 1000).toISOString();
  return withDay ? text.slice(5, 10) + " " + text.slice(11, 16) : text.slice(11, 16);
}

// A figure holding one chart, `durations` true for a y axis of seconds, `zero` true for an axis that
// holds 0 and draws it (a difference). `series`: [{label, color, dashed (true, or a dasharray), attributes,
// points: [{t, v, title}]}],
// v null for a bucket with nothing to plot; a line breaks there and where buckets are missing.
function lineChart({ title, series, start, end, step, format, yMin, yMax, name, durations, zero }) {
  const figure = document.createElement("figure");
  figure.className = "chart";
  figure.dataset.chart = name;
  const caption = document.createElement("figcaption");
  caption.textContent = title;
  figure.append(caption);
  const values = series.flatMap((s) => s.points.map((p) => p.v)).filter((v) => v !== null);
  if (values.length === 0) {
    const empty = document.createElement("p");
    empty.className = "empty";
    empty.textContent = "Nothing to plot in this window.";
    figure.append(empty);
    return figure;
  }
  let low = yMin ?? Math.min(0, ...values);
  let high = yMax ?? Math.max(...values);
  if (zero) high = Math.max(high, 0);
  if (!(high > low)) high = low + (Math.abs(low) || 1);
  if (yMax === undefined) high += (high - low) * 0.05;
  const plotWidth = WIDTH - LEFT - RIGHT, plotHeight = HEIGHT - TOP - BOTTOM;
  const x = (t) => LEFT + ((t - start) / (end - start)) * plotWidth;
  const y = (v) => TOP + (1 - (v - low) / (high - low)) * plotHeight;
  const svg = svgElement("svg", { viewBox: `0 0 ${WIDTH} ${HEIGHT}`, role: "img", "aria-label": title });

  for (const tick of niceTicks(low, high, durations)) {
    svg.append(svgElement("line", { class: "grid", x1: LEFT, x2: WIDTH - RIGHT, y1: y(tick), y2: y(tick) }));
    const label = svgElement("text", { x: LEFT - 6, y: y(tick) + 4, "text-anchor": "end" });
    label.textContent = format(tick);
    svg.append(label);
  }
  const timeStep = TIME_STEPS.find((s) => (end - start) / s <= 8) || 7 * 86400 * Math.ceil((end - start) / (8 * 7 * 86400));
  for (let tick = Math.ceil(start / timeStep) * timeStep; tick <= end; tick += timeStep) {
    svg.append(svgElement("line", { class: "axis", x1: x(tick), x2: x(tick), y1: TOP + plotHeight, y2: TOP + plotHeight + 4 }));
    const label = svgElement("text", { x: x(tick), y: HEIGHT - 8, "text-anchor": "middle" });
    label.textContent = utc(tick, timeStep >= 86400 || tick % 86400 === 0);
    svg.append(label);
  }
  svg.append(svgElement("line", { class: "axis", x1: LEFT, x2: WIDTH - RIGHT, y1: TOP + plotHeight, y2: TOP + plotHeight }));
  svg.append(svgElement("line", { class: "axis", x1: LEFT, x2: LEFT, y1: TOP, y2: TOP + plotHeight }));
  if (zero) svg.append(svgElement("line", { class: "zero", x1: LEFT, x2: WIDTH - RIGHT, y1: y(0), y2: y(0) }));

  for (const one of series) {
    let path = "", previous = null;
    for (const point of one.points) {
      if (point.v === null) { previous = null; continue; }
      const joined = previous !== null && point.t - previous <= step;
      path += `${joined ? "L" : "M"}${x(point.t).toFixed(2)},${y(point.v).toFixed(2)}`;
      previous = point.t;
    }
    const line = svgElement("path", { class: "line", d: path, stroke: one.color });
    if (one.dashed) line.setAttribute("stroke-dasharray", dashes(one.dashed));
    svg.append(line);
    for (const point of one.points) {
      if (point.v === null) continue;
      const circle = svgElement("circle", {
        class: "point", cx: x(point.t).toFixed(2), cy: y(point.v).toFixed(2), r: 3, fill: one.color,
        "data-t": point.t, "data-v": point.v, ...one.attributes,
      });
      const tip = svgElement("title");
      tip.textContent = point.title;
      circle.append(tip);
      svg.append(circle);
    }
  }
  figure.append(svg, legend(series));
  return figure;
}

function legend(series) {
  const list = document.createElement("ul");
  list.className = "legend";
  for (const one of series) {
    const item = document.createElement("li");
    const swatch = svgElement("svg", { width: 24, height: 10, "aria-hidden": "true" });
    const line = svgElement("line", { x1: 0, x2: 24, y1: 5, y2: 5, stroke: one.color, "stroke-width": 3 });
    if (one.dashed) line.setAttribute("stroke-dasharray", dashes(one.dashed));
    swatch.append(line);
    item.append(swatch, document.createTextNode(one.label));
    list.append(item);
  }
  return list;
}

// A series' `dashed`: true for dashes, or an SVG stroke-dasharray of its own ("2 3": dots).
function dashes(dashed) {
  return typeof dashed === "string" ? dashed : "6 4";
}

function seriesColor(index) {
  return PALETTE[index % PALETTE.length];
}
