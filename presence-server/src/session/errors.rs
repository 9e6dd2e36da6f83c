//! The `error` frames a socket is told: what they name, and the words for
//! each code.

use presence_core::protocol::{ClientMessage, DecodeError, ErrorCode, ServerMessage};
use presence_core::{RoomId, UserId};

pub(super) fn error(
    code: ErrorCode,
    message: impl Into<String>,
    frame: Option<&str>,
) -> ServerMessage {
    let subject = Subject {
        frame,
        ..Subject::default()
    };
    subject.error(code, message)
}

/// The refused frame's type and what it named, so a client can tell which of
/// several frames of one kind failed.
#[derive(Default)]
pub(super) struct Subject<'m> {
    pub(super) frame: Option<&'m str>,
    pub(super) room: Option<&'m RoomId>,
    pub(super) users: &'m [UserId],
}

impl<'m> Subject<'m> {
    /// A refused frame as a whole: its room, or all the users of a `watch`.
    pub(super) fn of(msg: &'m ClientMessage) -> Self {
        Self {
            frame: Some(msg.kind()),
            room: msg.room(),
            users: match msg {
                ClientMessage::Watch { users } => users,
                _ => &[],
            },
        }
    }

    /// A frame that did not decode, as far as its error could read it: its
    /// type and valid room, even when another field is what is wrong.
    pub(super) fn of_error(e: &'m DecodeError) -> Self {
        Self {
            frame: e.frame.as_deref(),
            room: e.room.as_ref(),
            users: &[],
        }
    }

    pub(super) fn error(&self, code: ErrorCode, message: impl Into<String>) -> ServerMessage {
        ServerMessage::Error {
            code,
            message: message.into(),
            frame: self.frame.map(String::from),
            room: self.room.cloned(),
            users: self.users.to_vec(),
        }
    }
}

pub(super) fn describe(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::NotInRoom => "not in this room; join it first",
        ErrorCode::Forbidden => "not allowed by the audience policy",
        ErrorCode::TooManyRooms => "too many rooms on this connection",
        ErrorCode::TooManyWatched => "too many watched users on this connection",
        ErrorCode::TooManyConnections => "too many live connections for this user",
        ErrorCode::InvalidMarker => "read marker out of range",
        ErrorCode::AlreadyGreeted => "hello was already received",
        ErrorCode::RateLimited => "too many frames; slow down",
        ErrorCode::HelloRequired => "the first frame must be hello",
        ErrorCode::Unauthorized => "the token was refused",
        _ => "the server could not process this frame",
    }
}
