// hookscope's dashboard: every panel is one request to the server's own API
// (/api/*, /query, /queries). Data from webhooks is attacker-controlled, so it is only
// ever put into the page as text (textContent), never as HTML.
"use strict";

const $ = (id) => document.getElementById(id);
const COLORS = ["#2563eb", "#dc2626", "#059669", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#4b5563"];
const WINDOWS = { "15m": 900, "1h": 3600, "6h": 21600, "24h": 86400, "7d": 604800, "30d": 2592000 };
const state = { cursor: null, paged: false, charts: {}, live: null, colors: {} };

class AuthNeeded extends Error {}

function token() {
  return sessionStorage.getItem("hookscope-token") || "";
}

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (token()) headers["Authorization"] = "Bearer " + token();
  const resp = await fetch(path, Object.assign({}, options, { headers }));
  if (resp.status === 401) {
    $("login").hidden = false;
    throw new AuthNeeded("this server needs its token");
  }
  if (!resp.ok) {
    let message = resp.status + " " + resp.statusText;
    try {
      const body = await resp.json();
      if (body && body.error) message = body.error;
    } catch (_) { /* not JSON */ }
    throw new Error(message);
  }
  return resp;
}

async function json(path, options) {
  return (await api(path, options)).json();
}

async function sql(query) {
  return json("/query", {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ sql: query, format: "json" }),
  });
}

function showError(where, e) {
  if (e instanceof AuthNeeded) return;
  $("status").textContent = where + ": " + (e && e.message ? e.message : String(e));
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v);
  }
  for (const c of children) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

function time(v) {
  if (v === null || v === undefined) return null;
  const s = String(v);
  const zoned = /[zZ]|[+-]\d\d:?\d\d$/.test(s) ? s : s + "Z";
  const t = Date.parse(zoned);
  return Number.isNaN(t) ? null : new Date(t);
}

function ago(v) {
  const t = time(v);
  if (!t) return "—";
  const s = Math.max(0, (Date.now() - t.getTime()) / 1000);
  if (s < 90) return Math.round(s) + " s ago";
  if (s < 5400) return Math.round(s / 60) + " min ago";
  if (s < 129600) return Math.round(s / 3600) + " h ago";
  return Math.round(s / 86400) + " d ago";
}

function num(v, digits = 0) {
  if (v === null || v === undefined || Number.isNaN(Number(v))) return "—";
  return Number(v).toLocaleString(undefined, { maximumFractionDigits: digits });
}

function pct(v) {
  return v === null || v === undefined ? "—" : num(100 * v, 1) + "%";
}

function colorOf(source) {
  if (!state.colors[source]) {
    state.colors[source] = COLORS[Object.keys(state.colors).length % COLORS.length];
  }
  return state.colors[source];
}

function table(rows, columns, onRow) {
  if (!rows.length) return el("p", { class: "hint" }, "Nothing yet.");
  const cols = columns || Object.keys(rows[0]);
  const head = el("tr", {}, ...cols.map((c) => el("th", { scope: "col" }, c)));
  const body = el("tbody");
  for (const row of rows) {
    const cells = cols.map((c) => {
      const v = row[c];
      return el("td", {}, v === null || v === undefined ? "" : typeof v === "object" ? JSON.stringify(v) : String(v));
    });
    const tr = el("tr", {}, ...cells);
    if (onRow) {
      tr.className = "row";
      tr.tabIndex = 0;
      tr.addEventListener("click", () => onRow(row));
      tr.addEventListener("keydown", (e) => {
        if (e.key === "Enter") onRow(row);
      });
    }
    body.append(tr);
  }
  return el("div", { class: "scroll" }, el("table", {}, el("thead", {}, head), body));
}

function windowSeconds() {
  return WINDOWS[$("window").value] || 3600;
}

// About 60 points per chart, on round bucket sizes.
function bucketSeconds(w) {
  const steps = [10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400];
  return steps.find((s) => w / s <= 80) || 86400;
}

async function loadTiles() {
  const w = $("window").value;
  const stats = await json("/api/stats?window=" + encodeURIComponent(w));
  const tiles = $("tiles");
  tiles.replaceChildren();
  const names = $("source-names");
  names.replaceChildren();
  if (!stats.sources.length) {
    tiles.append(el("p", { class: "hint" }, "No deliveries in this window. Send some: hookscope simulate"));
  }
  for (const s of stats.sources) {
    names.append(el("option", { value: s.source }));
    const last = time(s.last_seen);
    const gap = s.deliveries ? stats.window_seconds / s.deliveries : Infinity;
    const quiet = last && (Date.now() - last.getTime()) / 1000 > Math.max(60, 5 * gap);
    const rate = s.per_second >= 1 ? num(s.per_second, 1) + " /s" : num(60 * (s.per_second || 0), 1) + " /min";
    const rows = [
      ["deliveries", num(s.deliveries)],
      ["rate", rate],
      ["errors", pct(s.error_ratio)],
      ["app failures", pct(s.failure_ratio)],
      ["duplicates", pct(s.duplicate_ratio)],
      ["signature failures", num(s.signature_failures)],
      ["processing p95", s.processing_p95_ms === undefined ? "—" : num(s.processing_p95_ms, 0) + " ms"],
      ["last seen", ago(s.last_seen)],
    ];
    const dl = el("dl");
    for (const [k, v] of rows) dl.append(el("dt", {}, k), el("dd", {}, v));
    const tile = el("article", { class: "tile" + (quiet ? " quiet" : ""), "aria-label": "source " + s.source },
      el("h3", {}, s.source, quiet ? el("span", { class: "flag" }, " · quiet") : null), dl);
    tiles.append(tile);
  }
}

// (t, source, v) rows → uPlot's columns, one series per source.
function pivot(rows, zeroFill) {
  const xs = [...new Set(rows.map((r) => Number(r.t)))].sort((a, b) => a - b);
  const index = new Map(xs.map((x, i) => [x, i]));
  const sources = [...new Set(rows.map((r) => r.source))].sort();
  const series = sources.map(() => xs.map(() => (zeroFill ? 0 : null)));
  for (const r of rows) {
    const s = sources.indexOf(r.source);
    series[s][index.get(Number(r.t))] = r.v === null ? null : Number(r.v);
  }
  return { xs, sources, series };
}

function draw(id, rows, zeroFill) {
  const target = $(id);
  const { xs, sources, series } = pivot(rows, zeroFill);
  if (state.charts[id]) {
    state.charts[id].destroy();
    delete state.charts[id];
  }
  target.replaceChildren();
  if (!xs.length) {
    target.append(el("p", { class: "hint" }, "No data in this window."));
    return;
  }
  const width = Math.max(280, target.clientWidth || 400);
  const end = Date.now() / 1000;
  const w = windowSeconds();
  const opts = {
    width,
    height: 200,
    scales: { x: { time: true, range: () => [end - w, end] } },
    legend: { live: false },
    series: [{}].concat(sources.map((s) => ({ label: s, stroke: colorOf(s), width: 1.5, spanGaps: false }))),
  };
  state.charts[id] = new uPlot(opts, [xs].concat(series), target);
}

async function loadCharts() {
  const w = windowSeconds();
  const b = bucketSeconds(w);
  const since = `now() - INTERVAL '${w} seconds'`;
  const bin = (col) => `date_part('epoch', date_bin(INTERVAL '${b} seconds', ${col}))`;
  const raw = {
    volume: `SELECT ${bin("received_at")} AS t, source, count(*) AS v FROM deliveries WHERE received_at > ${since} GROUP BY 1, 2 ORDER BY 1`,
    size: `SELECT ${bin("received_at")} AS t, source, avg(payload_size) AS v FROM deliveries WHERE received_at > ${since} GROUP BY 1, 2 ORDER BY 1`,
    retries: `SELECT ${bin("received_at")} AS t, source, sum(CASE WHEN is_duplicate THEN 1 ELSE 0 END) AS v FROM deliveries WHERE received_at > ${since} GROUP BY 1, 2 ORDER BY 1`,
  };
  // Long windows read the hourly rollup, when the server keeps it.
  const rollup = {
    volume: `SELECT ${bin("hour")} AS t, source, sum(deliveries) AS v FROM rollup_hourly_traffic WHERE hour > ${since} GROUP BY 1, 2 ORDER BY 1`,
    size: `SELECT ${bin("hour")} AS t, source, sum(bytes) / sum(deliveries) AS v FROM rollup_hourly_traffic WHERE hour > ${since} GROUP BY 1, 2 ORDER BY 1`,
    retries: `SELECT ${bin("hour")} AS t, source, sum(duplicates) AS v FROM rollup_hourly_traffic WHERE hour > ${since} GROUP BY 1, 2 ORDER BY 1`,
  };
  const fromRollup = w > 86400;
  const pick = async (name) => {
    if (fromRollup) {
      try {
        return await sql(rollup[name]);
      } catch (e) {
        if (e instanceof AuthNeeded) throw e;
      }
    }
    return sql(raw[name]);
  };
  const [volume, size, retries, errors, latency] = await Promise.all([
    pick("volume"),
    pick("size"),
    pick("retries"),
    sql(`SELECT ${bin("reported_at")} AS t, source, 100.0 * avg(CASE WHEN status = 'failure' THEN 1.0 ELSE 0.0 END) AS v FROM outcomes WHERE reported_at > ${since} GROUP BY 1, 2 ORDER BY 1`),
    sql(`SELECT ${bin("reported_at")} AS t, source, approx_percentile_cont(processing_time_ms, 0.95) AS v FROM outcomes WHERE reported_at > ${since} GROUP BY 1, 2 ORDER BY 1`),
  ]);
  draw("chart-volume", volume, true);
  draw("chart-errors", errors, false);
  draw("chart-latency", latency, false);
  draw("chart-size", size, false);
  draw("chart-retries", retries, true);
}

async function loadAlerts() {
  const alerts = await json("/api/alerts?limit=50");
  const target = $("alerts");
  target.replaceChildren(
    alerts.length
      ? table(alerts, ["state", "rule", "source", "severity", "message", "fired_at", "resolved_at"])
      : el("p", { class: "hint" }, "No alert has fired."),
  );
}

function eventQuery(cursor) {
  const p = new URLSearchParams({ limit: "25" });
  const add = (k, v) => {
    if (v) p.set(k, v);
  };
  add("source", $("f-source").value.trim());
  add("event_type", $("f-type").value.trim());
  add("status", $("f-status").value);
  add("q", $("f-q").value);
  if ($("f-dup").checked) p.set("duplicate", "true");
  if (cursor) p.set("cursor", cursor);
  return "/api/events?" + p.toString();
}

const EVENT_COLUMNS = ["received_at", "source", "event_type", "attempt", "signature_status", "payload_size", "status_code", "outcome", "id"];

async function loadEvents(more) {
  const page = await json(eventQuery(more ? state.cursor : null));
  const target = $("events");
  if (more && target.querySelector("tbody")) {
    const extra = table(page.events, EVENT_COLUMNS, openEvent);
    const rows = extra.querySelectorAll("tbody tr");
    const body = target.querySelector("tbody");
    rows.forEach((r) => body.append(r));
  } else {
    target.replaceChildren(table(page.events, EVENT_COLUMNS, openEvent));
  }
  state.cursor = page.next_cursor;
  state.paged = Boolean(more);
  $("more").hidden = !page.next_cursor;
}

function pretty(delivery) {
  if (delivery.body_json !== undefined) return JSON.stringify(delivery.body_json, null, 2);
  if (delivery.body !== null && delivery.body !== undefined) return String(delivery.body);
  if (delivery.body_base64) return "(binary body, base64)\n" + delivery.body_base64;
  return "(no body)";
}

async function openEvent(row) {
  const id = typeof row === "string" ? row : row.id;
  const detail = $("detail");
  try {
    const one = await json("/api/events/" + encodeURIComponent(id));
    const d = one.delivery;
    const facts = [
      ["id", d.id], ["received", d.received_at], ["source", d.source], ["provider", d.provider],
      ["event type", d.event_type], ["event id", d.event_id], ["attempt", d.attempt],
      ["signature", d.signature_status], ["answered", d.status_code], ["payload bytes", d.payload_size],
    ];
    const dl = el("dl", { class: "facts" });
    for (const [k, v] of facts) dl.append(el("dt", {}, k), el("dd", {}, v === null || v === undefined ? "—" : String(v)));
    detail.replaceChildren(
      el("h3", {}, "Delivery ", d.id),
      el("button", { type: "button", onclick: () => { detail.hidden = true; history.replaceState(null, "", "#"); } }, "Close"),
      dl,
      el("h4", {}, "Attempts of this event"),
      table(one.attempts, ["received_at", "attempt", "retry_gap_ms", "status_code", "signature_status", "id"], (r) => openEvent(r.id)),
      el("h4", {}, "Outcome"),
      table(one.outcomes, ["reported_at", "status", "processing_time_ms", "error_type", "error_message"]),
      el("h4", {}, "Headers (secrets redacted)"),
      el("pre", {}, JSON.stringify(d.headers, null, 2)),
      el("h4", {}, "Body"),
      el("pre", { class: "body" }, pretty(d)),
    );
    detail.hidden = false;
    detail.dataset.id = d.id;
    history.replaceState(null, "", "#event=" + encodeURIComponent(d.id));
    detail.focus();
  } catch (e) {
    showError("delivery " + id, e);
  }
}

async function runSql(query) {
  const target = $("sql-result");
  try {
    const rows = await sql(query);
    target.replaceChildren(el("p", { class: "hint" }, rows.length + " rows"), table(rows.slice(0, 500)));
  } catch (e) {
    if (e instanceof AuthNeeded) return;
    target.replaceChildren(el("p", { class: "bad" }, e.message));
  }
}

async function downloadParquet() {
  try {
    const resp = await api("/query", {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ sql: $("sql").value, format: "parquet" }),
    });
    const blob = await resp.blob();
    const link = el("a", { href: URL.createObjectURL(blob), download: "hookscope.parquet" });
    document.body.append(link);
    link.click();
    link.remove();
  } catch (e) {
    showError("download", e);
  }
}

async function loadSaved() {
  const list = await json("/queries");
  const select = $("saved");
  // Loaded again after a token is entered: keep only the prompt.
  while (select.options.length > 1) select.remove(1);
  for (const q of list) {
    if (!q.name || q.error) continue;
    select.append(el("option", { value: q.name, title: q.description || "" }, q.name));
  }
}

async function runSaved(name) {
  if (!name) return;
  const target = $("sql-result");
  try {
    const q = await json("/queries/" + encodeURIComponent(name));
    $("sql").value = "-- saved query " + name + " (runs with its default parameters)\n" + q.sql;
    const rows = await json("/queries/" + encodeURIComponent(name) + "/run", { method: "POST" });
    target.replaceChildren(el("p", { class: "hint" }, name + ": " + rows.length + " rows"), table(rows.slice(0, 500)));
  } catch (e) {
    if (e instanceof AuthNeeded) return;
    target.replaceChildren(el("p", { class: "bad" }, e.message));
  }
}

// The live tail: Server-Sent Events read through fetch (so the token can be sent).
async function live() {
  if (state.live) return;
  const controller = new AbortController();
  state.live = controller;
  const list = $("live");
  try {
    const resp = await api("/api/events/stream", { signal: controller.signal });
    const reader = resp.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const block = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("\n");
        if (!data || !block.includes("event: delivery")) continue;
        let d;
        try {
          d = JSON.parse(data);
        } catch (_) {
          continue;
        }
        const t = time(d.received_at);
        const item = el("li", { "data-id": d.id },
          (t ? t.toLocaleTimeString() : "") + "  " + d.source + "  " + (d.event_type || "—") + "  " +
          d.signature_status + "  attempt " + (d.attempt ?? "?") + "  " + d.payload_size + " B");
        item.addEventListener("click", () => openEvent(d.id));
        list.prepend(item);
        while (list.children.length > 50) list.lastChild.remove();
      }
    }
  } catch (e) {
    if (!(e instanceof AuthNeeded) && e.name !== "AbortError") {
      /* the server went away or dropped a slow reader: reconnect below */
    }
  } finally {
    state.live = null;
  }
  setTimeout(() => { live().catch(() => {}); }, 3000);
}

async function refresh() {
  const jobs = [
    ["sources", loadTiles],
    ["charts", loadCharts],
    ["alerts", loadAlerts],
    // The list is left alone while the user reads further pages.
    ["deliveries", () => (state.paged ? Promise.resolve() : loadEvents(false))],
  ];
  $("status").textContent = "";
  await Promise.all(jobs.map(([name, job]) => job().catch((e) => showError(name, e))));
}

function start() {
  $("login-form").addEventListener("submit", (e) => {
    e.preventDefault();
    sessionStorage.setItem("hookscope-token", $("token").value.trim());
    $("login").hidden = true;
    boot();
  });
  $("refresh").addEventListener("click", () => {
    state.paged = false;
    refresh();
  });
  $("window").addEventListener("change", () => refresh());
  $("filters").addEventListener("submit", (e) => {
    e.preventDefault();
    state.paged = false;
    loadEvents(false).catch((err) => showError("deliveries", err));
  });
  $("more").addEventListener("click", () => loadEvents(true).catch((err) => showError("deliveries", err)));
  $("sql-form").addEventListener("submit", (e) => {
    e.preventDefault();
    runSql($("sql").value);
  });
  $("parquet").addEventListener("click", () => downloadParquet());
  $("saved").addEventListener("change", (e) => runSaved(e.target.value));
  window.addEventListener("resize", () => {
    for (const [id, chart] of Object.entries(state.charts)) {
      chart.setSize({ width: Math.max(280, $(id).clientWidth || 400), height: 200 });
    }
  });
  setInterval(() => {
    if ($("auto").checked && !document.hidden) refresh();
  }, 10000);
  boot();
}

async function boot() {
  await refresh();
  // For tests and scripts: the first load finished.
  document.body.dataset.ready = "1";
  loadSaved().catch((e) => showError("saved queries", e));
  live().catch(() => {});
  // Links: #event=<id> opens a delivery, #sql=<query> runs SQL.
  const hash = new URLSearchParams(location.hash.slice(1));
  if (hash.get("event")) openEvent(hash.get("event"));
  if (hash.get("sql")) {
    $("sql").value = hash.get("sql");
    runSql(hash.get("sql"));
  }
}

// A script error is shown (and counted for tests) instead of passing unnoticed.
function countError(message) {
  document.body.dataset.errors = String(Number(document.body.dataset.errors || 0) + 1);
  $("status").textContent = "page error: " + message;
}
window.addEventListener("error", (e) => countError(e.message));
window.addEventListener("unhandledrejection", (e) => countError(String(e.reason)));

document.addEventListener("DOMContentLoaded", start);
