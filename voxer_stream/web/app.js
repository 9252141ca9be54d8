// The voxer-stream web client: REST for accounts and threads (spec section 8), WebRTC for
// audio (section 12): push-to-talk is a WHIP ingest, playing a message is a WHEP egress,
// monitoring a thread is WHEP on the thread. No framework and no build step: this file
// is served as it is, as an ES module.
//
// What the server does not offer yet, and this page therefore does not show:
// * no event stream: the page polls the thread's messages about once a second while it
//   is visible (the thread list every two seconds);
// * no receipts: there are no unread or unheard counts, and none are guessed here.

const TICKS_PER_SECOND = 48000; // the protocol's media clock (48 kHz)
const POLL_THREAD_MS = 1000;
const POLL_LIST_MS = 2000;
const REQUEST_TIMEOUT_MS = 15000;
const GATHER_TIMEOUT_MS = 3000;
const CONNECT_TIMEOUT_MS = 10000;
const CATCH_UP_SPEED = 1.5;
// After the release, the microphone's last words are still in the browser's capture,
// encoder and pacer (tens of ms): keep the connection that long before ending it.
const RELEASE_TAIL_MS = 100;
const STORAGE = window.sessionStorage;

const $ = (id) => document.getElementById(id);

// -- state -------------------------------------------------------------------------------

const state = {
  token: STORAGE.getItem("voxer.token"),
  username: STORAGE.getItem("voxer.username"),
  accountId: STORAGE.getItem("voxer.account"),
  view: null, // "login" | "threads" | "thread"
  thread: null, // the open thread (its JSON)
  messages: new Map(), // id -> message JSON, of the open thread
  seen: null, // message ids already announced (null until the first load)
  registering: false,
  pollTimer: null,
  polling: false,
};

// The WebRTC sessions of the page: one talk, one player and one monitor at a time.
const rtc = { talk: null, player: null, monitor: null, lastStats: {} };

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

/** One request to the server; an error answer becomes an ApiError with the registry's
 *  code and name (VXS-8-5). */
async function api(method, path, { json, sdp, auth = true } = {}) {
  const headers = {};
  if (auth && state.token) headers.Authorization = `Bearer ${state.token}`;
  let body;
  if (json !== undefined) {
    headers["Content-Type"] = "application/json";
    body = JSON.stringify(json);
  } else if (sdp !== undefined) {
    headers["Content-Type"] = "application/sdp";
    body = sdp;
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
  let error = null;
  try {
    error = (await response.json()).error;
  } catch {
    // not a registry error body
  }
  const failure = new ApiError(
    response.status,
    error?.code ?? 0,
    error?.name ?? `HTTP ${response.status}`,
    error?.detail ?? response.statusText,
  );
  if (failure.errorName === "UNAUTHENTICATED" && auth && state.token) {
    loggedOut("Your session has ended: please log in again.");
  }
  throw failure;
}

const apiJson = async (method, path, options) => (await api(method, path, options)).json();
const enc = encodeURIComponent;

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

function usernameOf(thread, accountId) {
  if (accountId === state.accountId) return "you";
  const person = thread?.participants.find((p) => p.id === accountId);
  return person ? person.username : accountId;
}

function others(thread) {
  const names = thread.participants.filter((p) => p.id !== state.accountId).map((p) => p.username).sort();
  return names.length ? `with ${names.join(", ")}` : "only you";
}

/** A message id (VXS-2.1-1): 128 random bits, base64url, 22 characters of [A-Za-z0-9_-]. */
function randomId() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return btoa(String.fromCharCode(...bytes)).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

/** Keep `list`'s children in step with `items` by key, reusing the nodes (focus stays). */
function syncList(list, items, key, create, update) {
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
}

function element(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
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
  const match = /^#thread\/([A-Za-z0-9_-]{1,64})$/.exec(location.hash);
  if (match) {
    await openThread(match[1]);
  } else {
    await leaveThread();
    show("threads");
    setStatus("");
    poll();
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
  const button = $("login-submit");
  button.disabled = true;
  try {
    if (state.registering) {
      setStatus("Creating the account…");
      await api("POST", "/v1/accounts", { json: { username, password }, auth: false });
    }
    setStatus("Logging in…");
    const session = await apiJson("POST", "/v1/sessions", { json: { username, password }, auth: false });
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
    button.disabled = false;
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
  stopPolling();
  for (const key of ["voxer.token", "voxer.account", "voxer.username"]) STORAGE.removeItem(key);
  state.token = state.accountId = state.username = null;
  stopTalk();
  rtc.player?.stop();
  rtc.monitor?.stop();
  state.thread = null;
  $("thread-list").replaceChildren();
  $("message-list").replaceChildren();
  show("login");
  document.title = "Log in · voxer-stream";
  setStatus(message);
  history.replaceState(null, "", location.pathname);
}

// -- polling -------------------------------------------------------------------------------
// The server has no event stream (yet): the open thread's messages are polled about once
// a second, the thread list every two seconds, and only while the tab is visible.

function stopPolling() {
  clearTimeout(state.pollTimer);
  state.pollTimer = null;
}

async function poll() {
  stopPolling();
  if (!state.token || state.view === "login") return;
  if (document.visibilityState === "visible" && !state.polling) {
    state.polling = true;
    try {
      if (state.view === "thread") await refreshMessages();
      else if (state.view === "threads") await refreshThreads();
    } catch (exc) {
      if (state.token) setStatus(`Cannot refresh: ${describe(exc)}`);
    } finally {
      state.polling = false;
    }
  }
  if (state.token) {
    const delay = state.view === "thread" ? POLL_THREAD_MS : POLL_LIST_MS;
    stopPolling(); // a poll() that ran meanwhile scheduled one too: keep a single loop
    state.pollTimer = setTimeout(poll, delay);
  }
}

document.addEventListener("visibilitychange", () => {
  if (document.visibilityState === "visible") poll();
  else stopTalk(); // a key or pointer release may never arrive while hidden
});

// -- the thread list -----------------------------------------------------------------------

async function refreshThreads() {
  const { threads } = await apiJson("GET", "/v1/threads");
  // The message count and who is speaking come from each thread's messages: the server
  // has no per-thread summary.
  const details = await Promise.all(
    threads.map(async (thread) => {
      try {
        const { messages } = await apiJson("GET", `/v1/threads/${enc(thread.id)}/messages`);
        return { thread, messages };
      } catch {
        return { thread, messages: null };
      }
    }),
  );
  if (state.view !== "threads") return;
  document.title = "Your threads · voxer-stream";
  $("threads-empty").hidden = threads.length > 0;
  syncList($("thread-list"), details, (d) => d.thread.id, createThreadItem, updateThreadItem);
}

function createThreadItem() {
  const item = element("li", "thread");
  const link = element("a", "thread-link");
  link.append(element("span", "thread-name"), element("span", "thread-people"), element("span", "thread-meta"));
  item.append(link);
  return item;
}

function updateThreadItem(item, { thread, messages }) {
  const link = item.firstChild;
  link.href = `#thread/${thread.id}`;
  const [name, people, meta] = link.children;
  name.textContent = thread.title || "Untitled thread";
  people.textContent = others(thread);
  meta.replaceChildren();
  if (messages === null) {
    meta.textContent = "messages unavailable";
    link.setAttribute("aria-label", `${name.textContent}, ${people.textContent}`);
    return;
  }
  const count = messages.length;
  const counted = count === 1 ? "1 message" : `${count} messages`;
  meta.append(element("span", "count", counted));
  const speakers = [...new Set(messages.filter((m) => m.state === "live").map((m) => usernameOf(thread, m.sender)))];
  item.classList.toggle("speaking", speakers.length > 0);
  let speaking = "";
  if (speakers.length) {
    const verb = speakers.length === 1 && speakers[0] !== "you" ? "is" : "are";
    speaking = `${speakers.join(", ")} ${verb} speaking`;
    meta.append(element("span", "badge live", speaking));
  }
  // One sentence for screen readers (the spans alone would run together).
  link.setAttribute("aria-label", [name.textContent, people.textContent, counted, speaking].filter(Boolean).join(", "));
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
    const thread = await apiJson("POST", "/v1/threads", { json: { title, participants } });
    $("thread-title").value = "";
    $("thread-people").value = "";
    $("new-thread").open = false;
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
    try {
      state.thread = await apiJson("GET", `/v1/threads/${enc(threadId)}`);
    } catch (exc) {
      if (!state.token) return;
      show("threads");
      showError(describe(exc));
      poll();
      return;
    }
    state.messages = new Map();
    state.seen = null;
    $("message-list").replaceChildren();
  }
  const thread = state.thread;
  $("thread-title-text").textContent = thread.title || "Untitled thread";
  $("thread-people-text").textContent = thread.participants.map((p) => p.username).sort().join(", ");
  document.title = `${thread.title || "Untitled thread"} · voxer-stream`;
  show("thread");
  setStatus("");
  await poll();
}

async function leaveThread() {
  stopTalk();
  await Promise.all([rtc.talk?.done, rtc.player?.stop(), rtc.monitor?.stop()]);
  state.thread = null;
  state.messages = new Map();
  state.seen = null;
}

async function refreshMessages() {
  const thread = state.thread;
  if (!thread) return;
  const { messages } = await apiJson("GET", `/v1/threads/${enc(thread.id)}/messages`);
  if (state.thread !== thread) return;
  const first = state.seen === null;
  state.seen ??= new Set();
  for (const message of messages) {
    state.messages.set(message.id, message);
    if (state.seen.has(message.id)) continue;
    state.seen.add(message.id);
    if (!first && message.sender !== state.accountId) {
      const who = usernameOf(thread, message.sender);
      announce(message.state === "live" ? `${who} is talking` : `New message from ${who}`);
    }
  }
  $("messages-empty").hidden = messages.length > 0;
  const list = $("message-list");
  const before = list.children.length;
  // Follow the newest message, as a chat does, unless the person scrolled up to read.
  const root = document.documentElement;
  const atBottom = window.innerHeight + window.scrollY >= root.scrollHeight - 120;
  syncList(list, messages, (m) => m.id, createMessageItem, updateMessageItem);
  if (list.children.length > before && (first || atBottom)) window.scrollTo(0, root.scrollHeight);
}

function createMessageItem(message) {
  const item = element("li", "message");
  const head = element("div", "message-head");
  head.append(element("span", "sender"), element("time", "created"));
  const meta = element("div", "message-meta");
  meta.append(element("span", "duration"), element("span", "badge"));
  const actions = element("div", "message-actions");
  const play = element("button", "play");
  play.type = "button";
  play.addEventListener("click", () => togglePlay(message.id, item));
  actions.append(play);
  item.append(head, meta, actions);
  return item;
}

function updateMessageItem(item, message) {
  const sender = usernameOf(state.thread, message.sender);
  const [head, meta, actions] = item.children;
  head.children[0].textContent = sender;
  head.children[1].textContent = when(message.created);
  head.children[1].dateTime = new Date(message.created).toISOString();
  meta.children[0].textContent = seconds(message.duration);
  const badge = meta.children[1];
  const live = message.state === "live";
  badge.textContent = live ? "live" : "closed";
  badge.className = `badge ${live ? "live" : "closed"}`;
  item.classList.toggle("live", live);
  item.dataset.state = message.state;
  const playing = rtc.player?.msg === message.id;
  const button = actions.firstChild;
  button.textContent = playing ? "Stop" : live ? "Catch up" : "Play";
  button.setAttribute("aria-pressed", String(playing));
  const kind = live ? "live message" : "message";
  const what = `${sender === "you" ? `your ${kind}` : `the ${kind} from ${sender}`} at ${when(message.created)}`;
  button.setAttribute(
    "aria-label",
    playing ? `Stop playing ${what}` : live ? `Catch up on ${what} (from its start, faster)` : `Play ${what}`,
  );
}

function renderMessages() {
  const list = $("message-list");
  for (const item of list.children) {
    const message = state.messages.get(item.dataset.key);
    if (message) updateMessageItem(item, message);
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
        poll(); // show the new live message at once
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
    poll();
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
    };
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
  setUpPushToTalk();
  window.addEventListener("hashchange", route);
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
