// The effp dashboard: models, datasets and jobs of the tenant whose key this tab
// holds, on the public API only. Views are chosen by the URL's fragment (#/jobs/…),
// which never carries the key.

import { apiKey, setApiKey, call, upload, download, followEvents, ProblemError } from "./api.js";
import { h, count, bytes, percent, score, when, table } from "./dom.js";
import { lineChart, layerChart, histogram } from "./charts.js";

const view = document.getElementById("view");
const alertBox = document.getElementById("alert");
const statusBox = document.getElementById("status");

/** What the current view started (timers, streams), stopped when it changes. */
let cleanups = [];
function onLeave(fn) {
  cleanups.push(fn);
}

function say(text) {
  statusBox.textContent = text;
}

function showError(err) {
  const problem = err instanceof ProblemError ? err.problem : {};
  let text = err.message || String(err);
  if (err.status === 401) text = `${text} Enter an API key above.`;
  alertBox.replaceChildren(h("strong", {}, problem.title ? `${problem.title}: ` : "Error: "), text);
  alertBox.hidden = false;
  if (err.status === 401) document.getElementById("api-key").focus();
}

function clearError() {
  alertBox.hidden = true;
  alertBox.replaceChildren();
}

function render(title, ...children) {
  document.title = `${title} · effp`;
  view.replaceChildren(h("h1", {}, title), ...children);
}

// ---- the key -------------------------------------------------------------------

function setupKeyForm() {
  const form = document.getElementById("key-form");
  const input = document.getElementById("api-key");
  input.value = apiKey();
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    setApiKey(input.value.trim());
    say(input.value.trim() ? "API key set for this tab" : "No API key");
    route();
  });
  document.getElementById("forget-key").addEventListener("click", () => {
    input.value = "";
    setApiKey("");
    say("API key forgotten");
    route();
  });
}

// ---- uploads -------------------------------------------------------------------

/** A drop zone and file picker that uploads to `path`, then opens the record. */
function uploader(kind, path, accept, next) {
  const inputId = `upload-${kind}-file`;
  const progress = h("progress", { max: 1, value: 0, "aria-label": `Upload progress of the ${kind}` });
  const progressBox = h("div", { class: "upload-progress", hidden: true }, progress);
  const input = h("input", { id: inputId, type: "file", accept });
  const zone = h(
    "section",
    { class: "drop", id: `upload-${kind}`, "aria-label": `Upload a ${kind}` },
    h("p", {}, `Drop a ${kind} file here, or choose one:`),
    h("label", { for: inputId, class: "visually-hidden" }, `${kind} file`),
    input,
    progressBox,
  );
  async function send(file) {
    if (!file) return;
    clearError();
    progressBox.hidden = false;
    progress.value = 0;
    say(`Uploading ${file.name}`);
    try {
      const record = await upload(`${path}?name=${encodeURIComponent(file.name)}`, file, (f) => {
        progress.value = f;
      });
      progress.value = 1;
      say(`Uploaded ${file.name}`);
      location.hash = `${next}/${record.id}`;
    } catch (err) {
      progressBox.hidden = true;
      showError(err);
      say(`The upload of ${file.name} failed`);
    } finally {
      input.value = "";
    }
  }
  input.addEventListener("change", () => send(input.files[0]));
  zone.addEventListener("dragover", (e) => {
    e.preventDefault();
    zone.classList.add("over");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("over"));
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    zone.classList.remove("over");
    send(e.dataTransfer.files[0]);
  });
  return zone;
}

// ---- models --------------------------------------------------------------------

async function modelsView() {
  render("Models", uploader("model", "/v1/models", ".onnx", "#/models"), h("p", { class: "muted" }, "Loading…"));
  const list = await call("GET", "/v1/models?limit=200");
  const rows = list.items.map((m) =>
    h(
      "tr",
      {},
      h("td", {}, h("a", { href: `#/models/${m.id}` }, m.name || m.id)),
      h("td", { class: "num" }, bytes(m.size)),
      h("td", { class: "num" }, count(m.inspect?.totals?.params)),
      h("td", { class: "num" }, m.inspect?.totals?.gflops?.toFixed(3) ?? "–"),
      h("td", {}, when(m.created_at)),
    ),
  );
  view.lastChild.replaceWith(
    rows.length
      ? table(
          "Models",
          [["Name"], ["Size", "num"], ["Parameters", "num"], ["GFLOPs", "num"], ["Uploaded"]],
          rows,
          { id: "models-table" },
        )
      : h("p", { class: "muted", id: "models-empty" }, "No models yet: upload an ONNX detector."),
  );
}

async function modelView(id) {
  const m = await call("GET", `/v1/models/${encodeURIComponent(id)}`);
  const i = m.inspect || {};
  const unsupported = i.unsupported_ops || [];
  const input = (i.inputs || [])[0];
  render(
    m.name || m.id,
    h(
      "div",
      { class: "actions" },
      h("a", { class: "button", href: `#/jobs/new?model=${encodeURIComponent(m.id)}` }, "Prune this model"),
      h(
        "button",
        { class: "danger", type: "button", onclick: () => removeRecord("models", m) },
        "Delete",
      ),
    ),
    h(
      "div",
      { class: "grid" },
      h(
        "section",
        { class: "panel", "aria-labelledby": "model-summary" },
        h("h2", { id: "model-summary" }, "Summary"),
        h(
          "dl",
          { class: "facts", id: "model-facts" },
          h("dt", {}, "Parameters"),
          h("dd", {}, count(i.totals?.params)),
          h("dt", {}, "GFLOPs"),
          h("dd", {}, i.totals?.gflops?.toFixed(3) ?? "–"),
          h("dt", {}, "Nodes"),
          h("dd", {}, count(i.totals?.nodes)),
          h("dt", {}, "Input"),
          h("dd", {}, input ? `${input.name} ${JSON.stringify(input.shape || input.declared_shape)}` : "–"),
          h("dt", {}, "Prunable channel groups"),
          h("dd", {}, count(i.channel_groups?.prunable)),
          h("dt", {}, "Frozen (class) channels"),
          h("dd", {}, count(i.channel_groups?.frozen_classes)),
          h("dt", {}, "Unsupported ops"),
          h("dd", { id: "unsupported-ops" }, unsupported.length ? unsupported.map((u) => u.op || u).join(", ") : "none"),
          h("dt", {}, "Size"),
          h("dd", {}, bytes(m.size)),
          h("dt", {}, "SHA-256"),
          h("dd", {}, h("code", {}, m.sha256)),
        ),
      ),
      h(
        "section",
        { class: "panel", "aria-labelledby": "ops-title" },
        h("h2", { id: "ops-title" }, "Operators"),
        histogram("op-histogram", "Nodes by operator", i.op_histogram || {}),
      ),
    ),
  );
}

async function removeRecord(kind, record) {
  if (!window.confirm(`Delete ${record.name || record.id}?`)) return;
  try {
    await call("DELETE", `/v1/${kind}/${encodeURIComponent(record.id)}`);
    say(`Deleted ${record.name || record.id}`);
    location.hash = `#/${kind}`;
  } catch (err) {
    showError(err);
  }
}

// ---- datasets ------------------------------------------------------------------

async function datasetsView() {
  render(
    "Datasets",
    uploader("dataset", "/v1/datasets", ".zip,.tar,.tar.gz,.tgz", "#/datasets"),
    h("p", { class: "muted" }, "Loading…"),
  );
  const list = await call("GET", "/v1/datasets?limit=200");
  const rows = list.items.map((d) =>
    h(
      "tr",
      {},
      h("td", {}, h("a", { href: `#/datasets/${d.id}` }, d.name || d.id)),
      h("td", { class: "num" }, bytes(d.size)),
      h("td", {}, (d.summary?.classes || []).length),
      h("td", { class: "num" }, count(d.summary?.splits?.train?.images)),
      h("td", { class: "num" }, count(d.summary?.splits?.val?.images)),
      h("td", {}, when(d.created_at)),
    ),
  );
  view.lastChild.replaceWith(
    rows.length
      ? table(
          "Datasets",
          [["Name"], ["Size", "num"], ["Classes"], ["Train images", "num"], ["Val images", "num"], ["Uploaded"]],
          rows,
          { id: "datasets-table" },
        )
      : h("p", { class: "muted" }, "No datasets yet: upload a YOLO or COCO dataset as .zip or .tar.gz."),
  );
}

async function datasetView(id) {
  const d = await call("GET", `/v1/datasets/${encodeURIComponent(id)}`);
  const sm = d.summary || {};
  const splits = Object.entries(sm.splits || {}).map(([name, sp]) =>
    h(
      "tr",
      {},
      h("th", { scope: "row" }, name),
      h("td", { class: "num" }, count(sp.images)),
      h("td", { class: "num" }, count(sp.objects)),
      h("td", { class: "num" }, count(sp.background_images)),
    ),
  );
  render(
    d.name || d.id,
    h(
      "div",
      { class: "actions" },
      h("button", { class: "danger", type: "button", onclick: () => removeRecord("datasets", d) }, "Delete"),
    ),
    h(
      "section",
      { class: "panel", "aria-labelledby": "dataset-summary" },
      h("h2", { id: "dataset-summary" }, "Summary"),
      h(
        "dl",
        { class: "facts" },
        h("dt", {}, "Layout"),
        h("dd", {}, sm.layout || "–"),
        h("dt", {}, "Classes"),
        h("dd", { id: "dataset-classes" }, (sm.classes || []).join(", ") || "–"),
        h("dt", {}, "Size"),
        h("dd", {}, bytes(d.size)),
      ),
      table("Splits", [["Split"], ["Images", "num"], ["Objects", "num"], ["Background images", "num"]], splits, {
        id: "dataset-splits",
      }),
    ),
  );
}

// ---- the job form --------------------------------------------------------------

const FALLBACK_METHODS = ["effp", "l1", "sfp", "progressive", "random", "uniform"];

async function methods() {
  try {
    const doc = await (await fetch("/openapi.json")).json();
    return doc.components.schemas.Method.enum || FALLBACK_METHODS;
  } catch {
    return FALLBACK_METHODS;
  }
}

function field(id, labelText, control, help) {
  return h(
    "div",
    { class: "field", "data-field": id },
    h("label", { for: id }, labelText),
    control,
    help ? h("p", { class: "help", id: `${id}-help` }, help) : null,
    h("p", { class: "field-error", id: `${id}-error`, hidden: true }),
  );
}

/** Which control a problem document's error path (JSON pointer) belongs to. */
function controlFor(path) {
  if (path.startsWith("/target")) return "f-target";
  if (path.startsWith("/training/steps")) return "f-steps";
  if (path.startsWith("/model")) return "f-model";
  if (path.startsWith("/dataset")) return "f-dataset";
  if (path.startsWith("/method")) return "f-method";
  if (path.startsWith("/device")) return "f-device";
  if (path.startsWith("/benchmark")) return "f-benchmark";
  return null;
}

async function newJobView(params) {
  const [models, datasets, methodNames] = await Promise.all([
    call("GET", "/v1/models?limit=200"),
    call("GET", "/v1/datasets?limit=200"),
    methods(),
  ]);
  const option = (value, text, selected) => h("option", { value, selected: selected || null }, text);
  const model = h(
    "select",
    { id: "f-model", name: "model", required: true },
    option("", "Choose a model"),
    models.items.map((m) => option(m.id, `${m.name || m.id} (${m.inspect?.totals?.gflops?.toFixed(2) ?? "?"} GFLOPs)`, m.id === params.get("model"))),
  );
  const dataset = h(
    "select",
    { id: "f-dataset", name: "dataset" },
    option("", "None (methods without training)"),
    datasets.items.map((d) => option(d.id, d.name || d.id, d.id === params.get("dataset"))),
  );
  const method = h("select", { id: "f-method", name: "method" }, methodNames.map((m) => option(m, m, m === "effp")));
  const targetKind = h(
    "select",
    { id: "f-target-kind", name: "target-kind", "aria-label": "Target measure" },
    option("flops_ratio", "FLOPs ratio", true),
    option("params_ratio", "parameter ratio"),
  );
  const target = h("input", {
    id: "f-target",
    name: "target",
    type: "number",
    step: "0.01",
    value: "0.5",
    "aria-describedby": "f-target-help f-target-error",
  });
  const steps = h("input", {
    id: "f-steps",
    name: "steps",
    type: "number",
    min: "1",
    placeholder: "the method's default",
    "aria-describedby": "f-steps-help f-steps-error",
  });
  const device = h(
    "select",
    { id: "f-device", name: "device" },
    // auto by default: a deployment with GPU workers trains there, one without on the CPU.
    option("auto", "auto (a GPU where the worker has one)", true),
    option("cpu", "cpu"),
    option("cuda", "cuda"),
  );
  const benchmark = h("input", {
    id: "f-benchmark",
    name: "benchmark",
    list: "benchmark-devices",
    placeholder: "none",
    "aria-describedby": "f-benchmark-help f-benchmark-error",
  });
  const formError = h("div", { id: "form-error", class: "field-error", role: "alert", hidden: true });
  const submit = h("button", { type: "submit", id: "submit-job" }, "Start job");
  const form = h(
    "form",
    { class: "job panel", id: "job-form", novalidate: true },
    field("f-model", "Model", model),
    field("f-dataset", "Dataset", dataset, "Training images and labels: EFFP and the other trained methods need one; any method reports mAP with one."),
    field("f-method", "Method", method),
    h(
      "div",
      { class: "field", "data-field": "f-target" },
      h("label", { for: "f-target" }, "Target"),
      h("div", { class: "inline" }, targetKind, target),
      h("p", { class: "help", id: "f-target-help" }, "The pruned model's share of the original, between 0 and 1."),
      h("p", { class: "field-error", id: "f-target-error", hidden: true }),
    ),
    field("f-steps", "Training steps", steps, "Trained methods only."),
    field("f-device", "Device", device),
    field("f-benchmark", "Benchmark device", benchmark, "A device kind a benchmark agent serves, e.g. jetson-xavier-nx or cpu; empty for none."),
    h("datalist", { id: "benchmark-devices" }, option("cpu", "cpu"), option("jetson-xavier-nx", "jetson-xavier-nx")),
    formError,
    h("div", {}, submit),
  );
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    for (const el of form.querySelectorAll(".field-error")) {
      el.hidden = true;
      el.textContent = "";
    }
    for (const el of form.querySelectorAll("[aria-invalid]")) el.removeAttribute("aria-invalid");
    const spec = {
      model: model.value,
      method: method.value,
      target: { [targetKind.value]: target.value === "" ? null : Number(target.value) },
      device: device.value,
    };
    if (dataset.value) spec.dataset = dataset.value;
    if (steps.value) spec.training = { steps: Number(steps.value) };
    if (benchmark.value.trim()) spec.benchmark = { device: benchmark.value.trim() };
    submit.disabled = true;
    try {
      const job = await call("POST", "/v1/jobs", spec);
      say(`Job ${job.id} started`);
      location.hash = `#/jobs/${job.id}`;
    } catch (err) {
      const errors = err.problem?.errors || [];
      const unplaced = [];
      let first = null;
      for (const { path, message } of errors) {
        const id = controlFor(path || "");
        const box = id && document.getElementById(`${id}-error`);
        if (!box) {
          unplaced.push(`${path}: ${message}`);
          continue;
        }
        box.textContent = box.textContent ? `${box.textContent} ${message}` : message;
        box.hidden = false;
        const control = document.getElementById(id);
        control.setAttribute("aria-invalid", "true");
        if (!control.getAttribute("aria-describedby")) control.setAttribute("aria-describedby", `${id}-error`);
        first = first || control;
      }
      if (unplaced.length || errors.length === 0) {
        formError.textContent = [err.message, ...unplaced].join(" ");
        formError.hidden = false;
      }
      (first || formError).focus?.();
      say("The job was not started: see the errors");
    } finally {
      submit.disabled = false;
    }
  });
  render("New job", form);
}

// ---- jobs ----------------------------------------------------------------------

function badge(state) {
  return h("span", { class: `badge ${state}`, "data-state": state }, state);
}

function targetText(target) {
  if (!target) return "–";
  if (target.flops_ratio !== undefined) return `FLOPs ${target.flops_ratio}`;
  if (target.params_ratio !== undefined) return `params ${target.params_ratio}`;
  return JSON.stringify(target);
}

async function jobsView() {
  render(
    "Jobs",
    h("div", { class: "actions" }, h("a", { class: "button", href: "#/jobs/new" }, "New job")),
    h("div", { id: "jobs-list" }, h("p", { class: "muted" }, "Loading…")),
  );
  const names = new Map();
  let shown = "";
  const refresh = async () => {
    const [jobs, models] = await Promise.all([call("GET", "/v1/jobs?limit=100"), call("GET", "/v1/models?limit=200")]);
    for (const m of models.items) names.set(m.id, m.name || m.id);
    // Redrawn only when something changed, so that keyboard focus stays put.
    const snapshot = JSON.stringify(jobs.items.map((j) => [j.id, j.state, j.progress]));
    if (snapshot === shown && document.getElementById("jobs-list")?.firstChild?.tagName !== "P") return;
    shown = snapshot;
    const rows = jobs.items.map((j) =>
      h(
        "tr",
        { "data-job": j.id },
        h("td", {}, h("a", { href: `#/jobs/${j.id}` }, j.id)),
        h("td", {}, names.get(j.spec?.model) || j.spec?.model),
        h("td", {}, j.spec?.method || "–"),
        h("td", {}, targetText(j.spec?.target)),
        h("td", {}, badge(j.state)),
        h("td", {}, h("progress", { max: 1, value: j.progress || 0, "aria-label": `Progress of ${j.id}` })),
        h("td", {}, when(j.created_at)),
      ),
    );
    const holder = document.getElementById("jobs-list");
    if (!holder) return;
    // A job's link that has the keyboard focus gets it back in the new table.
    const focused = holder.contains(document.activeElement) ? document.activeElement.getAttribute("href") : null;
    holder.replaceChildren(
      rows.length
        ? table(
            "Jobs",
            [["Job"], ["Model"], ["Method"], ["Target"], ["State"], ["Progress"], ["Created"]],
            rows,
            { id: "jobs-table" },
          )
        : h("p", { class: "muted" }, "No jobs yet."),
    );
    if (focused) holder.querySelector(`a[href="${CSS.escape(focused)}"]`)?.focus();
  };
  await refresh();
  const timer = setInterval(() => refresh().catch(showError), 2000);
  onLeave(() => clearInterval(timer));
}

/** The training curve of a job, from its events as they come or from its report. */
class Curve {
  constructor() {
    this.points = [];
  }

  add(m) {
    if (m.step === undefined || m.loss === undefined) return false;
    const last = this.points[this.points.length - 1];
    if (last && m.step <= last.step) return false;
    this.points.push(m);
    return true;
  }

  series(field) {
    return this.points.filter((p) => p[field] !== undefined).map((p) => [p.step, p[field]]);
  }
}

function curveCharts(curve) {
  return [
    lineChart({ id: "chart-loss", title: "Distillation loss", xLabel: "step", series: [{ name: "loss", points: curve.series("loss") }] }),
    lineChart({
      id: "chart-flops",
      title: "FLOPs against the budget",
      xLabel: "step",
      yRange: [0, 1],
      series: [
        { name: "FLOPs ratio", points: curve.series("flops_ratio") },
        { name: "budget", points: curve.series("budget") },
      ],
    }),
    lineChart({ id: "chart-groups", title: "Active channel groups", xLabel: "step", series: [{ name: "active", points: curve.series("active_groups") }] }),
    lineChart({ id: "chart-regrown", title: "Regrown channel groups (total)", xLabel: "step", series: [{ name: "regrown", points: curve.series("regrown") }] }),
  ];
}

function resultsPanel(job) {
  const m = job.metrics || {};
  const rows = [
    ["FLOPs", count(m.flops_before), count(m.flops_after), percent(m.flops_ratio)],
    ["Parameters", count(m.params_before), count(m.params_after), percent(m.params_ratio)],
    ["mAP50-95", score(m.map50_95_before), score(m.map50_95_after), m.map50_95_before ? percent(m.map50_95_after / m.map50_95_before) : "–"],
    ["mAP50", score(m.map50_before), score(m.map50_after), m.map50_before ? percent(m.map50_after / m.map50_before) : "–"],
  ].map(([name, before, after, ratio]) =>
    h("tr", {}, h("th", { scope: "row" }, name), h("td", { class: "num" }, before), h("td", { class: "num" }, after), h("td", { class: "num" }, ratio)),
  );
  return h(
    "section",
    { class: "panel wide", "aria-labelledby": "results-title" },
    h("h2", { id: "results-title" }, "Before and after"),
    table("Before and after", [["", ""], ["Before", "num"], ["After", "num"], ["After / before", "num"]], rows, { id: "results-table" }),
  );
}

function latencyPanel(job) {
  const benchmarks = job.benchmarks || [];
  let body;
  if (benchmarks.length === 0) {
    body = h("p", { class: "muted" }, "No device benchmark was asked for.");
  } else {
    body = benchmarks.map((b) => {
      const r = b.result;
      if (!r) return h("p", { "data-benchmark": b.state }, `${b.request?.device || "device"}: ${b.state}${b.error ? ` (${b.error})` : ""}`);
      const row = (name, t) =>
        h(
          "tr",
          {},
          h("th", { scope: "row" }, name),
          h("td", { class: "num" }, t?.end_to_end?.p50_ms?.toFixed(2) ?? "–"),
          h("td", { class: "num" }, t?.end_to_end?.p90_ms?.toFixed(2) ?? "–"),
          h("td", { class: "num" }, t?.end_to_end?.p99_ms?.toFixed(2) ?? "–"),
        );
      return h(
        "div",
        { "data-benchmark": b.state },
        h("p", {}, `${r.device?.kind || b.request?.device} (${r.runner}, ${r.precision}); speed-up ×${b.speedup?.toFixed(2) ?? "–"}`),
        table("Latency in ms", [["Model"], ["p50 ms", "num"], ["p90 ms", "num"], ["p99 ms", "num"]], [row("original", r.original), row("pruned", r.pruned)], {
          id: "latency-table",
        }),
      );
    });
  }
  return h("section", { class: "panel", "aria-labelledby": "latency-title" }, h("h2", { id: "latency-title" }, "Measured latency"), body);
}

function artifactsPanel(job) {
  const names = Object.keys(job.artifacts || {});
  const items = names.map((name) =>
    h(
      "li",
      {},
      h(
        "button",
        {
          type: "button",
          class: "secondary",
          "data-artifact": name,
          onclick: () => download(`/v1/jobs/${encodeURIComponent(job.id)}/artifacts/${encodeURIComponent(name)}`, name).catch(showError),
        },
        `Download ${name}`,
      ),
      ` ${bytes(job.artifacts[name].size)}`,
    ),
  );
  return h(
    "section",
    { class: "panel", "aria-labelledby": "artifacts-title" },
    h("h2", { id: "artifacts-title" }, "Files"),
    items.length ? h("ul", { id: "artifacts" }, items) : h("p", { class: "muted" }, "The pruned model appears here when the job succeeds."),
  );
}

const FINAL = new Set(["succeeded", "failed", "cancelled"]);

async function jobView(id) {
  let job = await call("GET", `/v1/jobs/${encodeURIComponent(id)}`);
  const curve = new Curve();
  const header = h("div", { id: "job-header" });
  const charts = h("div", { class: "grid", id: "charts" });
  const results = h("div", { id: "job-results" });
  const layers = h("section", { class: "panel", id: "layers", "aria-labelledby": "layers-title" }, h("h2", { id: "layers-title" }, "Layers"), h("p", { class: "muted" }, "From the report, once the job has succeeded."));
  render(`Job ${job.id}`, header, h("section", { "aria-labelledby": "training-title" }, h("h2", { id: "training-title" }, "Training"), charts), results, layers);

  // The cancel button stays one element while the job runs, so that a click on it,
  // or the keyboard focus, survives the redraw that each event causes.
  const cancel = h(
    "button",
    {
      type: "button",
      class: "danger",
      id: "cancel-job",
      onclick: async () => {
        try {
          job = await call("POST", `/v1/jobs/${encodeURIComponent(job.id)}/cancel`);
          say("Cancellation requested");
          drawHeader();
        } catch (err) {
          showError(err);
        }
      },
    },
    "Cancel",
  );
  const facts = h("div");
  header.replaceChildren(h("div", { class: "panel" }, facts, h("div", { class: "actions" }, cancel)));
  const drawHeader = () => {
    facts.replaceChildren(
      h(
        "dl",
        { class: "facts" },
        h("dt", {}, "State"),
        h("dd", { id: "job-state", "data-state": job.state }, badge(job.state), ` ${job.phase || ""}`),
        h("dt", {}, "Progress"),
        h("dd", {}, h("progress", { max: 1, value: job.progress || 0, "aria-label": "Job progress" }), ` ${percent(job.progress || 0, 0)}`),
        h("dt", {}, "Method"),
        h("dd", {}, `${job.spec?.method || "–"}, ${targetText(job.spec?.target)}`),
        h("dt", {}, "Attempts"),
        h("dd", {}, String(job.attempts ?? 0)),
        job.error ? [h("dt", {}, "Error"), h("dd", { id: "job-error" }, String(job.error))] : null,
      ),
    );
    if (FINAL.has(job.state)) cancel.remove();
    else cancel.textContent = job.cancel_requested ? "Cancelling…" : "Cancel";
  };
  const drawCharts = () => charts.replaceChildren(...curveCharts(curve).map((c) => h("div", { class: "panel" }, c)));
  const drawResults = () => results.replaceChildren(h("div", { class: "grid" }, resultsPanel(job), latencyPanel(job), artifactsPanel(job)));
  const drawReport = async () => {
    if (!job.artifacts?.["report.json"]) return;
    const report = await call("GET", `/v1/jobs/${encodeURIComponent(job.id)}/artifacts/report.json`);
    if (Array.isArray(report.curve) && report.curve.length) {
      curve.points = [];
      for (const p of report.curve) curve.add(p);
      drawCharts();
    }
    if (report.compaction?.layers?.length) layers.replaceChildren(h("h2", { id: "layers-title" }, "Layers"), layerChart(report.compaction.layers));
  };
  drawHeader();
  drawCharts();
  drawResults();
  if (FINAL.has(job.state)) await drawReport();

  const controller = new AbortController();
  onLeave(() => controller.abort());
  followEvents(
    `/v1/jobs/${encodeURIComponent(job.id)}/events`,
    (kind, data) => {
      Object.assign(job, data);
      if (data.metrics && curve.add(data.metrics)) drawCharts();
      drawHeader();
      if (kind === "benchmark" || FINAL.has(data.state)) {
        call("GET", `/v1/jobs/${encodeURIComponent(job.id)}`)
          .then(async (fresh) => {
            job = fresh;
            drawHeader();
            drawResults();
            if (FINAL.has(job.state)) await drawReport();
          })
          .catch(showError);
      }
      return !FINAL.has(data.state);
    },
    controller.signal,
  ).catch(showError);
}

// ---- routing -------------------------------------------------------------------

async function route() {
  for (const fn of cleanups) fn();
  cleanups = [];
  clearError();
  const [path, query] = (location.hash.replace(/^#/, "") || "/jobs").split("?");
  const params = new URLSearchParams(query || "");
  const parts = path.split("/").filter(Boolean);
  const section = parts[0] || "jobs";
  for (const a of document.querySelectorAll("nav a")) {
    const current = a.dataset.nav === (section === "jobs" && parts[1] === "new" ? "new" : section);
    if (current) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  }
  try {
    if (section === "models" && parts[1]) await modelView(parts[1]);
    else if (section === "models") await modelsView();
    else if (section === "datasets" && parts[1]) await datasetView(parts[1]);
    else if (section === "datasets") await datasetsView();
    else if (section === "jobs" && parts[1] === "new") await newJobView(params);
    else if (section === "jobs" && parts[1]) await jobView(parts[1]);
    else await jobsView();
  } catch (err) {
    showError(err);
  }
  view.focus();
}

setupKeyForm();
// The skip link moves focus to the content without touching the fragment, which
// names the view.
document.querySelector(".skip").addEventListener("click", (e) => {
  e.preventDefault();
  view.focus();
});
window.addEventListener("hashchange", route);
route();
