// The React consumer test: the app in this folder, installed from the packed tarballs, type-checked
// and built by `npm run build` (production, into dist/) and again with React's development build
// (`NODE_ENV=development`, into dist-dev/, where StrictMode mounts, unmounts and remounts every
// effect), is loaded in headless Chromium against a real presence-server:
// - the READMEs' React app is this app's src/App.tsx, character for character;
// - production build: the page connects and shows its user;
// - development build, StrictMode on: ana and bob see each other, bob's typing and then bob idle,
//   through the hooks; carol's probe page (src/probe.tsx) shows the room's counts (useRoomCounts)
//   move as ana and bob join, go idle and bob leaves, and each hook committed only when its slice
//   changed, while the snapshot changed more often; every page opened exactly one socket
//   (counted in the page and on the server's /metrics); unmounting the app closes its socket.
//
//   PRESENCE_TEST_WS=ws://127.0.0.1:PORT/ws node presence-wasm/react-consumer/run.mjs
//
// `cargo xtask test` runs it with a server whose users go idle after 1.5 s without input, after
// `npm ci`, installing the tarballs and both builds. Every wait is bounded and says what it saw.
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { createServer } from "node:http";
import { tmpdir } from "node:os";
import { dirname, extname, join, normalize } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const here = dirname(fileURLToPath(import.meta.url));
const ws = process.env.PRESENCE_TEST_WS;
if (!ws) throw new Error("set PRESENCE_TEST_WS");
const api = ws.replace(/^ws/, "http").replace(/\/ws$/, "");
const WAIT_MS = 15_000;

const sleep = (ms) => new Promise((ok) => setTimeout(ok, ms));

/** Polls `check` (async, returning [ok, what it saw]) until ok or WAIT_MS. */
async function until(what, check) {
  const deadline = Date.now() + WAIT_MS;
  let seen;
  while (Date.now() < deadline) {
    const [ok, saw] = await check();
    if (ok) return saw;
    seen = saw;
    await sleep(50);
  }
  throw new Error(`timed out after ${WAIT_MS / 1000} s waiting for ${what}; saw: ${JSON.stringify(seen)}`);
}

function assert(ok, what, saw) {
  if (!ok) throw new Error(`${what}; saw: ${JSON.stringify(saw)}`);
}

// ------------------------------------------------------------------ the README is the app

// Each README's first `tsx` block is src/App.tsx.
const app = readFileSync(join(here, "src", "App.tsx"), "utf8");
for (const readme of ["README.md", "react/README.md"]) {
  const block = readFileSync(join(here, "..", readme), "utf8").match(/```tsx\n([\s\S]*?)```/)?.[1];
  assert(block === app, `the first tsx block of presence-wasm/${readme} is not react-consumer/src/App.tsx`,
    block?.slice(0, 200));
}

// ------------------------------------------------------------------ the builds, served

const types = { ".html": "text/html", ".js": "text/javascript", ".wasm": "application/wasm", ".css": "text/css" };
const servers = [];

/** Serves the build in `dir` on a loopback port; returns its URL. */
async function serve(dir) {
  const root = join(here, dir);
  const http = createServer((req, res) => {
    const path = normalize(decodeURIComponent(new URL(req.url, "http://x").pathname)).replace(/^\/+/, "");
    if (path === "favicon.ico") return res.writeHead(204).end();
    const file = join(root, path || "index.html");
    if (!file.startsWith(root) || !existsSync(file)) return res.writeHead(404).end();
    res.writeHead(200, { "content-type": types[extname(file)] ?? "application/octet-stream" });
    res.end(readFileSync(file));
  });
  servers.push(http);
  await new Promise((ok) => http.listen(0, "127.0.0.1", ok));
  return `http://127.0.0.1:${http.address().port}`;
}
const sites = { prod: await serve("dist"), dev: await serve("dist-dev") };

async function connections() {
  const text = await (await fetch(`${api}/metrics`)).text();
  return Number(text.match(/^presence_connections (\d+)$/m)?.[1]);
}

// ------------------------------------------------------------------ the pages

const profile = mkdtempSync(join(process.env.TMPDIR ?? tmpdir(), "react-consumer-"));
const browser = await chromium.launchPersistentContext(profile, {
  executablePath: "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const errors = [];
const sockets = new Map();

/** A page of `build` ("prod" or "dev") as `user`; `extra` goes into its query. */
async function open(build, user, extra = "") {
  const page = await browser.newPage();
  page.on("pageerror", (e) => errors.push(`${user}: ${e}`));
  page.on("console", (m) => m.type() === "error" && errors.push(`${user}: ${m.text()}`));
  sockets.set(user, 0);
  page.on("websocket", () => sockets.set(user, sockets.get(user) + 1));
  await page.goto(`${sites[build]}/?server=${encodeURIComponent(ws)}&user=${user}${extra}`);
  return page;
}

/** `user`'s state as `page`'s app lists it in #members, or undefined. */
const stateOf = (page, user) =>
  page.evaluate((u) => document.querySelector(`#members [data-user="${u}"]`)?.dataset.state, user);

/** The room's counts as `page`'s probe renders them in #counts, or undefined. */
const countsOf = (page) =>
  page.evaluate(() => {
    const d = document.querySelector("#counts")?.dataset;
    return d && { online: Number(d.online), active: Number(d.active), idle: Number(d.idle) };
  });

/** Waits until `page`'s #counts pass `test`; returns them. */
const countsUntil = (what, page, test) =>
  until(what, async () => {
    const counts = await countsOf(page);
    return [counts !== undefined && test(counts), counts];
  });

let failure = null;
const t0 = Date.now();
try {
  // Production build: React's StrictMode does nothing here, but this is what apps ship.
  const dave = await open("prod", "dave");
  await until("the production build connected, showing dave", async () => {
    const saw = { connection: await dave.textContent("#connection").catch(() => null), dave: await stateOf(dave, "dave") };
    return [saw.connection === "connected" && saw.dave === "active", saw];
  });
  assert(sockets.get("dave") === 1, "the production page opened one socket", sockets.get("dave"));
  await dave.close();
  await until("dave's socket closed on the server", async () => [(await connections()) === 0, await connections()]);

  // Development build, StrictMode on.
  const carol = await open("dev", "carol", "&probe&watch=bob");
  await countsUntil("carol's counts show her alone in the room", carol, (c) => c.online === 1);
  const ana = await open("dev", "ana");
  const bob = await open("dev", "bob");
  await until("ana and bob see each other", async () => {
    const saw = { anaSeesBob: await stateOf(ana, "bob"), bobSeesAna: await stateOf(bob, "ana") };
    return [saw.anaSeesBob !== undefined && saw.bobSeesAna !== undefined, saw];
  });
  await countsUntil("carol's counts show ana and bob joined", carol, (c) => c.online === 3);

  await bob.locator("textarea").click();
  await bob.keyboard.type("hi");
  await until("ana sees bob typing, active", async () => {
    const saw = { typing: await ana.textContent("#typing"), bob: await stateOf(ana, "bob") };
    return [saw.typing === "bob typing…" && saw.bob === "active", saw];
  });
  await countsUntil("carol's counts show bob active", carol, (c) => c.online === 3 && c.active >= 1);
  const own = await bob.textContent("#typing");
  assert(own === "", "bob's own page does not list him typing", own);
  await bob.locator("textarea").evaluate((e) => e.blur());
  await until("ana sees bob stop typing", async () => {
    const typing = await ana.textContent("#typing");
    return [typing === "", typing];
  });
  // No input for the server's 1.5 s idle time.
  await until("ana sees bob idle", async () => {
    const state = await stateOf(ana, "bob");
    return [state === "idle", state];
  });
  await until("carol's probe sees bob idle", async () => {
    const user = await carol.evaluate(() => window.commits.user?.at(-1));
    return [JSON.parse(user ?? "null")?.state === "idle", user];
  });
  // Nobody had input for the idle time since: ana and carol went idle before bob.
  await countsUntil("carol's counts show bob idle too", carol,
    (c) => c.online === 3 && c.active === 0 && c.idle === 3);

  const probe = await carol.evaluate(() => ({ commits: window.commits, snapshots: window.snapshots }));
  for (const [name, commits] of Object.entries(probe.commits)) {
    // StrictMode's simulated remount runs the mount effect again with the same value: proof
    // that StrictMode was on, and not a re-render.
    assert(commits.length >= 2 && commits[0] === commits[1], `${name}: mounted twice by StrictMode`, commits);
    const again = commits.slice(2).findIndex((c, i) => c === commits[i + 1]);
    assert(again === -1, `${name}: re-rendered without a change of its slice (commit ${again + 2})`, commits);
    assert(commits.length - 1 < probe.snapshots,
      `${name}: committed as often as the snapshot changed (${probe.snapshots} times)`, commits);
  }
  const seen = (name, test) => probe.commits[name].some((c) => test(JSON.parse(c)));
  assert(seen("typing", (t) => t.includes("bob")) && seen("typing", (t) => t.length === 0),
    "carol's useTyping saw bob type and stop", probe.commits.typing);
  assert(seen("user", (u) => u?.state === "active") && seen("user", (u) => u?.state === "idle"),
    "carol's useUser saw bob active and idle", probe.commits.user);
  assert(seen("members", (m) => m.some((p) => p.user === "bob")), "carol's usePresence saw bob", probe.commits.members);
  assert(seen("connection", (c) => c.state === "connected" && !c.stale), "carol's useConnection saw connected",
    probe.commits.connection);
  assert(seen("counts", (c) => c?.online === 1) && seen("counts", (c) => c?.online === 3 && c.active >= 1) &&
    seen("counts", (c) => c?.online === 3 && c.idle === 3), "carol's useRoomCounts saw 1 online, then 3 with bob " +
    "active, then 3 idle", probe.commits.counts);

  assert([...sockets.values()].every((n) => n === 1), "one socket per page", Object.fromEntries(sockets));
  const open_ = await connections();
  assert(open_ === 3, "the server holds one connection per page (3)", open_);

  // Unmounting the app closes its client: bob's socket goes, and ana sees him leave.
  await bob.evaluate(() => window.unmount());
  await until("bob's socket closed on the server", async () => [(await connections()) === 2, await connections()]);
  await until("ana sees bob offline", async () => {
    const state = await stateOf(ana, "bob");
    return [state === undefined || state === "offline", state];
  });
  await countsUntil("carol's counts show bob gone", carol, (c) => c.online === 2 && c.idle === 2);
  assert(errors.length === 0, "no page errors", errors);
  console.log(`react consumer test: passed in ${((Date.now() - t0) / 1000).toFixed(1)} s ` +
    `(commits per hook: ${Object.entries(probe.commits).map(([n, c]) => `${n} ${c.length}`).join(", ")}; ` +
    `${probe.snapshots} snapshots)`);
} catch (e) {
  failure = e;
} finally {
  await browser.close();
  for (const http of servers) http.close();
  rmSync(profile, { recursive: true, force: true });
}
if (failure) {
  console.error(`react consumer test failed: ${failure.message}`);
  if (errors.length) console.error(`page errors: ${errors.join("; ")}`);
  process.exit(1);
}
