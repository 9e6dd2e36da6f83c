//! Encoding client frames by hand, for clients.
//!
//! The same reason as `server_decode`: serde_json's serializer is a large
//! share of the browser bundle for eleven small message shapes. The golden
//! vectors check that this writes exactly what serde's derive writes.

use crate::prelude::*;

use crate::json::write_string;
use crate::presence::{Activity, IdleReason, Status};
use crate::protocol::ClientMessage;
use crate::text::push_decimal;

fn field(out: &mut String, key: &str, value: &str) {
    out.push_str(",\"");
    out.push_str(key);
    out.push_str("\":");
    write_string(out, value);
}

fn reason(r: IdleReason) -> &'static str {
    match r {
        IdleReason::NoInput => "no_input",
        IdleReason::Hidden => "hidden",
        IdleReason::Blurred => "blurred",
        IdleReason::Locked => "locked",
    }
}

fn status(s: Status) -> &'static str {
    match s {
        Status::Available => "available",
        Status::Away => "away",
        Status::Busy => "busy",
        Status::Invisible => "invisible",
    }
}

fn activity(out: &mut String, a: Activity) {
    match a {
        Activity::Active => out.push_str("\"state\":\"active\""),
        Activity::Idle(r) => {
            out.push_str("\"state\":\"idle\",\"reason\":\"");
            out.push_str(reason(r));
            out.push('"');
        }
    }
}

impl ClientMessage {
    /// This message as one JSON text frame, byte for byte what
    /// [`crate::protocol::encode`] writes.
    pub fn to_json(&self) -> String {
        let mut out = String::with_capacity(64);
        out.push_str("{\"type\":\"");
        out.push_str(self.kind());
        out.push('"');
        match self {
            ClientMessage::Hello {
                v,
                resume,
                activity: a,
                device,
            } => {
                out.push_str(",\"v\":");
                push_decimal(&mut out, (*v).into());
                if let Some(t) = resume {
                    field(&mut out, "resume", t.as_str());
                }
                if let Some(a) = a {
                    out.push_str(",\"activity\":{");
                    activity(&mut out, *a);
                    out.push('}');
                }
                if let Some(d) = device {
                    field(&mut out, "device", d.as_str());
                }
            }
            ClientMessage::View { room } => {
                if let Some(r) = room {
                    field(&mut out, "room", r.as_str());
                }
            }
            ClientMessage::Join { room } | ClientMessage::Leave { room } => {
                field(&mut out, "room", room.as_str());
            }
            ClientMessage::Watch { users } | ClientMessage::Unwatch { users } => {
                out.push_str(",\"users\":[");
                for (i, u) in users.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write_string(&mut out, u.as_str());
                }
                out.push(']');
            }
            ClientMessage::Activity { activity: a } => {
                out.push(',');
                activity(&mut out, *a);
            }
            ClientMessage::Status { status: s, text } => {
                field(&mut out, "status", status(*s));
                if let Some(t) = text {
                    field(&mut out, "text", t.as_str());
                }
            }
            ClientMessage::Typing { room, active } => {
                field(&mut out, "room", room.as_str());
                out.push_str(if *active {
                    ",\"active\":true"
                } else {
                    ",\"active\":false"
                });
            }
            ClientMessage::Read { room, marker } => {
                field(&mut out, "room", room.as_str());
                out.push_str(",\"marker\":");
                push_decimal(&mut out, *marker);
            }
            ClientMessage::Privacy {
                last_seen,
                receipts,
            } => {
                if let Some(l) = last_seen {
                    field(&mut out, "last_seen", l.as_str());
                }
                if let Some(r) = receipts {
                    field(&mut out, "receipts", r.as_str());
                }
            }
            ClientMessage::Auth { token } => field(&mut out, "token", token),
            ClientMessage::Data { data } => {
                if let Some(d) = data {
                    out.push_str(",\"data\":");
                    out.push_str(d.as_str());
                }
            }
            ClientMessage::Ping | ClientMessage::Leaving => {}
        }
        out.push('}');
        out
    }
}

#[cfg(test)]
mod tests {
    use crate::protocol::{ClientMessage, encode};
    use crate::{RoomId, StatusText, UserId};

    #[test]
    fn escapes_like_serde() {
        let msg = ClientMessage::Status {
            status: crate::Status::Busy,
            text: StatusText::new(r#"say "hi" \ é 😀"#).unwrap(),
        };
        assert_eq!(msg.to_json(), encode(&msg));
        let msg = ClientMessage::Watch {
            users: vec![UserId::new(r#"a"b\c"#).unwrap(), UserId::new("d").unwrap()],
        };
        assert_eq!(msg.to_json(), encode(&msg));
        let msg = ClientMessage::Read {
            room: RoomId::new("r").unwrap(),
            marker: (1 << 53) - 1,
        };
        assert_eq!(msg.to_json(), encode(&msg));
    }
}
