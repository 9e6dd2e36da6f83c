//! What a backend orders for a user on every node: close their sockets (and
//! refuse their old tokens), or stop their typing. With a cluster the order
//! goes on the user's topic, to which every node holding the user's sockets
//! is subscribed, so it reaches them within one bus round trip.
//!
//! Also the resume of a connection on another node than the one that holds
//! it: a clustered resume token names its node (`<node id>.<hex>`), the
//! resuming node asks that node on its topic to hand the connection over, and
//! takes it back under a token of its own.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use presence_core::machine::ConnRecord;
use presence_core::protocol::CloseCode;
use presence_core::{ConnId, ResumeToken, RoomId, UserId};
use tokio::sync::oneshot;

use super::{Close, Hub};
use crate::auth::Identity;
use crate::backend::wire::{BusMessage, Control};
use crate::backend::{BackendError, Topic};

/// How long a revocation refuses old tokens: the longest token lifetime it
/// covers.
pub(crate) const REVOCATION_TTL: Duration = Duration::from_secs(30 * 86_400);
/// Revocations a node keeps in memory (the cluster's live in the backend).
const MAX_REVOCATIONS: usize = 100_000;
/// Longest a resume waits for another node to hand its connection over
/// (a bus round trip; the client is waiting for its `welcome`).
const HANDOVER_WAIT: Duration = Duration::from_millis(500);
/// Handovers a node waits for at once; beyond, a resume elsewhere starts a
/// new connection (what it did before handovers existed).
const MAX_HANDOVERS: usize = 1_024;

/// Resumes waiting for another node's handover, by token.
#[derive(Default)]
pub(crate) struct Handovers(Mutex<HashMap<ResumeToken, oneshot::Sender<Option<ConnRecord>>>>);

impl Handovers {
    fn lock(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<ResumeToken, oneshot::Sender<Option<ConnRecord>>>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Revocation reads in flight to the backend at most. Every `hello` on a
/// node of a cluster reads one: a herd of 100,000 reconnects queued as many
/// calls on the backend's connection, in front of the lease renewals, and
/// the others judged the node dead (BENCHMARKS.md, "A herd"). Past this the
/// hellos wait their turn here, parked.
const REVOCATION_READS: usize = 64;

/// Unix seconds before which each user's tokens are refused, as this node
/// knows it; and the gate of the reads of the cluster's.
pub(crate) struct Revocations {
    known: Mutex<HashMap<UserId, u64>>,
    reads: tokio::sync::Semaphore,
}

impl Default for Revocations {
    fn default() -> Self {
        Self {
            known: Mutex::default(),
            reads: tokio::sync::Semaphore::new(REVOCATION_READS),
        }
    }
}

impl Revocations {
    fn get(&self, user: &UserId) -> Option<u64> {
        self.known
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(user)
            .copied()
    }

    fn set(&self, user: &UserId, before: u64, now_s: u64) {
        let mut map = self.known.lock().unwrap_or_else(|p| p.into_inner());
        if map.len() >= MAX_REVOCATIONS {
            let keep = now_s.saturating_sub(REVOCATION_TTL.as_secs());
            map.retain(|_, b| *b > keep);
        }
        if map.len() < MAX_REVOCATIONS || map.contains_key(user) {
            map.insert(user.clone(), before);
        } else {
            tracing::warn!(%user, "revocation not kept in memory: {MAX_REVOCATIONS} already are");
        }
    }
}

/// The close a backend may ask for, by code.
pub(crate) fn close_for(code: u16) -> Option<Close> {
    let close = match code {
        4101 => CloseCode::Unauthorized,
        1008 => CloseCode::PolicyViolation,
        1001 => CloseCode::GoingAway,
        1000 => CloseCode::Normal,
        _ => return None,
    };
    Some((close, "disconnected by the server"))
}

impl Hub {
    /// Closes the user's sockets on this node and (with a cluster) on every
    /// other; with `revoke`, their tokens issued before now are refused from
    /// now on, everywhere. Returns how many sockets this node closed.
    pub async fn disconnect_everywhere(
        &self,
        user: &UserId,
        close: Close,
        revoke: bool,
    ) -> Result<usize, BackendError> {
        if revoke {
            let now_s = self.clock.now().0 / 1000;
            self.revocations.set(user, now_s, now_s);
            if let Some(link) = &self.cluster {
                link.backend.revoke(user, now_s, REVOCATION_TTL).await?;
            }
        }
        let closed = self.disconnect_user(user, close);
        let code = close.0 as u16;
        self.order(
            user,
            Control::Disconnect {
                user: user.clone(),
                code,
            },
        )
        .await?;
        Ok(closed)
    }

    /// The user's message in `room` was stored: their typing there stops,
    /// here and on every node.
    pub async fn message_sent_everywhere(
        &self,
        user: &UserId,
        room: &RoomId,
    ) -> Result<(), BackendError> {
        self.message_sent(user, room);
        self.order(
            user,
            Control::MessageSent {
                user: user.clone(),
                room: room.clone(),
            },
        )
        .await
    }

    /// Sends an order on the user's topic (nothing without a cluster).
    async fn order(&self, user: &UserId, control: Control) -> Result<(), BackendError> {
        let Some(link) = &self.cluster else {
            return Ok(());
        };
        let msg = BusMessage {
            ctl: vec![control],
            ..BusMessage::default()
        };
        let bytes = serde_json::to_vec(&msg).map_err(|e| BackendError::Decode(e.to_string()))?;
        link.backend
            .publish(vec![(Topic::User(user.clone()), bytes)])
            .await
    }

    /// Orders from the bus.
    pub(crate) fn obey(&self, orders: Vec<Control>) {
        for order in orders {
            match order {
                Control::Disconnect { user, code } => {
                    if let Some(close) = close_for(code) {
                        self.disconnect_user(&user, close);
                    }
                }
                Control::MessageSent { user, room } => self.message_sent(&user, &room),
                Control::Handover { user, token, to } => self.hand_over(&user, &token, to),
                Control::Devices {
                    user,
                    room,
                    req,
                    to,
                } => self.answer_devices(&user, room.as_ref(), req, to),
                Control::DevicesOf { req, answer } => self.devices_answered(req, answer),
                Control::HandedOver { token, conn } => {
                    if let Some(waiting) = self.handovers.lock().remove(&token) {
                        let _ = waiting.send(conn);
                    }
                }
            }
        }
    }

    /// Another node's client resumes a connection of this node: it goes
    /// there (a live socket here is superseded, as by a resume here).
    fn hand_over(&self, user: &UserId, token: &ResumeToken, to: String) {
        let conn = self.step(|st, now| {
            let (record, live) = st.machine.hand_over(now, user, token)?;
            if live {
                let close = (CloseCode::Superseded, "resumed on another node");
                st.close_socket(now, record.conn, close, false);
            }
            Some(record)
        });
        if conn.is_some() {
            self.metrics.handovers.inc();
        }
        let token = token.clone();
        self.tell(to, Control::HandedOver { token, conn });
    }

    /// Sends an answer to another node on its topic, without waiting (a lost
    /// one is a question that times out there).
    pub(crate) fn tell(&self, node: String, control: Control) {
        let Some(link) = &self.cluster else {
            return;
        };
        let msg = BusMessage {
            ctl: vec![control],
            ..BusMessage::default()
        };
        let Ok(bytes) = serde_json::to_vec(&msg) else {
            return;
        };
        let backend = link.backend.clone();
        tokio::spawn(async move {
            if let Err(e) = backend.publish(vec![(Topic::Node(node), bytes)]).await {
                tracing::debug!(error = %e, "answer to another node not sent");
            }
        });
    }

    /// A resume with a token another live node issued: that node hands the
    /// connection over and it is taken back here, under a token of this
    /// node. Returns the token to resume with; `None` when there is nothing
    /// to take over (a token of this node, a node gone, no answer within
    /// [`HANDOVER_WAIT`]): the hello goes on with its own token.
    pub(crate) async fn take_over(
        &self,
        user: &UserId,
        token: &ResumeToken,
    ) -> Option<ResumeToken> {
        let link = self.cluster.as_ref()?;
        let (node, _) = token.as_str().split_once('.')?;
        if node == link.config.node_id || !self.lock().cluster.as_ref()?.node_alive(node) {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        {
            let mut waiting = self.handovers.lock();
            if waiting.len() >= MAX_HANDOVERS || waiting.contains_key(token) {
                return None;
            }
            waiting.insert(token.clone(), tx);
        }
        let msg = BusMessage {
            ctl: vec![Control::Handover {
                user: user.clone(),
                token: token.clone(),
                to: link.config.node_id.clone(),
            }],
            ..BusMessage::default()
        };
        let sent = match serde_json::to_vec(&msg) {
            Ok(bytes) => link
                .backend
                .publish(vec![(Topic::Node(node.to_owned()), bytes)])
                .await
                .is_ok(),
            Err(_) => false,
        };
        let answer = if sent {
            tokio::time::timeout(HANDOVER_WAIT, rx)
                .await
                .ok()
                .and_then(Result::ok)
                .flatten()
        } else {
            None
        };
        self.handovers.lock().remove(token);
        let mut record = answer?;
        let fresh = self.new_token()?;
        record.conn = ConnId(
            self.next_conn
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        );
        record.token = fresh.clone();
        let restored = self.step(|st, now| {
            st.touched.insert(user.clone());
            st.machine.restore_conn(now, record)
        });
        match restored {
            Ok(()) => Some(fresh),
            Err(e) => {
                tracing::warn!(error = %e, "handed-over connection not taken back; the resume starts anew");
                None
            }
        }
    }

    /// Whether the token behind `who` was issued (`iat`) before a
    /// revocation of its user. With a cluster the backend is asked (a node
    /// that cannot reach it goes by what it knows: an outage does not lock
    /// everyone out). A token without `iat` counts as issued before.
    pub async fn is_revoked(&self, who: &Identity) -> bool {
        let mut before = self.revocations.get(&who.user);
        // With the backend's calls failing, no read: 64 at a time, each
        // timing out, would make the hellos of an outage wait in line.
        let failing = self
            .lock()
            .cluster
            .as_ref()
            .is_some_and(|c| c.health.down_since.is_some());
        if let Some(link) = self.cluster.as_ref().filter(|_| !failing) {
            let read = async {
                // Never closed.
                let _turn = self.revocations.reads.acquire().await;
                link.backend.revoked(&who.user).await
            };
            match read.await {
                Ok(b) => before = before.max(b),
                Err(e) => tracing::debug!(error = %e, "revocations unknown; going by this node's"),
            }
        }
        let Some(before) = before else {
            return false;
        };
        let iat = who.claims.get("iat").and_then(serde_json::Value::as_u64);
        iat.is_none_or(|iat| iat < before)
    }
}
