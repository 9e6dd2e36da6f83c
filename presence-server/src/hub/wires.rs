//! What the node's decisions owe the sockets, and the senders that carry it.
//!
//! Decisions never touch a channel: they append to [`Outbound`] (frames,
//! offers, closes, forgotten sockets and host events, in the order decided),
//! and the shell hands it out when it lets go of the state's lock (see
//! [`super::Locked`]). Sockets are named there by their generation, unique
//! per socket, so a resume that puts a new socket under the same `ConnId`
//! never gets frames meant for the one it replaced. A full queue comes back
//! to the node as a slow consumer for it to close.

use std::collections::HashMap;

use presence_core::{ConnId, Event};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::Close;
use super::replica::Announcement;
use crate::backend::Incarnation;

/// One step's output for the shell, in decision order.
#[derive(Default)]
pub(super) struct Outbound {
    ops: Vec<Op>,
    /// The driver's next deadline moved earlier.
    wake_driver: bool,
    /// The cluster's round task has something to send.
    wake_rounds: bool,
}

enum Op {
    /// A frame; a full queue makes its socket a slow consumer.
    Frame(ConnId, u64, Utf8Bytes),
    /// A frame only if its queue has room (never makes a socket slow).
    Offer(u64, Utf8Bytes),
    /// Signals the socket's task to close; its sender goes.
    Close(u64, Close),
    /// The socket ended by itself; its sender goes.
    Forget(u64),
    /// For the app's subscribers and the feed (boxed, as the next: a
    /// fan-out queues thousands of frames, each an `Op` of the largest size).
    Host(Box<Event>),
    /// A view change for the cluster's stream as this incarnation's own,
    /// then for the host.
    Own(Box<(Incarnation, Event)>),
    /// Owed changes for the stream's outbox; this node's own also for the
    /// host (without a stream, for the node's feed).
    Announce(Vec<Announcement>),
}

impl Outbound {
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty() && !self.wake_driver && !self.wake_rounds
    }

    pub fn wake_driver(&mut self) {
        self.wake_driver = true;
    }

    pub fn wake_rounds(&mut self) {
        self.wake_rounds = true;
    }

    pub fn frame(&mut self, conn: ConnId, generation: u64, frame: Utf8Bytes) {
        self.ops.push(Op::Frame(conn, generation, frame));
    }

    pub fn offer(&mut self, generation: u64, frame: Utf8Bytes) {
        self.ops.push(Op::Offer(generation, frame));
    }

    pub fn close(&mut self, generation: u64, close: Close) {
        self.ops.push(Op::Close(generation, close));
    }

    pub fn forget(&mut self, generation: u64) {
        self.ops.push(Op::Forget(generation));
    }

    pub fn host(&mut self, ev: Event) {
        self.ops.push(Op::Host(Box::new(ev)));
    }

    pub fn own(&mut self, me: Incarnation, ev: Event) {
        self.ops.push(Op::Own(Box::new((me, ev))));
    }

    pub fn announce(&mut self, host: Vec<Announcement>) {
        if !host.is_empty() {
            self.ops.push(Op::Announce(host));
        }
    }
}

/// One socket's ends on the server's side.
pub(super) struct Wire {
    tx: mpsc::Sender<Utf8Bytes>,
    close: watch::Sender<Option<Close>>,
}

impl Wire {
    pub fn new(tx: mpsc::Sender<Utf8Bytes>, close: watch::Sender<Option<Close>>) -> Self {
        Self { tx, close }
    }
}

/// The live sockets' senders, by generation.
#[derive(Default)]
pub(super) struct Wires {
    by_generation: HashMap<u64, Wire>,
}

impl Wires {
    pub fn register(&mut self, generation: u64, wire: Wire) {
        self.by_generation.insert(generation, wire);
    }

    pub fn remove(&mut self, generation: u64) {
        self.by_generation.remove(&generation);
    }

    /// Hands out `out` in order, leaving it empty (its buffer kept for the
    /// next step, up to [`KEPT_OPS`]); returns the sockets whose queue was
    /// full (connection and generation, each once).
    pub fn deliver(&mut self, out: &mut Outbound, hub: &super::Hub) -> Vec<(ConnId, u64)> {
        let metrics = &hub.metrics;
        if std::mem::take(&mut out.wake_driver) {
            hub.wake.notify_one();
        }
        if std::mem::take(&mut out.wake_rounds) {
            hub.cluster_wake();
        }
        let mut slow: Vec<(ConnId, u64)> = Vec::new();
        for op in out.ops.drain(..) {
            match op {
                Op::Frame(conn, generation, frame) => {
                    let Some(wire) = self.by_generation.get(&generation) else {
                        continue;
                    };
                    let len = frame.len() as u64;
                    match wire.tx.try_send(frame) {
                        Ok(()) => {
                            metrics.frames_out.inc();
                            metrics.bytes_out.inc_by(len);
                        }
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            if !slow.contains(&(conn, generation)) {
                                slow.push((conn, generation));
                            }
                        }
                        Err(mpsc::error::TrySendError::Closed(_)) => {}
                    }
                }
                Op::Offer(generation, frame) => {
                    if let Some(wire) = self.by_generation.get(&generation)
                        && wire.tx.try_send(frame).is_ok()
                    {
                        metrics.frames_out.inc();
                    }
                }
                Op::Close(generation, close) => {
                    if let Some(wire) = self.by_generation.remove(&generation) {
                        let _ = wire.close.send(Some(close));
                    }
                }
                Op::Forget(generation) => self.remove(generation),
                Op::Host(ev) => hub.publish(&ev),
                Op::Own(own) => {
                    let (me, ev) = &*own;
                    if let Some(stream) = &hub.stream {
                        stream.push_own(me, ev);
                    }
                    hub.publish(ev);
                }
                Op::Announce(host) => {
                    for a in &host {
                        if a.own {
                            for (_, ev) in &a.events {
                                hub.publish(ev);
                            }
                        }
                        if let Some(stream) = &hub.stream {
                            stream.push(a);
                        }
                    }
                }
            }
        }
        if out.ops.capacity() > KEPT_OPS {
            out.ops.shrink_to(KEPT_OPS);
        }
        slow
    }
}

/// Ops whose buffer a node keeps between steps: a room's fan-out reuses it
/// instead of growing a new one each batch (a 1,000-member room's batch
/// fits; past that the buffer goes back to this).
const KEPT_OPS: usize = 1024;

#[cfg(test)]
impl Outbound {
    /// The frames queued for the socket `generation`, in order (offers too).
    pub fn frames(&self, generation: u64) -> Vec<String> {
        self.ops
            .iter()
            .filter_map(|op| match op {
                Op::Frame(_, g, f) | Op::Offer(g, f) if *g == generation => Some(f.to_string()),
                _ => None,
            })
            .collect()
    }

    /// How the socket `generation` is to be closed, if it is.
    pub fn closed(&self, generation: u64) -> Option<Close> {
        self.ops.iter().find_map(|op| match op {
            Op::Close(g, close) if *g == generation => Some(*close),
            _ => None,
        })
    }
}
