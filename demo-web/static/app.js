// The demo chat page. Presence (who is here, idle, typing, read receipts, status) comes from the
// browser SDK, imported from the npm package as any app would; chat messages come from the demo's
// own small API (`/api/...`) and a Server-Sent Events stream, which also brings this user's "new
// message" toasts: the demo's server asks the presence server's push decision for every member of
// a room when a message is posted, and toasts where a real app would send a push.
//
// URL parameters: ?idle=ms, ?hidden=ms, ?blurred=ms go to PresenceClient.connect as idleAfterMs,
// hiddenAfterMs, blurredAfterMs; #room picks the room.
import init, { PresenceClient } from "/pkg/presence_wasm.js";

const NAME_KEY = "presence-demo:name";
const ROOM_RE = /^[a-z0-9_-]{1,40}$/;
const NAME_RE = /^[^\s]{1,32}$/;

const $ = (id) => document.getElementById(id);

/** Creates an element; text is always set with textContent, never parsed as HTML. */
function h(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k === "class") node.className = v;
    else if (k === "text") node.textContent = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children) if (c) node.append(c);
  return node;
}

function connectOptions(name) {
  const params = new URLSearchParams(location.search);
  // idleDetection: "screen locked" where the page holds the permission; it never prompts.
  const options = { url: `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws`, token: name, idleDetection: true };
  for (const [param, option] of [["idle", "idleAfterMs"], ["hidden", "hiddenAfterMs"], ["blurred", "blurredAfterMs"]]) {
    const v = Number(params.get(param));
    if (params.has(param) && Number.isFinite(v) && v > 0) options[option] = v;
  }
  return options;
}

async function api(path, { method = "GET", body, user } = {}) {
  const headers = {};
  if (body !== undefined) headers["content-type"] = "application/json";
  if (user) headers.authorization = `Bearer ${user}`;
  const res = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  const data = await res.json().catch(() => ({}));
  if (!res.ok) throw new Error(data?.error?.message ?? `HTTP ${res.status}`);
  return data;
}

// ---------------------------------------------------------------- time and words

function since(ms, now) {
  const s = Math.max(0, Math.round((now - ms) / 1000));
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min`;
  const hours = Math.floor(m / 60);
  if (hours < 24) return `${hours} h`;
  return `${Math.floor(hours / 24)} d`;
}

const REASONS = { hidden: "tab hidden", blurred: "window in background", locked: "screen locked" };

/** "active now", "idle 3 min", "last seen 5 min ago". */
function describe(p, now) {
  if (p.state === "active") return "active now";
  if (p.state === "idle") {
    const why = REASONS[p.reason] ? ` · ${REASONS[p.reason]}` : "";
    return (p.lastActive ? `idle ${since(p.lastActive, now)}` : "idle") + why;
  }
  if (!p.lastSeen) return "offline";
  return now - p.lastSeen < 10_000 ? "last seen just now" : `last seen ${since(p.lastSeen, now)} ago`;
}

function list(names) {
  if (names.length <= 2) return names.join(" and ");
  if (names.length === 3) return `${names[0]}, ${names[1]} and ${names[2]}`;
  return `${names[0]}, ${names[1]} and ${names.length - 2} others`;
}

function hue(name) {
  let x = 0;
  for (const c of name) x = (x * 31 + c.codePointAt(0)) % 360;
  return x;
}

function avatar(name, state, big = false) {
  const a = h("span", { class: `avatar${big ? " big" : ""}`, "aria-hidden": "true", text: name.slice(0, 1).toUpperCase() });
  a.style.setProperty("--hue", hue(name));
  if (state) a.append(h("span", { class: `dot ${state}` }));
  return a;
}

const clock = (ms) => new Date(ms).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });

// ---------------------------------------------------------------- state

let client = null;
let me = null;
let room = null;
let unbindTyping = null;
let stream = null;
let messages = [];
const readUpTo = new Map(); // room → marker sent
const watched = new Set();
// The user's status as the server last told it (`self_status` reaches every tab); the snapshot's
// `status` only reflects this tab's own calls.
let selfStatus = null;

// ---------------------------------------------------------------- rendering

let renderQueued = false;
function scheduleRender() {
  if (renderQueued) return;
  renderQueued = true;
  setTimeout(() => {
    renderQueued = false;
    render();
  }, 0);
}

function render() {
  if (!client) return;
  const snap = client.getSnapshot();
  const now = Date.now();
  renderMe(snap);
  const r = snap.rooms[room] ?? { members: [], typing: [], receipts: {}, counts: { online: 0 }, large: false };
  renderMembers(r, now);
  renderActiveNow(snap.watched, now);
  renderTyping(r.typing);
  renderSeen(r.receipts);
}

function renderMe(snap) {
  const conn = $("app").querySelector("[data-testid=connection]");
  conn.textContent = { connected: "connected", connecting: "connecting…", reconnecting: "reconnecting…", closed: "disconnected" }[snap.connection] ?? snap.connection;
  conn.dataset.state = snap.connection;
  const { status, text } = selfStatus ?? snap;
  const dot = $("me-avatar").querySelector(".dot");
  dot.className = `dot ${status === "invisible" ? "invisible" : snap.connection === "connected" ? "active" : "offline"}`;
  const select = $("status-select");
  if (document.activeElement !== select) select.value = status;
  const input = $("status-text");
  if (document.activeElement !== input) input.value = text ?? "";
  $("status-hint").textContent = status === "invisible" ? "You are invisible: others see you offline, and you still see everything." : "";
}

const ORDER = { active: 0, idle: 1, offline: 2 };

function renderMembers({ members, counts, large }, now) {
  const sorted = [...members].sort((a, b) => ORDER[a.state] - ORDER[b.state] || (b.lastSeen ?? 0) - (a.lastSeen ?? 0) || a.user.localeCompare(b.user));
  // In a large room the server counts and the list shows some members only.
  const online = counts.online.toLocaleString("en-US");
  $("member-count").textContent = `${online} online`;
  $("room-online").textContent = large
    ? `${online} online · ${counts.idle.toLocaleString("en-US")} idle · showing ${sorted.length}`
    : `${online} online · ${sorted.length} ${sorted.length === 1 ? "member" : "members"}`;
  $("members").replaceChildren(
    ...sorted.map((p) =>
      h("li", { class: `member ${p.state}`, "data-testid": "member", "data-user": p.user, "data-state": p.state, "data-status": p.status },
        avatar(p.user, p.state),
        h("div", { class: "member-text" },
          h("div", { class: "member-name" },
            h("span", { "data-testid": "member-name", text: `${p.info?.name ?? p.user}${p.user === me ? " (you)" : ""}` }),
            p.status === "away" || p.status === "busy" ? h("span", { class: `chip ${p.status}`, text: p.status }) : null),
          h("div", { class: "member-detail", "data-testid": "member-detail", text: describe(p, now) }),
          p.text ? h("div", { class: "member-status-text", text: `“${p.text}”` }) : null,
          typeof p.data?.viewing == "string" ? h("div", { class: "member-viewing", "data-testid": "member-viewing", text: `viewing ${p.data.viewing}` }) : null))));
}

function renderActiveNow(people, now) {
  const live = people.filter((p) => p.user !== me && p.state !== "offline").sort((a, b) => ORDER[a.state] - ORDER[b.state] || a.user.localeCompare(b.user));
  const strip = $("active-now");
  if (!live.length) {
    strip.replaceChildren(h("li", { class: "strip-empty", text: "Nobody else is around right now." }));
    return;
  }
  strip.replaceChildren(
    ...live.map((p) =>
      h("li", { class: `person ${p.state}`, "data-testid": "active-person", "data-user": p.user, "data-state": p.state, title: `${p.user}: ${describe(p, now)}` },
        avatar(p.user, p.state, true),
        h("span", { class: "person-name", text: p.user }))));
}

function renderTyping(typing) {
  const others = typing.filter((u) => u !== me);
  const line = $("typing");
  line.dataset.users = others.join(",");
  if (!others.length) {
    line.replaceChildren();
    return;
  }
  const words = others.length > 3 ? "Several people are typing" : `${list(others)} ${others.length === 1 ? "is" : "are"} typing`;
  line.replaceChildren(h("span", { class: "dots" }, h("i"), h("i"), h("i")), h("span", { text: `${words}…` }));
}

function renderSeen(receipts) {
  const seen = $("seen-by");
  const last = messages.at(-1);
  const readers = last ? Object.entries(receipts).filter(([u, marker]) => marker >= last.seq && u !== last.user && u !== me).map(([u]) => u).sort() : [];
  seen.dataset.seq = last?.seq ?? "";
  seen.dataset.users = readers.join(",");
  seen.textContent = readers.length ? `✓✓ Seen by ${list(readers)}` : "";
}

function messageNode(m, previous) {
  const grouped = previous && previous.user === m.user && m.at - previous.at < 5 * 60_000;
  return h("li", { class: `message${grouped ? " grouped" : ""}${m.user === me ? " mine" : ""}`, "data-testid": "message", "data-seq": m.seq, "data-user": m.user },
    grouped ? h("span", { class: "avatar-space" }) : avatar(m.user),
    h("div", { class: "bubble" },
      grouped ? null : h("div", { class: "message-head" }, h("strong", { text: m.user }), h("time", { text: clock(m.at) })),
      h("div", { class: "message-text", text: m.text })));
}

function addMessages(incoming) {
  const list = $("messages");
  const scroller = $("scroller");
  const atBottom = scroller.scrollHeight - scroller.scrollTop - scroller.clientHeight < 80;
  let added = false;
  for (const m of incoming) {
    if (m.room !== room || m.seq <= (messages.at(-1)?.seq ?? 0)) continue;
    list.querySelector(".empty")?.remove();
    list.append(messageNode(m, messages.at(-1)));
    messages.push(m);
    added = true;
  }
  if (!messages.length && !list.children.length) {
    list.append(h("li", { class: "empty", text: `This is the start of #${room}. Say hello!` }));
  }
  if (added && (atBottom || incoming.some((m) => m.user === me))) scroller.scrollTop = scroller.scrollHeight;
  markRead();
  scheduleRender();
}

/** Reading = the newest message is on a visible page; the marker is its sequence number. */
function markRead() {
  const last = messages.at(-1);
  if (!client || !last || document.visibilityState !== "visible") return;
  if ((readUpTo.get(room) ?? 0) >= last.seq) return;
  try {
    client.markRead(room, last.seq);
    readUpTo.set(room, last.seq);
  } catch (e) {
    console.warn("markRead", e);
  }
}

// ---------------------------------------------------------------- toasts

const PUSHED = { background: "your tabs are hidden", idle: "no input for a while", offline: "you were offline" };
const MAX_TOASTS = 3;

/** A message the server decided this user would not see live: where a real app sends a push. */
function toast({ message: m, reason }) {
  const box = $("toasts");
  const node = h("li", { class: "toast", "data-testid": "toast", "data-room": m.room, "data-seq": m.seq, "data-user": m.user, "data-reason": reason },
    h("button", { class: "toast-open", title: `Open #${m.room}`, onclick: () => { dismissToasts(m.room); enterRoom(m.room); } },
      h("strong", { text: `${m.user} in #${m.room}` }),
      h("span", { class: "toast-text", text: m.text }),
      h("span", { class: "toast-why", text: `a push, not live: ${PUSHED[reason] ?? reason}` })),
    h("button", { class: "toast-close", "aria-label": "Dismiss", text: "×", onclick: () => node.remove() }));
  box.append(node);
  while (box.children.length > MAX_TOASTS) box.firstElementChild.remove();
}

/** The user sees `name` now: its toasts are done. */
function dismissToasts(name) {
  for (const t of $("toasts").querySelectorAll("[data-testid=toast]")) if (t.dataset.room === name) t.remove();
}

// ---------------------------------------------------------------- rooms and streams

async function refreshRooms() {
  try {
    const { rooms } = await api("/api/rooms");
    $("room-list").replaceChildren(
      ...rooms.map((r) =>
        h("li", {},
          h("button", { class: `room${r.room === room ? " current" : ""}`, "data-testid": "room", "data-room": r.room, onclick: () => enterRoom(r.room) },
            h("span", { class: "hash", text: "#" }), h("span", { text: r.room })))));
  } catch (e) {
    $("room-error").textContent = e.message;
  }
}

function watchPeople(people) {
  const fresh = people.filter((u) => u !== me && !watched.has(u)).slice(0, 200);
  if (!fresh.length) return;
  try {
    client.watch(fresh);
    fresh.forEach((u) => watched.add(u));
  } catch (e) {
    console.warn("watch", e);
  }
}

function openStream() {
  stream?.close();
  // The stream sends the room's backlog first, then new messages; repeats are skipped by seq. With
  // the token (the name, in the demo) it brings this user's toasts too, from any room.
  stream = new EventSource(`/api/stream?room=${encodeURIComponent(room)}&after=${messages.at(-1)?.seq ?? 0}&token=${encodeURIComponent(me)}`);
  stream.addEventListener("message", (e) => addMessages([JSON.parse(e.data)]));
  stream.addEventListener("toast", (e) => toast(JSON.parse(e.data)));
  stream.addEventListener("people", (e) => watchPeople(JSON.parse(e.data).people));
  stream.addEventListener("room", () => refreshRooms());
  stream.addEventListener("resync", async () => {
    const { messages: missed } = await api(`/api/rooms/${room}/messages?after=${messages.at(-1)?.seq ?? 0}`);
    addMessages(missed);
    watchPeople((await api("/api/people")).people);
  });
}

async function enterRoom(name) {
  if (!ROOM_RE.test(name) || name === room) return;
  if (room) {
    try { client.leave(room); } catch (e) { console.warn("leave", e); }
  }
  unbindTyping?.();
  room = name;
  messages = [];
  dismissToasts(name);
  history.replaceState(null, "", `#${name}`);
  $("room-title").textContent = `# ${name}`;
  $("composer").placeholder = `Message #${name}`;
  $("messages").replaceChildren();
  $("room-error").textContent = "";
  client.join(name);
  // The room this page shows, for the server's push decision (only backends see it).
  client.view(name);
  // Presence data: what this user is looking at, shown under their name.
  client.setData({ viewing: `#${name}` });
  unbindTyping = client.bindTyping(name, $("composer"));
  try {
    await api("/api/rooms", { method: "POST", body: { room: name }, user: me });
  } catch (e) {
    $("room-error").textContent = e.message;
  }
  addMessages([]);
  openStream();
  refreshRooms();
  render();
}

// ---------------------------------------------------------------- actions

async function send() {
  const box = $("composer");
  const text = box.value.trim();
  if (!text) return;
  $("composer-error").textContent = "";
  try {
    // The server calls the presence host API `message_sent`, which ends our typing for everyone;
    // stopTyping also ends it in this tab's own client state.
    const m = await api(`/api/rooms/${room}/messages`, { method: "POST", body: { text }, user: me });
    box.value = "";
    client.stopTyping(room);
    addMessages([m]);
  } catch (e) {
    $("composer-error").textContent = e.message;
  }
}

function setStatus() {
  const status = $("status-select").value;
  const text = $("status-text").value.trim();
  try {
    client.setStatus(status, text || undefined);
    selfStatus = { status, text: text || undefined };
    scheduleRender();
  } catch (e) {
    $("status-hint").textContent = e.message;
  }
}

async function signIn(name) {
  if (!NAME_RE.test(name)) throw new Error("Use 1 to 32 characters, without spaces.");
  await api("/api/session", { method: "POST", user: name });
  me = name;
  localStorage.setItem(NAME_KEY, name);
  client = PresenceClient.connect(connectOptions(name));
  window.presence = client; // handy in the devtools console
  client.subscribe(scheduleRender);
  client.onError((e) => console.warn(`presence: ${e.code}: ${e.message}`));
  client.onSelfStatus((e) => {
    selfStatus = e;
    scheduleRender();
  });
  $("signin").hidden = true;
  $("app").hidden = false;
  $("me-name").textContent = name;
  $("me-avatar").style.setProperty("--hue", hue(name));
  $("me-avatar").prepend(name.slice(0, 1).toUpperCase());
  watchPeople((await api("/api/people")).people);
  const wanted = decodeURIComponent(location.hash.slice(1));
  await enterRoom(ROOM_RE.test(wanted) ? wanted : "general");
}

function wire() {
  $("signin").querySelector("form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const name = e.target.elements.name.value.trim();
    try {
      await signIn(name);
    } catch (err) {
      $("signin").querySelector("[data-testid=signin-error]").textContent = err.message;
    }
  });
  $("composer-form").addEventListener("submit", (e) => {
    e.preventDefault();
    send();
  });
  $("composer").addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
      e.preventDefault();
      send();
    }
  });
  $("status-select").addEventListener("change", setStatus);
  $("status-text").addEventListener("change", setStatus);
  $("status-text").addEventListener("keydown", (e) => e.key === "Enter" && e.target.blur());
  $("new-room-form").addEventListener("submit", (e) => {
    e.preventDefault();
    const name = $("new-room").value.trim().toLowerCase();
    if (!ROOM_RE.test(name)) {
      $("room-error").textContent = "Room names: lowercase letters, digits, - and _ (up to 40).";
      return;
    }
    $("new-room").value = "";
    enterRoom(name);
  });
  $("signout").addEventListener("click", () => {
    localStorage.removeItem(NAME_KEY);
    client?.close();
    location.hash = "";
    location.reload();
  });
  window.addEventListener("hashchange", () => client && enterRoom(decodeURIComponent(location.hash.slice(1))));
  document.addEventListener("visibilitychange", () => {
    if (document.visibilityState === "visible") dismissToasts(room);
    markRead();
  });
  // Relative times ("idle 3 min") move on by themselves.
  setInterval(scheduleRender, 5000);
}

await init();
wire();
const saved = localStorage.getItem(NAME_KEY);
if (saved && NAME_RE.test(saved)) {
  signIn(saved).catch((e) => {
    $("signin").hidden = false;
    $("signin").querySelector("[data-testid=signin-error]").textContent = e.message;
  });
} else {
  $("signin").hidden = false;
}
