//! A user's devices on every node, and the notification decision made from
//! them ([`presence_core::notify`]). Each node knows only its own
//! connections, so a question goes to the other nodes that hold the user (from
//! their records) on their bus topic, and their answers come back on this
//! node's: one bus round trip, bounded in time and in questions in flight.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use presence_core::notify::{self, Decision, Device, Message, Reason, Recipient};
use presence_core::{RoomId, Status, UserId};
use serde::Serialize;
use tokio::sync::mpsc;

use super::Hub;
use crate::backend::Topic;
use crate::backend::wire::{BusMessage, Control, NodeDevices};

/// Longest a question waits for the other nodes' devices (a bus round trip).
const GATHER_WAIT: Duration = Duration::from_millis(300);
/// Questions a node waits on at once; beyond, it answers from its own
/// devices (`complete: false`).
const MAX_GATHERS: usize = 1_024;

/// Questions this node waits on, by number.
#[derive(Default)]
pub(crate) struct Gathers {
    next: AtomicU64,
    waiting: Mutex<HashMap<u64, mpsc::Sender<NodeDevices>>>,
}

impl Gathers {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, mpsc::Sender<NodeDevices>>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A user's devices over the cluster.
#[derive(Clone, Debug, Serialize)]
pub struct Devices {
    /// The user.
    pub user: UserId,
    /// Every live connection, with the node it is on.
    pub devices: Vec<NodeDevice>,
    /// Whether every node holding the user answered in time (a node that did
    /// not is left out).
    pub complete: bool,
    #[serde(skip)]
    read: Option<u64>,
}

/// One connection, and the node holding it (`None` without a cluster).
#[derive(Clone, Debug, Serialize)]
pub struct NodeDevice {
    /// The node's id.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The connection.
    #[serde(flatten)]
    pub device: Device,
}

/// A message's fate, and why.
#[derive(Clone, Debug, Serialize)]
pub struct Notification {
    /// `live`, `push` or `none`.
    pub decision: Decision,
    /// The rule that decided (PROTOCOL.md, "Devices and notifications").
    pub reason: Reason,
    /// What it was decided from.
    #[serde(flatten)]
    pub devices: Devices,
}

impl Hub {
    /// This node's live connections of `user`, and their marker in `room`.
    fn devices_here(&self, user: &UserId, room: Option<&RoomId>) -> (Vec<Device>, Option<u64>) {
        self.read(|m| {
            let devices = m.devices(self.clock.now(), user);
            (devices, room.and_then(|r| m.marker(user, r)))
        })
    }

    /// The user's devices on every node (each node's marker in `room` too).
    pub async fn devices(&self, user: &UserId, room: Option<&RoomId>) -> Devices {
        let recs = self.cluster_records(user).await;
        self.gather(user, room, recs.as_ref()).await
    }

    /// [`devices`](Self::devices) from the user's records as read.
    async fn gather(
        &self,
        user: &UserId,
        room: Option<&RoomId>,
        recs: Option<&crate::backend::UserRecords>,
    ) -> Devices {
        let (mine, read) = self.devices_here(user, room);
        let me = self.cluster.as_ref().map(|l| l.config.node_id.clone());
        let mut out = Devices {
            user: user.clone(),
            devices: mine
                .into_iter()
                .map(|device| NodeDevice {
                    node: me.clone(),
                    device,
                })
                .collect(),
            complete: true,
            read,
        };
        let (Some(link), Some(me)) = (&self.cluster, me) else {
            return out;
        };
        let Some(recs) = recs else {
            // The backend cannot say who else holds the user.
            out.complete = false;
            return out;
        };
        let mut others: Vec<String> = {
            let st = self.lock();
            let Some(c) = st.cluster.as_ref() else {
                return out;
            };
            recs.iter()
                .filter(|(_, s)| s.record.holds())
                .map(|(inc, _)| crate::cluster_config::node_of(inc).to_owned())
                .filter(|node| *node != me && c.node_alive(node))
                .collect()
        };
        others.sort_unstable();
        others.dedup();
        if others.is_empty() {
            return out;
        }
        let (tx, mut rx) = mpsc::channel(others.len());
        let req = self.gathers.next.fetch_add(1, Ordering::Relaxed);
        {
            let mut waiting = self.gathers.lock();
            if waiting.len() >= MAX_GATHERS {
                out.complete = false;
                return out;
            }
            waiting.insert(req, tx);
        }
        let msg = BusMessage {
            ctl: vec![Control::Devices {
                user: user.clone(),
                room: room.cloned(),
                req,
                to: me,
            }],
            ..BusMessage::default()
        };
        let sent = match serde_json::to_vec(&msg) {
            Ok(bytes) => {
                let topics = others
                    .iter()
                    .map(|n| (Topic::Node(n.clone()), bytes.clone()));
                link.backend.publish(topics.collect()).await.is_ok()
            }
            Err(_) => false,
        };
        let mut missing = others;
        if sent {
            let _ = tokio::time::timeout(GATHER_WAIT, async {
                while !missing.is_empty() {
                    let Some(answer) = rx.recv().await else { break };
                    let Some(at) = missing.iter().position(|n| *n == answer.node) else {
                        continue;
                    };
                    missing.swap_remove(at);
                    out.read = out.read.max(answer.read);
                    out.devices
                        .extend(answer.devices.into_iter().map(|device| NodeDevice {
                            node: Some(answer.node.clone()),
                            device,
                        }));
                }
            })
            .await;
        }
        self.gathers.lock().remove(&req);
        out.complete = missing.is_empty();
        out.devices
            .sort_unstable_by(|x, y| (&x.node, x.device.conn).cmp(&(&y.node, y.device.conn)));
        out
    }

    /// Whether a message in `room` should reach `user` live, by a push, or
    /// not at all, from every node's devices (the rule in
    /// [`presence_core::notify::decide`]).
    pub async fn notify(
        &self,
        user: &UserId,
        room: &RoomId,
        mention: bool,
        marker: Option<u64>,
    ) -> Notification {
        let recs = self.cluster_records(user).await;
        let devices = self.gather(user, Some(room), recs.as_ref()).await;
        // Invisible shows as available here: only `busy` matters to the rule.
        let status = match recs {
            Some(recs) => self
                .cluster_views(std::slice::from_ref(user), &[recs], None, None)
                .pop()
                .map_or(Status::Available, |v| v.status),
            None => self.read(|m| m.status_of(user).0),
        };
        let plain: Vec<Device> = devices.devices.iter().map(|d| d.device.clone()).collect();
        let recipient = Recipient {
            devices: &plain,
            status,
            read: devices.read,
        };
        let message = Message {
            room,
            mention,
            marker,
        };
        let (decision, reason) =
            notify::decide(&recipient, &message, self.config.notify_idle_after);
        Notification {
            decision,
            reason,
            devices,
        }
    }

    /// Another node asks for this node's devices of a user.
    pub(crate) fn answer_devices(
        &self,
        user: &UserId,
        room: Option<&RoomId>,
        req: u64,
        to: String,
    ) {
        let Some(link) = &self.cluster else {
            return;
        };
        let (devices, read) = self.devices_here(user, room);
        let node = link.config.node_id.clone();
        let answer = NodeDevices {
            node,
            devices,
            read,
        };
        self.tell(to, Control::DevicesOf { req, answer });
    }

    /// Another node's answer.
    pub(crate) fn devices_answered(&self, req: u64, answer: NodeDevices) {
        if let Some(tx) = self.gathers.lock().get(&req) {
            let _ = tx.try_send(answer);
        }
    }
}
