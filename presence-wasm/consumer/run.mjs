// Consumer test: installs the packed npm tarball into a fresh folder, builds a page from the
// README's example (only the server URL changed), serves it, loads it in headless Chromium and
// checks that the page connects and the server sees the user. Run by `cargo xtask test`:
//   PRESENCE_TEST_WS=ws://127.0.0.1:PORT/ws PRESENCE_TARBALL=target/….tgz node presence-wasm/consumer/run.mjs
import { execFileSync } from "node:child_process";
import { mkdtempSync, mkdirSync, readFileSync, rmSync, writeFileSync, existsSync } from "node:fs";
import { createServer } from "node:http";
import { tmpdir } from "node:os";
import { dirname, extname, join, normalize, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const here = dirname(fileURLToPath(import.meta.url));
const ws = process.env.PRESENCE_TEST_WS;
const tarball = process.env.PRESENCE_TARBALL;
if (!ws || !tarball) throw new Error("set PRESENCE_TEST_WS and PRESENCE_TARBALL");

const site = join(here, "site");
rmSync(site, { recursive: true, force: true });
mkdirSync(site);
writeFileSync(join(site, "package.json"), '{ "private": true }\n');
execFileSync("npm", ["install", "--no-audit", "--no-fund", resolve(tarball)], { cwd: site, stdio: "inherit" });

const readme = readFileSync(join(here, "..", "README.md"), "utf8");
const example = readme.match(/```html\n([\s\S]*?)```/)?.[1];
if (!example || !example.includes("ws://localhost:4000/ws")) throw new Error("README example not found");
writeFileSync(join(site, "index.html"), example.replace("ws://localhost:4000/ws", ws));

const types = { ".html": "text/html", ".js": "text/javascript", ".wasm": "application/wasm", ".json": "application/json" };
const http = createServer((req, res) => {
  const path = normalize(decodeURIComponent(new URL(req.url, "http://x").pathname)).replace(/^\/+/, "");
  if (path === "favicon.ico") return res.writeHead(204).end();
  const file = join(site, path || "index.html");
  if (!file.startsWith(site) || !existsSync(file)) return res.writeHead(404).end();
  res.writeHead(200, { "content-type": types[extname(file)] ?? "application/octet-stream" });
  res.end(readFileSync(file));
});
await new Promise((ok) => http.listen(0, "127.0.0.1", ok));
const page_url = `http://127.0.0.1:${http.address().port}/`;

const profile = mkdtempSync(join(process.env.TMPDIR ?? tmpdir(), "consumer-"));
const browser = await chromium.launchPersistentContext(profile, {
  executablePath: "/usr/bin/chromium",
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
let failure = null;
try {
  const page = await browser.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("console", (m) => m.type() === "error" && errors.push(m.text()));
  await page.goto(page_url);
  await page.waitForFunction(() => document.title === "connected", null, { timeout: 15000 });
  // The server agrees: ana is online (dev auth: the token is the user name).
  const api = ws.replace(/^ws/, "http").replace(/\/ws$/, "") + "/v1/users/ana/presence";
  const deadline = Date.now() + 10000;
  let state;
  while (Date.now() < deadline) {
    const r = await fetch(api, { headers: { authorization: "Bearer ana" } });
    state = r.ok ? (await r.json()).state : `HTTP ${r.status}`;
    if (state === "active") break;
    await new Promise((ok) => setTimeout(ok, 100));
  }
  if (state !== "active") throw new Error(`server sees ana as ${state}, expected active`);
  if (errors.length) throw new Error(`page errors: ${errors.join("; ")}`);
  console.log(`consumer test: the README example connected from the packed tarball (${tarball})`);
} catch (e) {
  failure = e;
} finally {
  await browser.close();
  http.close();
  rmSync(profile, { recursive: true, force: true });
}
if (failure) {
  console.error(`consumer test failed: ${failure.message}`);
  process.exit(1);
}
