//! Server → client messages.

use crate::prelude::*;
use serde::{Deserialize, Serialize};

use crate::ids::{ConnId, ResumeToken, RoomId, UserId};
use crate::object::JsonObject;
use crate::presence::{IdleReason, Millis, PresenceState, PresenceView, Status, StatusText};
use crate::privacy::{LastSeen, Receipts};
use crate::protocol::ErrorCode;

/// A message the server sends.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// Answer to `hello`: who the connection speaks for and how to behave.
    Welcome {
        /// Protocol version the server speaks.
        v: u32,
        /// The authenticated user.
        user: UserId,
        /// This connection's id.
        conn: ConnId,
        /// Present this in the next `hello` to resume this connection.
        resume: ResumeToken,
        /// Whether this connection resumed an earlier one (observers saw nothing).
        resumed: bool,
        /// Send a `ping` this often.
        heartbeat_ms: u64,
        /// Report idle after this long without input.
        idle_after_ms: u64,
        /// The user's own status, as set from any of their connections.
        status: Status,
        /// The user's own status text.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        text: Option<StatusText>,
        /// When the token expires: the socket closes with 4101 then, unless
        /// an `auth` frame brought a fresh one first.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        exp: Option<Millis>,
    },
    /// Full state of a room, sent after `join`; diffs follow (in a large
    /// room, summaries). Also sent unasked when the room becomes large or
    /// small again.
    Snapshot {
        /// The room.
        room: RoomId,
        /// Visible members, online or recently gone; in a large room the
        /// first online ones in user-id order only, at most
        /// [`MAX_LARGE_SNAPSHOT_MEMBERS`](crate::limits::MAX_LARGE_SNAPSHOT_MEMBERS).
        members: Vec<PresenceView>,
        /// Members typing now.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        typing: Vec<UserId>,
        /// Each member's last read marker.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        receipts: Vec<Receipt>,
        /// More `snapshot` frames of this room follow at once and extend
        /// this one (a big room's snapshot comes in parts of bounded size).
        #[serde(default, skip_serializing_if = "is_false")]
        more: bool,
        /// The room is large: `summary` frames follow instead of `diffs`.
        #[serde(default, skip_serializing_if = "is_false")]
        large: bool,
        /// In a large room, how many members are online, active and idle
        /// (`members` lists some of them).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        counts: Option<Counts>,
    },
    /// A large room's changes, at most once per summary interval: the
    /// counts as they stand, and some of who came and went since the last.
    Summary {
        /// The room.
        room: RoomId,
        /// The counts now.
        counts: Counts,
        /// Members who came online in the room, as they are now (at most
        /// [`MAX_SUMMARY_JOINED`](crate::limits::MAX_SUMMARY_JOINED)).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        joined: Vec<PresenceView>,
        /// Members who left it or went offline (at most
        /// [`MAX_SUMMARY_LEFT`](crate::limits::MAX_SUMMARY_LEFT)).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        left: Vec<UserId>,
    },
    /// A batch of changes in one room (`room` set) or among watched users
    /// (`room` absent), in the order they happened.
    Diffs {
        /// The room, or none for watch-list updates.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        room: Option<RoomId>,
        /// The changes.
        diffs: Vec<Diff>,
    },
    /// Presence of users just added with `watch`.
    Watching {
        /// One view per watched user.
        users: Vec<PresenceView>,
    },
    /// The user's own status changed (from this or another connection).
    SelfStatus {
        /// The status.
        status: Status,
        /// The status text.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        text: Option<StatusText>,
    },
    /// The user's own privacy settings: right after `welcome` when they are
    /// not both open, and whenever they change (from any of their
    /// connections, or their backend).
    SelfPrivacy {
        /// Who sees the user's last seen.
        last_seen: LastSeen,
        /// Whether the user's read markers are shown.
        receipts: Receipts,
    },
    /// A request failed; the connection stays open unless a close follows.
    Error {
        /// Stable machine-readable code.
        code: ErrorCode,
        /// Human-readable detail.
        message: String,
        /// The `type` of the frame that failed, when known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        frame: Option<String>,
        /// The room the refused frame named (`join`, `leave`, `typing`, `read`),
        /// so a client can tell which of several such frames failed.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        room: Option<RoomId>,
        /// The users of a `watch` that were refused.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        users: Vec<UserId>,
    },
    /// The token of an `auth` frame was accepted.
    AuthOk {
        /// When the new token expires.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        exp: Option<Millis>,
    },
    /// Heartbeat answer.
    Pong,
}

/// How many of a room's visible members are online, active and idle.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default, Serialize, Deserialize)]
pub struct Counts {
    /// Active plus idle.
    pub online: usize,
    /// With an active connection.
    pub active: usize,
    /// Connected, none active.
    pub idle: usize,
}

impl Counts {
    /// Counts these states.
    pub fn of(states: impl IntoIterator<Item = PresenceState>) -> Self {
        let mut c = Counts::default();
        for s in states {
            match s {
                PresenceState::Active => c.active += 1,
                PresenceState::Idle => c.idle += 1,
                PresenceState::Offline => continue,
            }
            c.online += 1;
        }
        c
    }
}

/// One member's read marker in a snapshot.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Receipt {
    /// The reader.
    pub user: UserId,
    /// Their last read marker.
    pub marker: u64,
}

/// One change to one user's presence, as observers see it.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Diff {
    /// The user came online (or joined the room while online).
    UserConnected {
        /// The user's presence now.
        presence: PresenceView,
    },
    /// The user went offline.
    UserDisconnected {
        /// Who.
        user: UserId,
        /// When they were last seen connected; absent when their privacy
        /// settings hide it from this observer.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        last_seen: Option<Millis>,
    },
    /// In a room: the user left it, still online elsewhere (never in
    /// watch-list diffs).
    UserLeft {
        /// Who.
        user: UserId,
    },
    /// The user is connected but no connection is active.
    UserIdle {
        /// Who.
        user: UserId,
        /// Why, from the most recently idle connection.
        reason: IdleReason,
    },
    /// A connection of the user became active.
    UserActive {
        /// Who.
        user: UserId,
    },
    /// The user changed status or status text.
    Status {
        /// Who.
        user: UserId,
        /// New status (never `invisible`: that reads as `user_disconnected`).
        status: Status,
        /// New text.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        text: Option<StatusText>,
    },
    /// The user's `info` or `data` changed; both are restated (absent:
    /// none).
    Data {
        /// Who.
        user: UserId,
        /// What the server says about the user.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        info: Option<JsonObject>,
        /// What the user's client set.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        data: Option<JsonObject>,
    },
    /// The user started typing in the room.
    TypingStarted {
        /// Who.
        user: UserId,
    },
    /// The user stopped typing (stopped, sent, expired or left).
    TypingStopped {
        /// Who.
        user: UserId,
    },
    /// The user read the room up to `marker`.
    Read {
        /// Who.
        user: UserId,
        /// Their new marker.
        marker: u64,
    },
    /// Host events only, and only when the operator turns them on
    /// (`--viewing-events`): one connection's page now shows `room` (null:
    /// none). Never sent to a socket: where a user looks is for backends
    /// (PROTOCOL.md, "Devices and notifications"). Server-side (`std`) only,
    /// so the browser SDK neither decodes nor pays for it.
    #[cfg(feature = "std")]
    Viewing {
        /// Whose connection.
        user: UserId,
        /// The node holding it (in a cluster; connection ids are per node).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        node: Option<String>,
        /// The connection, as `GET /v1/users/{id}/devices` names it.
        conn: ConnId,
        /// What it runs on.
        device: crate::presence::DeviceKind,
        /// The joined room it shows now; none when it shows none, left that
        /// room, or is gone.
        room: Option<RoomId>,
    },
}

impl Diff {
    /// The wire name (`user_connected`, `typing_started`, …), which is also
    /// the event name host apps see.
    pub fn name(&self) -> &'static str {
        match self {
            Diff::UserConnected { .. } => "user_connected",
            Diff::UserDisconnected { .. } => "user_disconnected",
            Diff::UserLeft { .. } => "user_left",
            Diff::UserIdle { .. } => "user_idle",
            Diff::UserActive { .. } => "user_active",
            Diff::Status { .. } => "status",
            Diff::Data { .. } => "data",
            Diff::TypingStarted { .. } => "typing_started",
            Diff::TypingStopped { .. } => "typing_stopped",
            Diff::Read { .. } => "read",
            #[cfg(feature = "std")]
            Diff::Viewing { .. } => "viewing",
        }
    }

    /// The user this diff is about.
    pub fn user(&self) -> &UserId {
        match self {
            Diff::UserConnected { presence } => &presence.user,
            Diff::UserDisconnected { user, .. }
            | Diff::UserLeft { user }
            | Diff::UserIdle { user, .. }
            | Diff::UserActive { user }
            | Diff::Status { user, .. }
            | Diff::Data { user, .. }
            | Diff::TypingStarted { user }
            | Diff::TypingStopped { user }
            | Diff::Read { user, .. } => user,
            #[cfg(feature = "std")]
            Diff::Viewing { user, .. } => user,
        }
    }
}

// serde's `skip_serializing_if` takes a function of `&T`.
#[allow(clippy::trivially_copy_pass_by_ref)]
fn is_false(b: &bool) -> bool {
    !*b
}
