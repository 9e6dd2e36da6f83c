//! Stable error codes and WebSocket close codes.

use serde::{Deserialize, Serialize};

use crate::ids::RoomId;
use crate::prelude::*;

/// Why a client frame was refused. The string form is stable: clients may
/// match on it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not valid JSON, or not an object with a string `type`.
    Malformed,
    /// Larger than [`crate::limits::MAX_FRAME_BYTES`].
    FrameTooLarge,
    /// A `type` this server does not know.
    UnknownType,
    /// A known `type` with a missing or invalid field.
    InvalidField,
    /// `hello.v` is not a version this server speaks.
    UnsupportedVersion,
    /// The first frame must be `hello`.
    HelloRequired,
    /// A second `hello` on the same connection.
    AlreadyGreeted,
    /// The connection has not joined the room it named.
    NotInRoom,
    /// The policy does not allow this room or watch.
    Forbidden,
    /// Joining would exceed [`crate::limits::MAX_ROOMS_PER_CONNECTION`].
    TooManyRooms,
    /// Watching would exceed [`crate::limits::MAX_WATCHED_PER_CONNECTION`].
    TooManyWatched,
    /// The user already holds [`crate::limits::MAX_CONNECTIONS_PER_USER`] live connections.
    TooManyConnections,
    /// The read marker is beyond [`crate::limits::MAX_READ_MARKER`].
    InvalidMarker,
    /// Too many frames too fast; slow down.
    RateLimited,
    /// A `data` object larger than the server's limit.
    DataTooLarge,
    /// The token was refused (at the upgrade, or in an `auth` frame) or
    /// expired; the socket closes with 4101.
    Unauthorized,
    /// The server failed; the frame may be retried.
    Internal,
}

impl ErrorCode {
    /// The stable wire string.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Malformed => "malformed",
            ErrorCode::FrameTooLarge => "frame_too_large",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::InvalidField => "invalid_field",
            ErrorCode::UnsupportedVersion => "unsupported_version",
            ErrorCode::HelloRequired => "hello_required",
            ErrorCode::AlreadyGreeted => "already_greeted",
            ErrorCode::NotInRoom => "not_in_room",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::TooManyRooms => "too_many_rooms",
            ErrorCode::TooManyWatched => "too_many_watched",
            ErrorCode::TooManyConnections => "too_many_connections",
            ErrorCode::InvalidMarker => "invalid_marker",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::DataTooLarge => "data_too_large",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::Internal => "internal",
        }
    }

    /// Every code, for documentation and tests.
    pub const ALL: [ErrorCode; 17] = [
        ErrorCode::Malformed,
        ErrorCode::FrameTooLarge,
        ErrorCode::UnknownType,
        ErrorCode::InvalidField,
        ErrorCode::UnsupportedVersion,
        ErrorCode::HelloRequired,
        ErrorCode::AlreadyGreeted,
        ErrorCode::NotInRoom,
        ErrorCode::Forbidden,
        ErrorCode::TooManyRooms,
        ErrorCode::TooManyWatched,
        ErrorCode::TooManyConnections,
        ErrorCode::InvalidMarker,
        ErrorCode::RateLimited,
        ErrorCode::DataTooLarge,
        ErrorCode::Unauthorized,
        ErrorCode::Internal,
    ];
}

/// WebSocket close codes the server uses. Codes below 4100 mean "reconnect
/// (with backoff)"; 4100 and up mean "do not reconnect without user action".
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
#[repr(u16)]
pub enum CloseCode {
    /// The client said `leaving`: the socket has done its job; the connection
    /// stays in its leave grace, so a new socket may still resume it.
    Normal = 1000,
    /// Server shutting down or restarting: reconnect and resume.
    GoingAway = 1001,
    /// A text frame that is not valid UTF-8 (RFC 6455, section 8.1).
    InvalidData = 1007,
    /// Abusive traffic (rate far beyond the limit), or no `hello` first.
    PolicyViolation = 1008,
    /// A frame beyond the size limit.
    TooBig = 1009,
    /// No heartbeat within the timeout: reconnect and resume.
    HeartbeatTimeout = 4000,
    /// The client could not keep up with its outbound queue: reconnect, and
    /// resync from a fresh snapshot.
    SlowConsumer = 4001,
    /// The same connection was resumed elsewhere; this socket is stale.
    Superseded = 4100,
    /// The token expired or was revoked: get a new one first.
    Unauthorized = 4101,
    /// The client speaks a protocol version the server does not.
    UnsupportedVersion = 4102,
}

impl CloseCode {
    /// Whether a client should reconnect on its own after this close.
    pub fn should_reconnect(self) -> bool {
        (self as u16) < 4100
    }
}

/// Why a frame could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct DecodeError {
    /// Stable code for the error frame.
    pub code: ErrorCode,
    /// Human-readable detail.
    pub message: String,
    /// The frame's `type`, when it could be read.
    pub frame: Option<String>,
    /// The room the frame named, when it is a valid room id: the error frame
    /// names it back even when another field is what is wrong, so a client
    /// can tell which of several frames failed.
    pub room: Option<RoomId>,
}

impl DecodeError {
    pub(crate) fn new(code: ErrorCode, message: impl Into<String>, frame: Option<String>) -> Self {
        Self {
            code,
            message: message.into(),
            frame,
            room: None,
        }
    }

    /// The same error, naming `room` (for the server's codec, `std` only).
    #[cfg(feature = "std")]
    pub(crate) fn in_room(self, room: Option<RoomId>) -> Self {
        Self { room, ..self }
    }
}
