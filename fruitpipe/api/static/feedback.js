// "Wrong? tell us" under each prediction result. Self-contained: the dashboard announces each
// answer with a `fruitpipe:prediction` event ({prediction, container, subject?}: the single result,
// or one row of a batch, whose photo's name is the subject); this adds a small form to the
// container that POSTs /feedback {prediction_id, correct}. Text only, never innerHTML.
"use strict";

(() => {
  const ANSWERS = [["freshapples", "fresh apples"], ["freshbanana", "fresh banana"], ["freshoranges", "fresh oranges"],
    ["rottenapples", "rotten apples"], ["rottenbanana", "rotten banana"], ["rottenoranges", "rotten oranges"],
    ["not_fruit", "not a fruit"]];

  function make(tag, attrs = {}, text) {
    const n = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs)) n.setAttribute(k, String(v));
    if (text !== undefined) n.textContent = text;
    return n;
  }

  function widget(prediction, subject) {
    const box = make("div", { class: "feedback small", "data-prediction-id": prediction.prediction_id });
    // the visible text starts the accessible name (WCAG 2.5.3), the photo tells the rows apart
    const about = subject ? { "aria-label": `Wrong? tell us about ${subject}` } : {};
    const open = make("button", { type: "button", class: "link feedback-open", ...about }, "Wrong? tell us");
    const form = make("form", { class: "feedback-form", hidden: "" });
    const select = make("select", { "aria-label": subject ? `the right answer for ${subject}` : "the right answer" });
    for (const [value, text] of ANSWERS) select.append(make("option", { value }, text));
    const send = make("button", { type: "submit" }, "Send");
    const note = make("span", { class: "muted feedback-note", role: "status" });
    form.append("It is ", select, " ", send);
    open.addEventListener("click", () => { form.hidden = false; open.hidden = true; select.focus(); });
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      send.disabled = true;
      try {
        const r = await fetch("/feedback", { method: "POST", headers: { "Content-Type": "application/json" },
          body: JSON.stringify({ prediction_id: prediction.prediction_id, correct: select.value }) });
        const body = await r.json().catch(() => ({}));
        if (r.ok) { form.hidden = true; note.textContent = "Thanks: a person will look at it."; return; }
        note.textContent = body.error === "capture_disabled" ? "This service does not keep photos for review."
          : body.error === "unknown_prediction" ? "Too late for this one: its photo is no longer held."
          : `Could not send: ${body.detail || r.status}`;
      } catch (e) {
        note.textContent = `Could not send: ${e.message}`;
      } finally {
        send.disabled = false;
      }
    });
    box.append(open, form, note);
    return box;
  }

  // A card with the live model's accuracy on reviewed captures (GET /review/accuracy).
  async function accuracyCard() {
    const main = document.querySelector("main");
    if (!main) return;
    let a;
    try { const r = await fetch("/review/accuracy"); if (!r.ok) return; a = await r.json(); } catch (_) { return; }
    const pct = (x) => (x === null || x === undefined ? "–" : `${(100 * x).toFixed(1)}%`);
    const card = make("section", { class: "card", id: "label-accuracy" });
    card.append(make("h2", {}, "Accuracy on reviewed photos"),
      make("p", { class: "muted small" }, `model ${a.model_version || "–"}, reviews since ${a.since.slice(0, 10)}: `
        + `${a.all.correct} of ${a.all.n} right (${pct(a.all.accuracy)}). Reviewed photos over-sample hard cases.`));
    const table = make("table", { class: "review-acc" });
    const head = make("tr");
    for (const t of ["class", "reviewed", "accuracy"]) head.append(make("th", {}, t));
    table.append(head);
    for (const [name, row] of Object.entries(a.all.per_class)) {
      const tr = make("tr", { "data-class": name });
      for (const v of [name.replace("_", " "), row.n, pct(row.accuracy)]) tr.append(make("td", {}, v));
      table.append(tr);
    }
    const link = make("a", { href: "/static/review.html" }, "review queue");
    card.append(table, make("p", { class: "small" }), link);
    document.getElementById("label-accuracy")?.remove();
    main.append(card);
  }
  // Automatic rollbacks and the latest shadow evaluation (GET /models), as a banner over the page.
  async function modelEvents() {
    let m;
    try { const r = await fetch("/models"); if (!r.ok) return; m = await r.json(); } catch (_) { return; }
    document.getElementById("model-events")?.remove();
    const lines = (m.rollbacks || []).map((e) => `Automatic rollback at ${e.at}: ${e.from} → ${e.to} (${e.reason})`);
    const s = m.shadow;
    if (s) lines.push(s.status === "running" ? `Shadow: ${s.version} running (${s.seen?.n ?? 0} of ${s.requests} requests)`
      : `Shadow: ${s.version} ${s.status}${s.reason ? ` (${s.reason})` : ""}`);
    if (!lines.length) return;
    const box = make("section", { class: "card wide model-events", id: "model-events", role: "status" });
    for (const line of lines) box.append(make("p", { class: "small" }, line));
    document.querySelector("main")?.prepend(box);
  }
  function learningCards() { accuracyCard(); modelEvents(); }
  document.addEventListener("fruitpipe:models-changed", modelEvents);  // e.g. a shadow stopped from the dashboard
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", learningCards);
  else learningCards();

  document.addEventListener("fruitpipe:prediction", (ev) => {
    const { prediction, container, subject } = ev.detail || {};
    if (!prediction?.prediction_id || !container) return;
    container.querySelectorAll(":scope > .feedback").forEach((n) => n.remove());
    container.append(widget(prediction, subject));
  });
})();
