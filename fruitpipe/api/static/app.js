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
// The chart's values are also its aria-label ("title: label value, ..."), for screen readers.
// An item with a ``part`` is a stacked bar: its first ``part`` of ``value`` drawn lighter (partFmt says it).
function barChart(svg, items, { max = null, fmt = (v) => String(v), labelWidth = 110, title = "", partFmt = null } = {}) {
  const width = Math.max(svg.clientWidth || 300, 200);
  const rowH = 22, gap = 6;
  const top = max ?? Math.max(1, ...items.map((i) => i.value));
  svg.setAttribute("viewBox", `0 0 ${width} ${items.length * (rowH + gap)}`);
  svg.setAttribute("height", items.length * (rowH + gap));
  svg.replaceChildren();
  if (!svg.dataset.title) svg.dataset.title = svg.getAttribute("aria-label") || "";
  svg.setAttribute("aria-label", `${title || svg.dataset.title}: ` + (items.length ? items.map((it) => `${it.label} ${fmt(it.value)}${partFmt ? ` (${partFmt(it)})` : ""}`).join(", ") : "no data"));
  const barMax = width - labelWidth - 60;
  items.forEach((it, i) => {
    const y = i * (rowH + gap);
    const w = top > 0 ? Math.max(0, (it.value / top) * barMax) : 0;
    svg.append(el("text", { x: 0, y: y + rowH * 0.7 }, it.label));
    svg.append(el("rect", { x: labelWidth, y, width: barMax, height: rowH, rx: 5, fill: "#f0eee8" }));
    svg.append(el("rect", { x: labelWidth, y, width: w, height: rowH, rx: 5, fill: it.color || "#2f6f4f",
      class: "bar", "data-label": it.key ?? it.label, "data-value": it.value }));
    if (it.part != null && it.part > 0) {  // the first part of a stacked bar, drawn lighter over it
      svg.append(el("rect", { x: labelWidth, y, width: top > 0 ? (it.part / top) * barMax : 0, height: rowH, rx: 5,
        fill: "#ffffff", "fill-opacity": 0.55, class: "part", "data-label": it.key ?? it.label, "data-value": it.part }));
    }
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
const pct = (v) => (v == null ? "–" : `${(v * 100).toFixed(1)}%`);  // null: nothing to score (e.g. no fruit)

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

// ---------------------------------------------------------------- photos: scale down before sending
const MAX_SIDE = 1600;          // longest side sent, px (issue #14 item 10)
const JPEG_QUALITY = 0.85;
const BATCH_FILES = 32;         // fruitpipe.api.settings.Settings.max_batch_files
const BATCH_BYTES = 4_000_000;  // below the AWS body cap (settings.LAMBDA_MAX_BODY_BYTES, 4.7 MB)

const fmtBytes = (n) => (n < 1024 ? `${n} B` : n < 1048576 ? `${(n / 1024).toFixed(0)} KB` : `${(n / 1048576).toFixed(1)} MB`);

// A photo as it will be sent: scaled so its longest side is at most MAX_SIDE, as JPEG, with the
// EXIF orientation applied (createImageBitmap's imageOrientation "from-image"). A file the browser
// cannot decode (HEIC in Chromium) or that is already small is sent unchanged: the server decodes it.
// Returns {blob, name, original: {bytes, width, height}, sent: {bytes, width, height}, scaled}.
async function preparePhotoFile(file) {
  const info = { blob: file, name: file.name, filename: file.name, scaled: false,
    original: { bytes: file.size, width: null, height: null }, sent: { bytes: file.size, width: null, height: null } };
  let bmp;
  try { bmp = await createImageBitmap(file, { imageOrientation: "from-image" }); } catch (_) { return info; }
  const { width, height } = bmp;
  info.original.width = width; info.original.height = height;
  const scale = Math.min(1, MAX_SIDE / Math.max(width, height));
  if (scale === 1 && file.size <= 1_000_000) {
    info.sent.width = width; info.sent.height = height; bmp.close();
    return info;
  }
  const w = Math.max(1, Math.round(width * scale)), hgt = Math.max(1, Math.round(height * scale));
  const canvas = document.createElement("canvas");
  canvas.width = w; canvas.height = hgt;
  const ctx = canvas.getContext("2d");
  ctx.imageSmoothingQuality = "high";
  ctx.drawImage(bmp, 0, 0, w, hgt);
  bmp.close();
  const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/jpeg", JPEG_QUALITY));
  if (!blob || blob.size >= file.size) { info.sent.width = width; info.sent.height = height; return info; }
  info.blob = blob; info.scaled = true;
  info.name = file.name.replace(/\.[^.]*$/, "") + ".jpg";
  info.sent = { bytes: blob.size, width: w, height: hgt };
  return info;
}

const dims = (d) => (d.width ? `${d.width}×${d.height}, ` : "");
function sizeLine(p) {
  return p.scaled ? `Original ${dims(p.original)}${fmtBytes(p.original.bytes)}; sent ${dims(p.sent)}${fmtBytes(p.sent.bytes)}.`
    : `Sent as picked: ${dims(p.original)}${fmtBytes(p.original.bytes)}.`;
}

// ---------------------------------------------------------------- predict one photo
let previewUrl = null;
function setPreview(img, blob) {
  if (previewUrl) URL.revokeObjectURL(previewUrl);
  previewUrl = URL.createObjectURL(blob);
  img.src = previewUrl;
}

const verdictText = (v) => v.replace("_", " ");
// a batch item the server could not read ({error, detail} of POST /predict/batch) in words
const errorText = (r) => [(r.error || "error").replaceAll("_", " "), r.detail].filter(Boolean).join(": ");
function classText(p) {
  return p.verdict === "not_fruit" ? "doesn't look like an apple, banana or orange" : `${NICE[p.predicted_class]} · ${pct(p.confidence)}`;
}

// Heat colour for a cell's share of the hottest cell, a in [0, 1]: transparent blue to opaque red.
function heat(a) {
  const r = Math.round(255 * Math.min(1, 2 * a)), g = Math.round(200 * Math.max(0, 1 - Math.abs(2 * a - 1)) + 40 * (1 - a));
  const b = Math.round(255 * Math.max(0, 1 - 2 * a));
  return [r, g, b, Math.round(255 * (0.15 + 0.6 * a))];
}

// The explanation's grid (rows top to bottom, fruitpipe.explain) drawn over the photo: one pixel per
// cell on a small canvas, upscaled by the browser's bilinear smoothing onto the overlay canvas.
function drawHeatmap(canvas, img, grid) {
  const rows = grid.length, cols = grid[0].length;
  const peak = Math.max(...grid.flat()) || 1;
  const small = document.createElement("canvas");
  small.width = cols; small.height = rows;
  const sctx = small.getContext("2d");
  const px = sctx.createImageData(cols, rows);
  grid.forEach((row, i) => row.forEach((v, j) => px.data.set(heat(v / peak), 4 * (i * cols + j))));
  sctx.putImageData(px, 0, 0);
  const w = img.clientWidth, hgt = img.clientHeight;
  canvas.width = w; canvas.height = hgt;
  const ctx = canvas.getContext("2d");
  ctx.imageSmoothingEnabled = true; ctx.imageSmoothingQuality = "high";
  // Each source pixel's centre lands on its cell's centre (half-pixel edges clamp at the border).
  ctx.drawImage(small, 0, 0, w, hgt);
  canvas.dataset.rows = String(rows); canvas.dataset.cols = String(cols);
  canvas.hidden = false;
}

let lastExplanation = null, lastPhoto = null;
// The heat map of the shown photo (or why there is none) under the preview; hidden while the
// "show where the model looked" toggle is off.
function showExplanation(explanation, unexplained) {
  lastExplanation = explanation;
  const canvas = $("heatmap"), cap = $("heat-caption"), img = $("preview");
  const on = $("explain-toggle").checked;
  canvas.hidden = true; cap.hidden = !on || (!explanation && !unexplained);
  if (!on) return;
  if (unexplained) cap.textContent = `No heat map: ${unexplained}`;
  if (explanation) {
    cap.textContent = `Heat map: where the evidence for "${NICE[explanation.explained_class] || explanation.explained_class}" ` +
      `lies (red: most; ${explanation.method}), a coarse guide, not an outline of the fruit.`;
    const draw = () => drawHeatmap(canvas, img, explanation.grid);
    if (img.hidden) return;  // a photo the browser cannot show: nothing to draw on
    if (img.complete && img.naturalWidth) draw(); else img.addEventListener("load", draw, { once: true });
  }
}

// Ticking the toggle after a photo was classified asks the server for its explanation then
// (the same photo again, with ?explain=true); unticking hides the heat map, re-ticking shows it.
async function toggleExplanation() {
  if ($("result").hidden || !lastPhoto) return;
  if (!$("explain-toggle").checked || lastExplanation) { showExplanation(lastExplanation, null); return; }
  showError("predict-error", "");
  $("predict-status").textContent = "Asking where the model looked…";
  const form = new FormData(); form.append("file", lastPhoto.blob, lastPhoto.name);
  try {
    const p = await api("/predict?explain=true", { method: "POST", body: form });
    showExplanation(p.explanation || null, null);
    $("predict-status").textContent = `Result: ${verdictText(p.verdict)}, ${classText(p)}.`;
    refreshStats();
  } catch (e) {
    $("predict-status").textContent = "";
    if (e.body?.error === "cannot_explain") showExplanation(null, e.message);
    else showError("predict-error", `${e.body?.error ? e.body.error + ": " : ""}${e.message}`);
  }
}

async function predictFile(file) {
  showError("predict-error", "");
  $("batch").hidden = true;
  const explain = $("explain-toggle").checked;
  $("predict-status").textContent = "Preparing the photo…";
  const photo = await preparePhotoFile(file);
  $("predict-status").textContent = "Classifying…";
  const form = new FormData(); form.append("file", photo.blob, photo.name);
  try {
    let p, unexplained = null;
    try {
      p = await api(explain ? "/predict?explain=true" : "/predict", { method: "POST", body: form });
    } catch (e) {
      if (e.body?.error !== "cannot_explain") throw e;
      unexplained = e.message;  // a model without a fine-tuned block: the prediction alone
      p = await api("/predict", { method: "POST", body: form });
    }
    const img = $("preview");
    img.hidden = false;
    // a format the browser cannot show (HEIC in Chromium): no preview, and no overlay to draw on
    img.addEventListener("error", () => { img.hidden = true; $("heatmap").hidden = true; }, { once: true });
    setPreview(img, photo.blob);
    const v = $("verdict");
    v.textContent = verdictText(p.verdict); v.className = `verdict ${p.verdict}`;
    v.dataset.verdict = p.verdict;
    $("pred-class").textContent = classText(p);
    $("pred-meta").textContent = `model ${p.model_version} · ${p.latency_ms.toFixed(1)} ms on the server`;
    $("pred-size").textContent = sizeLine(photo);
    $("pred-size").dataset.sentBytes = String(photo.sent.bytes);
    $("result").hidden = false;
    document.dispatchEvent(new CustomEvent("fruitpipe:prediction", { detail: { prediction: p, container: $("result") } }));
    barChart($("prob-chart"), LABELS.map((c) => ({ key: c, label: NICE[c], value: p.probabilities[c], color: classColor(c) })),
      { max: 1, fmt: pct, title: "class probabilities" });
    lastPhoto = photo;
    showExplanation(p.explanation || null, unexplained);
    $("predict-status").textContent = `Result: ${verdictText(p.verdict)}, ${classText(p)}.`;
    refreshStats();
  } catch (e) {
    $("result").hidden = true;
    $("predict-status").textContent = "";
    showError("predict-error", `${e.body?.error ? e.body.error + ": " : ""}${e.message}`);
  }
}

// ---------------------------------------------------------------- predict a batch
let batchUrls = [];
const CSV_COLUMNS = ["file", "verdict", "predicted_class", "confidence", "model_version", "error"];
// A CSV field: quoted, quotes doubled; a leading = + - @ is defused so a spreadsheet shows it as text.
const csvField = (v) => { let s = String(v ?? ""); if (/^[=+\-@\t\r]/.test(s)) s = "'" + s; return `"${s.replace(/"/g, '""')}"`; };

function chunks(photos) {
  const out = [];
  let cur = [], bytes = 0;
  for (const p of photos) {
    if (cur.length && (cur.length >= BATCH_FILES || bytes + p.blob.size > BATCH_BYTES)) { out.push(cur); cur = []; bytes = 0; }
    cur.push(p); bytes += p.blob.size;
  }
  if (cur.length) out.push(cur);
  return out;
}

// A batch row's thumbnail; a file the browser cannot decode (HEIC in Chromium) shows a neutral
// "no preview" box instead of a broken image.
function thumbnail(url) {
  const img = h("img", { src: url, alt: "", class: "thumb" });
  img.addEventListener("error", () => img.replaceWith(h("span", { class: "thumb none" }, "no preview")), { once: true });
  return img;
}

async function predictBatch(files) {
  showError("predict-error", "");
  $("result").hidden = true;
  const tbody = $("batch-table").querySelector("tbody");
  tbody.replaceChildren();
  batchUrls.forEach((u) => URL.revokeObjectURL(u)); batchUrls = [];
  const csvLink = $("batch-csv");
  if (csvLink.href) URL.revokeObjectURL(csvLink.href);
  csvLink.hidden = true; csvLink.removeAttribute("href");
  $("batch").hidden = false;
  $("batch-summary").textContent = `Preparing ${files.length} photos…`;
  $("predict-status").textContent = `Classifying ${files.length} photos…`;
  const photos = [];
  for (const f of files) photos.push(await preparePhotoFile(f));
  const rows = [];
  for (const group of chunks(photos)) {
    const form = new FormData();
    group.forEach((p) => form.append("files", p.blob, p.name));
    let answer;
    try {
      answer = await api("/predict/batch", { method: "POST", body: form });
    } catch (e) {
      answer = { results: group.map((p) => ({ filename: p.name, ok: false, error: e.body?.error || "error", detail: e.message })) };
    }
    group.forEach((photo, i) => {
      const r = answer.results[i] || { ok: false, error: "missing", detail: "no answer for this file" };
      const url = URL.createObjectURL(photo.blob); batchUrls.push(url);
      const p = r.prediction;
      const feedback = h("td", { class: "fb" });
      const tr = h("tr", { "data-verdict": p?.verdict || "error" },
        h("td", {}, thumbnail(url)),
        h("td", { class: "fname" }, photo.filename),
        // a file the server could not read: "error" where a verdict would be, and what went wrong in
        // words beside it (the API's code with spaces, then its detail): "truncated: image data ..."
        h("td", {}, p ? h("span", { class: `pill v-${p.verdict}` }, verdictText(p.verdict)) : h("span", { class: "pill rejected" }, "error")),
        h("td", {}, p ? (p.verdict === "not_fruit" ? "–" : NICE[p.predicted_class]) : errorText(r)),
        // a not-fruit answer has no fruit confidence: its top class's probability would read as
        // "this sure it is not fruit"
        p?.verdict === "not_fruit" ? h("td", { class: "num", title: "no fruit confidence: not a fruit" }, "–")
          : h("td", { class: "num" }, p ? pct(p.confidence) : "–"),
        feedback);
      tbody.append(tr);
      // "Wrong? tell us" in the row (feedback.js), named after the photo for screen readers
      if (p) document.dispatchEvent(new CustomEvent("fruitpipe:prediction",
        { detail: { prediction: p, container: feedback, subject: photo.filename } }));
      rows.push([photo.filename, p?.verdict ?? "", p?.predicted_class ?? "", p ? p.confidence.toFixed(4) : "",
        p?.model_version ?? "", p ? "" : `${r.error}: ${r.detail || ""}`]);
    });
  }
  const counts = {};
  rows.forEach((r) => { const k = r[1] || "error"; counts[k] = (counts[k] || 0) + 1; });
  const summary = `${rows.length} photos: ` + Object.entries(counts).map(([k, n]) => `${n} ${verdictText(k)}`).join(", ");
  $("batch-summary").textContent = summary;
  $("predict-status").textContent = `Batch done. ${summary}.`;
  const csv = [CSV_COLUMNS, ...rows].map((r) => r.map(csvField).join(",")).join("\r\n") + "\r\n";
  csvLink.href = URL.createObjectURL(new Blob([csv], { type: "text/csv" }));
  csvLink.hidden = rows.length === 0;
  refreshStats();
}

function handleFiles(list) {
  const files = [...list];
  if (files.length === 1) predictFile(files[0]);
  else if (files.length > 1) predictBatch(files);
}

function setupDrop() {
  const drop = $("drop"), input = $("file"), camera = $("camera");
  input.addEventListener("change", () => { handleFiles(input.files); input.value = ""; });
  camera.addEventListener("change", () => { handleFiles(camera.files); camera.value = ""; });
  drop.addEventListener("click", () => input.click());
  $("pick-btn").addEventListener("click", () => input.click());
  $("camera-btn").addEventListener("click", () => camera.click());
  ["dragenter", "dragover"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.add("over"); }));
  ["dragleave", "drop"].forEach((t) => drop.addEventListener(t, (e) => { e.preventDefault(); drop.classList.remove("over"); }));
  drop.addEventListener("drop", (e) => handleFiles(e.dataTransfer.files));
  $("explain-toggle").addEventListener("change", () => {
    if (!$("explain-toggle").checked) { $("heatmap").hidden = true; $("heat-caption").hidden = true; }
  });
  window.addEventListener("resize", () => {
    if (lastExplanation && !$("heatmap").hidden) drawHeatmap($("heatmap"), $("preview"), lastExplanation.grid);
  });
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

// What a retrain trains on: the seed data (light part of each bar) plus the uploads (dark part).
async function refreshDataset() {
  const d = await api("/dataset");
  const seed = d.seed || {};
  const hasSeed = d.seed_total > 0;
  $("dataset-total").textContent = d.total;
  $("dataset-seed-total").textContent = d.seed_total ?? 0;
  $("dataset-sum").textContent = (d.seed_total ?? 0) + d.total;
  $("dataset-note").dataset.seed = String(hasSeed);
  barChart($("dataset-chart"), LABELS.map((c) => ({ key: c, label: NICE[c], value: (seed[c] || 0) + (d.counts[c] || 0),
    part: seed[c] || 0, color: classColor(c) })),
    { fmt: (v) => String(v), partFmt: (it) => `${it.part} seed + ${it.value - it.part} uploaded` });
}

// ---------------------------------------------------------------- model performance + versions
function perfFrom(version) {
  const m = version?.metrics || {};
  if (m.source === "frozen" && m.per_class) return { src: `the frozen evaluation set (${m.n} fruit photos, the same for every version)`, ev: m };
  if (m.per_class) return { src: `the live model's manifest (${m.split || "test split"})`, ev: m };
  if (m.evaluation?.candidate?.per_class) return { src: `the gate evaluation on ${m.evaluation.candidate.n} images`, ev: m.evaluation.candidate };
  if (m.evaluation?.per_class) return { src: "the live model's evaluation", ev: m.evaluation };
  return null;
}

// The live model's architecture, from its manifest (a bundle names its backbone; older ones are MobileNetV2).
let archOf = null;
async function showArchitecture(version) {
  if (!version || archOf === version) return;
  try {
    const info = await api("/model-info");
    const b = info.backbone || {};
    const size = b.input_size || 224;
    const tuned = /b17/.test(info.head?.features || "") ? ", its last block (17) fine-tuned on our photos" : "";
    $("model-arch").textContent = `Architecture: ${b.name || "mobilenet_v2"} backbone (${b.quantization || "int8"}, ` +
      `${size}×${size} input${tuned}) + a trained head in numpy.`;
    $("model-arch").dataset.backbone = b.name || "mobilenet_v2";
    archOf = info.version;
    showComparison(b.name || "mobilenet_v2");
  } catch (_) { /* next refresh */ }
}

// The architecture comparison (fruitpipe compare; static/compare.json, written by scripts/report.py),
// with the live model's backbone marked. Text nodes only.
async function showComparison(backbone) {
  let c;
  try {
    const r = await fetch("static/compare.json");
    if (!r.ok) return;
    c = await r.json();
  } catch (_) { return; }
  const body = $("compare-table").querySelector("tbody");
  body.replaceChildren();
  const fmt = (v) => (v == null ? "–" : pct(v));
  for (const row of c.rows || []) {
    const tr = document.createElement("tr");
    tr.dataset.variant = row.name;
    const cells = [row.title, fmt(row.val_accuracy), fmt(row.fruits_test_accuracy), fmt(row.fruits_extra_test_accuracy),
      fmt(row.not_fruit_test_rejected), `${row.latency_ms.toFixed(1)} ms`, `${row.file_mb.toFixed(1)} MB`];
    cells.forEach((text, i) => { const td = document.createElement(i ? "td" : "th"); if (!i) td.scope = "row"; td.textContent = text; tr.append(td); });
    if (row.backbone === backbone && row.name.endsWith(backbone === "mobilenet_v2" ? "finetuned" : backbone)) tr.classList.add("live-row");
    body.append(tr);
  }
  $("compare-note").textContent = `Measured ${c.when}; every variant on the same splits, validation chose the default, the test sets chose nothing (docs/ml.md).`;
  $("compare-box").hidden = false;
}

function drawPerformance(live) {
  const p = perfFrom(live);
  const conf = $("confusion");
  if (!p) {
    const acc = live?.metrics?.accuracy;
    $("perf-source").textContent = `The live model (${live?.version || "none"}) has no per-class metrics on held-out photos yet` +
      (acc != null ? `; its accuracy is ${pct(acc)}.` : ".");
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
  // column heads on two lines ("F·" over "apl"), so they fit a phone's width without colliding
  const head = (c) => c === "not_fruit" ? ["rej."] : [short(c).slice(0, 2), h("br"), short(c).slice(2)];
  const t = h("table", {},
    h("thead", {}, h("tr", {}, h("th", { title: "rows: true class, columns: predicted", scope: "col" }, "true \\ pred"),
      ...cols.map((c) => h("th", { title: c, scope: "col", "aria-label": `predicted ${c}` }, ...head(c))))));
  const body = h("tbody");
  m.forEach((row, i) => {
    const tr = h("tr", {}, h("th", { title: LABELS[i], scope: "row", "aria-label": `true ${LABELS[i]}` }, short(LABELS[i])));
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

// The metrics a versions-table row shows: /models puts first the version's score on the frozen
// evaluation set when it has one (the same images for every version), else a held-out test score
// from its manifest, else none (its training-time figures, under metrics.training, do not compare).
function rowMetrics(v) {
  const m = v.metrics || {};
  if (m.source === "frozen") return { ev: m, note: `frozen evaluation set ${m.eval_set || ""}` };
  if (m.source === "manifest") return { ev: m, note: `from the manifest: ${m.split}` };
  return { ev: m, note: "no score on held-out photos" };
}

async function refreshVersions() {
  const data = await api("/models");
  const tbody = $("versions").querySelector("tbody");
  tbody.replaceChildren();
  for (const v of data.versions) {
    const { ev, note } = rowMetrics(v);
    const acc = ev.accuracy;
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
    const s = data.shadow;
    if (s?.status === "running" && s.version === v.version) {  // the running shadow, with its stop button
      const stop = h("button", { type: "button", class: "ghost", "aria-label": `Stop shadow of ${v.version}` }, "Stop shadow");
      stop.addEventListener("click", () => stopShadow(v.version));
      tbody.append(h("tr", { class: "shadow-row" }, h("td", { colspan: 7, class: "reason" },
        `in shadow since ${s.started}: ${s.seen?.n ?? 0} of ${s.requests} requests so far `, stop)));
    }
  }
  drawPerformance(data.versions.find((v) => v.status === "live"));
  showArchitecture(data.live);
}

// ---------------------------------------------------------------- admin: one sign-in for every write
// The token lives in sessionStorage (this tab only). Each write action shows its own errors in its
// own card; a 401/403 signs out, so the next write asks again.
const TOKEN_KEY = "fruitpipe-token";
const token = () => sessionStorage.getItem(TOKEN_KEY) || "";
const authHeaders = () => (token() ? { Authorization: `Bearer ${token()}` } : {});

function renderAdmin() {
  const signedIn = Boolean(token());
  const b = $("admin-btn");
  b.textContent = signedIn ? "sign out" : "sign in";
  b.setAttribute("aria-label", signedIn ? "admin: sign out" : "admin: sign in");
  b.dataset.signedIn = String(signedIn);
  b.setAttribute("aria-haspopup", signedIn ? "false" : "dialog");
}

function signOut() { sessionStorage.removeItem(TOKEN_KEY); renderAdmin(); }

// Resolves true once signed in (at once if already), false if the dialog was cancelled.
function ensureSignedIn() {
  if (token()) return Promise.resolve(true);
  const dlg = $("admin-dialog");
  $("token").value = "";
  showError("admin-error", "");
  return new Promise((resolve) => {
    dlg.addEventListener("close", () => resolve(Boolean(token())), { once: true });
    dlg.showModal();
  });
}

function setupAdmin() {
  const dlg = $("admin-dialog");
  // The token is checked (GET /auth/check: 204 valid, 401/403 not) before the dialog closes; a wrong
  // one shows its error inside the dialog and keeps the page signed out.
  $("admin-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const t = $("token").value.trim();
    if (!t) return;
    showError("admin-error", "");
    $("admin-ok").disabled = true;
    try {
      const r = await fetch("/auth/check", { headers: { Authorization: `Bearer ${t}` } });
      if (r.status === 401 || r.status === 403) { showError("admin-error", "That token is wrong: not signed in."); return; }
      if (!r.ok) { showError("admin-error", `Could not check the token: ${r.status} ${r.statusText}`); return; }
    } catch (_) {
      showError("admin-error", "Could not reach the server to check the token."); return;
    } finally {
      $("admin-ok").disabled = false;
    }
    sessionStorage.setItem(TOKEN_KEY, t);
    $("token").value = "";
    ["upload-error", "retrain-error", "versions-error"].forEach((box) => showError(box, ""));  // stale "sign in" errors
    renderAdmin();
    dlg.close();
  });
  $("admin-cancel").addEventListener("click", () => dlg.close());
  $("admin-btn").addEventListener("click", () => (token() ? signOut() : ensureSignedIn()));
  $("retrain-cancel").addEventListener("click", () => $("retrain-dialog").close("cancel"));
  renderAdmin();
}

// A write's error, shown in its own card; an auth failure also signs out.
function writeError(box, what, e) {
  if (e.status === 401 || e.status === 403) { signOut(); showError(box, `${what}: the admin token is missing or wrong; sign in again.`); }
  else showError(box, `${what}: ${e.message}`);
}

async function activate(version) {
  showError("versions-error", "");
  if (!(await ensureSignedIn())) return;
  try {
    await api(`/models/${encodeURIComponent(version)}/activate`, { method: "POST", headers: authHeaders() });
    await Promise.all([refreshVersions(), refreshStats()]);
  } catch (e) {
    writeError("versions-error", `activate ${version}`, e);
  }
}

// Stops the running shadow of ``version`` (never promoted, the live model unchanged); the banner
// (feedback.js) shows its final state.
async function stopShadow(version) {
  showError("versions-error", "");
  if (!(await ensureSignedIn())) return;
  try {
    await api(`/models/${encodeURIComponent(version)}/shadow/stop`, { method: "POST", headers: authHeaders() });
  } catch (e) {
    writeError("versions-error", `stop the shadow of ${version}`, e);
  }
  document.dispatchEvent(new CustomEvent("fruitpipe:models-changed"));
  await refreshVersions();
  $("versions").closest(".table-wrap").focus();  // the button is gone: keep the keyboard in the table
}

function uploadOne(file, label, li) {
  // XMLHttpRequest (not fetch) for upload progress events.
  return new Promise((resolve) => {
    const xhr = new XMLHttpRequest();
    const bar = li.querySelector("progress"), st = li.querySelector(".st");
    xhr.open("POST", "/upload-training-data");
    const auth = authHeaders();
    if (auth.Authorization) xhr.setRequestHeader("Authorization", auth.Authorization);
    xhr.upload.onprogress = (e) => { if (e.lengthComputable) bar.value = e.loaded / e.total; };
    const done = (status, text, http) => {
      bar.value = 1;
      st.textContent = text; st.className = `st st-${status}`;
      li.dataset.status = status;
      resolve(http);
    };
    xhr.onload = () => {
      let body = null;
      try { body = JSON.parse(xhr.responseText); } catch (_) { /* ignore */ }
      const item = body?.results?.[0];
      if (item) done(item.status, item.status + (item.detail || item.error ? `: ${item.detail || item.error}` : ""), xhr.status);
      else done("not_sent", `not sent: ${body?.detail || xhr.status}`, xhr.status);
    };
    xhr.onerror = () => done("not_sent", "not sent: network error", 0);
    const form = new FormData();
    form.append("class_name", label); form.append("files", file);
    xhr.send(form);
  });
}

// "5 added, 1 duplicate, 1 rejected" from the per-file statuses the API answered; a file the API
// never answered for (auth failure, network error, or not tried after one) is "not sent".
function uploadSummary(items) {
  const n = { added: 0, duplicate: 0, rejected: 0 };
  items.forEach((li) => { if (li.dataset.status in n) n[li.dataset.status]++; });
  const answered = n.added + n.duplicate + n.rejected, notSent = items.length - answered;
  if (!answered) return `${notSent} not sent`;
  return `${n.added} added, ${n.duplicate} duplicate, ${n.rejected} rejected` + (notSent ? `, ${notSent} not sent` : "");
}

async function upload(e) {
  e.preventDefault();
  showError("upload-error", "");
  const files = [...$("upload-files").files];
  const label = $("upload-class").value;
  if (!files.length) { showError("upload-error", "choose one or more images first"); return; }
  if (!(await ensureSignedIn())) { showError("upload-error", "uploading needs the admin sign-in"); return; }
  const list = $("upload-list");
  list.replaceChildren();
  const items = files.map((f) => {
    const li = h("li", {}, h("span", { class: "name" }, f.name), h("span", { class: "st" }, "waiting"),
      h("progress", { max: 1, value: 0, "aria-label": `upload of ${f.name}` }));
    list.append(li);
    return li;
  });
  $("upload-summary").textContent = `Uploading ${files.length} images…`;
  for (let i = 0; i < files.length; i++) {
    const status = await uploadOne(files[i], label, items[i]);
    if (status === 401 || status === 403) {
      writeError("upload-error", "upload", { status, message: "" });
      break;
    }
  }
  // rejected files first, so none is out of sight however long the list
  const rejected = items.filter((li) => li.dataset.status === "rejected" || li.dataset.status === "not_sent");
  list.prepend(...rejected);
  $("upload-summary").textContent = uploadSummary(items);
  $("upload-summary").dataset.summary = $("upload-summary").textContent;
  refreshDataset();
}

let polling = null;
// The bar never goes backwards within one run (a late or reordered status answer cannot pull it back).
let barRun = null, barPercent = 0;
function monotonicPercent(s, percent) {
  const run = s.run_id || s.started || null;
  if (run !== barRun) { barRun = run; barPercent = 0; }
  barPercent = Math.max(barPercent, Number(percent) || 0);
  return barPercent;
}

const fmtEta = (s) => (s < 60 ? `${Math.ceil(s)} s` : `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`);
function renderRetrain(s) {
  // While no run is going, show the first-start warm-up (embedding cache) when one runs.
  const warm = s.state !== "running" && s.warmup?.state === "running" ? s.warmup : null;
  const percent = warm ? warm.percent : s.percent;
  $("retrain-state").textContent = warm ? "preparing" : s.state;
  $("retrain-state").dataset.state = s.state;
  $("retrain-stage").textContent = warm ? `· ${warm.stage || "warm-up"} (first start)` : s.stage ? `· ${s.stage}` : "";
  const shown = monotonicPercent(warm ? { run_id: "warm-up" } : s, percent);
  $("retrain-pct").textContent = s.state === "idle" && !warm ? "" : `· ${shown.toFixed(shown < 100 ? 1 : 0)}%`;
  $("retrain-pct").dataset.percent = String(shown);
  $("retrain-eta").textContent = s.state === "running" && s.eta_seconds != null ? `· about ${fmtEta(s.eta_seconds)} left` : "";
  $("retrain-bar").style.width = `${shown}%`;
  $("retrain-progress").setAttribute("aria-valuenow", String(Math.round(shown)));
  $("retrain-btn").disabled = s.state === "running";
  // a run can be stopped until its gate; from then on it finishes its decision whole
  $("retrain-stop").hidden = s.state !== "running" || ["gate", "publishing", "done"].includes(s.stage);
  const r = s.result || {};
  let text = "";
  if (s.state === "succeeded") text = `Promoted ${r.version}: ${r.reason}`;
  else if (s.state === "rejected") text = `Kept ${r.live_version} live; candidate ${r.version} rejected: ${r.reason}`;
  else if (s.state === "failed") text = `Failed: ${r.error || "see the log"}`;
  else if (s.state === "cancelled") text = `Stopped: ${r.error || "cancelled"}`;
  else if (s.warmup?.state === "failed") {
    text = `Preparing the embedding cache failed (${s.warmup.error || "see the server log"}); the first retrain will do that work itself, more slowly.`;
  }
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

// Retraining asks for confirmation in a dialog, then starts with the admin sign-in.
async function retrain() {
  showError("retrain-error", "");
  if (!(await ensureSignedIn())) { showError("retrain-error", "retraining needs the admin sign-in"); return; }
  const dlg = $("retrain-dialog");
  dlg.returnValue = "";
  const confirmed = await new Promise((resolve) => {
    dlg.addEventListener("close", () => resolve(dlg.returnValue === "start"), { once: true });
    dlg.showModal();
  });
  if (!confirmed) return;
  try {
    const force = $("retrain-force").checked ? "?force=true" : "";
    renderRetrain(await api(`/retrain${force}`, { method: "POST", headers: authHeaders() }));
    if (!polling) polling = setInterval(pollRetrain, 1000);
  } catch (err) {
    writeError("retrain-error", "retrain", err);
  }
}

async function stopRetrain() {
  showError("retrain-error", "");
  if (!(await ensureSignedIn())) { showError("retrain-error", "stopping a retrain needs the admin sign-in"); return; }
  try {
    renderRetrain(await api("/retrain/cancel", { method: "POST", headers: authHeaders() }));
  } catch (err) {
    writeError("retrain-error", "stop", err);
  }
}

// ---------------------------------------------------------------- start
function init() {
  const sel = $("upload-class");
  LABELS.forEach((c) => sel.append(new Option(NICE[c], c)));
  setupAdmin();
  setupDrop();
  $("explain-toggle").addEventListener("change", toggleExplanation);
  $("upload-form").addEventListener("submit", upload);
  $("retrain-btn").addEventListener("click", retrain);
  $("retrain-stop").addEventListener("click", stopRetrain);
  refreshStats(); refreshDataset(); refreshVersions(); pollRetrain();
  setInterval(refreshStats, 3000);
  setInterval(refreshDataset, 15000);
  setInterval(refreshVersions, 15000);
  window.addEventListener("resize", () => { refreshStats(); refreshDataset(); });
}
document.addEventListener("DOMContentLoaded", init);
