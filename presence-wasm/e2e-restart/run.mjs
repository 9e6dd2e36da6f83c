// The packed SDK across a server restart (issue 11): a page joins rooms, sets read markers, watches
// two users and sets its status; the real presence-server is killed with SIGKILL and started again
// on the same port, with nothing kept (the in-memory default), so everything the server knows
// afterwards came from the SDK's resend. The server's HTTP API must then show the user in every
// room with the status intact, a second user must see every marker, the page must have heard no
// error, and the new server must have refused no frame (its /metrics count `rejected_frames`).
// Run twice: 36 rooms with 6 markers, then the limits, 64 rooms with 64 markers.
//
//   PRESENCE_SERVER=target/debug/presence-server [PRESENCE_TARBALL=target/….tgz] \
//     node presence-wasm/e2e-restart/run.mjs
//
// Without PRESENCE_TARBALL it loads presence-wasm/pkg/ (`cargo xtask npm` builds both).
// `cargo xtask test` runs it. Every wait is bounded and fails saying what it saw instead.
import { execFileSync, spawn } from "node:child_process";
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
  const path = normalize(decodeURIComponent(new URL(req.url, "http://x").pathname)).replace(/^\/+/, "");
  if (path === "favicon.ico") return res.writeHead(204).end();
  const [base, rel] = path.startsWith("sdk/") ? [sdk, path.slice(4)] : [site, path || "index.html"];
  const file = join(base, rel);
  if (!file.startsWith(base) || !existsSync(file)) return res.writeHead(404).end();
  res.writeHead(200, { "content-type": types[extname(file)] ?? "application/octet-stream" });
  res.end(readFileSync(file));
});
await new Promise((ok) => http.listen(0, "127.0.0.1", ok));
const pageUrl = `http://127.0.0.1:${http.address().port}/`;

// ------------------------------------------------------------------ the server

const port = await new Promise((ok) => {
  const probe = createServer().listen(0, "127.0.0.1", () => {
    const { port } = probe.address();
    probe.close(() => ok(port));
  });
});
const api = `http://127.0.0.1:${port}`;
const wsUrl = `ws://127.0.0.1:${port}/ws`;
let server = null;
const serverLog = [];

async function startServer() {
  server = spawn(binary, ["--bind", `127.0.0.1:${port}`, "--dev-auth", "--heartbeat-interval-ms", "1000",
    "--heartbeat-timeout-ms", "3000", "--batch-window-ms", "10", "--log", "warn"],
  { stdio: ["ignore", "ignore", "pipe"] });
  server.stderr.on("data", (d) => serverLog.push(String(d)));
  await until("the server's /healthz", async () => {
    try {
      return [(await fetch(`${api}/healthz`)).ok, "not ready"];
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
  const page = await browser.newPage();
  const pageErrors = [];
  page.on("pageerror", (e) => pageErrors.push(String(e)));
  // Chromium logs every refused WebSocket connection as a console error: a
  // reconnect attempt that lands while the server is down is expected here,
  // not a page error.
  const expected = /WebSocket connection to .* failed|ERR_CONNECTION_REFUSED/;
  page.on("console", (m) => m.type() === "error" && !expected.test(m.text()) && pageErrors.push(m.text()));
  try {
    await page.goto(pageUrl);
    await page.waitForFunction(() => window.sdkReady === true, null, { timeout: WAIT_MS });
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
    if (pageErrors.length) throw new Error(`${name}: page errors: ${pageErrors.join("; ")}`);
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
try {
  await scenario(browser, "36-rooms", 36, 6);
  await scenario(browser, "64-rooms", 64, 64);
} catch (e) {
  failure = e;
} finally {
  await browser.close();
  await killServer();
  http.close();
  rmSync(scratch, { recursive: true, force: true });
}
if (failure) {
  console.error(`restart test failed: ${failure.message}`);
  if (serverLog.length) console.error(`server log:\n${serverLog.join("").slice(-4000)}`);
  process.exit(1);
}
