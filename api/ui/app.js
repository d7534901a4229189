// The scheduler's dashboard: plain DOM, the public REST API and its event stream.
//
// Security rules kept throughout: the token comes from the URL fragment once and lives in
// sessionStorage (never in a query string, so never in a server log); every value from the
// API is put on the page as text (textContent, attributes), never parsed as HTML; roles are
// read from the token only to choose which buttons to show (the server enforces them).

import { scheduleInWords } from "./schedule.js";

const TOKEN_KEY = "scheduler.dashboard.token";
const ROLE_LEVEL = { viewer: 1, operator: 2, admin: 3 };
const IN_FLIGHT = new Set(["buffered", "scheduled", "running", "retrying"]);
const REFRESH_AFTER_EVENT_MS = [300, 1500, 4000]; // the views follow the events by a moment
const POLL_WHEN_OFFLINE_MS = 5000;

const main = document.getElementById("main");
const liveBadge = document.getElementById("live");
const toastBox = document.getElementById("toast");

let session = null; // { token, claims, level }
let page = null; // the page shown: { kind, refresh(), onEvent(name, data) }
let eventsSeen = 0;
let refreshTimers = [];
let streamAbort = null;
let streaming = false;

// ------------------------------------------------------------------------------------------
// DOM helpers: text only
// ------------------------------------------------------------------------------------------

function h(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "class") node.className = value;
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function pad(n) {
  return String(n).padStart(2, "0");
}

/** Local date and time, to the second. */
function formatTime(iso) {
  if (!iso) return "—";
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

function relative(iso) {
  const ms = new Date(iso).getTime() - Date.now();
  if (Number.isNaN(ms)) return "";
  const s = Math.round(Math.abs(ms) / 1000);
  const text = s < 60 ? `${s} s` : s < 3600 ? `${Math.round(s / 60)} min` : s < 86400 ? `${Math.round(s / 3600)} h` : `${Math.round(s / 86400)} d`;
  return ms >= 0 ? `in ${text}` : `${text} ago`;
}

/** A time element: absolute time, and a relative one kept fresh by the ticker. */
function when(iso) {
  if (!iso) return h("span", { class: "muted" }, "—");
  return h("time", { datetime: iso, title: iso }, formatTime(iso), " ", h("span", { class: "rel", "data-at": iso }, `(${relative(iso)})`));
}

function badge(status) {
  if (!status) return h("span", { class: "muted" }, "—");
  return h("span", { class: `badge s-${String(status).replace(/[^a-z_]/g, "")}` }, String(status).replace("_", " "));
}

function duration(ms) {
  if (ms === null || ms === undefined) return "—";
  return ms < 1000 ? `${ms} ms` : `${(ms / 1000).toFixed(ms < 10000 ? 2 : 1)} s`;
}

function toast(message, isError = false) {
  toastBox.textContent = message;
  toastBox.className = isError ? "toast error" : "toast";
  toastBox.hidden = false;
  clearTimeout(toast.timer);
  toast.timer = setTimeout(() => { toastBox.hidden = true; }, isError ? 8000 : 3000);
}

setInterval(() => {
  for (const node of document.querySelectorAll(".rel[data-at]")) {
    node.textContent = `(${relative(node.getAttribute("data-at"))})`;
  }
}, 1000);

// ------------------------------------------------------------------------------------------
// The token
// ------------------------------------------------------------------------------------------

function decodeClaims(token) {
  // For display only: the server verifies the signature on every request.
  try {
    const part = token.split(".")[1].replace(/-/g, "+").replace(/_/g, "/");
    const bytes = Uint8Array.from(atob(part + "=".repeat((4 - (part.length % 4)) % 4)), (c) => c.charCodeAt(0));
    const claims = JSON.parse(new TextDecoder().decode(bytes));
    return claims && typeof claims === "object" ? claims : null;
  } catch {
    return null;
  }
}

function takeTokenFromFragment() {
  const fragment = location.hash.replace(/^#/, "");
  if (!fragment.startsWith("token=")) return;
  const token = new URLSearchParams(fragment).get("token");
  if (token) sessionStorage.setItem(TOKEN_KEY, token.trim());
  // Out of the address bar and the history at once.
  history.replaceState(null, "", `${location.pathname}#/`);
}

function loadSession() {
  const token = sessionStorage.getItem(TOKEN_KEY);
  if (!token) return null;
  const claims = decodeClaims(token);
  if (!claims) return null;
  const roles = Array.isArray(claims.roles) ? claims.roles : [];
  const level = Math.max(0, ...roles.map((r) => ROLE_LEVEL[r] || 0));
  return { token, claims, level };
}

function can(role) {
  return session !== null && session.level >= ROLE_LEVEL[role];
}

function signOut(message) {
  sessionStorage.removeItem(TOKEN_KEY);
  session = null;
  if (streamAbort) streamAbort.abort();
  showSignIn(message);
}

// ------------------------------------------------------------------------------------------
// The REST API
// ------------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function api(path, { method = "GET" } = {}) {
  const response = await fetch(path, {
    method,
    headers: { Authorization: `Bearer ${session.token}`, Accept: "application/json" },
    cache: "no-store",
  });
  const type = response.headers.get("content-type") || "";
  const body = type.includes("json") ? await response.json() : null;
  if (response.status === 401) {
    signOut(`The token was refused: ${(body && body.detail) || "unauthorized"}.`);
    throw new ApiError(401, "unauthorized");
  }
  if (!response.ok) {
    const detail = body && (body.detail || body.title);
    throw new ApiError(response.status, detail || `HTTP ${response.status}`);
  }
  return body;
}

async function command(path, label) {
  try {
    await api(path, { method: "POST" });
    toast(`${label}: accepted`);
    scheduleRefresh();
  } catch (err) {
    if (err.status !== 401) toast(`${label} failed: ${err.message}`, true);
  }
}

function taskPath(id) {
  return `/v1/tasks/${encodeURIComponent(id)}`;
}

function actionButtons(task) {
  if (!can("operator") || task.status === "deleted") return [];
  const buttons = [];
  if (task.status === "active") {
    buttons.push(h("button", { type: "button", class: "act-pause", onclick: () => command(`${taskPath(task.id)}/pause`, `Pause ${task.name}`) }, "Pause"));
  } else if (task.status === "paused") {
    buttons.push(h("button", { type: "button", class: "act-resume", onclick: () => command(`${taskPath(task.id)}/resume`, `Resume ${task.name}`) }, "Resume"));
  }
  buttons.push(h("button", { type: "button", class: "act-trigger primary", onclick: () => command(`${taskPath(task.id)}/trigger`, `Trigger ${task.name}`) }, "Trigger"));
  return buttons;
}

function lastOutcome(task) {
  if (!task.last_status) return h("span", { class: "muted" }, task.last_run ? "running…" : "never ran");
  return h("span", { title: task.last_error || "" }, badge(task.last_status), " ", task.last_finished_at ? h("span", { class: "rel", "data-at": task.last_finished_at }, `(${relative(task.last_finished_at)})`) : "");
}

function nextRun(task) {
  if (task.status === "paused") return h("span", { class: "muted" }, "paused");
  if (task.status !== "active") return h("span", { class: "muted" }, "—");
  if (!task.next_run_known) return h("span", { class: "muted" }, "…");
  return when(task.next_run);
}

function workSummary(work) {
  switch (work.kind) {
    case "http": return `HTTP ${work.method} ${work.url}`;
    case "kafka": return `Kafka message to ${work.topic}`;
    case "handler": return `handler ${work.name}`;
    case "shell": return `shell ${(work.argv || []).join(" ")}`;
    default: return work.kind;
  }
}

// ------------------------------------------------------------------------------------------
// Pages
// ------------------------------------------------------------------------------------------

const filters = { status: "", type: "", tag: "", sort: "created_at" };

function select(name, options) {
  return h("select", {
    name,
    "aria-label": name,
    onchange: (e) => { filters[name] = e.target.value; page.refresh(); },
  }, options.map(([value, label]) => h("option", { value, selected: filters[name] === value }, label)));
}

function listPage() {
  const rows = h("tbody", { id: "task-rows" });
  const more = h("button", { type: "button", class: "link", hidden: true }, "Show more");
  const count = h("span", { class: "muted" });
  const tag = h("input", { type: "search", name: "tag", placeholder: "tag", value: filters.tag, "aria-label": "tag" });
  tag.addEventListener("change", () => { filters.tag = tag.value.trim(); state.refresh(); });
  main.replaceChildren(
    h("section", { class: "filters" },
      select("status", [["", "all statuses"], ["active", "active"], ["paused", "paused"], ["completed", "completed"], ["deleted", "deleted"]]),
      select("type", [["", "all kinds"], ["http", "HTTP"], ["kafka", "Kafka"], ["handler", "handler"], ["shell", "shell"]]),
      tag,
      select("sort", [["created_at", "newest first"], ["name", "by name"], ["next_run", "next run first"]]),
      count),
    h("table", { class: "grid tasks" },
      h("thead", {}, h("tr", {}, ["Task", "Status", "Schedule", "Next run", "Last outcome", "Runs", ""].map((t) => h("th", {}, t)))),
      rows),
    more,
  );
  let shown = 50;
  let cursor = null;

  function row(task) {
    return h("tr", { "data-task-id": task.id },
      h("td", {}, h("a", { class: "task-link", href: `#/tasks/${encodeURIComponent(task.id)}` }, task.name),
        task.tags.length ? h("div", { class: "tags" }, task.tags.map((t) => h("span", { class: "tag" }, t))) : null),
      h("td", {}, badge(task.status)),
      h("td", { class: "schedule" }, scheduleInWords(task.definition.schedule, formatTime)),
      h("td", {}, nextRun(task)),
      h("td", {}, lastOutcome(task)),
      h("td", { class: "num" }, String((task.counters && task.counters.runs) || 0)),
      h("td", { class: "actions" }, actionButtons(task)));
  }

  async function load(limit, after) {
    const q = new URLSearchParams({ limit: String(limit), sort: filters.sort });
    for (const key of ["status", "type", "tag"]) if (filters[key]) q.set(key, filters[key]);
    if (after) q.set("cursor", after);
    return api(`/v1/tasks?${q}`);
  }

  const state = {
    kind: "list",
    async refresh() {
      try {
        const pageOf = await load(Math.min(shown, 200), null);
        if (page !== state) return;
        rows.replaceChildren(...pageOf.items.map(row));
        if (!pageOf.items.length) rows.append(h("tr", {}, h("td", { colspan: 7, class: "muted empty" }, "No tasks match.")));
        cursor = pageOf.next_cursor;
        more.hidden = !cursor;
        count.textContent = `${pageOf.items.length}${cursor ? "+" : ""} tasks`;
      } catch (err) {
        if (err.status !== 401) toast(`Could not load the tasks: ${err.message}`, true);
      }
    },
    onEvent() { scheduleRefresh(); },
  };
  more.addEventListener("click", async () => {
    try {
      const next = await load(50, cursor);
      rows.append(...next.items.map(row));
      shown += next.items.length;
      cursor = next.next_cursor;
      more.hidden = !cursor;
    } catch (err) {
      if (err.status !== 401) toast(`Could not load more tasks: ${err.message}`, true);
    }
  });
  return state;
}

function section(title, ...content) {
  return h("section", { class: "card" }, h("h2", {}, title), ...content);
}

function eventSummary(data) {
  const skip = new Set(["event_id", "task_id", "sequence", "at", "causation_id", "actor", "type", "definition"]);
  const parts = [];
  for (const [key, value] of Object.entries(data || {})) {
    if (skip.has(key) || value === null || value === undefined) continue;
    const text = typeof value === "object" ? JSON.stringify(value) : String(value);
    parts.push(`${key}=${text.length > 60 ? `${text.slice(0, 57)}…` : text}`);
  }
  if (data && data.definition) parts.unshift("definition");
  const line = parts.join(" ");
  return line.length > 200 ? `${line.slice(0, 197)}…` : line;
}

function taskPage(id) {
  const header = h("div", { class: "task-head" });
  const summary = h("dl", { class: "facts" });
  const fireRows = h("tbody", { id: "fire-rows" });
  const execRows = h("tbody", { id: "execution-rows" });
  const eventRows = h("tbody", { id: "event-rows" });
  const events = new Map(); // event id -> { id, type, sequence, at, actor, data }
  main.replaceChildren(
    h("nav", { class: "crumbs" }, h("a", { href: "#/" }, "← All tasks")),
    header,
    h("div", { class: "columns" },
      section("Summary", summary),
      section("Next fire times", h("table", { class: "grid" },
        h("thead", {}, h("tr", {}, ["Slot", "Fires at"].map((t) => h("th", {}, t)))), fireRows))),
    section("Executions", h("table", { class: "grid executions" },
      h("thead", {}, h("tr", {}, ["Execution", "Reason", "Status", "Attempts", "Scheduled", "Started", "Finished", "Duration", ""].map((t) => h("th", {}, t)))),
      execRows)),
    section("Events", h("table", { class: "grid events" },
      h("thead", {}, h("tr", {}, ["#", "At", "Event", "Actor", "Details"].map((t) => h("th", {}, t)))),
      eventRows)),
  );

  function renderEvents() {
    const sorted = [...events.values()].sort((a, b) => (b.sequence || 0) - (a.sequence || 0)).slice(0, 100);
    eventRows.replaceChildren(...sorted.map((e) => h("tr", { "data-event-id": e.id },
      h("td", { class: "num" }, String(e.sequence || "")),
      h("td", {}, formatTime(e.at)),
      h("td", {}, h("code", {}, e.type)),
      h("td", {}, e.actor || ""),
      h("td", { class: "details", title: JSON.stringify(e.data) }, eventSummary(e.data)))));
  }

  function executionRow(x) {
    const cancel = can("operator") && IN_FLIGHT.has(x.status)
      ? h("button", { type: "button", class: "act-cancel", onclick: () => command(`/v1/executions/${encodeURIComponent(x.id)}/cancel`, "Cancel") }, "Cancel")
      : null;
    return h("tr", { "data-execution-id": x.id },
      h("td", { title: x.id }, h("code", {}, x.id.length > 14 ? `${x.id.slice(0, 12)}…` : x.id)),
      h("td", {}, x.reason || ""),
      h("td", { title: x.error || "" }, badge(x.status), x.error ? h("div", { class: "error-text" }, x.error) : null),
      h("td", { class: "num" }, String(x.attempts || x.attempt || 0)),
      h("td", {}, formatTime(x.scheduled_for)),
      h("td", {}, formatTime(x.started_at)),
      h("td", {}, formatTime(x.finished_at)),
      h("td", { class: "num" }, duration(x.duration_ms)),
      h("td", {}, cancel));
  }

  const state = {
    kind: "task",
    id,
    async refresh() {
      const path = taskPath(id);
      try {
        const [task, fires, executions, history] = await Promise.all([
          api(`${path}?include_deleted=true`),
          api(`${path}/next-fire-times?n=5`).catch(() => ({ fire_times: [] })),
          api(`${path}/executions?limit=50`),
          api(`${path}/events?limit=100`),
        ]);
        if (page !== state) return;
        document.title = `${task.name} · Scheduler`;
        header.replaceChildren(
          h("h1", {}, task.name, " ", badge(task.status)),
          h("p", { class: "meta" }, h("code", {}, task.id), " · ", scheduleInWords(task.definition.schedule, formatTime), " · ", workSummary(task.definition.work),
            task.tags.length ? [" · ", task.tags.map((t) => h("span", { class: "tag" }, t))] : null),
          h("div", { class: "actions" }, actionButtons(task)));
        const c = task.counters || {};
        const facts = [
          ["Next run", nextRun(task)],
          ["Last outcome", lastOutcome(task)],
          ["Last error", task.last_error || "—"],
          ["Runs", `${c.runs || 0} (succeeded ${c.succeeded || 0}, failed ${c.failed || 0}, timed out ${c.timed_out || 0}, cancelled ${c.cancelled || 0})`],
          ["Retries / missed", `${c.retries || 0} / ${c.missed || 0}`],
          ["Priority", task.definition.priority],
          ["Revision", String(task.revision)],
          ["Created", [when(task.created_at), task.created_by ? ` by ${task.created_by}` : ""]],
        ];
        if (task.paused_note) facts.push(["Paused because", task.paused_note]);
        if (task.last_rejection) facts.push(["Last rejection", `${task.last_rejection.command_type}: ${task.last_rejection.reason}`]);
        summary.replaceChildren(...facts.flatMap(([k, v]) => [h("dt", {}, k), h("dd", {}, v)]));
        fireRows.replaceChildren(...(fires.fire_times.length
          ? fires.fire_times.map((f) => h("tr", {}, h("td", {}, formatTime(f.slot)), h("td", {}, when(f.fire_at))))
          : [h("tr", {}, h("td", { colspan: 2, class: "muted empty" }, task.definition.schedule ? "none to come" : "no schedule: runs when triggered"))]));
        execRows.replaceChildren(...(executions.items.length
          ? executions.items.map(executionRow)
          : [h("tr", {}, h("td", { colspan: 9, class: "muted empty" }, "No executions yet."))]));
        for (const e of history.items) events.set(e.id, e);
        renderEvents();
      } catch (err) {
        if (page !== state || err.status === 401) return;
        if (err.status === 404) {
          main.replaceChildren(h("nav", { class: "crumbs" }, h("a", { href: "#/" }, "← All tasks")), h("p", { class: "empty" }, `Task ${id} was not found.`));
        } else {
          toast(`Could not load the task: ${err.message}`, true);
        }
      }
    },
    onEvent(name, data) {
      if (!data || data.task_id !== id) return;
      // Shown at once from the stream; the views (executions, counters) follow shortly.
      const key = data.event_id || `${name}-${data.sequence}`;
      events.set(key, { id: key, type: name, sequence: data.sequence, at: data.at, actor: data.actor, data });
      renderEvents();
      scheduleRefresh();
    },
  };
  return state;
}

function showSignIn(message) {
  page = null;
  document.getElementById("who").textContent = "";
  document.getElementById("signout").hidden = true;
  const input = h("textarea", { id: "token-input", rows: 4, placeholder: "eyJ…", autocomplete: "off", spellcheck: "false" });
  const form = h("form", { class: "signin-form" }, input, h("button", { type: "submit", class: "primary" }, "Use this token"));
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const token = input.value.trim();
    if (!token) return;
    sessionStorage.setItem(TOKEN_KEY, token);
    start();
  });
  main.replaceChildren(h("section", { class: "card signin" },
    h("h1", {}, "Sign in"),
    message ? h("p", { class: "error-text" }, message) : null,
    h("p", {}, "Open the address that ", h("code", {}, "make run"), " prints (it ends with ", h("code", {}, "#token=…"), "), or paste a bearer token. It is kept in this tab only."),
    form));
}

// ------------------------------------------------------------------------------------------
// Live updates: the event stream read with fetch(), so the token goes in a header
// (EventSource cannot send one, and a token in a URL ends up in logs).
// ------------------------------------------------------------------------------------------

function setLive(on, text) {
  liveBadge.className = on ? "live on" : "live off";
  liveBadge.textContent = text || (on ? "live" : "offline");
  liveBadge.setAttribute("data-events", String(eventsSeen));
}

function scheduleRefresh() {
  for (const t of refreshTimers) clearTimeout(t);
  refreshTimers = REFRESH_AFTER_EVENT_MS.map((ms) => setTimeout(() => page && page.refresh(), ms));
}

function dispatch(block) {
  let name = "message";
  const data = [];
  for (const line of block.split(/\r?\n/)) {
    if (line.startsWith(":")) {
      if (line.startsWith(": connected")) setLive(true);
      continue;
    }
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "event") name = value;
    else if (field === "data") data.push(value);
  }
  if (!data.length) return;
  let parsed;
  try {
    parsed = JSON.parse(data.join("\n"));
  } catch {
    return;
  }
  eventsSeen += 1;
  liveBadge.setAttribute("data-events", String(eventsSeen));
  if (page) page.onEvent(name, parsed);
}

async function stream() {
  if (streaming) return; // one stream per tab
  streaming = true;
  try {
    await streamLoop();
  } finally {
    streaming = false;
  }
}

async function streamLoop() {
  let delay = 1000;
  while (session) {
    streamAbort = new AbortController();
    try {
      const response = await fetch("/v1/events/stream", {
        headers: { Authorization: `Bearer ${session.token}`, Accept: "text/event-stream" },
        signal: streamAbort.signal,
        cache: "no-store",
      });
      if (response.status === 401) {
        signOut("The token was refused by the event stream.");
        return;
      }
      if (!response.ok || !response.body) throw new Error(`HTTP ${response.status}`);
      delay = 1000;
      const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
      let buffer = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        buffer += value;
        const blocks = buffer.split(/\r?\n\r?\n/);
        buffer = blocks.pop();
        for (const block of blocks) dispatch(block);
      }
    } catch (err) {
      if (err.name === "AbortError" && !session) return;
    }
    setLive(false, "reconnecting");
    await new Promise((resolve) => setTimeout(resolve, delay));
    delay = Math.min(delay * 2, 30000);
    if (page) page.refresh(); // catch up on what the stream missed
  }
}

// While the stream is down, the page polls instead.
setInterval(() => {
  if (session && page && !liveBadge.classList.contains("on")) page.refresh();
}, POLL_WHEN_OFFLINE_MS);

// ------------------------------------------------------------------------------------------
// Routing
// ------------------------------------------------------------------------------------------

function route() {
  if (!session) return;
  const match = location.hash.match(/^#\/tasks\/([^/?]+)$/);
  page = match ? taskPage(decodeURIComponent(match[1])) : listPage();
  if (!match) document.title = "Tasks · Scheduler";
  page.refresh();
}

function start() {
  takeTokenFromFragment();
  session = loadSession();
  if (!session) {
    showSignIn(sessionStorage.getItem(TOKEN_KEY) ? "That is not a JWT." : null);
    return;
  }
  const { claims } = session;
  if (typeof claims.exp === "number" && claims.exp * 1000 < Date.now()) {
    signOut("The token has expired.");
    return;
  }
  const roles = Array.isArray(claims.roles) ? claims.roles.join(", ") : "no role";
  document.getElementById("who").textContent = `${claims.sub || "?"} · tenant ${claims.tenant || "?"} · ${roles || "no role"}`;
  document.getElementById("signout").hidden = false;
  route();
  stream();
}

window.addEventListener("hashchange", () => {
  if (location.hash.startsWith("#token=")) start();
  else route();
});
document.getElementById("signout").addEventListener("click", () => signOut("Signed out."));
start();
