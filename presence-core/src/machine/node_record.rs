//! One node's record of one user: what the machine publishes about the user
//! for the cluster ([`Machine::node_record`]) and the cluster rule
//! ([`crate::cluster`]) merges. It lives beside its maker so that the
//! cluster depends on the machine, never the other way.

use serde::{Deserialize, Serialize};

use super::*;
use crate::presence::IdleReason;
use crate::privacy::Privacy;

/// One node's record of one user.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeRecord {
    /// The user's presence from this node's connections alone, before
    /// invisibility (the cluster applies the status once, merged).
    #[serde(rename = "s", with = "shown_wire")]
    pub shown: Shown,
    /// Last active on this node.
    #[serde(rename = "la", default, skip_serializing_if = "Option::is_none")]
    pub last_active: Option<Millis>,
    /// Last seen on this node (set once it holds no live connection).
    #[serde(rename = "ls", default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<Millis>,
    /// Rooms the user is in on this node, sorted.
    #[serde(rename = "r", default, skip_serializing_if = "Vec::is_empty")]
    pub rooms: Vec<RoomId>,
    /// Rooms the user types in on this node, sorted.
    #[serde(rename = "t", default, skip_serializing_if = "Vec::is_empty")]
    pub typing: Vec<RoomId>,
    /// The status this node last knew, and when it was set (0: unknown, so
    /// any known setting wins over it).
    #[serde(rename = "st", default)]
    pub status: Status,
    /// The status text.
    #[serde(rename = "tx", default, skip_serializing_if = "Option::is_none")]
    pub text: Option<StatusText>,
    /// When the status was set, ms.
    #[serde(rename = "sa", default)]
    pub status_at: Millis,
    /// The `info` and `data` this node knows, with when each was set.
    #[serde(rename = "c", default, skip_serializing_if = "Custom::is_empty")]
    pub custom: Custom,
    /// The user's privacy settings as this node last knew them.
    #[serde(rename = "pv", default, skip_serializing_if = "Privacy::is_open")]
    pub privacy: Privacy,
    /// When they were set, ms (0: never, so any setting wins over them).
    #[serde(rename = "pa", default, skip_serializing_if = "is_zero")]
    pub privacy_at: Millis,
}

fn is_zero(m: &Millis) -> bool {
    m.0 == 0
}

impl NodeRecord {
    /// A record holding nothing: the node let the user go.
    pub fn released(
        last_seen: Option<Millis>,
        status: Status,
        text: Option<StatusText>,
        status_at: Millis,
    ) -> Self {
        Self {
            shown: Shown::Offline,
            last_active: None,
            last_seen,
            rooms: Vec::new(),
            typing: Vec::new(),
            status,
            text,
            status_at,
            custom: Custom::default(),
            privacy: Privacy::default(),
            privacy_at: Millis(0),
        }
    }

    /// What this record keeps once its node holds the user no more: the
    /// settings and the last seen ([`NodeRecord::released`]).
    pub fn let_go(&self) -> Self {
        Self {
            privacy: self.privacy,
            privacy_at: self.privacy_at,
            ..Self::released(
                self.last_seen,
                self.status,
                self.text.clone(),
                self.status_at,
            )
        }
    }

    /// Whether the node holds the user (connected, or in a room while
    /// invisible): a store must keep such a record as long as the node lives.
    pub fn holds(&self) -> bool {
        self.shown != Shown::Offline || !self.rooms.is_empty()
    }

    /// This record after its node died at `at`: it holds nothing any more.
    /// The user was last seen then, unless invisible (an invisible user's
    /// last-seen never moves, as on one node).
    pub fn expired(&self, at: Millis) -> Self {
        self.expire(at, self.status == Status::Invisible)
    }

    pub(crate) fn expire(&self, at: Millis, invisible: bool) -> Self {
        let mut r = self.let_go();
        if self.shown != Shown::Offline && !invisible {
            r.last_seen = Some(self.last_seen.map_or(at, |s| s.max(at)));
        }
        r
    }
}

/// `Shown` on the wire: `a`, an idle reason, or `o`.
mod shown_wire {
    use super::*;

    pub fn serialize<S: serde::Serializer>(s: &Shown, ser: S) -> Result<S::Ok, S::Error> {
        ser.serialize_str(match s {
            Shown::Active => "a",
            Shown::Offline => "o",
            Shown::Idle(IdleReason::NoInput) => "no_input",
            Shown::Idle(IdleReason::Blurred) => "blurred",
            Shown::Idle(IdleReason::Hidden) => "hidden",
            Shown::Idle(IdleReason::Locked) => "locked",
        })
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(de: D) -> Result<Shown, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(de)?;
        Ok(match &*s {
            "a" => Shown::Active,
            "o" => Shown::Offline,
            "no_input" => Shown::Idle(IdleReason::NoInput),
            "blurred" => Shown::Idle(IdleReason::Blurred),
            "hidden" => Shown::Idle(IdleReason::Hidden),
            "locked" => Shown::Idle(IdleReason::Locked),
            other => {
                return Err(serde::de::Error::custom(format_args!(
                    "unknown state {other:?}"
                )));
            }
        })
    }
}
