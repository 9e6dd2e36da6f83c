//! Client → server messages.

use crate::prelude::*;
use serde::{Deserialize, Serialize};

use crate::ids::{ResumeToken, RoomId, UserId};
use crate::object::JsonObject;
use crate::presence::{Activity, DeviceKind, Status, StatusText};
use crate::privacy::{LastSeen, Receipts};

/// A message a client sends. No field names another user as the actor: the
/// server acts for the authenticated user of the connection only.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    /// First frame on a connection: protocol version, and the resume token
    /// from an earlier `welcome` when reconnecting.
    Hello {
        /// Protocol version the client speaks; must be [`crate::PROTOCOL_VERSION`].
        v: u32,
        /// Resume token from a previous `welcome`.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        resume: Option<ResumeToken>,
        /// The connection's activity at connect time (default: active).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        activity: Option<Activity>,
        /// The kind of device the connection runs on (default: `other`).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        device: Option<DeviceKind>,
    },
    /// Join a room: receive its snapshot, then its diffs.
    Join {
        /// The room.
        room: RoomId,
    },
    /// Leave a room.
    Leave {
        /// The room.
        room: RoomId,
    },
    /// Watch users (a contact list): receive their presence wherever they are.
    Watch {
        /// Users to add to this connection's watch list.
        users: Vec<UserId>,
    },
    /// Stop watching users.
    Unwatch {
        /// Users to remove from the watch list.
        users: Vec<UserId>,
    },
    /// This connection became active or idle. Sent on transitions only.
    Activity {
        /// The new activity.
        #[serde(flatten)]
        activity: Activity,
    },
    /// Set the user's status and status text (for all their connections).
    Status {
        /// The chosen status.
        status: Status,
        /// Optional short text; absent clears it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        text: Option<StatusText>,
    },
    /// Typing started or refreshed (`true`) or stopped (`false`) in a room.
    Typing {
        /// The room, which the connection must have joined.
        room: RoomId,
        /// Whether the user is typing.
        active: bool,
    },
    /// The user has read a room up to and including `marker`.
    Read {
        /// The room, which the connection must have joined.
        room: RoomId,
        /// The last read message's sequence number; only moves forward.
        marker: u64,
    },
    /// The room this connection's page shows (one it joined), or none: for
    /// backends deciding whether a message is seen as it arrives. Absent or
    /// `null` is none.
    View {
        /// The room in view.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        room: Option<RoomId>,
    },
    /// Changes the user's privacy settings (for all their connections and
    /// devices); an absent field is kept.
    Privacy {
        /// Who sees the user's last seen.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        last_seen: Option<LastSeen>,
        /// Whether the user's read markers are shown (and others' to them).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        receipts: Option<Receipts>,
    },
    /// Sets the user's `data` (latest wins over all their connections);
    /// absent or `null` clears it.
    Data {
        /// The object, at most the server's data limit once compact.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        data: Option<JsonObject>,
    },
    /// A fresh token for this connection's user, before the current one
    /// expires; the server answers `auth_ok` (or closes with 4101).
    Auth {
        /// The token, as presented at the upgrade (at most
        /// [`MAX_TOKEN_BYTES`](crate::limits::MAX_TOKEN_BYTES)).
        token: String,
    },
    /// Heartbeat; the server answers `pong`.
    Ping,
    /// The page is going away on purpose (tab closed, navigation): observers
    /// see the user leave after the short leave grace, unless it resumes.
    Leaving,
}

impl ClientMessage {
    /// The wire name of this message's type, for errors and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            ClientMessage::Hello { .. } => "hello",
            ClientMessage::Join { .. } => "join",
            ClientMessage::Leave { .. } => "leave",
            ClientMessage::Watch { .. } => "watch",
            ClientMessage::Unwatch { .. } => "unwatch",
            ClientMessage::Activity { .. } => "activity",
            ClientMessage::Status { .. } => "status",
            ClientMessage::Typing { .. } => "typing",
            ClientMessage::Read { .. } => "read",
            ClientMessage::View { .. } => "view",
            ClientMessage::Privacy { .. } => "privacy",
            ClientMessage::Data { .. } => "data",
            ClientMessage::Auth { .. } => "auth",
            ClientMessage::Ping => "ping",
            ClientMessage::Leaving => "leaving",
        }
    }

    /// The room this message names, if any: errors name it back.
    pub fn room(&self) -> Option<&RoomId> {
        match self {
            ClientMessage::Join { room }
            | ClientMessage::Leave { room }
            | ClientMessage::Typing { room, .. }
            | ClientMessage::Read { room, .. }
            | ClientMessage::View { room: Some(room) } => Some(room),
            _ => None,
        }
    }
}
