// The packed SDK across a server restart (issue 11): a page joins rooms, sets read markers, watches
// two users and sets its status; the real presence-server is killed with SIGKILL and started again
// on the same port, with nothing kept (the in-memory default), so everything the server knows
// afterwards came from the SDK's resend. The server's HTTP API must then show the user in every
// room with the status intact, a second user must see every marker, the page must have heard no
// error, and the new server must have refused no frame (its /metrics count `rejected_frames`).
// Run twice: 36 rooms with 6 markers, then the limits, 64 rooms with 64 markers.
//
// Then token lifetime (issue 13): a server with a JWT secret, tokens that live 4 s signed here,
// and a page whose `getToken` fetches them. The page must stay connected through three refreshes
// (no reconnect, no flap seen by a second user), stop as `unauthorized` once `getToken` fails,
// and a page given only an expired token must stop at once and start again with `setToken`.
//
// Then devices and notifications (issue 30): two pages of one user, a desktop one that views
// #design and a hidden mobile one, and the server's `notify` answers for #design and #random as
// the desktop page goes quiet, the user goes busy and the page gets input again; then the same user
// over two nodes sharing Redis, asking the node that holds only the hidden page.
//
// Then receipts of readers gone offline (issue 31): a reader's receipt reaches a member live
// (`onReceipt`), then the reader closes; past the grace the member's snapshot still holds the
// marker, and a newcomer's snapshot, fresh from the server, does too: on one node, and over two
// nodes sharing Redis with the newcomer on the other node. And privacy settings set with
// `setPrivacy`: confirmed in the snapshot, held on another page, and honoured for another member.
//
// Then large rooms (issue 15): a server that makes a room large at 5 online members; clients join,
// leave and go idle, and getSnapshot().rooms[room] must show exact counts, the mode and the
// members at each step, small again below 80 %. And ids named like `Object.prototype` members
// (`__proto__`) must be plain keys of the snapshot's `rooms` and `receipts`.
//
//   PRESENCE_SERVER=target/debug/presence-server [PRESENCE_TARBALL=target/….tgz] \
//     node presence-wasm/e2e-restart/run.mjs [scenario …]
//
// With scenario names (36-rooms, 64-rooms, token-lifetime, notify, notify-cluster,
// offline-receipts, offline-receipts-cluster, privacy, large-room, prototype-names, big-frames), only
// those. notify-cluster and offline-receipts-cluster need Redis on 127.0.0.1:6379.
// Without PRESENCE_TARBALL it loads presence-wasm/pkg/ (`cargo xtask npm` builds both).
// `cargo xtask test` runs it. Every wait is bounded and fails saying what it saw instead.
import { execFileSync, spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:http";
import { tmpdir } from "node:os";
import { dirname, extname, join, normalize, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, "..", "..");
const target = resolve(root, process.env.CARGO_TARGET_DIR ?? "target");
const binary = process.env.PRESENCE_SERVER ?? join(target, "debug", "presence-server");
const tarball = process.env.PRESENCE_TARBALL;
const WAIT_MS = 20_000;
const CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync"];

const sleep = (ms) => new Promise((ok) => setTimeout(ok, ms));

/** Polls `check` (async, returning [ok, what it saw]) until ok or WAIT_MS. */
async function until(what, check) {
  const deadline = Date.now() + WAIT_MS;
  let seen;
  while (Date.now() < deadline) {
    const [ok, saw] = await check();
    if (ok) return;
    seen = saw;
    await sleep(100);
  }
  throw new Error(`timed out after ${WAIT_MS / 1000} s waiting for ${what}; saw: ${JSON.stringify(seen)}`);
}

// ------------------------------------------------------------------ the SDK, served to the page

const tmp = process.env.TMPDIR ?? tmpdir();
mkdirSync(tmp, { recursive: true });
const scratch = mkdtempSync(join(tmp, "e2e-restart-"));
const site = join(scratch, "site");
mkdirSync(site);
let sdk;
if (tarball) {
  execFileSync("tar", ["-xzf", resolve(tarball), "-C", site]);
  sdk = join(site, "package");
} else {
  sdk = join(root, "presence-wasm", "pkg");
}
if (!existsSync(join(sdk, "presence_wasm.js"))) throw new Error(`no SDK in ${sdk}: run cargo xtask npm`);
writeFileSync(join(site, "index.html"), `<!doctype html><title>restart</title>
<script type="module">
  import init, { PresenceClient } from "/sdk/presence_wasm.js";
  await init();
  window.PresenceClient = PresenceClient;
  window.sdkReady = true;
</script>`);
const types = { ".html": "text/html", ".js": "text/javascript", ".wasm": "application/wasm" };
const http = createServer((req, res) => {
  const url = new URL(req.url, "http://x");
  const path = normalize(decodeURIComponent(url.pathname)).replace(/^\/+/, "");
  if (path === "favicon.ico") return res.writeHead(204).end();
  if (path === "token") {
    // The app's token endpoint: `?user=&ttl=` seconds; `?deny=1` as if logged out.
    if (url.searchParams.get("deny")) return res.writeHead(401).end();
    const ttl = Number(url.searchParams.get("ttl") ?? 4);
    return res.writeHead(200, { "content-type": "text/plain" }).end(jwt(url.searchParams.get("user"), ttl));
  }
  const [base, rel] = path.startsWith("sdk/") ? [sdk, path.slice(4)] : [site, path || "index.html"];
  const file = join(base, rel);
  if (!file.startsWith(base) || !existsSync(file)) return res.writeHead(404).end();
  res.writeHead(200, { "content-type": types[extname(file)] ?? "application/octet-stream" });
  res.end(readFileSync(file));
});
await new Promise((ok) => http.listen(0, "127.0.0.1", ok));
const pageUrl = `http://127.0.0.1:${http.address().port}/`;

// ------------------------------------------------------------------ the server

/** A port free now. */
const freePort = () => new Promise((ok) => {
  const probe = createServer().listen(0, "127.0.0.1", () => {
    const { port } = probe.address();
    probe.close(() => ok(port));
  });
});
const port = await freePort();
const api = `http://127.0.0.1:${port}`;
const wsUrl = `ws://127.0.0.1:${port}/ws`;
let server = null;
const serverLog = [];

const JWT_SECRET = "e2e-secret-0123456789-abcdefghijklmnop";

/** An HS256 JWT for `user` that expires in `ttl` seconds (negative: already expired). */
function jwt(user, ttl) {
  const part = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  const body = `${part({ alg: "HS256", typ: "JWT" })}.${part({ sub: user, exp: Math.floor(Date.now() / 1000) + ttl })}`;
  return `${body}.${createHmac("sha256", JWT_SECRET).update(body).digest("base64url")}`;
}

/** Starts the server with `flags` (auth, and whatever else a scenario needs) on `port`. */
async function startServer(flags = ["--dev-auth"]) {
  await spawnServer(port, flags, (child) => (server = child));
}

/**
 * Starts a server process on `port` with `flags`, hands it to `keep` at once (so it is killed
 * however the wait ends) and waits until its /healthz answers.
 */
async function spawnServer(port, flags, keep) {
  const child = spawn(binary, ["--bind", `127.0.0.1:${port}`, ...flags, "--heartbeat-interval-ms", "1000",
    "--heartbeat-timeout-ms", "3000", "--batch-window-ms", "10", "--log", "warn"],
  { stdio: ["ignore", "ignore", "pipe"] });
  child.stderr.on("data", (d) => serverLog.push(String(d)));
  keep(child);
  await until(`the server's /healthz on port ${port}`, async () => {
    if (child.exitCode !== null) throw new Error(`the server on port ${port} exited with ${child.exitCode}`);
    try {
      return [(await fetch(`http://127.0.0.1:${port}/healthz`)).ok, "not ready"];
    } catch (e) {
      return [false, String(e)];
    }
  });
}

async function killServer() {
  const child = server;
  server = null;
  if (!child || child.exitCode !== null) return;
  const exited = new Promise((ok) => child.once("exit", ok));
  child.kill("SIGKILL");
  await exited;
}

async function getJson(path, token) {
  const r = await fetch(`${api}${path}`, { headers: { authorization: `Bearer ${token}` } });
  if (!r.ok) return { httpStatus: r.status };
  return r.json();
}

/** Every room lists the user, online; their status and text are as set. */
async function serverShows(user, rooms, status, text) {
  const me = await getJson(`/v1/users/${user}/presence`, user);
  const missing = [];
  for (const room of rooms) {
    const r = await getJson(`/v1/rooms/${room}/members`, user);
    const m = (r.members ?? []).find((m) => m.user === user);
    if (!m || m.state === "offline") missing.push(room);
  }
  const ok = missing.length === 0 && me.status === status && me.text === text;
  return [ok, { status: me.status, text: me.text, roomsWithoutUser: missing }];
}

/** Frames this server process refused, by code (nothing is refused when the resend fits). */
async function refusedFrames() {
  const text = await (await fetch(`${api}/metrics`)).text();
  const refused = {};
  for (const [, code, n] of text.matchAll(/rejected_frames_total\{code="([a-z_]+)"\} (\d+)/g)) {
    if (Number(n) > 0) refused[code] = Number(n);
  }
  return refused;
}

// ------------------------------------------------------------------ the page

async function scenario(browser, name, roomCount, markerCount) {
  const t0 = Date.now();
  const prefix = `${name}-${Date.now()}`;
  const rooms = Array.from({ length: roomCount }, (_, i) => `${prefix}-r${i}`);
  const marked = rooms.slice(0, markerCount).map((room, i) => [room, 1000 + i]);
  const ana = `ana-${prefix}`;
  const watched = [`carol-${prefix}`, `dave-${prefix}`];
  await startServer();
  const { page, pageErrors } = await newPage(browser);
  // Chromium logs every refused WebSocket connection as a console error: a
  // reconnect attempt that lands while the server is down is expected here,
  // not a page error.
  const expected = /WebSocket connection to .* failed|ERR_CONNECTION_REFUSED/;
  page.on("console", (m) => m.type() === "error" && !expected.test(m.text()) && pageErrors.push(m.text()));
  try {
    await loadSdk(page);
    await page.evaluate(({ wsUrl, ana, rooms, marked, watched }) => {
      window.sdkErrors = [];
      window.connections = [];
      const c = window.PresenceClient.connect({ url: wsUrl, token: ana, resume: false });
      c.onError((e) => window.sdkErrors.push(e));
      c.onConnection((e) => window.connections.push(e.state));
      for (const room of rooms) c.join(room);
      for (const [room, marker] of marked) c.markRead(room, marker);
      c.watch(watched);
      c.setStatus("busy", "focus");
      window.ana = c;
    }, { wsUrl, ana, rooms, marked, watched });
    const fresh = async () => {
      const s = await page.evaluate(() => {
        const s = window.ana.getSnapshot();
        return { connection: s.connection, stale: s.stale, rooms: Object.keys(s.rooms).length,
          watched: s.watched.map((p) => p.user), status: s.status, text: s.text };
      });
      const ok = s.connection === "connected" && !s.stale && s.rooms === roomCount && s.watched.length === 2;
      return [ok, s];
    };
    await until(`${name}: the page's snapshot live and complete`, fresh);
    await until(`${name}: the server shows every room and the status`, () => serverShows(ana, rooms, "busy", "focus"));
    await checkMarkers(page, name, ana, marked);

    // kill -9, then the same port again: an empty server.
    await killServer();
    await until(`${name}: the page sees the server gone`, async () => {
      const s = await page.evaluate(() => ({ connection: window.ana.getSnapshot().connection,
        stale: window.ana.getSnapshot().stale }));
      return [s.connection !== "connected" && s.stale, s];
    });
    await startServer();
    await until(`${name}: the page's snapshot live and complete again`, fresh);
    await until(`${name}: the restarted server shows every room and the status`,
      () => serverShows(ana, rooms, "busy", "focus"));
    await checkMarkers(page, name, ana, marked);
    const sdkErrors = await page.evaluate(() => window.sdkErrors);
    if (sdkErrors.length) throw new Error(`${name}: onError heard ${JSON.stringify(sdkErrors)}`);
    const refused = await refusedFrames();
    if (Object.keys(refused).length) {
      throw new Error(`${name}: the restarted server refused frames: ${JSON.stringify(refused)}`);
    }
    noPageErrors(name, pageErrors);
    const connections = await page.evaluate(() => window.connections);
    await page.evaluate(() => window.ana.close());
    console.log(`restart test, ${name}: ${roomCount} rooms, ${markerCount} markers, 2 watched users and ` +
      `busy/"focus" intact after kill -9 and restart, no refused frame ` +
      `(${connections.join(" → ")}; ${((Date.now() - t0) / 1000).toFixed(1)} s)`);
  } finally {
    await page.close();
    await killServer();
  }
}

/** A new page whose uncaught errors `noPageErrors` reports. */
async function newPage(browser) {
  const page = await browser.newPage();
  const pageErrors = [];
  page.on("pageerror", (e) => pageErrors.push(String(e)));
  return { page, pageErrors };
}

/** Opens the test page and waits for the SDK to load. */
async function loadSdk(page) {
  await page.goto(pageUrl);
  await page.waitForFunction(() => window.sdkReady === true, null, { timeout: WAIT_MS });
}

function noPageErrors(what, pageErrors) {
  if (pageErrors.length) throw new Error(`${what}: page errors: ${pageErrors.join("; ")}`);
}

/** Metric lines of this server process matching `re`, as {label: value}. */
async function metric(re) {
  const text = await (await fetch(`${api}/metrics`)).text();
  return Object.fromEntries([...text.matchAll(re)].map(([, k, n]) => [k, Number(n)]));
}

async function tokenLifetime(browser) {
  const t0 = Date.now();
  await startServer(["--jwt-secret", JWT_SECRET, "--default-audience", "open"]);
  const { page, pageErrors } = await newPage(browser);
  try {
    await loadSdk(page);
    await page.evaluate(({ wsUrl, bobToken }) => {
      window.asked = 0;
      window.loggedOut = false;
      window.anaErrors = [];
      window.anaStates = [];
      window.bobSawAna = [];
      const getToken = async () => {
        window.asked++;
        const r = await fetch(`/token?user=ana&ttl=4${window.loggedOut ? "&deny=1" : ""}`);
        if (!r.ok) throw new Error("logged out");
        return r.text();
      };
      window.ana = window.PresenceClient.connect({ url: wsUrl, getToken, resume: false });
      window.ana.onError((e) => window.anaErrors.push(e));
      window.ana.onConnection((e) => window.anaStates.push(e.state));
      window.ana.join("lobby");
      window.bob = window.PresenceClient.connect({ url: wsUrl, token: bobToken, resume: false });
      window.bob.join("lobby");
      window.bob.onPresence((e) => e.presence.user === "ana" && window.bobSawAna.push(e.presence.state));
    }, { wsUrl, bobToken: jwt("bob", 3600) });
    await until("token: bob sees ana", async () => {
      const seen = await page.evaluate(() => ({ bob: window.bobSawAna, ana: window.anaStates,
        asked: window.asked, errors: window.anaErrors }));
      return [seen.bob.length > 0 && seen.bob.at(-1) !== "offline", seen];
    });
    // Three 4 s lifetimes: each refreshed with a second to spare, over the live socket.
    await sleep(10_000);
    const live = await page.evaluate(() => ({ asked: window.asked, states: window.anaStates,
      errors: window.anaErrors, bobSawAna: window.bobSawAna }));
    const tokens = await metric(/presence_tokens_total\{outcome="(\w+)"\} (\d+)/g);
    const ok = live.states.join() === "connected" && live.errors.length === 0 &&
      live.asked >= 3 && (tokens.refreshed ?? 0) >= 2 && !tokens.expired &&
      !live.bobSawAna.includes("offline");
    if (!ok) throw new Error(`token: not refreshed in place: ${JSON.stringify({ live, tokens })}`);

    // Logged out: at the current token's exp the server closes with 4101, getToken throws.
    await page.evaluate(() => { window.loggedOut = true; });
    await until("token: ana stops as unauthorized", async () => {
      const s = await page.evaluate(() => ({ connection: window.ana.getSnapshot().connection,
        errors: window.anaErrors.map((e) => e.code) }));
      return [s.connection === "unauthorized" && s.errors.includes("unauthorized"), s];
    });

    // Only an expired token: refused after the upgrade, so the SDK can tell; setToken recovers.
    await page.evaluate(({ wsUrl, expired }) => {
      window.carolErrors = [];
      window.carol = window.PresenceClient.connect({ url: wsUrl, token: expired, resume: false });
      window.carol.onError((e) => window.carolErrors.push(e.code));
    }, { wsUrl, expired: jwt("carol", -3600) });
    await until("token: an expired token stops at once", async () => {
      const s = await page.evaluate(() => ({ connection: window.carol.getSnapshot().connection,
        errors: window.carolErrors }));
      return [s.connection === "unauthorized" && s.errors.join() === "unauthorized", s];
    });
    await page.evaluate((token) => window.carol.setToken(token), jwt("carol", 3600));
    await until("token: setToken starts it again", async () => {
      const c = await page.evaluate(() => window.carol.getSnapshot().connection);
      return [c === "connected", c];
    });
    const refreshed = (await metric(/presence_tokens_total\{outcome="(\w+)"\} (\d+)/g)).refreshed;
    await page.evaluate(() => { window.ana.close(); window.bob.close(); window.carol.close(); });
    noPageErrors("token", pageErrors);
    console.log(`token lifetime test: 4 s tokens refreshed ${refreshed} times over a live socket ` +
      `(getToken asked ${live.asked} times, bob saw no flap), unauthorized once getToken failed, ` +
      `an expired token stopped at once and setToken recovered (${((Date.now() - t0) / 1000).toFixed(1)} s)`);
  } finally {
    await page.close();
    await killServer();
  }
}

const SERVICE_KEY = "e2e-service-key-0123456789";
/** Push threshold and idle-after of the notify scenarios: a quiet page is past both within 3 s. */
const NOTIFY_FLAGS = ["--dev-auth", "--service-key", SERVICE_KEY, "--notify-idle-ms", "1500",
  "--idle-after-ms", "1000"];

/** A service-key GET on the server at `base`. */
async function service(base, path) {
  const r = await fetch(`${base}${path}`, { headers: { authorization: `Bearer ${SERVICE_KEY}` } });
  if (!r.ok) return { httpStatus: r.status, body: await r.text() };
  return r.json();
}

/** `GET /v1/users/{user}/notify?room=` on `base` as "decision/reason", with the devices it saw. */
async function notify(base, user, room) {
  const n = await service(base, `/v1/users/${user}/notify?room=${room}`);
  return { says: `${n.decision}/${n.reason}`, devices: n.devices, complete: n.complete, error: n.httpStatus };
}

/** The user's devices on `base` as "kind:state[:reason][>view]", sorted. */
async function devicesOf(base, user) {
  const d = await service(base, `/v1/users/${user}/devices`);
  const shown = (d.devices ?? []).map((v) =>
    `${v.kind}:${v.state}${v.reason ? `:${v.reason}` : ""}${v.view ? `>${v.view}` : ""}`);
  return { list: shown.sort(), complete: d.complete, error: d.httpStatus };
}

const BOTH_PAGES = "desktop:active>design,mobile:idle:hidden";

/**
 * Page A (desktop, said in `connect`) joins #design and #random and views #design; page B (no
 * `device`: the SDK derives `mobile` from the phone user agent the page is given) is hidden.
 * Returns a function that moves page A's mouse (real input for the SDK's listeners).
 */
async function twoPages(pageA, pageB, wsA, wsB, user) {
  await pageA.evaluate(({ wsUrl, user }) => {
    window.sdkErrors = [];
    window.me = window.PresenceClient.connect({ url: wsUrl, token: user, resume: false, device: "desktop" });
    window.me.onError((e) => window.sdkErrors.push(e));
    window.me.join("design");
    window.me.join("random");
    window.me.view("design");
  }, { wsUrl: wsA, user });
  await pageB.evaluate(({ wsUrl, user }) => {
    window.sdkErrors = [];
    window.me = window.PresenceClient.connect({ url: wsUrl, token: user, resume: false, hiddenAfterMs: 0 });
    window.me.onError((e) => window.sdkErrors.push(e));
    window.me.join("design");
    // A phone app sent to the background: the tab is hidden.
    Object.defineProperty(document, "visibilityState", { get: () => "hidden", configurable: true });
    Object.defineProperty(document, "hidden", { get: () => true, configurable: true });
    document.dispatchEvent(new Event("visibilitychange"));
  }, { wsUrl: wsB, user });
  let x = 10;
  return () => pageA.mouse.move((x = x === 10 ? 20 : 10), 10);
}

/** Polls `notify` for `room` until it says `want`; `before` runs first each round (input). */
function notifySays(what, base, user, room, want, before = async () => {}) {
  return until(`notify: ${what}: #${room} ${want}`, async () => {
    await before();
    const n = await notify(base, user, room);
    return [n.says === want, n];
  });
}

/** Each page's `onError` heard nothing and no page threw. */
async function quietPages(what, pages) {
  for (const { page, pageErrors } of pages) {
    const heard = await page.evaluate(() => window.sdkErrors);
    if (heard.length) throw new Error(`${what}: onError heard ${JSON.stringify(heard)}`);
    noPageErrors(what, pageErrors);
  }
}

/** A page made to look like a phone's browser to the SDK (its user agent, before it loads). */
async function phonePage(browser) {
  const b = await newPage(browser);
  const cdp = await browser.newCDPSession(b.page);
  await cdp.send("Emulation.setUserAgentOverride", { userAgent: "Mozilla/5.0 (Linux; Android 14; Pixel 8) " +
    "AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Mobile Safari/537.36" });
  return b;
}

/**
 * Devices and notifications (issue 30) against one server: the answers of `notify` as page A
 * goes from active to quiet, the user to busy, and page A back to active by real input.
 */
async function notifyOneNode(browser) {
  const t0 = Date.now();
  await startServer(NOTIFY_FLAGS);
  const user = `ana-notify-${Date.now()}`;
  const a = await newPage(browser);
  const b = await phonePage(browser);
  try {
    await loadSdk(a.page);
    await loadSdk(b.page);
    const input = await twoPages(a.page, b.page, wsUrl, wsUrl, user);
    const bothPages = (what) => until(`notify: ${what}`, async () => {
      await input();
      const d = await devicesOf(api, user);
      return [d.list.join() === BOTH_PAGES, d];
    });
    await bothPages("a desktop page viewing #design and a hidden mobile page");
    await notifySays("page A in front, viewing", api, user, "design", "live/viewing", input);
    await notifySays("page A active elsewhere in the app", api, user, "random", "live/active", input);
    // No input on page A: idle (no_input) after 1 s, past the push threshold 1.5 s later.
    const quiet = Date.now();
    await notifySays("page A quiet past the threshold", api, user, "random", "push/idle");
    const quietMs = Date.now() - quiet;
    const design = await notify(api, user, "design");
    if (design.says !== "push/idle") throw new Error(`notify: #design when quiet: ${JSON.stringify(design)}`);
    await a.page.evaluate(() => window.me.setStatus("busy"));
    await notifySays("busy", api, user, "random", "none/busy");
    await a.page.mouse.move(30, 30);
    await notifySays("input on page A again", api, user, "design", "live/viewing");
    const random = await notify(api, user, "random");
    if (random.says !== "none/busy") throw new Error(`notify: #random when busy: ${JSON.stringify(random)}`);
    // kill -9 and an empty server on the same port: the pages' hellos say their devices again, and
    // page A's view follows its join in the resend.
    await killServer();
    await startServer(NOTIFY_FLAGS);
    const restart = Date.now();
    await bothPages("both pages back after a restart, page A viewing #design again");
    const restoredMs = Date.now() - restart;
    await notifySays("page A in front after the restart", api, user, "design", "live/viewing", input);
    await quietPages("notify", [a, b]);
    await a.page.evaluate(() => window.me.close());
    await b.page.evaluate(() => window.me.close());
    console.log(`notify test: a desktop page viewing #design and a hidden mobile page of one user: #design ` +
      `live/viewing, #random live/active, push/idle ${(quietMs / 1000).toFixed(1)} s after the last input, ` +
      `none/busy once busy, #design live/viewing on input again; devices desktop and mobile, and ` +
      `again ${(restoredMs / 1000).toFixed(1)} s after a restart with the view (${((Date.now() - t0) / 1000).toFixed(1)} s)`);
  } finally {
    await a.page.close();
    await b.page.close();
    await killServer();
  }
}

/**
 * The same user over two nodes sharing Redis: page A (viewing #design) on node 1, the hidden
 * page B on node 2; node 2 must answer from both nodes' devices.
 */
async function notifyCluster(browser) {
  const t0 = Date.now();
  const prefix = `e2e-notify-${process.pid}-${Date.now()}`;
  const flags = [...NOTIFY_FLAGS, "--redis-url", "redis://127.0.0.1:6379", "--redis-prefix", prefix];
  const ports = [await freePort(), await freePort()];
  const user = `ana-cluster-${Date.now()}`;
  const a = await newPage(browser);
  const b = await phonePage(browser);
  try {
    for (const p of ports) await spawnServer(p, flags, (child) => nodes.push(child));
    const [node1, node2] = ports.map((p) => `http://127.0.0.1:${p}`);
    await loadSdk(a.page);
    await loadSdk(b.page);
    const input = await twoPages(a.page, b.page, `ws://127.0.0.1:${ports[0]}/ws`,
      `ws://127.0.0.1:${ports[1]}/ws`, user);
    await until("notify across nodes: node 2 lists the devices of both nodes", async () => {
      await input();
      const d = await devicesOf(node2, user);
      return [d.complete && d.list.join() === BOTH_PAGES, d];
    });
    await notifySays("node 2, page A in front on node 1", node2, user, "design", "live/viewing", input);
    await notifySays("node 2, page A active on node 1", node2, user, "random", "live/active", input);
    await quietPages("notify across nodes", [a, b]);
    await a.page.evaluate(() => window.me.close());
    await b.page.evaluate(() => window.me.close());
    console.log(`notify across nodes test: page A on node 1, the hidden page B on node 2, node 2 says ` +
      `#design live/viewing and #random live/active from both nodes' devices ` +
      `(${((Date.now() - t0) / 1000).toFixed(1)} s)`);
  } finally {
    await a.page.close();
    await b.page.close();
    await killNodes();
  }
}

/**
 * Receipts of a reader gone offline (issue 31), through the SDK: bob and ana in #notes on
 * `readerWs`; ana reads (bob hears it live), then closes; past the leave grace bob's snapshot keeps
 * her marker, and carol, who joins on `newcomerWs` afterwards, gets it in her snapshot.
 */
async function offlineReceipts(browser, what, readerWs, newcomerWs) {
  const t0 = Date.now();
  const room = `notes-${Date.now()}`;
  const { page, pageErrors } = await newPage(browser);
  try {
    await loadSdk(page);
    await page.evaluate(({ room }) => {
      window.sdkErrors = [];
      window.heard = [];
      window.clients = {};
      window.add = (user, wsUrl) => {
        const c = window.PresenceClient.connect({ url: wsUrl, token: user, resume: false });
        c.onError((e) => window.sdkErrors.push(`${user}: ${e.code}`));
        c.join(room);
        window.clients[user] = c;
        return c;
      };
      // The room as `user`'s client shows it: online members and the receipts.
      window.view = (user) => {
        const r = window.clients[user].getSnapshot().rooms[room];
        return r && { online: r.members.filter((m) => m.state !== "offline").map((m) => m.user).sort().join(),
          receipts: JSON.stringify(r.receipts) };
      };
    }, { room });
    const act = (f, arg) => page.evaluate(f, arg);
    const shows = (step, user, online, receipts) => until(`${what}: ${step}`, async () => {
      const v = await act((u) => window.view(u), user);
      return [v?.online === online && v?.receipts === JSON.stringify(receipts), { want: { online, receipts }, saw: v }];
    });
    await act(({ wsUrl, room }) => window.add("bob", wsUrl)
      .onReceipt((e) => e.room === room && window.heard.push(`${e.user}:${e.marker}`)), { wsUrl: readerWs, room });
    await act((wsUrl) => window.add("ana", wsUrl), readerWs);
    await shows("bob sees ana in the room", "bob", "ana,bob", {});
    await act((room) => window.clients.ana.markRead(room, 42), room);
    await until(`${what}: bob hears ana's receipt live`, async () => {
      const heard = await act(() => window.heard);
      return [heard.join() === "ana:42", heard];
    });
    await shows("bob's snapshot holds ana's marker", "bob", "ana,bob", { ana: 42 });
    await act(() => window.clients.ana.close());
    await shows("ana offline after the grace, bob keeps her marker", "bob", "bob", { ana: 42 });
    await act((wsUrl) => window.add("carol", wsUrl), newcomerWs);
    await shows("carol, new in the room, gets ana's marker from the server", "carol", "bob,carol", { ana: 42 });
    const sdkErrors = await act(() => window.sdkErrors);
    await act(() => Object.values(window.clients).forEach((c) => c.close()));
    if (sdkErrors.length) throw new Error(`${what}: onError heard ${JSON.stringify(sdkErrors)}`);
    noPageErrors(what, pageErrors);
    console.log(`${what} test: ana's receipt heard live by bob, kept in bob's snapshot after ana went ` +
      `offline, and in the snapshot of carol who joined later (${((Date.now() - t0) / 1000).toFixed(1)} s)`);
  } finally {
    await page.close();
  }
}

async function offlineReceiptsOneNode(browser) {
  await startServer(["--dev-auth", "--leave-grace-ms", "100"]);
  try {
    await offlineReceipts(browser, "offline receipts", wsUrl, wsUrl);
  } finally {
    await killServer();
  }
}

/** The same over two nodes sharing Redis: the readers on node 1, the newcomer on node 2. */
async function offlineReceiptsCluster(browser) {
  const prefix = `e2e-receipts-${process.pid}-${Date.now()}`;
  const flags = ["--dev-auth", "--leave-grace-ms", "100", "--redis-url", "redis://127.0.0.1:6379",
    "--redis-prefix", prefix];
  const ports = [await freePort(), await freePort()];
  try {
    for (const p of ports) await spawnServer(p, flags, (child) => nodes.push(child));
    const [node1, node2] = ports.map((p) => `ws://127.0.0.1:${p}/ws`);
    await offlineReceipts(browser, "offline receipts across nodes", node1, node2);
  } finally {
    await killNodes();
  }
}

/**
 * Privacy settings through the SDK (issue 31): ana reads, then sets last seen `nobody` and
 * receipts `off` with `setPrivacy`; her snapshot shows the settings once the server confirms, a
 * bad value throws `invalid_argument`, a second page of hers is welcomed with them; bob heard her
 * first receipt but not the one after, and once she leaves his snapshot shows her offline with no
 * last seen, keeping the marker she read before turning receipts off. Then bob's backend turns his
 * receipts off (`PUT /v1/users/bob/privacy`): his open page's snapshot shows it, and a fresh page of
 * his holds his own marker only.
 */
async function privacySettings(browser) {
  const t0 = Date.now();
  const key = "e2e-service-key-0123456789";
  await startServer(["--dev-auth", "--leave-grace-ms", "100", "--service-key", key]);
  const room = `private-${Date.now()}`;
  const put = async (user, body) => {
    const r = await fetch(`${api}/v1/users/${user}/privacy`, { method: "PUT", body: JSON.stringify(body),
      headers: { authorization: `Bearer ${key}`, "content-type": "application/json" } });
    if (!r.ok) throw new Error(`privacy: PUT for ${user} answered ${r.status}: ${await r.text()}`);
  };
  const { page, pageErrors } = await newPage(browser);
  try {
    await loadSdk(page);
    const act = (f, arg) => page.evaluate(f, arg);
    await act(({ wsUrl, room }) => {
      window.sdkErrors = [];
      window.heard = [];
      window.clients = {};
      window.add = (name, user) => {
        const c = window.PresenceClient.connect({ url: wsUrl, token: user, resume: false });
        c.onError((e) => window.sdkErrors.push(`${name}: ${e.code}`));
        c.join(room);
        window.clients[name] = c;
        return c;
      };
      window.add("bob", "bob").onReceipt((e) => e.room === room && window.heard.push(`${e.user}:${e.marker}`));
      window.add("ana", "ana");
      window.seen = (name) => {
        const s = window.clients[name].getSnapshot();
        const r = s.rooms[room];
        const ana = r?.members.find((m) => m.user === "ana");
        return JSON.stringify({ privacy: s.privacy, ana: ana && { state: ana.state, lastSeen: ana.lastSeen ?? null },
          receipts: r?.receipts });
      };
    }, { wsUrl, room });
    const shows = (step, name, want) => until(`privacy: ${step}`, async () => {
      const saw = await act((n) => window.seen(n), name);
      return [saw === JSON.stringify(want), { want, saw }];
    });
    const open = { lastSeen: "everyone", receipts: "on" };
    await shows("bob sees ana online", "bob", { privacy: open, ana: { state: "active", lastSeen: null }, receipts: {} });
    await act((room) => window.clients.ana.markRead(room, 3), room);
    await until("privacy: bob hears ana's first receipt", async () => {
      const heard = await act(() => window.heard);
      return [heard.join() === "ana:3", heard];
    });
    const thrown = await act(() => {
      try {
        window.clients.ana.setPrivacy({ lastSeen: "sometimes" });
        return "nothing thrown";
      } catch (e) {
        return e.code;
      }
    });
    if (thrown !== "invalid_argument") throw new Error(`privacy: a bad lastSeen gave ${thrown}`);
    await act(() => window.clients.ana.setPrivacy({ lastSeen: "nobody", receipts: "off" }));
    const hidden = { lastSeen: "nobody", receipts: "off" };
    await shows("ana's snapshot shows the server's settings", "ana",
      { privacy: hidden, ana: { state: "active", lastSeen: null }, receipts: { ana: 3 } });
    await act((room) => window.clients.ana.markRead(room, 9), room);
    await act(() => window.add("ana2", "ana"));
    // The room's shown marker is the one read before receipts went off (9 is kept for her
    // backend's push decision, not shown).
    await shows("a second page of ana is welcomed with them", "ana2",
      { privacy: hidden, ana: { state: "active", lastSeen: null }, receipts: { ana: 3 } });
    await act(() => { window.clients.ana.close(); window.clients.ana2.close(); });
    await shows("bob: ana offline, no last seen, the marker read before receipts went off", "bob",
      { privacy: open, ana: { state: "offline", lastSeen: null }, receipts: { ana: 3 } });
    // A marker of bob's after ana's 9: once bob hears it, ana's would have come before it.
    await act((room) => window.clients.bob.markRead(room, 4), room);
    await until("privacy: bob hears his own marker and none of ana's after 3", async () => {
      const heard = await act(() => window.heard);
      return [heard.join() === "ana:3,bob:4", heard];
    });
    await put("bob", { receipts: "off" });
    const bobOff = { lastSeen: "everyone", receipts: "off" };
    await shows("bob's open page shows what his backend set", "bob",
      { privacy: bobOff, ana: { state: "offline", lastSeen: null }, receipts: { ana: 3, bob: 4 } });
    await act(() => { window.clients.bob.close(); window.add("bob", "bob"); });
    await shows("a fresh page of bob's, receipts off: his own marker only", "bob",
      { privacy: bobOff, receipts: { bob: 4 } });
    const sdkErrors = await act(() => window.sdkErrors);
    await act(() => window.clients.bob.close());
    if (sdkErrors.length) throw new Error(`privacy: onError heard ${JSON.stringify(sdkErrors)}`);
    noPageErrors("privacy", pageErrors);
    console.log(`privacy test: setPrivacy confirmed in the snapshot and on a second page, a bad value ` +
      `refused, bob heard no receipt after receipts went off and sees no last seen; his backend's ` +
      `setting reached his page and his fresh snapshot holds only his marker ` +
      `(${((Date.now() - t0) / 1000).toFixed(1)} s)`);
  } finally {
    await page.close();
    await killServer();
  }
}

/** Server processes besides `server` (the cluster's nodes), killed when done. */
const nodes = [];

async function killNodes() {
  const children = nodes.splice(0);
  await Promise.all(children.filter((c) => c.exitCode === null).map((c) => {
    const exited = new Promise((ok) => c.once("exit", ok));
    c.kill("SIGKILL");
    return exited;
  }));
}

/**
 * Large rooms (issue 15) through the SDK: a server that makes a room large at 5 online members
 * (small again below 80 %, so at 3) with a summary at most every 200 ms, and clients in one page
 * joining, leaving, closing and going idle (a hidden page, for `ida` only: the others wait 60 s).
 * At each step every client named must see exactly the counts, the mode and the online members.
 */
async function largeRoom(browser) {
  const t0 = Date.now();
  await startServer(["--dev-auth", "--large-room-members", "5", "--large-room-interval-ms", "200",
    "--leave-grace-ms", "100"]);
  const room = "big";
  const { page, pageErrors } = await newPage(browser);
  try {
    await loadSdk(page);
    await page.evaluate(({ wsUrl, room }) => {
      let hidden = false;
      Object.defineProperty(document, "hidden", { get: () => hidden, configurable: true });
      window.setHidden = (h) => {
        hidden = h;
        document.dispatchEvent(new Event("visibilitychange"));
      };
      window.clients = {};
      window.sdkErrors = [];
      window.add = (user) => {
        const c = window.PresenceClient.connect({ url: wsUrl, token: user, resume: false,
          hiddenAfterMs: user === "ida" ? 0 : 60_000 });
        c.onError((e) => window.sdkErrors.push(`${user}: ${e.code}`));
        c.join(room);
        window.clients[user] = c;
      };
      // The room as `user`'s client shows it, with the counts its members make.
      window.view = (user) => {
        const r = window.clients[user].getSnapshot().rooms[room];
        if (!r) return null;
        const online = r.members.filter((m) => m.state !== "offline");
        const n = (state) => online.filter((m) => m.state === state).length;
        return { large: r.large, counts: r.counts, online: online.map((m) => m.user).sort(),
          fromMembers: { online: online.length, active: n("active"), idle: n("idle") } };
      };
    }, { wsUrl, room });
    const act = (f, arg) => page.evaluate(f, arg);
    const add = (user) => act((u) => window.add(u), user);
    const setHidden = (h) => act((h) => window.setHidden(h), h);
    const counts = (c) => `${c?.online}/${c?.active}/${c?.idle}`;
    /** Every client in `users` shows `room` with these counts, mode and online members. */
    const expect = (step, users, large, [online, active, idle], members) =>
      until(`large room: ${step}`, async () => {
        const views = await act((users) => users.map((u) => window.view(u)), users);
        const want = `${online}/${active}/${idle}`;
        // A small room's counts are its members'; a large room's list keeps the states it was
        // sent (individuals' idle changes only move the counts), so only its ids are checked.
        const ok = views.every((v) => v && v.large === large && counts(v.counts) === want &&
          v.online.join() === members.join() && (large || counts(v.fromMembers) === want));
        return [ok, { want: { large, counts: want, members }, saw: views }];
      });

    await add("obs");
    await add("u1");
    await expect("2 members, small", ["obs", "u1"], false, [2, 2, 0], ["obs", "u1"]);
    await add("ida");
    await expect("3 members, small", ["obs", "ida"], false, [3, 3, 0], ["ida", "obs", "u1"]);
    await setHidden(true);
    await expect("ida idle in a small room", ["obs", "u1"], false, [3, 2, 1], ["ida", "obs", "u1"]);
    await add("u2");
    await expect("4 members, still small", ["obs", "u2"], false, [4, 3, 1], ["ida", "obs", "u1", "u2"]);
    const five = ["ida", "obs", "u1", "u2", "u3"];
    await add("u3");
    await expect("5 members: large", ["obs", "ida", "u3"], true, [5, 4, 1], five);
    await setHidden(false);
    await expect("ida active again, by summary", ["obs", "u3"], true, [5, 5, 0], five);
    await setHidden(true);
    await expect("ida idle again, by summary", ["obs", "u1"], true, [5, 4, 1], five);
    await add("u4");
    await expect("u4 joined, by summary", ["obs", "u4"], true, [6, 5, 1], [...five, "u4"]);
    await act(() => window.clients.u3.leave("big"));
    await expect("u3 left, by summary", ["obs", "u4"], true, [5, 4, 1], ["ida", "obs", "u1", "u2", "u4"]);
    await act(() => window.clients.u4.close());
    await expect("u4 closed: 4 online, still large (80 % of 5)", ["obs", "u1"], true, [4, 3, 1],
      ["ida", "obs", "u1", "u2"]);
    await act(() => window.clients.u2.leave("big"));
    await expect("u2 left: 3 online, small again", ["obs", "ida", "u1"], false, [3, 2, 1], ["ida", "obs", "u1"]);
    await setHidden(false);
    await expect("ida active in the small room, by diff", ["obs", "u1"], false, [3, 3, 0], ["ida", "obs", "u1"]);

    const sdkErrors = await act(() => window.sdkErrors);
    await act(() => Object.values(window.clients).forEach((c) => c.close()));
    if (sdkErrors.length) throw new Error(`large room: onError heard ${JSON.stringify(sdkErrors)}`);
    noPageErrors("large room", pageErrors);
    console.log("large room test: small at 2-4 online with counts from the members, large at 5 and 6 " +
      "with counts and members through summaries (joins, a leave, a close, idle and active), still " +
      `large at 4, small again at 3 (${((Date.now() - t0) / 1000).toFixed(1)} s)`);
  } finally {
    await page.close();
    await killServer();
  }
}

/**
 * Ids that are names of `Object.prototype` members: a room and a user called `__proto__` must
 * be plain keys of `rooms` and `receipts`, and a room called `constructor` that nobody joined
 * must be absent, not a function inherited from `Object.prototype`.
 */
async function prototypeNames(browser) {
  const t0 = Date.now();
  await startServer();
  const { page, pageErrors } = await newPage(browser);
  try {
    await loadSdk(page);
    await page.evaluate((wsUrl) => {
      window.proto = window.PresenceClient.connect({ url: wsUrl, token: "__proto__", resume: false });
      window.proto.join("__proto__");
      window.proto.markRead("__proto__", 7);
      window.obs = window.PresenceClient.connect({ url: wsUrl, token: "obs", resume: false });
      window.obs.join("__proto__");
    }, wsUrl);
    await until("__proto__: both clients see the room, its members and the marker", async () => {
      const seen = await page.evaluate(() => [window.proto, window.obs].map((c) => {
        const rooms = c.getSnapshot().rooms;
        const r = Object.hasOwn(rooms, "__proto__") ? rooms["__proto__"] : undefined;
        return { rooms: Object.keys(rooms), constructor: typeof rooms.constructor,
          members: r?.members.map((m) => `${m.user}=${m.state}`),
          receipts: r && Object.entries(r.receipts), online: r?.counts.online };
      }));
      const want = JSON.stringify({ rooms: ["__proto__"], constructor: "undefined",
        members: ["__proto__=active", "obs=active"], receipts: [["__proto__", 7]], online: 2 });
      return [seen.every((s) => JSON.stringify(s) === want), seen];
    });
    await page.evaluate(() => { window.proto.close(); window.obs.close(); });
    noPageErrors("__proto__", pageErrors);
    console.log(`prototype names test: a room and a user called __proto__ are own keys of rooms and ` +
      `receipts, no room called constructor (${((Date.now() - t0) / 1000).toFixed(1)} s)`);
  } finally {
    await page.close();
    await killServer();
  }
}

/**
 * The server sends every text message past 2 KiB as 2 KiB WebSocket fragments (PROTOCOL.md,
 * "Limits"): 40 members with 300-byte data make a snapshot in parts of several KiB, which the SDK and a
 * plain browser WebSocket get whole, cut between two-byte characters.
 */
async function bigFrames(browser) {
  const t0 = Date.now();
  await startServer();
  const { page, pageErrors } = await newPage(browser);
  try {
    await loadSdk(page);
    const note = "é".repeat(150);
    await page.evaluate(({ wsUrl, note }) => {
      window.big = Array.from({ length: 40 }, (_, i) => {
        const c = window.PresenceClient.connect({ url: wsUrl, token: `member-${String(i).padStart(2, "0")}`, resume: false });
        c.setData({ note, i });
        c.join("big");
        return c;
      });
    }, { wsUrl, note });
    await until("big frames: every member sees 40 members and their data", async () => {
      const wrong = await page.evaluate((note) => window.big.map((c, i) => {
        const members = c.getSnapshot().rooms.big?.members ?? [];
        const whole = members.filter((m) => m.data?.note === note).length;
        return whole === 40 ? null : `member-${i}: ${members.length} members, ${whole} with data`;
      }).filter(Boolean), note);
      return [wrong.length === 0, wrong.slice(0, 3)];
    });
    const sizes = await page.evaluate((wsUrl) => new Promise((resolve, reject) => {
      const ws = new WebSocket(`${wsUrl}?token=zed`);
      const parts = [];
      ws.onopen = () => ws.send(JSON.stringify({ type: "hello", v: 1 }));
      ws.onmessage = (e) => {
        const f = JSON.parse(e.data);
        if (f.type === "welcome") ws.send(JSON.stringify({ type: "join", room: "big" }));
        if (f.type !== "snapshot") return;
        parts.push({ bytes: new TextEncoder().encode(e.data).length, members: f.members.length });
        if (!f.more) { ws.close(); resolve(parts); }
      };
      ws.onclose = (e) => reject(new Error(`closed ${e.code} before the whole snapshot`));
      setTimeout(() => reject(new Error("no whole snapshot in time")), 10000);
    }), wsUrl);
    const members = sizes.reduce((n, p) => n + p.members, 0);
    const biggest = Math.max(...sizes.map((p) => p.bytes));
    if (members !== 41 || biggest <= 4096) {
      throw new Error(`big frames: a plain WebSocket got ${members} of 41 members in parts of ` +
        `${sizes.map((p) => p.bytes).join(", ")} bytes (want one over 4096)`);
    }
    await page.evaluate(() => window.big.forEach((c) => c.close()));
    noPageErrors("big frames", pageErrors);
    console.log(`big frames test: 41 members in ${sizes.length} snapshot parts of up to ${biggest} bytes, ` +
      `sent as 2 KiB fragments, arrive whole in the SDK and a plain WebSocket ` +
      `(${((Date.now() - t0) / 1000).toFixed(1)} s)`);
  } finally {
    await page.close();
    await killServer();
  }
}

/** A second user, fresh from the server, sees every marker of `ana`. */
async function checkMarkers(page, name, ana, marked) {
  await page.evaluate(({ wsUrl, marked }) => {
    window.bob?.close();
    window.bob = window.PresenceClient.connect({ url: wsUrl, token: "bob", resume: false });
    for (const [room] of marked) window.bob.join(room);
  }, { wsUrl, marked });
  await until(`${name}: bob sees every marker of ana`, async () => {
    const wrong = await page.evaluate(({ ana, marked }) => {
      const rooms = window.bob.getSnapshot().rooms;
      return marked.filter(([room, marker]) => rooms[room]?.receipts?.[ana] !== marker)
        .map(([room, marker]) => `${room}: ${rooms[room]?.receipts?.[ana]} ≠ ${marker}`);
    }, { ana, marked });
    return [wrong.length === 0, wrong.slice(0, 5)];
  });
  await page.evaluate(() => {
    window.bob.close();
    window.bob = null;
  });
}

const profile = mkdtempSync(join(scratch, "profile-"));
const browser = await chromium.launchPersistentContext(profile, { executablePath: "/usr/bin/chromium", args: CHROMIUM_ARGS });
let failure = null;
const scenarios = {
  "36-rooms": () => scenario(browser, "36-rooms", 36, 6),
  "64-rooms": () => scenario(browser, "64-rooms", 64, 64),
  "token-lifetime": () => tokenLifetime(browser),
  notify: () => notifyOneNode(browser),
  "notify-cluster": () => notifyCluster(browser),
  "offline-receipts": () => offlineReceiptsOneNode(browser),
  "offline-receipts-cluster": () => offlineReceiptsCluster(browser),
  privacy: () => privacySettings(browser),
  "large-room": () => largeRoom(browser),
  "prototype-names": () => prototypeNames(browser),
  "big-frames": () => bigFrames(browser),
};
const only = process.argv.slice(2);
try {
  const unknown = only.filter((name) => !scenarios[name]);
  if (unknown.length) throw new Error(`no scenario ${unknown.join(", ")}; there are ${Object.keys(scenarios).join(", ")}`);
  for (const [name, run] of Object.entries(scenarios)) if (!only.length || only.includes(name)) await run();
} catch (e) {
  failure = e;
} finally {
  await browser.close();
  await killServer();
  await killNodes();
  http.close();
  rmSync(scratch, { recursive: true, force: true });
}
if (failure) {
  console.error(`restart test failed: ${failure.message}`);
  if (serverLog.length) console.error(`server log:\n${serverLog.join("").slice(-4000)}`);
  process.exit(1);
}
