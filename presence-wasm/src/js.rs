//! The JavaScript shapes: options in, events and snapshots out, errors with
//! codes. Every shape here has its TypeScript twin in the `TYPES` section below.

use alloc::string::String;
use alloc::vec::Vec;

use js_sys::Object;
use presence_core::client::{ClientError, ClientEvent, ConnectionState};
use presence_core::presence::InvalidStatusText;
use presence_core::{DeviceKind, InvalidId, PresenceView, RoomId, UserId};
use wasm_bindgen::prelude::*;

#[wasm_bindgen(typescript_custom_section)]
const TYPES: &str = r#"
/** Options for `PresenceClient.connect`. */
export interface ConnectOptions {
  /** WebSocket URL of the presence server, e.g. `wss://example.com/ws`. */
  url: string;
  /**
   * Token the server verifies (a JWT, or a user name in the server's dev mode). Give `token`,
   * `getToken`, or both (`token` is used first).
   */
  token?: string;
  /**
   * Hands out a fresh token: called before connecting without one, before the current token
   * expires (the server says when; with a quarter of its life left, at most a minute early), and
   * after the server refused one (close code 4101). Reject (or throw) when there is none, e.g.
   * the user logged out: the client then stops with connection state `unauthorized`. Without
   * `getToken`, a refused token stops it at once; `setToken` starts it again.
   */
  getToken?: () => Promise<string>;
  /** No input for this long makes this tab idle. Default: the server's value (60 s). */
  idleAfterMs?: number;
  /** A hidden tab goes idle after this long. Default 5000. */
  hiddenAfterMs?: number;
  /** A blurred window goes idle after this long. Default 30000. */
  blurredAfterMs?: number;
  /** Keep the resume token in sessionStorage so a reload resumes silently. Default true. */
  resume?: boolean;
  /**
   * Report `idle` with reason `locked` while the screen is locked, through the Idle Detection API
   * where the page already holds the `idle-detection` permission (ask for it with
   * `IdleDetector.requestPermission()` in a click handler). Never prompts. Default false.
   */
  idleDetection?: boolean;
  /**
   * What this page runs on, said to the server in every `hello`; only the app's backend sees it
   * (PROTOCOL.md, "Devices and notifications"). Default: from the browser, `mobile` where
   * `navigator.userAgentData.mobile` says so; else `tablet` where the user agent names `iPad` or
   * `Tablet`, `mobile` where it names `Mobi`, `Android` or `iPhone`; else `desktop`.
   */
  device?: DeviceKind;
}

/** The kind of device a connection runs on. */
export type DeviceKind = "desktop" | "mobile" | "tablet" | "other";

export type PresenceState = "active" | "idle" | "offline";
export type IdleReason = "no_input" | "hidden" | "blurred" | "locked";
export type Status = "available" | "away" | "busy" | "invisible";

/**
 * What the server says about a user while online (the token's `info` claim), e.g. name and avatar.
 * Declare your shape by augmenting it:
 * `declare module "@presence-rs/presence" { interface PresenceInfo { name: string } }`.
 */
export interface PresenceInfo { [key: string]: unknown }
/** What a user's client set with `setData` (latest wins over their tabs); augment it the same way. */
export interface PresenceData { [key: string]: unknown }

/**
 * One user's presence. Times are milliseconds since the Unix epoch. Fields keep their wire names
 * (PROTOCOL.md) but for `lastActive` and `lastSeen`.
 */
export interface Presence {
  user: string;
  state: PresenceState;
  reason?: IdleReason;
  status: Status;
  text?: string;
  /** While online, once known: when the user last became active or idle (`last_active` on the wire). */
  lastActive?: number;
  /** While offline, once known: when the user's last connection went (`last_seen` on the wire). */
  lastSeen?: number;
  /** While online only. */
  info?: PresenceInfo;
  /** While online only. */
  data?: PresenceData;
}

/**
 * What changed: in a room, `joined` (entered it online, or came online in it; every online member
 * of the first snapshot) and `left` (left it, still online elsewhere: no longer a member); for
 * watched users, `online`; anywhere, `offline`, `active`, `idle` (or idle for another reason) and
 * `status` (status or text) and `data` (`info` or `data`).
 */
export type PresenceKind =
  | "joined" | "online" | "left" | "offline" | "active" | "idle" | "status" | "data";
/**
 * A presence change, once per change (a resync that changes nothing fires nothing); `room` is
 * absent for watched users. For `left`, `presence` is the user as last seen in the room.
 */
export interface PresenceEvent { room?: string; presence: Presence; kind: PresenceKind; }
export interface TypingEvent { room: string; user: string; typing: boolean; }
export interface ReceiptEvent { room: string; user: string; marker: number; }
/** The connection's state, as in `ConnectionEvent` and `PresenceSnapshot.connection`. */
export type ConnectionState = ConnectionEvent["state"];
export type ConnectionEvent =
  | { state: "connecting" }
  | { state: "connected" }
  | { state: "reconnecting"; retryInMs: number; attempt: number }
  | { state: "closed"; code?: number }
  | { state: "unauthorized" };
export interface SelfStatusEvent { status: Status; text?: string; }
/**
 * Privacy settings (PROTOCOL.md, "Privacy"): who sees the user's last seen (`contacts`: those
 * the app's backend counts as contacts) and whether their read markers are shown; with receipts
 * off the user sees nobody's markers either.
 */
export interface Privacy { lastSeen: "everyone" | "contacts" | "nobody"; receipts: "on" | "off"; }
/**
 * A frame the server refused for good, with its stable code (see PROTOCOL.md), the frame's `type`
 * and the room or users it named. Refusals the SDK retries by itself (`rate_limited`, `internal`)
 * are not reported. After a refused `join` (this event names its `room`) the room is no longer
 * joined; refused watched users are no longer watched.
 */
export interface PresenceErrorEvent { code: string; message: string; frame?: string; room?: string; users?: string[]; }

/** How many of a room's members are online, and of them active and idle. */
export interface RoomCounts { online: number; active: number; idle: number; }

export interface RoomSnapshot {
  /** In a large room, some online members only: the first by id, and who came since. */
  members: Presence[];
  typing: string[];
  /** Read markers by user id, in an object without a prototype (see `PresenceSnapshot.rooms`). */
  receipts: Record<string, number>;
  /** Members online, active and idle: the server's count in a large room. */
  counts: RoomCounts;
  /**
   * The room is large (1,000 online by default, see PROTOCOL.md "Large rooms"): show `counts`
   * ("1,234 online"), and `watch` the members on screen to follow them.
   */
  large: boolean;
}
/** Everything the client knows; a new object only when something changed. */
export interface PresenceSnapshot {
  connection: ConnectionState;
  /**
   * `true` while what it shows may be out of date: not connected (the last known members are
   * kept), or after a reconnect until every joined room's snapshot and the watched users are back.
   * Render members greyed out, or as "reconnecting…", rather than as live.
   */
  stale: boolean;
  me?: string;
  status: Status;
  text?: string;
  /** The user's own privacy settings, as the server last said (both open until it says). */
  privacy: Privacy;
  /**
   * The joined rooms by id, in an object without a prototype (`Object.create(null)`): every id is
   * a key of its own, `__proto__` too, and a room nobody joined is `undefined` even when named
   * `constructor`. Read it with `rooms[id]`, `id in rooms`, `Object.keys` or `Object.entries`; it
   * has no methods (`rooms.hasOwnProperty` is `undefined`: use `Object.hasOwn(rooms, id)`).
   */
  rooms: Record<string, RoomSnapshot>;
  watched: Presence[];
}

/**
 * `[Symbol.dispose]` where the app's TypeScript `lib` declares that symbol (`esnext`, ES2026), so
 * `using` type-checks there; nothing where it does not (a default Vite app), which would otherwise
 * fail to compile these declarations.
 */
type DisposeKey = SymbolConstructor extends { readonly dispose: infer K extends symbol } ? K : never;

/**
 * A live presence connection for this page.
 *
 * Its methods are bound to it: pass them on as they are
 * (`useSyncExternalStore(client.subscribe, client.getSnapshot)`, `onClick={client.close}`).
 *
 * `close()`, `free()` and `[Symbol.dispose]` (`using`) all end it the same way: `leaving`, the
 * socket closed, listeners removed, never reconnected; any later call but `getSnapshot` throws an
 * `Error` with `code: "closed"`.
 */
export class PresenceClient {
    private constructor();
    /**
     * Connects to the server and starts watching this page's activity.
     * Throws an `Error` with `code: "invalid_options"` for bad options.
     */
    static connect(options: ConnectOptions): PresenceClient;
    /**
     * Binds typing to an `<input>` or `<textarea>`: input starts or refreshes
     * it, blur stops it. Returns a function that unbinds.
     */
    readonly bindTyping: (room: string, element: EventTarget) => () => void;
    /**
     * Says `leaving`, closes the socket and stops all listeners and
     * timers, for good. Calling it again does nothing; any other method
     * but `getSnapshot` then throws `closed`.
     */
    readonly close: () => void;
    /** The same as `close()` (and `[Symbol.dispose]`, for `using`). */
    readonly free: () => void;
    /**
     * `useSyncExternalStore`'s `getSnapshot`: the same object until
     * something changes, and within a new one every room, list and user
     * that did not change is still the same object. Still answers after
     * `close()` (React may read it while unmounting): the last state,
     * `connection: "closed"`, stale.
     */
    readonly getSnapshot: () => PresenceSnapshot;
    /**
     * Joins a room: its members' presence arrives as `onPresence` events.
     * Throws `too_many_rooms` beyond 64; a refusal by the server comes to
     * `onError` with `frame: "join"` and the `room`, and the room is then
     * no longer joined.
     */
    readonly join: (room: string) => void;
    /** Leaves a room. */
    readonly leave: (room: string) => void;
    /** The user read `room` up to `marker` (a message sequence number). */
    readonly markRead: (room: string, marker: number) => void;
    /** A room's members as last heard (empty until its snapshot arrives). */
    readonly members: (room: string) => Presence[];
    /** Connection state changes. */
    readonly onConnection: (listener: (event: ConnectionEvent) => void) => () => void;
    /** Errors the server reported, with stable codes. */
    readonly onError: (listener: (event: PresenceErrorEvent) => void) => () => void;
    /** Presence changes in joined rooms and of watched users. */
    readonly onPresence: (listener: (event: PresenceEvent) => void) => () => void;
    /** Read markers moved in joined rooms. */
    readonly onReceipt: (listener: (event: ReceiptEvent) => void) => () => void;
    /** The user's own status changed (from this or another tab or device). */
    readonly onSelfStatus: (listener: (event: SelfStatusEvent) => void) => () => void;
    /** Typing started or stopped in joined rooms. */
    readonly onTyping: (listener: (event: TypingEvent) => void) => () => void;
    /**
     * Sets the user's status (`available`, `away`, `busy`, `invisible`) and
     * an optional short text, for all their tabs and devices.
     */
    readonly setStatus: (status: Status, text?: string | null) => void;
    /**
     * Changes the user's privacy settings for all their tabs and devices (an absent one is kept;
     * sent again after a reconnect if not yet sent); `getSnapshot().privacy` shows them once the
     * server confirms. Throws `invalid_argument` for another value.
     */
    readonly setPrivacy: (settings: Partial<Privacy>) => void;
    /**
     * A fresh token: used for the next socket, sent to the server on a live one, and it restarts
     * a client stopped as `unauthorized`.
     */
    readonly setToken: (token: string) => void;
    /**
     * Sets this user's presence data, for all their tabs and devices (latest wins), shown to the
     * members of their rooms and their watchers while online; `null` clears it. A plain
     * JSON-serialisable object nested at most 8 deep: throws `invalid_argument` otherwise, and
     * `data_too_large` beyond 4 KB; the server's own limit (1 KiB by default) comes to `onError`
     * as `data_too_large` with `frame: "data"`. Resent after a reconnect.
     */
    readonly setData: <T extends PresenceData = PresenceData>(data: T | null) => void;
    /** The user stopped typing (composer blurred, message sent). */
    readonly stopTyping: (room: string) => void;
    /**
     * The joined room this page shows, or `null` for none: call it when the page shows a room
     * (route change, tab switch in the app), so the app's backend can tell a message seen as it
     * arrives from one to push (PROTOCOL.md, "Devices and notifications"). A hidden, blurred or
     * locked page counts as viewing nothing by itself; leaving the room views none; restored
     * after every reconnect. Throws `not_in_room` for a room not joined.
     */
    readonly view: (room: string | null) => void;
    /**
     * `useSyncExternalStore`'s `subscribe`: calls `onChange` after any
     * change. Returns a function that unsubscribes.
     */
    readonly subscribe: (onChange: () => void) => () => void;
    /** The user typed in a room's composer (call on every input; throttled). */
    readonly typing: (room: string) => void;
    /** Stops watching users. */
    readonly unwatch: (users: string[]) => void;
    /** Watches users wherever they are (a contact list). */
    readonly watch: (users: string[]) => void;
}
/** `[Symbol.dispose]`: see `DisposeKey`. */
export interface PresenceClient extends Record<DisposeKey, () => void> {}
"#;

#[wasm_bindgen]
extern "C" {
    /// `ConnectOptions` in TypeScript.
    #[wasm_bindgen(typescript_type = "ConnectOptions")]
    pub type JsConnectOptions;
    /// `(e: PresenceEvent) => void`.
    #[wasm_bindgen(typescript_type = "(event: PresenceEvent) => void")]
    pub type PresenceCallback;
    /// `(e: TypingEvent) => void`.
    #[wasm_bindgen(typescript_type = "(event: TypingEvent) => void")]
    pub type TypingCallback;
    /// `(e: ReceiptEvent) => void`.
    #[wasm_bindgen(typescript_type = "(event: ReceiptEvent) => void")]
    pub type ReceiptCallback;
    /// `(e: ConnectionEvent) => void`.
    #[wasm_bindgen(typescript_type = "(event: ConnectionEvent) => void")]
    pub type ConnectionCallback;
    /// `(e: SelfStatusEvent) => void`.
    #[wasm_bindgen(typescript_type = "(event: SelfStatusEvent) => void")]
    pub type SelfStatusCallback;
    /// `(e: PresenceErrorEvent) => void`.
    #[wasm_bindgen(typescript_type = "(event: PresenceErrorEvent) => void")]
    pub type ErrorCallback;
    /// `() => void`, returned by every subscription.
    #[wasm_bindgen(typescript_type = "() => void")]
    pub type Unsubscribe;
    /// `Presence[]`.
    #[wasm_bindgen(typescript_type = "Presence[]")]
    pub type PresenceList;
    /// `string[]`: user ids.
    #[wasm_bindgen(typescript_type = "string[]")]
    pub type UserList;
    /// `PresenceSnapshot`.
    #[wasm_bindgen(typescript_type = "PresenceSnapshot")]
    pub type JsSnapshot;
    /// `Status`.
    #[wasm_bindgen(typescript_type = "Status")]
    pub type JsStatus;
}

/// `ConnectOptions`, decoded.
pub struct ConnectOptions {
    pub url: String,
    pub token: Option<String>,
    pub get_token: Option<js_sys::Function>,
    pub idle_after_ms: Option<u32>,
    pub hidden_after_ms: Option<u32>,
    pub blurred_after_ms: Option<u32>,
    pub resume: bool,
    pub idle_detection: bool,
    pub device: DeviceKind,
}

impl ConnectOptions {
    /// Reads the options object field by field (serde's deserializer would
    /// cost the bundle more than the whole client), with a clear error per
    /// field.
    pub fn read(o: &JsValue) -> Result<Self, JsValue> {
        if !o.is_object() {
            return Err(error("invalid_options", "options must be an object"));
        }
        let get = |k: &str| field(o, k);
        let string = |k: &str| {
            get(k)
                .as_string()
                .filter(|s| !s.is_empty())
                .ok_or_else(|| error("invalid_options", &cat(k, " must be a non-empty string")))
        };
        let millis = |k: &str| -> Result<Option<u32>, JsValue> {
            let v = get(k);
            if v.is_undefined() {
                return Ok(None);
            }
            match v.as_f64() {
                Some(n) if (0.0..=86_400_000.0).contains(&n) => Ok(Some(n as u32)),
                _ => Err(error(
                    "invalid_options",
                    &cat(k, " must be a number of milliseconds (0 to 1 day)"),
                )),
            }
        };
        let flag = |k: &str, default: bool| -> Result<bool, JsValue> {
            let v = get(k);
            if v.is_undefined() {
                return Ok(default);
            }
            v.as_bool()
                .ok_or_else(|| error("invalid_options", &cat(k, " must be a boolean")))
        };
        let token = match get("token").is_undefined() {
            true => None,
            false => Some(string("token")?),
        };
        let get_token = get("getToken");
        let get_token = match get_token.is_undefined() {
            true => None,
            false => Some(
                get_token
                    .dyn_into::<js_sys::Function>()
                    .map_err(|_| error("invalid_options", "getToken must be a function"))?,
            ),
        };
        if token.is_none() && get_token.is_none() {
            return Err(error("invalid_options", "give token or getToken"));
        }
        Ok(Self {
            url: string("url")?,
            token,
            get_token,
            idle_after_ms: millis("idleAfterMs")?,
            hidden_after_ms: millis("hiddenAfterMs")?,
            blurred_after_ms: millis("blurredAfterMs")?,
            resume: flag("resume", true)?,
            idle_detection: flag("idleDetection", false)?,
            device: *DEVICES
                .get(device(&get("device")) as usize)
                .ok_or_else(|| {
                    error(
                        "invalid_options",
                        "device must be desktop, mobile, tablet or other",
                    )
                })?,
        })
    }
}

/// The `device` option's values, in the order of `device` in browser.js.
const DEVICES: [DeviceKind; 4] = [
    DeviceKind::Desktop,
    DeviceKind::Mobile,
    DeviceKind::Tablet,
    DeviceKind::Other,
];

/// Parses a status name from JS.
pub fn status(v: &JsValue) -> Result<presence_core::Status, JsValue> {
    use presence_core::Status::*;
    match v.as_string().as_deref() {
        Some("available") => Ok(Available),
        Some("away") => Ok(Away),
        Some("busy") => Ok(Busy),
        Some("invisible") => Ok(Invisible),
        _ => Err(error(
            "invalid_argument",
            "status must be available, away, busy or invisible",
        )),
    }
}

#[wasm_bindgen(module = "/src/browser.js")]
extern "C" {
    /// `o[key] = value` (`Reflect.set` throws, so each call carried its
    /// catching glue, and the key went through a `JsValue`).
    fn put(o: &JsValue, key: &str, value: &JsValue);
    /// `o[key]` (see [`put`]); `undefined` for a missing field.
    fn field(o: &JsValue, key: &str) -> JsValue;
    /// `Object.create(null)`: an object with no prototype, for maps keyed by ids.
    fn dict() -> Object;
    /// `JSON.parse`, for objects the server sent.
    #[wasm_bindgen(js_name = parseJson)]
    fn parse_json(text: &str) -> JsValue;
    /// `JSON.stringify`; `None` if `v` cannot be.
    #[wasm_bindgen(js_name = jsonOf)]
    pub fn json_of(v: &JsValue) -> Option<String>;
    /// The `device` option (or the browser's kind) as its index in
    /// [`DEVICES`]; -1 (as `u32::MAX`) for anything else.
    fn device(v: &JsValue) -> u32;
}

/// A JS `Error` with a stable `code` property, so apps can branch on it.
#[inline(never)]
pub fn error(code: &str, message: &str) -> JsValue {
    let e = js_sys::Error::new(message);
    // Setting a property on a fresh Error object cannot fail.
    put(&e, "code", &code.into());
    e.into()
}

/// `a` then `b` (`[a, b].concat()` costs the bundle a generic join).
pub fn cat(a: &str, b: &str) -> String {
    let mut s = String::from(a);
    s.push_str(b);
    s
}

/// A client call's refusal as a coded `Error`.
pub fn client_error(e: ClientError) -> JsValue {
    error(e.code(), e.message())
}

/// An id's refusal as an `invalid_argument` error. The message is built here
/// rather than through its `Display` (which would bring `core::fmt` into the
/// bundle); a native test checks that the two agree.
pub fn id_error(e: InvalidId) -> JsValue {
    error("invalid_argument", &id_message(&e))
}

fn id_message(e: &InvalidId) -> String {
    let (kind, rest) = match e {
        InvalidId::Empty { kind } => (kind, " must not be empty"),
        InvalidId::TooLong { kind, max } => {
            let mut s = cat(kind, " is longer than ");
            push_decimal(&mut s, *max);
            s.push_str(" bytes");
            return s;
        }
        InvalidId::BadCharacter { kind } => {
            (kind, " may not contain control characters or whitespace")
        }
    };
    cat(kind, rest)
}

fn push_decimal(s: &mut String, n: usize) {
    if n >= 10 {
        push_decimal(s, n / 10);
    }
    s.push(char::from(b'0' + (n % 10) as u8));
}

/// A status text's refusal as an `invalid_argument` error (see [`id_error`]).
pub fn text_error(e: InvalidStatusText) -> JsValue {
    error("invalid_argument", &text_message(e))
}

fn text_message(e: InvalidStatusText) -> String {
    match e {
        InvalidStatusText::TooLong => {
            let mut s = String::from("status text is longer than ");
            push_decimal(&mut s, presence_core::limits::MAX_STATUS_TEXT_CHARS);
            s.push_str(" characters");
            s
        }
        InvalidStatusText::Empty => "status text must not be empty; omit the field instead".into(),
        InvalidStatusText::BadCharacter => "status text may not contain control characters".into(),
    }
}

/// A string argument, or an `invalid_argument` error naming it.
pub fn string(v: &JsValue, name: &str) -> Result<String, JsValue> {
    v.as_string()
        .ok_or_else(|| error("invalid_argument", &cat(name, " must be a string")))
}

/// A privacy setting: absent or `null` is `None`; any other value must be
/// one `parse` knows, or an `invalid_argument` error.
pub fn setting<T>(v: &JsValue, parse: fn(&str) -> Option<T>) -> Result<Option<T>, JsValue> {
    if v.is_null_or_undefined() {
        return Ok(None);
    }
    let parsed = v.as_string().as_deref().and_then(parse);
    parsed.map(Some).ok_or_else(bad_privacy)
}

/// The refusal of privacy settings that are not some of the known ones.
pub fn bad_privacy() -> JsValue {
    error(
        "invalid_argument",
        "setPrivacy takes lastSeen (everyone, contacts or nobody) and/or receipts (on or off)",
    )
}

/// Parses a room id from JS, or an `invalid_argument` error.
pub fn room(s: &str) -> Result<RoomId, JsValue> {
    RoomId::new(s).map_err(id_error)
}

/// Parses user ids from JS, or an `invalid_argument` error.
pub fn users(list: &JsValue) -> Result<Vec<UserId>, JsValue> {
    let not_ids = || {
        error(
            "invalid_argument",
            "users must be an array of user id strings",
        )
    };
    if !js_sys::Array::is_array(list) {
        return Err(not_ids());
    }
    // A loop, not `collect::<Result<_, _>>()`, whose adapter the bundle paid for.
    let mut out = Vec::new();
    for v in list.unchecked_ref::<js_sys::Array>().iter() {
        let s = v.as_string().ok_or_else(not_ids)?;
        out.push(UserId::new(s).map_err(id_error)?);
    }
    Ok(out)
}

/// A plain JS object built field by field: smaller in the bundle than a
/// serde serializer, and exactly the shape the TypeScript types promise.
struct Obj(Object);

impl Obj {
    fn new() -> Self {
        Self(Object::new())
    }

    /// A map keyed by room or user ids (see `dict` in browser.js).
    fn dict() -> Self {
        Self(dict())
    }

    fn set(self, key: &str, value: impl Into<JsValue>) -> Self {
        self.put(key, value.into())
    }

    /// The one copy of the property write: inlined at every `set`, it cost
    /// the bundle kilobytes.
    #[inline(never)]
    fn put(self, key: &str, value: JsValue) -> Self {
        // Defining a property on a fresh plain object cannot fail.
        put(&self.0, key, &value);
        self
    }

    fn opt(self, key: &str, value: Option<impl Into<JsValue>>) -> Self {
        match value {
            Some(v) => self.set(key, v),
            None => self,
        }
    }

    fn done(self) -> JsValue {
        self.0.into()
    }
}

fn state_name(s: presence_core::PresenceState) -> &'static str {
    use presence_core::PresenceState::*;
    match s {
        Active => "active",
        Idle => "idle",
        Offline => "offline",
    }
}

fn reason_name(r: presence_core::IdleReason) -> &'static str {
    use presence_core::IdleReason::*;
    match r {
        NoInput => "no_input",
        Hidden => "hidden",
        Blurred => "blurred",
        Locked => "locked",
    }
}

fn status_name(s: presence_core::Status) -> &'static str {
    use presence_core::Status::*;
    match s {
        Available => "available",
        Away => "away",
        Busy => "busy",
        Invisible => "invisible",
    }
}

/// A `Presence` object.
pub fn presence(v: &PresenceView) -> JsValue {
    Obj::new()
        .set("user", v.user.as_str())
        .set("state", state_name(v.state))
        .opt("reason", v.reason.map(reason_name))
        .set("status", status_name(v.status))
        .opt("text", v.text.as_ref().map(|t| t.as_str()))
        .opt("lastActive", v.last_active.map(|m| m.0 as f64))
        .opt("lastSeen", v.last_seen.map(|m| m.0 as f64))
        .opt("info", v.info.as_ref().map(|o| parse_json(o.as_str())))
        .opt("data", v.data.as_ref().map(|o| parse_json(o.as_str())))
        .done()
}

/// A `Presence[]` array.
pub fn presence_list<'a>(views: impl Iterator<Item = &'a PresenceView>) -> JsValue {
    views.map(presence).collect::<js_sys::Array>().into()
}

/// Which callback list an event goes to.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Topic {
    Presence,
    Typing,
    Receipt,
    Connection,
    SelfStatus,
    Error,
    /// `subscribe`: called with no argument after any change.
    Store,
}

/// The name JS sees for a connection state.
pub fn connection_name(c: ConnectionState) -> &'static str {
    match c {
        ConnectionState::Connecting => "connecting",
        ConnectionState::Connected => "connected",
        ConnectionState::Reconnecting { .. } => "reconnecting",
        ConnectionState::Closed { .. } => "closed",
        ConnectionState::Unauthorized => "unauthorized",
    }
}

/// Converts a client event to its topic and JS object (none for the ones
/// the SDK handles itself).
pub fn event(e: &ClientEvent) -> Option<(Topic, JsValue)> {
    Some(match e {
        ClientEvent::Presence { room, view, kind } => (
            Topic::Presence,
            Obj::new()
                .opt("room", room.as_ref().map(RoomId::as_str))
                .set("presence", presence(view))
                .set("kind", kind.name())
                .done(),
        ),
        ClientEvent::Typing { room, user, active } => (
            Topic::Typing,
            Obj::new()
                .set("room", room.as_str())
                .set("user", user.as_str())
                .set("typing", *active)
                .done(),
        ),
        ClientEvent::Receipt { room, user, marker } => (
            Topic::Receipt,
            Obj::new()
                .set("room", room.as_str())
                .set("user", user.as_str())
                .set("marker", *marker as f64)
                .done(),
        ),
        ClientEvent::Connection(c) => {
            let mut o = Obj::new().set("state", connection_name(*c));
            match *c {
                ConnectionState::Reconnecting { retry_in, attempt } => {
                    o = o
                        .set("retryInMs", retry_in.as_millis() as f64)
                        .set("attempt", attempt);
                }
                ConnectionState::Closed { code } => o = o.opt("code", code),
                _ => {}
            }
            (Topic::Connection, o.done())
        }
        ClientEvent::SelfStatus { status, text } => (
            Topic::SelfStatus,
            Obj::new()
                .set("status", status_name(*status))
                .opt("text", text.as_ref().map(|t| t.as_str()))
                .done(),
        ),
        ClientEvent::Error {
            code,
            message,
            frame,
            room,
            users,
        } => (
            Topic::Error,
            Obj::new()
                .set("code", code.as_str())
                .set("message", message.as_str())
                .opt("frame", frame.as_deref())
                .opt("room", room.as_ref().map(RoomId::as_str))
                .opt(
                    "users",
                    (!users.is_empty()).then(|| {
                        users
                            .iter()
                            .map(|u| JsValue::from(u.as_str()))
                            .collect::<js_sys::Array>()
                    }),
                )
                .done(),
        ),
        // The snapshot shows it.
        ClientEvent::Joined(_) | ClientEvent::Counts(_) | ClientEvent::SelfPrivacy(_) => {
            return None;
        }
    })
}

fn privacy(p: presence_core::Privacy) -> JsValue {
    Obj::new()
        .set("lastSeen", p.last_seen.as_str())
        .set("receipts", p.receipts.as_str())
        .done()
}

/// The whole client state as one plain object.
pub fn snapshot(client: &presence_core::client::Client) -> JsValue {
    let cache = client.cache();
    let (status, text) = client.status();
    let rooms = Obj::dict();
    let rooms = cache.rooms().iter().fold(rooms, |rooms, (id, r)| {
        let receipts = r
            .receipts
            .iter()
            .fold(Obj::dict(), |o, (u, m)| o.set(u.as_str(), *m as f64));
        let typing: js_sys::Array = r.typing.iter().map(|u| JsValue::from(u.as_str())).collect();
        let c = r.counts();
        let counts = Obj::new()
            .set("online", c.online as u32)
            .set("active", c.active as u32)
            .set("idle", c.idle as u32);
        let room = Obj::new()
            .set("members", presence_list(r.members.values()))
            .set("typing", typing)
            .set("receipts", receipts.done())
            .set("counts", counts.done())
            .set("large", r.large.is_some());
        rooms.set(id.as_str(), room.done())
    });
    Obj::new()
        .set("connection", connection_name(client.connection()))
        .set("stale", client.is_stale())
        .opt("me", client.me().map(UserId::as_str))
        .set("status", status_name(status))
        .opt("text", text.as_ref().map(|t| t.as_str()))
        .set("privacy", privacy(client.privacy()))
        .set("rooms", rooms.done())
        .set("watched", presence_list(cache.watched().values()))
        .done()
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::ToString;

    #[test]
    fn messages_built_without_fmt_match_the_display_impls() {
        for e in [
            InvalidId::Empty { kind: "room id" },
            InvalidId::TooLong {
                kind: "user id",
                max: 128,
            },
            InvalidId::BadCharacter { kind: "room id" },
        ] {
            assert_eq!(id_message(&e), e.to_string());
        }
        for e in [
            InvalidStatusText::TooLong,
            InvalidStatusText::Empty,
            InvalidStatusText::BadCharacter,
        ] {
            assert_eq!(text_message(e.clone()), e.to_string());
        }
    }
}
