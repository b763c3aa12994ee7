// The leanlm serve page: plain JS over the server's own HTTP API, no build step, no CDN.
"use strict";

const $ = (id) => document.getElementById(id);
const BUILT_IN = [  // neighbours to compare with before the user has typed anything
  "A gorgeous, witty, seductive movie.", "The plot is a mess and the acting is worse.",
  "Stocks fell sharply after the earnings report.", "The customer asked how to reset a password.",
  "An utterly delightful film from start to finish.", "Shares rallied as inflation cooled.",
];
const typed = [];  // texts embedded so far, newest first
let models = [];

function headers() {
  const h = { "Content-Type": "application/json" };
  const key = $("api-key").value.trim();
  if (key) h.Authorization = "Bearer " + key;
  return h;
}

async function call(path, body) {
  const r = await fetch(path, { method: "POST", headers: headers(), body: JSON.stringify(body) });
  const data = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error((data.error && data.error.message) || r.status + " " + r.statusText);
  return data;
}

function current() { return models.find((m) => m.id === $("model").value); }

function show(caps) {  // fields and result cards for what the chosen model can do
  document.querySelectorAll("#form [data-for]").forEach((el) => {
    el.hidden = !el.dataset.for.split(" ").some((c) => caps.includes(c));
  });
  document.querySelectorAll("section[data-for]").forEach((el) => { el.hidden = true; });
  $("text-label").textContent = caps.includes("generate") ? "Prompt" : "Text";
}

async function loadModels() {
  const r = await fetch("/v1/models", { headers: headers() });
  const data = await r.json();
  if (!r.ok) { fail(new Error(data.error ? data.error.message : r.statusText)); return; }
  models = data.data;
  const select = $("model");
  const chosen = select.value;
  select.innerHTML = "";
  for (const m of models) {
    const opt = document.createElement("option");
    opt.value = m.id;
    opt.textContent = `${m.id} (${m.task})`;
    select.appendChild(opt);
  }
  if (models.some((m) => m.id === chosen)) select.value = chosen;
  modelChanged();
}

function modelChanged() {
  const m = current();
  if (!m) return;
  $("model-info").textContent = `${m.backend}` + (m.techniques.length ? ", " + m.techniques.join(" + ") : "") +
    ` · ${m.capabilities.join(", ")}`;
  show(m.capabilities);
  $("error").hidden = true;
}

function fail(e) {
  $("error").textContent = e.message;
  $("error").hidden = false;
}

function bars(probabilities) {
  const box = $("probabilities");
  box.innerHTML = "";
  const rows = Object.entries(probabilities).sort((a, b) => b[1] - a[1]);
  for (const [label, p] of rows) {
    const row = document.createElement("div");
    row.className = "bar";
    row.innerHTML = '<span class="name"></span><span class="track"><span class="fill"></span></span>' +
      '<span class="num"></span>';
    row.querySelector(".name").textContent = label;
    row.querySelector(".fill").style.width = (100 * p).toFixed(1) + "%";
    row.querySelector(".num").textContent = p.toFixed(3);
    box.appendChild(row);
  }
}

async function classify(m, text) {
  const data = await call("/v1/classify", { model: m.id, input: text });
  const r = data.data[0];
  $("result-label").textContent = r.label;
  $("result-score").textContent = r.score.toFixed(3);
  bars(r.probabilities);
  $("classify-out").hidden = false;
}

async function neighbours(m, text) {
  const pool = [...new Set([...typed, ...BUILT_IN])].filter((t) => t !== text).slice(0, 30);
  const data = await call("/v1/embeddings", { model: m.id, input: [text, ...pool] });
  const vecs = data.data.map((d) => d.embedding);
  // the server L2-normalises, so the dot product is the cosine
  const scored = pool.map((t, i) => [vecs[i + 1].reduce((s, x, k) => s + x * vecs[0][k], 0), t]);
  scored.sort((a, b) => b[0] - a[0]);
  const list = $("neighbours");
  list.innerHTML = "";
  for (const [cos, t] of scored.slice(0, 5)) {
    const li = document.createElement("li");
    li.innerHTML = '<span class="num"></span><span class="text"></span>';
    li.querySelector(".num").textContent = cos.toFixed(3);
    li.querySelector(".text").textContent = t;
    list.appendChild(li);
  }
  if (!typed.includes(text)) typed.unshift(text);
  $("embed-out").hidden = false;
}

async function answer(m) {
  const question = $("question").value.trim(), context = $("context").value;
  if (!question || !context.trim()) throw new Error("type a question and a context");
  const r = await call("/v1/answer", { model: m.id, question, context });
  $("answer").textContent = r.answer;
  $("answer-score").textContent = `score ${r.score.toFixed(3)} · characters ${r.start}–${r.end}`;
  const p = $("answer-context");
  p.innerHTML = "";
  const mark = document.createElement("mark");
  mark.textContent = context.slice(r.start, r.end);
  p.append(context.slice(0, r.start), mark, context.slice(r.end));
  $("answer-out").hidden = false;
}

async function complete(m, prompt) {  // server-sent events from /v1/completions
  const out = $("completion");
  out.textContent = "";
  $("completion-state").textContent = "streaming…";
  $("generate-out").hidden = false;
  const r = await fetch("/v1/completions", { method: "POST", headers: headers(),
    body: JSON.stringify({ model: m.id, prompt, max_tokens: 48, stream: true }) });
  if (!r.ok) {
    const data = await r.json().catch(() => ({}));
    throw new Error((data.error && data.error.message) || r.statusText);
  }
  const reader = r.body.getReader(), decoder = new TextDecoder();
  let buffer = "", finish = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffer += decoder.decode(value, { stream: true });
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const event = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      if (!event.startsWith("data: ")) continue;
      const payload = event.slice(6);
      if (payload === "[DONE]") continue;
      const chunk = JSON.parse(payload);
      if (chunk.error) throw new Error(chunk.error.message);
      out.textContent += chunk.choices[0].text;
      finish = chunk.choices[0].finish_reason || finish;
    }
  }
  $("completion-state").textContent = finish ? `(finished: ${finish})` : "";
}

async function run(event) {
  event.preventDefault();
  const m = current();
  if (!m) return;
  $("error").hidden = true;
  $("run").disabled = true;
  $("busy").hidden = false;
  try {
    const text = $("text").value.trim();
    const caps = m.capabilities;
    if (caps.includes("answer")) await answer(m);
    if (!text && !caps.includes("answer")) throw new Error("type some text first");
    if (text && caps.includes("classify")) await classify(m, text);
    if (text && caps.includes("embed")) await neighbours(m, text);
    if (text && caps.includes("generate")) await complete(m, text);
  } catch (e) {
    fail(e);
  } finally {
    $("run").disabled = false;
    $("busy").hidden = true;
    refreshLatency();
  }
}

const ENDPOINT = { classify: "/v1/classify", embed: "/v1/embeddings", answer: "/v1/answer",
                   generate: "/v1/completions" };

async function refreshLatency() {
  try {
    const snap = await (await fetch("/metrics?format=json")).json();
    const m = current();
    const paths = m ? m.capabilities.map((c) => ENDPOINT[c]).filter((p) => snap.latency_ms[p]) : [];
    const parts = paths.map((p) => {
      const l = snap.latency_ms[p];
      return `${p.replace("/v1/", "")} p50 ${l.p50.toFixed(1)} ms · p99 ${l.p99.toFixed(1)} ms (n=${l.count})`;
    });
    $("latency").textContent = (parts.length ? parts.join(" | ") : "latency: no requests yet") +
      ` · queue ${snap.queue_depth}`;
  } catch (e) {
    $("latency").textContent = "latency: server unreachable";
  }
}

$("model").addEventListener("change", () => { modelChanged(); refreshLatency(); });
$("form").addEventListener("submit", run);
$("api-key").value = localStorage.getItem("leanlm-api-key") || "";
$("api-key").addEventListener("change", () => {
  localStorage.setItem("leanlm-api-key", $("api-key").value.trim());
  loadModels();
});
loadModels().then(refreshLatency);
setInterval(refreshLatency, 2000);
