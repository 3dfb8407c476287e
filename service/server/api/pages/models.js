// The landing page's list of models: GET /v1/models with the form's API key (the models that key
// may read), each linking to its page. The key is kept in the tab's sessionStorage, so that the
// model pages opened from here send it too; it leaves with the tab and goes only to this service.
"use strict";
{
  const KEY_ITEM = "loss-service-key";
  const list = document.getElementById("models");
  const status = document.getElementById("models-status");
  const key = document.getElementById("key");

  async function loadModels() {
    const response = await fetch("/v1/models", { headers: key.value ? { Authorization: "Bearer " + key.value } : {} });
    const answer = await response.json().catch(() => ({}));
    if (!response.ok) {
      list.replaceChildren();
      status.textContent = `The models did not load: ${response.status} ${answer.title || ""}: ` +
        (answer.detail || "no detail") + (response.status === 401 ? " Enter an API key below." : "");
      return;
    }
    list.replaceChildren(...answer.models.map((model) => {
      const item = document.createElement("li");
      const link = document.createElement("a");
      link.href = "/models/" + encodeURIComponent(model.model);
      link.textContent = model.model;
      const segments = model.segments.length ? "; segments " + model.segments.join(", ") : "";
      item.append(link, document.createTextNode(
        " — " + model.losses.map((call) => call.loss).join(", ") + segments,
      ));
      return item;
    }));
    status.textContent = answer.models.length
      ? "Each model's page shows its losses, label coverage and label delays over time."
      : "No model is configured" + (key.value ? " that this key may read." : ".");
  }

  key.value = key.value || sessionStorage.getItem(KEY_ITEM) || "";
  key.addEventListener("change", () => {
    sessionStorage.setItem(KEY_ITEM, key.value);
    loadModels();
  });
  loadModels();
}
