// The review queue: keyboard-first labelling of captured predictions (admin).
// 1-6 = the six classes, 0 = not fruit, j/k or arrows = next/previous. Data from the API is put
// into the page as text only; the photo is fetched with the admin token and shown as a blob URL.
"use strict";

const ANSWERS = ["freshapples", "freshbanana", "freshoranges", "rottenapples", "rottenbanana", "rottenoranges"];
const NICE = { freshapples: "fresh apples", freshbanana: "fresh banana", freshoranges: "fresh oranges",
  rottenapples: "rotten apples", rottenbanana: "rotten banana", rottenoranges: "rotten oranges", not_fruit: "not fruit" };
const KEY_OF = Object.fromEntries([...ANSWERS.map((a, i) => [String(i + 1), a]), ["0", "not_fruit"]]);
const TOKEN_KEY = "fruitpipe-token";
const $ = (id) => document.getElementById(id);
const state = { items: [], index: 0, busy: false, photoUrl: null };

const token = () => sessionStorage.getItem(TOKEN_KEY) || "";
const auth = () => ({ Authorization: `Bearer ${token()}` });
const pct = (x) => (x === null || x === undefined ? "–" : `${(100 * x).toFixed(1)}%`);

function make(tag, attrs = {}, text) {
  const n = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, String(v));
  if (text !== undefined) n.textContent = text;
  return n;
}

async function api(path, opts = {}) {
  const r = await fetch(path, { ...opts, headers: { ...(opts.headers || {}), ...auth() } });
  const body = await r.json().catch(() => null);
  if (!r.ok) { const e = new Error(body?.detail || `${r.status}`); e.status = r.status; throw e; }
  return body;
}

function showError(id, msg) { $(id).textContent = msg || ""; $(id).hidden = !msg; }

async function load() {
  try {
    const q = await api("/review?limit=200");
    $("signin-card").hidden = true; $("queue-card").hidden = false;
    state.items = q.items; state.index = 0;
    $("queue-count").textContent = q.enabled ? `(${q.count})` : "(capture is switched off)";
    renderList(); await show();
  } catch (e) {
    $("signin-card").hidden = false; $("queue-card").hidden = true;
    showError("signin-error", e.status === 401 || e.status === 403 ? "the admin token is missing or wrong" : e.message);
  }
  loadAccuracy();
}

function renderList() {
  const list = $("list"); list.replaceChildren();
  state.items.forEach((it, i) => {
    const li = make("li", { "data-prediction-id": it.prediction_id },
      `${NICE[it.answered] || it.answered} (${it.verdict}, margin ${it.margin.toFixed(2)})`
      + (it.feedback ? ` · feedback: ${NICE[it.feedback.correct] || it.feedback.correct}` : ""));
    if (it.review) li.classList.add("done");
    if (i === state.index) li.classList.add("current");
    list.append(li);
  });
  $("empty").hidden = state.items.length > 0;
  $("current").hidden = state.items.length === 0;
}

async function show() {
  const it = state.items[state.index];
  if (!it) return;
  $("answer").textContent = `Model said: ${NICE[it.answered] || it.answered} · ${it.verdict} · ${pct(it.confidence)}`;
  $("why").textContent = `kept because: ${it.reasons.join(", ")} · ${it.captured} · model ${it.model_version}`;
  $("fb").textContent = it.feedback ? `User says: ${NICE[it.feedback.correct] || it.feedback.correct}` : "No feedback.";
  const filed = it.review?.dataset ? ` · dataset: ${it.review.dataset.status}` : "";
  $("done").textContent = it.review ? `Labelled ${NICE[it.review.label]}${filed}` : "";
  const keys = $("keys"); keys.replaceChildren();
  for (const [key, answer] of Object.entries(KEY_OF).sort((a, b) => (a[0] === "0") - (b[0] === "0") || a[0] - b[0])) {
    const b = make("button", { type: "button", "data-label": answer }, `${key} ${NICE[answer]}`);
    b.addEventListener("click", () => label(answer));
    keys.append(b);
  }
  const r = await fetch(it.image_url, { headers: auth() });
  if (state.photoUrl) URL.revokeObjectURL(state.photoUrl);
  state.photoUrl = r.ok ? URL.createObjectURL(await r.blob()) : null;
  $("photo").src = state.photoUrl || "";
}

async function label(answer) {
  const it = state.items[state.index];
  if (!it || state.busy) return;
  state.busy = true;
  try {
    const res = await api(`/review/${encodeURIComponent(it.prediction_id)}`, {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify({ label: answer }) });
    state.items[state.index] = res.item;
    showError("queue-error", "");
    if (state.index < state.items.length - 1) state.index += 1;
    renderList(); await show(); loadAccuracy();
  } catch (e) {
    showError("queue-error", e.message);
  } finally {
    state.busy = false;
  }
}

async function loadAccuracy() {
  try {
    const a = await api("/review/accuracy");
    $("acc-source").textContent = `model ${a.model_version || "–"}, reviews since ${a.since}; captures over-represent`
      + " hard cases (every uncertain answer and every feedback is kept), so this reads low.";
    const rows = [["all", a.all], ...Object.entries(a.all.per_class)];
    $("acc").replaceChildren(...rows.map(([name, r]) => {
      const tr = make("tr", { "data-class": name });
      for (const v of [NICE[name] || name, r.n, r.correct, pct(r.accuracy)]) tr.append(make("td", {}, v));
      return tr;
    }));
  } catch (_) { /* shown as empty */ }
}

document.addEventListener("keydown", (ev) => {
  if (ev.target instanceof HTMLInputElement || ev.target instanceof HTMLSelectElement || ev.ctrlKey || ev.metaKey || ev.altKey) return;
  if (KEY_OF[ev.key]) { ev.preventDefault(); label(KEY_OF[ev.key]); return; }
  const step = { j: 1, ArrowDown: 1, k: -1, ArrowUp: -1 }[ev.key];
  if (step && state.items.length) {
    ev.preventDefault();
    state.index = Math.max(0, Math.min(state.items.length - 1, state.index + step));
    renderList(); show();
  }
});

$("signin").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const t = $("token").value.trim();
  if (t) sessionStorage.setItem(TOKEN_KEY, t);
  $("token").value = "";
  load();
});

if (token()) load(); else loadAccuracy();
