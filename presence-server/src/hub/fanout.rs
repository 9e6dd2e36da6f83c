//! Fan-out: pending batches become frames, each encoded once and queued
//! for every recipient; snapshots and `watching` answers go the same way.

use std::collections::{HashMap, HashSet};

use axum::extract::ws::{Message, Utf8Bytes};
use presence_core::protocol::{Diff, ServerMessage, encode};
use presence_core::{ConnId, RoomId, UserId};
use tokio::sync::mpsc;

use super::{Hub, State, offline_view, text_frame};
use crate::broadcast::Audience;

impl Hub {
    /// Sends every pending batch: one encoding per audience, the same bytes
    /// to every recipient.
    pub(super) fn flush(&self, st: &mut State) {
        st.batch_since = None;
        let joiners = std::mem::take(&mut st.snapshots);
        for (audience, diffs) in st.batch.take() {
            let (room, recipients): (Option<RoomId>, Vec<ConnId>) = match audience {
                Audience::Room(room) => {
                    let conns = st.machine.room_connections(&room);
                    (Some(room), conns)
                }
                Audience::Watchers(user) => (
                    None,
                    st.watchers
                        .get(&user)
                        .map(|w| w.iter().copied().collect())
                        .unwrap_or_default(),
                ),
            };
            let recipients: Vec<ConnId> = recipients
                .into_iter()
                .filter(|c| st.sockets.contains_key(c))
                .filter(|c| match (&room, &st.cluster) {
                    (Some(room), Some(cl)) => !cl.is_awaiting(*c, room),
                    _ => true,
                })
                .filter(|c| {
                    room.as_ref()
                        .and_then(|room| joiners.get(room))
                        .is_none_or(|owed| !owed.contains(c))
                })
                .collect();
            if recipients.is_empty() {
                continue;
            }
            self.metrics.fanout.observe(recipients.len() as f64);
            for frame in diff_frames(room, diffs) {
                for &conn in &recipients {
                    self.send(st, conn, Message::Text(frame.clone()));
                }
            }
        }
        self.send_snapshots(st, joiners);
    }

    /// Sends owed snapshots, each room's encoded once for all its joiners.
    pub(super) fn send_snapshots(&self, st: &mut State, joiners: HashMap<RoomId, HashSet<ConnId>>) {
        for (room, conns) in joiners {
            // Left again (or gone) before the flush: nothing is owed.
            let conns: Vec<ConnId> = conns
                .into_iter()
                .filter(|c| st.machine.rooms_of(*c).contains(&room))
                .collect();
            if conns.is_empty() {
                continue;
            }
            let frame = text_frame(&match &st.cluster {
                Some(c) => c.snapshot(&room),
                None => ServerMessage::Snapshot {
                    members: st.machine.members(&room),
                    typing: st.machine.typing_in(&room),
                    receipts: st.machine.receipts_in(&room),
                    room,
                },
            });
            for conn in conns {
                self.send(st, conn, frame.clone());
            }
        }
    }

    /// Queues a frame for a socket; a full queue marks it slow.
    pub(super) fn send(&self, st: &mut State, conn: ConnId, msg: Message) {
        let Some(socket) = st.sockets.get(&conn) else {
            return;
        };
        let len = match &msg {
            Message::Text(t) => t.len() as u64,
            _ => 0,
        };
        match socket.tx.try_send(msg) {
            Ok(()) => {
                self.metrics.frames_out.inc();
                self.metrics.bytes_out.inc_by(len);
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                if !st.slow.contains(&conn) {
                    st.slow.push(conn);
                }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    /// Owes `conn` a snapshot of `room` from this node's machine, sent at
    /// the next flush (see [`State::snapshots`]).
    pub(super) fn local_snapshot(&self, st: &mut State, conn: ConnId, room: RoomId) {
        st.snapshots.entry(room).or_default().insert(conn);
    }

    pub(super) fn local_watching(&self, st: &mut State, conn: ConnId, users: &[UserId]) {
        let views = users
            .iter()
            .map(|u| st.machine.view(u).unwrap_or_else(|| offline_view(u)))
            .collect();
        self.send(
            st,
            conn,
            text_frame(&ServerMessage::Watching { users: views }),
        );
    }
}

/// A `diffs` frame's size at most, roughly: a socket's write buffer keeps
/// the capacity of the largest frame it ever wrote (tungstenite-rs#500), so
/// one big batch would pin that much memory per recipient for good. A
/// bigger batch goes out as several frames, in order (receivers apply each
/// in turn, so nothing changes for them).
const MAX_DIFFS_FRAME: usize = 8 * 1024;

/// `diffs` encoded into frames of about `MAX_DIFFS_FRAME` at most, each
/// encoded once for all its recipients.
fn diff_frames(room: Option<RoomId>, diffs: Vec<Diff>) -> Vec<Utf8Bytes> {
    let msg = ServerMessage::Diffs { room, diffs };
    let whole = encode(&msg);
    let ServerMessage::Diffs { room, diffs } = msg else {
        return vec![Utf8Bytes::from(whole)];
    };
    if whole.len() <= MAX_DIFFS_FRAME || diffs.len() < 2 {
        return vec![Utf8Bytes::from(whole)];
    }
    let per = diffs
        .len()
        .div_ceil(whole.len().div_ceil(MAX_DIFFS_FRAME))
        .max(1);
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
            assert!(f.len() <= MAX_DIFFS_FRAME + 64, "{} bytes", f.len());
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
}
