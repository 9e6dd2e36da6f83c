//! What nodes say to each other on the bus ([`super::Bus`] carries it as
//! bytes): users' record sets, moved read markers, and orders for a user's
//! sockets. JSON, with short field names; a message that does not decode is
//! counted and skipped by the receiving node.

use presence_core::machine::ConnRecord;
use presence_core::notify::Device;
use presence_core::{ResumeToken, RoomId, UserId};
use serde::{Deserialize, Serialize};

use super::UserRecords;

/// One message on the bus: the full record sets of some users, read
/// markers that moved, and orders for a user's sockets.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct BusMessage {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub u: Vec<UserUpdate>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rd: Vec<(RoomId, UserId, u64)>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ctl: Vec<Control>,
}

/// Every incarnation's record of one user, as of one write.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct UserUpdate {
    pub user: UserId,
    pub recs: UserRecords,
}

/// One order on the bus.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub(crate) enum Control {
    /// Close the user's sockets with this code.
    Disconnect { user: UserId, code: u16 },
    /// The user's message in the room was stored: their typing there stops.
    MessageSent { user: UserId, room: RoomId },
    /// To a node: give the user's connection behind `token` to node `to`,
    /// whose socket the client resumes on.
    Handover {
        user: UserId,
        token: ResumeToken,
        to: String,
    },
    /// The answer, to node `to`: the connection, or `None` if none here
    /// holds the token (it went, or was never here).
    HandedOver {
        token: ResumeToken,
        conn: Option<ConnRecord>,
    },
    /// To a node: its devices of the user (and their read marker in
    /// `room`), for question `req` of node `to`.
    Devices {
        user: UserId,
        room: Option<RoomId>,
        req: u64,
        to: String,
    },
    /// The answer to question `req`.
    DevicesOf { req: u64, answer: NodeDevices },
}

/// One node's devices of a user, and their read marker in the room asked about.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct NodeDevices {
    pub node: String,
    pub devices: Vec<Device>,
    pub read: Option<u64>,
}
