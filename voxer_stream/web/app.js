// The voxer-stream web client: REST for accounts, threads and messages (spec sections 8
// and 13), the account's timeline for everything that changes (section 13.5), WebRTC for
// audio (section 12): push-to-talk is a WHIP ingest, playing a message is a WHEP egress,
// monitoring a thread is WHEP on the thread. No framework and no build step: this file
// is served as it is, as an ES module.
//
// Nothing here polls. Once logged in the page takes the timeline's current token (a
// `GET /v1/sync` loop), reads the threads (and the open thread) over REST, then holds
// `GET /v1/sync/stream?since=<token>` open: a stream of server-sent events, read with
// fetch() because EventSource cannot send the Authorization header. Each event is
// applied as it comes; a thread's counts (unread, unheard, who is speaking) are re-read
// with `GET /v1/threads/{id}` when an event says they changed, never computed here.

const TICKS_PER_SECOND = 48000; // the protocol's media clock (48 kHz)
const REQUEST_TIMEOUT_MS = 15000;
const GATHER_TIMEOUT_MS = 3000;
const CONNECT_TIMEOUT_MS = 10000;
const CATCH_UP_SPEED = 1.5;
// After the release, the microphone's last words are still in the browser's capture,
// encoder and pacer (tens of ms): keep the connection that long before ending it.
const RELEASE_TAIL_MS = 100;
const STORAGE = window.sessionStorage;
// The timeline: the largest page of the initial sync, how long the stream may stay
// silent (the server sends a comment at least every 15 s) and the reconnect backoff.
const SYNC_PAGE = 1000;
const STREAM_SILENCE_MS = 40000;
const BACKOFF_MIN_MS = 1000;
const BACKOFF_MAX_MS = 30000;
// A stream that stayed open this long was a good one: the next reconnect starts over.
const STREAM_HEALTHY_MS = 10000;
const MESSAGES_PAGE = 100;
const THREAD_READS_AT_ONCE = 6;
const RECEIPTS_AT_ONCE = 5;
// A text that could not be sent is retried (same id: idempotent, VXS-13.3-2).
const SEND_RETRY_MS = [1000, 3000];
const REACTIONS = [
  ["👍", "thumbs up"],
  ["❤️", "heart"],
  ["😂", "laughing"],
  ["😮", "surprised"],
];
const THUMBNAIL_SIDE = 320; // the server's thumbnails are at most this a side

const $ = (id) => document.getElementById(id);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

// -- state -------------------------------------------------------------------------------

const state = {
  token: STORAGE.getItem("voxer.token"),
  username: STORAGE.getItem("voxer.username"),
  accountId: STORAGE.getItem("voxer.account"),
  view: null, // "login" | "threads" | "thread"
  registering: false,
  threads: new Map(), // id -> the thread as answered to this account (with its counts)
  last: new Map(), // thread id -> its newest message the page knows of (or null)
  threadsLoaded: false,
  touched: null, // while the thread list loads: the threads events changed meanwhile
  thread: null, // the open thread (its JSON)
  messages: new Map(), // id -> message JSON, of the open thread
  hasEarlier: false, // the open thread has messages before the first one shown
  loaded: null, // the id of the open thread once its messages were read
  announced: new Map(), // message id -> what was said of it ("live" or "closed")
  monitored: new Set(), // live messages of others that started while the monitor played
  receipts: new Set(), // "kind:message id" sent by this page
  reacted: loadReacted(), // message id -> the emoji this account put on it
  draft: null, // {thread, text, id}: the text being sent (its id survives a retry)
  notice: null, // what the status line says once the next screen opens
  sending: false,
};

// The account's timeline: one loop per login (`generation`), `since` the token of the
// last event applied, `ready` resolved once the first token is known.
const sync = {
  generation: 0,
  since: null,
  state: "off", // "off" | "connecting" | "live" | "offline"
  abort: null,
  wake: null,
  ready: null,
  readyResolve: null,
  backoff: BACKOFF_MIN_MS,
};

// The WebRTC sessions of the page: one talk, one player and one monitor at a time.
const rtc = { talk: null, player: null, monitor: null, lastStats: {} };

function loadReacted() {
  try {
    const saved = JSON.parse(STORAGE.getItem("voxer.reacted") || "{}");
    return new Map(Object.entries(saved).map(([id, emoji]) => [id, new Set(emoji)]));
  } catch {
    return new Map();
  }
}

function saveReacted() {
  const saved = {};
  for (const [id, emoji] of state.reacted) if (emoji.size) saved[id] = [...emoji];
  STORAGE.setItem("voxer.reacted", JSON.stringify(saved));
}

// -- REST ----------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, code, name, detail) {
    super(detail ? `${name}: ${detail}` : name);
    this.status = status;
    this.code = code;
    this.errorName = name;
    this.detail = detail;
  }
}

/** An error answer as an ApiError with the registry's code and name (VXS-8-5); an
 *  UNAUTHENTICATED one ends the page's session. */
async function failure(response, auth) {
  let error = null;
  try {
    error = (await response.json()).error;
  } catch {
    // not a registry error body
  }
  const failed = new ApiError(
    response.status,
    error?.code ?? 0,
    error?.name ?? `HTTP ${response.status}`,
    error?.detail ?? response.statusText,
  );
  if (failed.errorName === "UNAUTHENTICATED" && auth && state.token) {
    loggedOut("Your session has ended: please log in again.");
  }
  return failed;
}

/** One request to the server. `json`, `sdp` or a `body` of `type` (an image). */
async function api(method, path, { json, sdp, body, type, auth = true } = {}) {
  const headers = {};
  if (auth && state.token) headers.Authorization = `Bearer ${state.token}`;
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  } else if (sdp !== undefined) {
    headers["Content-Type"] = "application/sdp";
    body = sdp;
  } else if (body !== undefined && type) {
    headers["Content-Type"] = type;
  }
  const abort = new AbortController();
  const timer = setTimeout(() => abort.abort(), REQUEST_TIMEOUT_MS);
  let response;
  try {
    response = await fetch(path, { method, headers, body, signal: abort.signal, cache: "no-store" });
  } catch (exc) {
    const detail = exc.name === "AbortError" ? "the server did not answer in time" : "the server cannot be reached";
    throw new ApiError(0, 0, "NETWORK", detail);
  } finally {
    clearTimeout(timer);
  }
  if (response.ok) return response;
  throw await failure(response, auth);
}

const apiJson = async (method, path, options) => (await api(method, path, options)).json();
const enc = encodeURIComponent;

/** `call()` again after a network failure or a server error, at most twice: for
 *  requests that are idempotent (a message with its own id). */
async function withRetry(call) {
  for (let attempt = 0; ; attempt++) {
    try {
      return await call();
    } catch (exc) {
      const transient = exc instanceof ApiError && (exc.status === 0 || exc.status >= 500);
      if (!transient || attempt >= SEND_RETRY_MS.length || !state.token) throw exc;
      await sleep(SEND_RETRY_MS[attempt]);
    }
  }
}

/** `fn` over `items`, at most `limit` at a time. */
async function eachLimited(items, limit, fn) {
  const queue = [...items];
  const worker = async () => {
    while (queue.length) await fn(queue.shift());
  };
  await Promise.all(Array.from({ length: Math.min(limit, queue.length) }, worker));
}

function describe(exc) {
  if (exc instanceof ApiError) {
    return exc.code ? `${exc.errorName} (${exc.code}): ${exc.detail}` : exc.message;
  }
  if (exc && exc.name === "NotAllowedError") return "The microphone is blocked: allow it for this page.";
  if (exc && exc.name === "NotFoundError") return "No microphone was found.";
  return String(exc && exc.message ? exc.message : exc);
}

// -- status, errors, announcements ---------------------------------------------------------

function setStatus(text) {
  $("status").textContent = text;
}

function showError(text) {
  const box = $("error");
  box.textContent = text;
  box.hidden = !text;
}

function announce(text) {
  // A fresh node each time, so that the same words are read again.
  const region = $("announcer");
  region.textContent = "";
  const line = document.createElement("p");
  line.textContent = text;
  region.append(line);
}

// -- formatting ----------------------------------------------------------------------------

function seconds(ticks) {
  const total = ticks / TICKS_PER_SECOND;
  if (total < 60) return `${total.toFixed(1)} s`;
  const minutes = Math.floor(total / 60);
  return `${minutes}:${String(Math.floor(total % 60)).padStart(2, "0")}`;
}

function when(ms) {
  const date = new Date(ms);
  const today = new Date().toDateString() === date.toDateString();
  const time = date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  return today ? time : `${date.toLocaleDateString()} ${time}`;
}

function shortWhen(ms) {
  const date = new Date(ms);
  if (new Date().toDateString() === date.toDateString()) {
    return date.toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
  }
  return date.toLocaleDateString([], { month: "short", day: "numeric" });
}

function usernameOf(thread, accountId) {
  if (accountId === state.accountId) return "you";
  const person = thread?.participants.find((p) => p.id === accountId);
  return person ? person.username : accountId;
}

function others(thread) {
  const names = thread.participants.filter((p) => p.id !== state.accountId).map((p) => p.username).sort();
  return names.length ? `with ${names.join(", ")}` : "only you";
}

function speakers(thread) {
  const names = [...new Set((thread.speaking ?? []).map((s) => usernameOf(thread, s.sender)))];
  if (!names.length) return "";
  const verb = names.length === 1 && names[0] !== "you" ? "is" : "are";
  return `${names.join(", ")} ${verb} speaking`;
}

function counts(thread) {
  const parts = [];
  if (thread.unread) parts.push(`${thread.unread} unread`);
  if (thread.unheard) parts.push(`${thread.unheard} unheard`);
  return parts.join(", ");
}

/** A message in a few words: the thread list's last line, announcements. */
function preview(message) {
  if (message.recalled) return "message recalled";
  switch (message.kind) {
    case "audio":
      return message.state === "live" ? "voice message, live" : `voice message, ${seconds(message.duration)}`;
    case "text": {
      const text = (message.text ?? "").replace(/\s+/g, " ").trim();
      return text.length > 80 ? `${text.slice(0, 79)}…` : text;
    }
    case "image":
      return message.image?.caption ? `image: ${message.image.caption}` : "image";
    case "location":
      return message.location?.label ? `location: ${message.location.label}` : "location";
    default:
      return `${message.kind} message`;
  }
}

/** Message order: the server's (created, then id). */
function byTime(a, b) {
  return a.created - b.created || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0);
}

/** A message id (VXS-2.1-1): 128 random bits, base64url, 22 characters of [A-Za-z0-9_-]. */
function randomId() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return btoa(String.fromCharCode(...bytes)).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

/** Keep `list`'s children in step with `items` by key, reusing the nodes (focus stays). */
function syncList(list, items, key, create, update) {
  const focused = list.contains(document.activeElement) ? document.activeElement : null;
  const old = new Map([...list.children].map((node) => [node.dataset.key, node]));
  let previous = null;
  for (const item of items) {
    const id = key(item);
    let node = old.get(id);
    if (node) old.delete(id);
    else {
      node = create(item);
      node.dataset.key = id;
    }
    update(node, item);
    const wanted = previous ? previous.nextSibling : list.firstChild;
    if (node !== wanted) list.insertBefore(node, wanted);
    previous = node;
  }
  for (const node of old.values()) node.remove();
  // A node that moved lost the focus: give it back.
  if (focused && focused.isConnected && document.activeElement !== focused) focused.focus({ preventScroll: true });
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function button(className, text, onClick) {
  const node = element("button", className, text);
  node.type = "button";
  if (onClick) node.addEventListener("click", onClick);
  return node;
}

// -- views and routing ---------------------------------------------------------------------

function show(view) {
  for (const name of ["login", "threads", "thread"]) $(`${name}-view`).hidden = name !== view;
  const changed = state.view !== view;
  state.view = view;
  const loggedIn = view !== "login";
  $("whoami").hidden = !loggedIn;
  $("logout").hidden = !loggedIn;
  $("whoami-name").textContent = loggedIn ? state.username : "";
  document.body.dataset.view = view;
  if (changed) {
    // Move focus to the new screen's heading, so that keyboard and screen-reader users
    // start there (the heading has tabindex=-1).
    const heading = document.querySelector(`#${view}-view h1`);
    if (heading && document.activeElement !== $("username")) heading.focus({ preventScroll: true });
  }
}

async function route() {
  showError("");
  if (!state.token) {
    await leaveThread();
    show("login");
    $("username").focus();
    return;
  }
  startSync();
  const match = /^#thread\/([A-Za-z0-9_-]{1,64})$/.exec(location.hash);
  if (match) {
    await openThread(match[1]);
  } else {
    await leaveThread();
    show("threads");
    setStatus(state.notice ?? "");
    state.notice = null;
    document.title = "Your threads · voxer-stream";
    renderThreads();
  }
}

// -- login ---------------------------------------------------------------------------------

function setMode(registering) {
  state.registering = registering;
  $("login-title").textContent = registering ? "Create an account" : "Log in";
  $("login-submit").textContent = registering ? "Create account" : "Log in";
  $("switch-text").textContent = registering ? "Have an account?" : "No account yet?";
  $("switch-mode").textContent = registering ? "Log in instead" : "Create an account";
  $("password").autocomplete = registering ? "new-password" : "current-password";
  $("password-hint").hidden = !registering;
  document.title = registering ? "Create an account · voxer-stream" : "Log in · voxer-stream";
}

async function submitLogin(event) {
  event.preventDefault();
  showError("");
  const username = $("username").value.trim();
  const password = $("password").value;
  if (!username || !password) {
    showError("Enter your username and password.");
    (username ? $("password") : $("username")).focus();
    return;
  }
  const submit = $("login-submit");
  submit.disabled = true;
  try {
    if (state.registering) {
      setStatus("Creating the account…");
      await api("POST", "/v1/accounts", { json: { username, password }, auth: false });
    }
    setStatus("Logging in…");
    const session = await apiJson("POST", "/v1/sessions", {
      json: { username, password, device: "web" },
      auth: false,
    });
    state.token = session.token;
    state.accountId = session.account_id;
    state.username = username;
    STORAGE.setItem("voxer.token", session.token);
    STORAGE.setItem("voxer.account", session.account_id);
    STORAGE.setItem("voxer.username", username);
    $("password").value = "";
    setMode(false);
    setStatus(`Logged in as ${username}.`);
    const target = location.hash.startsWith("#thread/") ? location.hash : "#threads";
    if (location.hash !== target) location.hash = target; // routes on hashchange
    else await route();
  } catch (exc) {
    setStatus("");
    showError(describe(exc));
    $("password").focus();
  } finally {
    submit.disabled = false;
  }
}

async function logout() {
  const token = state.token;
  await leaveThread();
  if (token) {
    try {
      await api("DELETE", "/v1/sessions/current");
    } catch {
      // logged out locally all the same
    }
  }
  loggedOut("Logged out.");
}

function loggedOut(message) {
  stopSync();
  for (const key of ["voxer.token", "voxer.account", "voxer.username", "voxer.reacted"]) STORAGE.removeItem(key);
  state.token = state.accountId = state.username = null;
  stopTalk();
  rtc.player?.stop();
  rtc.monitor?.stop();
  state.thread = null;
  state.messages = new Map();
  state.threads = new Map();
  state.last = new Map();
  state.threadsLoaded = false;
  state.receipts = new Set();
  state.reacted = new Map();
  state.draft = null;
  forgetImages();
  $("thread-list").replaceChildren();
  $("message-list").replaceChildren();
  $("composer-text").value = "";
  show("login");
  document.title = "Log in · voxer-stream";
  setStatus(message);
  history.replaceState(null, "", location.pathname);
}

// -- the timeline: sync, then the event stream -------------------------------------------

function setSyncState(syncState, text = "") {
  sync.state = syncState;
  const line = $("sync-state");
  line.dataset.state = syncState;
  line.textContent = text;
  line.hidden = !text;
}

function startSync() {
  if (sync.state !== "off") return;
  const generation = ++sync.generation;
  sync.since = null;
  sync.backoff = BACKOFF_MIN_MS;
  sync.ready = new Promise((resolve) => (sync.readyResolve = resolve));
  setSyncState("connecting");
  runSync(generation);
}

function stopSync() {
  sync.generation++;
  sync.abort?.abort();
  sync.abort = null;
  sync.wake?.();
  setSyncState("off");
}

const current = (generation) => generation === sync.generation && state.token;

async function runSync(generation) {
  let fresh = true; // no token yet (or the server no longer knows it): start from REST
  let loaded = false;
  while (current(generation)) {
    let opened = null;
    try {
      if (fresh) {
        sync.since = await latestToken();
        if (!current(generation)) return;
        sync.readyResolve();
        // The first time the thread list loads now (the open thread loads itself once
        // `ready`); after a restart both are read again.
        if (loaded) await reloadState();
        else await loadThreads();
        loaded = true;
        fresh = false;
      }
      opened = await readStream(generation);
    } catch (exc) {
      if (!current(generation)) return;
      // A token the server refuses (its data was reset, VXS-13.5-3): start over.
      if (exc instanceof ApiError && exc.status === 400) fresh = true;
    }
    if (!current(generation)) return;
    if (opened !== null && performance.now() - opened >= STREAM_HEALTHY_MS) sync.backoff = BACKOFF_MIN_MS;
    const delay = sync.backoff * (0.75 + Math.random() * 0.5);
    sync.backoff = Math.min(sync.backoff * 2, BACKOFF_MAX_MS);
    setSyncState("offline", `Disconnected: reconnecting in ${Math.max(1, Math.round(delay / 1000))} s…`);
    await new Promise((resolve) => {
      const timer = setTimeout(resolve, delay);
      sync.wake = () => {
        clearTimeout(timer);
        resolve();
      };
    });
    sync.wake = null;
    if (current(generation)) setSyncState("connecting", sync.state === "offline" ? "Reconnecting…" : "");
  }
}

/** The token after the account's last event: pages of `GET /v1/sync` until `more` is
 *  false (VXS-13.5-2). What they hold is in the REST state read next. */
async function latestToken() {
  let since = null;
  for (;;) {
    const query = since === null ? "" : `&since=${enc(since)}`;
    const page = await apiJson("GET", `/v1/sync?limit=${SYNC_PAGE}${query}`);
    since = page.next;
    if (!page.more) return since;
  }
}

/** Hold the event stream open and apply each event; returns when it ends (the time it
 *  opened), throws when it cannot open. */
async function readStream(generation) {
  const abort = new AbortController();
  sync.abort = abort;
  let silence = null;
  const heard = () => {
    clearTimeout(silence);
    silence = setTimeout(() => abort.abort(), STREAM_SILENCE_MS);
  };
  heard();
  let response;
  try {
    response = await fetch(`/v1/sync/stream?since=${enc(sync.since)}`, {
      headers: { Authorization: `Bearer ${state.token}`, Accept: "text/event-stream" },
      cache: "no-store",
      signal: abort.signal,
    });
  } catch {
    clearTimeout(silence);
    throw new ApiError(0, 0, "NETWORK", "the server cannot be reached");
  }
  if (!response.ok) {
    clearTimeout(silence);
    throw await failure(response, true);
  }
  const opened = performance.now();
  setSyncState("live");
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  const parser = new EventStreamParser((event) => current(generation) && serverEvent(event));
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done || !current(generation)) break;
      heard();
      parser.push(decoder.decode(value, { stream: true }));
    }
  } catch {
    // the connection dropped (or went silent): reconnect
  } finally {
    clearTimeout(silence);
    if (sync.abort === abort) sync.abort = null;
    reader.cancel().catch(() => null);
  }
  return opened;
}

/** The text/event-stream format (HTML's server-sent events): `field: value` lines, a
 *  blank line ends an event, a line starting with ":" is a comment (a keep-alive). */
class EventStreamParser {
  constructor(dispatch) {
    this.dispatch = dispatch;
    this.buffer = "";
    this.type = "";
    this.data = [];
    this.id = null;
  }

  push(text) {
    let buffer = this.buffer + text;
    // A lone CR at the end may be the first half of a CRLF: keep it for the next chunk.
    const held = buffer.endsWith("\r") ? "\r" : "";
    if (held) buffer = buffer.slice(0, -1);
    const lines = buffer.split(/\r\n|\r|\n/);
    this.buffer = lines.pop() + held;
    for (const line of lines) this.line(line);
  }

  line(line) {
    if (line === "") {
      const data = this.data.join("\n");
      const type = this.type || "message";
      const hadData = this.data.length > 0;
      this.type = "";
      this.data = [];
      if (hadData) this.dispatch({ id: this.id, type, data });
      this.id = null;
      return;
    }
    if (line.startsWith(":")) return;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    let value = colon < 0 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "data") this.data.push(value);
    else if (field === "event") this.type = value;
    else if (field === "id" && !value.includes("\0")) this.id = value;
    // "retry" is ignored: the page has its own backoff.
  }
}

function serverEvent({ id, type, data }) {
  if (type === "limited") {
    // Events after our token were dropped (VXS-13.5-4): what the page holds may be
    // stale, so read it again over REST.
    reloadState().catch((exc) => setStatus(`Cannot refresh: ${describe(exc)}`));
    return;
  }
  let event;
  try {
    event = JSON.parse(data);
  } catch {
    return; // not ours
  }
  try {
    applyEvent(event);
  } finally {
    if (id) sync.since = id;
  }
}

function applyEvent(event) {
  const { type, data } = event;
  const threadId = event.thread ?? data?.thread ?? null;
  if (state.touched && threadId) state.touched.add(threadId);
  switch (type) {
    case "thread":
      upsertThread(data);
      refreshThread(data.id);
      break;
    case "thread.removed":
      removeThread(data?.id ?? threadId);
      break;
    case "thread.settings": {
      const thread = state.threads.get(threadId);
      if (thread) setThread({ ...thread, muted: Boolean(data.muted) });
      break;
    }
    case "message":
    case "message.live":
    case "message.closed":
      gotMessage(type, data);
      break;
    case "message.recalled":
      gotRecall(threadId, data?.id ?? event.message);
      break;
    case "reaction":
      gotReaction(event.message, data);
      break;
    case "receipt":
      // Our own receipts (from any device) change our counts; others' do not.
      if (data?.account === state.accountId && threadId) refreshThread(threadId);
      break;
    default:
      break; // a newer server's event: nothing to do
  }
}

/** The thread list and the open thread, read again (after a gap in the timeline). */
async function reloadState() {
  await Promise.all([loadThreads(), state.thread ? loadMessages() : null]);
}

// -- threads -------------------------------------------------------------------------------

async function loadThreads() {
  await sync.ready;
  const touched = (state.touched = new Set());
  try {
    const { threads } = await apiJson("GET", "/v1/threads");
    const lasts = new Map();
    await eachLimited(threads, THREAD_READS_AT_ONCE, async (thread) => {
      try {
        const { messages } = await apiJson("GET", `/v1/threads/${enc(thread.id)}/messages?limit=1`);
        lasts.set(thread.id, messages[0] ?? null);
      } catch {
        lasts.set(thread.id, null);
      }
    });
    const kept = new Set(threads.map((t) => t.id));
    for (const id of state.threads.keys()) if (!kept.has(id) && !touched.has(id)) state.threads.delete(id);
    for (const thread of threads) {
      if (!touched.has(thread.id)) state.threads.set(thread.id, thread);
      noteLast(thread.id, lasts.get(thread.id));
    }
    state.threadsLoaded = true;
    renderThreads();
  } finally {
    if (state.touched === touched) state.touched = null;
  }
  // Events that came while the list loaded may be newer than what it says.
  for (const id of touched) refreshThread(id);
}

/** A thread event's thread: the participants' view, without this account's counts. */
function upsertThread(data) {
  const old = state.threads.get(data.id);
  const defaults = { role: null, muted: false, unread: 0, unheard: 0, speaking: [], online: [] };
  if (!state.last.has(data.id)) state.last.set(data.id, null);
  setThread({ ...defaults, ...old, ...data });
}

function setThread(thread) {
  state.threads.set(thread.id, thread);
  if (!state.last.has(thread.id)) state.last.set(thread.id, null);
  if (state.thread?.id === thread.id) {
    state.thread = thread;
    renderThreadHeader();
    if (thread.unread > 0) markRead();
  }
  renderThreads();
}

function removeThread(threadId) {
  const thread = state.threads.get(threadId) ?? (state.thread?.id === threadId ? state.thread : null);
  state.threads.delete(threadId);
  state.last.delete(threadId);
  renderThreads();
  if (state.thread?.id === threadId) {
    state.notice = `You are no longer in “${thread?.title || "Untitled thread"}”.`;
    location.hash = "#threads"; // routes on hashchange, which then says so
  }
}

/** The newest message of a thread, as far as the page knows. */
function noteLast(threadId, message) {
  if (!message) {
    if (!state.last.has(threadId)) state.last.set(threadId, null);
    return;
  }
  const last = state.last.get(threadId);
  if (!last || last.id === message.id) state.last.set(threadId, mergeMessage(last, message));
  else if (byTime(last, message) < 0) state.last.set(threadId, message);
}

// A thread's own view (its counts, who speaks) is read again when an event says it
// changed; a burst of events gives at most one read running and one more after it.
const refreshing = new Map();

function refreshThread(threadId) {
  const running = refreshing.get(threadId);
  if (running) {
    running.again = true;
    return;
  }
  const entry = { again: true };
  refreshing.set(threadId, entry);
  const generation = sync.generation;
  (async () => {
    try {
      await sleep(0); // the rest of the events of this chunk first
      while (entry.again && current(generation)) {
        entry.again = false;
        const thread = await apiJson("GET", `/v1/threads/${enc(threadId)}`);
        if (current(generation)) setThread(thread);
      }
    } catch (exc) {
      if (exc instanceof ApiError && exc.errorName === "THREAD_NOT_FOUND") removeThread(threadId);
    } finally {
      refreshing.delete(threadId);
    }
  })();
}

function activity(thread) {
  return Math.max(thread.created ?? 0, state.last.get(thread.id)?.created ?? 0);
}

function renderThreads() {
  const threads = [...state.threads.values()].sort(
    (a, b) => activity(b) - activity(a) || (a.title || "").localeCompare(b.title || ""),
  );
  $("threads-empty").hidden = !state.threadsLoaded || threads.length > 0;
  syncList($("thread-list"), threads, (t) => t.id, createThreadItem, updateThreadItem);
}

function createThreadItem() {
  const item = element("li", "thread");
  const link = element("a", "thread-link");
  const top = element("span", "thread-top");
  top.append(element("span", "thread-name"), element("time", "thread-time"));
  const meta = element("span", "thread-meta");
  meta.append(
    element("span", "badge live"),
    element("span", "count unread"),
    element("span", "count unheard"),
    element("span", "badge muted", "muted"),
  );
  link.append(top, element("span", "thread-people"), element("span", "thread-last"), meta);
  item.append(link);
  return item;
}

function updateThreadItem(item, thread) {
  const link = item.firstChild;
  link.href = `#thread/${thread.id}`;
  const [top, people, lastLine, meta] = link.children;
  const [name, time] = top.children;
  name.textContent = thread.title || "Untitled thread";
  people.textContent = others(thread);
  const last = state.last.get(thread.id);
  const lastText = last ? `${usernameOf(thread, last.sender)}: ${preview(last)}` : "No messages yet";
  lastLine.textContent = lastText;
  time.textContent = last ? shortWhen(last.created) : "";
  time.hidden = !last;
  if (last) time.dateTime = new Date(last.created).toISOString();
  const [live, unread, unheard, muted] = meta.children;
  const speaking = speakers(thread);
  live.textContent = speaking;
  live.hidden = !speaking;
  item.classList.toggle("speaking", Boolean(speaking));
  unread.textContent = `${thread.unread} unread`;
  unread.hidden = !thread.unread;
  unheard.textContent = `${thread.unheard} unheard`;
  unheard.hidden = !thread.unheard;
  muted.hidden = !thread.muted;
  item.classList.toggle("has-unread", Boolean(thread.unread || thread.unheard));
  // One sentence for screen readers (the spans alone would run together).
  const sentence = [
    name.textContent,
    people.textContent,
    speaking,
    counts(thread),
    thread.muted ? "muted" : "",
    last ? `last: ${lastText}, ${when(last.created)}` : lastText,
  ];
  link.setAttribute("aria-label", sentence.filter(Boolean).join(", "));
}

async function createThread(event) {
  event.preventDefault();
  showError("");
  const title = $("thread-title").value.trim();
  const participants = $("thread-people")
    .value.split(/[\s,]+/)
    .map((name) => name.trim().toLowerCase())
    .filter(Boolean);
  try {
    const thread = await apiJson("POST", "/v1/threads", { json: { title, participants, id: randomId() } });
    $("thread-title").value = "";
    $("thread-people").value = "";
    $("new-thread").open = false;
    setThread(thread);
    setStatus(`Thread “${thread.title || "Untitled"}” created.`);
    location.hash = `#thread/${thread.id}`;
  } catch (exc) {
    showError(describe(exc));
  }
}

// -- a thread ------------------------------------------------------------------------------

async function openThread(threadId) {
  if (state.thread?.id !== threadId) {
    await leaveThread();
    let thread;
    try {
      thread = await apiJson("GET", `/v1/threads/${enc(threadId)}`);
    } catch (exc) {
      if (!state.token) return;
      show("threads");
      renderThreads();
      showError(describe(exc));
      return;
    }
    state.messages = new Map();
    state.announced = new Map();
    state.monitored = new Set();
    state.hasEarlier = false;
    state.loaded = null;
    $("message-list").replaceChildren();
    $("messages-empty").hidden = true;
    state.thread = thread;
    setThread(thread);
  }
  renderThreadHeader();
  show("thread");
  setStatus("");
  await loadMessages();
}

async function leaveThread() {
  stopTalk();
  await Promise.all([rtc.talk?.done, rtc.player?.stop(), rtc.monitor?.stop()]);
  state.thread = null;
  state.loaded = null;
  state.messages = new Map();
  state.announced = new Map();
  state.monitored = new Set();
}

function renderThreadHeader() {
  const thread = state.thread;
  if (!thread) return;
  const title = thread.title || "Untitled thread";
  $("thread-title-text").textContent = title;
  $("thread-people-text").textContent = thread.participants.map((p) => p.username).sort().join(", ");
  document.title = `${title} · voxer-stream`;
  const mute = $("mute");
  mute.setAttribute("aria-pressed", String(Boolean(thread.muted))); // its name stays "Mute"
  const speaking = speakers(thread);
  $("thread-speaking").textContent = speaking ? `${speaking} now` : "";
  $("thread-speaking").hidden = !speaking;
  const canPost = thread.role !== "listen" && (!thread.controlled || thread.role === "admin");
  $("talkbar").classList.toggle("read-only", !canPost);
  $("read-only").hidden = canPost;
}

/** The open thread's newest page of messages (or the page before `before`). */
async function loadMessages(before = null) {
  await sync.ready; // read after the token: an event after it may repeat what we read
  const thread = state.thread;
  if (!thread) return;
  const query = before ? `&before=${enc(before)}` : "";
  let messages;
  try {
    ({ messages } = await apiJson("GET", `/v1/threads/${enc(thread.id)}/messages?limit=${MESSAGES_PAGE}${query}`));
  } catch (exc) {
    if (state.token && state.thread?.id === thread.id) showError(`Cannot read the messages: ${describe(exc)}`);
    return;
  }
  if (state.thread?.id !== thread.id) return;
  const first = state.loaded !== thread.id;
  state.loaded = thread.id;
  if (before || first) state.hasEarlier = messages.length === MESSAGES_PAGE;
  for (const message of messages) {
    upsertMessage(message, { fromRest: true });
    // What was there before the page looked is not news.
    if (!state.announced.has(message.id)) state.announced.set(message.id, message.state);
  }
  if (!before && messages.length) noteLast(thread.id, messages[messages.length - 1]);
  renderMessages({ scroll: before ? "keep" : first ? "bottom" : "follow" });
  markRead();
}

/** Merge what the page knows of a message with a newer view of it: a recall and a
 *  close are final (an older event replayed after a REST read must not undo them), and
 *  reaction counts come from REST and reaction events only (message events carry none). */
function mergeMessage(old, message, { fromRest = false } = {}) {
  if (!old) return message;
  if (old.recalled && !message.recalled) return old;
  if (old.state === "closed" && message.state === "live") return old;
  return { ...message, reactions: fromRest ? message.reactions : old.reactions };
}

function upsertMessage(message, options) {
  state.messages.set(message.id, mergeMessage(state.messages.get(message.id), message, options));
}

function gotMessage(type, message) {
  if (!message?.id || !message.thread) return;
  noteLast(message.thread, message);
  refreshThread(message.thread); // its counts, who is speaking (or the thread itself, if new)
  renderThreads();
  if (state.thread?.id !== message.thread) return;
  upsertMessage(message);
  const shown = state.messages.get(message.id);
  announceMessage(type, shown);
  monitorHeard(type, shown);
  renderMessages({ scroll: message.sender === state.accountId ? "bottom" : "follow" });
  if (shown.sender !== state.accountId && shown.kind !== "audio" && !shown.recalled && pageVisible()) {
    sendReceipt(shown, "read");
  }
}

function gotRecall(threadId, messageId) {
  const mark = (m) => (m && m.id === messageId ? { ...m, recalled: m.recalled || Date.now(), reactions: {} } : m);
  if (threadId && state.last.get(threadId)?.id === messageId) state.last.set(threadId, mark(state.last.get(threadId)));
  if (threadId) refreshThread(threadId);
  if (state.messages.has(messageId)) {
    const message = mark(state.messages.get(messageId));
    for (const key of ["text", "image", "location"]) delete message[key];
    state.messages.set(messageId, message);
    renderMessages();
  }
  renderThreads();
}

function gotReaction(messageId, data) {
  if (!data) return;
  if (data.account === state.accountId) {
    const mine = state.reacted.get(messageId) ?? new Set();
    if (data.on) mine.add(data.emoji);
    else mine.delete(data.emoji);
    state.reacted.set(messageId, mine);
    saveReacted();
  }
  const message = state.messages.get(messageId);
  if (message && data.reactions) {
    state.messages.set(messageId, { ...message, reactions: data.reactions });
    renderMessages();
  }
}

function announceMessage(type, message) {
  if (message.sender === state.accountId) return;
  const said = state.announced.get(message.id);
  const who = usernameOf(state.thread, message.sender);
  if (message.kind === "audio") {
    if (message.state === "live" && !said) {
      announce(`${who} is talking`);
      state.announced.set(message.id, "live");
    } else if (message.state === "closed" && said !== "closed") {
      announce(`New message from ${who}`);
      state.announced.set(message.id, "closed");
    }
  } else if (!said) {
    announce(`New message from ${who}: ${preview(message)}`);
    state.announced.set(message.id, "closed");
  }
}

/** A message of someone else that the monitor played from its start to its close is
 *  heard (when the monitor was not silenced meanwhile). */
function monitorHeard(type, message) {
  if (message.kind !== "audio" || message.sender === state.accountId) return;
  const monitoring = rtc.monitor?.state === "playing" && !$("monitor-audio").muted && pageVisible();
  if (message.state === "live" && type !== "message.closed") {
    if (monitoring) state.monitored.add(message.id);
  } else if (message.state === "closed" && state.monitored.delete(message.id) && monitoring) {
    sendReceipt(message, "heard");
  }
}

function pageVisible() {
  return document.visibilityState === "visible" && state.view === "thread";
}

// -- receipts ------------------------------------------------------------------------------

/** One receipt (VXS-13.4-2), once per page; its event brings the new counts back.
 *  True when the server took it. */
async function sendReceipt(message, kind) {
  const key = `${kind}:${message.id}`;
  if (state.receipts.has(key)) return false;
  state.receipts.add(key);
  try {
    await api("POST", `/v1/messages/${enc(message.id)}/receipts`, { json: { kind } });
    return true;
  } catch (exc) {
    // A network or server failure is tried again next time; a refusal is final.
    if (!(exc instanceof ApiError) || exc.status === 0 || exc.status >= 500) state.receipts.delete(key);
    return false;
  }
}

let marking = null;

/** The open thread has unread messages (its `unread` says so): read receipts for the
 *  messages it shows, newest first, a few at a time, until the count is 0. */
function markRead() {
  if (marking) {
    marking.again = true;
    return;
  }
  const run = (marking = { again: true });
  (async () => {
    try {
      while (run.again) {
        run.again = false;
        const thread = state.thread;
        if (!thread || !pageVisible() || !(thread.unread > 0)) continue;
        const pending = [...state.messages.values()]
          .filter((m) => m.sender !== state.accountId && m.kind !== "audio" && !m.recalled)
          .filter((m) => !state.receipts.has(`read:${m.id}`))
          .sort((a, b) => byTime(b, a));
        if (!pending.length) continue;
        const sent = await Promise.all(pending.slice(0, RECEIPTS_AT_ONCE).map((m) => sendReceipt(m, "read")));
        if (!sent.some(Boolean)) break; // the server refuses: not now
        if (state.thread?.id !== thread.id) continue;
        // The count again (the receipts' events would bring it too, a little later):
        // setThread asks for another round while it is above 0.
        setThread(await apiJson("GET", `/v1/threads/${enc(thread.id)}`));
      }
    } catch {
      // the next event or visit tries again
    } finally {
      marking = null;
    }
  })();
}

// -- the messages of the open thread ---------------------------------------------------------

function renderMessages({ scroll = "none" } = {}) {
  const list = $("message-list");
  const root = document.documentElement;
  // Follow the newest message, as a chat does, unless the person scrolled up to read.
  const atBottom = window.innerHeight + window.scrollY >= root.scrollHeight - 160;
  const before = list.lastElementChild?.dataset.key;
  const height = root.scrollHeight;
  const messages = [...state.messages.values()].sort(byTime);
  syncList(list, messages, (m) => m.id, createMessageItem, updateMessageItem);
  $("messages-empty").hidden = messages.length > 0;
  $("earlier").hidden = !state.hasEarlier;
  const grew = list.lastElementChild?.dataset.key !== before;
  if (scroll === "bottom" || (scroll === "follow" && grew && atBottom)) window.scrollTo(0, root.scrollHeight);
  else if (scroll === "keep") window.scrollTo(0, window.scrollY + root.scrollHeight - height);
}

async function loadEarlier() {
  const first = [...state.messages.values()].sort(byTime)[0];
  if (!first) return;
  const more = $("earlier");
  more.disabled = true;
  try {
    await loadMessages(first.id);
  } finally {
    more.disabled = false;
    if (more.hidden) $("thread-title-text").focus({ preventScroll: true });
  }
}

function createMessageItem(message) {
  const item = element("li", "message");
  const head = element("div", "message-head");
  head.append(
    element("span", "sender"),
    element("span", "directed"),
    element("span", "forwarded", "forwarded"),
    element("time", "created"),
  );
  const body = element("div", "message-body");
  const reactions = element("div", "reactions");
  reactions.setAttribute("role", "group");
  item.append(head, body, reactions);
  item.dataset.id = message.id;
  return item;
}

function updateMessageItem(item, message) {
  const thread = state.thread;
  const sender = usernameOf(thread, message.sender);
  const [head, body, reactions] = item.children;
  const [senderNode, directed, forwarded, created] = head.children;
  senderNode.textContent = sender;
  directed.textContent = message.to ? `to ${usernameOf(thread, message.to)}` : "";
  directed.hidden = !message.to;
  forwarded.hidden = !message.forwarded_from;
  created.textContent = when(message.created);
  created.dateTime = new Date(message.created).toISOString();
  item.dataset.kind = message.recalled ? "recalled" : message.kind;
  item.dataset.state = message.state;
  item.classList.toggle("mine", message.sender === state.accountId);
  const live = !message.recalled && message.state === "live";
  item.classList.toggle("live", live);
  // The body is built once per kind (a recall replaces it), then kept up to date: a
  // control inside keeps its focus while events come in.
  const kind = message.recalled ? "recalled" : message.kind;
  if (body.dataset.kind !== kind) {
    body.dataset.kind = kind;
    body.replaceChildren(...buildBody(kind, message.id));
  }
  const fill = { audio: updateAudio, text: updateText, image: updateImage, location: updateLocation }[kind];
  if (fill) fill(body, message, sender);
  else if (kind !== "recalled") body.textContent = `A ${message.kind} message (this page cannot show it).`;
  updateReactions(reactions, message, sender);
}

function buildBody(kind, messageId) {
  switch (kind) {
    case "audio": {
      const meta = element("div", "message-meta");
      meta.append(element("span", "duration"), element("span", "badge"));
      const actions = element("div", "message-actions");
      actions.append(button("play", "Play", () => togglePlay(messageId)));
      return [meta, actions];
    }
    case "text":
      return [element("p", "text")];
    case "image": {
      const open = button("image-open", undefined, () => openImage(messageId));
      const img = element("img", "thumbnail");
      img.alt = "";
      img.decoding = "async";
      open.append(img);
      return [open, element("p", "caption")];
    }
    case "location": {
      const where = element("p", "location");
      where.append(element("span", "place"), element("span", "coords"));
      const map = element("a", "map", "Open in OpenStreetMap");
      map.target = "_blank";
      map.rel = "noopener noreferrer";
      return [where, map];
    }
    case "recalled":
      return [element("p", "recalled", "message recalled")];
    default:
      return [];
  }
}

function updateAudio(body, message, sender) {
  const [meta, actions] = body.children;
  const live = message.state === "live";
  meta.children[0].textContent = live ? "" : seconds(message.duration);
  const badge = meta.children[1];
  badge.textContent = live ? "live" : "closed";
  badge.className = `badge ${live ? "live" : "closed"}`;
  const playing = rtc.player?.msg === message.id;
  const play = actions.firstChild;
  play.textContent = playing ? "Stop" : live ? "Catch up" : "Play";
  play.setAttribute("aria-pressed", String(playing));
  const kind = live ? "live message" : "message";
  const what = `${sender === "you" ? `your ${kind}` : `the ${kind} from ${sender}`} at ${when(message.created)}`;
  play.setAttribute(
    "aria-label",
    playing ? `Stop playing ${what}` : live ? `Catch up on ${what} (from its start, faster)` : `Play ${what}`,
  );
}

function updateText(body, message) {
  body.firstChild.textContent = message.text ?? "";
}

function updateImage(body, message, sender) {
  const [open, caption] = body.children;
  const image = message.image ?? {};
  const img = open.firstChild;
  const scale = Math.min(1, THUMBNAIL_SIDE / Math.max(image.width || 1, image.height || 1));
  if (image.width && image.height) {
    img.width = Math.max(1, Math.round(image.width * scale));
    img.height = Math.max(1, Math.round(image.height * scale));
  }
  const described = image.caption ? `: ${image.caption}` : "";
  img.alt = `Image from ${sender}${described}`;
  open.setAttribute("aria-label", `Open the image from ${sender} (${image.width}×${image.height})${described}`);
  caption.textContent = image.caption ?? "";
  caption.hidden = !image.caption;
  if (image.thumbnail && img.dataset.src !== image.thumbnail) {
    img.dataset.src = image.thumbnail;
    imageUrl(image.thumbnail)
      .then((url) => {
        if (img.dataset.src === image.thumbnail) img.src = url;
      })
      .catch(() => {
        img.alt = `Image from ${sender} (cannot be loaded)`;
      });
  }
}

function updateLocation(body, message) {
  const [where, map] = body.children;
  const place = message.location ?? {};
  const lat = Number(place.lat);
  const lon = Number(place.lon);
  where.children[0].textContent = place.label || "Location";
  const accuracy = place.accuracy ? ` (±${Math.round(place.accuracy)} m)` : "";
  where.children[1].textContent = `${lat.toFixed(5)}, ${lon.toFixed(5)}${accuracy}`;
  map.href = `https://www.openstreetmap.org/?mlat=${lat}&mlon=${lon}#map=16/${lat}/${lon}`;
  map.setAttribute("aria-label", `Open ${place.label || "the location"} in OpenStreetMap (new tab)`);
}

function updateReactions(group, message, sender) {
  group.hidden = Boolean(message.recalled);
  if (message.recalled) return;
  group.setAttribute("aria-label", `Reactions to the message from ${sender}`);
  const counts = message.reactions ?? {};
  const known = new Map(REACTIONS);
  const emoji = [...REACTIONS.map(([e]) => e), ...Object.keys(counts).filter((e) => !known.has(e)).sort()];
  // The server says which are ours when it answered over REST ("mine"); events carry
  // counts only, and this tab's own clicks are remembered in state.reacted.
  // Taken once per REST answer: a later render of the same object must not bring back
  // what a click has changed since.
  if (Array.isArray(message.mine)) {
    state.reacted.set(message.id, new Set(message.mine));
    delete message.mine;
  }
  const mine = state.reacted.get(message.id) ?? new Set();
  syncList(
    group,
    emoji,
    (e) => e,
    (e) => {
      const react = button("reaction", undefined, () => toggleReaction(message.id, e));
      react.append(element("span", "emoji", e), element("span", "reaction-count"));
      react.querySelector(".emoji").setAttribute("aria-hidden", "true");
      return react;
    },
    (react, e) => {
      const count = counts[e] ?? 0;
      react.lastChild.textContent = count ? String(count) : "";
      const pressed = mine.has(e);
      react.setAttribute("aria-pressed", String(pressed));
      react.setAttribute("aria-label", count ? `${known.get(e) ?? e}, ${count}` : (known.get(e) ?? e));
      react.classList.toggle("used", count > 0);
    },
  );
}

async function toggleReaction(messageId, emoji) {
  const mine = state.reacted.get(messageId) ?? new Set();
  const on = !mine.has(emoji);
  try {
    const { reactions } = await apiJson(on ? "PUT" : "DELETE", `/v1/messages/${enc(messageId)}/reactions/${enc(emoji)}`);
    if (on) mine.add(emoji);
    else mine.delete(emoji);
    state.reacted.set(messageId, mine);
    saveReacted();
    const message = state.messages.get(messageId);
    if (message) state.messages.set(messageId, { ...message, reactions });
    renderMessages();
  } catch (exc) {
    showError(`The reaction failed: ${describe(exc)}`);
  }
}

// -- images ----------------------------------------------------------------------------------
// `<img src>` cannot send the Authorization header: each image is fetched, then shown
// from a blob: URL when the page's Content-Security-Policy allows those in img-src, or
// else from a data: URL.

const images = new Map(); // path -> Promise of a URL
let blobImages = null;

function imagesMayBeBlobs() {
  blobImages ??= fetch("/app/icon.svg", { method: "HEAD", cache: "no-store" })
    .then((response) => {
      const policy = response.headers.get("Content-Security-Policy") ?? "";
      const directive = policy.split(";").map((d) => d.trim().split(/\s+/));
      const imgSrc = directive.find((d) => d[0] === "img-src") ?? directive.find((d) => d[0] === "default-src");
      return Boolean(imgSrc?.includes("blob:")) || !policy;
    })
    .catch(() => false);
  return blobImages;
}

function imageUrl(path) {
  let url = images.get(path);
  if (!url) {
    url = (async () => {
      const blob = await (await api("GET", path)).blob();
      if (await imagesMayBeBlobs()) return URL.createObjectURL(blob);
      return await new Promise((resolve, reject) => {
        const reader = new FileReader();
        reader.onload = () => resolve(reader.result);
        reader.onerror = () => reject(reader.error);
        reader.readAsDataURL(blob);
      });
    })();
    images.set(path, url);
    url.catch(() => images.delete(path));
  }
  return url;
}

function forgetImages() {
  for (const url of images.values()) {
    url.then((u) => u.startsWith("blob:") && URL.revokeObjectURL(u)).catch(() => null);
  }
  images.clear();
}

async function openImage(messageId) {
  const message = state.messages.get(messageId);
  const image = message?.image;
  if (!image) return;
  const dialog = $("image-dialog");
  const opener = document.activeElement;
  const full = $("image-full");
  const sender = usernameOf(state.thread, message.sender);
  full.removeAttribute("src");
  full.alt = `Image from ${sender}${image.caption ? `: ${image.caption}` : ""}`;
  full.width = image.width;
  full.height = image.height;
  $("image-dialog-title").textContent = `Image from ${sender}`;
  $("image-caption").textContent = image.caption ?? "";
  $("image-caption").hidden = !image.caption;
  dialog.addEventListener("close", () => opener?.isConnected && opener.focus(), { once: true });
  dialog.showModal();
  $("image-close").focus();
  try {
    const url = await imageUrl(image.url);
    if (dialog.open) full.src = url;
  } catch (exc) {
    $("image-caption").textContent = `The image cannot be loaded: ${describe(exc)}`;
    $("image-caption").hidden = false;
  }
}

// -- writing -----------------------------------------------------------------------------------

async function sendText(event) {
  event?.preventDefault();
  const box = $("composer-text");
  const text = box.value;
  const thread = state.thread;
  if (!thread || state.sending) return;
  if (!text.trim()) {
    box.focus();
    return;
  }
  showError("");
  // The id is chosen once for this text: sending it again after a failure cannot post it
  // twice (VXS-13.3-2).
  if (state.draft?.text !== text || state.draft.thread !== thread.id) {
    state.draft = { thread: thread.id, text, id: randomId() };
  }
  const draft = state.draft;
  state.sending = true;
  $("composer-send").disabled = true;
  try {
    const message = await withRetry(() =>
      apiJson("POST", `/v1/threads/${enc(draft.thread)}/messages`, {
        json: { kind: "text", text: draft.text, id: draft.id },
      }),
    );
    if (state.draft === draft) state.draft = null;
    if (box.value === draft.text) box.value = "";
    fitComposer();
    if (state.thread?.id === draft.thread) {
      upsertMessage(message);
      noteLast(draft.thread, message);
      renderMessages({ scroll: "bottom" });
      renderThreads();
    }
    setStatus("Message sent.");
  } catch (exc) {
    showError(`Not sent: ${describe(exc)}. Press Send to try again.`);
  } finally {
    state.sending = false;
    $("composer-send").disabled = false;
  }
}

function composerKey(event) {
  // Enter sends, Shift+Enter is a new line (and Enter while an IME composes is its own).
  if (event.key !== "Enter" || event.shiftKey || event.isComposing || event.keyCode === 229) return;
  event.preventDefault();
  sendText();
}

function fitComposer() {
  const box = $("composer-text");
  const lines = Math.min(6, box.value.split("\n").length);
  box.rows = Math.max(1, lines);
}

async function sendImage() {
  const input = $("composer-image");
  const [file] = input.files ?? [];
  input.value = "";
  const thread = state.thread;
  if (!file || !thread) return;
  showError("");
  setStatus("Sending the image…");
  const id = randomId();
  try {
    const media = await apiJson("POST", "/v1/media", { body: file, type: file.type || "application/octet-stream" });
    const message = await withRetry(() =>
      apiJson("POST", `/v1/threads/${enc(thread.id)}/messages`, { json: { kind: "image", media: media.id, id } }),
    );
    if (state.thread?.id === thread.id) {
      upsertMessage(message);
      noteLast(thread.id, message);
      renderMessages({ scroll: "bottom" });
    }
    setStatus("Image sent.");
  } catch (exc) {
    setStatus("");
    showError(`The image was not sent: ${describe(exc)}`);
  }
}

async function toggleMute() {
  const thread = state.thread;
  if (!thread) return;
  try {
    setThread(await apiJson(thread.muted ? "DELETE" : "PUT", `/v1/threads/${enc(thread.id)}/mute`));
    setStatus(state.thread?.muted ? "Muted: no notifications from this thread." : "Unmuted.");
  } catch (exc) {
    showError(describe(exc));
  }
}

// -- WebRTC helpers -------------------------------------------------------------------------

/** The offer must be complete (VXS-12-1: no trickle ICE): wait until gathering is done,
 *  at most GATHER_TIMEOUT_MS (then what has been gathered goes). */
function iceGathered(pc) {
  return new Promise((resolve) => {
    if (pc.iceGatheringState === "complete") return resolve();
    const done = () => {
      clearTimeout(timer);
      pc.removeEventListener("icegatheringstatechange", check);
      resolve();
    };
    const check = () => pc.iceGatheringState === "complete" && done();
    const timer = setTimeout(done, GATHER_TIMEOUT_MS);
    pc.addEventListener("icegatheringstatechange", check);
  });
}

function connected(pc, cancelled) {
  return new Promise((resolve, reject) => {
    const check = () => {
      if (pc.connectionState === "connected") finish(resolve);
      else if (["failed", "closed"].includes(pc.connectionState))
        finish(() => reject(new Error(`the connection ${pc.connectionState}`)));
      else if (cancelled?.()) finish(resolve);
    };
    const finish = (fn) => {
      clearTimeout(timer);
      clearInterval(ticker);
      pc.removeEventListener("connectionstatechange", check);
      fn();
    };
    const timer = setTimeout(() => finish(() => reject(new Error("the audio connection timed out"))), CONNECT_TIMEOUT_MS);
    const ticker = setInterval(check, 100);
    pc.addEventListener("connectionstatechange", check);
    check();
  });
}

function preferOpus(transceiver) {
  // Opus only (VXS-12-1). Browsers offer it first anyway; this keeps other codecs out.
  try {
    const caps = (window.RTCRtpReceiver?.getCapabilities?.("audio") ?? { codecs: [] }).codecs;
    const opus = caps.filter((c) => c.mimeType.toLowerCase() === "audio/opus");
    if (opus.length && transceiver.setCodecPreferences) transceiver.setCodecPreferences(opus);
  } catch {
    // an older browser: its default offer has Opus
  }
}

async function rtpStats(pc, type) {
  if (!pc || pc.signalingState === "closed") return null;
  const report = await pc.getStats();
  for (const entry of report.values()) {
    if (entry.type === type && entry.kind === "audio") {
      const { packetsReceived, packetsSent, bytesReceived, bytesSent, totalAudioEnergy, audioLevel, packetsLost } = entry;
      return { packetsReceived, packetsSent, bytesReceived, bytesSent, totalAudioEnergy, audioLevel, packetsLost };
    }
  }
  return null;
}

// -- push-to-talk (WHIP) -------------------------------------------------------------------

class Talk {
  constructor(thread) {
    this.thread = thread;
    this.msg = randomId();
    this.released = false;
    this.started = performance.now();
    this.pc = null;
    this.stream = null;
    this.location = null;
    this.whenReleased = new Promise((resolve) => (this.release = () => ((this.released = true), resolve())));
    this.done = this.run();
  }

  async run() {
    setTalkState("connecting");
    try {
      this.stream = await navigator.mediaDevices.getUserMedia({
        audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true },
        video: false,
      });
      if (this.released) return this.tapped(); // a tap, not a hold: nothing was sent
      const pc = (this.pc = new RTCPeerConnection({ iceServers: [] }));
      const [track] = this.stream.getAudioTracks();
      preferOpus(pc.addTransceiver(track, { direction: "sendonly", streams: [this.stream] }));
      await pc.setLocalDescription(await pc.createOffer());
      await iceGathered(pc);
      if (this.released) return this.tapped();
      const path = `/v1/threads/${enc(this.thread.id)}/whip?msg=${this.msg}`;
      const response = await api("POST", path, { sdp: pc.localDescription.sdp });
      this.location = response.headers.get("Location");
      await pc.setRemoteDescription({ type: "answer", sdp: await response.text() });
      await connected(pc, () => this.released);
      if (!this.released) {
        setTalkState("talking");
        announce("Talking");
        pc.addEventListener("connectionstatechange", () => {
          if (["failed", "closed"].includes(pc.connectionState) && !this.released) {
            showError("The audio connection was lost: the message so far is kept.");
            this.release();
          }
        });
        await this.whenReleased;
      }
      setTalkState("sending");
      // Stop sending at the release itself: the message is what was said while held.
      // RELEASE_TAIL_MS then lets the last packets in flight reach the server before the
      // DELETE (what it sees well after the DELETE is not part of the message, VXS-12-4).
      await Promise.all(pc.getSenders().map((sender) => sender.replaceTrack(null).catch(() => null)));
      if (pc.connectionState === "connected") await new Promise((r) => setTimeout(r, RELEASE_TAIL_MS));
      rtc.lastStats.talk = await rtpStats(pc, "outbound-rtp").catch(() => null);
      // DELETE answers once the message is closed and durable (VXS-12-3).
      const closed = await apiJson("DELETE", this.location);
      this.location = null;
      setStatus(`Sent: ${seconds(closed.duration ?? 0)} (${closed.chunks ?? 0} packets).`);
      announce("Message sent");
    } catch (exc) {
      showError(`Talking failed: ${describe(exc)}`);
      setStatus("");
    } finally {
      await this.cleanup();
    }
  }

  tapped() {
    setStatus("Nothing was sent: hold the button (or the space bar) while you speak.");
  }

  async cleanup() {
    if (this.location) {
      // A failure after the POST: end the session, so that the message closes now.
      const location = this.location;
      this.location = null;
      await api("DELETE", location).catch(() => null);
    }
    this.pc?.close();
    for (const track of this.stream?.getTracks() ?? []) track.stop();
    if (rtc.talk === this) {
      rtc.talk = null;
      setTalkState("idle");
    }
  }
}

function startTalk() {
  if (rtc.talk || state.view !== "thread" || !state.thread) return;
  showError("");
  if (!navigator.mediaDevices?.getUserMedia || !window.RTCPeerConnection) {
    showError("This browser cannot record audio here (it needs WebRTC, on http://127.0.0.1 or https).");
    return;
  }
  rtc.talk = new Talk(state.thread);
}

function stopTalk() {
  rtc.talk?.release();
}

function setTalkState(talkState) {
  const button = $("ptt");
  button.dataset.state = talkState;
  button.setAttribute("aria-pressed", String(talkState === "connecting" || talkState === "talking"));
  const label = {
    idle: "Hold to talk",
    connecting: "Connecting…",
    talking: "Talking… release to send",
    sending: "Sending…",
  }[talkState];
  button.querySelector(".ptt-label").textContent = label;
  document.body.classList.toggle("is-talking", talkState === "talking");
  updateMuting();
  if (talkState === "connecting") setStatus("Connecting the microphone…");
  else if (talkState === "talking") setStatus("Talking: everyone in the thread hears you live.");
  else if (talkState === "sending") setStatus("Sending the end of the message…");
  clearInterval(setTalkState.timer);
  const timer = button.querySelector(".ptt-timer");
  timer.textContent = "";
  if (talkState === "talking") {
    const start = performance.now();
    setTalkState.timer = setInterval(() => {
      timer.textContent = `${((performance.now() - start) / 1000).toFixed(1)} s`;
    }, 100);
  }
}

function isTextField(target) {
  if (!(target instanceof HTMLElement)) return false;
  if (target.isContentEditable) return true;
  if (target instanceof HTMLTextAreaElement || target instanceof HTMLSelectElement) return true;
  if (target instanceof HTMLInputElement) {
    return !["button", "checkbox", "radio", "submit", "reset", "range", "color", "file"].includes(target.type);
  }
  return false;
}

function setUpPushToTalk() {
  const button = $("ptt");
  button.addEventListener("pointerdown", (event) => {
    if (event.button !== 0) return;
    event.preventDefault(); // no text selection, no focus ring flash, no emulated mouse
    button.setPointerCapture?.(event.pointerId); // the release counts wherever it happens
    startTalk();
  });
  for (const type of ["pointerup", "pointercancel", "lostpointercapture"]) {
    button.addEventListener(type, () => stopTalk());
  }
  button.addEventListener("contextmenu", (event) => event.preventDefault()); // long press
  button.addEventListener("click", (event) => {
    // A click from the keyboard (Enter): start or stop, for people who cannot hold a key.
    if (event.detail !== 0) return;
    if (rtc.talk) stopTalk();
    else startTalk();
  });
  // The space bar talks, unless the focus is in a text field, or on another control that
  // the keyboard moved it to (there Space keeps its usual meaning: press that control).
  // A control that only holds the focus because it was clicked does not count. (Not
  // :focus-visible: Chromium turns it on at the very key press this is about.)
  let clicked = null;
  document.addEventListener("pointerdown", (event) => (clicked = event.target.closest?.("button, summary") ?? null), true);
  document.addEventListener("keydown", (event) => event.key === "Tab" && (clicked = null), true);
  const spaceTalks = (event) =>
    event.code === "Space" &&
    state.view === "thread" &&
    !isTextField(event.target) &&
    !(event.target !== button && event.target.matches?.("button, summary") && event.target !== clicked);
  document.addEventListener("keydown", (event) => {
    if (!spaceTalks(event)) return;
    event.preventDefault();
    if (!event.repeat) startTalk();
  });
  document.addEventListener("keyup", (event) => {
    if (!spaceTalks(event)) return;
    event.preventDefault(); // no click on the focused button
    stopTalk();
  });
  window.addEventListener("blur", () => stopTalk());
}

// -- playing (WHEP) ------------------------------------------------------------------------

/** One WHEP session: a recvonly audio peer whose track plays in `audio`. It ends when
 *  `stop` is called (DELETE + close) or when the server ends it: after a message's last
 *  packet the server closes its peer (RTCP BYE, VXS-12-8), seen here as the DTLS
 *  transport closing or the session's state turning "ended". */
class Listen {
  constructor({ path, audio, msg = null, onState }) {
    this.path = path;
    this.audio = audio;
    this.msg = msg;
    this.onState = onState;
    this.pc = null;
    this.location = null;
    this.state = "connecting";
    this.stopped = false;
    this.watch = null;
    this.ended = new Promise((resolve) => (this.resolveEnded = resolve));
  }

  async start() {
    this.onState(this, "connecting");
    try {
      const pc = (this.pc = new RTCPeerConnection({ iceServers: [] }));
      const transceiver = pc.addTransceiver("audio", { direction: "recvonly" });
      preferOpus(transceiver);
      pc.addEventListener("track", (event) => {
        this.audio.srcObject = new MediaStream([event.track]);
        this.audio.play().catch(() => null); // autoplay after the click that started it
      });
      await pc.setLocalDescription(await pc.createOffer());
      await iceGathered(pc);
      if (this.stopped) return this.finish("stopped");
      const response = await api("POST", this.path, { sdp: pc.localDescription.sdp });
      this.location = response.headers.get("Location");
      if (this.stopped) return this.deleteSession(); // stopped while the POST ran
      await pc.setRemoteDescription({ type: "answer", sdp: await response.text() });
      transceiver.receiver.transport?.addEventListener("statechange", () => {
        const dtls = transceiver.receiver.transport.state;
        if (dtls === "closed" || dtls === "failed") this.serverEnded(dtls === "failed");
      });
      pc.addEventListener("connectionstatechange", () => {
        if (pc.connectionState === "failed") this.serverEnded(true);
      });
      await connected(pc, () => this.stopped);
      if (this.stopped) return;
      this.state = "playing";
      this.onState(this, "playing");
      // Also ask the session itself, once a second: the server's word on its end.
      this.watch = setInterval(() => this.checkStatus(), 1000);
    } catch (exc) {
      if (!this.stopped) {
        showError(`Playing failed: ${describe(exc)}`);
        await this.finish("failed");
      }
    }
  }

  async checkStatus() {
    if (!this.location || this.stopped) return;
    try {
      const status = await apiJson("GET", this.location);
      if (status.state === "ended" || status.state === "failed") {
        if (status.error) showError(`Playing stopped: ${status.error.name}: ${status.error.detail}`);
        this.serverEnded(status.state === "failed");
      }
    } catch (exc) {
      if (exc instanceof ApiError && exc.status === 404) this.serverEnded(false);
    }
  }

  serverEnded(failed) {
    if (this.stopped) return;
    this.stopped = true;
    this.location = null; // the server ended the session: nothing to DELETE
    // Let the jitter buffer play out what it holds before the peer goes.
    setTimeout(() => this.finish(failed ? "failed" : "ended"), 400);
  }

  async stop() {
    if (this.stopped && !this.location) return this.ended;
    this.stopped = true;
    await this.finish("stopped");
  }

  async deleteSession() {
    if (!this.location) return;
    const location = this.location;
    this.location = null;
    await api("DELETE", location).catch(() => null);
  }

  async finish(how) {
    if (this.state === "done") return;
    this.state = "done";
    clearInterval(this.watch);
    const stats = await rtpStats(this.pc, "inbound-rtp").catch(() => null);
    if (stats) this.lastStats = stats;
    await this.deleteSession();
    this.pc?.close();
    this.audio.srcObject = null;
    this.onState(this, how);
    this.resolveEnded();
  }
}

async function togglePlay(msgId) {
  if (rtc.player?.msg === msgId) {
    await rtc.player.stop();
    return;
  }
  await rtc.player?.stop();
  showError("");
  const message = state.messages.get(msgId);
  const live = message?.state === "live";
  // Catching up on a live message: from its start, faster; the server switches to real
  // time at the live edge by itself.
  const speed = live ? CATCH_UP_SPEED : 1;
  rtc.lastStats.player = null;
  const player = new Listen({
    path: `/v1/messages/${enc(msgId)}/whep?from_seq=0&speed=${speed}`,
    audio: $("player-audio"),
    msg: msgId,
    onState: playerState,
  });
  rtc.player = player;
  renderMessages();
  await player.start();
}

function playerState(player, playerState) {
  const message = state.messages.get(player.msg);
  const who = message ? usernameOf(state.thread, message.sender) : "the message";
  const text = {
    connecting: `Connecting to ${who === "you" ? "your message" : `${who}'s message`}…`,
    playing: `Playing ${who === "you" ? "your message" : `${who}'s message`}.`,
    ended: "Finished playing.",
    stopped: "Stopped.",
    failed: "Playing stopped.",
  }[playerState];
  setStatus(text);
  if (["ended", "stopped", "failed"].includes(playerState)) {
    rtc.lastStats.player = player.lastStats ?? rtc.lastStats.player;
    if (rtc.player === player) rtc.player = null;
  }
  // Played to its end: someone else's message is heard (VXS-13.4-2), which its
  // thread's unheard count shows once the receipt's event comes back.
  if (playerState === "ended" && message && message.sender !== state.accountId) {
    sendReceipt(message, "heard");
  }
  updateMuting();
  renderMessages();
}

/** The monitor goes quiet while the person talks (it would play their own message back
 *  to them) and while they play a message of their choice; it goes on underneath. */
function updateMuting() {
  const talking = ["connecting", "talking", "sending"].includes($("ptt").dataset.state);
  $("monitor-audio").muted = talking || Boolean(rtc.player);
}

async function toggleMonitor() {
  const button = $("monitor");
  if (rtc.monitor) {
    await rtc.monitor.stop();
    return;
  }
  if (!state.thread) return;
  showError("");
  rtc.lastStats.monitor = null;
  const monitor = new Listen({
    path: `/v1/threads/${enc(state.thread.id)}/whep`,
    audio: $("monitor-audio"),
    onState: (session, monitorState) => {
      const on = ["connecting", "playing"].includes(monitorState);
      button.setAttribute("aria-pressed", String(on));
      button.dataset.state = monitorState;
      button.textContent = monitorState === "connecting" ? "Monitor: connecting…" : on ? "Monitor: on" : "Monitor: off";
      if (monitorState === "playing") setStatus("Monitoring: new messages in this thread play as they start.");
      if (monitorState === "failed") setStatus("Monitoring stopped: the connection was lost.");
      if (monitorState === "ended") setStatus("Monitoring stopped by the server.");
      if (monitorState === "stopped") setStatus("Monitoring off.");
      if (!on) {
        rtc.lastStats.monitor = session.lastStats ?? rtc.lastStats.monitor;
        if (rtc.monitor === session) rtc.monitor = null;
      }
    },
  });
  rtc.monitor = monitor;
  await monitor.start();
}

// -- what tests (and curious people) can ask -----------------------------------------------

window.voxer = {
  /** WebRTC statistics of the page's peers: inbound-rtp of the player and the monitor,
   *  outbound-rtp of the talk (the last values of a peer that has ended). */
  async stats() {
    const [player, monitor, talk] = await Promise.all([
      rtpStats(rtc.player?.pc, "inbound-rtp").catch(() => null),
      rtpStats(rtc.monitor?.pc, "inbound-rtp").catch(() => null),
      rtpStats(rtc.talk?.pc, "outbound-rtp").catch(() => null),
    ]);
    return {
      player: player ?? rtc.lastStats.player ?? null,
      monitor: monitor ?? rtc.lastStats.monitor ?? null,
      talk: talk ?? rtc.lastStats.talk ?? null,
    };
  },
  state() {
    return {
      view: state.view,
      thread: state.thread?.id ?? null,
      talk: $("ptt").dataset.state,
      talking: rtc.talk?.msg ?? null,
      player: rtc.player ? { msg: rtc.player.msg, state: rtc.player.state } : null,
      monitor: rtc.monitor ? rtc.monitor.state : null,
      sync: sync.state, // "live" while the event stream is open
      since: sync.since,
    };
  },
  /** Drop the event stream, as a network failure would: it reconnects after the
   *  backoff, from the last event it applied. */
  disconnect() {
    sync.abort?.abort();
  },
};

// -- start -----------------------------------------------------------------------------------

function init() {
  $("login-form").addEventListener("submit", submitLogin);
  $("switch-mode").addEventListener("click", () => {
    setMode(!state.registering);
    showError("");
    $("username").focus();
  });
  $("logout").addEventListener("click", logout);
  $("thread-form").addEventListener("submit", createThread);
  $("monitor").addEventListener("click", toggleMonitor);
  $("mute").addEventListener("click", toggleMute);
  $("earlier").addEventListener("click", loadEarlier);
  $("composer").addEventListener("submit", sendText);
  $("composer-text").addEventListener("keydown", composerKey);
  $("composer-text").addEventListener("input", fitComposer);
  $("composer-attach").addEventListener("click", () => $("composer-image").click());
  $("composer-image").addEventListener("change", sendImage);
  $("image-close").addEventListener("click", () => $("image-dialog").close());
  $("image-dialog").addEventListener("click", (event) => {
    if (event.target === $("image-dialog")) $("image-dialog").close(); // the backdrop
  });
  setUpPushToTalk();
  window.addEventListener("hashchange", route);
  window.addEventListener("online", () => sync.wake?.()); // reconnect now, not after the backoff
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "visible") {
      // What came while the tab was hidden is read now.
      if (state.thread?.unread > 0) markRead();
    } else {
      stopTalk(); // a key or pointer release may never arrive while hidden
    }
  });
  window.addEventListener("pagehide", () => {
    // Best effort, as the page goes: end the sessions (a keepalive DELETE outlives the
    // page), so that a talk's message closes now rather than after the server's idle
    // timeout, and the server stops sending to a peer that is gone.
    for (const session of [rtc.talk, rtc.player, rtc.monitor]) {
      if (!session?.location || !state.token) continue;
      fetch(session.location, {
        method: "DELETE",
        headers: { Authorization: `Bearer ${state.token}` },
        keepalive: true,
      }).catch(() => null);
      session.location = null;
      session.pc?.close();
    }
  });
  setMode(false);
  route();
}

init();
