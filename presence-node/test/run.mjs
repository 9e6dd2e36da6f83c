// @presence-rs/node against the real presence-server binary (issue 28): no test framework, no
// dependency. First the event-stream parser through a fake fetch (every chunk boundary of a sample
// stream, the size bound, reconnects, fatal answers); then one node (HS256 tokens signed here,
// real WebSocket users, --data-dir, a webhook receiver): every HTTP method and its errors, the
// event feed's resume after an abort and across restarts of the process on the same port (SIGTERM,
// then kill -9), and
// webhook verification of real deliveries and of tampered ones; then two nodes over the Redis
// Cluster: what a user does on node A, seen through the SDK on node B.
//
//   cargo build -p presence-server
//   PRESENCE_SERVER=$PWD/target/debug/presence-server \
//   PRESENCE_TEST_REDIS_CLUSTER=127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103 \
//   [PRESENCE_NODE_TARBALL=target/presence-rs-node-<version>.tgz] node presence-node/test/run.mjs
//
// Without PRESENCE_NODE_TARBALL it imports presence-node/index.js; with it, it installs the
// tarball (`cargo xtask npm` packs it) with npm and imports the package by name, as an app does.
// `cargo xtask test` runs it so. Every wait is bounded and fails saying what it saw;
// every server started here is killed on exit, also on failure.
import assert from "node:assert/strict";
import { execFileSync, spawn } from "node:child_process";
import { createHmac } from "node:crypto";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { createServer } from "node:http";
import { createServer as createTcpServer } from "node:net";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

// Node 20 has a WebSocket client only behind a flag (22 has it by default): run again with it.
if (typeof WebSocket === "undefined") {
  const again = spawn(
    process.execPath,
    ["--experimental-websocket", ...process.execArgv, fileURLToPath(import.meta.url), ...process.argv.slice(2)],
    { stdio: "inherit" },
  );
  // Signals sent to this process alone reach the run, which then stops its servers.
  for (const signal of ["SIGINT", "SIGTERM", "SIGHUP"]) process.on(signal, () => again.kill(signal));
  process.exit(await new Promise((ok) => again.on("exit", (code) => ok(code ?? 1))));
}

const started = Date.now();
const here = dirname(fileURLToPath(import.meta.url));
const binary = process.env.PRESENCE_SERVER;
const seeds = process.env.PRESENCE_TEST_REDIS_CLUSTER;
const tarball = process.env.PRESENCE_NODE_TARBALL;
if (!binary || !existsSync(binary)) throw new Error(`set PRESENCE_SERVER to the presence-server binary (got ${binary})`);
if (!seeds) throw new Error("set PRESENCE_TEST_REDIS_CLUSTER to the Redis Cluster's seeds (HOST:PORT,...)");

const WAIT_MS = 10_000;
const JWT_SECRET = "node-sdk-test-jwt-secret-0123456789abcdef";
const SERVICE_KEY = "node-sdk-test-service-key";
const HOOK_SECRET = "node-sdk-test-webhook-secret";

// ------------------------------------------------------------------ processes, cleaned up always

const tmp = process.env.TMPDIR ?? tmpdir();
mkdirSync(tmp, { recursive: true });
const scratch = mkdtempSync(join(tmp, "presence-node-"));
const servers = new Set();
const sockets = new Set();
const allServers = [];
process.on("exit", (code) => {
  if (code !== 0) {
    for (const s of allServers) console.error(`--- last lines of ${s.name} (port ${s.port}):\n${s.log.join("\n")}`);
  }
  for (const s of servers) s.child.kill("SIGKILL");
  rmSync(scratch, { recursive: true, force: true });
});
for (const signal of ["SIGINT", "SIGTERM", "SIGHUP"]) process.on(signal, () => process.exit(130));
// Every wait below is bounded; this catches a promise nothing settles (Node would exit with 13).
setTimeout(() => {
  console.error("presence-node test: still running after 90 s; giving up");
  process.exit(1);
}, 90_000);

// ------------------------------------------------------------------ the package under test

// From the tarball: installed by npm into an app that imports it by name (through `exports`).
let sdkDir = resolve(here, "..");
let entry = join(sdkDir, "index.js");
if (tarball) {
  const app = join(scratch, "app");
  mkdirSync(app);
  writeFileSync(join(app, "package.json"), '{ "private": true, "type": "module" }\n');
  execFileSync("npm", ["install", "--no-audit", "--no-fund", "--no-package-lock", resolve(tarball)], {
    cwd: app,
    stdio: ["ignore", "ignore", "inherit"],
  });
  sdkDir = join(app, "node_modules", "@presence-rs", "node");
  for (const file of ["index.js", "index.d.ts", "README.md", "LICENSE-MIT", "LICENSE-APACHE", "package.json"]) {
    assert.ok(existsSync(join(sdkDir, file)), `the tarball has no ${file}`);
  }
  entry = join(app, "sdk.mjs");
  writeFileSync(entry, 'export * from "@presence-rs/node";\n');
}
const manifest = JSON.parse(readFileSync(join(sdkDir, "package.json"), "utf8"));
assert.equal(manifest.name, "@presence-rs/node");
assert.deepEqual(manifest.dependencies ?? {}, {}, "the package has no dependencies");
const { PresenceClient, PresenceError, WebhookError, verifyWebhook } = await import(pathToFileURL(entry).href);

// ------------------------------------------------------------------ helpers

const sleep = (ms) => new Promise((ok) => setTimeout(ok, ms));

/** Polls `probe` (async, returning [ok, what it saw]) until ok, or fails after `ms`. */
async function until(what, probe, ms = WAIT_MS) {
  const deadline = Date.now() + ms;
  let saw;
  for (;;) {
    let ok;
    try {
      [ok, saw] = await probe();
    } catch (e) {
      [ok, saw] = [false, `${e?.name}: ${e?.message}`];
    }
    if (ok) return;
    if (Date.now() > deadline) break;
    await sleep(50);
  }
  throw new Error(`timed out after ${ms / 1000} s waiting for ${what}; saw: ${typeof saw === "string" ? saw : JSON.stringify(saw)}`);
}

/** `promise`, or a failure naming `what` after `ms`. */
function within(promise, what, ms = WAIT_MS) {
  let timer;
  const timeout = new Promise((_, ko) => {
    timer = setTimeout(() => ko(new Error(`timed out after ${ms / 1000} s waiting for ${what}`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** Asserts that `promise` rejects with a PresenceError of this code (and status). */
async function rejects(promise, code, status) {
  let error;
  try {
    await promise;
  } catch (e) {
    error = e;
  }
  assert.ok(error instanceof PresenceError, `expected a PresenceError ${code}, got ${error?.stack ?? "no error"}`);
  assert.equal(error.code, code, `code of: ${error.message}`);
  if (status !== undefined) assert.equal(error.status, status, `status of: ${error.message}`);
  return error;
}

function webhookRejects(options, code) {
  assert.throws(() => verifyWebhook(options), (e) => e instanceof WebhookError && e.code === code, `webhook ${code}`);
}

let step = 0;
async function section(name, fn) {
  const t = Date.now();
  step += 1;
  await fn();
  console.log(`ok ${step} - ${name} (${Date.now() - t} ms)`);
}

/** An HS256 JWT for `sub`, signed here, allowed to join and watch anything. */
function token(sub, { iat = Math.floor(Date.now() / 1000) } = {}) {
  const part = (o) => Buffer.from(JSON.stringify(o)).toString("base64url");
  const body = `${part({ alg: "HS256", typ: "JWT" })}.${part({ sub, iat, exp: iat + 3600, rooms: ["*"], watch: ["*"] })}`;
  return `${body}.${createHmac("sha256", JWT_SECRET).update(body).digest("base64url")}`;
}

function freePort() {
  return new Promise((ok, ko) => {
    const s = createTcpServer();
    s.on("error", ko);
    s.listen(0, "127.0.0.1", () => {
      const { port } = s.address();
      s.close(() => ok(port));
    });
  });
}

/** The server's env without any PRESENCE_* or RUST_LOG of ours: only the flags decide. */
const serverEnv = Object.fromEntries(
  Object.entries(process.env).filter(([k]) => !k.startsWith("PRESENCE_") && k !== "RUST_LOG"),
);

/** Starts the binary on `port` (a free one by default) and waits for `/healthz`. */
async function startServer(name, args, port) {
  port ??= await freePort();
  const child = spawn(binary, ["--bind", `127.0.0.1:${port}`, ...args], { env: serverEnv, stdio: ["ignore", "pipe", "pipe"] });
  const srv = { name, port, url: `http://127.0.0.1:${port}`, child, log: [], exited: null };
  const keep = (data) => {
    for (const line of data.toString().split("\n")) {
      if (line.trim()) srv.log.push(line);
      if (srv.log.length > 40) srv.log.shift();
    }
  };
  child.stdout.on("data", keep);
  child.stderr.on("data", keep);
  child.on("exit", (code, signal) => {
    srv.exited = { code, signal };
    servers.delete(srv);
  });
  servers.add(srv);
  allServers.push(srv);
  await until(`${name} to answer /healthz on port ${port}`, async () => {
    if (srv.exited) throw new Error(`${name} exited (${JSON.stringify(srv.exited)})`);
    const r = await fetch(`${srv.url}/healthz`);
    return [r.status === 200, r.status];
  }, 20_000);
  return srv;
}

async function stopServer(srv, signal) {
  srv.child.kill(signal);
  await until(`${srv.name} to exit after ${signal}`, () => [srv.exited !== null, "still running"]);
}

/** A WebSocket user: resolves once welcomed, or once closed before that (see `.closed`). */
async function socket(srv, jwt, hello = {}) {
  const ws = new WebSocket(`${srv.url.replace(/^http/, "ws")}/ws?token=${encodeURIComponent(jwt)}`);
  const u = { ws, frames: [], closed: null };
  sockets.add(u);
  u.closedP = new Promise((ok) =>
    ws.addEventListener("close", (e) => {
      u.closed = e.code;
      sockets.delete(u);
      ok(e.code);
    }),
  );
  ws.addEventListener("message", (m) => u.frames.push(JSON.parse(m.data)));
  ws.addEventListener("open", () => ws.send(JSON.stringify({ type: "hello", v: 1, ...hello })));
  u.send = (frame) => ws.send(JSON.stringify(frame));
  await until(`a welcome or a close on ${srv.name}`, () => [
    u.closed !== null || u.frames.some((f) => f.type === "welcome"),
    u.frames,
  ]);
  return u;
}

async function user(srv, name, options, hello) {
  const u = await socket(srv, token(name, options), hello);
  assert.equal(u.closed, null, `${name} was closed with ${u.closed} instead of welcomed: ${JSON.stringify(u.frames)}`);
  return u;
}

const who = (e) => e.data?.user ?? e.data?.presence?.user;
const show = (events) => events.map((e) => `${e.kind}:${who(e) ?? ""}`).join(" ");

/** Reads `client.events(options)` in the background, keeping what comes. */
function follow(client, options = {}) {
  const abort = new AbortController();
  const f = { events: [], opens: 0, retries: [], gaps: [], error: undefined, done: false };
  let opened;
  const open = new Promise((ok) => (opened = ok));
  f.abort = () => abort.abort();
  f.finished = (async () => {
    try {
      const feed = client.events({
        ...options,
        signal: abort.signal,
        onOpen: () => {
          f.opens += 1;
          opened();
        },
        onRetry: (e, ms) => f.retries.push(`${e.code} after ${ms} ms`),
        onGap: (g) => f.gaps.push(g),
      });
      for await (const e of feed) f.events.push(e);
    } catch (e) {
      f.error = e;
      opened();
    } finally {
      f.done = true;
    }
  })();
  f.opened = () => within(open, "the event feed to open");
  f.sees = (what, pred) =>
    until(`the event feed to show ${what}`, () => {
      if (f.error) throw f.error;
      return [f.events.some(pred), show(f.events)];
    });
  return f;
}

const is = (kind, name) => (e) => e.kind === kind && who(e) === name;

// ------------------------------------------------------------------ the event-stream parser

/** A Response with an event stream made of `chunks` (Uint8Arrays); `open` keeps it going. */
function sse(chunks, { open = false, type = "text/event-stream" } = {}) {
  const body = new ReadableStream({
    start(c) {
      for (const chunk of chunks) c.enqueue(chunk);
      if (!open) c.close();
    },
  });
  return new Response(body, { headers: { "content-type": type } });
}

const json = (status, body) =>
  new Response(JSON.stringify(body), { status, headers: { "content-type": "application/json" } });

const SAMPLE =
  ": a comment, then the reconnection time\r\n" +
  "retry: 5\r\n" +
  "\r\n" +
  'id: 1\r\nevent: user_connected\r\ndata: {"type":"user_connected",\r\ndata: "presence":{"user":"zoë 🐱"}}\r\n\r\n' +
  'id: 2\nevent: user_idle\ndata:{"type":"user_idle","user":"日本","reason":"hidden"}\n\n' +
  'id: 3\revent: gap\rdata: {"after":1}\r\r' +
  ": keep-alive\n\n" +
  "unknown: field\ndata: [\ndata\ndata: 1]\n\n" +
  'id: 4\r\nevent: status\r\ndata: {"type":"status","user":"ü","status":"busy","text":"naïve ☕"}\r\n\r\n' +
  // Without its blank line this one never completes: not dispatched, and its id is not resumed.
  "id: 99\ndata: {}\n";
const EXPECTED = [
  { id: "1", kind: "user_connected", data: { type: "user_connected", presence: { user: "zoë 🐱" } } },
  { id: "2", kind: "user_idle", data: { type: "user_idle", user: "日本", reason: "hidden" } },
  { id: "3", kind: "gap", data: { after: 1 } },
  { id: "3", kind: "message", data: [1] },
  { id: "4", kind: "status", data: { type: "status", user: "ü", status: "busy", text: "naïve ☕" } },
];

/** Reads the SAMPLE cut into `chunks`; the reconnect must send Last-Event-ID 4 and is refused. */
async function readSample(chunks) {
  const calls = [];
  const client = new PresenceClient({
    url: "http://sdk.test/base/",
    serviceKey: "k",
    fetch: async (url, init) => {
      calls.push({ url: String(url), headers: init.headers });
      return calls.length === 1 ? sse(chunks) : json(401, { error: { code: "unauthorized", message: "no" } });
    },
  });
  const got = [];
  const gaps = [];
  const retries = [];
  const error = await rejects(
    (async () => {
      const feed = client.events({ onGap: (g) => gaps.push(g), onRetry: (e, ms) => retries.push([e.code, ms]) });
      for await (const e of feed) got.push(e);
    })(),
    "unauthorized",
    401,
  );
  assert.deepEqual(got, EXPECTED);
  assert.deepEqual(gaps, [EXPECTED[2]]);
  assert.equal(calls.length, 2);
  assert.equal(calls[0].url, "http://sdk.test/base/v1/events");
  assert.equal(calls[0].headers.authorization, "Bearer k");
  assert.equal(calls[0].headers["last-event-id"], undefined);
  assert.equal(calls[1].headers["last-event-id"], "4");
  // `retry: 5` is the base of the backoff: 2.5-5 ms, not 125-250.
  assert.equal(retries.length, 1);
  assert.equal(retries[0][0], "stream_ended");
  assert.ok(retries[0][1] <= 5, `retry: 5 honoured, waited ${retries[0][1]} ms`);
  return error;
}

await section("event-stream parser: the sample cut at every byte, and one byte per chunk", async () => {
  const bytes = new TextEncoder().encode(SAMPLE);
  for (let at = 0; at <= bytes.length; at++) await readSample([bytes.slice(0, at), bytes.slice(at)]);
  await readSample([...bytes].map((b) => Uint8Array.of(b)));
  // Three cuts at once, around every multi-byte character.
  for (let at = 1; at + 2 < bytes.length; at += 7) {
    await readSample([bytes.slice(0, at), bytes.slice(at, at + 1), bytes.slice(at + 1, at + 2), bytes.slice(at + 2)]);
  }
});

await section("event-stream parser: a line or an event past the bound fails with event_too_large", async () => {
  const big = new TextEncoder().encode("x".repeat(64 * 1024));
  const feed = (chunks, options) =>
    new PresenceClient({ url: "http://sdk.test", fetch: async () => sse(chunks) }).events(options);
  const drain = async (it) => {
    for await (const _ of it);
  };
  // One line of 1.1 MiB, in 64 KiB chunks.
  const line = [new TextEncoder().encode("data: "), ...Array(18).fill(big)];
  const e1 = await rejects(drain(feed(line)), "event_too_large");
  assert.match(e1.message, /1048576/);
  // Many short data lines making one event of 1.1 MiB.
  const lines = Array(18).fill(new TextEncoder().encode(`data: ${"y".repeat(64 * 1024 - 10)}\n`));
  await rejects(drain(feed(lines)), "event_too_large");
  // A smaller bound, as asked.
  await rejects(drain(feed([new TextEncoder().encode("data: 12345678901\n\n")], { maxEventBytes: 10 })), "event_too_large");
});

await section("event feed: retries 503 and network errors with Last-Event-ID, stops on 4xx, abort ends it", async () => {
  // 503, then a network error, then a stream: resumed from the given id every time.
  const calls = [];
  let n = 0;
  const flaky = new PresenceClient({
    url: "http://sdk.test",
    fetch: async (_url, init) => {
      calls.push(init.headers["last-event-id"]);
      n += 1;
      if (n === 1) return json(503, { error: { code: "stream_unavailable", message: "later" } });
      if (n === 2) throw new TypeError("fetch failed");
      return sse([new TextEncoder().encode('id: 8\nevent: user_active\ndata: {"type":"user_active","user":"a"}\n\n')], {
        open: true,
      });
    },
  });
  const retries = [];
  for await (const e of flaky.events({ lastEventId: "7", onRetry: (e) => retries.push(e.code) })) {
    assert.deepEqual(e, { id: "8", kind: "user_active", data: { type: "user_active", user: "a" } });
    break; // ends the generator, and with it the connection
  }
  assert.deepEqual(calls, ["7", "7", "7"]);
  assert.deepEqual(retries, ["stream_unavailable", "network"]);

  // A refused position is not retried.
  let tries = 0;
  const refusing = new PresenceClient({
    url: "http://sdk.test",
    fetch: async () => {
      tries += 1;
      return json(400, { error: { code: "bad_last_event_id", message: "not a position" } });
    },
  });
  await rejects((async () => {
    for await (const _ of refusing.events({ lastEventId: "x" }));
  })(), "bad_last_event_id", 400);
  assert.equal(tries, 1);

  // Not an event stream: fatal.
  const html = new PresenceClient({ url: "http://sdk.test", fetch: async () => sse([], { type: "text/html" }) });
  await rejects((async () => {
    for await (const _ of html.events());
  })(), "bad_response", 200);

  // Aborting while the stream is silent ends the iteration without an error, and closes it.
  let signal;
  const silent = new PresenceClient({
    url: "http://sdk.test",
    fetch: async (_url, init) => {
      signal = init.signal;
      return sse([], { open: true });
    },
  });
  const abort = new AbortController();
  setTimeout(() => abort.abort(), 50);
  const got = [];
  for await (const e of silent.events({ signal: abort.signal })) got.push(e);
  assert.deepEqual(got, []);
  assert.equal(signal.aborted, true, "the request was aborted");

  // Silence past the stall timeout: reconnect.
  let opens = 0;
  const stalls = [];
  const abort2 = new AbortController();
  const stalled = new PresenceClient({ url: "http://sdk.test", fetch: async () => sse([], { open: true }) });
  const it = stalled.events({
    signal: abort2.signal,
    stallTimeoutMs: 50,
    onOpen: () => (opens += 1),
    onRetry: (e) => {
      stalls.push(e.code);
      if (stalls.length === 2) abort2.abort();
    },
  });
  await within((async () => {
    for await (const _ of it);
  })(), "stalled streams to be retried", 5000);
  assert.deepEqual(stalls, ["timeout", "timeout"]);
  assert.equal(opens, 2);

  // A consumer slower than the stall timeout is not a silent server.
  let connects = 0;
  const two = new TextEncoder().encode('id: 1\ndata: {}\n\nid: 2\ndata: {}\n\n');
  const busy = new PresenceClient({
    url: "http://sdk.test",
    fetch: async () => {
      connects += 1;
      return sse([two], { open: true });
    },
  });
  const slow = [];
  for await (const e of busy.events({ stallTimeoutMs: 50 })) {
    slow.push(e.id);
    await sleep(120);
    if (slow.length === 2) break;
  }
  assert.deepEqual(slow, ["1", "2"]);
  assert.equal(connects, 1);
});

await section("HTTP client: path segments are URL-encoded, errors carry status and code", async () => {
  const urls = [];
  const fake = new PresenceClient({
    url: "http://sdk.test/presence/",
    serviceKey: "k",
    fetch: async (url, init) => {
      urls.push(`${init.method} ${url}`);
      return String(url).includes("proxy")
        ? new Response("<html>Bad Gateway</html>", { status: 502 })
        : json(200, { user: "x", state: "offline", status: "available" });
    },
  });
  await fake.presence("a/b?c#d %é");
  await fake.members("r/1", { after: "m&1", limit: 2 });
  assert.deepEqual(urls, [
    "GET http://sdk.test/presence/v1/users/a%2Fb%3Fc%23d%20%25%C3%A9/presence",
    "GET http://sdk.test/presence/v1/rooms/r%2F1/members?after=m%261&limit=2",
  ]);
  await rejects(fake.presence("proxy"), "http_502", 502);
  assert.throws(() => new PresenceClient({ url: "ws://x" }), TypeError);
  await assert.rejects(fake.presence(""), TypeError);
});

// ------------------------------------------------------------------ one node

/** A webhook endpoint keeping every request's headers and raw body. */
async function webhookReceiver() {
  const deliveries = [];
  const server = createServer((req, res) => {
    const chunks = [];
    req.on("data", (c) => chunks.push(c));
    req.on("end", () => {
      deliveries.push({ headers: req.headers, body: Buffer.concat(chunks) });
      res.writeHead(204).end();
    });
  });
  await new Promise((ok) => server.listen(0, "127.0.0.1", ok));
  server.unref();
  return { url: `http://127.0.0.1:${server.address().port}/hook`, deliveries };
}

const hooks = await webhookReceiver();
const singleArgs = [
  "--jwt-secret", JWT_SECRET,
  "--service-key", SERVICE_KEY,
  "--data-dir", join(scratch, "data"),
  "--offline-grace-ms", "300",
  "--leave-grace-ms", "100",
  "--batch-window-ms", "10",
  // Long, so a typing stop can only come from messageSent.
  "--typing-ttl-ms", "30000",
  "--webhook-url", hooks.url,
  "--webhook-secret", HOOK_SECRET,
  "--webhook-window-ms", "100",
];
let single;
let api;
let witness;
let reader1;
let ana;

await section("one node: health, presence, bulk, odd ids", async () => {
  single = await startServer("one node", singleArgs);
  api = new PresenceClient({ url: single.url, serviceKey: SERVICE_KEY, timeoutMs: 5000 });
  assert.deepEqual(await api.healthz(), { status: "ok" });
  assert.deepEqual(await api.readyz(), { status: "ready" });
  // The witness reads the feed all along; reader1 is stopped and resumed later.
  witness = follow(api);
  reader1 = follow(api);
  await witness.opened();
  await reader1.opened();

  ana = await user(single, "ana");
  ana.send({ type: "join", room: "lobby" });
  await until("ana active over HTTP", async () => {
    const p = await api.presence("ana");
    return [p.state === "active", p];
  });
  const p = await api.presence("ana");
  assert.equal(p.user, "ana");
  assert.equal(p.status, "available");
  assert.equal(typeof p.last_active, "number");
  const bulk = await api.bulk(["ana", "nobody"]);
  assert.deepEqual(bulk.forbidden, []);
  assert.deepEqual(bulk.users.map((v) => [v.user, v.state]), [["ana", "active"], ["nobody", "offline"]]);
  await witness.sees("user_connected ana", is("user_connected", "ana"));
  const connected = witness.events.find(is("user_connected", "ana"));
  assert.equal(connected.data.type, "user_connected");
  assert.equal(connected.data.presence.state, "active");
  assert.equal(connected.data.global, true);
  assert.equal(typeof connected.data.at, "number");
  assert.ok(Array.isArray(connected.data.rooms));
  assert.equal(typeof connected.data.id, "number", "one node's event ids are numbers");
  assert.equal(connected.id, String(connected.data.id), "the SSE id is the event's");

  // Ids that need encoding, in a path segment and in a query.
  const odd = "zoë/x?y#z%&";
  const room = "rüm/1?#";
  const z = await user(single, odd);
  z.send({ type: "join", room });
  await until("the odd user in the odd room", async () => {
    const page = await api.members(room);
    return [page.members.length === 1 && page.members[0].user === odd, page];
  });
  assert.equal((await api.presence(odd)).user, odd);
  assert.deepEqual((await api.count(room)).counts, { online: 1, active: 1, idle: 0 });
  const after = await api.members(room, { after: odd });
  assert.deepEqual(after.members, []);
});

await section("one node: members paged, allMembers over 3 pages, count, idle", async () => {
  const names = ["m1", "m2", "m3", "m4", "m5", "m6", "m7"];
  const users = [];
  for (const name of names) {
    const u = await user(single, name);
    u.send({ type: "join", room: "big" });
    users.push(u);
  }
  await until("7 members in big", async () => {
    const c = await api.count("big");
    return [c.counts.online === 7, c];
  });
  const first = await api.members("big", { limit: 3 });
  assert.deepEqual(first.members.map((m) => m.user), ["m1", "m2", "m3"]);
  assert.equal(first.next, "m3");
  assert.deepEqual(first.receipts, []);
  const second = await api.members("big", { after: first.next, limit: 3 });
  assert.deepEqual(second.members.map((m) => m.user), ["m4", "m5", "m6"]);
  const last = await api.members("big", { after: "m6", limit: 3 });
  assert.deepEqual(last.members.map((m) => m.user), ["m7"]);
  assert.equal(last.next, undefined);

  let requests = 0;
  const counting = new PresenceClient({
    url: single.url,
    serviceKey: SERVICE_KEY,
    fetch: (url, init) => {
      if (String(url).includes("/members")) requests += 1;
      return fetch(url, init);
    },
  });
  const all = [];
  for await (const m of counting.allMembers("big", { limit: 3 })) all.push(m.user);
  assert.deepEqual(all, names);
  assert.equal(requests, 3, "three pages of 3");
  await rejects(api.members("big", { limit: 0 }), "invalid_field", 400);

  assert.deepEqual(await api.count("big"), { room: "big", counts: { online: 7, active: 7, idle: 0 } });
  users[0].send({ type: "activity", state: "idle", reason: "no_input" });
  await until("one idle in big", async () => {
    const c = await api.count("big");
    return [c.counts.idle === 1 && c.counts.active === 6, c];
  });
  await witness.sees("user_idle m1", is("user_idle", "m1"));
  assert.equal(witness.events.find(is("user_idle", "m1")).data.reason, "no_input");
  assert.equal((await api.presence("m1")).reason, "no_input");
});

await section("one node: notify and devices decide from the user's devices", async () => {
  const desk = await user(single, "nia", undefined, { device: "desktop" });
  const phone = await user(single, "nia", undefined, { device: "mobile" });
  desk.send({ type: "join", room: "design" });
  desk.send({ type: "view", room: "design" });
  phone.send({ type: "activity", state: "idle", reason: "hidden" });
  await until("nia's two devices", async () => {
    const d = await api.devices("nia");
    const shape = d.devices.map((x) => `${x.kind}:${x.state}:${x.view ?? "-"}`).join(" ");
    return [shape === "desktop:active:design mobile:idle:-" && d.complete, shape];
  });
  let n = await api.notify("nia", "design");
  assert.equal(`${n.decision}/${n.reason}`, "live/viewing");
  n = await api.notify("nia", "random", { mention: true });
  assert.equal(`${n.decision}/${n.reason}`, "live/active");
  desk.send({ type: "activity", state: "idle", reason: "locked" });
  await until("a push once both are away", async () => {
    const a = await api.notify("nia", "design");
    return [`${a.decision}/${a.reason}` === "push/background", a];
  });
  n = await api.notify("nobody-at-all", "design");
  assert.equal(`${n.decision}/${n.reason}`, "push/offline", "an unknown user still gets a decision");
  await assert.rejects(api.notify("nia", "bad room"), (e) => e instanceof PresenceError && e.code === "invalid_field");
  desk.ws.close();
  phone.ws.close();
});

await section("one node: messageSent stops typing at once", async () => {
  ana.send({ type: "typing", room: "lobby", active: true });
  await witness.sees("typing_started ana", is("typing_started", "ana"));
  const t = Date.now();
  assert.equal(await api.messageSent("lobby", "ana"), undefined);
  await witness.sees("typing_stopped ana", is("typing_stopped", "ana"));
  assert.ok(Date.now() - t < 5000, "stopped by messageSent, not by the 30 s typing TTL");
  await rejects(api.messageSent("lobby", " "), "invalid_field", 400);
});

await section("one node: disconnect closes with 4101; revoke refuses the old token only", async () => {
  const old = token("bob", { iat: Math.floor(Date.now() / 1000) - 60 });
  let bob = await socket(single, old);
  assert.equal(bob.closed, null);
  assert.deepEqual(await api.disconnect("bob"), { user: "bob", closed: 1, revoked: false });
  assert.equal(await within(bob.closedP, "bob's socket to close"), 4101);

  bob = await socket(single, old);
  assert.equal(bob.closed, null, "not revoked: the same token is welcome again");
  const r = await api.disconnect("bob", { code: 1008, revoke: true });
  assert.deepEqual(r, { user: "bob", closed: 1, revoked: true });
  assert.equal(await within(bob.closedP, "bob's socket to close"), 1008);
  const refused = await socket(single, old);
  assert.equal(refused.closed, 4101, "the revoked token is refused at the upgrade");
  await rejects(new PresenceClient({ url: single.url, serviceKey: old }).presence("bob"), "unauthorized", 401);
  const fresh = await user(single, "bob");
  assert.equal(fresh.closed, null, "a token issued after the revoke works");

  // A user token reads what the user may see, but may not act.
  const asAna = new PresenceClient({ url: single.url, serviceKey: token("ana") });
  assert.equal((await asAna.presence("ana")).user, "ana");
  await rejects(asAna.disconnect("bob"), "forbidden", 403);
  await rejects(api.disconnect("bob", { code: 1234 }), "invalid_field", 400);
  await rejects(new PresenceClient({ url: single.url, serviceKey: "wrong-key-wrong-key" }).presence("ana"), "unauthorized", 401);
  await rejects(new PresenceClient({ url: single.url }).count("big"), "unauthorized", 401);
});

await section("one node: privacy set and read back, told to the user, hiding last_seen; bad values refused", async () => {
  const open = { user: "gus", last_seen: "everyone", receipts: "on" };
  assert.deepEqual(await api.privacy("gus"), open, "never set: open");
  // Set before gus ever connects; one setting at a time, the other kept.
  assert.deepEqual(await api.setPrivacy("gus", { lastSeen: "nobody" }), { ...open, last_seen: "nobody" });
  const hidden = { user: "gus", last_seen: "nobody", receipts: "off" };
  assert.deepEqual(await api.setPrivacy("gus", { receipts: "off" }), hidden);
  assert.deepEqual(await api.privacy("gus"), hidden);

  const gus = await user(single, "gus");
  await until("gus's socket to be told them after its welcome", () => [
    gus.frames.some((f) => f.type === "self_privacy" && f.last_seen === "nobody" && f.receipts === "off"),
    gus.frames,
  ]);
  assert.deepEqual(await api.setPrivacy("gus", { receipts: "on" }), { ...hidden, receipts: "on" });
  await until("gus's socket to be told", () => [
    gus.frames.some((f) => f.type === "self_privacy" && f.last_seen === "nobody" && f.receipts === "on"),
    gus.frames,
  ]);

  // Offline, his last seen is for the service key only.
  gus.send({ type: "leaving" });
  gus.ws.close();
  await until("gus offline", async () => {
    const p = await api.presence("gus");
    return [p.state === "offline" && typeof p.last_seen === "number", p];
  });
  const asAna = new PresenceClient({ url: single.url, serviceKey: token("ana") });
  const seen = await asAna.presence("gus");
  assert.equal(seen.state, "offline");
  assert.equal(seen.last_seen, undefined, `hidden from ana: ${JSON.stringify(seen)}`);

  // His own token reads his settings, nobody else's, and cannot set them.
  const asGus = new PresenceClient({ url: single.url, serviceKey: token("gus") });
  assert.equal((await asGus.privacy("gus")).last_seen, "nobody");
  await rejects(asGus.privacy("ana"), "forbidden", 403);
  await rejects(asGus.setPrivacy("gus", { lastSeen: "everyone" }), "forbidden", 403);

  // Values outside the enums: the server's invalid_field, nothing changed.
  const bad = await rejects(api.setPrivacy("gus", { lastSeen: "friends" }), "invalid_field", 400);
  assert.match(bad.message, /last_seen/);
  await rejects(api.setPrivacy("gus", { receipts: false }), "invalid_field", 400);
  assert.deepEqual(await api.privacy("gus"), { ...hidden, receipts: "on" });
});

await section("HTTP client: network error, timeout, abort", async () => {
  const closed = await freePort();
  await rejects(new PresenceClient({ url: `http://127.0.0.1:${closed}`, serviceKey: SERVICE_KEY }).presence("ana"), "network");
  const silent = createServer(() => {}); // never answers
  await new Promise((ok) => silent.listen(0, "127.0.0.1", ok));
  try {
    const slow = new PresenceClient({ url: `http://127.0.0.1:${silent.address().port}`, timeoutMs: 200 });
    const t = Date.now();
    await rejects(slow.healthz(), "timeout");
    assert.ok(Date.now() - t < 2000);
    const abort = new AbortController();
    setTimeout(() => abort.abort(), 50);
    await rejects(new PresenceClient({ url: `http://127.0.0.1:${silent.address().port}` }).healthz({ signal: abort.signal }), "aborted");
    // The feed's connect is bounded by the same timeout, then retried.
    const abort2 = new AbortController();
    const retries = [];
    const feed = slow.events({
      signal: abort2.signal,
      onRetry: (e) => {
        retries.push(e.code);
        abort2.abort();
      },
    });
    await within((async () => {
      for await (const _ of feed);
    })(), "the feed to give up on a silent server");
    assert.deepEqual(retries, ["timeout"]);
  } finally {
    silent.closeAllConnections();
    silent.close();
  }
});

await section("one node: the feed resumes after an abort with no repeat and no loss", async () => {
  await reader1.sees("typing_stopped ana", is("typing_stopped", "ana"));
  reader1.abort();
  await within(reader1.finished, "the aborted feed to end");
  assert.equal(reader1.error, undefined, "abort ends the iteration without an error");
  assert.deepEqual(reader1.retries, []);
  const cut = reader1.events.at(-1).id;

  // What happens while nobody reads reader1's feed.
  const carol = await user(single, "carol");
  carol.send({ type: "join", room: "lobby" });
  carol.send({ type: "activity", state: "idle", reason: "hidden" });
  await witness.sees("user_idle carol", is("user_idle", "carol"));

  const reader2 = follow(api, { lastEventId: cut });
  await reader2.sees("user_idle carol", is("user_idle", "carol"));
  const ids = (events) => events.map((e) => e.id);
  await until("reader 1 + reader 2 to be exactly the witness", () => {
    const joined = [...ids(reader1.events), ...ids(reader2.events)];
    return [JSON.stringify(joined) === JSON.stringify(ids(witness.events)), { joined, witness: ids(witness.events) }];
  });
  assert.ok(!ids(reader2.events).includes(cut), "resumed after the cut, not at it");
  reader2.abort();
  await reader2.finished;

  // A position that is not one: refused for good, not retried.
  const bad = follow(api, { lastEventId: "not-a-position" });
  await within(bad.finished, "a bad Last-Event-ID to be refused");
  assert.ok(bad.error instanceof PresenceError, String(bad.error));
  assert.equal(bad.error.status, 400);
  assert.equal(bad.error.code, "bad_last_event_id");
  assert.deepEqual(bad.retries, []);
  const wrong = follow(new PresenceClient({ url: single.url, serviceKey: "wrong-key-wrong-key" }));
  await within(wrong.finished, "a wrong key to be refused");
  assert.equal(wrong.error?.code, "unauthorized");
  assert.deepEqual(wrong.retries, []);
});

await section("one node: webhooks verify; tampered, wrong secret, stale are refused", async () => {
  const verified = () =>
    hooks.deliveries.flatMap((d) => verifyWebhook({ body: d.body, headers: d.headers, secret: HOOK_SECRET }).events);
  await until("webhooks for ana and carol", () => {
    const events = verified();
    const seen = (type, name) => events.some((e) => e.type === type && (e.user ?? e.presence?.user) === name);
    return [seen("user_connected", "ana") && seen("user_idle", "carol"), events.map((e) => e.type)];
  });
  const events = verified();
  assert.ok(events.every((e) => typeof e.id === "string" && typeof e.at === "number"));
  assert.equal(new Set(events.map((e) => e.id)).size, events.length, "ids are unique");
  assert.ok(!events.some((e) => e.type === "typing_started"), "typing is not in the default kinds");

  const d = hooks.deliveries[0];
  const ts = Number(d.headers["presence-timestamp"]);
  const base = { body: d.body, headers: d.headers, secret: HOOK_SECRET };
  const ok = verifyWebhook(base);
  assert.equal(ok.timestamp, ts);
  assert.ok(ok.events.length > 0);
  // The same request as a string body, with fetch Headers, with the secret being rotated.
  verifyWebhook({ ...base, body: d.body.toString("utf8"), headers: new Headers(d.headers) });
  verifyWebhook({ ...base, secret: ["the-next-secret", HOOK_SECRET] });
  verifyWebhook({ ...base, secret: Buffer.from(HOOK_SECRET) });

  const tampered = Buffer.from(d.body);
  tampered[tampered.length - 3] ^= 1;
  webhookRejects({ ...base, body: tampered }, "bad_signature");
  webhookRejects({ ...base, secret: "not-the-secret" }, "bad_signature");
  webhookRejects({ ...base, now: (ts + 301) * 1000 }, "stale_timestamp");
  webhookRejects({ ...base, now: (ts - 301) * 1000 }, "stale_timestamp");
  webhookRejects({ ...base, toleranceMs: 1000, now: ts * 1000 + 2500 }, "stale_timestamp");
  verifyWebhook({ ...base, now: (ts + 299) * 1000 });
  // A replay of the body with an old timestamp, correctly signed: stale, not accepted.
  const oldTs = String(Math.floor(Date.now() / 1000) - 600);
  const resigned = createHmac("sha256", HOOK_SECRET).update(`${oldTs}.`).update(d.body).digest("hex");
  const replay = { "presence-timestamp": oldTs, "presence-signature": resigned };
  webhookRejects({ ...base, headers: replay }, "stale_timestamp");
  // A timestamp changed without the signature: bad signature.
  webhookRejects({ ...base, headers: { ...d.headers, "presence-timestamp": String(ts + 1) } }, "bad_signature");
  webhookRejects({ ...base, headers: { "presence-timestamp": String(ts) } }, "missing_signature");
  webhookRejects({ ...base, headers: { "presence-signature": d.headers["presence-signature"] } }, "missing_timestamp");
  webhookRejects({ ...base, headers: { ...d.headers, "presence-timestamp": "soon" } }, "bad_timestamp");
  webhookRejects({ ...base, headers: { ...d.headers, "presence-signature": "zz" } }, "bad_signature");
  const now = String(Math.floor(Date.now() / 1000));
  const notJson = createHmac("sha256", HOOK_SECRET).update(`${now}.not json`).digest("hex");
  webhookRejects({ ...base, body: "not json", headers: { "presence-timestamp": now, "presence-signature": notJson } }, "bad_body");
  assert.throws(() => verifyWebhook({ ...base, body: JSON.parse(d.body) }), TypeError, "a parsed body is refused");
  assert.throws(() => verifyWebhook({ ...base, secret: "" }), TypeError);
});

await section("one node: the feed survives a restart of the process on the same port", async () => {
  const before = witness.events.at(-1).id;
  const opens = witness.opens;
  await stopServer(single, "SIGTERM");
  single = await startServer("one node, restarted", singleArgs, single.port);
  const dave = await user(single, "dave");
  await witness.sees("user_connected dave after the restart", is("user_connected", "dave"));
  // The connections the shutdown saved come back in their grace and, with no client back, go.
  await witness.sees("user_disconnected ana after the restart", is("user_disconnected", "ana"));
  assert.ok(witness.opens > opens, "the feed reconnected by itself");
  assert.equal(witness.error, undefined);
  const ids = witness.events.map((e) => BigInt(e.id));
  assert.ok(ids.every((id, i) => i === 0 || id > ids[i - 1]), "ids grow, across the restart too, none twice");
  assert.deepEqual(await api.privacy("gus"), { user: "gus", last_seen: "nobody", receipts: "on" }, "kept in --data-dir");

  // Resuming from before the restart gives exactly what the witness got since.
  const since = () => witness.events.slice(witness.events.findIndex((e) => e.id === before) + 1).map((e) => e.id);
  const reader3 = follow(api, { lastEventId: before });
  await until("a reader resumed from before the restart to match the witness", () => {
    const got = reader3.events.map((e) => e.id);
    return [got.length > 0 && JSON.stringify(got) === JSON.stringify(since()), { got, want: since() }];
  });
  reader3.abort();
  await reader3.finished;
  dave.ws.close();
});

await section("one node: the feed survives a kill -9 and a restart too", async () => {
  // The data directory is written every batch window (10 ms here): let it take the last events.
  await sleep(100);
  const before = witness.events.at(-1).id;
  const opens = witness.opens;
  await stopServer(single, "SIGKILL");
  single = await startServer("one node, restarted after kill -9", singleArgs, single.port);
  const fay = await user(single, "fay");
  await witness.sees("user_connected fay after the kill", is("user_connected", "fay"));
  assert.ok(witness.opens > opens, "the feed reconnected by itself");
  const ids = witness.events.map((e) => BigInt(e.id));
  assert.ok(ids.every((id, i) => i === 0 || id > ids[i - 1]), "ids grow, across the kill too, none twice");
  const since = () => witness.events.slice(witness.events.findIndex((e) => e.id === before) + 1).map((e) => e.id);
  const reader4 = follow(api, { lastEventId: before });
  await until("a reader resumed from before the kill to match the witness", () => {
    const got = reader4.events.map((e) => e.id);
    return [got.length > 0 && JSON.stringify(got) === JSON.stringify(since()), { got, want: since() }];
  });
  assert.deepEqual(reader4.gaps, [], "the kept window covers the position");
  reader4.abort();
  witness.abort();
  await Promise.all([reader4.finished, witness.finished]);
  assert.equal(witness.error, undefined);
  assert.deepEqual(witness.gaps, []);
  fay.ws.close();
});

// ------------------------------------------------------------------ two nodes, one Redis Cluster

await section("two nodes over the Redis Cluster: node A's user seen through the SDK on node B", async () => {
  const prefix = `presence-node-test-${process.pid}-${Date.now().toString(36)}`;
  const clusterArgs = (id) => [
    "--jwt-secret", JWT_SECRET,
    "--service-key", SERVICE_KEY,
    "--redis-cluster", seeds,
    "--redis-prefix", prefix,
    "--node-id", id,
    "--batch-window-ms", "10",
    "--offline-grace-ms", "300",
    "--leave-grace-ms", "100",
  ];
  const [a, b] = await Promise.all([startServer("node A", clusterArgs("a")), startServer("node B", clusterArgs("b"))]);
  const apiA = new PresenceClient({ url: a.url, serviceKey: SERVICE_KEY });
  const apiB = new PresenceClient({ url: b.url, serviceKey: SERVICE_KEY });
  assert.deepEqual(await apiB.healthz(), { status: "ok", redis: "up" });
  const feedB = follow(apiB);
  await feedB.opened();

  const erin = await user(a, "erin");
  erin.send({ type: "join", room: "crew" });
  await until("erin active on node B", async () => {
    const p = await apiB.presence("erin");
    return [p.state === "active", p];
  });
  await until("crew's count on node B", async () => {
    const c = await apiB.count("crew");
    return [c.counts.online === 1 && c.counts.active === 1, c];
  });
  assert.deepEqual((await apiB.members("crew")).members.map((m) => m.user), ["erin"]);
  await feedB.sees("user_connected erin on node B", is("user_connected", "erin"));
  assert.equal(typeof feedB.events.find(is("user_connected", "erin")).data.id, "string", "cluster ids are strings");
  erin.send({ type: "activity", state: "idle", reason: "blurred" });
  await feedB.sees("user_idle erin on node B", is("user_idle", "erin"));

  // A position from node B resumes on node A.
  feedB.abort();
  await feedB.finished;
  assert.equal(feedB.error, undefined);
  const cut = feedB.events.at(-1).id;
  erin.send({ type: "activity", state: "active" });
  const feedA = follow(apiA, { lastEventId: cut });
  await feedA.sees("user_active erin on node A, resumed from node B's position", is("user_active", "erin"));
  const seenOnB = new Set(feedB.events.map((e) => e.data.id));
  assert.ok(feedA.events.every((e) => !seenOnB.has(e.data.id)), `no repeat: ${show(feedA.events)}`);
  feedA.abort();
  await feedA.finished;

  const bad = follow(apiB, { lastEventId: "not-a-position" });
  await within(bad.finished, "node B to refuse a bad Last-Event-ID");
  assert.equal(bad.error?.code, "bad_last_event_id", String(bad.error));
  assert.equal(bad.error.status, 400);

  // Privacy settings are the user's on every node: set through A, read through B, and the other way.
  assert.deepEqual(await apiA.setPrivacy("erin", { lastSeen: "contacts" }), {
    user: "erin",
    last_seen: "contacts",
    receipts: "on",
  });
  await until("erin's socket on node A to be told", () => [
    erin.frames.some((f) => f.type === "self_privacy" && f.last_seen === "contacts"),
    erin.frames,
  ]);
  await until("node B to read erin's setting", async () => {
    const p = await apiB.privacy("erin");
    return [p.last_seen === "contacts", p];
  });
  const both = { user: "erin", last_seen: "contacts", receipts: "off" };
  assert.deepEqual(await apiB.setPrivacy("erin", { receipts: "off" }), both, "node B keeps what node A set");
  await until("node A to read both settings", async () => {
    const p = await apiA.privacy("erin");
    return [p.last_seen === both.last_seen && p.receipts === both.receipts, p];
  });
  // A user no node holds: set through B, read through A.
  assert.deepEqual(await apiB.setPrivacy("ghost", { lastSeen: "nobody" }), {
    user: "ghost",
    last_seen: "nobody",
    receipts: "on",
  });
  await until("node A to read ghost's setting", async () => {
    const p = await apiA.privacy("ghost");
    return [p.last_seen === "nobody", p];
  });
  await rejects(apiA.setPrivacy("erin", { receipts: "maybe" }), "invalid_field", 400);

  // A disconnect asked of node B closes erin's socket on node A.
  const r = await apiB.disconnect("erin");
  assert.deepEqual(r, { user: "erin", closed: 0, revoked: false });
  assert.equal(await within(erin.closedP, "erin's socket on node A to close"), 4101);
});

for (const u of sockets) u.ws.close();
console.log(`all passed in ${((Date.now() - started) / 1000).toFixed(1)} s`);
process.exit(0);
