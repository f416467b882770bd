// catzilla_mp dashboard: renders the "snapshot" events of {base}/events.
// No framework and no build step: a few render functions that replace the
// content of fixed elements, and two hand-drawn <canvas> line charts.
"use strict";
(function () {
  const BASE = document.body.dataset.base.replace(/\/$/, "");
  const HISTORY = 300;              // seconds kept for the charts (the server sends as much)
  const PRIOS = ["critical", "high", "normal", "low"];
  let series = [];                  // per-second points, oldest first
  let last = null;                  // the latest snapshot
  let openTask = null;              // task id shown in the detail panel

  const $ = (id) => document.getElementById(id);
  const fmtInt = (n) => (n === null || n === undefined) ? "–" : Number(n).toLocaleString("en-US");
  const fmtMs = (ms) => (ms === null || ms === undefined) ? "–"
    : ms >= 1000 ? (ms / 1000).toFixed(2) + " s" : ms >= 10 ? ms.toFixed(0) + " ms" : ms.toFixed(2) + " ms";
  const fmtBytes = (b) => (b === null || b === undefined) ? "–"
    : b >= 1 << 30 ? (b / (1 << 30)).toFixed(2) + " GiB" : (b / (1 << 20)).toFixed(1) + " MiB";
  const fmtTime = (t) => t ? new Date(t * 1000).toLocaleTimeString() : "–";

  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") e.className = v; else if (k.startsWith("data-")) e.setAttribute(k, v); else e[k] = v;
    }
    for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(c === null || c === undefined ? "" : String(c)));
    return e;
  }

  function taskLink(id, label) {
    const a = el("a", { class: "task", href: "#", title: id, "data-task-id": id }, label || id);
    a.addEventListener("click", (ev) => { ev.preventDefault(); showTask(id); });
    return a;
  }

  function setText(id, text) { const e = $(id); if (e.textContent !== text) e.textContent = text; }

  // -- rendering ---------------------------------------------------------------

  function render(s) {
    last = s;
    const e = s.engine;
    setText("engine-info", `${e.mode} mode · pid ${e.pid} · up ${Math.round(e.uptime_s)} s` +
      (e.segment ? ` · ${e.segment}` : "") + (e.closed ? " · SHUT DOWN" : ""));
    setText("total-queued", fmtInt(s.total_queued));
    setText("total-running", fmtInt(s.workers.filter((w) => w.current_task).length));
    for (const k of ["submitted", "completed", "failed", "retried", "timed_out", "crashed"]) {
      setText("total-" + k, fmtInt(s.totals[k]));
    }
    setText("rate", s.stats.tasks_per_second.toFixed(1));
    setText("p95", s.stats.p95_execution_time_ms ? fmtMs(s.stats.p95_execution_time_ms) : "–");
    renderQueues(s.queues);
    renderWorkers(s);
    renderFailures(s.failures);
    renderRecent(s.recent);
    drawCharts();
  }

  function renderQueues(q) {
    const box = $("queues");
    const max = Math.max(1, ...PRIOS.map((p) => q[p] || 0));
    box.replaceChildren(...PRIOS.map((p) => {
      const bar = el("div"); bar.style.width = (100 * (q[p] || 0) / max) + "%";
      return el("div", { class: "qrow", id: "q-" + p }, el("span", {}, p), el("div", { class: "qbar" }, bar),
        el("span", { class: "n", id: "q-" + p + "-n" }, fmtInt(q[p] || 0)));
    }));
  }

  function renderWorkers(s) {
    const e = s.engine;
    setText("workers-note", `${s.workers.length} live (min ${e.min_workers}, max ${e.max_workers})` +
      (e.workers_started !== null ? ` · ${e.workers_started} started · ${e.worker_crashes} crashed` : ""));
    $("workers-body").replaceChildren(...s.workers.map((w) => {
      const cur = w.current_task;
      return el("tr", { "data-pid": w.pid, "data-index": w.index },
        el("td", {}, w.index), el("td", { class: "pid" }, w.pid || "thread"),
        el("td", {}, el("span", { class: "badge " + w.state }, w.state)),
        el("td", {}, cur ? taskLink(cur.task_id, cur.name + (cur.running_s !== null ? ` (${cur.running_s.toFixed(1)} s)` : "")) : "–"),
        el("td", { class: "num" }, w.cpu_percent === null ? "–" : w.cpu_percent.toFixed(0)),
        el("td", { class: "num" }, fmtBytes(w.rss_bytes)),
        el("td", { class: "num done" }, fmtInt(w.tasks_done)),
        el("td", { class: "num" }, fmtInt(w.tasks_failed)),
        el("td", { class: "num" }, w.heartbeat_age_s === null ? "–" : w.heartbeat_age_s.toFixed(1) + " s"));
    }));
  }

  // Lists are rebuilt only when they changed, so a row under the mouse stays put.
  const shown = {};
  function changed(key, value) {
    const text = JSON.stringify(value);
    if (shown[key] === text) return false;
    shown[key] = text;
    return true;
  }

  function renderFailures(list) {
    if (!changed("failures", list)) return;
    $("failures-body").replaceChildren(...list.map((f) => el("tr", { "data-task-id": f.task_id },
      el("td", {}, fmtTime(f.at)), el("td", {}, taskLink(f.task_id, f.name)),
      el("td", { class: "etype" }, f.error_type), el("td", { class: "msg" }, f.message),
      el("td", {}, el("span", { class: "badge " + (f.final ? "failed" : "retrying") },
        f.final ? "failed" : `retry ${f.attempt}`)))));
  }

  function renderRecent(list) {
    if (!changed("recent", list)) return;
    $("recent-body").replaceChildren(...list.map((t) => el("tr", {},
      el("td", {}, taskLink(t.task_id, t.name)), el("td", {}, el("span", { class: "badge " + t.status }, t.status)),
      el("td", {}, t.priority), el("td", { class: "num" }, fmtMs(t.exec_ms)), el("td", { class: "num" }, t.attempts))));
  }

  // -- charts --------------------------------------------------------------------

  function drawCharts() {
    const xs = series.map((p) => p.t);
    // drawn in this order: the line that matters most (completed) ends on top
    lineChart($("chart-throughput"), xs, [
      { name: "submitted", color: "#58a6ff", values: series.map((p) => p.submitted) },
      { name: "failed", color: "#f85149", values: series.map((p) => p.failed) },
      { name: "completed", color: "#3fb950", values: series.map((p) => p.completed) },
    ]);
    // log scale: one slow task must not flatten the milliseconds of all the others
    lineChart($("chart-latency"), xs, [
      { name: "p99", color: "#ffa198", values: series.map((p) => p.p99) },
      { name: "p95", color: "#e3b341", values: series.map((p) => p.p95) },
      { name: "p50", color: "#7ee787", values: series.map((p) => p.p50) },
    ], true);
  }

  function lineChart(canvas, xs, lines, log) {
    const dpr = window.devicePixelRatio || 1;
    const w = canvas.clientWidth, h = canvas.clientHeight;
    if (!w || !h) return;
    if (canvas.width !== Math.round(w * dpr)) { canvas.width = Math.round(w * dpr); canvas.height = Math.round(h * dpr); }
    const g = canvas.getContext("2d");
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    g.clearRect(0, 0, w, h);
    const L = 44, R = 8, T = 18, B = 18;
    const now = xs.length ? xs[xs.length - 1] : Math.floor(Date.now() / 1000);
    // the window grows with the data: a young engine gets a readable minute, not 5 squeezed seconds
    const span = Math.min(HISTORY, Math.max(60, Math.ceil((xs.length ? now - xs[0] + 1 : 0) / 60) * 60));
    const x0 = now - span + 1;
    let ymax = 0, ymin = Infinity;
    for (const l of lines) for (const v of l.values) {
      if (v === null) continue;
      if (v > ymax) ymax = v;
      if (v > 0 && v < ymin) ymin = v;
    }
    const px = (t) => L + (w - L - R) * (t - x0) / (span - 1);
    let py, ticks;
    if (log) {  // decades from below the smallest to above the largest value
      const lo = Math.floor(Math.log10(isFinite(ymin) ? ymin : 0.1)), hi = Math.max(lo + 1, Math.ceil(Math.log10(ymax || 1)));
      py = (v) => T + (h - T - B) * (1 - (Math.log10(Math.max(v, Math.pow(10, lo))) - lo) / (hi - lo));
      ticks = []; for (let e = lo; e <= hi; e++) ticks.push(Math.pow(10, e));
    } else {
      ymax = niceCeil(ymax || 1);
      py = (v) => T + (h - T - B) * (1 - v / ymax);
      ticks = [0, 1, 2, 3, 4].map((i) => ymax * i / 4);
    }
    g.font = "11px system-ui, sans-serif"; g.strokeStyle = "#26313d"; g.fillStyle = "#7d8a99"; g.lineWidth = 1;
    for (const v of ticks) {
      const y = Math.round(py(v)) + 0.5;
      g.beginPath(); g.moveTo(L, y); g.lineTo(w - R, y); g.stroke();
      g.textAlign = "right"; g.fillText(shortNum(v), L - 4, y + 4);
    }
    g.textAlign = "center";
    const step = span / 6;
    for (let i = 6; i >= 0; i--) {
      const ago = Math.round(i * step);
      g.fillText(ago ? (ago % 60 ? `-${ago}s` : `-${ago / 60}m`) : "now", Math.min(px(now - ago), w - R - 10), h - 4);
    }
    let lx = L;
    for (const l of lines) {
      g.strokeStyle = l.color; g.lineWidth = 1.6; g.beginPath();
      let pen = false;
      l.values.forEach((v, i) => {
        if (v === null || xs[i] < x0) { pen = false; return; }
        const x = px(xs[i]), y = py(v);
        if (pen) g.lineTo(x, y); else g.moveTo(x, y);
        pen = true;
      });
      g.stroke();
      g.fillStyle = l.color; g.textAlign = "left"; g.fillRect(lx, 4, 10, 3); g.fillText(l.name, lx + 13, 10);
      lx += 20 + g.measureText(l.name).width;
    }
  }

  function niceCeil(v) {
    const p = Math.pow(10, Math.floor(Math.log10(v)));
    for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
    return 10 * p;
  }
  function shortNum(v) { return v >= 1e6 ? +(v / 1e6).toFixed(2) + "M" : v >= 1e3 ? +(v / 1e3).toFixed(2) + "k" : +v.toFixed(2) + ""; }

  // -- task detail -----------------------------------------------------------------

  async function showTask(id) {
    openTask = id;
    const panel = $("detail");
    panel.hidden = false;
    setText("detail-title", id);
    let d;
    try {
      const r = await fetch(BASE + "/task/" + encodeURIComponent(id), { headers: { Accept: "application/json" } });
      d = r.ok ? await r.json() : null;
    } catch (err) { d = null; }
    if (openTask !== id) return;
    const rows = d ? [
      ["task", d.name], ["status", d.status], ["priority", d.priority], ["attempts", `${d.attempts} (max retries ${d.max_retries})`],
      ["worker", d.worker_id], ["created", fmtTime(d.created_at)], ["started", fmtTime(d.started_at)],
      ["finished", fmtTime(d.completed_at)], ["waited", fmtMs(d.wait_ms)], ["ran", fmtMs(d.exec_ms)],
      ["timeout", d.timeout_ms + " ms"], ["progress", d.progress === null ? "–" : `${Math.round(d.progress * 100)} % ${d.progress_message || ""}`],
      ["result", d.result === null ? "–" : d.result],
      ["error", d.error ? `${d.error.type}: ${d.error.message}` : "–"],
    ] : [["", "this task is not known (any more) to the engine"]];
    $("detail-fields").replaceChildren(...rows.flatMap(([k, v]) => [el("dt", {}, k), el("dd", { "data-field": k }, v)]));
    const pre = $("detail-error");
    pre.hidden = !(d && d.error);
    pre.textContent = d && d.error ? d.error.traceback : "";
  }
  $("detail-close").addEventListener("click", () => { openTask = null; $("detail").hidden = true; });
  document.addEventListener("keydown", (ev) => { if (ev.key === "Escape") $("detail-close").click(); });

  // -- the stream ------------------------------------------------------------------

  // The server may end each stream after one event (Catzilla: see catzilla_routes.py);
  // EventSource then reconnects by itself, so "down" means no snapshot for a while,
  // not merely a closed stream.
  let lastSeen = 0;
  setInterval(() => { $("conn").className = Date.now() - lastSeen < 5000 ? "conn up" : "conn down"; }, 1000);

  function onSnapshot(s) {
    lastSeen = Date.now();
    $("conn").className = "conn up";
    if (s.series_reset) series = s.series.slice();
    else {
      const lastT = series.length ? series[series.length - 1].t : -1;
      for (const p of s.series) if (p.t > lastT) series.push(p);
    }
    if (series.length > HISTORY) series = series.slice(series.length - HISTORY);
    render(s);
    document.body.dataset.updates = String(Number(document.body.dataset.updates || 0) + 1);
  }

  function connectSse() {
    document.body.dataset.transport = "sse";
    const src = new EventSource(BASE + "/events");
    src.addEventListener("snapshot", (ev) => onSnapshot(JSON.parse(ev.data)));
  }

  // A WebSocket where the server offers one (data-ws, the ASGI integration); the SSE
  // stream otherwise, or when the socket never opens (a proxy that drops upgrades).
  let lastId = null;
  function connectWs() {
    const url = (location.protocol === "https:" ? "wss://" : "ws://") + location.host + BASE + "/ws"
      + (lastId === null ? "" : "?last_event_id=" + encodeURIComponent(lastId));
    let opened = false;
    const ws = new WebSocket(url);
    ws.onopen = () => { opened = true; document.body.dataset.transport = "websocket"; };
    ws.onmessage = (ev) => {
      const m = JSON.parse(ev.data);
      if (m.event !== "snapshot") return;
      lastId = m.id;
      onSnapshot(m.data);
    };
    ws.onclose = () => { if (opened) setTimeout(connectWs, RECONNECT_MS); else connectSse(); };
  }
  const RECONNECT_MS = 2000;
  window.addEventListener("resize", () => { if (last) drawCharts(); });
  if (document.body.dataset.ws === "1" && "WebSocket" in window) connectWs(); else connectSse();
})();
