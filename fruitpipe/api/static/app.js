// fruitpipe dashboard: plain JS, no libraries. Every number drawn comes from the API.
// Data from the API is only ever put into the page as text (textContent, attribute values):
// never innerHTML, so a manifest field with markup in it shows as that markup, and runs nothing.
"use strict";

const LABELS = ["freshapples", "freshbanana", "freshoranges", "rottenapples", "rottenbanana", "rottenoranges"];
const NICE = { freshapples: "fresh apples", freshbanana: "fresh banana", freshoranges: "fresh oranges",
  rottenapples: "rotten apples", rottenbanana: "rotten banana", rottenoranges: "rotten oranges" };
const VERDICT_COLORS = { fresh: "#2f9e5b", rotten: "#b4532a", not_fruit: "#6a6fb3", uncertain: "#c99a1b" };
const classColor = (c) => (c.startsWith("fresh") ? "#2f9e5b" : "#b4532a");
const $ = (id) => document.getElementById(id);
const SVG = "http://www.w3.org/2000/svg";

function el(tag, attrs = {}, text) {
  const n = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, v);
  if (text !== undefined) n.textContent = text;
  return n;
}

// An HTML element: attributes set as values, children appended as nodes or as text.
function h(tag, attrs = {}, ...children) {
  const n = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, String(v));
  for (const c of children) n.append(c instanceof Node ? c : String(c ?? ""));
  return n;
}

// Horizontal bar chart in SVG. items: [{label, value, color}]; the value is also kept in data-value.
function barChart(svg, items, { max = null, fmt = (v) => String(v), labelWidth = 110 } = {}) {
  const width = Math.max(svg.clientWidth || 300, 200);
  const rowH = 22, gap = 6;
  const top = max ?? Math.max(1, ...items.map((i) => i.value));
  svg.setAttribute("viewBox", `0 0 ${width} ${items.length * (rowH + gap)}`);
  svg.setAttribute("height", items.length * (rowH + gap));
  svg.replaceChildren();
  const barMax = width - labelWidth - 60;
  items.forEach((it, i) => {
    const y = i * (rowH + gap);
    const w = top > 0 ? Math.max(0, (it.value / top) * barMax) : 0;
    svg.append(el("text", { x: 0, y: y + rowH * 0.7 }, it.label));
    svg.append(el("rect", { x: labelWidth, y, width: barMax, height: rowH, rx: 5, fill: "#f0eee8" }));
    svg.append(el("rect", { x: labelWidth, y, width: w, height: rowH, rx: 5, fill: it.color || "#2f6f4f",
      class: "bar", "data-label": it.key ?? it.label, "data-value": it.value }));
    svg.append(el("text", { x: labelWidth + barMax + 6, y: y + rowH * 0.7, class: "val" }, fmt(it.value)));
  });
}

// Latency sparkline on a canvas (device-pixel sharp).
function sparkline(canvas, values) {
  const dpr = window.devicePixelRatio || 1;
  const w = canvas.clientWidth || 300, h = canvas.clientHeight || 70;
  canvas.width = w * dpr; canvas.height = h * dpr;
  const ctx = canvas.getContext("2d");
  ctx.scale(dpr, dpr);
  ctx.clearRect(0, 0, w, h);
  canvas.dataset.points = String(values.length);
  if (!values.length) {
    ctx.fillStyle = "#6b756f"; ctx.font = "12px system-ui"; ctx.fillText("no predictions yet", 8, h / 2 + 4);
    return;
  }
  const max = Math.max(...values) * 1.1 || 1;
  const step = values.length > 1 ? (w - 8) / (values.length - 1) : 0;
  ctx.beginPath();
  values.forEach((v, i) => {
    const x = 4 + i * step, y = h - 6 - (v / max) * (h - 16);
    i ? ctx.lineTo(x, y) : ctx.moveTo(x, y);
  });
  ctx.strokeStyle = "#2f6f4f"; ctx.lineWidth = 1.6; ctx.stroke();
  ctx.fillStyle = "#6b756f"; ctx.font = "11px system-ui";
  ctx.fillText(`max ${Math.max(...values).toFixed(1)} ms`, w - 90, 12);
}

const fmtMs = (v) => (v == null ? "–" : `${v.toFixed(v < 10 ? 1 : 0)} ms`);
const pct = (v) => `${(v * 100).toFixed(1)}%`;

function fmtUptime(s) {
  if (s < 60) return `${Math.round(s)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min`;
  return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
}

async function api(path, opts = {}) {
  const r = await fetch(path, opts);
  let body = null;
  try { body = await r.json(); } catch (_) { /* not JSON */ }
  if (!r.ok) {
    const err = new Error(body?.detail || `${r.status} ${r.statusText}`);
    err.status = r.status; err.body = body;
    throw err;
  }
  return body;
}

function showError(id, msg) {
  const n = $(id);
  n.textContent = msg || ""; n.hidden = !msg;
}

// ---------------------------------------------------------------- predict
async function predictFile(file) {
  showError("predict-error", "");
  const url = URL.createObjectURL(file);
  $("preview").src = url; $("preview").hidden = false; $("drop-hint").hidden = true;
  const form = new FormData(); form.append("file", file);
  try {
    const p = await api("/predict", { method: "POST", body: form });
    const v = $("verdict");
    v.textContent = p.verdict.replace("_", " "); v.className = `verdict ${p.verdict}`;
    v.dataset.verdict = p.verdict;
    $("pred-class").textContent = p.verdict === "not_fruit" ? "doesn't look like an apple, banana or orange"
      : `${NICE[p.predicted_class]} · ${pct(p.confidence)}`;
    $("pred-meta").textContent = `model ${p.model_version} · ${p.latency_ms.toFixed(1)} ms on the server`;
    $("result").hidden = false;
    document.dispatchEvent(new CustomEvent("fruitpipe:prediction", { detail: { prediction: p, container: $("result") } }));
    barChart($("prob-chart"), LABELS.map((c) => ({ key: c, label: NICE[c], value: p.probabilities[c], color: classColor(c) })),
      { max: 1, fmt: pct });
    refreshStats();
  } catch (e) {
    $("result").hidden = true;
    showError("predict-error", `${e.body?.error ? e.body.error + ": " : ""}${e.message}`);
  }
}

function setupDrop() {
  const drop = $("drop"), input = $("file");
  input.addEventListener("change", () => input.files[0] && predictFile(input.files[0]));
  drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") { e.preventDefault(); input.click(); } });
  ["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.add("over"); }));
  ["dragleave", "drop"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.remove("over"); }));
  drop.addEventListener("drop", (e) => { const f = e.dataTransfer.files[0]; if (f) predictFile(f); });
}

// ---------------------------------------------------------------- stats, health, dataset
async function refreshStats() {
  try {
    const [s, h] = await Promise.all([api("/stats"), api("/health")]);
    $("health-dot").className = `dot ${h.status === "ok" ? "ok" : "bad"}`;
    $("live-version").textContent = h.model_version || "none";
    $("uptime").textContent = fmtUptime(h.uptime_seconds);
    $("kpi-predictions").textContent = s.predictions;
    $("kpi-p50").textContent = fmtMs(s.latency_ms.p50);
    $("kpi-p95").textContent = fmtMs(s.latency_ms.p95);
    $("stats-age").textContent = `· ${s.latency_samples} recent requests`;
    sparkline($("latency-chart"), s.recent_latencies_ms);
    barChart($("verdict-chart"), Object.entries(s.by_verdict).map(([k, v]) => ({ key: k, label: k.replace("_", " "), value: v, color: VERDICT_COLORS[k] })));
    barChart($("class-chart"), LABELS.map((c) => ({ key: c, label: NICE[c], value: s.by_class[c] || 0, color: classColor(c) })));
  } catch (e) {
    $("health-dot").className = "dot bad";
  }
}

async function refreshDataset() {
  const d = await api("/dataset");
  $("dataset-total").textContent = d.total;
  barChart($("dataset-chart"), LABELS.map((c) => ({ key: c, label: NICE[c], value: d.counts[c] || 0, color: classColor(c) })));
}

// ---------------------------------------------------------------- model performance + versions
function perfFrom(version) {
  const m = version?.metrics || {};
  if (m.frozen?.per_class) return { src: `the frozen evaluation set (${m.frozen.n} fruit photos, the same for every version)`, ev: m.frozen };
  if (m.per_class) return { src: "the live model's manifest", ev: m };
  if (m.evaluation?.candidate?.per_class) return { src: `the gate evaluation on ${m.evaluation.candidate.n} images`, ev: m.evaluation.candidate };
  if (m.evaluation?.per_class) return { src: "the live model's evaluation", ev: m.evaluation };
  return null;
}

function drawPerformance(live) {
  const p = perfFrom(live);
  const conf = $("confusion");
  if (!p) {
    const acc = live?.metrics?.test_accuracy ?? live?.metrics?.accuracy;
    $("perf-source").textContent = `The live model (${live?.version || "none"}) has no per-class metrics in its manifest` +
      (acc != null ? `; its recorded accuracy is ${pct(acc)}.` : ".");
    barChart($("f1-chart"), []); conf.replaceChildren();
    $("perf-charts").hidden = true;
    return;
  }
  $("perf-charts").hidden = false;
  $("perf-source").textContent = `From ${p.src}: accuracy ${pct(p.ev.accuracy)}, macro F1 ${pct(p.ev.macro_f1)}.`;
  barChart($("f1-chart"), LABELS.map((c) => ({ key: c, label: NICE[c], value: p.ev.per_class[c]?.f1 ?? 0, color: classColor(c) })),
    { max: 1, fmt: pct });
  // fruitpipe.evaluation gives {rows, columns, matrix}; columns may add "not_fruit" (rejected).
  const cm = p.ev.confusion;
  const cols = Array.isArray(cm?.columns) ? cm.columns : LABELS;
  const m = Array.isArray(cm) ? cm : cm?.matrix;
  if (!Array.isArray(m)) { conf.replaceChildren(); return; }
  const max = Math.max(1, ...m.flat());
  const short = (c) => String(c).replace("fresh", "F·").replace("rotten", "R·").replace("apples", "apl").replace("banana", "ban").replace("oranges", "org");
  const head = (c) => c === "not_fruit" ? "rej." : short(c);
  const t = h("table", {},
    h("thead", {}, h("tr", {}, h("th", { title: "rows: true class, columns: predicted" }, "true \\ pred"),
      ...cols.map((c) => h("th", { title: c }, head(c))))));
  const body = h("tbody");
  m.forEach((row, i) => {
    const tr = h("tr", {}, h("th", { title: LABELS[i] }, short(LABELS[i])));
    row.forEach((v, j) => {
      const a = Number(v) / max;
      const td = h("td", { "data-value": v }, v);
      // CSSOM, not a style attribute: allowed by the page's style-src 'self'
      td.style.background = cols[j] === LABELS[i] ? `rgba(47,158,91,${0.12 + 0.7 * a})` : v ? `rgba(180,83,42,${0.15 + 0.7 * a})` : "transparent";
      tr.append(td);
    });
    body.append(tr);
  });
  t.append(body);
  conf.replaceChildren(t);
}

// The metrics a versions-table row shows: the version's score on the frozen evaluation set when
// it has one (the same images for every version), else its manifest's own figures (labelled).
function rowMetrics(v) {
  const m = v.metrics || {};
  if (m.frozen) return { ev: m.frozen, note: `frozen evaluation set ${m.frozen.eval_set || ""}` };
  return { ev: m, note: m.split ? `from the manifest: ${m.split}` : "from the manifest" };
}

async function refreshVersions() {
  const data = await api("/models");
  const tbody = $("versions").querySelector("tbody");
  tbody.replaceChildren();
  for (const v of data.versions) {
    const { ev, note } = rowMetrics(v);
    const acc = ev.accuracy ?? v.metrics?.test_accuracy;
    const metric = (x) => h("td", note ? { title: note } : {}, x != null ? pct(x) : "–");
    const last = h("td");
    const tr = h("tr", {}, h("td", {}, h("code", {}, v.version)),
      h("td", {}, String(v.created).replace("T", " ").replace("Z", "")),
      h("td", {}, h("span", { class: `pill ${v.status}` }, v.status)),
      metric(acc), metric(ev.macro_f1), metric(ev.ood_rejected_rate), last);
    tr.dataset.version = v.version;
    if (v.status === "available") {
      const b = h("button", { class: "ghost" }, "activate");
      b.addEventListener("click", () => activate(v.version));
      last.append(b);
    }
    tbody.append(tr);
    if (v.status === "rejected" && v.reason) {
      tbody.append(h("tr", {}, h("td", { colspan: 7, class: "reason" }, `rejected: ${v.reason}`)));
    }
  }
  drawPerformance(data.versions.find((v) => v.status === "live"));
}

// ---------------------------------------------------------------- admin: token, upload, retrain, activate
const token = () => $("token").value.trim() || sessionStorage.getItem("fruitpipe-token") || "";
function authHeaders() {
  const t = token();
  if (t) sessionStorage.setItem("fruitpipe-token", t);
  return t ? { Authorization: `Bearer ${t}` } : {};
}

async function activate(version) {
  showError("admin-error", "");
  try {
    await api(`/models/${encodeURIComponent(version)}/activate`, { method: "POST", headers: authHeaders() });
    await Promise.all([refreshVersions(), refreshStats()]);
  } catch (e) {
    showError("admin-error", `activate ${version}: ${e.message}`);
  }
}

function uploadOne(file, label, li) {
  // XMLHttpRequest (not fetch) for upload progress events.
  return new Promise((resolve) => {
    const xhr = new XMLHttpRequest();
    const bar = li.querySelector("progress"), st = li.querySelector(".st");
    xhr.open("POST", "/upload-training-data");
    const h = authHeaders();
    if (h.Authorization) xhr.setRequestHeader("Authorization", h.Authorization);
    xhr.upload.onprogress = (e) => { if (e.lengthComputable) bar.value = e.loaded / e.total; };
    xhr.onload = () => {
      let body = null;
      try { body = JSON.parse(xhr.responseText); } catch (_) { /* ignore */ }
      bar.value = 1;
      const item = body?.results?.[0];
      if (item) {
        st.textContent = item.status + (item.error ? ` (${item.error})` : "");
        st.className = `st st-${item.status}`;
      } else {
        st.textContent = `error: ${body?.detail || xhr.status}`;
        st.className = "st st-rejected";
      }
      li.dataset.status = item?.status || "error";
      resolve(xhr.status);
    };
    xhr.onerror = () => { st.textContent = "network error"; st.className = "st st-rejected"; resolve(0); };
    const form = new FormData();
    form.append("class_name", label); form.append("files", file);
    xhr.send(form);
  });
}

async function upload(e) {
  e.preventDefault();
  showError("admin-error", "");
  const files = [...$("upload-files").files];
  const label = $("upload-class").value;
  if (!files.length) return;
  const list = $("upload-list");
  list.replaceChildren();
  const items = files.map((f) => {
    const li = h("li", {}, h("span", { class: "name" }, f.name), h("span", { class: "st" }, "waiting"),
      h("progress", { max: 1, value: 0 }));
    list.append(li);
    return li;
  });
  for (let i = 0; i < files.length; i++) {
    const status = await uploadOne(files[i], label, items[i]);
    if (status === 401 || status === 403) { showError("admin-error", "the admin token is missing or wrong"); break; }
  }
  refreshDataset();
}

let polling = null;
const fmtEta = (s) => (s < 60 ? `${Math.ceil(s)} s` : `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`);
function renderRetrain(s) {
  // While no run is going, show the first-start warm-up (embedding cache) when one runs.
  const warm = s.state !== "running" && s.warmup?.state === "running" ? s.warmup : null;
  const percent = warm ? warm.percent : s.percent;
  $("retrain-state").textContent = warm ? "preparing" : s.state;
  $("retrain-state").dataset.state = s.state;
  $("retrain-stage").textContent = warm ? `· ${warm.stage || "warm-up"} (first start)` : s.stage ? `· ${s.stage}` : "";
  $("retrain-pct").textContent = s.state === "idle" && !warm ? "" : `· ${percent.toFixed(percent < 100 ? 1 : 0)}%`;
  $("retrain-pct").dataset.percent = String(percent);
  $("retrain-eta").textContent = s.state === "running" && s.eta_seconds != null ? `· about ${fmtEta(s.eta_seconds)} left` : "";
  $("retrain-bar").style.width = `${percent}%`;
  $("retrain-btn").disabled = s.state === "running";
  const r = s.result || {};
  let text = "";
  if (s.state === "succeeded") text = `Promoted ${r.version}: ${r.reason}`;
  else if (s.state === "rejected") text = `Kept ${r.live_version} live; candidate ${r.version} rejected: ${r.reason}`;
  else if (s.state === "failed") text = `Failed: ${r.error || "see the log"}`;
  $("retrain-result").textContent = text;
  const log = $("retrain-log");
  log.hidden = !s.log_tail?.length;
  log.textContent = (s.log_tail || []).join("\n");
  log.scrollTop = log.scrollHeight;
}

async function pollRetrain() {
  try {
    const s = await api("/retraining-status");
    renderRetrain(s);
    const busy = s.state === "running" || s.warmup?.state === "running";
    if (!busy && polling) {
      clearInterval(polling); polling = null;
      refreshVersions(); refreshStats();
    } else if (busy && !polling) {
      polling = setInterval(pollRetrain, 1000);
    }
  } catch (_) { /* next tick */ }
}

async function retrain(e) {
  e.preventDefault();
  showError("admin-error", "");
  try {
    const force = $("retrain-force").checked ? "?force=true" : "";
    renderRetrain(await api(`/retrain${force}`, { method: "POST", headers: authHeaders() }));
    if (!polling) polling = setInterval(pollRetrain, 1000);
  } catch (err) {
    showError("admin-error", `retrain: ${err.message}`);
  }
}

// ---------------------------------------------------------------- start
function init() {
  const sel = $("upload-class");
  LABELS.forEach((c) => sel.append(new Option(NICE[c], c)));
  const saved = sessionStorage.getItem("fruitpipe-token");
  if (saved) $("token").value = saved;
  setupDrop();
  $("upload-form").addEventListener("submit", upload);
  $("token-form").addEventListener("submit", retrain);
  refreshStats(); refreshDataset(); refreshVersions(); pollRetrain();
  setInterval(refreshStats, 3000);
  setInterval(refreshDataset, 15000);
  setInterval(refreshVersions, 15000);
  window.addEventListener("resize", () => { refreshStats(); refreshDataset(); });
}
document.addEventListener("DOMContentLoaded", init);
