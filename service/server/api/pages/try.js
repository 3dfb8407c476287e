// The landing page's form: the catalogue from /v1/losses, one POST /v1/loss, the answer shown.
"use strict";
const form = document.getElementById("try");
const lossSelect = document.getElementById("loss");
const lossHelp = document.getElementById("loss-help");
const result = document.getElementById("result");
const keyInput = document.getElementById("key");
let catalogue = [];

function headers() {
  const sent = { "Content-Type": "application/json" };
  if (keyInput.value) sent.Authorization = "Bearer " + keyInput.value;
  return sent;
}

function show(text, failed) {
  result.textContent = text;
  result.classList.toggle("error", Boolean(failed));
}

async function loadCatalogue() {
  const response = await fetch("/v1/losses", { headers: headers() });
  if (!response.ok) {
    const problem = await response.json().catch(() => ({}));
    lossHelp.textContent = "The catalogue did not load: " + (problem.detail || response.status) +
      (response.status === 401 ? ". Enter an API key below." : "");
    return;
  }
  catalogue = (await response.json()).losses;
  const chosen = lossSelect.value || "sparse_categorical_crossentropy";
  lossSelect.replaceChildren(...catalogue.map((entry) => new Option(entry.name, entry.name)));
  lossSelect.value = chosen;
  describe();
}

function describe() {
  const entry = catalogue.find((item) => item.name === lossSelect.value);
  lossHelp.textContent = entry ? entry.summary : "";
}

function parsed(field, text, optional) {
  if (optional && !text.trim()) return undefined;
  try {
    return JSON.parse(text);
  } catch (error) {
    throw new Error(field + " is not valid JSON: " + error.message);
  }
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  let body;
  try {
    body = {
      loss: lossSelect.value,
      predictions: parsed("Predictions", form.predictions.value),
      labels: parsed("Labels", form.labels.value),
      convention: form.convention.value,
      dtype: form.dtype.value,
    };
    const options = parsed("Options", form.options.value, true);
    if (options !== undefined) body.options = options;
  } catch (error) {
    show(error.message, true);
    return;
  }
  show("Computing…");
  const response = await fetch("/v1/loss", { method: "POST", headers: headers(), body: JSON.stringify(body) });
  const answer = await response.json().catch(() => ({ detail: "the answer was not JSON" }));
  if (!response.ok) {
    show(response.status + " " + (answer.title || "") + "\n" + (answer.detail || ""), true);
    return;
  }
  show(
    "loss        " + answer.loss + " (" + answer.convention + ", " + answer.dtype + ")\n" +
    "mean        " + answer.mean + "\n" +
    "per_sample  " + JSON.stringify(answer.per_sample) + "\n" +
    "sum         " + answer.sum + "   count " + answer.count,
    false,
  );
});

lossSelect.addEventListener("change", describe);
keyInput.addEventListener("change", () => { if (!catalogue.length) loadCatalogue(); });
loadCatalogue();
