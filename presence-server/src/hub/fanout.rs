//! Fan-out: pending batches become frames, each encoded once and queued
//! for every recipient; snapshots and `watching` answers go the same way.

use std::collections::{HashMap, HashSet};

use axum::extract::ws::{Message, Utf8Bytes};
use presence_core::protocol::{ServerMessage, encode};
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
            let frame = Utf8Bytes::from(encode(&ServerMessage::Diffs { room, diffs }));
            self.metrics.fanout.observe(recipients.len() as f64);
            for conn in recipients {
                self.send(st, conn, Message::Text(frame.clone()));
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
