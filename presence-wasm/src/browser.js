// The browser calls of `page.rs` and `runtime.rs`, written in JS: through web-sys each DOM call
// was an import with its own glue, and each listener a wasm-bindgen closure. Rust hands one
// callback per job and gets numbers and strings back; the decisions stay in Rust.

// Page signals, as the numbers `page.rs` matches on: 0 input (at most one per 250 ms: the
// client keeps only a timestamp, and the first input after a quiet spell always passes),
// 1 hidden, 2 visible, 3 focus, 4 blur, 5 pagehide, 6 pageshow from the back/forward cache,
// 7 online, 8 offline. Listeners are passive, input ones capture-phase, so the page's own
// handlers never wait on us. Reports the starting visibility and a missing focus at once.
// Returns a function that removes the listeners.
export function watchPage(on) {
  const w = globalThis.window;
  if (!w) return () => {};
  const d = w.document;
  let last = -Infinity;
  const input = () => {
    const t = Date.now();
    if (t - last >= 250) (last = t), on(0);
  };
  const listeners = [
    ...["pointermove", "pointerdown", "keydown", "wheel", "touchstart", "scroll"].map((k) => [w, k, input, true]),
    [d, "visibilitychange", () => on(d.hidden ? 1 : 2)],
    [w, "focus", () => on(3)],
    [w, "blur", () => on(4)],
    [w, "pagehide", () => on(5)],
    [w, "pageshow", (e) => e.persisted && on(6)],
    [w, "online", () => on(7)],
    [w, "offline", () => on(8)],
  ];
  on(d.hidden ? 1 : 2);
  if (!d.hasFocus()) on(4);
  return listen(listeners);
}

// Typing in `element`: `on(true)` on input, `on(false)` on blur. Returns a function that unbinds.
export function watchTyping(element, on) {
  return listen([
    [element, "input", () => on(true)],
    [element, "blur", () => on(false)],
  ]);
}

function listen(listeners) {
  for (const [target, kind, f, capture = false] of listeners) {
    target.addEventListener(kind, f, { passive: true, capture });
  }
  return () => {
    for (const [target, kind, f, capture = false] of listeners) target.removeEventListener(kind, f, capture);
  };
}

// A WebSocket to `url` with `token` in the query, calling `on` with each text message, `0` when
// open and the close code when closed; `undefined` for a malformed URL.
export function openSocket(url, token, on) {
  try {
    const ws = new WebSocket(`${url}${url.includes("?") ? "&" : "?"}token=${encodeURIComponent(token)}`);
    ws.onopen = () => on(0);
    ws.onmessage = (e) => typeof e.data == "string" && on(e.data);
    ws.onclose = (e) => on(e.code);
    return ws;
  } catch {}
}

// Calls the app's `getToken` and hands `on` its token, or `undefined` if it threw, rejected or
// gave no non-empty string (the client then stops as unauthorized, or tries again later).
export function fetchToken(get, on) {
  Promise.resolve()
    .then(get)
    .then((t) => on(typeof t == "string" && t ? t : undefined), () => on(undefined));
}

// `JSON.parse` of an object the server sent (valid JSON by construction), and `JSON.stringify` of
// what the app gave `setData`: `undefined` if it has none (a cycle, a BigInt).
export function parseJson(text) {
  return JSON.parse(text);
}

export function jsonOf(v) {
  try {
    return JSON.stringify(v);
  } catch {}
}

// A socket given up: its late events reach nobody.
export function detachSocket(ws) {
  ws.onopen = ws.onmessage = ws.onclose = null;
}

// The resume token saved under `key` in sessionStorage, removed as it is read (so a duplicated
// tab cannot take over this tab's connection); `undefined` where there is none or no storage.
export function takeToken(key) {
  try {
    const token = sessionStorage.getItem(key);
    sessionStorage.removeItem(key);
    return token ?? undefined;
  } catch {}
}

export function saveToken(key, token) {
  try {
    sessionStorage.setItem(key, token);
  } catch {}
}

// The `device` option as its index in `DEVICES` (js.rs): -1 for none of them. Without one, the
// browser's word: 1 (mobile) by its client hint, else 2 (tablet) or 1 by its user agent, else 0.
export function device(v, ua = navigator.userAgent) {
  return v == null
    ? navigator.userAgentData?.mobile ? 1 : /iPad|Tablet/i.test(ua) ? 2 : +/Mobi|Android|iPhone/i.test(ua)
    : ["desktop", "mobile", "tablet", "other"].indexOf(v);
}

// `setTimeout(f, ms)` on the page's window (none off the main thread: no timer), and its clear.
export function setTimer(ms, f) {
  return globalThis.window?.setTimeout(f, ms);
}

export function clearTimer(id) {
  globalThis.window?.clearTimeout(id);
}

// `o[key] = value` on the fresh plain objects, maps and errors `js.rs` builds (it cannot throw
// there; `Reflect.set` needed catching glue), and `o[key]` of the app's options, `undefined` if a
// getter throws (as `Reflect.get` with its error dropped gave).
export function put(o, key, value) {
  o[key] = value;
}

// A map keyed by room or user ids: with no prototype, `put(o, "__proto__", v)` makes a key like
// any other (on a plain object it would replace the prototype), and an id such as `constructor`
// is absent until set.
export function dict() {
  return Object.create(null);
}

export function field(o, key) {
  try {
    return o[key];
  } catch {}
}
