// A model's page: its configuration from GET /v1/models/{model}, then its history from
// GET /v1/models/{model}/history for the window and step chosen, drawn by chart.js: each loss's
// mean, the label coverage and the label delay's p50 and p90, one line per segment value; for an
// estimated loss (`estimate` in the configuration), its expected loss, band and realized mean. For a
// model whose `compare_to` names champions, a section per champion: both models' mean of the
// compared loss (each one's history) and the paired difference with its anytime-valid band as it
// stood at each step's end (GET /v1/models/{model}/compare/{champion} with `step`), and the verdict.
"use strict";

const KEY_ITEM = "loss-service-key"; // the tab's API key, shared with the landing page
const model = decodeURIComponent(location.pathname.slice("/models/".length));
const modelPath = "/v1/models/" + encodeURIComponent(model);
const controls = document.getElementById("controls");
const bySelect = document.getElementById("by");
const rangeSelect = document.getElementById("range");
const stepSelect = document.getElementById("step");
const keyInput = document.getElementById("key");
const statusLine = document.getElementById("status");
const source = document.getElementById("source");
const charts = document.getElementById("charts");
const comparisons = document.getElementById("comparisons");
let configured = null;

function headers() {
  return keyInput.value ? { Authorization: "Bearer " + keyInput.value } : {};
}

function show(text, failed) {
  statusLine.textContent = text;
  statusLine.classList.toggle("error", Boolean(failed));
}

async function getJSON(url) {
  const response = await fetch(url, { headers: headers() });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const hint = response.status === 401 ? " Enter an API key above." : "";
    throw new Error(`${response.status} ${body.title || ""}: ${body.detail || "no detail"}${hint}`);
  }
  return body;
}

function choose(select, value) {
  if (value !== null && [...select.options].some((option) => option.value === value)) select.value = value;
}

function seconds(value) {
  const shown = (amount, unit) => String(+amount.toPrecision(3)) + " " + unit;
  if (value < 120) return shown(value, "s");
  if (value < 7200) return shown(value / 60, "min");
  if (value < 172800) return shown(value / 3600, "h");
  return shown(value / 86400, "d");
}

function number(value) {
  return Math.abs(value) >= 1e4 || (value !== 0 && Math.abs(value) < 1e-3) ? value.toExponential(2) : String(+value.toPrecision(4));
}

function percent(value) {
  return (value * 100).toFixed(0) + " %";
}

function describe(config) {
  const losses = config.losses.map((call) => call.loss + (Object.keys(call.options || {}).length ? " " + JSON.stringify(call.options) : ""));
  const segments = config.segments.length ? "segments " + config.segments.join(", ") : "no segments";
  return `${losses.join(" · ")} — ${config.convention}, ${config.dtype}; ${segments}; ` +
    `retention ${seconds(config.retention_seconds)}`;
}

async function loadModel() {
  document.title = model + " · loss-service";
  document.getElementById("model-name").textContent = model;
  try {
    configured = await getJSON(modelPath);
  } catch (error) {
    show("The model did not load: " + error.message, true);
    charts.dataset.error = "model";
    return;
  }
  document.getElementById("model-config").textContent = describe(configured);
  bySelect.replaceChildren(bySelect.options[0], ...configured.segments.map((key) => new Option(key, key)));
  const asked = new URLSearchParams(location.search);
  choose(bySelect, asked.get("by"));
  choose(rangeSelect, asked.get("range") || "86400");
  choose(stepSelect, asked.get("step") || "3600");
  await loadHistory();
}

// One series per segment value (sorted, null last), or the model's total.
function seriesOf(answer) {
  const groups = new Map();
  for (const bucket of answer.buckets) {
    const key = answer.by ? JSON.stringify(bucket.segment) : "total";
    if (!groups.has(key)) groups.set(key, []);
    groups.get(key).push(bucket);
  }
  const keys = [...groups.keys()].sort((a, b) => (a === "null") - (b === "null") || (a < b ? -1 : a > b ? 1 : 0));
  return keys.map((key, index) => ({
    label: answer.by ? (key === "null" ? `${answer.by} not set` : `${answer.by} = ${JSON.parse(key)}`) : "all predictions",
    color: seriesColor(index),
    attributes: answer.by ? { "data-segment": key } : {},
    buckets: groups.get(key),
  }));
}

function plotted(groups, value, describeOne) {
  return groups.map((group) => ({
    ...group,
    points: group.buckets.map((bucket) => {
      const v = value(bucket);
      const when = new Date(bucket.start * 1000).toISOString().slice(0, 16).replace("T", " ");
      return { t: bucket.start, v, title: `${group.label}, ${when} UTC: ${v === null ? "—" : describeOne(v, bucket)}` };
    }),
  }));
}

// The estimate chart's lines per group: the realized mean (solid), the expected loss (dashed) and
// its band (dotted); without segments each kind its own color, with them each value's color.
const ESTIMATE_LINES = [
  { kind: "realized", label: "realized mean", dashed: false, value: (loss) => loss.mean,
    describe: (v, b) => `realized mean ${v} over ${b.joined} joined pairs` },
  { kind: "estimated", label: "expected loss", dashed: true, value: (loss) => loss.estimated?.mean ?? null,
    describe: (v, b, loss) => `expected loss ${v} over ${loss.estimated.predictions} predictions, ` +
      `${loss.estimated.pending} pending (their expected loss ${loss.estimated.pending_mean ?? "—"})` },
  { kind: "low", label: "band, low", dashed: "2 3", value: (loss) => loss.estimated?.low ?? null,
    describe: (v, b, loss) => `band [${v}, ${loss.estimated.high ?? "—"}]` },
  { kind: "high", label: "band, high", dashed: "2 3", value: (loss) => loss.estimated?.high ?? null,
    describe: (v, b, loss) => `band [${loss.estimated.low ?? "—"}, ${v}]` },
];

function estimateChart(answer, groups, frame, name, index) {
  const series = ESTIMATE_LINES.flatMap((line, kind) => plotted(
    groups.map((group) => ({
      ...group,
      label: answer.by ? `${group.label}, ${line.label}` : line.label,
      color: answer.by ? group.color : seriesColor(kind === 0 ? 0 : 1),
      dashed: line.dashed,
      attributes: { ...group.attributes, "data-kind": line.kind },
    })),
    (b) => line.value(b.losses[index]),
    (v, b) => line.describe(v, b, b.losses[index]),
  ));
  return lineChart({
    ...frame,
    name: "estimate-" + index,
    title: `${name}: expected loss of each bucket's predictions before their labels (dashed), its 3σ band ` +
      "(dotted), and the realized mean of those joined (solid)",
    format: number,
    series,
  });
}

function render(answer, end) {
  const groups = seriesOf(answer);
  const frame = { start: answer.start, end, step: answer.step };
  const figures = answer.losses.flatMap((name, index) => {
    const mean = lineChart({
      ...frame,
      name: "loss-" + index,
      title: `${name}: mean loss${answer.exact[index] ? "" : " (approximate: its samples read their batch)"}`,
      format: number,
      series: plotted(groups, (b) => b.losses[index].mean, (v, b) => `mean ${v} over ${b.joined} joined pairs`),
    });
    const estimated = answer.buckets.some((b) => b.losses[index].estimated);
    return estimated ? [mean, estimateChart(answer, groups, frame, name, index)] : [mean];
  });
  figures.push(lineChart({
    ...frame,
    name: "coverage",
    title: "Label coverage: joined / predictions",
    format: percent,
    yMin: 0,
    yMax: 1,
    series: plotted(groups, (b) => b.coverage, (v, b) => `${b.joined} of ${b.predictions} joined, ${b.pending} pending, ${b.expired} expired`),
  }));
  const delays = ["p50", "p90"].flatMap((quantile) => plotted(
    groups.map((group) => ({
      ...group,
      label: `${group.label}, ${quantile}`,
      dashed: quantile === "p90",
      attributes: { ...group.attributes, "data-quantile": quantile },
    })),
    (b) => b.label_delay[quantile],
    (v) => `${quantile} ${seconds(v)}`,
  ));
  figures.push(lineChart({
    ...frame,
    name: "label-delay",
    title: "Label delay: label arrival minus prediction time (p50 solid, p90 dashed)",
    format: seconds,
    durations: true,
    series: delays,
  }));
  charts.replaceChildren(...figures);
  const total = (field) => answer.buckets.reduce((sum, bucket) => sum + bucket[field], 0);
  const predictions = total("predictions");
  show(`${predictions} predictions in this window: ${total("joined")} joined, ${total("pending")} pending, ` +
    `${total("expired")} expired.`);
}

async function loadHistory() {
  if (configured === null) return;
  const step = Number(stepSelect.value);
  const end = Math.ceil(Date.now() / 1000 / step) * step;
  const start = end - Math.ceil(Number(rangeSelect.value) / step) * step;
  const asked = new URLSearchParams({ start: String(start), end: String(end), step: String(step) });
  if (bySelect.value) asked.set("by", bySelect.value);
  const url = `${modelPath}/history?${asked}`;
  const shown = new URLSearchParams({ range: rangeSelect.value, step: stepSelect.value });
  if (bySelect.value) shown.set("by", bySelect.value);
  history.replaceState(null, "", "?" + shown);
  source.href = url;
  delete charts.dataset.by;
  delete charts.dataset.error;
  show("Loading…");
  let answer;
  try {
    answer = await getJSON(url);
  } catch (error) {
    show("The history did not load: " + error.message, true);
    charts.replaceChildren();
    comparisons.replaceChildren();
    charts.dataset.error = "history";
    return;
  }
  render(answer, end);
  charts.dataset.url = url;
  charts.dataset.by = answer.by || "";
  const frame = { start, end, step };
  const sections = (configured.compare_to || []).map((champion) => comparison(champion, answer.by ? null : answer, frame));
  comparisons.replaceChildren(...(await Promise.all(sections)));
}

const VERDICTS = {
  better: "better: its loss is lower than the champion's",
  worse: "worse: its loss is higher than the champion's",
  undecided: "undecided: the band still holds 0",
};

// The section comparing this model with `champion` over the frame: `own` is this model's history
// over it without segments, where already loaded.
async function comparison(champion, own, { start, end, step }) {
  const section = document.createElement("section");
  section.className = "comparison";
  section.dataset.champion = champion;
  const heading = document.createElement("h2");
  heading.textContent = `Challenger of ${champion}`;
  const verdict = document.createElement("p");
  verdict.className = "verdict";
  section.append(heading, verdict);
  const query = new URLSearchParams({ start: String(start), end: String(end), step: String(step) });
  const urls = {
    compare: `${modelPath}/compare/${encodeURIComponent(champion)}?${query}`,
    challenger: `${modelPath}/history?${query}`,
    champion: `/v1/models/${encodeURIComponent(champion)}/history?${query}`,
  };
  let compared, mine, theirs;
  try {
    [compared, mine, theirs] = await Promise.all([
      getJSON(urls.compare), own || getJSON(urls.challenger), getJSON(urls.champion),
    ]);
  } catch (error) {
    verdict.textContent = `The comparison with ${champion} did not load: ${error.message}`;
    verdict.classList.add("error");
    section.dataset.error = "comparison";
    return section;
  }
  const frame = { start, end, step };
  // Each model's mean of the compared loss per bucket, found by its name among the model's losses.
  const curve = (answer, name, index) => {
    const at = answer.losses.indexOf(compared.loss);
    const points = at < 0 ? [] : answer.buckets.map((bucket) => {
      const v = bucket.losses[at].mean;
      const when = new Date(bucket.start * 1000).toISOString().slice(0, 16).replace("T", " ");
      return { t: bucket.start, v, title: `${name}, ${when} UTC: ${v === null ? "—" : `mean ${v} over ${bucket.joined} joined pairs`}` };
    });
    return { label: name, color: seriesColor(index), attributes: { "data-model": name }, points };
  };
  // The difference, or a bound of its band, at the end of each step.
  const bound = (field, label, dashed) => ({
    label,
    color: seriesColor(0),
    dashed,
    attributes: { "data-bound": field },
    points: compared.sequence.map((point) => {
      const when = new Date(point.end * 1000).toISOString().slice(0, 16).replace("T", " ");
      return {
        t: point.end,
        v: point[field],
        title: `by ${when} UTC, ${point.n} pairs: difference ${point.mean ?? "—"}, ` +
          `band [${point.low ?? "—"}, ${point.high ?? "—"}], ${point.verdict}`,
      };
    }),
  });
  const level = +(100 * (1 - compared.alpha)).toPrecision(3);
  section.append(
    lineChart({
      ...frame,
      name: `compare-${champion}-means`,
      title: `${compared.loss}: mean loss of ${model} and of ${champion} (each over its own joined pairs)`,
      format: number,
      series: [curve(mine, model, 0), curve(theirs, champion, 1)],
    }),
    lineChart({
      ...frame,
      name: `compare-${champion}-difference`,
      title: `${compared.loss}: ${model} minus ${champion} over the ids both joined, as it stood at each step's end, ` +
        `with its ${level} % anytime-valid band (dashed)`,
      format: number,
      zero: true,
      series: [
        bound("mean", "difference", false),
        bound("low", "band, low", true),
        bound("high", "band, high", true),
      ],
    }),
  );
  const d = compared.difference;
  const band = d.low === null ? "no band yet" : `band [${number(d.low)}, ${number(d.high)}]`;
  verdict.textContent = `${model} is ${VERDICTS[compared.verdict]} over ${compared.n} ids both joined in this window ` +
    `(difference ${d.mean === null ? "—" : number(d.mean)}, ${band}).`;
  verdict.dataset.verdict = compared.verdict;
  section.dataset.url = urls.compare;
  return section;
}

controls.addEventListener("submit", (event) => event.preventDefault());
for (const select of [bySelect, rangeSelect, stepSelect]) select.addEventListener("change", loadHistory);
keyInput.value = sessionStorage.getItem(KEY_ITEM) || "";
keyInput.addEventListener("change", () => {
  sessionStorage.setItem(KEY_ITEM, keyInput.value);
  loadModel();
});
loadModel();
