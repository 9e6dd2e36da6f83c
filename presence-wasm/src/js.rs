//! The JavaScript shapes: options in, events and snapshots out, errors with
//! codes. Every shape here has its TypeScript twin in `types.d.ts` text below.

use presence_core::client::VecMap;
use presence_core::client::{ClientEvent, ConnectionState};
use presence_core::{PresenceView, RoomId, UserId};
use serde::Serialize;
use wasm_bindgen::prelude::*;

#[wasm_bindgen(typescript_custom_section)]
const TYPES: &str = r#"
/** Options for `PresenceClient.connect`. */
export interface ConnectOptions {
  /** WebSocket URL of the presence server, e.g. `wss://example.com/ws`. */
  url: string;
  /** Token the server verifies (a JWT, or a user name in the server's dev mode). */
  token: string;
  /** No input for this long makes this tab idle. Default: the server's value (60 s). */
  idleAfterMs?: number;
  /** A hidden tab goes idle after this long. Default 5000. */
  hiddenAfterMs?: number;
  /** A blurred window goes idle after this long. Default 30000. */
  blurredAfterMs?: number;
  /** Keep the resume token in sessionStorage so a reload resumes silently. Default true. */
  resume?: boolean;
}

export type PresenceState = "active" | "idle" | "offline";
export type IdleReason = "no_input" | "hidden" | "blurred" | "locked";
export type Status = "available" | "away" | "busy" | "invisible";

/** One user's presence. Times are milliseconds since the Unix epoch. */
export interface Presence {
  user: string;
  state: PresenceState;
  reason?: IdleReason;
  status: Status;
  text?: string;
  lastActive?: number;
  lastSeen?: number;
}

/** A presence change; `room` is absent for watched users. */
export interface PresenceEvent { room?: string; presence: Presence; }
export interface TypingEvent { room: string; user: string; typing: boolean; }
export interface ReceiptEvent { room: string; user: string; marker: number; }
export type ConnectionEvent =
  | { state: "connecting" }
  | { state: "connected" }
  | { state: "reconnecting"; retryInMs: number; attempt: number }
  | { state: "closed"; code?: number };
export interface SelfStatusEvent { status: Status; text?: string; }
/** An error the server reported, with its stable code (see PROTOCOL.md). */
export interface ErrorEvent { code: string; message: string; }

export interface RoomSnapshot {
  members: Presence[];
  typing: string[];
  receipts: Record<string, number>;
}
/** Everything the client knows; a new object only when something changed. */
export interface PresenceSnapshot {
  connection: ConnectionEvent["state"];
  me?: string;
  status: Status;
  text?: string;
  rooms: Record<string, RoomSnapshot>;
  watched: Presence[];
}
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
    /// `(e: ErrorEvent) => void`.
    #[wasm_bindgen(typescript_type = "(event: ErrorEvent) => void")]
    pub type ErrorCallback;
    /// `() => void`, returned by every subscription.
    #[wasm_bindgen(typescript_type = "() => void")]
    pub type Unsubscribe;
    /// `Presence[]`.
    #[wasm_bindgen(typescript_type = "Presence[]")]
    pub type PresenceList;
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
    pub token: String,
    pub idle_after_ms: Option<u32>,
    pub hidden_after_ms: Option<u32>,
    pub blurred_after_ms: Option<u32>,
    pub resume: bool,
}

impl ConnectOptions {
    /// Reads the options object field by field (serde's deserializer would
    /// cost the bundle more than the whole client), with a clear error per
    /// field.
    pub fn read(o: &JsValue) -> Result<Self, JsValue> {
        if !o.is_object() {
            return Err(error("invalid_options", "options must be an object"));
        }
        let get = |k: &str| js_sys::Reflect::get(o, &k.into()).unwrap_or(JsValue::UNDEFINED);
        let string = |k: &str| {
            get(k)
                .as_string()
                .filter(|s| !s.is_empty())
                .ok_or_else(|| error("invalid_options", format!("{k} must be a non-empty string")))
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
                    format!("{k} must be a number of milliseconds (0 to 1 day)"),
                )),
            }
        };
        let resume = get("resume");
        Ok(Self {
            url: string("url")?,
            token: string("token")?,
            idle_after_ms: millis("idleAfterMs")?,
            hidden_after_ms: millis("hiddenAfterMs")?,
            blurred_after_ms: millis("blurredAfterMs")?,
            resume: resume.as_bool().unwrap_or(true),
        })
    }
}

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

/// A JS `Error` with a stable `code` property, so apps can branch on it.
pub fn error(code: &str, message: impl std::fmt::Display) -> JsValue {
    let e = js_sys::Error::new(&message.to_string());
    // Setting a property on a fresh Error object cannot fail.
    let _ = js_sys::Reflect::set(&e, &"code".into(), &code.into());
    e.into()
}

/// Parses a room id from JS, or an `invalid_argument` error.
pub fn room(s: &str) -> Result<RoomId, JsValue> {
    RoomId::new(s).map_err(|e| error("invalid_argument", e))
}

/// Parses user ids from JS, or an `invalid_argument` error.
pub fn users(list: Vec<String>) -> Result<Vec<UserId>, JsValue> {
    list.into_iter()
        .map(|s| UserId::new(s).map_err(|e| error("invalid_argument", e)))
        .collect()
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Presence<'a> {
    user: &'a str,
    state: presence_core::PresenceState,
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<presence_core::IdleReason>,
    status: presence_core::Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_active: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_seen: Option<u64>,
}

impl<'a> From<&'a PresenceView> for Presence<'a> {
    fn from(v: &'a PresenceView) -> Self {
        Self {
            user: v.user.as_str(),
            state: v.state,
            reason: v.reason,
            status: v.status,
            text: v.text.as_ref().map(|t| t.as_str()),
            last_active: v.last_active.map(|m| m.0),
            last_seen: v.last_seen.map(|m| m.0),
        }
    }
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
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase", untagged)]
enum Payload<'a> {
    Presence {
        #[serde(skip_serializing_if = "Option::is_none")]
        room: Option<&'a str>,
        presence: Presence<'a>,
    },
    Typing {
        room: &'a str,
        user: &'a str,
        typing: bool,
    },
    Receipt {
        room: &'a str,
        user: &'a str,
        marker: u64,
    },
    Connection {
        state: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        retry_in_ms: Option<u64>,
        #[serde(skip_serializing_if = "Option::is_none")]
        attempt: Option<u32>,
        #[serde(skip_serializing_if = "Option::is_none")]
        code: Option<u16>,
    },
    SelfStatus {
        status: presence_core::Status,
        #[serde(skip_serializing_if = "Option::is_none")]
        text: Option<&'a str>,
    },
    Error {
        code: &'static str,
        message: &'a str,
    },
}

/// The name JS sees for a connection state.
pub fn connection_name(c: ConnectionState) -> &'static str {
    match c {
        ConnectionState::Connecting => "connecting",
        ConnectionState::Connected => "connected",
        ConnectionState::Reconnecting { .. } => "reconnecting",
        ConnectionState::Closed { .. } => "closed",
    }
}

/// Converts a client event to its topic and JS object.
pub fn event(e: &ClientEvent) -> (Topic, JsValue) {
    let (topic, payload) = match e {
        ClientEvent::Presence { room, view } => (
            Topic::Presence,
            Payload::Presence {
                room: room.as_ref().map(RoomId::as_str),
                presence: view.into(),
            },
        ),
        ClientEvent::Typing { room, user, active } => (
            Topic::Typing,
            Payload::Typing {
                room: room.as_str(),
                user: user.as_str(),
                typing: *active,
            },
        ),
        ClientEvent::Receipt { room, user, marker } => (
            Topic::Receipt,
            Payload::Receipt {
                room: room.as_str(),
                user: user.as_str(),
                marker: *marker,
            },
        ),
        ClientEvent::Connection(c) => {
            let (retry_in_ms, attempt, code) = match *c {
                ConnectionState::Reconnecting { retry_in, attempt } => {
                    (Some(retry_in.as_millis() as u64), Some(attempt), None)
                }
                ConnectionState::Closed { code } => (None, None, code),
                _ => (None, None, None),
            };
            (
                Topic::Connection,
                Payload::Connection {
                    state: connection_name(*c),
                    retry_in_ms,
                    attempt,
                    code,
                },
            )
        }
        ClientEvent::SelfStatus { status, text } => (
            Topic::SelfStatus,
            Payload::SelfStatus {
                status: *status,
                text: text.as_ref().map(|t| t.as_str()),
            },
        ),
        ClientEvent::Error { code, message } => (
            Topic::Error,
            Payload::Error {
                code: code.as_str(),
                message,
            },
        ),
    };
    (topic, to_js(&payload))
}

/// Serializes to a plain JS object (maps as objects, not `Map`s).
pub fn to_js<T: Serialize + ?Sized>(value: &T) -> JsValue {
    let ser = serde_wasm_bindgen::Serializer::new().serialize_maps_as_objects(true);
    value.serialize(&ser).unwrap_or(JsValue::UNDEFINED)
}

#[derive(Serialize)]
struct RoomSnapshot<'a> {
    members: Vec<Presence<'a>>,
    typing: Vec<&'a str>,
    receipts: &'a VecMap<UserId, u64>,
}

#[derive(Serialize)]
struct Snapshot<'a> {
    connection: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    me: Option<&'a str>,
    status: presence_core::Status,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<String>,
    rooms: VecMap<&'a str, RoomSnapshot<'a>>,
    watched: Vec<Presence<'a>>,
}

/// The whole client state as one plain object.
pub fn snapshot(client: &presence_core::client::Client) -> JsValue {
    let cache = client.cache();
    let (status, text) = client.status();
    let mut rooms = VecMap::default();
    for (id, r) in cache.rooms().iter() {
        let room = RoomSnapshot {
            members: r.members.values().map(Into::into).collect(),
            typing: r.typing.iter().map(UserId::as_str).collect(),
            receipts: &r.receipts,
        };
        rooms.insert(id.as_str(), room);
    }
    let snap = Snapshot {
        connection: connection_name(client.connection()),
        me: client.me().map(UserId::as_str),
        status,
        text: text.map(|t| t.as_str().to_owned()),
        rooms,
        watched: cache.watched().values().map(Into::into).collect(),
    };
    to_js(&snap)
}
