//! The cluster rule: several nodes' records of one user → one view, and the
//! transitions observers must see when it changes.
//!
//! Each node (each *incarnation*: a node id plus the epoch of one process
//! run) publishes a [`NodeRecord`] per user it holds: the user's presence on
//! that node alone, its rooms and typing there, and the status it last knew.
//! A node's record is its whole truth about the user, never a delta, and is
//! numbered by a sequence that only grows, so a record arriving twice or late
//! changes nothing ([`Records::apply`]). The cluster view is a pure function
//! of the records and of which incarnations are alive ([`Records::view`]),
//! with the same ranking as the connection → user merge
//! ([`crate::machine::aggregate`]); [`transitions`] turns two views into the
//! diffs observers get. So every node that holds the same records computes
//! the same view, whatever order they arrived in, and announces each change
//! once: it compares with what it last announced, never with a message.

use std::collections::BTreeSet;

use crate::ids::{RoomId, UserId};
use crate::machine::{Custom, Event, Shown, aggregate, render};
use crate::presence::{Activity, Millis, PresenceView, Status, StatusText};
use crate::protocol::Diff;

pub use crate::machine::NodeRecord;

/// Whether an incarnation is alive, for [`Records::view`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Liveness {
    /// Its records count.
    Live,
    /// It died (its lease ran out) at this time: its records hold nothing.
    Gone(Millis),
}

/// All the records of one user, one per incarnation, each with its sequence.
///
/// Sorted by incarnation, in a vector sized to fit: a user is nearly always
/// on one node, and a node keeps one `Records` per user it knows (a
/// `BTreeMap` here cost a 2.2 KB leaf per user: BENCHMARKS.md, "A million
/// users").
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Records {
    by: Vec<(String, u64, NodeRecord)>,
}

impl Records {
    /// Takes `record` if it is newer than what `incarnation` had; returns
    /// whether it was taken. Duplicates and late arrivals are ignored.
    pub fn apply(&mut self, incarnation: &str, seq: u64, record: NodeRecord) -> bool {
        match self.find(incarnation) {
            Ok(at) if self.by[at].1 >= seq => false,
            Ok(at) => {
                (self.by[at].1, self.by[at].2) = (seq, record);
                true
            }
            Err(at) => {
                self.by.reserve_exact(1);
                self.by.insert(at, (incarnation.to_owned(), seq, record));
                true
            }
        }
    }

    fn find(&self, incarnation: &str) -> Result<usize, usize> {
        self.by
            .binary_search_by(|(i, _, _)| i.as_str().cmp(incarnation))
    }

    /// Drops an incarnation's record; returns whether there was one.
    pub fn remove(&mut self, incarnation: &str) -> bool {
        let Ok(at) = self.find(incarnation) else {
            return false;
        };
        self.by.remove(at);
        self.by.shrink_to_fit();
        true
    }

    /// One incarnation's record and its sequence.
    pub fn get(&self, incarnation: &str) -> Option<(u64, &NodeRecord)> {
        let at = self.find(incarnation).ok()?;
        let (_, s, r) = &self.by[at];
        Some((*s, r))
    }

    /// Every record, by incarnation.
    pub fn iter(&self) -> impl Iterator<Item = (&str, u64, &NodeRecord)> {
        self.by.iter().map(|(i, s, r)| (i.as_str(), *s, r))
    }

    /// Whether no incarnation has a record.
    pub fn is_empty(&self) -> bool {
        self.by.is_empty()
    }

    /// Whether `inc`'s record is superseded: another incarnation of the same
    /// node (incarnations are named `<node>.<epoch>`, node ids hold no `.`)
    /// has a record with a greater sequence. A node's sequences only grow,
    /// across its incarnations too, and it has one incarnation at a time, so
    /// the newer one speaks for the node's connections: the older record
    /// holds nothing, whatever its lease says.
    fn superseded(&self, inc: &str, seq: u64) -> bool {
        let node = |i: &str| i.rsplit_once('.').map_or(i, |(n, _)| n).to_owned();
        let mine = node(inc);
        self.by
            .iter()
            .any(|(other, s, _)| *s > seq && other != inc && node(other) == mine)
    }

    /// The cluster view: active if any live node is active, idle with the
    /// most present reason if any live node holds a connection, offline
    /// otherwise or when the latest status is invisible. A record of a dead
    /// or superseded incarnation holds nothing. The status is the latest
    /// setting any node knew (ties go to the greater incarnation, so the
    /// result never depends on arrival order).
    pub fn view(&self, live: impl Fn(&str) -> Liveness) -> ClusterView {
        let mut v = ClusterView::offline();
        let mut status_key: Option<(Millis, &str)> = None;
        let mut privacy_key: Option<(Millis, &str)> = None;
        for (inc, _, rec) in &self.by {
            let key = (rec.status_at, inc.as_str());
            if status_key.is_none_or(|k| key > k) {
                status_key = Some(key);
                v.status = rec.status;
                v.text = rec.text.clone();
                v.status_at = rec.status_at;
            }
            let key = (rec.privacy_at, inc.as_str());
            if privacy_key.is_none_or(|k| key > k) {
                privacy_key = Some(key);
                (v.privacy, v.privacy_at) = (rec.privacy, rec.privacy_at);
            }
        }
        // The merged status, not each record's, decides whether a dead
        // node's connections moved the last-seen.
        let invisible = v.status == Status::Invisible;
        let mut activities = Vec::new();
        let (mut info_from, mut data_from) = ("", "");
        for (inc, seq, rec) in &self.by {
            let rec = match live(inc) {
                Liveness::Live if !self.superseded(inc, *seq) => std::borrow::Cow::Borrowed(rec),
                // Superseded: its connections are the newer record's now.
                Liveness::Live => std::borrow::Cow::Owned(rec.let_go()),
                Liveness::Gone(at) => std::borrow::Cow::Owned(rec.expire(at, invisible)),
            };
            match rec.shown {
                Shown::Active => activities.push(Activity::Active),
                Shown::Idle(r) => activities.push(Activity::Idle(r)),
                Shown::Offline => {}
            }
            v.last_active = v.last_active.max(rec.last_active);
            v.last_seen = v.last_seen.max(rec.last_seen);
            v.rooms.extend(rec.rooms.iter().cloned());
            v.typing.extend(rec.typing.iter().cloned());
            // `info` and `data` from the nodes holding the user: the
            // latest setting of each wins (ties to the greater incarnation).
            if rec.shown != Shown::Offline {
                let c = &rec.custom;
                if (c.info_at, inc.as_str()) >= (v.custom.info_at, info_from) {
                    (v.custom.info, v.custom.info_at) = (c.info.clone(), c.info_at);
                    info_from = inc.as_str();
                }
                if (c.data_at, inc.as_str()) >= (v.custom.data_at, data_from) {
                    (v.custom.data, v.custom.data_at) = (c.data.clone(), c.data_at);
                    data_from = inc.as_str();
                }
            }
        }
        v.shown = if invisible {
            // Observers last saw the user when they went invisible: the
            // machine records that time as its last-seen, but a node still
            // holding connections publishes none, so take the setting's.
            if v.status_at > Millis(0) {
                v.last_seen = v.last_seen.max(Some(v.status_at));
            }
            Shown::Offline
        } else {
            aggregate(activities)
        };
        let rooms = &v.rooms;
        v.typing.retain(|r| rooms.contains(r));
        v
    }
}

/// A user's presence across the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterView {
    /// What observers are shown (invisibility applied).
    pub shown: Shown,
    /// The user's status (invisible included).
    pub status: Status,
    /// The status text.
    pub text: Option<StatusText>,
    /// When the status was set (0: unknown).
    pub status_at: Millis,
    /// Latest last-active time on any live node.
    pub last_active: Option<Millis>,
    /// Latest last-seen time on any node.
    pub last_seen: Option<Millis>,
    /// Rooms the user is in on any live node (also while invisible).
    pub rooms: BTreeSet<RoomId>,
    /// Rooms the user types in on any live node.
    pub typing: BTreeSet<RoomId>,
    /// `info` and `data`, merged.
    pub custom: Custom,
    /// The privacy settings: the latest any node knew, like the status.
    pub privacy: crate::privacy::Privacy,
    /// When they were set (0: unknown).
    pub privacy_at: Millis,
}

impl ClusterView {
    /// A user nobody holds and nothing is known of.
    pub fn offline() -> Self {
        Self {
            shown: Shown::Offline,
            status: Status::Available,
            text: None,
            status_at: Millis(0),
            last_active: None,
            last_seen: None,
            rooms: BTreeSet::new(),
            typing: BTreeSet::new(),
            custom: Custom::default(),
            privacy: crate::privacy::Privacy::default(),
            privacy_at: Millis(0),
        }
    }

    /// Whether observers see the user online.
    pub fn visible(&self) -> bool {
        self.shown != Shown::Offline
    }

    /// Whether the members of `room` see the user there.
    pub fn shown_in(&self, room: &RoomId) -> bool {
        self.visible() && self.rooms.contains(room)
    }

    /// Whether the members of `room` see the user typing there.
    pub fn typing_in(&self, room: &RoomId) -> bool {
        self.visible() && self.typing.contains(room)
    }

    /// The presence observers get, as the machine renders it.
    pub fn presence(&self, user: &UserId) -> PresenceView {
        render(
            user,
            self.shown,
            self.status,
            self.text.as_ref(),
            (self.last_active, self.last_seen),
            &self.custom,
        )
    }

    /// Whether the user's own status, text or privacy settings changed
    /// (their own sockets are told, invisible included).
    pub fn status_changed(&self, before: &ClusterView) -> bool {
        self.status != before.status || self.text != before.text || self.privacy != before.privacy
    }

    fn shown_typing(&self) -> BTreeSet<&RoomId> {
        if self.visible() {
            self.typing.iter().collect()
        } else {
            BTreeSet::new()
        }
    }
}

/// What observers must be told when `user`'s view goes from `before` to
/// `after`, in the order the machine tells it: typing that stopped, the
/// status, the presence change (with rooms left and joined), typing that
/// started. Empty when nothing visible changed.
pub fn transitions(
    user: &UserId,
    before: &ClusterView,
    after: &ClusterView,
    now: Millis,
) -> Vec<Event> {
    let mut out = Vec::new();
    let mut emit = |diff: Diff, rooms: Vec<RoomId>, global: bool| {
        out.push(Event {
            at: now,
            diff,
            rooms,
            global,
        });
    };
    let (vis0, vis1) = (before.visible(), after.visible());
    let (typing0, typing1) = (before.shown_typing(), after.shown_typing());
    for room in typing0.difference(&typing1) {
        emit(
            Diff::TypingStopped { user: user.clone() },
            vec![(*room).clone()],
            false,
        );
    }
    if vis0 && vis1 && after.status_changed(before) {
        let diff = Diff::Status {
            user: user.clone(),
            status: after.status,
            text: after.text.clone(),
        };
        emit(diff, after.rooms.iter().cloned().collect(), true);
    }
    let (c0, c1) = (&before.custom, &after.custom);
    if vis0 && vis1 && (c0.info != c1.info || c0.data != c1.data) {
        let diff = Diff::Data {
            user: user.clone(),
            info: c1.info.clone(),
            data: c1.data.clone(),
        };
        emit(diff, after.rooms.iter().cloned().collect(), true);
    }
    let left: Vec<RoomId> = before.rooms.difference(&after.rooms).cloned().collect();
    let joined: Vec<RoomId> = after.rooms.difference(&before.rooms).cloned().collect();
    let both: Vec<RoomId> = after.rooms.intersection(&before.rooms).cloned().collect();
    let gone = |last_seen| Diff::UserDisconnected {
        user: user.clone(),
        last_seen,
    };
    match (vis0, vis1) {
        (true, false) => {
            let last_seen = after.last_seen.unwrap_or(now);
            emit(
                gone(Some(last_seen)),
                before.rooms.iter().cloned().collect(),
                true,
            );
        }
        (false, true) => {
            let diff = Diff::UserConnected {
                presence: after.presence(user),
            };
            emit(diff, after.rooms.iter().cloned().collect(), true);
        }
        (true, true) => {
            if !left.is_empty() {
                emit(Diff::UserLeft { user: user.clone() }, left, false);
            }
            if before.shown != after.shown {
                let diff = match after.shown {
                    Shown::Idle(reason) => Diff::UserIdle {
                        user: user.clone(),
                        reason,
                    },
                    _ => Diff::UserActive { user: user.clone() },
                };
                emit(diff, both, true);
            }
            if !joined.is_empty() {
                emit(
                    Diff::UserConnected {
                        presence: after.presence(user),
                    },
                    joined,
                    false,
                );
            }
        }
        (false, false) => {}
    }
    for room in typing1.difference(&typing0) {
        emit(
            Diff::TypingStarted { user: user.clone() },
            vec![(*room).clone()],
            false,
        );
    }
    out
}

#[cfg(test)]
mod tests;
