//! Decoding server frames by hand, for clients.
//!
//! serde's derives (internally tagged enums buffer every frame into an
//! intermediate tree, and every visitor formats floats for its error
//! messages) cost the browser SDK well over 100 KB of wasm. Clients instead
//! read frames with the small [`Json`] reader and pick fields here. The
//! golden vectors check that this agrees with the derived encoding.

use crate::ids::{ConnId, ResumeToken, RoomId, UserId};
use crate::json::Json;
use crate::object::JsonObject;
use crate::prelude::*;
use crate::presence::{IdleReason, Millis, PresenceState, PresenceView, Status, StatusText};
use crate::privacy::{LastSeen, Receipts};
use crate::protocol::{Counts, DecodeError, Diff, ErrorCode, Receipt, ServerMessage};

/// Field access that names the frame and field in its error.
struct Fields<'a> {
    obj: &'a Json,
    frame: &'a str,
}

impl<'a> Fields<'a> {
    fn bad(&self, key: &str) -> DecodeError {
        DecodeError::new(
            ErrorCode::InvalidField,
            cat(&[key, ": missing or invalid"]),
            Some(self.frame.to_owned()),
        )
    }

    fn opt(&self, key: &str) -> Option<&'a Json> {
        // `matches!`, not `!=`: the derived comparison is recursive code.
        self.obj.get(key).filter(|v| !matches!(v, Json::Null))
    }

    fn pick<T>(&self, key: &str, f: impl FnOnce(&'a Json) -> Option<T>) -> Result<T, DecodeError> {
        self.opt(key).and_then(f).ok_or_else(|| self.bad(key))
    }

    fn pick_opt<T>(
        &self,
        key: &str,
        f: impl FnOnce(&'a Json) -> Option<T>,
    ) -> Result<Option<T>, DecodeError> {
        match self.opt(key) {
            None => Ok(None),
            Some(v) => f(v).map(Some).ok_or_else(|| self.bad(key)),
        }
    }

    /// An optional field read leniently: a bad value reads as absent. Each
    /// `?` after an owned field carries its cleanup code (~150 bytes of the
    /// bundle), so the fields after the first owned one are read this way.
    fn lenient<T>(&self, key: &str, f: impl FnOnce(&'a Json) -> Option<T>) -> Option<T> {
        self.opt(key).and_then(f)
    }

    fn str(&self, key: &str) -> Result<&'a str, DecodeError> {
        self.pick(key, Json::as_str)
    }

    fn u64(&self, key: &str) -> Result<u64, DecodeError> {
        self.pick(key, Json::as_u64)
    }

    fn user(&self, key: &str) -> Result<UserId, DecodeError> {
        self.pick(key, user)
    }

    fn list<T>(&self, key: &str, f: impl Fn(&'a Json) -> Option<T>) -> Result<Vec<T>, DecodeError> {
        self.pick_opt(key, |v| {
            // A loop, not `collect::<Option<Vec<_>>>()`: its adapter code
            // weighed more than the rest of this function in the bundle.
            let items = v.as_array()?;
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                out.push(f(item)?);
            }
            Some(out)
        })
        .map(Option::unwrap_or_default)
    }
}

/// `parts` joined: `[..].concat()` is generic code the bundle paid for.
fn cat(parts: &[&str]) -> String {
    let mut out = String::new();
    for p in parts {
        out.push_str(p);
    }
    out
}

fn user(v: &Json) -> Option<UserId> {
    UserId::new(v.as_str()?).ok()
}

fn status_text(v: &Json) -> Option<StatusText> {
    StatusText::new(v.as_str()?).ok().flatten()
}

fn status(v: &Json) -> Option<Status> {
    Some(match v.as_str()? {
        "available" => Status::Available,
        "away" => Status::Away,
        "busy" => Status::Busy,
        "invisible" => Status::Invisible,
        _ => return None,
    })
}

fn reason(v: &Json) -> Option<IdleReason> {
    Some(match v.as_str()? {
        "no_input" => IdleReason::NoInput,
        "hidden" => IdleReason::Hidden,
        "blurred" => IdleReason::Blurred,
        "locked" => IdleReason::Locked,
        _ => return None,
    })
}

fn state(v: &Json) -> Option<PresenceState> {
    Some(match v.as_str()? {
        "active" => PresenceState::Active,
        "idle" => PresenceState::Idle,
        "offline" => PresenceState::Offline,
        _ => return None,
    })
}

fn millis(v: &Json) -> Option<Millis> {
    v.as_u64().map(Millis)
}

fn view(v: &Json) -> Option<PresenceView> {
    let f = Fields { obj: v, frame: "" };
    Some(PresenceView {
        user: f.user("user").ok()?,
        state: f.pick("state", state).ok()?,
        reason: f.pick_opt("reason", reason).ok()?,
        status: f.pick("status", status).ok()?,
        text: f.pick_opt("text", status_text).ok()?,
        last_active: f.pick_opt("last_active", millis).ok()?,
        last_seen: f.pick_opt("last_seen", millis).ok()?,
        info: f.pick_opt("info", object).ok()?,
        data: f.pick_opt("data", object).ok()?,
    })
}

/// An app's object, as the server sent it (it checked the bounds).
fn object(v: &Json) -> Option<JsonObject> {
    JsonObject::from_json(v, usize::MAX).ok()
}

fn receipt(v: &Json) -> Option<Receipt> {
    let f = Fields { obj: v, frame: "" };
    Some(Receipt {
        user: f.user("user").ok()?,
        marker: f.u64("marker").ok()?,
    })
}

fn counts(v: &Json) -> Option<Counts> {
    let n = |key| usize::try_from(v.get(key)?.as_u64()?).ok();
    Some(Counts {
        online: n("online")?,
        active: n("active")?,
        idle: n("idle")?,
    })
}

fn unknown(what: &str, kind: &str) -> DecodeError {
    let mut shown = kind.to_owned();
    shown.truncate(shown.floor_char_boundary(32));
    let message = cat(&["unknown ", what, " type \"", &shown, "\""]);
    DecodeError::new(ErrorCode::UnknownType, message, Some(shown))
}

fn diff(v: &Json) -> Result<Diff, DecodeError> {
    let kind = v.get("type").and_then(Json::as_str).unwrap_or_default();
    let f = Fields {
        obj: v,
        frame: "diffs",
    };
    Ok(match kind {
        "user_connected" => Diff::UserConnected {
            presence: f.pick("presence", view)?,
        },
        "user_disconnected" => Diff::UserDisconnected {
            user: f.user("user")?,
            last_seen: f.lenient("last_seen", millis),
        },
        "user_left" => Diff::UserLeft {
            user: f.user("user")?,
        },
        "user_idle" => Diff::UserIdle {
            user: f.user("user")?,
            reason: f.pick("reason", reason)?,
        },
        "user_active" => Diff::UserActive {
            user: f.user("user")?,
        },
        "status" => Diff::Status {
            user: f.user("user")?,
            status: f.pick("status", status)?,
            text: f.lenient("text", status_text),
        },
        "data" => Diff::Data {
            user: f.user("user")?,
            info: f.lenient("info", object),
            data: f.lenient("data", object),
        },
        "typing_started" => Diff::TypingStarted {
            user: f.user("user")?,
        },
        "typing_stopped" => Diff::TypingStopped {
            user: f.user("user")?,
        },
        "read" => Diff::Read {
            user: f.user("user")?,
            marker: f.u64("marker")?,
        },
        other => return Err(unknown("diff", other)),
    })
}

/// Decodes one server frame (the clients' side). No size limit beyond what
/// the socket allows: snapshots of big rooms are large. Unknown diff kinds
/// and frame types are `unknown_type`, so a client can skip them.
pub fn decode_server(frame: &str) -> Result<ServerMessage, DecodeError> {
    let malformed = |message: &str| DecodeError::new(ErrorCode::Malformed, message, None);
    let obj = Json::parse(frame).ok_or_else(|| malformed("not valid JSON"))?;
    if !matches!(obj, Json::Obj(_)) {
        return Err(malformed("a frame must be a JSON object"));
    }
    let kind = obj
        .get("type")
        .and_then(Json::as_str)
        .ok_or_else(|| malformed("a frame needs a string \"type\""))?;
    let f = Fields {
        obj: &obj,
        frame: kind,
    };
    let room = |v: &Json| RoomId::new(v.as_str()?).ok();
    Ok(match kind {
        "welcome" => ServerMessage::Welcome {
            v: f.pick("v", |v| u32::try_from(v.as_u64()?).ok())?,
            user: f.user("user")?,
            conn: ConnId(f.u64("conn")?),
            resume: f.pick("resume", |v| ResumeToken::new(v.as_str()?).ok())?,
            resumed: f.pick("resumed", Json::as_bool)?,
            heartbeat_ms: f.u64("heartbeat_ms")?,
            idle_after_ms: f.u64("idle_after_ms")?,
            status: f.pick("status", status)?,
            text: f.lenient("text", status_text),
            exp: f.lenient("exp", millis),
        },
        "snapshot" => ServerMessage::Snapshot {
            room: f.pick("room", room)?,
            members: f.list("members", view)?,
            typing: f.list("typing", user)?,
            receipts: f.list("receipts", receipt)?,
            more: f.pick_opt("more", Json::as_bool)?.unwrap_or(false),
            // Read leniently (no error path: each cost the bundle ~150
            // bytes): a bad value reads as absent.
            large: f.opt("large").and_then(Json::as_bool).unwrap_or(false),
            counts: f.opt("counts").and_then(counts),
        },
        "summary" => ServerMessage::Summary {
            counts: f.pick("counts", counts)?,
            room: f.pick("room", room)?,
            // Leniently too: a summary's counts matter, its lists are a sample.
            joined: f.list("joined", view).unwrap_or_default(),
            left: f.list("left", user).unwrap_or_default(),
        },
        "diffs" => {
            let items = f.pick("diffs", Json::as_array)?;
            let mut diffs = Vec::with_capacity(items.len());
            for item in items {
                diffs.push(diff(item)?);
            }
            ServerMessage::Diffs {
                room: f.pick_opt("room", room)?,
                diffs,
            }
        }
        "watching" => ServerMessage::Watching {
            users: f.list("users", view)?,
        },
        // Leniently: a value this client does not know reads as the open one.
        "self_privacy" => ServerMessage::SelfPrivacy {
            last_seen: f
                .lenient("last_seen", |v| LastSeen::parse(v.as_str()?))
                .unwrap_or_default(),
            receipts: f
                .lenient("receipts", |v| Receipts::parse(v.as_str()?))
                .unwrap_or_default(),
        },
        "self_status" => ServerMessage::SelfStatus {
            status: f.pick("status", status)?,
            text: f.pick_opt("text", status_text)?,
        },
        "error" => ServerMessage::Error {
            code: f
                .pick_opt("code", |v| {
                    let s = v.as_str()?;
                    ErrorCode::ALL.into_iter().find(|c| c.as_str() == s)
                })?
                .unwrap_or(ErrorCode::Internal),
            message: f.str("message").unwrap_or_default().to_owned(),
            frame: f.lenient("frame", |v| v.as_str().map(str::to_owned)),
            room: f.lenient("room", room),
            users: f.list("users", user).unwrap_or_default(),
        },
        "auth_ok" => ServerMessage::AuthOk {
            exp: f.pick_opt("exp", millis)?,
        },
        "pong" => ServerMessage::Pong,
        other => return Err(unknown("frame", other)),
    })
}
