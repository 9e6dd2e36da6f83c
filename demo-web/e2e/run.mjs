// End-to-end tests of the demo chat: builds and starts the real demo-web binary (presence-server
// embedded, dev auth, short timings) on a free loopback port, then drives two headless Chromium
// browsers, one per user (ana = A, bob = B), through the presence scenarios of issue 5, the "new
// message" toast that follows the server's push decision and the "Seen by" of a reader gone
// offline (issues 30 and 31); then a
// second demo server with `--large-room-members 3`, where three users make a large room and the
// page must show the server's count (issue 15).
//
//   node demo-web/e2e/run.mjs            (from the repository root; `cargo xtask test` runs it)
//   UPDATE_DOCS=1 node demo-web/e2e/run.mjs   also copies the side-by-side screenshot to docs/demo.png
//
// Every wait is bounded (WAIT_MS) and fails with what the page showed instead. Screenshots go to
// demo-web/e2e/artifacts/. The exit code is non-zero on any failure; the server is stopped in all cases.
import { execFileSync, spawn } from "node:child_process";
import { copyFileSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const here = dirname(fileURLToPath(import.meta.url));
const root = resolve(here, "..", "..");
const target = resolve(root, process.env.CARGO_TARGET_DIR ?? "target");
const artifacts = join(here, "artifacts");
const WAIT_MS = 10_000;
const ROOM = "general";
// Server timings short enough to see graces in about a second; idleness comes from the page's
// `?idle=` URL parameter (so that path is tested too), and a hidden page is reported hidden after
// `?hidden=` ms.
const LEAVE_GRACE_MS = 500;
const SERVER_ARGS = [
  "--bind", "127.0.0.1:0",
  "--offline-grace-ms", "1000",
  "--leave-grace-ms", String(LEAVE_GRACE_MS),
  "--heartbeat-interval-ms", "1000",
  "--heartbeat-timeout-ms", "3000",
  "--typing-ttl-ms", "3000",
  "--batch-window-ms", "10",
  "--pkg-dir", join(root, "presence-wasm", "pkg"),
  "--log", "warn",
];
const PAGE_QUERY = "?idle=1500&hidden=200";
const VIEWPORT = { width: 1060, height: 660 };
const CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
  "--disable-background-networking", "--disable-component-update", "--disable-sync"];

const sleep = (ms) => new Promise((ok) => setTimeout(ok, ms));
const started = Date.now();

// ------------------------------------------------------------------ the server

function build() {
  const t = Date.now();
  // The debug build: `cargo xtask test` has just compiled it for `cargo test`, so this is quick.
  execFileSync("cargo", ["build", "--package", "demo-web"], { cwd: root, stdio: "inherit" });
  return Date.now() - t;
}

/** Starts the demo binary (with `extra` flags after SERVER_ARGS) and resolves with its URL (printed on stdout). */
function startServer(log, extra = []) {
  const child = spawn(join(target, "debug", "demo-web"), [...SERVER_ARGS, ...extra], { cwd: root, stdio: ["ignore", "pipe", "pipe"] });
  child.stderr.on("data", (d) => log.push(String(d)));
  const url = new Promise((ok, fail) => {
    let out = "";
    const timer = setTimeout(() => fail(new Error(`demo-web printed no URL within ${WAIT_MS / 1000} s: ${out}${log.join("")}`)), WAIT_MS);
    child.stdout.on("data", (d) => {
      out += d;
      const m = out.match(/http:\/\/127\.0\.0\.1:\d+\//);
      if (m) {
        clearTimeout(timer);
        ok(m[0]);
      }
    });
    child.on("exit", (code) => {
      clearTimeout(timer);
      fail(new Error(`demo-web exited with ${code} before printing its URL:\n${log.join("")}`));
    });
  });
  return { child, url };
}

async function stopServer(child) {
  if (!child || child.exitCode !== null) return;
  const exited = new Promise((ok) => child.once("exit", ok));
  child.kill("SIGTERM");
  const timer = setTimeout(() => child.kill("SIGKILL"), 7000);
  await exited;
  clearTimeout(timer);
}

// ------------------------------------------------------------------ page helpers

/** What a page shows, for failure messages. */
function pageState() {
  const q = (s) => [...document.querySelectorAll(s)];
  const members = q("[data-testid=member]").map((m) => `${m.dataset.user}=${m.dataset.state} "${m.querySelector("[data-testid=member-detail]")?.textContent}"`);
  const strip = q("[data-testid=active-person]").map((p) => `${p.dataset.user}=${p.dataset.state}`);
  const msgs = q("[data-testid=message]").map((m) => `${m.dataset.seq}:${m.dataset.user}:${m.querySelector(".message-text")?.textContent}`);
  const conn = document.querySelector("[data-testid=connection]")?.dataset.state;
  const toasts = q("[data-testid=toast]").map((t) => `${t.dataset.room}:${t.dataset.seq}:${t.dataset.reason}`);
  return `connection=${conn}; "${document.getElementById("member-count")?.textContent}", ` +
    `"${document.querySelector("[data-testid=room-online]")?.textContent}"; members=[${members.join(", ")}]; active-now=[${strip.join(", ")}]; ` +
    `typing="${document.querySelector("[data-testid=typing]")?.textContent}"; ` +
    `seen="${document.querySelector("[data-testid=seen-by]")?.textContent}"; toasts=[${toasts.join(", ")}]; messages=[${msgs.slice(-4).join(" | ")}]`;
}

/** Waits until `fn(arg)` is truthy in `page`, at most `ms`; fails saying what was expected and seen. */
async function until(page, what, fn, arg, ms = WAIT_MS) {
  try {
    await page.waitForFunction(fn, arg, { timeout: ms, polling: 50 });
  } catch (e) {
    const seen = await page.evaluate(pageState).catch(() => "(page unavailable)");
    throw new Error(`${what}: not within ${ms / 1000} s.\n      page showed: ${seen}\n      (${e.message.split("\n")[0]})`);
  }
}

// In-page predicates (serialised into the page by Playwright).
/** Exactly one row for `user`, in `state` (or one of several), its detail text matching `detail`. */
const memberIs = ({ user, state, detail }) => {
  const rows = [...document.querySelectorAll("[data-testid=member]")].filter((r) => r.dataset.user === user);
  const text = rows[0]?.querySelector("[data-testid=member-detail]")?.textContent ?? "";
  const states = Array.isArray(state) ? state : [state];
  return rows.length === 1 && states.includes(rows[0].dataset.state) && (!detail || new RegExp(detail).test(text));
};
const typingIs = (users) => document.querySelector("[data-testid=typing]")?.dataset.users === users;
const hasMessage = ({ user, text }) =>
  [...document.querySelectorAll("[data-testid=message]")].some((m) => m.dataset.user === user && m.querySelector(".message-text")?.textContent === text);
const connected = () => document.querySelector("[data-testid=connection]")?.dataset.state === "connected";
const inStrip = ({ user, state }) =>
  [...document.querySelectorAll("[data-testid=active-person]")].some((p) => p.dataset.user === user && (!state || p.dataset.state === state));
const stripSays = ({ user, detail }) =>
  [...document.querySelectorAll("[data-testid=active-person]")].some((p) => p.dataset.user === user && new RegExp(detail).test(p.title));
const absent = (user) => ![...document.querySelectorAll("[data-testid=member]")].some((r) => r.dataset.user === user);
/** The page's toasts as "room:seq:reason", oldest first, comma-separated. */
const toastsAre = (want) =>
  [...document.querySelectorAll("[data-testid=toast]")].map((t) => `${t.dataset.room}:${t.dataset.seq}:${t.dataset.reason}`).join(",") === want;
/** "Seen by" under the last message (of sequence number `seq`) names exactly `users`. */
const seenBy = ({ seq, users }) => {
  const s = document.querySelector("[data-testid=seen-by]");
  return s.dataset.seq === seq && s.dataset.users === users && s.textContent.endsWith(`Seen by ${users.split(",").join(" and ")}`);
};
const lastSeq = (page) => page.evaluate(() => [...document.querySelectorAll("[data-testid=message]")].at(-1)?.dataset.seq);
const count = (page, user) =>
  page.evaluate((u) => [...document.querySelectorAll("[data-testid=member]")].filter((r) => r.dataset.user === u).length, user);

async function signIn(page, url, name) {
  await page.goto(url);
  await page.getByTestId("signin-name").fill(name);
  await page.getByTestId("signin-submit").click();
  await until(page, `${name}'s page connects`, connected);
}

/** Makes `page` look hidden (a background tab) or visible again, as the browser would tell it. */
const setHidden = (page, hidden) => page.evaluate((hidden) => {
  Object.defineProperty(document, "visibilityState", { get: () => (hidden ? "hidden" : "visible"), configurable: true });
  Object.defineProperty(document, "hidden", { get: () => hidden, configurable: true });
  document.dispatchEvent(new Event("visibilitychange"));
}, hidden);

async function send(page, text) {
  await page.getByTestId("composer").fill(text);
  await page.getByTestId("composer").press("Enter");
}

const shot = async (page, name) => page.screenshot({ path: join(artifacts, `${name}.png`) }).catch(() => {});

// ------------------------------------------------------------------ run

const results = [];
async function scenario(name, fn) {
  const t = Date.now();
  process.stdout.write(`  ${name} … `);
  try {
    const note = await fn();
    const ms = Date.now() - t;
    results.push({ name, ms, ok: true });
    console.log(`ok (${(ms / 1000).toFixed(2)} s)${note ? ` — ${note}` : ""}`);
  } catch (e) {
    results.push({ name, ms: Date.now() - t, ok: false });
    console.log("FAILED");
    throw e;
  }
}

rmSync(artifacts, { recursive: true, force: true });
mkdirSync(artifacts, { recursive: true });
const tmp = join(target, "tmp");
mkdirSync(tmp, { recursive: true });
const profiles = [];
const browsers = [];
const serverLog = [];
const bigLog = [];
const pageErrors = [];
let server = null;
let big = null;
let failure = null;

try {
  console.log("e2e: building demo-web (cargo build -p demo-web)");
  const buildMs = build();
  server = startServer(serverLog);
  const base = await server.url;
  const url = `${base}${PAGE_QUERY}#${ROOM}`;
  console.log(`e2e: demo-web at ${base} (built in ${(buildMs / 1000).toFixed(1)} s); scenarios:`);

  const browser = async (label) => {
    const dir = mkdtempSync(join(tmp, `e2e-${label}-`));
    profiles.push(dir);
    const ctx = await chromium.launchPersistentContext(dir, { executablePath: "/usr/bin/chromium", args: CHROMIUM_ARGS, viewport: VIEWPORT });
    browsers.push(ctx);
    ctx.on("page", (p) => p.on("pageerror", (e) => pageErrors.push(`${label}: ${e.message}`)));
    for (const p of ctx.pages()) p.on("pageerror", (e) => pageErrors.push(`${label}: ${e.message}`));
    return ctx;
  };
  const ctxB = await browser("bob");
  const ctxA = await browser("ana");
  const pageB = ctxB.pages()[0] ?? (await ctxB.newPage());
  const pageA = ctxA.pages()[0] ?? (await ctxA.newPage());
  await signIn(pageB, url, "bob");

  await scenario("B sees A come online (member list and the active-now strip)", async () => {
    await signIn(pageA, url, "ana");
    await until(pageB, "B sees ana active", memberIs, { user: "ana", state: "active", detail: "^active now$" });
    await until(pageB, "B's active-now strip shows ana", inStrip, { user: "ana" });
    await until(pageA, "A sees bob in the room", memberIs, { user: "bob", state: ["active", "idle"] });
    await shot(pageB, "01-b-sees-a-online");
  });

  await scenario("B sees A's name (info from the token) and what A is viewing (data)", async () => {
    const shows = ({ user, name, viewing }) => {
      const row = [...document.querySelectorAll("[data-testid=member]")].find((r) => r.dataset.user === user);
      return row?.querySelector("[data-testid=member-name]")?.textContent === name &&
        row?.querySelector("[data-testid=member-viewing]")?.textContent === viewing;
    };
    const room = await pageA.evaluate(() => location.hash.slice(1));
    await until(pageB, "B sees Ana viewing the room", shows, { user: "ana", name: "Ana", viewing: `viewing #${room}` });
    await until(pageA, "A sees itself as Ana (you)", shows, { user: "ana", name: "Ana (you)", viewing: `viewing #${room}` });
    await shot(pageB, "01b-b-sees-a-name-and-viewing");
    return `name "Ana", "viewing #${room}"`;
  });

  await scenario("A stops interacting → B sees A idle", async () => {
    const t = Date.now();
    await until(pageB, "B sees ana idle", memberIs, { user: "ana", state: "idle", detail: "^idle \\d+ s" });
    await shot(pageB, "02-b-sees-a-idle");
    return `after ${((Date.now() - t) / 1000).toFixed(1)} s (idle=1500 ms)`;
  });

  await scenario("A moves the mouse → B sees A active again", async () => {
    await pageA.mouse.move(400, 300);
    await pageA.mouse.move(420, 330, { steps: 5 });
    await until(pageB, "B sees ana active", memberIs, { user: "ana", state: "active" });
  });

  await scenario("A's screen locks → B sees A idle (screen locked); unlocking makes A active", async () => {
    // The permission arrives after connect (as when an app asks for it in a click): the SDK
    // starts its IdleDetector on the permission's change event. The lock is Chromium's
    // DevTools idle override, read by the real Idle Detection API.
    const cdp = await ctxA.newCDPSession(pageA);
    await cdp.send("Browser.grantPermissions", { permissions: ["idleDetection"], origin: new URL(base).origin });
    await cdp.send("Emulation.setIdleOverride", { isUserActive: true, isScreenUnlocked: false });
    await until(pageB, "B sees ana idle with the screen locked", memberIs, { user: "ana", state: "idle", detail: "screen locked" });
    await shot(pageB, "02b-b-sees-a-screen-locked");
    await cdp.send("Emulation.setIdleOverride", { isUserActive: true, isScreenUnlocked: true });
    await until(pageB, "B sees ana active after the unlock", memberIs, { user: "ana", state: "active" });
    await cdp.send("Emulation.clearIdleOverride");
  });

  await scenario("A types → B sees 'ana is typing…'; it stops when A sends", async () => {
    const composer = pageA.getByTestId("composer");
    await composer.pressSequentially("hi bob, lunch at noon?", { delay: 20 });
    await until(pageB, "B sees ana typing", typingIs, "ana");
    const text = await pageB.getByTestId("typing").textContent();
    if (text !== "ana is typing…") throw new Error(`typing line reads "${text}"`);
    await shot(pageB, "03-b-sees-a-typing");
    const sent = Date.now();
    await composer.press("Enter");
    await until(pageB, "B receives ana's message", hasMessage, { user: "ana", text: "hi bob, lunch at noon?" });
    // Well under the SDK's 4 s pause stop and the 3 s TTL: the send itself ended it.
    await until(pageB, "B sees ana's typing stop after the send", typingIs, "", 1500);
    return `stopped ${Date.now() - sent} ms after sending`;
  });

  await scenario("A types and waits → typing stops by itself", async () => {
    await pageA.getByTestId("composer").pressSequentially("also", { delay: 20 });
    await until(pageB, "B sees ana typing", typingIs, "ana");
    const t = Date.now();
    await until(pageB, "B sees ana's typing stop without a send", typingIs, "");
    await pageA.getByTestId("composer").fill("");
    return `stopped after ${((Date.now() - t) / 1000).toFixed(1)} s`;
  });

  await scenario("B sets busy with a text → A sees the chip and the text", async () => {
    await pageB.getByTestId("status-text").fill("in a meeting until 2");
    await pageB.getByTestId("status-select").selectOption("busy");
    await until(pageA, "A sees bob busy with his text",
      () => { const r = document.querySelector('[data-testid=member][data-user="bob"]'); return r?.dataset.status === "busy" && r.textContent.includes("in a meeting until 2"); });
  });

  await scenario("A reads B's message → B sees 'Seen by ana'", async () => {
    await send(pageB, "noon works. see you at the usual place");
    await until(pageA, "A receives bob's message", hasMessage, { user: "bob", text: "noon works. see you at the usual place" });
    await until(pageB, "B shows its own message", hasMessage, { user: "bob", text: "noon works. see you at the usual place" });
    const seq = await pageB.evaluate(() => [...document.querySelectorAll("[data-testid=message]")].at(-1)?.dataset.seq);
    await until(pageB, "B sees 'Seen by ana' under the last message",
      (seq) => { const s = document.querySelector("[data-testid=seen-by]"); return s.dataset.seq === seq && s.dataset.users === "ana" && s.textContent.endsWith("Seen by ana"); }, seq);
    // The picture for the README: B sees the receipt and ana typing again; both active.
    await pageA.mouse.move(500, 400, { steps: 3 });
    await pageB.mouse.move(500, 400, { steps: 3 });
    await pageA.getByTestId("composer").pressSequentially("great, I'll book", { delay: 20 });
    await until(pageB, "B sees ana typing", typingIs, "ana");
    await until(pageA, "A sees bob active", memberIs, { user: "bob", state: "active" });
    await until(pageB, "B sees ana active", memberIs, { user: "ana", state: "active" });
    await sideBySide(ctxB, pageA, pageB);
    await pageA.getByTestId("composer").fill("");
  });

  await scenario("A viewing the room gets no toast, nor in another room; hidden, A gets one (the server's push decision)", async () => {
    // Each message's toasts come on A's stream in the order of the messages, so the toast for
    // the last one, alone, proves the first two made none.
    await send(pageB, "toast check: ana is looking");
    await until(pageA, "A receives it", hasMessage, { user: "bob", text: "toast check: ana is looking" });
    // Another room: from the leave on, the decision is live (at the app), whatever the view is.
    await pageA.evaluate(() => { location.hash = "#lunch"; });
    await until(pageA, "A shows #lunch", () => document.querySelector("[data-testid=room-title]")?.textContent === "# lunch");
    await until(pageB, "B sees ana leave #general", absent, "ana");
    await send(pageB, "toast check: ana is in #lunch");
    await until(pageB, "B shows it", hasMessage, { user: "bob", text: "toast check: ana is in #lunch" });
    await setHidden(pageA, true);
    await until(pageB, "B sees ana's tab hidden", stripSays, { user: "ana", detail: "tab hidden" });
    await send(pageB, "toast check: ana's tab is hidden");
    await until(pageB, "B shows it", hasMessage, { user: "bob", text: "toast check: ana's tab is hidden" });
    const hidden = await lastSeq(pageB);
    await until(pageA, "A has one toast, for the last message, as a push to a hidden tab", toastsAre, `general:${hidden}:background`);
    await shot(pageA, "04b-a-toast-hidden");
    // Back: a visible #lunch keeps the #general toast; a click on it opens #general and ends it.
    await setHidden(pageA, false);
    await pageA.getByTestId("toast").locator(".toast-open").click();
    await until(pageA, "A shows #general without toasts",
      () => document.querySelector("[data-testid=room-title]")?.textContent === "# general" && !document.querySelector("[data-testid=toast]"));
    await until(pageB, "B sees ana back in #general", memberIs, { user: "ana", state: ["active", "idle"] });
    if (await pageB.evaluate(() => document.querySelectorAll("[data-testid=toast]").length)) throw new Error("the sender got a toast");
    return `toast only for #${hidden} (push/background)`;
  });

  let pageA2;
  await scenario("A opens a second tab → still one ana in B's list", async () => {
    pageA2 = await ctxA.newPage();
    await pageA2.goto(url); // signed in from localStorage, like a real second tab
    await until(pageA2, "A's second tab connects", connected);
    await until(pageA2, "A's second tab sees bob", memberIs, { user: "bob", state: ["active", "idle"] });
    // Give a duplicate every chance to show up: sample B's list for a second.
    for (let i = 0; i < 10; i++) {
      const n = await count(pageB, "ana");
      if (n !== 1) throw new Error(`B's member list shows ana ${n} times: ${await pageB.evaluate(pageState)}`);
      const strip = await pageB.evaluate(() => [...document.querySelectorAll("[data-testid=active-person]")].filter((p) => p.dataset.user === "ana").length);
      if (strip !== 1) throw new Error(`B's active-now strip shows ana ${strip} times`);
      await sleep(100);
    }
    await shot(pageB, "05-b-one-ana-two-tabs");
  });

  await scenario("A locks the screen with both tabs open → B sees A idle (screen locked)", async () => {
    // The second tab connected with the permission already granted, so its detector started at
    // once. "screen locked" is the least present reason: B shows it only if every tab says so.
    const sessions = [await ctxA.newCDPSession(pageA), await ctxA.newCDPSession(pageA2)];
    for (const cdp of sessions) await cdp.send("Emulation.setIdleOverride", { isUserActive: true, isScreenUnlocked: false });
    await until(pageB, "B sees ana idle with the screen locked", memberIs, { user: "ana", state: "idle", detail: "screen locked" });
    for (const cdp of sessions) await cdp.send("Emulation.clearIdleOverride");
    await pageA.mouse.move(300, 200, { steps: 3 });
    await until(pageB, "B sees ana active again", memberIs, { user: "ana", state: "active" });
  });

  await scenario("A sets invisible → B sees A offline while A still receives", async () => {
    await pageA.getByTestId("status-select").selectOption("invisible");
    await until(pageB, "B sees ana offline", memberIs, { user: "ana", state: "offline" });
    await until(pageB, "B's active-now strip drops ana", (a) => !document.querySelector(`[data-testid=active-person][data-user="${a}"]`), "ana");
    await until(pageA2, "A's other tab shows the invisible status too", () => document.querySelector("[data-testid=status-select]").value === "invisible");
    await send(pageB, "ana? are you around?");
    await until(pageA, "invisible A receives bob's message (tab 1)", hasMessage, { user: "bob", text: "ana? are you around?" });
    await until(pageA2, "invisible A receives bob's message (tab 2)", hasMessage, { user: "bob", text: "ana? are you around?" });
    // While invisible, reading sends no receipt to others.
    await sleep(500);
    const seen = await pageB.getByTestId("seen-by").getAttribute("data-users");
    if (seen.includes("ana")) throw new Error(`B sees a receipt from invisible ana: "${seen}"`);
    const still = await pageB.evaluate(() => document.querySelector('[data-testid=member][data-user="ana"]')?.dataset.state);
    if (still !== "offline") throw new Error(`B sees invisible ana as ${still}`);
    await shot(pageB, "06-b-sees-invisible-a-offline");
    await shot(pageA, "06-a-invisible");
    await pageA.getByTestId("status-select").selectOption("available");
    await until(pageB, "B sees ana back online", memberIs, { user: "ana", state: ["active", "idle"] });
  });

  let lastRead;
  await scenario("A closes both tabs → B sees A offline after the grace, with 'last seen', and still 'Seen by ana'", async () => {
    await send(pageB, "booked for 12:00");
    await until(pageA, "A receives bob's message", hasMessage, { user: "bob", text: "booked for 12:00" });
    await until(pageB, "B shows it", hasMessage, { user: "bob", text: "booked for 12:00" });
    lastRead = await lastSeq(pageB);
    await until(pageB, "B sees 'Seen by ana'", seenBy, { seq: lastRead, users: "ana" });
    const t = Date.now();
    await pageA2.close({ runBeforeUnload: true });
    await pageA.close({ runBeforeUnload: true });
    await until(pageB, "B sees ana offline with last seen", memberIs, { user: "ana", state: "offline", detail: "^last seen " });
    const ms = Date.now() - t;
    if (ms < LEAVE_GRACE_MS - 50) throw new Error(`ana went offline after ${ms} ms, before the ${LEAVE_GRACE_MS} ms grace`);
    await until(pageB, "B still sees 'Seen by ana' with ana offline", seenBy, { seq: lastRead, users: "ana" });
    await shot(pageB, "07-b-sees-a-offline");
    return `offline after ${ms} ms (leave grace ${LEAVE_GRACE_MS} ms)`;
  });

  await scenario("C opens the room after ana left → C sees 'Seen by ana'; B sees 'Seen by ana and carol'", async () => {
    // ana's marker reaches carol in the room's snapshot, from the server: ana is offline.
    const carol = await ctxB.newPage();
    await carol.addInitScript(() => localStorage.removeItem("presence-demo:name"));
    await signIn(carol, url, "carol");
    await until(carol, "C sees 'Seen by ana'", seenBy, { seq: lastRead, users: "ana" });
    await until(pageB, "B sees 'Seen by ana and carol'", seenBy, { seq: lastRead, users: "ana,carol" });
    await shot(carol, "07b-c-sees-seen-by-ana");
    await carol.close({ runBeforeUnload: true });
  });

  await scenario("A room of 3 is large (a second demo server, --large-room-members 3): the page shows the count", async () => {
    // Its own server, so the room above keeps the default threshold. Another origin, so the
    // pages start signed out; no ?idle=, so nobody goes idle unless their screen locks.
    big = startServer(bigLog, ["--large-room-members", "3"]);
    const bigBase = await big.url;
    const bigUrl = `${bigBase}#big`;
    const shows = ({ count, line }) => document.getElementById("member-count").textContent === count &&
      document.querySelector("[data-testid=room-online]").textContent === line;
    const newPage = async (ctx) => {
      const p = await ctx.newPage();
      await p.addInitScript(() => localStorage.removeItem("presence-demo:name"));
      return p;
    };
    const [carol, dave, erin] = [await newPage(ctxB), await newPage(ctxA), await newPage(ctxA)];
    await signIn(carol, bigUrl, "carol");
    await signIn(dave, bigUrl, "dave");
    await until(carol, "carol sees 2 online, small", shows, { count: "2 online", line: "2 online · 2 members" });
    await signIn(erin, bigUrl, "erin");
    await until(carol, "carol sees 3 online, large", shows, { count: "3 online", line: "3 online · 0 idle · showing 3" });
    await until(erin, "erin sees 3 online, large", shows, { count: "3 online", line: "3 online · 0 idle · showing 3" });
    const cdp = await ctxA.newCDPSession(erin);
    await cdp.send("Browser.grantPermissions", { permissions: ["idleDetection"], origin: new URL(bigBase).origin });
    await cdp.send("Emulation.setIdleOverride", { isUserActive: true, isScreenUnlocked: false });
    await until(carol, "carol's count shows erin idle", shows, { count: "3 online", line: "3 online · 1 idle · showing 3" });
    await shot(carol, "08-large-room-count");
    await cdp.send("Emulation.clearIdleOverride");
    await erin.close({ runBeforeUnload: true });
    // Erin went offline while the room was large: the fresh small snapshot lists the online only.
    await until(carol, "carol sees 2 online, small again", shows, { count: "2 online", line: "2 online · 2 members" });
    await carol.close();
    await dave.close();
    return "2 online · 2 members → 3 online · 0 idle · showing 3 → 1 idle → 2 online, small";
  });

  if (pageErrors.length) throw new Error(`uncaught errors in the pages:\n      ${pageErrors.join("\n      ")}`);
} catch (e) {
  failure = e;
  for (const [i, ctx] of browsers.entries()) for (const [j, p] of ctx.pages().entries()) await shot(p, `failure-${i}-${j}`);
} finally {
  for (const ctx of browsers) await ctx.close().catch(() => {});
  await stopServer(server?.child);
  await stopServer(big?.child);
  for (const dir of profiles) rmSync(dir, { recursive: true, force: true });
}

/** Two users side by side in one picture (composed in a blank page; no image library needed). */
async function sideBySide(ctx, pageA, pageB) {
  const a = (await pageA.screenshot()).toString("base64");
  const b = (await pageB.screenshot()).toString("base64");
  writeFileSync(join(artifacts, "04-a.png"), Buffer.from(a, "base64"));
  writeFileSync(join(artifacts, "04-b.png"), Buffer.from(b, "base64"));
  const page = await ctx.newPage();
  const gap = 24;
  await page.setViewportSize({ width: VIEWPORT.width * 2 + gap * 3, height: VIEWPORT.height + gap * 2 + 28 });
  await page.setContent(`<body style="margin:0;background:#d9dcea;font:600 14px system-ui,sans-serif;color:#3b4160">
    <div style="display:flex;gap:${gap}px;padding:${gap - 6}px ${gap}px ${gap}px">
    ${[["ana", a], ["bob", b]].map(([who, png]) => `<figure style="margin:0"><figcaption style="margin:0 0 6px 4px">${who}'s window</figcaption>
      <img style="display:block;border-radius:10px;box-shadow:0 8px 30px rgba(30,35,70,.18)" src="data:image/png;base64,${png}"></figure>`).join("")}
    </div></body>`);
  const out = join(artifacts, "side-by-side.png");
  await page.screenshot({ path: out });
  await page.close();
  if (process.env.UPDATE_DOCS) {
    mkdirSync(join(root, "docs"), { recursive: true });
    copyFileSync(out, join(root, "docs", "demo.png"));
  }
}

const total = ((Date.now() - started) / 1000).toFixed(1);
const passed = results.filter((r) => r.ok).length;
if (failure) {
  console.error(`\ne2e FAILED: ${failure.message}`);
  if (serverLog.length) console.error(`demo-web log:\n${serverLog.join("").split("\n").slice(-30).join("\n")}`);
  if (bigLog.length) console.error(`large-room demo-web log:\n${bigLog.join("").split("\n").slice(-30).join("\n")}`);
  console.error(`${passed} scenario(s) passed before the failure; screenshots in ${artifacts} (${total} s)`);
  process.exit(1);
}
console.log(`e2e: ${passed} scenarios passed in ${total} s; screenshots in ${artifacts}`);
