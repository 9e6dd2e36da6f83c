//! Decoding server frames by hand, for clients.
//!
//! serde's derive for internally tagged enums (`"type": …`) buffers every
//! frame into an intermediate tree and instantiates that machinery per enum;
//! in the browser SDK it cost over 100 KB of wasm. Clients instead parse into
//! a `serde_json::Value` once and pick the fields here. The golden vectors
//! check that this agrees with the derived encoding.

use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::protocol::codec::DecodeError;
use crate::protocol::{Diff, ErrorCode, Receipt, ServerMessage};

type Object = Map<String, Value>;

fn invalid(frame: &str, message: String) -> DecodeError {
    DecodeError {
        code: ErrorCode::InvalidField,
        message,
        frame: Some(frame.to_owned()),
    }
}

/// Reads one field of `o` through its serde type (ids, enums, views).
fn field<T: DeserializeOwned>(o: &Object, frame: &str, key: &str) -> Result<T, DecodeError> {
    let value = o.get(key).cloned().unwrap_or(Value::Null);
    // The message names the field, not serde's reason: formatting serde's
    // errors pulls float printing into the browser bundle.
    serde_json::from_value(value).map_err(|_| invalid(frame, format!("{key}: missing or invalid")))
}

fn diff(v: Value) -> Result<Diff, DecodeError> {
    let Value::Object(o) = v else {
        return Err(invalid("diffs", "a diff must be an object".into()));
    };
    let kind = o.get("type").and_then(Value::as_str).unwrap_or_default();
    Ok(match kind {
        "user_connected" => Diff::UserConnected {
            presence: field(&o, kind, "presence")?,
        },
        "user_disconnected" => Diff::UserDisconnected {
            user: field(&o, kind, "user")?,
            last_seen: field(&o, kind, "last_seen")?,
        },
        "user_idle" => Diff::UserIdle {
            user: field(&o, kind, "user")?,
            reason: field(&o, kind, "reason")?,
        },
        "user_active" => Diff::UserActive {
            user: field(&o, kind, "user")?,
        },
        "status" => Diff::Status {
            user: field(&o, kind, "user")?,
            status: field(&o, kind, "status")?,
            text: field(&o, kind, "text")?,
        },
        "typing_started" => Diff::TypingStarted {
            user: field(&o, kind, "user")?,
        },
        "typing_stopped" => Diff::TypingStopped {
            user: field(&o, kind, "user")?,
        },
        "read" => Diff::Read {
            user: field(&o, kind, "user")?,
            marker: field(&o, kind, "marker")?,
        },
        other => {
            return Err(DecodeError {
                code: ErrorCode::UnknownType,
                message: format!("unknown diff type {other:?}"),
                frame: Some("diffs".into()),
            });
        }
    })
}

/// Decodes one server frame.
pub(crate) fn decode(text: &str) -> Result<ServerMessage, DecodeError> {
    let value: Value = serde_json::from_str(text).map_err(|e| DecodeError {
        code: ErrorCode::Malformed,
        message: format!("not valid JSON (line {}, column {})", e.line(), e.column()),
        frame: None,
    })?;
    let Value::Object(o) = value else {
        return Err(DecodeError {
            code: ErrorCode::Malformed,
            message: "a frame must be a JSON object".into(),
            frame: None,
        });
    };
    let Some(kind) = o.get("type").and_then(Value::as_str) else {
        return Err(DecodeError {
            code: ErrorCode::Malformed,
            message: "a frame needs a string \"type\"".into(),
            frame: None,
        });
    };
    Ok(match kind {
        "welcome" => ServerMessage::Welcome {
            v: field(&o, kind, "v")?,
            user: field(&o, kind, "user")?,
            conn: field(&o, kind, "conn")?,
            resume: field(&o, kind, "resume")?,
            resumed: field(&o, kind, "resumed")?,
            heartbeat_ms: field(&o, kind, "heartbeat_ms")?,
            idle_after_ms: field(&o, kind, "idle_after_ms")?,
            status: field(&o, kind, "status")?,
            text: field(&o, kind, "text")?,
        },
        "snapshot" => ServerMessage::Snapshot {
            room: field(&o, kind, "room")?,
            members: field(&o, kind, "members")?,
            typing: field::<Option<_>>(&o, kind, "typing")?.unwrap_or_default(),
            receipts: field::<Option<Vec<Receipt>>>(&o, kind, "receipts")?.unwrap_or_default(),
        },
        "diffs" => {
            let Some(Value::Array(list)) = o.get("diffs") else {
                return Err(invalid(kind, "diffs: expected an array".into()));
            };
            ServerMessage::Diffs {
                room: field(&o, kind, "room")?,
                diffs: list.iter().cloned().map(diff).collect::<Result<_, _>>()?,
            }
        }
        "watching" => ServerMessage::Watching {
            users: field(&o, kind, "users")?,
        },
        "self_status" => ServerMessage::SelfStatus {
            status: field(&o, kind, "status")?,
            text: field(&o, kind, "text")?,
        },
        "error" => ServerMessage::Error {
            code: field::<Option<ErrorCode>>(&o, kind, "code")?.unwrap_or(ErrorCode::Internal),
            message: field::<Option<String>>(&o, kind, "message")?.unwrap_or_default(),
            frame: field(&o, kind, "frame")?,
        },
        "pong" => ServerMessage::Pong,
        other => {
            return Err(DecodeError {
                code: ErrorCode::UnknownType,
                message: format!("unknown frame type {other:?}"),
                frame: Some(other.chars().take(32).collect()),
            });
        }
    })
}
