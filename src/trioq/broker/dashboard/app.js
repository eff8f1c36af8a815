// trioq dashboard: plain JavaScript, no build step, no external resources.
//
// Auth (docs/dashboard.md): the page itself needs no token. Every API call carries
// the token in `Authorization: Bearer`; the page asks for it once (only when the
// broker answers 401) and keeps it in this tab's sessionStorage. The WebSocket is
// opened with the token as the subprotocol `trioq.bearer.<base64url>` beside `trioq`
// (a browser cannot set a header on a handshake). A 401 asks for the token again; a
// 403 says which call the token's scope may not make.
//
// Live updates: the WebSocket (`/v1/ws`, JSON-RPC) answers calls and, once the page
// sends `subscribeStats`, pushes `{event: "stats", data}` (no `id`) after each commit
// that changed the stats (at most 4 a second) and every 2 s; each push refreshes
// the panels, and a slow tick (5 s) reads the rest. A broker without subscribeStats
// (older) answers it as an unknown method: the page then reads once a second over
// the socket instead. While the socket cannot be opened, the same reads go over HTTP
// with exponential backoff on errors, and the socket is retried with backoff.
"use strict";

(() => {
  const TOKEN_KEY = "trioq.token";
  const TICK_MS = 1000;
  const PUSH_TICK_MS = 5000;
  const METRICS_EVERY_MS = 1000;
  const MAX_BACKOFF_MS = 30000;
  const CALL_TIMEOUT_MS = 10000;
  const CHART_SAMPLES = 120;
  const DEAD_PAGE = 20;
  const TOKEN_RULE = /^[\x21-\x7e]+$/;

  const $ = (id) => document.getElementById(id);

  // ------------------------------------------------------------------ errors

  class ApiError extends Error {
    constructor(status, tag, message, body) {
      super(message);
      this.status = status;
      this.tag = tag;
      this.body = body || {};
    }
  }

  const STATUS_OF_TAG = { Unauthorized: 401, Forbidden: 403, JobNotFound: 404, NotFound: 404,
    LeaseLost: 409, JobNotDead: 409, PayloadTooLarge: 413, BrokerProtocolError: 400 };

  function describe(err) {
    if (!(err instanceof ApiError)) return String(err && err.message ? err.message : err);
    if (err.status === 403) return `Forbidden: ${err.message}`;
    if (err.tag === "NotLeader") {
      const leader = err.body.leader;
      return leader ? `this broker is not the leader; the leader is ${leader}` : `no leader yet: ${err.message}`;
    }
    return `${err.tag || err.status}: ${err.message}`;
  }

  // ------------------------------------------------------------------ token

  const auth = {
    token: sessionStorage.getItem(TOKEN_KEY) || "",
    waiting: false,
    set(token) {
      this.token = token;
      if (token) sessionStorage.setItem(TOKEN_KEY, token);
      else sessionStorage.removeItem(TOKEN_KEY);
    },
    headers() {
      return this.token ? { Authorization: `Bearer ${this.token}` } : {};
    },
    ask(message) {
      this.waiting = true;
      $("auth-message").textContent = message;
      $("auth").hidden = false;
      setConn("unauthorized", "token needed");
      $("token-input").focus();
    },
  };

  function base64url(text) {
    return btoa(text).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
  }

  // ------------------------------------------------------------------ HTTP

  async function http(method, path, body) {
    const sent = auth.token;
    const init = { method, headers: { ...auth.headers() }, cache: "no-store" };
    if (body !== undefined) {
      init.headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    let response;
    try {
      response = await fetch(path, init);
    } catch (err) {
      throw new ApiError(0, "Unreachable", `the broker does not answer (${err.message})`);
    }
    const text = await response.text();
    let data = null;
    if (text) {
      try { data = JSON.parse(text); } catch { data = text; }
    }
    if (!response.ok) {
      const tag = data && data._tag ? data._tag : String(response.status);
      const message = data && data.message ? data.message : response.statusText;
      throw onAuthError(new ApiError(response.status, tag, message, data), sent);
    }
    return data;
  }

  // `sent`: the token the refused request carried. A 401 to a request sent with an
  // older token (one in flight when a new token was given) is not about this one.
  function onAuthError(err, sent = auth.token) {
    if (err.status === 401 && !auth.waiting && sent === auth.token) {
      const had = Boolean(auth.token);
      auth.set("");
      live.close();
      auth.ask(had ? "The broker refused this token (401 Unauthorized): give a valid token."
        : "This broker needs a token (401 Unauthorized): give one to continue.");
    }
    return err;
  }

  function query(params) {
    const q = new URLSearchParams();
    for (const [k, v] of Object.entries(params)) if (v !== null && v !== undefined && v !== "") q.set(k, v);
    const s = q.toString();
    return s ? `?${s}` : "";
  }

  // REST equivalents of the WebSocket reads (same shapes)
  const REST = {
    getStats: () => http("GET", "/v1/stats"),
    listJobs: (p) => http("GET", `/v1/jobs${query(p)}`),
    listDead: (p) => http("GET", `/v1/dead${query(p)}`),
    getJob: (p) => http("GET", `/v1/jobs/${encodeURIComponent(p.jobId)}`),
  };

  // ------------------------------------------------------------------ WebSocket

  const live = {
    ws: null,
    open: false,
    pushing: false,
    nextId: 1,
    pending: new Map(),
    retryMs: 1000,
    retryTimer: null,

    connect() {
      clearTimeout(this.retryTimer);
      if (this.ws || auth.waiting) return;
      const scheme = location.protocol === "https:" ? "wss:" : "ws:";
      const protocols = auth.token ? ["trioq", `trioq.bearer.${base64url(auth.token)}`] : [];
      let ws;
      try {
        ws = new WebSocket(`${scheme}//${location.host}/v1/ws`, protocols);
      } catch {
        this.scheduleRetry();
        return;
      }
      this.ws = ws;
      ws.onopen = () => {
        this.open = true;
        this.retryMs = 1000;
        setConn("websocket", "live (WebSocket)");
        this.subscribe().finally(() => tick());
      };
      ws.onmessage = (event) => {
        let reply;
        try { reply = JSON.parse(event.data); } catch { return; }
        if (!reply || typeof reply !== "object") return;
        // a push has no id (every reply has one, null included)
        if (!("id" in reply)) {
          if (reply.event === "stats" && ws === this.ws) onPush(reply);
          return;
        }
        const waiter = this.pending.get(reply.id);
        if (!waiter) return;
        this.pending.delete(reply.id);
        clearTimeout(waiter.timer);
        if (reply.ok) waiter.resolve(reply.result);
        else {
          const e = reply.error || {};
          waiter.reject(onAuthError(new ApiError(STATUS_OF_TAG[e._tag] || 503, e._tag, e.message, e)));
        }
      };
      ws.onclose = () => {
        const wasOpen = this.open;
        const wasPushing = this.pushing;
        this.ws = null;
        this.open = false;
        this.pushing = false;
        for (const waiter of this.pending.values()) {
          clearTimeout(waiter.timer);
          waiter.reject(new ApiError(0, "Disconnected", "the WebSocket closed"));
        }
        this.pending.clear();
        if (!auth.waiting) setConn("polling", wasOpen ? "polling (WebSocket lost)" : "polling (HTTP)");
        this.scheduleRetry();
        if (wasPushing && !auth.waiting) tick(); // back to reading every second
      };
    },

    // ask the broker to push the stats; an older broker answers "unknown method"
    // (and a token that may not read the stats, Forbidden): then the page polls
    async subscribe() {
      try {
        await this.send("subscribeStats");
        this.pushing = true;
        setConn("websocket", "live (WebSocket, pushed)");
      } catch {
        this.pushing = false;
      }
    },

    scheduleRetry() {
      if (auth.waiting) return;
      clearTimeout(this.retryTimer);
      this.retryTimer = setTimeout(() => this.connect(), this.retryMs);
      this.retryMs = Math.min(this.retryMs * 2, MAX_BACKOFF_MS);
    },

    close() {
      clearTimeout(this.retryTimer);
      if (this.ws) {
        this.ws.onclose = null;
        this.ws.close();
      }
      this.ws = null;
      this.open = false;
      this.pushing = false;
      this.pending.clear();
    },

    // a read over the socket when it is open, else over HTTP (also when the socket
    // drops or stalls under the call)
    call(method, params) {
      if (!this.open) return REST[method](params || {});
      return this.send(method, params).catch((err) => {
        if (err.status === 0) return REST[method](params || {});
        throw err;
      });
    },

    send(method, params) {
      const id = this.nextId++;
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => {
          this.pending.delete(id);
          reject(new ApiError(0, "Timeout", `${method} got no answer`));
        }, CALL_TIMEOUT_MS);
        this.pending.set(id, { resolve, reject, timer });
        this.ws.send(JSON.stringify({ id, method, params: params || {} }));
      });
    },
  };

  function setConn(state, text) {
    const conn = $("conn");
    conn.dataset.state = state;
    conn.textContent = text;
  }

  // ------------------------------------------------------------------ helpers

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v;
      else if (k === "dataset") Object.assign(node.dataset, v);
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v);
    }
    for (const child of children) node.append(child instanceof Node ? child : String(child ?? ""));
    return node;
  }

  // a panel's message line: what an action (a button, the form) answered stays until
  // the next action or a failed refresh; a refresh only replaces its own messages
  function say(id, text, kind, from = "refresh") {
    const node = $(id);
    if (from === "refresh" && node.dataset.from === "action" && kind !== "error") return;
    node.textContent = text || "";
    node.dataset.kind = kind || "";
    node.dataset.from = from;
  }

  function age(ms) {
    if (typeof ms !== "number") return "–";
    const s = Math.max(0, Math.round((Date.now() - ms) / 1000));
    if (s < 120) return `${s}s`;
    if (s < 7200) return `${Math.round(s / 60)}m`;
    if (s < 172800) return `${Math.round(s / 3600)}h`;
    return `${Math.round(s / 86400)}d`;
  }

  const fmt = (n) => (typeof n === "number" ? n.toLocaleString("en-US") : "–");

  // ------------------------------------------------------------------ stats

  const samples = [];
  let features = { filters: false, byType: false };

  function renderStats(stats) {
    $("stat-unclaimed").textContent = fmt(stats.unclaimed);
    $("stat-inprogress").textContent = fmt(stats.inProgress);
    $("stat-completed").textContent = fmt(stats.completedTotal);
    const byType = stats.byType;
    $("by-type-wrap").hidden = !byType;
    if (byType) {
      const rows = Object.entries(byType).sort(([a], [b]) => a.localeCompare(b))
        .map(([type, c]) => el("tr", {}, el("td", { title: type }, type), el("td", { class: "num" }, fmt(c.unclaimed)),
          el("td", { class: "num" }, fmt(c.inProgress))));
      $("by-type").tBodies[0].replaceChildren(...rows);
      $("type-list").replaceChildren(...Object.keys(byType).map((t) => el("option", { value: t })));
    }
  }

  function addSample(completed, enqueued) {
    samples.push({ t: performance.now(), completed, enqueued });
    while (samples.length > CHART_SAMPLES + 1) samples.shift();
    const rates = [];
    for (let i = 1; i < samples.length; i++) {
      const a = samples[i - 1], b = samples[i];
      const dt = (b.t - a.t) / 1000;
      if (dt <= 0) continue;
      rates.push({
        completed: Math.max(0, (b.completed - a.completed) / dt),
        submitted: a.enqueued === undefined || b.enqueued === undefined ? null
          : Math.max(0, (b.enqueued - a.enqueued) / dt),
      });
    }
    drawChart(rates);
  }

  function drawChart(rates) {
    const peak = Math.max(1, ...rates.map((r) => Math.max(r.completed, r.submitted || 0)));
    const x = (i) => (CHART_SAMPLES <= 1 ? 0 : (600 * (CHART_SAMPLES - rates.length + i)) / (CHART_SAMPLES - 1));
    const y = (v) => 116 - (v / peak) * 110;
    const line = (key) => rates.map((r, i) => (r[key] === null ? null : `${x(i).toFixed(1)},${y(r[key]).toFixed(1)}`))
      .filter(Boolean).join(" ");
    $("chart-completed").setAttribute("points", line("completed"));
    $("chart-submitted").setAttribute("points", line("submitted"));
    const last = rates[rates.length - 1];
    $("rate-completed").textContent = last ? last.completed.toFixed(1) : "–";
    $("rate-submitted").textContent = last && last.submitted !== null ? last.submitted.toFixed(1) : "–";
    $("rate-peak").textContent = peak.toFixed(1);
  }

  // ------------------------------------------------------------------ metrics

  function parseMetrics(text) {
    const values = {};
    for (const line of text.split("\n")) {
      if (!line || line.startsWith("#")) continue;
      const space = line.lastIndexOf(" ");
      values[line.slice(0, space)] = Number(line.slice(space + 1));
    }
    return values;
  }

  async function metricsText() {
    const sent = auth.token;
    const response = await fetch("/metrics", { headers: auth.headers(), cache: "no-store" });
    if (!response.ok) {
      let body = {};
      try { body = await response.json(); } catch { /* not JSON */ }
      throw onAuthError(new ApiError(response.status, body._tag || String(response.status), body.message || response.statusText, body), sent);
    }
    return response.text();
  }

  function renderStorage(m, throttle) {
    const rows = [
      ["commits", m.trioq_commits_total],
      ["commit conflicts", m.trioq_commit_conflicts_total],
      ["write errors", m.trioq_commit_write_errors_total],
      ["last document bytes", m.trioq_document_bytes],
      ["last commit", m.trioq_last_commit_seconds === undefined ? undefined : `${(m.trioq_last_commit_seconds * 1000).toFixed(1)} ms`],
      ["last batch", m.trioq_last_batch_size],
      ["checkpoints", m.trioq_checkpoints_total],
      ["storage writes", m.trioq_storage_writes_total],
      ["storage reads", m.trioq_storage_reads_total],
    ];
    if (throttle && throttle.throttling) {
      for (const [k, v] of Object.entries(throttle)) if (k !== "throttling") rows.push([`throttle ${k}`, v]);
    } else if (throttle) {
      rows.push(["throttle", "off"]);
    }
    $("storage-list").replaceChildren(...rows.filter(([, v]) => v !== undefined)
      .flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, typeof v === "number" ? fmt(v) : v)]));
  }

  // ------------------------------------------------------------------ leader

  const seconds = (ms) => `${(ms / 1000).toFixed(ms < 10000 ? 1 : 0)} s`;

  async function refreshHealth() {
    const lease = $("lease");
    try {
      const h = await http("GET", "/healthz");
      const leader = h.role === "leader" ? `${h.leader || location.origin} (this broker)` : (h.leader || "unknown");
      $("leader").textContent = `broker ${h.brokerId} · ${h.role} · epoch ${h.epoch} · leader: ${leader}`;
      $("leader").dataset.role = h.role;
      // the lease: renewed by each of the leader's commits; standbys take over once
      // it is leaseMs old (a broker older than these fields reports neither)
      if (typeof h.leaseAgeMs === "number" && typeof h.leaseMs === "number") {
        lease.textContent = `lease renewed ${seconds(h.leaseAgeMs)} ago (stale after ${seconds(h.leaseMs)})`;
        lease.dataset.state = h.leaseAgeMs * 2 > h.leaseMs ? "late" : "ok";
      } else if (typeof h.leaseMs === "number") {
        lease.textContent = `lease: known on the leader (stale after ${seconds(h.leaseMs)})`;
        lease.dataset.state = "";
      } else {
        lease.textContent = "lease: not reported by this broker";
        lease.dataset.state = "";
      }
      lease.hidden = false;
    } catch (err) {
      $("leader").textContent = `broker: ${describe(err)}`;
      lease.hidden = true;
    }
  }

  // ------------------------------------------------------------------ jobs table

  const jobs = { cursors: [null], seq: 0, selected: null };

  function jobFilters() {
    const f = { limit: Number($("page-size").value) };
    if (features.filters) {
      if ($("filter-status").value) f.status = $("filter-status").value;
      if ($("filter-type").value.trim()) f.type = $("filter-type").value.trim();
    }
    return f;
  }

  async function refreshJobs() {
    const seq = ++jobs.seq;
    const cursor = jobs.cursors[jobs.cursors.length - 1];
    const params = { ...jobFilters(), cursor };
    let page;
    try {
      // the filters are GET /v1/jobs's (the WebSocket's listJobs takes none)
      const filtered = params.status || params.type;
      page = await (filtered ? REST.listJobs(params) : live.call("listJobs", params));
    } catch (err) {
      if (seq === jobs.seq) say("jobs-message", describe(err), "error");
      throw err;
    }
    if (seq !== jobs.seq) return page; // a newer request (paging, filter) owns the table
    const rows = page.jobs.map((job) => {
      const status = job.cancelRequested ? "cancelling" : job.status;
      const row = el("tr", { dataset: { jobId: job.jobId }, onclick: () => showJob(job.jobId) },
        el("td", { class: "mono", title: job.jobId }, job.jobId),
        el("td", { title: job.type }, job.type),
        el("td", { class: `status-${status}` }, status === "unclaimed" ? "queued" : status.replace("_", " ")),
        el("td", { class: "num" }, `${job.attempts}/${job.maxAttempts}`),
        el("td", { class: "mono" }, job.workerId || "–"),
        el("td", { class: "num" }, age(job.createdAt)),
        el("td", {}, cancelButton(job.jobId, status === "cancelling")));
      if (job.jobId === jobs.selected) row.classList.add("selected");
      return row;
    });
    $("jobs-table").tBodies[0].replaceChildren(...rows);
    const n = jobs.cursors.length;
    const first = (n - 1) * params.limit + (page.jobs.length ? 1 : 0);
    const last = (n - 1) * params.limit + page.jobs.length;
    $("jobs-page").textContent = `page ${n} · rows ${fmt(first)}–${fmt(last)}${page.nextCursor ? "" : " · last page"}`;
    $("jobs-page").dataset.last = page.nextCursor ? "false" : "true";
    $("jobs-next").disabled = !page.nextCursor;
    $("jobs-next").dataset.cursor = page.nextCursor || "";
    $("jobs-prev").disabled = n === 1;
    $("jobs-first").disabled = n === 1;
    if (!page.jobs.length) say("jobs-message", n === 1 ? "No queued or in-progress job." : "This page is empty now.", "");
    else say("jobs-message", "", "");
    return page;
  }

  // two clicks cancel: the first arms the job's button for a few seconds (kept across
  // the table's refreshes), the second cancels
  const armed = new Map();
  const ARMED_MS = 5000;

  function cancelButton(jobId, disabled) {
    const isArmed = () => (armed.get(jobId) || 0) > Date.now();
    const button = el("button", { type: "button", class: "danger", dataset: { action: "cancel" } },
      isArmed() ? "Confirm cancel" : "Cancel");
    button.disabled = disabled;
    button.addEventListener("click", (event) => {
      event.stopPropagation();
      if (!isArmed()) {
        armed.set(jobId, Date.now() + ARMED_MS);
        button.textContent = "Confirm cancel";
        setTimeout(() => { if (!isArmed()) button.textContent = "Cancel"; }, ARMED_MS + 50);
        return;
      }
      armed.delete(jobId);
      act("cancel", jobId, button);
    });
    return button;
  }

  async function act(action, jobId, button) {
    const path = action === "cancel" ? `/v1/jobs/${encodeURIComponent(jobId)}/cancel`
      : `/v1/dead/${encodeURIComponent(jobId)}/requeue`;
    const where = button && button.closest("#dead") ? "dead-message"
      : button && button.closest("#detail") ? "detail-message" : "jobs-message";
    if (button) button.disabled = true;
    try {
      const answer = await http("POST", path);
      say(where, `${answer.jobId}: ${action} done, now ${answer.status}`, "ok", "action");
      if (jobs.selected === jobId) showJob(jobId);
      refreshAll(true);
    } catch (err) {
      say(where, `${action} ${jobId}: ${describe(err)}`, "error", "action");
      if (button) button.disabled = false;
    }
  }

  // ------------------------------------------------------------------ job detail

  async function showJob(jobId) {
    if (jobs.selected !== jobId) say("detail-message", "", "", "action"); // another job
    jobs.selected = jobId;
    $("lookup-id").value = jobId;
    for (const row of document.querySelectorAll("tr[data-job-id]")) {
      row.classList.toggle("selected", row.dataset.jobId === jobId);
    }
    let job;
    try {
      job = await live.call("getJob", { jobId });
    } catch (err) {
      $("detail-body").hidden = true;
      say("detail-message", `${jobId}: ${describe(err)}`, "error");
      return;
    }
    if (jobs.selected !== jobId) return;
    const fields = [["id", job.jobId], ["type", job.type], ["status", job.cancelRequested ? "cancelling" : job.status],
      ["attempts", `${job.attempts}${job.maxAttempts ? `/${job.maxAttempts}` : ""}`],
      ["worker", job.workerId || "–"], ["created", new Date(job.createdAt).toISOString()]];
    if (job.readyAt) fields.push(["ready at", new Date(job.readyAt).toISOString()]);
    if (job.diedAt) fields.push(["died", `${new Date(job.diedAt).toISOString()} (${job.reason})`]);
    if (job.finishedAt) fields.push(["finished", new Date(job.finishedAt).toISOString()]);
    if (job.priority) fields.push(["priority", String(job.priority)]);
    if (job.uniqueKey) fields.push(["unique key", job.uniqueKey]);
    if (job.deadlineAt) fields.push(["deadline", new Date(job.deadlineAt).toISOString()]);
    if ("progress" in job) fields.push(["progress", JSON.stringify(job.progress)]);
    if ("result" in job) fields.push(["result", JSON.stringify(job.result)]);
    $("detail-fields").replaceChildren(...fields.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
    $("detail-payload").textContent = "payload" in job ? JSON.stringify(job.payload, null, 2) : "(not kept for finished jobs)";
    $("detail-error").textContent = job.lastError || "none";
    $("detail-requeue").disabled = job.status !== "dead";
    $("detail-cancel").disabled = !["unclaimed", "in_progress", "dead"].includes(job.status) || job.cancelRequested;
    $("detail-body").hidden = false;
    $("detail-body").dataset.jobId = job.jobId;
    $("detail-body").dataset.status = job.status;
    say("detail-message", "", "");
  }

  // ------------------------------------------------------------------ dead letters

  const dead = { cursors: [null], seq: 0 };

  async function refreshDead() {
    const seq = ++dead.seq;
    const cursor = dead.cursors[dead.cursors.length - 1];
    let page;
    try {
      page = await live.call("listDead", { limit: DEAD_PAGE, cursor });
    } catch (err) {
      if (seq === dead.seq) say("dead-message", describe(err), "error");
      throw err;
    }
    if (seq !== dead.seq) return page;
    $("stat-dead").textContent = fmt(page.total);
    const rows = page.jobs.map((job) => el("tr", { dataset: { jobId: job.jobId }, onclick: () => showJob(job.jobId) },
      el("td", { class: "mono", title: job.jobId }, job.jobId),
      el("td", { title: job.type }, job.type),
      el("td", {}, job.reason),
      el("td", { class: "num" }, `${job.attempts}/${job.maxAttempts}`),
      el("td", { class: "num" }, age(job.diedAt)),
      el("td", { class: "error" }, job.lastError || ""),
      el("td", {}, el("button", { type: "button", dataset: { action: "requeue" }, onclick: (event) => {
        event.stopPropagation();
        act("requeue", job.jobId, event.currentTarget);
      } }, "Requeue"), " ", cancelButton(job.jobId, false))));
    $("dead-table").tBodies[0].replaceChildren(...rows);
    const n = dead.cursors.length;
    $("dead-page").textContent = `page ${n} of ${Math.max(1, Math.ceil(page.total / DEAD_PAGE))} · ${fmt(page.total)} dead` +
      (page.dropped ? ` (${fmt(page.dropped)} dropped over the cap)` : "");
    $("dead-next").disabled = !page.nextCursor;
    $("dead-next").dataset.cursor = page.nextCursor || "";
    $("dead-prev").disabled = n === 1;
    $("dead-first").disabled = n === 1;
    say("dead-message", page.jobs.length ? "" : "No dead job.", "");
    return page;
  }

  // ------------------------------------------------------------------ submit form

  function validateSubmit() {
    const type = $("submit-type"), payload = $("submit-payload"), attempts = $("submit-attempts");
    for (const field of [type, payload, attempts]) field.removeAttribute("aria-invalid");
    const bad = (field, message) => { field.setAttribute("aria-invalid", "true"); field.focus(); throw new Error(message); };
    const job = {};
    // eslint-disable-next-line no-control-regex
    if (!type.value || type.value.length > 128 || /[\u0000-\u001f\u007f]/.test(type.value)) {
      bad(type, "type: 1–128 characters, no control characters");
    }
    job.type = type.value;
    try {
      job.payload = JSON.parse(payload.value);
    } catch (err) {
      bad(payload, `payload is not valid JSON: ${err.message}`);
    }
    if (attempts.value.trim()) {
      const n = Number(attempts.value);
      if (!Number.isInteger(n) || n < 1 || n > 1000) bad(attempts, "max attempts must be an integer from 1 to 1000");
      job.maxAttempts = n;
    }
    return job;
  }

  async function submitJob(event) {
    event.preventDefault();
    let job;
    try {
      job = validateSubmit();
    } catch (err) {
      say("submit-message", err.message, "error");
      return;
    }
    say("submit-message", "submitting…", "");
    try {
      const answer = await http("POST", "/v1/jobs", job);
      say("submit-message", `submitted ${answer.jobId}${answer.duplicate ? " (duplicate)" : ""}`, "ok");
      refreshAll(true);
    } catch (err) {
      say("submit-message", `refused: ${describe(err)}`, "error");
    }
  }

  // ------------------------------------------------------------------ the tick

  let backoffMs = TICK_MS;
  let tickTimer = null;
  let ticking = false;
  let ticks = 0;

  async function tick() {
    clearTimeout(tickTimer);
    if (ticking || auth.waiting) return;
    ticking = true;
    let failed = false;
    // pushed: the pushes refresh the panels, a tick (every 5 s) reads everything
    const pushing = live.pushing;
    try {
      failed = !(await refreshAll(pushing));
      if (ticks++ % 5 === 0 || pushing) await refreshHealth();
    } finally {
      ticking = false;
    }
    // errors that are not the token's (a broker away, 503s) slow the reads down
    const every = live.pushing ? PUSH_TICK_MS : TICK_MS;
    backoffMs = failed ? Math.min(backoffMs * 2, MAX_BACKOFF_MS) : every;
    if (failed && !live.open && !auth.waiting) setConn("offline", `retrying in ${Math.round(backoffMs / 1000)} s`);
    if (!auth.waiting) tickTimer = setTimeout(tick, backoffMs);
  }

  // true when the broker answered every read (a 403 is an answer)
  // The stats and metrics are read every tick; the two tables (whose reads cost the
  // broker a walk of the queue up to the page shown) only when the counts moved,
  // after an action (force), and every TABLES_EVERY ticks (ages, workers).
  const TABLES_EVERY = 5;
  let lastCounts = null;

  // `push`: a stats push to show instead of reading the stats (then /metrics is read
  // at most once a second, and the tables only when the counts moved)
  async function refreshAll(force = false, push = null) {
    const statsRead = push === null ? live.call("getStats")
      : push.error ? Promise.reject(pushError(push.error)) : Promise.resolve(push.data);
    // (a token that may not read /metrics is told so by the ticks, not every push)
    const sinceMetrics = performance.now() - lastMetricsAt;
    const readMetrics = push === null || (!metricsDenied && sinceMetrics >= METRICS_EVERY_MS);
    if (readMetrics) lastMetricsAt = performance.now();
    else if (!metricsTimer && !metricsDenied) {
      // read soon after all: the storage panel shows this push's commit too
      metricsTimer = setTimeout(() => {
        metricsTimer = null;
        lastMetricsAt = performance.now();
        refreshStorage().then((m) => {
          if (m.trioq_jobs_completed_total !== undefined) addSample(m.trioq_jobs_completed_total, m.trioq_jobs_enqueued_total);
        }, () => {});
      }, METRICS_EVERY_MS - sinceMetrics);
    }
    const [statsResult, storageResult] = await Promise.allSettled([
      statsRead.then((s) => { say("stats-message", "", ""); renderStats(s); return s; }),
      readMetrics ? refreshStorage() : Promise.resolve(undefined),
    ]);
    const s = statsResult.status === "fulfilled" ? statsResult.value : null;
    const counts = s ? [s.total, s.unclaimed, s.inProgress, s.completedTotal].join() : null;
    const tables = force || counts === null || counts !== lastCounts || (push === null && ticks % TABLES_EVERY === 0);
    lastCounts = counts;
    const results = [statsResult, storageResult];
    if (tables) results.push(...(await Promise.allSettled([refreshJobs(), refreshDead()])));
    // one chart sample a read: from /metrics (completed and submitted) when this
    // token may read it, else the completed count of the stats
    const [stats, metrics] = results.map((r) => (r.status === "fulfilled" ? r.value : null));
    if (metrics && metrics.trioq_jobs_completed_total !== undefined) {
      addSample(metrics.trioq_jobs_completed_total, metrics.trioq_jobs_enqueued_total);
    } else if (stats && (storageResult.status === "rejected" || metricsDenied)) {
      addSample(stats.completedTotal, undefined);
    }
    let answered = true;
    for (const r of results) {
      if (r.status === "rejected") {
        const err = r.reason;
        if (!(err instanceof ApiError) || err.status === 0 || err.status >= 500) answered = false;
      }
    }
    const statsError = results[0].status === "rejected" ? results[0].reason : null;
    if (statsError) say("stats-message", describe(statsError), "error");
    const notLeader = results.map((r) => r.reason).find((e) => e instanceof ApiError && e.tag === "NotLeader");
    const notice = $("notice");
    notice.hidden = !notLeader;
    if (notLeader) notice.textContent = describe(notLeader);
    return answered;
  }

  function pushError(e) {
    return onAuthError(new ApiError(STATUS_OF_TAG[e._tag] || 503, e._tag, e.message, e));
  }

  // stats pushes: one refresh at a time, the latest push kept for the next
  let pushed = null;
  let pushRunning = false;

  async function onPush(message) {
    pushed = message;
    if (pushRunning || auth.waiting) return;
    pushRunning = true;
    try {
      while (pushed && !auth.waiting) {
        const next = pushed;
        pushed = null;
        await refreshAll(false, next);
      }
    } finally {
      pushRunning = false;
    }
  }

  let lastMetricsAt = -Infinity;
  let metricsTimer = null;
  let metricsDenied = false;

  async function refreshStorage() {
    try {
      const m = parseMetrics(await metricsText());
      metricsDenied = false;
      let throttle = null;
      try { throttle = await http("GET", "/v1/throttle-stats"); } catch { /* shown by metrics */ }
      renderStorage(m, throttle);
      say("storage-message", "", "");
      return m;
    } catch (err) {
      metricsDenied = err instanceof ApiError && err.status === 403;
      say("storage-message", describe(err), "error");
      throw err;
    }
  }

  // ------------------------------------------------------------------ features

  async function detectFeatures() {
    // the job filters and per-type counts are newer than some brokers: ask the
    // broker's own OpenAPI document (public) what GET /v1/jobs takes
    try {
      const doc = await http("GET", "/openapi.json");
      const op = doc.paths["/v1/jobs"].get;
      const names = (op.parameters || []).map((p) => p.name);
      features.filters = names.includes("status") && names.includes("type");
    } catch {
      features.filters = false;
    }
    for (const id of ["filter-status", "filter-type"]) $(id).disabled = !features.filters;
    $("filter-note").hidden = features.filters;
    $("filter-note").textContent = "This broker does not filter the job list by status or type yet: every queued and in-progress job is listed.";
  }

  // ------------------------------------------------------------------ wiring

  function wire() {
    $("token-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const token = $("token-input").value.trim();
      if (!TOKEN_RULE.test(token) || token.includes(",")) {
        $("auth-message").textContent = "A token is visible ASCII without spaces or commas.";
        return;
      }
      auth.set(token);
      auth.waiting = false;
      $("token-input").value = "";
      $("auth").hidden = true;
      setConn("polling", "polling (HTTP)");
      live.close();
      live.retryMs = 1000;
      live.connect();
      tick();
    });
    $("token-change").addEventListener("click", () => {
      live.close();
      auth.ask("Give the token to use (it replaces the one this tab holds).");
    });
    $("submit-form").addEventListener("submit", submitJob);
    $("filters").addEventListener("submit", (event) => {
      event.preventDefault();
      jobs.cursors = [null];
      refreshJobs().catch(() => {});
    });
    $("jobs-next").addEventListener("click", () => {
      const cursor = $("jobs-next").dataset.cursor;
      if (!cursor) return;
      jobs.cursors.push(cursor);
      refreshJobs().catch(() => {});
    });
    $("jobs-prev").addEventListener("click", () => {
      if (jobs.cursors.length > 1) jobs.cursors.pop();
      refreshJobs().catch(() => {});
    });
    $("jobs-first").addEventListener("click", () => {
      jobs.cursors = [null];
      refreshJobs().catch(() => {});
    });
    $("dead-next").addEventListener("click", () => {
      const cursor = $("dead-next").dataset.cursor;
      if (!cursor) return;
      dead.cursors.push(cursor);
      refreshDead().catch(() => {});
    });
    $("dead-prev").addEventListener("click", () => {
      if (dead.cursors.length > 1) dead.cursors.pop();
      refreshDead().catch(() => {});
    });
    $("dead-first").addEventListener("click", () => {
      dead.cursors = [null];
      refreshDead().catch(() => {});
    });
    $("lookup-form").addEventListener("submit", (event) => {
      event.preventDefault();
      const jobId = $("lookup-id").value.trim();
      if (jobId) showJob(jobId);
    });
    $("detail-requeue").addEventListener("click", (event) => act("requeue", $("detail-body").dataset.jobId, event.currentTarget));
    $("detail-cancel").addEventListener("click", (event) => act("cancel", $("detail-body").dataset.jobId, event.currentTarget));
  }

  async function start() {
    wire();
    setConn("polling", "polling (HTTP)");
    await detectFeatures();
    await refreshHealth();
    live.connect();
    tick();
  }

  document.addEventListener("DOMContentLoaded", start);
})();
