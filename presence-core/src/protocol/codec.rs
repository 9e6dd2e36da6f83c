//! The server's side of the codec: client frames decoded with serde_json
//! (with size and field limits) and any message encoded. Decoding never
//! panics: every failure is a [`DecodeError`] that maps to an error frame.
//! Clients use the hand-written `server_decode` and `client_encode` instead.

use serde::Deserialize;

use crate::ids::RoomId;
use crate::limits::{MAX_FRAME_BYTES, MAX_READ_MARKER, MAX_TOKEN_BYTES, MAX_USERS_PER_WATCH_FRAME};
use crate::protocol::{ClientMessage, DecodeError, ErrorCode};

const CLIENT_TYPES: [&str; 15] = [
    "hello", "join", "leave", "watch", "unwatch", "activity", "status", "typing", "read", "view",
    "privacy", "data", "auth", "ping", "leaving",
];

/// Largest `auth` frame: its token plus the frame around it.
const MAX_AUTH_FRAME_BYTES: usize = MAX_TOKEN_BYTES + 64;

/// Decodes one client frame, checking size, shape and field limits.
pub fn decode_client(text: &str) -> Result<ClientMessage, DecodeError> {
    if text.len() > MAX_FRAME_BYTES && !(text.len() <= MAX_AUTH_FRAME_BYTES && is_auth(text)) {
        return Err(DecodeError::new(
            ErrorCode::FrameTooLarge,
            format!(
                "frame is {} bytes; the limit is {MAX_FRAME_BYTES}",
                text.len()
            ),
            None,
        ));
    }
    let msg: ClientMessage = serde_json::from_str(text).map_err(|e| classify(text, &e))?;
    check_limits(&msg).map_err(|e| e.in_room(msg.room().cloned()))?;
    Ok(msg)
}

/// Encodes a message as one JSON text frame.
pub fn encode<T: serde::Serialize>(msg: &T) -> String {
    // Our message types serialize infallibly: string keys, no non-finite floats.
    serde_json::to_string(msg).unwrap_or_else(|_| String::from("{\"type\":\"error\"}"))
}

/// Whether a frame past the general limit is an `auth` frame (parsed only
/// then, and only up to [`MAX_AUTH_FRAME_BYTES`]).
fn is_auth(text: &str) -> bool {
    #[derive(Deserialize)]
    struct Tagged<'a> {
        #[serde(rename = "type", borrow)]
        kind: &'a str,
    }
    serde_json::from_str::<Tagged>(text).is_ok_and(|t| t.kind == "auth")
}

/// Works out, on the failure path only, which stable code a bad frame gets.
fn classify(text: &str, err: &serde_json::Error) -> DecodeError {
    #[derive(Deserialize)]
    struct Tagged {
        #[serde(rename = "type")]
        kind: String,
    }
    match serde_json::from_str::<Tagged>(text) {
        Err(_) if err.is_syntax() || err.is_eof() => {
            DecodeError::new(ErrorCode::Malformed, format!("not valid JSON: {err}"), None)
        }
        Err(_) => DecodeError::new(
            ErrorCode::Malformed,
            "a frame must be a JSON object with a string \"type\"",
            None,
        ),
        Ok(Tagged { kind }) if !CLIENT_TYPES.contains(&kind.as_str()) => {
            let mut shown = kind;
            shown.truncate(shown.floor_char_boundary(32));
            DecodeError::new(
                ErrorCode::UnknownType,
                format!("unknown frame type {shown:?}"),
                Some(shown),
            )
        }
        Ok(Tagged { kind }) => {
            let room = named_room(&kind, text);
            // With a valid room, a `read` whose marker is a JSON number
            // (negative, fractional or past `u64`) has a marker out of
            // range, not a malformed field.
            let (code, message) = if kind == "read" && room.is_some() && marker_is_a_number(text) {
                let message = format!("marker must be an integer from 0 to {MAX_READ_MARKER}");
                (ErrorCode::InvalidMarker, message)
            } else {
                (ErrorCode::InvalidField, err.to_string())
            };
            DecodeError::new(code, message, Some(kind)).in_room(room)
        }
    }
}

/// The room a refused frame of type `kind` named, for its error to name back
/// (the types with a room, as [`ClientMessage::room`] for a frame that
/// decodes). Only a valid room id: when the room itself is what is wrong
/// there is none to name, and an invalid one (too long, control characters)
/// is not echoed.
fn named_room(kind: &str, text: &str) -> Option<RoomId> {
    #[derive(Deserialize)]
    struct Named {
        room: RoomId,
    }
    if !matches!(kind, "join" | "leave" | "typing" | "read") {
        return None;
    }
    serde_json::from_str::<Named>(text).ok().map(|n| n.room)
}

/// Whether a frame's `marker` is a JSON number.
fn marker_is_a_number(text: &str) -> bool {
    #[derive(Deserialize)]
    struct Marker {
        marker: serde_json::Value,
    }
    serde_json::from_str::<Marker>(text).is_ok_and(|m| m.marker.is_number())
}

fn check_limits(msg: &ClientMessage) -> Result<(), DecodeError> {
    match msg {
        ClientMessage::Watch { users } | ClientMessage::Unwatch { users }
            if users.len() > MAX_USERS_PER_WATCH_FRAME =>
        {
            Err(DecodeError::new(
                ErrorCode::InvalidField,
                format!("at most {MAX_USERS_PER_WATCH_FRAME} users per frame"),
                Some(msg.kind().into()),
            ))
        }
        ClientMessage::Read { marker, .. } if *marker > MAX_READ_MARKER => Err(DecodeError::new(
            ErrorCode::InvalidMarker,
            format!("marker must be at most {MAX_READ_MARKER}"),
            Some("read".into()),
        )),
        ClientMessage::Auth { token } if token.is_empty() || token.len() > MAX_TOKEN_BYTES => {
            Err(DecodeError::new(
                ErrorCode::InvalidField,
                format!("token must be 1 to {MAX_TOKEN_BYTES} bytes"),
                Some("auth".into()),
            ))
        }
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(text: &str) -> ErrorCode {
        decode_client(text).unwrap_err().code
    }

    #[test]
    fn bad_frames_get_stable_codes() {
        assert_eq!(code("{"), ErrorCode::Malformed);
        assert_eq!(code(""), ErrorCode::Malformed);
        assert_eq!(code("[1,2]"), ErrorCode::Malformed);
        assert_eq!(code("{\"type\":7}"), ErrorCode::Malformed);
        assert_eq!(code("{\"type\":\"fly\"}"), ErrorCode::UnknownType);
        assert_eq!(code("{\"type\":\"join\"}"), ErrorCode::InvalidField);
        assert_eq!(
            code("{\"type\":\"join\",\"room\":\"\"}"),
            ErrorCode::InvalidField
        );
        for marker in [
            "9007199254740992",
            "-1",
            "18446744073709551616",
            "1.5",
            "1e300",
        ] {
            assert_eq!(
                code(&format!(
                    "{{\"type\":\"read\",\"room\":\"r\",\"marker\":{marker}}}"
                )),
                ErrorCode::InvalidMarker,
                "{marker}"
            );
        }
        assert_eq!(
            code("{\"type\":\"read\",\"room\":\"r\",\"marker\":\"7\"}"),
            ErrorCode::InvalidField
        );
        assert_eq!(
            code("{\"type\":\"read\",\"room\":\"\",\"marker\":-1}"),
            ErrorCode::InvalidField,
            "the room is what is wrong"
        );
        assert_eq!(
            code(&format!(
                "{{\"type\":\"ping\",\"pad\":\"{}\"}}",
                "x".repeat(MAX_FRAME_BYTES)
            )),
            ErrorCode::FrameTooLarge
        );
    }

    #[test]
    fn a_refused_frame_names_its_room_only_when_the_room_is_valid() {
        let room = |text: &str| decode_client(text).unwrap_err().room;
        let r = RoomId::new("general").ok();
        let named = [
            r#"{"type":"typing","room":"general","active":"yes"}"#,
            r#"{"type":"typing","room":"general"}"#,
            r#"{"type":"read","room":"general","marker":-1}"#,
            r#"{"type":"read","room":"general","marker":"7"}"#,
            r#"{"type":"read","room":"general","marker":9007199254740992}"#,
        ];
        for text in named {
            assert_eq!(room(text), r, "{text}");
        }
        let long = "r".repeat(129);
        let not_named = [
            r#"{"type":"typing","room":"","active":true}"#.to_owned(),
            r#"{"type":"typing","room":"a b","active":true}"#.to_owned(),
            format!(r#"{{"type":"typing","room":"{long}","active":true}}"#),
            r#"{"type":"read","room":7,"marker":1}"#.to_owned(),
            // Only the types that have a room name one.
            r#"{"type":"status","room":"general","status":"gone"}"#.to_owned(),
        ];
        for text in not_named {
            assert_eq!(room(&text), None, "{text}");
        }
    }

    #[test]
    fn nesting_past_128_levels_is_an_invalid_field() {
        let nested = |depth: usize| {
            format!(
                "{{\"type\":\"ping\",\"x\":{}{}}}",
                "[".repeat(depth),
                "]".repeat(depth)
            )
        };
        assert!(
            decode_client(&nested(100)).is_ok(),
            "unknown fields may nest"
        );
        assert_eq!(code(&nested(200)), ErrorCode::InvalidField);
    }

    #[test]
    fn unknown_type_names_are_truncated_on_a_char_boundary() {
        let err = decode_client(&format!("{{\"type\":\"{}\"}}", "é".repeat(40))).unwrap_err();
        assert_eq!(err.frame.unwrap().chars().count(), 16);
    }

    #[test]
    fn unknown_fields_are_ignored_for_forward_compatibility() {
        assert_eq!(
            decode_client("{\"type\":\"ping\",\"future\":1}").unwrap(),
            ClientMessage::Ping
        );
    }

    #[test]
    fn every_error_code_has_its_wire_name() {
        for code in ErrorCode::ALL {
            assert_eq!(encode(&code), format!("\"{}\"", code.as_str()));
        }
    }
}
