// Types of @presence-rs/node. The JSON shapes mirror what presence-server sends (its README,
// "Endpoints", "Webhooks" and "Event stream"; PROTOCOL.md for the presence fields).

/** A JSON value. */
export type JsonValue = string | number | boolean | null | JsonValue[] | { [key: string]: JsonValue };
/** A JSON object (`info`, `data`). */
export type JsonObject = { [key: string]: JsonValue };

/** A user's overall state. */
export type PresenceState = "active" | "idle" | "offline";
/** Why a user is idle, from most to least present. */
export type IdleReason = "no_input" | "blurred" | "hidden" | "locked";
/** A status as others see it: an invisible user reads offline with status `available`. */
export type Status = "available" | "away" | "busy";

/** One user's presence (`GET /v1/users/{id}/presence`, bulk, members, `user_connected`). */
export interface PresenceView {
  user: string;
  state: PresenceState;
  /** When idle: why. */
  reason?: IdleReason;
  status: Status;
  /** The status text, if any. */
  text?: string;
  /** When online: the last time any connection was active (ms since the epoch). */
  last_active?: number;
  /** When offline: the last time the user was seen connected (ms since the epoch). */
  last_seen?: number;
  /** When online: what the server says about the user (the token's `info` claim). */
  info?: JsonObject;
  /** When online: what the user's client set with `data`. */
  data?: JsonObject;
}

/** `POST /v1/presence/bulk`. */
export interface BulkPresence {
  /** The users the caller may see, in the order asked. */
  users: PresenceView[];
  /** The users the caller may not see (empty with the service key). */
  forbidden: string[];
}

/** A member's read marker. */
export interface Receipt {
  user: string;
  marker: number;
}

/** One page of `GET /v1/rooms/{room}/members`. */
export interface MembersPage {
  room: string;
  /** Sorted by user id. */
  members: PresenceView[];
  /** The read markers of this page's members (empty when none). */
  receipts: Receipt[];
  /** When more members follow: the `after` of the next page. */
  next?: string;
}

/** Online members by state. */
export interface Counts {
  /** Active plus idle. */
  online: number;
  active: number;
  idle: number;
}

/** `GET /v1/rooms/{room}/count`. */
export interface RoomCount {
  room: string;
  counts: Counts;
}

/** `POST /v1/users/{id}/disconnect`. */
export interface Disconnected {
  user: string;
  /** Sockets this node closed (the other nodes close theirs too). */
  closed: number;
  revoked: boolean;
}

/** `GET /healthz`, 200 or 503. */
export interface Health {
  status: "ok" | "shutting_down";
  /** In a cluster: whether this node reaches its backend (a node cut off still serves). */
  redis?: "up" | "down";
}

/** `GET /readyz`, 200 or 503. */
export type Readiness =
  | { status: "ready" }
  | { status: "not_ready"; reason: "shutting_down" | "cut_off_from_backend" | (string & {}) };

/** What every host event carries besides its change. */
export interface EventMeta {
  /** The change's id: a number on one node, a string in a cluster and in webhooks. Drop repeats by it. */
  id: number | string;
  /** When it happened (ms since the epoch). */
  at: number;
  /** `true`: the user's overall presence changed; `false`: only in the listed rooms. */
  global: boolean;
  /** The rooms the change concerns. */
  rooms: string[];
}

/** The user came online (or, with `global: false`, entered rooms while online). */
export interface UserConnected extends EventMeta {
  type: "user_connected";
  presence: PresenceView;
}
/** The user went offline. */
export interface UserDisconnected extends EventMeta {
  type: "user_disconnected";
  user: string;
  last_seen: number;
}
/** The user left rooms, still online elsewhere. */
export interface UserLeft extends EventMeta {
  type: "user_left";
  user: string;
}
/** The user is connected but no connection is active. */
export interface UserIdle extends EventMeta {
  type: "user_idle";
  user: string;
  reason: IdleReason;
}
/** A connection of the user became active. */
export interface UserActive extends EventMeta {
  type: "user_active";
  user: string;
}
/** The user changed status or text (going invisible reads as `user_disconnected`). */
export interface StatusChanged extends EventMeta {
  type: "status";
  user: string;
  status: Status;
  text?: string;
}
/** The user's `info` or `data` changed; both restated (absent: none). */
export interface DataChanged extends EventMeta {
  type: "data";
  user: string;
  info?: JsonObject;
  data?: JsonObject;
}
/** The user started typing in `rooms`. */
export interface TypingStarted extends EventMeta {
  type: "typing_started";
  user: string;
}
/** The user stopped typing (stopped, sent a message, expired or left). */
export interface TypingStopped extends EventMeta {
  type: "typing_stopped";
  user: string;
}
/** The user read `rooms` up to `marker`. */
export interface ReadMarker extends EventMeta {
  type: "read";
  user: string;
  marker: number;
}

/**
 * A connection's page shows another room, or none (`room: null`: none, the room was left, or the
 * connection is gone). Only with the server's `--viewing-events`; `rooms` is empty, `global` false.
 */
export interface Viewing extends EventMeta {
  type: "viewing";
  user: string;
  /** The node holding the connection (absent on a single node). */
  node?: string;
  /** The connection, as `devices()` names it. */
  conn: number;
  device: Device["kind"];
  room: string | null;
}

/** One host event: the change (tagged by `type`) plus its meta. */
export type PresenceEventData =
  | UserConnected
  | UserDisconnected
  | UserLeft
  | UserIdle
  | UserActive
  | StatusChanged
  | DataChanged
  | TypingStarted
  | TypingStopped
  | ReadMarker
  | Viewing;

/** The kinds of host events (`event:` of the feed, `type` of the data). */
export type PresenceEventKind = PresenceEventData["type"];

/**
 * Events are missing here: the position asked for is older than what the server keeps, or a node
 * had to drop events it could not store. Resynchronise what you keep from the HTTP API.
 * One node: `{after, oldest, next}`; a cluster reader: `{shard, after, first, last}`; a node's
 * dropped events: `{node, dropped}`.
 */
export interface GapData {
  after?: number | string;
  oldest?: number;
  next?: number;
  shard?: number;
  first?: string | null;
  last?: string;
  node?: string;
  dropped?: number;
  [key: string]: JsonValue | undefined;
}

/** A `gap` entry of a webhook batch (in a cluster). */
export interface WebhookGap extends GapData {
  type: "gap";
}

/** A host event of `client.events()`, by kind. */
export type PresenceFeedEvent = {
  [K in PresenceEventKind]: {
    /** The feed position after this event: pass it as `lastEventId` to resume after it. */
    id: string;
    kind: K;
    data: Extract<PresenceEventData, { type: K }>;
  };
}[PresenceEventKind];

/** A `gap` of `client.events()`: events are missing before the next one. */
export interface GapEvent {
  /** The feed position the gap was told at ("" before any event). */
  id: string;
  kind: "gap";
  data: GapData;
}

/** One item of `client.events()`: switch on `kind` and `data` has that event's shape. */
export type FeedEvent = PresenceFeedEvent | GapEvent;

/** `client.events()` options. */
export interface EventsOptions {
  /** Resume after this feed position (a `FeedEvent.id`). Without it the feed starts now. */
  lastEventId?: string;
  /** Aborting ends the iteration cleanly (no error). `break` out of the loop does too. */
  signal?: AbortSignal;
  /** Called with each `gap` event, before it is yielded. */
  onGap?: (event: GapEvent) => void;
  /** Called each time the feed is connected (200 with an event stream), before its first event. */
  onOpen?: (info: { lastEventId?: string }) => void;
  /** Called before each reconnect with what ended the last connection and the wait in ms. */
  onRetry?: (error: PresenceError, delayMs: number) => void;
  /** Longest line and longest event the parser buffers, in characters; past it the iteration
   * throws `event_too_large`. Default 1 MiB. */
  maxEventBytes?: number;
  /** Reconnect when nothing at all (not even the server's 15 s keep-alive) came for this long.
   * Default 45 s. */
  stallTimeoutMs?: number;
}

/** Options of a request. */
export interface RequestOptions {
  /** Aborts the request: it then rejects with `PresenceError` code `aborted`. */
  signal?: AbortSignal;
}

/** `new PresenceClient(...)` options. */
export interface PresenceClientOptions {
  /** Where the server's `/v1/...` routes are, e.g. `http://127.0.0.1:4000` (a path prefix is kept). */
  url: string;
  /** The server's `--service-key`, sent as `Authorization: Bearer`. A user token may read
   * (presence, bulk, members, count) what that user may see. */
  serviceKey?: string;
  /** Where `/healthz` and `/readyz` are, when an app mounts them elsewhere. Default: `url`. */
  opsUrl?: string;
  /** A fetch to use instead of the global one (proxies, tests). */
  fetch?: typeof globalThis.fetch;
  /** How long a request may take, in ms; for `events()`, until the answer's head. Default 10 s. */
  timeoutMs?: number;
}

/** One live connection of a user, as backends see it. */
export interface Device {
  /** The node holding it (absent on a single node). */
  node?: string;
  conn: number;
  kind: "desktop" | "mobile" | "tablet" | "other";
  state: "active" | "idle";
  /** While idle: `hidden`, `blurred` and `locked` mean the page is not in front of the user. */
  reason?: "no_input" | "hidden" | "blurred" | "locked";
  /** The joined room its page shows. */
  view?: string;
  /** Milliseconds since its last input, as far as its reports tell. */
  quiet_ms: number;
}

/** `GET /v1/users/{id}/devices`. */
export interface Devices {
  user: string;
  devices: Device[];
  /** False when a node holding the user did not answer in time (its devices are missing). */
  complete: boolean;
}

/** `GET /v1/users/{id}/notify`: the decision, the rule's reason, and the devices it came from. */
export interface Notification extends Devices {
  decision: "live" | "push" | "none";
  reason: "read" | "offline" | "viewing" | "busy" | "active" | "background" | "idle" | "recent";
}

/** Who sees a user's `last_seen`: anyone who sees their presence, their contacts (the server's
 * audience policy decides; the binary: users whose token `watch` claim names them), or nobody. */
export type LastSeenSetting = "everyone" | "contacts" | "nobody";
/** `off`: markers the user reads from then on are shown to nobody, and they see nobody's. */
export type ReceiptsSetting = "on" | "off";

/** `GET`/`PUT /v1/users/{id}/privacy`: a user's privacy settings (PROTOCOL.md, "Privacy"). */
export interface Privacy {
  user: string;
  /** `everyone` by default. */
  last_seen: LastSeenSetting;
  /** `on` by default. */
  receipts: ReceiptsSetting;
}

/** What `setPrivacy` changes; a setting left out is kept as it is. */
export interface PrivacyChange {
  lastSeen?: LastSeenSetting;
  receipts?: ReceiptsSetting;
}

/** The presence server's HTTP API. Every method rejects with a `PresenceError`. */
export class PresenceClient {
  constructor(options: PresenceClientOptions);
  /** `GET /v1/users/{user}/presence`. */
  presence(user: string, options?: RequestOptions): Promise<PresenceView>;
  /** `GET /v1/users/{user}/devices` (service key): the user's live connections on every node. */
  devices(user: string, options?: RequestOptions): Promise<Devices>;
  /**
   * `GET /v1/users/{user}/notify` (service key): should a message in `room` reach the user live,
   * by a push, or not at all? `mention`: it names them (reaches a busy user); `marker`: its
   * sequence number (a user who read that far gets `none`/`read`). PROTOCOL.md, "Devices and
   * notifications", has the rule.
   */
  notify(
    user: string,
    room: string,
    options?: { mention?: boolean; marker?: number } & RequestOptions,
  ): Promise<Notification>;
  /**
   * `GET /v1/users/{user}/privacy` (service key, or the user's own token): the user's settings,
   * the latest any node knew.
   */
  privacy(user: string, options?: RequestOptions): Promise<Privacy>;
  /**
   * `PUT /v1/users/{user}/privacy` (service key): changes the settings given, connected or not,
   * on every node (the latest setting wins); the others are kept. Resolves with the settings now.
   * A value outside the enums rejects with `invalid_field`. It applies to what is sent from then
   * on: a last seen or a marker already shown is not taken back.
   */
  setPrivacy(user: string, change: PrivacyChange, options?: RequestOptions): Promise<Privacy>;
  /** `POST /v1/presence/bulk` (at most 500 users per call by default). */
  bulk(users: string[], options?: RequestOptions): Promise<BulkPresence>;
  /** `GET /v1/rooms/{room}/members`: one page of at most `limit` (1–1000) members after `after`. */
  members(room: string, options?: { after?: string; limit?: number } & RequestOptions): Promise<MembersPage>;
  /** Every member of the room, fetching page after page (`limit` per page) as you iterate. */
  allMembers(room: string, options?: { limit?: number } & RequestOptions): AsyncGenerator<PresenceView, void, undefined>;
  /** `GET /v1/rooms/{room}/count`. */
  count(room: string, options?: RequestOptions): Promise<RoomCount>;
  /** `POST /v1/rooms/{room}/messages/sent`: the app stored a message from `user`; their typing
   * indicator in the room stops now, on every node. */
  messageSent(room: string, user: string, options?: RequestOptions): Promise<void>;
  /** `POST /v1/users/{user}/disconnect`: closes the user's sockets on every node with `code`
   * (4101 by default, 1008, 1001 or 1000); `revoke` refuses their tokens issued before now. */
  disconnect(user: string, options?: { code?: 4101 | 1008 | 1001 | 1000; revoke?: boolean } & RequestOptions): Promise<Disconnected>;
  /** `GET /healthz`: resolves with the body of a 200 and of a 503 (`shutting_down`). */
  healthz(options?: RequestOptions): Promise<Health>;
  /** `GET /readyz`: resolves with the body of a 200 and of a 503 (`not_ready`). */
  readyz(options?: RequestOptions): Promise<Readiness>;
  /**
   * `GET /v1/events` (service key): every host event as it happens, resuming by itself after
   * drops and restarts (`Last-Event-ID`, exponential backoff with jitter from 250 ms to 30 s,
   * the server's `retry:`). Throws a `PresenceError` when the server refuses the request for
   * good (400 `bad_last_event_id`/`foreign_last_event_id`, 401, 403) or the
   * stream is unreadable (`event_too_large`, `bad_response`).
   */
  events(options?: EventsOptions): AsyncGenerator<FeedEvent, void, undefined>;
}

/** Codes this package gives besides the server's (`unauthorized`, `forbidden`, `invalid_field`, …). */
export type ClientErrorCode =
  | "network"
  | "timeout"
  | "aborted"
  | "bad_response"
  | "event_too_large"
  | "stream_ended"
  | `http_${number}`;

/** A request that failed. */
export class PresenceError extends Error {
  readonly name: "PresenceError";
  /** The HTTP status, when the server answered. */
  readonly status: number | undefined;
  /** The server's error code (`unauthorized`, `forbidden`, `invalid_field`, `malformed`,
   * `too_large`, `unavailable`, `cluster_unavailable`, `bad_last_event_id`,
   * `foreign_last_event_id`, `too_many_readers`, `stream_unavailable`) or one of this package's. */
  readonly code: ClientErrorCode | (string & {});
}

/** Why a webhook request was refused. */
export type WebhookErrorCode =
  | "missing_timestamp"
  | "missing_signature"
  | "bad_timestamp"
  | "bad_signature"
  | "stale_timestamp"
  | "bad_body";

/** A webhook request that does not verify. Answer it with 400 (or 401). */
export class WebhookError extends Error {
  readonly name: "WebhookError";
  readonly code: WebhookErrorCode;
}

/** Headers as Node's `req.headers` or a fetch `Headers`. */
export type HeadersLike = { get(name: string): string | null } | Record<string, string | string[] | undefined>;

/** `verifyWebhook` options. */
export interface VerifyWebhookOptions {
  /** The raw request body, exactly as received (not a re-serialized object). */
  body: string | Uint8Array;
  /** The request's headers (`presence-timestamp`, `presence-signature`). */
  headers: HeadersLike;
  /** The server's `--webhook-secret`; several while you rotate it (any one may match). */
  secret: string | Uint8Array | Array<string | Uint8Array>;
  /** How far the timestamp may be from `now`, either way. Default 300000 (5 min). */
  toleranceMs?: number;
  /** The time to check against, ms since the epoch. Default `Date.now()`. */
  now?: number;
}

/** A verified webhook request. */
export interface WebhookDelivery {
  /** `presence-timestamp`: when it was signed (unix seconds). */
  timestamp: number;
  /** The events, oldest first; deliveries are at least once: drop repeats by `id`. */
  events: Array<PresenceEventData | WebhookGap>;
}

/** Checks a webhook request (HMAC-SHA256 over `<timestamp>.<body>`, constant-time compare,
 * timestamp within `toleranceMs`) and returns its events; throws a `WebhookError` otherwise. */
export function verifyWebhook(options: VerifyWebhookOptions): WebhookDelivery;
