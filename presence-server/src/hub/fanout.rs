//! Fan-out: pending batches become frames, each encoded once and queued
//! for every recipient; snapshots and `watching` answers go the same way.

use std::collections::{HashMap, HashSet};

use presence_core::protocol::{Diff, Receipt, ServerMessage, encode};
use presence_core::{ConnId, Millis, PresenceView, RoomId, UserId};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::{Node, encoded, privacy};
use crate::broadcast::Audience;

impl Node {
    /// Sends every pending batch: one encoding per audience, the same bytes
    /// to every recipient.
    pub(super) fn flush(&mut self, now: Millis) {
        self.batch_since = None;
        let batches = self.batch.take();
        let batches = self.sort_large(now, batches);
        let summaries = self.due_summaries(now);
        let joiners = std::mem::take(&mut self.snapshots);
        for (audience, mut diffs) in batches {
            let (room, recipients): (Option<RoomId>, Vec<ConnId>) = match audience {
                Audience::Room(room) => {
                    let conns = self.machine.room_connections(&room);
                    (Some(room), conns)
                }
                Audience::Watchers(user) => (
                    None,
                    self.watchers
                        .get(&user)
                        .map(|w| w.iter().copied().collect())
                        .unwrap_or_default(),
                ),
            };
            let recipients = deliverable(self, room.as_ref(), recipients, &joiners);
            if recipients.is_empty() {
                continue;
            }
            self.metrics.fanout.observe(recipients.len() as f64);
            let subjects = self.diff_subjects(&diffs, &recipients);
            for (sights, conns) in self.by_sight(&subjects, recipients) {
                // No sights: the one group, which takes the batch as it is.
                let seen = if sights.is_empty() {
                    std::mem::take(&mut diffs)
                } else {
                    privacy::diffs_seen(&diffs, &subjects, &sights)
                };
                if seen.is_empty() {
                    continue;
                }
                for frame in diff_frames(room.clone(), seen) {
                    for &conn in &conns {
                        self.send(conn, frame.clone());
                    }
                }
            }
        }
        for (room, frame) in summaries {
            let conns = self.machine.room_connections(&room);
            for conn in deliverable(self, Some(&room), conns, &joiners) {
                self.send(conn, frame.clone());
            }
        }
        self.send_snapshots(joiners);
    }

    /// Sends owed snapshots, each room's encoded once for all its joiners.
    pub(super) fn send_snapshots(&mut self, joiners: HashMap<RoomId, HashSet<ConnId>>) {
        for (room, conns) in joiners {
            // Left again (or gone) before the flush: nothing is owed.
            let conns: Vec<ConnId> = conns
                .into_iter()
                .filter(|c| self.machine.rooms_of(*c).contains(&room))
                .collect();
            if conns.is_empty() {
                continue;
            }
            let snapshot = match &self.cluster {
                _ if self.large.is_large(&room) => self.large_snapshot(&room),
                Some(c) => c.snapshot(&room),
                None => ServerMessage::Snapshot {
                    members: sorted(self.machine.members(&room)),
                    typing: self.machine.typing_in(&room),
                    receipts: self.machine.receipts_in(&room),
                    room,
                    more: false,
                    large: false,
                    counts: None,
                },
            };
            for (snapshot, conns) in self.snapshots_seen(snapshot, conns) {
                let frames = snapshot_frames(snapshot);
                // Each joiner gets the parts back to back: nothing comes between.
                for conn in conns {
                    for frame in &frames {
                        self.send(conn, frame.clone());
                    }
                }
            }
        }
    }

    /// Owes `conn` a snapshot of `room` from this node's machine, sent at
    /// the next flush (see [`Node::snapshots`]).
    pub(super) fn local_snapshot(&mut self, conn: ConnId, room: RoomId) {
        self.snapshots.entry(room).or_default().insert(conn);
    }

    pub(super) fn local_watching(&mut self, conn: ConnId, users: &[UserId]) {
        let views = users
            .iter()
            .map(|u| {
                self.machine
                    .view(u)
                    .unwrap_or_else(|| PresenceView::offline(u.clone()))
            })
            .collect();
        self.send_watching(conn, views);
    }

    /// A `watching` answer, as `conn` may see it.
    pub(super) fn send_watching(&mut self, conn: ConnId, views: Vec<PresenceView>) {
        let users = self.seen_by(conn, views);
        self.send(conn, encoded(&ServerMessage::Watching { users }));
    }

    /// A room's snapshot per group of joiners who see it alike: last seens
    /// and read markers as each may see them.
    fn snapshots_seen(
        &self,
        snapshot: ServerMessage,
        conns: Vec<ConnId>,
    ) -> Vec<(ServerMessage, Vec<ConnId>)> {
        let ServerMessage::Snapshot {
            room,
            members,
            typing,
            receipts,
            more,
            large,
            counts,
        } = snapshot
        else {
            return vec![(snapshot, conns)];
        };
        let mut subjects = self.view_subjects(&members);
        // The room's shown markers are hidden only from joiners with receipts off.
        if self.any_blind(&conns) {
            subjects.extend(receipts.iter().map(|r| r.user.clone()));
        }
        subjects.sort_unstable();
        subjects.dedup();
        self.by_sight(&subjects, conns)
            .into_iter()
            .map(|(sights, conns)| {
                let sight = |u: &UserId| privacy::sight_of(&subjects, &sights, u);
                let msg = ServerMessage::Snapshot {
                    room: room.clone(),
                    members: members
                        .iter()
                        .map(|v| sight(&v.user).view(v.clone()))
                        .collect(),
                    typing: typing.clone(),
                    receipts: receipts
                        .iter()
                        .filter(|r| sight(&r.user).receipts)
                        .cloned()
                        .collect(),
                    more,
                    large,
                    counts,
                };
                (msg, conns)
            })
            .collect()
    }
}

/// Those of `conns` a room's (or a watch list's) frames may go to now:
/// with a socket, not waiting for the room's first snapshot, not owed a
/// snapshot that will show what the frames say.
fn deliverable(
    st: &Node,
    room: Option<&RoomId>,
    conns: Vec<ConnId>,
    joiners: &HashMap<RoomId, HashSet<ConnId>>,
) -> Vec<ConnId> {
    conns
        .into_iter()
        .filter(|c| st.sockets.contains_key(c))
        .filter(|c| match (room, &st.cluster) {
            (Some(room), Some(cl)) => !cl.is_awaiting(*c, room),
            _ => true,
        })
        .filter(|c| {
            room.and_then(|room| joiners.get(room))
                .is_none_or(|owed| !owed.contains(c))
        })
        .collect()
}

/// A `diffs` frame's or a snapshot part's size, roughly. A bigger batch goes
/// out as several `diffs` frames, in order; a bigger snapshot in parts marked
/// `more` (PROTOCOL.md, "Diffs"). This costs no memory per socket: the writer
/// fragments every text frame past `session::writer::FRAGMENT` (2 KiB).
const FRAME: usize = 8 * 1024;

/// What is cut into frames goes out in at most `MAX_PARTS` of them (a
/// quarter of the default outbound queue), so a recipient is not taken for
/// a slow consumer; past that, frames grow up to `MAX_PART`.
const MAX_PARTS: usize = 64;
const MAX_PART: usize = 32 * 1024;

/// The frame size for a message of `whole` bytes.
fn part_size(whole: usize) -> usize {
    whole.div_ceil(MAX_PARTS).clamp(FRAME, MAX_PART)
}

/// `diffs` encoded into frames of about [`part_size`] at most, each
/// encoded once for all its recipients.
fn diff_frames(room: Option<RoomId>, diffs: Vec<Diff>) -> Vec<Utf8Bytes> {
    let msg = ServerMessage::Diffs { room, diffs };
    let whole = encode(&msg);
    let ServerMessage::Diffs { room, diffs } = msg else {
        return vec![Utf8Bytes::from(whole)];
    };
    let part = part_size(whole.len());
    if whole.len() <= part || diffs.len() < 2 {
        return vec![Utf8Bytes::from(whole)];
    }
    let per = diffs.len().div_ceil(whole.len().div_ceil(part)).max(1);
    diffs
        .chunks(per)
        .map(|chunk| {
            Utf8Bytes::from(encode(&ServerMessage::Diffs {
                room: room.clone(),
                diffs: chunk.to_vec(),
            }))
        })
        .collect()
}

/// Members in id order, as the HTTP API pages them.
fn sorted(mut members: Vec<PresenceView>) -> Vec<PresenceView> {
    members.sort_by(|a, b| a.user.cmp(&b.user));
    members
}

/// A snapshot as frames of about [`part_size`] at most: members split
/// in order, each part with its members' typing and markers.
fn snapshot_frames(msg: ServerMessage) -> Vec<Utf8Bytes> {
    let whole = encode(&msg);
    let ServerMessage::Snapshot {
        room,
        members,
        typing,
        receipts,
        large,
        counts,
        ..
    } = msg
    else {
        return vec![Utf8Bytes::from(whole)];
    };
    let part = part_size(whole.len());
    if whole.len() <= part || members.len() < 2 {
        return vec![Utf8Bytes::from(whole)];
    }
    let per = members.len().div_ceil(whole.len().div_ceil(part)).max(1);
    let parts: Vec<&[PresenceView]> = members.chunks(per).collect();
    let last = parts.len() - 1;
    let part_of = |user: &UserId| {
        parts
            .iter()
            .position(|p| p.iter().any(|m| m.user == *user))
            .unwrap_or(0)
    };
    let mut typing_by: Vec<Vec<UserId>> = vec![Vec::new(); parts.len()];
    for u in typing {
        typing_by[part_of(&u)].push(u);
    }
    let mut receipts_by: Vec<Vec<Receipt>> = vec![Vec::new(); parts.len()];
    for r in receipts {
        receipts_by[part_of(&r.user)].push(r);
    }
    parts
        .iter()
        .zip(typing_by.into_iter().zip(receipts_by))
        .enumerate()
        .map(|(i, (part, (typing, receipts)))| {
            Utf8Bytes::from(encode(&ServerMessage::Snapshot {
                room: room.clone(),
                members: part.to_vec(),
                typing,
                receipts,
                more: i < last,
                large,
                counts,
            }))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use presence_core::protocol::decode_server;

    #[test]
    fn a_big_batch_goes_out_as_bounded_frames_in_order() {
        let diffs: Vec<Diff> = (0..2_000)
            .map(|i| Diff::UserActive {
                user: UserId::new(format!("user-{i:05}")).expect("valid"),
            })
            .collect();
        let room = RoomId::new("r").ok();
        let frames = diff_frames(room.clone(), diffs.clone());
        assert!(frames.len() > 1, "split");
        let mut back = Vec::new();
        for f in &frames {
            assert!(f.len() <= FRAME + 64, "{} bytes", f.len());
            let Ok(ServerMessage::Diffs { room: r, diffs }) = decode_server(f.as_str()) else {
                panic!("a diffs frame");
            };
            assert_eq!(r, room);
            back.extend(diffs);
        }
        assert_eq!(back, diffs, "every diff, in order");
        assert_eq!(
            diff_frames(None, diffs[..3].to_vec()).len(),
            1,
            "small stays whole"
        );
    }

    #[test]
    fn a_big_snapshot_goes_out_in_parts_that_add_up() {
        let user = |i: usize| UserId::new(format!("member-{i:05}")).expect("valid");
        let members: Vec<PresenceView> = (0..500)
            .map(|i| PresenceView {
                user: user(i),
                state: presence_core::PresenceState::Active,
                reason: None,
                status: presence_core::Status::Available,
                text: None,
                last_active: Some(presence_core::Millis(1_764_338_400_000)),
                last_seen: None,
                info: None,
                data: None,
            })
            .collect();
        let typing: Vec<UserId> = (0..500).step_by(7).map(user).collect();
        let receipts: Vec<Receipt> = (0..500)
            .step_by(3)
            .map(|i| Receipt {
                user: user(i),
                marker: i as u64,
            })
            .collect();
        let room = RoomId::new("big").expect("valid");
        let frames = snapshot_frames(ServerMessage::Snapshot {
            room: room.clone(),
            members: members.clone(),
            typing: typing.clone(),
            receipts: receipts.clone(),
            more: false,
            large: false,
            counts: None,
        });
        assert!(frames.len() > 3, "{} parts", frames.len());
        let (mut m, mut t, mut r) = (Vec::new(), Vec::new(), Vec::new());
        for (i, f) in frames.iter().enumerate() {
            assert!(f.len() <= FRAME + 512, "{} bytes", f.len());
            let Ok(ServerMessage::Snapshot {
                room: got,
                members,
                typing,
                receipts,
                more,
                ..
            }) = decode_server(f.as_str())
            else {
                panic!("a snapshot");
            };
            assert_eq!(got, room);
            assert_eq!(more, i + 1 < frames.len(), "more on all but the last");
            m.extend(members);
            t.extend(typing);
            r.extend(receipts);
        }
        assert_eq!(m, members);
        assert_eq!(t, typing);
        assert_eq!(r, receipts);

        // A bigger room: at most MAX_PARTS parts, each still bounded.
        let many: Vec<PresenceView> = (0..10_000)
            .map(|i| PresenceView {
                user: user(i),
                ..members[0].clone()
            })
            .collect();
        let frames = snapshot_frames(ServerMessage::Snapshot {
            room,
            members: many,
            typing: Vec::new(),
            receipts: Vec::new(),
            more: false,
            large: false,
            counts: None,
        });
        assert!(frames.len() <= MAX_PARTS + 1, "{} parts", frames.len());
        assert!(frames.iter().all(|f| f.len() <= MAX_PART + 512));
        assert!(frames[0].len() > FRAME, "parts grew instead");
    }
}
