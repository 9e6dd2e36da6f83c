// @presence-rs/node: the presence server's HTTP API, its event feed and its webhooks, for a Node
// backend. No dependencies: global fetch, node:crypto. Types in index.d.ts; README.md says how.

import { createHmac, timingSafeEqual } from "node:crypto";

/** A request that failed: the server's error code and status, or `network`/`timeout`/…. */
export class PresenceError extends Error {
  constructor(message, { status, code, cause } = {}) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = "PresenceError";
    this.status = status;
    this.code = code ?? "unknown";
  }
}

/** A webhook request that does not verify; `code` says why. */
export class WebhookError extends Error {
  constructor(code, message) {
    super(message);
    this.name = "WebhookError";
    this.code = code;
  }
}

const DEFAULT_TIMEOUT_MS = 10_000;
/** First reconnect delay of the event feed, doubled per failure up to MAX_BACKOFF_MS. */
const FIRST_BACKOFF_MS = 250;
const MAX_BACKOFF_MS = 30_000;
/** The server sends a comment every 15 s: three missed means the connection is dead. */
const DEFAULT_STALL_MS = 45_000;
/** Longest line, and longest event data, the feed parser buffers (in characters). */
const DEFAULT_MAX_EVENT = 1024 * 1024;
/** Webhook timestamps older (or newer) than this are refused by default. */
const DEFAULT_TOLERANCE_MS = 5 * 60_000;
/** Feed errors that reconnecting cannot heal: the iterator throws them instead of retrying. */
const FATAL = new WeakSet();

/** The presence server's HTTP API, with the service key (or a user token for the reads). */
export class PresenceClient {
  #base;
  #ops;
  #key;
  #fetch;
  #timeoutMs;

  constructor({ url, serviceKey, fetch: fetchImpl, timeoutMs = DEFAULT_TIMEOUT_MS, opsUrl } = {}) {
    this.#base = baseUrl(url, "url");
    this.#ops = opsUrl === undefined ? this.#base : baseUrl(opsUrl, "opsUrl");
    this.#key = serviceKey;
    this.#fetch = fetchImpl ?? globalThis.fetch;
    if (typeof this.#fetch !== "function") throw new TypeError("no fetch: pass one, or use Node >= 18");
    if (!(timeoutMs > 0)) throw new TypeError("timeoutMs must be a positive number of milliseconds");
    this.#timeoutMs = timeoutMs;
  }

  /** `GET /v1/users/{user}/presence` */
  presence(user, options) {
    return this.#json("GET", ["v1", "users", user, "presence"], options);
  }

  /** `GET /v1/users/{user}/devices` (service key): the user's live connections on every node. */
  devices(user, options) {
    return this.#json("GET", ["v1", "users", user, "devices"], options);
  }

  /** `GET /v1/users/{user}/notify?room=&mention=&marker=` (service key): live, push or none. */
  notify(user, room, { mention, marker, signal } = {}) {
    const query = new URLSearchParams({ room });
    if (mention) query.set("mention", "true");
    if (marker !== undefined) query.set("marker", String(marker));
    return this.#json("GET", ["v1", "users", user, "notify"], { query, signal });
  }

  /** `GET /v1/users/{user}/privacy` (service key, or the user's own token): their settings. */
  privacy(user, options) {
    return this.#json("GET", ["v1", "users", user, "privacy"], options);
  }

  /** `PUT /v1/users/{user}/privacy` (service key): changes the settings given, keeps the others. */
  setPrivacy(user, { lastSeen, receipts } = {}, { signal } = {}) {
    const body = {};
    if (lastSeen !== undefined) body.last_seen = lastSeen;
    if (receipts !== undefined) body.receipts = receipts;
    return this.#json("PUT", ["v1", "users", user, "privacy"], { body, signal });
  }

  /** `POST /v1/presence/bulk` */
  async bulk(users, options) {
    if (!Array.isArray(users)) throw new TypeError("bulk(users): users must be an array of ids");
    const answer = await this.#json("POST", ["v1", "presence", "bulk"], { ...options, body: { users } });
    return { users: answer.users, forbidden: answer.forbidden ?? [] };
  }

  /** `GET /v1/rooms/{room}/members?after=&limit=`: one page. */
  async members(room, { after, limit, signal } = {}) {
    const query = new URLSearchParams();
    if (after !== undefined) query.set("after", after);
    if (limit !== undefined) query.set("limit", String(limit));
    const page = await this.#json("GET", ["v1", "rooms", room, "members"], { query, signal });
    const out = { room: page.room, members: page.members, receipts: page.receipts ?? [] };
    if (page.next !== undefined && page.next !== null) out.next = page.next;
    return out;
  }

  /** Every member of `room`, page after page (following `next`). */
  async *allMembers(room, { limit, signal } = {}) {
    let after;
    do {
      const page = await this.members(room, { after, limit, signal });
      yield* page.members;
      after = page.next;
    } while (after !== undefined);
  }

  /** `GET /v1/rooms/{room}/count` */
  count(room, options) {
    return this.#json("GET", ["v1", "rooms", room, "count"], options);
  }

  /** `POST /v1/rooms/{room}/messages/sent`: the user's typing there stops now. */
  async messageSent(room, user, options) {
    await this.#json("POST", ["v1", "rooms", room, "messages", "sent"], { ...options, body: { user } });
  }

  /** `POST /v1/users/{user}/disconnect`: closes the user's sockets everywhere. */
  disconnect(user, { code, revoke, signal } = {}) {
    const body = {};
    if (code !== undefined) body.code = code;
    if (revoke !== undefined) body.revoke = revoke;
    return this.#json("POST", ["v1", "users", user, "disconnect"], { body, signal });
  }

  /** `GET /healthz`: the body of a 200 or a 503 (shutting down). */
  healthz(options) {
    return this.#json("GET", ["healthz"], { ...options, ops: true, answers503: true });
  }

  /** `GET /readyz`: the body of a 200 or a 503 (`not_ready` and its reason). */
  readyz(options) {
    return this.#json("GET", ["readyz"], { ...options, ops: true, answers503: true });
  }

  /** `GET /v1/events` as an async iterable of `{ id, kind, data }`; see index.d.ts. */
  events(options = {}) {
    return this.#events(options);
  }

  #url(segments, query, ops) {
    const path = segments.map((s) => {
      if (typeof s !== "string" || s === "") throw new TypeError(`an id must be a non-empty string, got ${JSON.stringify(s)}`);
      return encodeURIComponent(s);
    });
    const url = new URL(`${ops ? this.#ops : this.#base}/${path.join("/")}`);
    if (query) url.search = query.toString();
    return url;
  }

  #headers(extra) {
    const headers = { ...extra };
    if (this.#key) headers.authorization = `Bearer ${this.#key}`;
    return headers;
  }

  async #json(method, segments, { body, query, signal, ops = false, answers503 = false } = {}) {
    const url = this.#url(segments, query, ops);
    const headers = this.#headers({ accept: "application/json" });
    if (body !== undefined) headers["content-type"] = "application/json";
    const what = `${method} ${url.pathname}`;
    const deadline = deadlineSignal(this.#timeoutMs, signal);
    try {
      let response;
      try {
        response = await this.#fetch(url, {
          method,
          headers,
          body: body === undefined ? undefined : JSON.stringify(body),
          signal: deadline.signal,
        });
      } catch (e) {
        throw deadline.explain(e, what);
      }
      let text;
      try {
        text = await response.text();
      } catch (e) {
        throw deadline.explain(e, what);
      }
      if (!response.ok && !(answers503 && response.status === 503)) throw errorOf(response, text, what);
      if (response.status === 204 || text === "") return undefined;
      try {
        return JSON.parse(text);
      } catch {
        throw new PresenceError(`${what}: the answer is not JSON: ${snippet(text)}`, {
          status: response.status,
          code: "bad_response",
        });
      }
    } finally {
      deadline.clear();
    }
  }

  async *#events({
    lastEventId,
    signal,
    onGap,
    onOpen,
    onRetry,
    maxEventBytes = DEFAULT_MAX_EVENT,
    stallTimeoutMs = DEFAULT_STALL_MS,
  }) {
    let last = lastEventId === undefined || lastEventId === null ? "" : String(lastEventId);
    let retryMs; // the server's `retry:`, when it sent one
    let failures = 0;
    const url = this.#url(["v1", "events"]);
    while (!signal?.aborted) {
      const conn = new AbortController();
      const stop = () => conn.abort(signal.reason);
      signal?.addEventListener("abort", stop, { once: true });
      let failure;
      let timer;
      try {
        const headers = this.#headers({ accept: "text/event-stream", "cache-control": "no-cache" });
        if (last !== "") headers["last-event-id"] = last;
        let stalled = false;
        // Until the answer's head: the request timeout; then between chunks: the stall timeout.
        const arm = (ms) => {
          clearTimeout(timer);
          timer = setTimeout(() => {
            stalled = true;
            conn.abort();
          }, ms);
        };
        arm(this.#timeoutMs);
        let response;
        try {
          response = await this.#fetch(url, { method: "GET", headers, signal: conn.signal });
        } catch (e) {
          if (signal?.aborted) return;
          throw new PresenceError(
            stalled ? `GET /v1/events: no answer within ${this.#timeoutMs} ms` : `GET /v1/events: ${e?.message ?? e}`,
            { code: stalled ? "timeout" : "network", cause: e },
          );
        }
        if (!response.ok) {
          const text = await response.text().catch(() => "");
          const error = errorOf(response, text, "GET /v1/events");
          // A request the server refuses (bad or foreign Last-Event-ID, wrong key) fails the same
          // way every time: stop. Overload, outages and restarts heal: retry.
          if (response.status >= 400 && response.status < 500 && response.status !== 408 && response.status !== 429) {
            FATAL.add(error);
          }
          throw error;
        }
        const type = response.headers.get("content-type") ?? "";
        if (!type.toLowerCase().startsWith("text/event-stream") || !response.body) {
          await response.body?.cancel().catch(() => {});
          const error = new PresenceError(`GET /v1/events answered ${type || "no content type"}, not an event stream`, {
            status: response.status,
            code: "bad_response",
          });
          FATAL.add(error);
          throw error;
        }
        failures = 0;
        onOpen?.({ lastEventId: last === "" ? undefined : last });
        const parser = new SseParser(maxEventBytes);
        const decoder = new TextDecoder("utf-8");
        const reader = response.body.getReader();
        // A fetch of one's own may not tie the body to the signal: cancel it here too.
        conn.signal.addEventListener("abort", () => reader.cancel().catch(() => {}), { once: true });
        try {
          for (;;) {
            arm(stallTimeoutMs);
            let chunk;
            let cause;
            try {
              chunk = await reader.read();
            } catch (e) {
              cause = e;
            }
            // Not while the consumer handles what is yielded: only the server's silence counts.
            clearTimeout(timer);
            if (signal?.aborted) return;
            if (stalled) {
              throw new PresenceError(`GET /v1/events: nothing for ${stallTimeoutMs} ms`, { code: "timeout", cause });
            }
            if (cause !== undefined) {
              throw new PresenceError(`GET /v1/events: ${cause?.message ?? cause}`, { code: "network", cause });
            }
            if (chunk.done) break;
            const events = parser.push(decoder.decode(chunk.value, { stream: true }));
            if (parser.retry !== undefined) retryMs = parser.retry;
            // What a reconnect resumes from, also when a block carried only an `id:`.
            last = parser.lastEventId;
            for (const raw of events) {
              const event = { id: raw.id, kind: raw.kind, data: parseData(raw) };
              if (event.kind === "gap") onGap?.(event);
              yield event;
            }
          }
        } finally {
          // Also when the consumer stops iterating: the connection goes with it.
          clearTimeout(timer);
          conn.abort();
          reader.cancel().catch(() => {});
        }
        // A clean end: the server restarts, or dropped a reader too far behind. Resume.
        failure = new PresenceError("GET /v1/events: the server ended the stream", { code: "stream_ended" });
      } catch (e) {
        if (signal?.aborted) return;
        if (!(e instanceof PresenceError) || FATAL.has(e)) throw e;
        failure = e;
      } finally {
        clearTimeout(timer);
        signal?.removeEventListener("abort", stop);
      }
      const base = retryMs ?? FIRST_BACKOFF_MS;
      const ceiling = Math.min(MAX_BACKOFF_MS, base * 2 ** Math.min(failures, 20));
      // Jitter over the upper half: readers cut off together do not come back together.
      const delay = Math.round(ceiling / 2 + (Math.random() * ceiling) / 2);
      failures += 1;
      onRetry?.(failure, delay);
      if (!(await sleep(delay, signal))) return;
    }
  }
}

/** Checks a webhook request's signature and age; returns its events. See index.d.ts. */
export function verifyWebhook({ body, headers, secret, toleranceMs = DEFAULT_TOLERANCE_MS, now = Date.now() } = {}) {
  const secrets = (Array.isArray(secret) ? secret : [secret]).filter((s) => s !== undefined && s !== null);
  if (secrets.length === 0 || secrets.some((s) => (typeof s !== "string" && !isBytes(s)) || s.length === 0)) {
    throw new TypeError("verifyWebhook: secret must be a non-empty string or Buffer (or an array of them)");
  }
  const raw = rawBytes(body);
  const timestamp = header(headers, "presence-timestamp");
  const signature = header(headers, "presence-signature");
  if (timestamp === undefined) throw new WebhookError("missing_timestamp", "no presence-timestamp header");
  if (signature === undefined) throw new WebhookError("missing_signature", "no presence-signature header");
  if (!/^[0-9]{1,15}$/.test(timestamp)) {
    throw new WebhookError("bad_timestamp", "presence-timestamp is not a number of seconds");
  }
  // A signature is 64 hex digits; anything else cannot match (and Buffer.from(…, "hex") would
  // silently stop at the first non-hex character).
  const given = /^[0-9a-fA-F]{64}$/.test(signature) ? Buffer.from(signature, "hex") : undefined;
  const signs = (s) => {
    const want = createHmac("sha256", s).update(`${timestamp}.`).update(raw).digest();
    return given !== undefined && timingSafeEqual(want, given);
  };
  // Every secret is tried (no early exit), so the time taken does not say which one matched.
  if (!secrets.map(signs).includes(true)) {
    throw new WebhookError("bad_signature", "presence-signature does not match the body and the secret");
  }
  const ageMs = Number(now) - Number(timestamp) * 1000;
  if (!(Math.abs(ageMs) <= toleranceMs)) {
    throw new WebhookError(
      "stale_timestamp",
      `presence-timestamp is ${Math.round(ageMs / 1000)} s from now; at most ${Math.round(toleranceMs / 1000)} s allowed`,
    );
  }
  let parsed;
  try {
    parsed = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(raw));
  } catch {
    throw new WebhookError("bad_body", "the signed body is not JSON");
  }
  if (parsed === null || typeof parsed !== "object" || !Array.isArray(parsed.events)) {
    throw new WebhookError("bad_body", 'the signed body is not {"events":[...]}');
  }
  return { timestamp: Number(timestamp), events: parsed.events };
}

/**
 * Server-Sent Events, as the WHATWG HTML standard parses them (section 9.2.6): lines end with
 * CRLF, LF or CR; `:` starts a comment; fields `event`, `data` (lines joined with `\n`), `id`
 * (kept across events, ignored with a NUL) and `retry` (digits only); a blank line dispatches,
 * an event without data is not dispatched. Takes decoded text in chunks of any size.
 */
class SseParser {
  #max;
  #line = "";
  #skipLF = false;
  #data = "";
  #hasData = false;
  #type = "";
  #id = "";
  /** The last event ID, as of the last dispatch: what a reconnect sends. */
  lastEventId = "";
  /** The last `retry:` in milliseconds, if any. */
  retry;

  constructor(max) {
    this.#max = max;
  }

  push(text) {
    const out = [];
    let pos = 0;
    if (this.#skipLF && text.length > 0) {
      if (text[0] === "\n") pos = 1;
      this.#skipLF = false;
    }
    const ends = /[\r\n]/g;
    while (pos < text.length) {
      ends.lastIndex = pos;
      const m = ends.exec(text);
      if (m === null) {
        this.#line += text.slice(pos);
        if (this.#line.length > this.#max) throw tooLarge(`a line of the event stream is over ${this.#max} characters`);
        break;
      }
      const line = this.#line + text.slice(pos, m.index);
      this.#line = "";
      pos = m.index + 1;
      if (m[0] === "\r") {
        if (pos < text.length) {
          if (text[pos] === "\n") pos += 1;
        } else {
          this.#skipLF = true; // the LF of a CRLF may start the next chunk
        }
      }
      if (line.length > this.#max) throw tooLarge(`a line of the event stream is over ${this.#max} characters`);
      this.#field(line, out);
    }
    return out;
  }

  #field(line, out) {
    if (line === "") return this.#dispatch(out);
    if (line[0] === ":") return;
    const colon = line.indexOf(":");
    const name = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? "" : line.slice(colon + 1);
    if (value[0] === " ") value = value.slice(1);
    switch (name) {
      case "event":
        this.#type = value;
        break;
      case "data":
        if (this.#data.length + value.length + 1 > this.#max) {
          throw tooLarge(`an event of the event stream is over ${this.#max} characters`);
        }
        this.#data += this.#hasData ? `\n${value}` : value;
        this.#hasData = true;
        break;
      case "id":
        if (!value.includes("\0")) this.#id = value;
        break;
      case "retry":
        if (/^[0-9]+$/.test(value)) this.retry = Number(value);
        break;
      default: // unknown fields are ignored
    }
  }

  #dispatch(out) {
    this.lastEventId = this.#id;
    if (this.#hasData) out.push({ id: this.#id, kind: this.#type || "message", data: this.#data });
    this.#data = "";
    this.#hasData = false;
    this.#type = "";
  }
}

function tooLarge(message) {
  const error = new PresenceError(message, { code: "event_too_large" });
  FATAL.add(error);
  return error;
}

function parseData(raw) {
  try {
    return JSON.parse(raw.data);
  } catch {
    const error = new PresenceError(`event ${raw.kind} (id ${raw.id}) does not carry JSON: ${snippet(raw.data)}`, {
      code: "bad_response",
    });
    FATAL.add(error);
    throw error;
  }
}

function baseUrl(url, name) {
  let parsed;
  try {
    parsed = new URL(String(url));
  } catch {
    throw new TypeError(`${name} must be an absolute http(s) URL, got ${JSON.stringify(url)}`);
  }
  if (parsed.protocol !== "http:" && parsed.protocol !== "https:") {
    throw new TypeError(`${name} must be an http(s) URL, got ${JSON.stringify(url)}`);
  }
  parsed.search = "";
  parsed.hash = "";
  return parsed.href.replace(/\/+$/, "");
}

/** The server's `{"error":{"code","message"}}`, or what the status says. */
function errorOf(response, text, what) {
  let code;
  let message;
  try {
    const body = JSON.parse(text);
    if (typeof body?.error?.code === "string") {
      code = body.error.code;
      message = typeof body.error.message === "string" ? body.error.message : code;
    }
  } catch {
    // not the server's error shape: a proxy's page, a wrong URL
  }
  return new PresenceError(`${what}: ${response.status} ${message ?? snippet(text || response.statusText)}`, {
    status: response.status,
    code: code ?? `http_${response.status}`,
  });
}

/** An AbortSignal that fires at the deadline or with `outer`, and says which it was. */
function deadlineSignal(ms, outer) {
  const controller = new AbortController();
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    controller.abort();
  }, ms);
  const stop = () => controller.abort(outer.reason);
  if (outer?.aborted) stop();
  else outer?.addEventListener("abort", stop, { once: true });
  return {
    signal: controller.signal,
    clear() {
      clearTimeout(timer);
      outer?.removeEventListener("abort", stop);
    },
    explain(e, what) {
      if (timedOut) return new PresenceError(`${what}: no answer within ${ms} ms`, { code: "timeout", cause: e });
      if (outer?.aborted) return new PresenceError(`${what}: aborted`, { code: "aborted", cause: e });
      return new PresenceError(`${what}: ${e?.cause?.message ?? e?.message ?? e}`, { code: "network", cause: e });
    },
  };
}

/** Waits `ms`; false if `signal` aborted first. */
function sleep(ms, signal) {
  return new Promise((resolve) => {
    if (signal?.aborted) return resolve(false);
    const done = (ok) => {
      clearTimeout(timer);
      signal?.removeEventListener("abort", onAbort);
      resolve(ok);
    };
    const onAbort = () => done(false);
    const timer = setTimeout(() => done(true), ms);
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

function isBytes(value) {
  return value instanceof Uint8Array;
}

function rawBytes(body) {
  if (typeof body === "string") return Buffer.from(body, "utf8");
  if (body instanceof Uint8Array) return body;
  if (body instanceof ArrayBuffer) return new Uint8Array(body);
  throw new TypeError(
    "verifyWebhook: body must be the raw request body (string, Buffer or Uint8Array), as received: " +
      "a re-serialized object does not have the signed bytes",
  );
}

/** A header from Node's `req.headers` (any case) or a fetch `Headers`; one value only. */
function header(headers, name) {
  if (!headers) return undefined;
  let value;
  if (typeof headers.get === "function") value = headers.get(name) ?? undefined;
  else {
    for (const [key, v] of Object.entries(headers)) {
      if (key.toLowerCase() === name) value = v;
    }
  }
  if (Array.isArray(value)) value = value.length === 1 ? value[0] : undefined;
  if (typeof value !== "string") return undefined;
  value = value.trim();
  return value === "" ? undefined : value;
}

function snippet(text) {
  const s = String(text).replace(/\s+/g, " ").trim();
  return s.length > 200 ? `${s.slice(0, 200)}…` : s;
}
