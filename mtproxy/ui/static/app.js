// The page at /ui (mtproxy/ui/). One EventSource (/mtproxy/events) feeds every widget; what comes
// from runtimes or clients is only ever set as textContent, never as HTML.
"use strict";

const MAX_ROWS = 500;
const state = { session: null, overview: null, requests: [], points: [], markers: [], sampleSeconds: 5, spanSeconds: 900 };
const charts = {};
const $ = (id) => document.getElementById(id);

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined && text !== null) e.textContent = String(text);
  if (cls) e.className = cls;
  return e;
}

function fixed(v, digits) { return v === null || v === undefined ? "" : Number(v).toFixed(digits); }

async function api(path, options) {
  const opts = Object.assign({ credentials: "same-origin" }, options || {});
  opts.headers = Object.assign({ "Content-Type": "application/json" }, opts.headers || {});
  if (state.session && state.session.csrf) opts.headers["X-CSRF-Token"] = state.session.csrf;
  const resp = await fetch(path, opts);
  let body = null;
  try { body = await resp.json(); } catch (e) { body = null; }
  if (!resp.ok) {
    const msg = body && body.error ? (body.error.message || body.error) : "HTTP " + resp.status;
    throw new Error(msg);
  }
  return body;
}

// --- session -------------------------------------------------------------------------------
async function loadSession() {
  state.session = await api("/ui/session");
  const s = state.session;
  $("login").hidden = !(s.login_required && !s.logged_in);
  $("main").hidden = s.login_required && !s.logged_in;
  $("logout").hidden = !s.logged_in;
  $("who").textContent = s.logged_in ? (s.admin ? "admin" : "viewer") : (s.login_required ? "" : "open (no keys set)");
  const canAct = s.admin_enabled && s.admin;
  document.querySelectorAll("button.admin").forEach((b) => {
    b.disabled = !canAct;
    b.title = canAct ? "" : (s.admin_enabled ? "log in with an admin key" : "set server.admin_keys to enable actions");
  });
  document.body.dataset.admin = canAct ? "yes" : "no";
  if (!$("main").hidden) connect();
}

$("login-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  $("login-error").textContent = "";
  try {
    await api("/ui/login", { method: "POST", body: JSON.stringify({ key: $("login-key").value }) });
    $("login-key").value = "";
    await loadSession();
  } catch (e) { $("login-error").textContent = e.message; }
});

$("logout").addEventListener("click", async () => {
  await api("/ui/logout", { method: "POST", body: "{}" }).catch(() => null);
  if (source) { source.close(); source = null; }
  await loadSession();
});

// --- the event stream ------------------------------------------------------------------------
let source = null;
function connect() {
  if (source) return;
  source = new EventSource("/mtproxy/events");
  source.onopen = () => { $("conn").textContent = "live"; $("conn").className = "pill on"; };
  source.onerror = () => { $("conn").textContent = "reconnecting"; $("conn").className = "pill off"; };
  source.addEventListener("hello", (ev) => {
    const d = JSON.parse(ev.data);
    state.sampleSeconds = d.sample_seconds; state.spanSeconds = d.span_seconds;
    state.requests = d.requests.slice(-MAX_ROWS);
    state.points = d.points; state.markers = d.markers;
    renderOverview(d.overview);
    renderActivity();
    renderCharts(); renderMarkers();
    if (d.verify) renderVerify(d.verify);
  });
  source.addEventListener("overview", (ev) => renderOverview(JSON.parse(ev.data)));
  source.addEventListener("requests", (ev) => {
    const rows = JSON.parse(ev.data);
    state.requests = state.requests.concat(rows).slice(-MAX_ROWS);
    renderActivity();
  });
  source.addEventListener("series", (ev) => {
    const d = JSON.parse(ev.data);
    const cutoff = Date.now() / 1000 - state.spanSeconds;
    state.points = state.points.concat(d.points).filter((p) => p.t >= cutoff);
    state.markers = state.markers.concat(d.markers);
    renderCharts(); renderMarkers();
  });
  source.addEventListener("verify", (ev) => renderVerify(JSON.parse(ev.data)));
}

// --- overview --------------------------------------------------------------------------------
function setOptions(select, values, keepFirst) {
  const current = select.value;
  while (select.options.length > (keepFirst ? 1 : 0)) select.remove(select.options.length - 1);
  for (const v of values) { const o = el("option", v); o.value = v; select.appendChild(o); }
  if (values.includes(current)) select.value = current;
}

function mtpCell(models) {
  const td = el("td", null, "wrap");
  for (const m of models) {
    const line = el("div");
    const st = el("span", m.mtp === null ? "unknown" : m.mtp, m.mtp_mismatch ? "mtp-mismatch" : (m.mtp === "on" ? "mtp-on" : ""));
    line.appendChild(el("span", m.name + ": "));
    line.appendChild(st);
    if (m.mtp_why) line.appendChild(el("span", " (" + m.mtp_why + ")", "note"));
    td.appendChild(line);
  }
  return td;
}

async function action(path, label) {
  $("action-result").textContent = label + " …";
  try {
    const r = await api(path, { method: "POST", body: "{}" });
    $("action-result").textContent = label + ": " + (r.message || r.state || "done");
  } catch (e) { $("action-result").textContent = label + " failed: " + e.message; }
}

function renderOverview(o) {
  state.overview = o;
  const p = o.proxy || {};
  $("proxy-state").textContent = "in flight " + (p.in_flight ?? 0) + " · queued " + (p.queued ?? 0) + (o.history ? " · history on" : "");
  const tbody = $("backends").tBodies[0];
  tbody.replaceChildren();
  const models = new Map();
  for (const b of o.backends) {
    const tr = el("tr", null, b.up ? "up" : "down");
    tr.dataset.backend = b.name; tr.dataset.up = b.up ? "true" : "false";
    tr.appendChild(el("td", b.name));
    const health = el("td", null, "health wrap");
    health.appendChild(el("span", null, "dot"));
    health.appendChild(el("span", b.up ? "up" : "down"));
    if (b.detail) health.appendChild(el("span", " — " + b.detail, "note"));
    tr.appendChild(health);
    tr.appendChild(el("td", b.runtime));
    tr.appendChild(el("td", b.version || "?"));
    tr.appendChild(mtpCell(b.models));
    const m = b.managed;
    tr.appendChild(el("td", m ? m.in_flight : b.outstanding, "num"));
    tr.appendChild(el("td", m ? m.queue : "", "num"));
    tr.appendChild(el("td", m ? m.state + (m.failure ? " (" + m.failure + ")" : "") : "—", "wrap"));
    tr.appendChild(el("td", fixed(b.tokens_per_second, 1), "num tps"));
    const acts = el("td");
    if (m) {
      for (const verb of ["start", "stop"]) {
        const btn = el("button", verb, "admin");
        btn.type = "button";
        btn.disabled = document.body.dataset.admin !== "yes";
        btn.addEventListener("click", () => action("/mtproxy/backends/" + encodeURIComponent(b.name) + "/" + verb, verb + " " + b.name));
        acts.appendChild(btn);
      }
    }
    tr.appendChild(acts);
    tbody.appendChild(tr);
    for (const mod of b.models) {
      const e = models.get(mod.name) || { backends: [], trained: mod.mtp_trained, source: mod.mtp_trained_source, why: mod.mtp_trained_why };
      e.backends.push(b.name);
      models.set(mod.name, e);
    }
  }
  const aliases = new Map();
  for (const [alias, model] of Object.entries(o.aliases || {})) {
    if (!aliases.has(model)) aliases.set(model, []);
    aliases.get(model).push(alias);
  }
  const mbody = $("models").tBodies[0];
  mbody.replaceChildren();
  for (const [name, e] of models) {
    const tr = el("tr");
    tr.appendChild(el("td", name));
    tr.appendChild(el("td", (aliases.get(name) || []).join(", ")));
    tr.appendChild(el("td", e.backends.join(", ")));
    tr.appendChild(el("td", e.trained === null || e.trained === undefined ? "unknown" : (e.trained ? "yes" : "no")));
    tr.appendChild(el("td", e.source + (e.why ? " — " + e.why : ""), "wrap note"));
    mbody.appendChild(tr);
  }
  const names = [...models.keys()];
  const backends = o.backends.map((b) => b.name);
  setOptions($("f-model"), names, true);
  setOptions($("f-backend"), backends, true);
  setOptions($("pg-model"), names, false);
  setOptions($("verify-model"), names, false);
  setOptions($("verify-backend"), backends, true);
  setOptions($("verify-against"), backends, true);
}

$("reload").addEventListener("click", () => action("/mtproxy/reload", "reload"));

// --- activity --------------------------------------------------------------------------------
function timeOf(t) { return new Date(t * 1000).toLocaleTimeString(); }

function renderActivity() {
  const model = $("f-model").value, backend = $("f-backend").value, text = $("f-text").value.toLowerCase();
  const tbody = $("activity").tBodies[0];
  const frag = document.createDocumentFragment();
  let shown = 0;
  for (let i = state.requests.length - 1; i >= 0; i--) {
    const r = state.requests[i];
    if (model && r.model !== model) continue;
    if (backend && r.backend !== backend) continue;
    if (text && ![r.client, r.endpoint, r.model, r.backend, String(r.status)].some((v) => String(v).toLowerCase().includes(text))) continue;
    const ok = r.status === 200;
    const tr = el("tr", null, ok ? "" : "err");
    tr.appendChild(el("td", timeOf(r.time)));
    tr.appendChild(el("td", r.client + " " + r.endpoint + (r.stream ? " (stream)" : "")));
    tr.appendChild(el("td", r.model));
    tr.appendChild(el("td", r.backend + (r.mtp ? " · MTP" : "")));
    tr.appendChild(el("td", r.status));
    tr.appendChild(el("td", r.ttft_s === null ? "" : (r.ttft_s * 1000).toFixed(1), "num ttft"));
    tr.appendChild(el("td", fixed(r.decode_tps, 1), "num decode"));
    tr.appendChild(el("td", fixed(r.tokens_per_step, 2), "num"));
    tr.appendChild(el("td", r.drafted === null ? "" : r.drafted + " / " + (r.accepted ?? "?"), "num"));
    tr.appendChild(el("td", r.tokens_in ?? "", "num"));
    tr.appendChild(el("td", r.tokens_out ?? "", "num"));
    tr.appendChild(el("td", fixed(r.duration_s, 3), "num"));
    tr.appendChild(el("td", r.retries, "num"));
    frag.appendChild(tr);
    shown++;
  }
  tbody.replaceChildren(frag);
  $("activity-count").textContent = shown + " shown of the last " + state.requests.length;
  const q = new URLSearchParams();
  if (model) q.set("model", model);
  if (backend) q.set("backend", backend);
  for (const fmt of ["jsonl", "csv"]) {
    q.set("format", fmt);
    $("export-" + fmt).href = "/mtproxy/requests?" + q.toString();
  }
}
for (const id of ["f-model", "f-backend", "f-text"]) $(id).addEventListener("input", renderActivity);

// --- charts ----------------------------------------------------------------------------------
const PALETTE = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#ca8a04", "#db2777"];
const MARKER_COLOURS = { down: "#dc2626", up: "#16a34a", swap: "#9333ea", reload: "#0891b2", started: "#16a34a", stopped: "#6b7280" };

function markerPlugin() {
  return { hooks: { draw: [(u) => {
    const ctx = u.ctx, [lo, hi] = [u.scales.x.min, u.scales.x.max];
    ctx.save();
    ctx.font = "10px sans-serif";
    for (const m of state.markers) {
      if (m.t < lo || m.t > hi) continue;
      const x = Math.round(u.valToPos(m.t, "x", true));
      ctx.strokeStyle = ctx.fillStyle = MARKER_COLOURS[m.kind] || "#6b7280";
      ctx.setLineDash([4, 3]);
      ctx.beginPath(); ctx.moveTo(x, u.bbox.top); ctx.lineTo(x, u.bbox.top + u.bbox.height); ctx.stroke();
      ctx.fillText(m.kind + (m.backend ? " " + m.backend : ""), x + 3, u.bbox.top + 10);
    }
    ctx.restore();
  }] } };
}

function series(key, names) {
  const xs = state.points.map((p) => p.t);
  const data = [xs];
  for (const n of names) data.push(state.points.map((p) => (p[key] && p[key][n] !== undefined ? p[key][n] : null)));
  return data;
}

function namesOf(key) {
  const names = new Set();
  for (const p of state.points) for (const n of Object.keys(p[key] || {})) names.add(n);
  return [...names].sort();
}

function draw(id, labels, data) {
  const box = $(id);
  box.dataset.points = String(data[0].length);
  const last = data.slice(1).map((s) => s[s.length - 1]).filter((v) => v !== null && v !== undefined);
  box.dataset.last = last.length ? String(last.reduce((a, b) => a + b, 0)) : "";
  const sig = labels.join("\u0000");
  let chart = charts[id];
  if (!chart || chart.sig !== sig) {
    if (chart) chart.plot.destroy();
    const now = Date.now() / 1000;
    const opts = {
      width: Math.max(300, box.clientWidth || 440), height: 180, legend: { show: true },
      scales: { x: { time: true, range: () => [now - state.spanSeconds, Date.now() / 1000] } },
      series: [{}].concat(labels.map((l, i) => ({ label: l, stroke: PALETTE[i % PALETTE.length], width: 1.5, spanGaps: false }))),
      plugins: [markerPlugin()],
    };
    chart = charts[id] = { sig, plot: new uPlot(opts, data, box) };
  } else {
    chart.plot.setData(data);
  }
}

function renderCharts() {
  if (typeof uPlot === "undefined") return;
  const tps = namesOf("tps");
  draw("chart-tps", tps, series("tps", tps));
  const xs = state.points.map((p) => p.t);
  draw("chart-ttft", ["p50", "p95"], [xs, state.points.map((p) => p.ttft_p50), state.points.map((p) => p.ttft_p95)]);
  const steps = namesOf("tokens_per_step");
  draw("chart-steps", steps, series("tokens_per_step", steps));
  const acc = namesOf("acceptance");
  draw("chart-accept", acc, series("acceptance", acc));
}

function renderMarkers() {
  const ul = $("markers");
  ul.replaceChildren();
  for (const m of state.markers.slice(-20).reverse()) {
    ul.appendChild(el("li", timeOf(m.t) + " " + m.kind + (m.backend ? " " + m.backend : "") + (m.detail ? ": " + m.detail : "")));
  }
}

// --- verify ----------------------------------------------------------------------------------
function renderVerify(v) {
  const ol = $("verify-progress");
  ol.replaceChildren();
  for (const p of v.progress || []) {
    ol.appendChild(el("li", p.side + " " + p.backend + ": round " + p.round + "/" + p.rounds + ", " + p.tokens_per_second + " tokens/s"));
  }
  const verdict = $("verify-verdict");
  verdict.className = v.state === "verified" ? "verified" : (v.state === "running" ? "note" : "not-verified");
  if (v.state === "running") verdict.textContent = "verify " + v.model + ": running …";
  else if (v.state === "error") verdict.textContent = "verify " + v.model + ": " + v.error;
  else if (v.outcome) verdict.textContent = (v.state === "verified" ? "verified: " : "not verified: ") + v.outcome.message;
  verdict.dataset.state = v.state;
}

$("verify-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const body = { model: $("verify-model").value };
  if ($("verify-backend").value) body.backend = $("verify-backend").value;
  if ($("verify-against").value) body.against = $("verify-against").value;
  try { renderVerify(await api("/mtproxy/verify", { method: "POST", body: JSON.stringify(body) })); }
  catch (e) { $("verify-verdict").textContent = "verify failed: " + e.message; $("verify-verdict").dataset.state = "refused"; }
});

// --- playground ------------------------------------------------------------------------------
$("pg-form").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  const out = $("pg-output"), timing = $("pg-timing"), stats = $("pg-stats");
  out.textContent = ""; timing.replaceChildren(); stats.textContent = "sending …";
  const t0 = performance.now();
  const headers = { "Content-Type": "application/json" };
  if (state.session && state.session.csrf) headers["X-CSRF-Token"] = state.session.csrf;
  const body = { model: $("pg-model").value, stream: true, stream_options: { include_usage: true },
                 messages: [{ role: "user", content: $("pg-prompt").value }] };
  try {
    const resp = await fetch("/v1/chat/completions", { method: "POST", headers, body: JSON.stringify(body), credentials: "same-origin" });
    if (!resp.ok) {
      const err = await resp.json().catch(() => null);
      throw new Error(err && err.error ? err.error.message : "HTTP " + resp.status);
    }
    const reader = resp.body.getReader(), decoder = new TextDecoder();
    let buf = "", first = null, last = null, chunks = 0, usage = null;
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      const now = performance.now();
      buf += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buf.indexOf("\n\n")) >= 0) {
        const event = buf.slice(0, cut); buf = buf.slice(cut + 2);
        for (const line of event.split("\n")) {
          if (!line.startsWith("data: ") || line === "data: [DONE]") continue;
          const d = JSON.parse(line.slice(6));
          if (d.error) throw new Error(d.error.message || "stream error");
          if (d.usage) usage = d.usage;
          const text = d.choices && d.choices[0] && d.choices[0].delta ? d.choices[0].delta.content : null;
          if (!text) continue;
          if (first === null) first = now;
          last = now; chunks++;
          out.textContent += text;
          timing.appendChild(el("span", "+" + (now - t0).toFixed(0) + " ms " + JSON.stringify(text)));
        }
      }
    }
    const n = usage ? usage.completion_tokens : chunks;
    const rate = first !== null && last > first && n > 1 ? ((n - 1) / ((last - first) / 1000)).toFixed(1) : "?";
    stats.textContent = "TTFT " + (first === null ? "?" : (first - t0).toFixed(0) + " ms") + " · " + n + " tokens · " + rate + " tokens/s (decode, in this browser)";
  } catch (e) { stats.textContent = "failed: " + e.message; }
});

window.addEventListener("resize", () => { for (const c of Object.values(charts)) c.plot.setSize({ width: Math.max(300, c.plot.root.parentElement.clientWidth), height: 180 }); });
loadSession().catch((e) => { $("conn").textContent = "error: " + e.message; });
