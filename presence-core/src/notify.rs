//! Should a message reach a user live, by a push, or not at all? The rule, as
//! a pure function of the user's devices (every node's connections), their
//! status and read marker, and the message: PROTOCOL.md, "Devices and
//! notifications", documents it reason by reason.

use core::time::Duration;

use serde::{Deserialize, Serialize};

use crate::ids::{ConnId, RoomId};
use crate::presence::{Activity, DeviceKind, IdleReason, Status};

/// One connection of the user, as a backend sees it.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct Device {
    /// The connection (unique on its node).
    pub conn: ConnId,
    /// What it runs on.
    pub kind: DeviceKind,
    /// Active, or idle with the reason (hidden, blurred, locked: the page is
    /// not in front of the user).
    #[serde(flatten)]
    pub activity: Activity,
    /// The joined room its page shows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub view: Option<RoomId>,
    /// Milliseconds since its last input, as far as its reports tell.
    pub quiet_ms: u64,
}

/// What to do with a message for the user.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// They see it as it arrives (in the room, or in the app): no push.
    Live,
    /// Send a push notification.
    Push,
    /// Neither: they read it already, or asked not to be disturbed.
    None,
}

/// Why: a stable code, one per rule.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reason {
    /// The user's read marker in the room is at or past the message's.
    Read,
    /// No connection.
    Offline,
    /// A page in front of the user shows the room.
    Viewing,
    /// Status `busy` and the message does not mention them.
    Busy,
    /// A connection is active elsewhere in the app.
    Active,
    /// Every connection is hidden or locked (an app in the background).
    Background,
    /// No input for the push threshold on any connection that is not hidden
    /// or locked.
    Idle,
    /// A page is in front of the user, with input less than the threshold ago.
    Recent,
}

impl Reason {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Read => "read",
            Reason::Offline => "offline",
            Reason::Viewing => "viewing",
            Reason::Busy => "busy",
            Reason::Active => "active",
            Reason::Background => "background",
            Reason::Idle => "idle",
            Reason::Recent => "recent",
        }
    }
}

/// The message asked about.
#[derive(Clone, Copy, Debug)]
pub struct Message<'a> {
    /// Its room.
    pub room: &'a RoomId,
    /// Whether it mentions the user (it then reaches a busy user).
    pub mention: bool,
    /// Its sequence number in the room, if the app has one: a user who read
    /// that far gets nothing.
    pub marker: Option<u64>,
}

/// The user as the rule needs them.
#[derive(Clone, Copy, Debug)]
pub struct Recipient<'a> {
    /// Every live connection, on every node.
    pub devices: &'a [Device],
    /// Their status (`invisible` is seen through: an invisible user at the
    /// app is not pushed).
    pub status: Status,
    /// Their read marker in the message's room.
    pub read: Option<u64>,
}

/// The rule, first match wins:
/// 1. `none`/`read`: `marker` given and read up to it;
/// 2. `push`/`offline`: no device;
/// 3. `live`/`viewing`: a device shows the room and is in front of the user
///    (active, or idle for `no_input` less than `push_after`);
/// 4. `none`/`busy`: status busy and no mention;
/// 5. `live`/`active`: a device is active;
/// 6. `push`/`background`: every device is hidden or locked;
/// 7. `push`/`idle`: no input for `push_after` on any device that is not
///    hidden or locked;
/// 8. `live`/`recent`: otherwise (a page in front, input not long ago).
pub fn decide(who: &Recipient<'_>, msg: &Message<'_>, push_after: Duration) -> (Decision, Reason) {
    let threshold = u64::try_from(push_after.as_millis()).unwrap_or(u64::MAX);
    if let (Some(at), Some(read)) = (msg.marker, who.read)
        && read >= at
    {
        return (Decision::None, Reason::Read);
    }
    if who.devices.is_empty() {
        return (Decision::Push, Reason::Offline);
    }
    let in_front = |d: &Device| match d.activity {
        Activity::Active => true,
        Activity::Idle(IdleReason::NoInput) => d.quiet_ms < threshold,
        Activity::Idle(_) => false,
    };
    if who
        .devices
        .iter()
        .any(|d| d.view.as_ref() == Some(msg.room) && in_front(d))
    {
        return (Decision::Live, Reason::Viewing);
    }
    if who.status == Status::Busy && !msg.mention {
        return (Decision::None, Reason::Busy);
    }
    if who.devices.iter().any(|d| d.activity == Activity::Active) {
        return (Decision::Live, Reason::Active);
    }
    let away = |d: &Device| {
        matches!(
            d.activity,
            Activity::Idle(IdleReason::Hidden | IdleReason::Locked)
        )
    };
    if who.devices.iter().all(away) {
        return (Decision::Push, Reason::Background);
    }
    // Hidden and locked devices are not in front of the user: their quiet
    // does not count.
    if who
        .devices
        .iter()
        .filter(|d| !away(d))
        .all(|d| d.quiet_ms >= threshold)
    {
        return (Decision::Push, Reason::Idle);
    }
    (Decision::Live, Reason::Recent)
}

#[cfg(test)]
mod tests;
