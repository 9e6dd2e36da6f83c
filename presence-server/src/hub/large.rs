//! Large rooms on this node (PROTOCOL.md, "Large rooms"; the rule and the
//! bookkeeping are `presence_core::large`). At each flush a large room's
//! diffs go into its pending summary instead of out, a small room that grew
//! past its threshold becomes large, and due summaries are built. Crossing
//! the threshold either way owes every member here a fresh snapshot.
//!
//! The mode is decided from the members this node knows: its machine alone,
//! or in a cluster its replica, which holds every node's members of the
//! rooms its sockets are in. So each node decides for its own sockets with
//! no coordination; near the threshold two nodes may briefly disagree.

use presence_core::large::Due;
use presence_core::protocol::{Counts, Diff, ServerMessage, encode};
use presence_core::{ConnId, Millis, PresenceView, RoomId, UserId};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::{Hub, Node};
use crate::broadcast::Audience;

impl Hub {
    /// Sets (`Some`) or clears a room's own threshold (0 counts as 1).
    pub fn set_large_room(&self, room: RoomId, members: Option<usize>) {
        self.lock()
            .large
            .set_threshold(room, members.map(|m| m.max(1)));
    }
}

/// At least the room's online members, in constant time.
fn room_size(st: &Node, room: &RoomId) -> usize {
    match &st.cluster {
        Some(c) => c.room_size(room),
        None => st.machine.room_size(room),
    }
}

fn room_counts(st: &Node, room: &RoomId) -> Counts {
    match &st.cluster {
        Some(c) => c.counts(room),
        None => st.machine.counts(room),
    }
}

impl Node {
    /// Takes out of a flush the diffs of rooms that are (or just became)
    /// large; the rest go out as usual.
    pub(super) fn sort_large(
        &mut self,
        now: Millis,
        batches: Vec<(Audience, Vec<Diff>)>,
    ) -> Vec<(Audience, Vec<Diff>)> {
        batches
            .into_iter()
            .filter(|(audience, diffs)| {
                let Audience::Room(room) = audience else {
                    return true;
                };
                if self.large.absorb(room, diffs) {
                    return false;
                }
                let entered = self.large.may_enter(room, room_size(self, room))
                    && self.large.enter(room, now, room_counts(self, room));
                if entered {
                    self.metrics.large_switch("large");
                    // The snapshot shows what these diffs say.
                    self.owe_everyone(room);
                }
                !entered
            })
            .collect()
    }

    /// The large rooms' summaries due now, each encoded once; a room that
    /// became small instead owes its members a full snapshot.
    pub(super) fn due_summaries(&mut self, now: Millis) -> Vec<(RoomId, Utf8Bytes)> {
        let mut out = Vec::new();
        for room in self.large.due(now) {
            let counts = room_counts(self, &room);
            let Node {
                large,
                machine,
                cluster,
                ..
            } = &mut *self;
            let (machine, cluster) = (&*machine, &*cluster);
            let view = |u: &UserId| -> Option<PresenceView> {
                match cluster {
                    Some(c) => c
                        .view(u)
                        .filter(|v| v.shown_in(&room))
                        .map(|v| v.presence(u)),
                    None => machine
                        .view(u)
                        .filter(|v| v.state.is_online() && machine.in_room(&room, u)),
                }
            };
            match large.summarize(&room, now, counts, view) {
                Due::Summary(msg) => {
                    self.metrics.summaries.inc();
                    out.push((room, Utf8Bytes::from(encode(&msg))));
                }
                Due::Small => {
                    self.metrics.large_switch("small");
                    self.owe_everyone(&room);
                }
                Due::Quiet => {}
            }
        }
        self.metrics.large_rooms.set(self.large.len() as i64);
        out
    }

    /// Every member here is owed a fresh snapshot of `room` (the mode
    /// changed), but those still waiting for the room's first one.
    fn owe_everyone(&mut self, room: &RoomId) {
        let conns: Vec<ConnId> = self
            .machine
            .room_connections(room)
            .into_iter()
            .filter(|c| self.sockets.contains_key(c))
            .filter(|c| {
                self.cluster
                    .as_ref()
                    .is_none_or(|cl| !cl.is_awaiting(*c, room))
            })
            .collect();
        self.snapshots
            .entry(room.clone())
            .or_default()
            .extend(conns);
    }

    /// A large room's snapshot: the counts and the first online members.
    pub(super) fn large_snapshot(&self, room: &RoomId) -> ServerMessage {
        let members = match &self.cluster {
            Some(c) => c.first_online(room),
            None => self.machine.first_online(room),
        };
        ServerMessage::Snapshot {
            room: room.clone(),
            members,
            typing: Vec::new(),
            receipts: Vec::new(),
            more: false,
            large: true,
            counts: Some(room_counts(self, room)),
        }
    }
}
