//! The hub's side of a cluster: routes what the replica decides
//! ([`super::replica`]) to this node's sockets and host, and hands the
//! cluster tasks (`crate::cluster_tasks`) what they must send. All under the
//! hub's lock, no I/O.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::Notify;

use presence_core::privacy::{Privacy, Receipts, Sight};
use presence_core::protocol::{Diff, ServerMessage};
use presence_core::{Event, Millis, PresenceView, RoomId, UserId};

use super::replica::{Replica, Take, address};
use super::{Hub, Node, encoded};
use crate::auth::Identity;
use crate::backend::Owed;
use crate::backend::wire::BusMessage;
use crate::backend::{Backend, Incarnation, Topic, UserRecords, Written};
use crate::cluster_config::ClusterConfig;

/// The node's link to its backend, held by the hub.
pub(crate) struct BackendLink {
    pub backend: Arc<dyn Backend>,
    pub config: ClusterConfig,
    /// Wakes the round task: something is pending.
    pub wake: Arc<Notify>,
    /// Turns true once the node registered and took back what its previous
    /// incarnation saved (a graceful restart's connections).
    pub ready: tokio::sync::watch::Sender<bool>,
}

impl Hub {
    /// Wakes the cluster task: something is pending for it.
    pub(crate) fn cluster_wake(&self) {
        if let Some(l) = &self.cluster {
            l.wake.notify_one();
        }
    }

    /// This run's incarnation.
    pub(crate) fn cluster_me(&self) -> Incarnation {
        self.lock()
            .cluster
            .as_ref()
            .map(|c| c.me.clone())
            .unwrap_or_default()
    }

    /// Whether a backend is configured and reachable (`None` without one).
    pub fn cluster_up(&self) -> Option<bool> {
        self.lock().cluster.as_ref().map(|c| c.up())
    }

    /// Whether every own record has been written (nothing pending).
    pub(crate) fn cluster_idle(&self) -> bool {
        let st = self.lock();
        st.touched.is_empty() && st.cluster.as_ref().is_none_or(|c| c.idle())
    }

    /// The replica under the hub's lock, for a step of the cluster tasks
    /// that shows nothing here (`None` without a cluster).
    pub(crate) fn with_replica<R>(&self, f: impl FnOnce(&mut Replica) -> R) -> Option<R> {
        self.lock().cluster.as_mut().map(f)
    }

    /// A step of the cluster tasks that changes what this node shows (a
    /// lease round's deaths, a retired incarnation): its events reach the
    /// sockets here, with status adoption and own records recomputed.
    pub(crate) fn replicate(&self, f: impl FnOnce(&mut Replica, Millis) -> Vec<Event>) {
        self.step(|st, now| {
            if let Some(c) = st.cluster.as_mut() {
                let events = f(c, now);
                st.deliver_cluster(now, events);
            }
        });
    }

    /// Waits (at most `bound`) until the node has taken back what its
    /// previous incarnation saved, so a client resuming right after a
    /// graceful restart finds its connection. At once without a cluster.
    pub(crate) async fn cluster_settled(&self, bound: std::time::Duration) {
        let Some(mut ready) = self.cluster.as_ref().map(|l| l.ready.subscribe()) else {
            return;
        };
        let _ = tokio::time::timeout(bound, ready.wait_for(|r| *r)).await;
    }

    /// The node registered and settled its previous incarnation.
    pub(crate) fn cluster_ready(&self) {
        if let Some(l) = &self.cluster {
            l.ready.send_replace(true);
        }
        let mut st = self.lock();
        if let Some(c) = st.cluster.as_mut() {
            c.health.ready = true;
            c.health.cmd_ok = true;
            c.resync();
            self.metrics.redis_up.set(1);
        }
        drop(st);
        self.cluster_wake();
    }

    /// Whether this node has not yet registered with its backend (at start,
    /// or with the backend unreachable since): nobody else sees its users yet.
    pub(crate) fn cluster_joining(&self) -> bool {
        self.cluster.is_some()
            && self
                .lock()
                .cluster
                .as_ref()
                .is_some_and(|c| !c.health.ready)
    }

    /// Whether this node has been cut from its backend for longer than the
    /// lease, so the others show its users offline: `/readyz` then answers
    /// 503 for a load balancer to move its clients. Logs an error once per
    /// outage.
    pub(crate) fn cluster_cut_off(&self) -> bool {
        let (Some(link), mut st) = (self.cluster.as_ref(), self.lock()) else {
            return false;
        };
        let Some(c) = st.cluster.as_mut() else {
            return false;
        };
        let now = self.clock.now();
        let down = c.health.down_since.map(|since| now.since(since));
        self.metrics
            .redis_down_seconds
            .set(down.map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX)));
        let cut = down.is_some_and(|d| d >= link.config.lease_ttl);
        if cut && !c.health.cut_off {
            c.health.cut_off = true;
            tracing::error!(
                down_for = ?down,
                "cut off from the cluster backend for longer than the lease: other nodes show \
                 this node's users offline; /readyz answers 503 until it is back"
            );
        }
        cut
    }

    /// Cluster-level presence of `users` from fetched records; with a
    /// `room`, of those shown in it only (each view computed once); with a
    /// `viewer`, as their privacy settings let it see them (the records
    /// carry each user's settings).
    pub(crate) fn cluster_views(
        &self,
        users: &[UserId],
        recs: &[UserRecords],
        room: Option<&RoomId>,
        viewer: Option<&Identity>,
    ) -> Vec<PresenceView> {
        let st = self.lock();
        let Some(c) = st.cluster.as_ref() else {
            return Vec::new();
        };
        let own = viewer.map(|v| st.privacy_of(&v.user));
        users
            .iter()
            .zip(recs)
            .map(|(u, r)| (u, c.view_of_records(r)))
            .filter(|(_, v)| room.is_none_or(|room| v.shown_in(room)))
            .map(|(u, v)| {
                let sight = match (viewer, own) {
                    (Some(who), Some(own)) => st.sight_given(who, own, u, v.privacy),
                    _ => Sight::ALL,
                };
                sight.view(v.presence(u))
            })
            .collect()
    }

    /// `user`'s records from the backend, if it is up and answers.
    pub(crate) async fn cluster_records(&self, user: &UserId) -> Option<UserRecords> {
        let link = self.cluster.as_ref()?;
        if self.cluster_up() != Some(true) {
            return None;
        }
        link.backend
            .read(std::slice::from_ref(user))
            .await
            .ok()?
            .pop()
    }

    /// A user's privacy settings in fetched records, and when they were set.
    pub(crate) fn cluster_privacy(&self, recs: &UserRecords) -> Option<(Privacy, Millis)> {
        let st = self.lock();
        let v = st.cluster.as_ref()?.view_of_records(recs);
        Some((v.privacy, v.privacy_at))
    }

    /// Whether a live incarnation holds the user active (invisible or not).
    pub(crate) fn cluster_active(&self, recs: &UserRecords) -> bool {
        let st = self.lock();
        st.cluster.as_ref().is_some_and(|c| c.active_in(recs))
    }

    /// The rooms `user` is in across the cluster, from fetched records.
    pub(crate) fn cluster_rooms(&self, recs: &UserRecords) -> Vec<RoomId> {
        let st = self.lock();
        st.cluster
            .as_ref()
            .map(|c| {
                let v = c.view_of_records(recs);
                if v.visible() {
                    v.rooms.into_iter().collect()
                } else {
                    Vec::new()
                }
            })
            .unwrap_or_default()
    }
}

impl Node {
    /// What the round task must send (`None` if nothing, or not ready yet).
    pub(crate) fn take_round(&mut self, now: Millis) -> Option<Take> {
        let c = self.cluster.as_mut()?;
        if !c.health.ready {
            return None;
        }
        let machine = &self.machine;
        let watchers = &self.watchers;
        let me = crate::cluster_config::node_of(&c.me).to_owned();
        let take = c.take(now, |topic| match topic {
            Topic::Room(room) => !machine.room_connections(room).is_empty(),
            Topic::User(user) => {
                watchers.contains_key(user) || !machine.connections_of(user).is_empty()
            }
            Topic::Node(node) => *node == me,
        });
        (!take.is_empty()).then_some(take)
    }

    /// The round failed: its content waits for the next, and waiting
    /// `watching` requests and joiners are answered from what is known.
    pub(crate) fn round_failed(&mut self, take: Take) {
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        c.failed(take);
        let waiting = c.take_awaiting();
        for (conn, users) in c.watching_now() {
            self.send_watching(conn, users);
        }
        // Joiners get what is known now; the room's diffs follow.
        for (conn, rooms) in waiting {
            for room in rooms {
                self.local_snapshot(conn, room);
            }
        }
    }

    /// The answers to this node's writes; returns the messages to publish.
    pub(crate) fn written(
        &mut self,
        now: Millis,
        replies: Vec<Written>,
    ) -> BTreeMap<Topic, BusMessage> {
        let Some(c) = self.cluster.as_mut() else {
            return BTreeMap::new();
        };
        let (local, host, out) = c.written(replies, now);
        self.out.announce(host);
        self.deliver_cluster(now, local);
        out
    }

    /// Users' records were read.
    pub(crate) fn fetched(&mut self, now: Millis, got: Vec<(UserId, UserRecords)>) {
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        let (events, answers) = c.fetched(got, now);
        self.deliver_cluster(now, events);
        for (conn, users) in answers {
            self.send_watching(conn, users);
        }
    }

    /// A room's members were read: its waiting joiners get their snapshot
    /// with the next flush.
    pub(crate) fn synced(
        &mut self,
        now: Millis,
        room: &RoomId,
        members: Vec<(UserId, UserRecords)>,
        receipts: Vec<(UserId, u64)>,
    ) {
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        let (events, owed) = c.room_synced(room, members, receipts, now);
        self.deliver_cluster(now, events);
        for conn in owed {
            self.local_snapshot(conn, room.clone());
        }
    }

    /// A message from the bus (its orders already taken by the shell).
    pub(crate) fn bus(&mut self, now: Millis, msg: BusMessage) {
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        let (events, reads) = c.incoming(msg, now);
        self.deliver_cluster(now, events);
        for (room, user, marker) in reads {
            let ev = Event {
                at: now,
                diff: Diff::Read { user, marker },
                rooms: vec![room],
                global: false,
            };
            self.metrics.event(&ev);
            self.batch.route(&ev, false);
        }
    }

    /// A dead incarnation's record of `user` was cleaned (`change`: the
    /// records before and after): the change is announced to the host (by
    /// this node only), and addressed in `messages` for the others.
    pub(crate) fn cleaned(
        &mut self,
        now: Millis,
        user: &UserId,
        dead: &str,
        (before, after): (&UserRecords, &UserRecords),
        owed: &[Owed],
        messages: &mut BTreeMap<Topic, BusMessage>,
    ) {
        let Some(c) = self.cluster.as_ref() else {
            return;
        };
        // As the cluster showed it before the cleaning: with `dead` alive.
        let v0 = c.view_assuming(before, Some(dead));
        let v1 = c.view_of_records(after);
        address(messages, user, after, &v0, &v1);
        let host = c.announce(user, owed, now);
        self.out.announce(host);
    }

    /// Owed changes a dead incarnation left unannounced (users its record
    /// no longer held when it died).
    pub(crate) fn owed(&mut self, now: Millis, user: &UserId, owed: &[Owed]) {
        if let Some(c) = self.cluster.as_ref() {
            let host = c.announce(user, owed, now);
            self.out.announce(host);
        }
    }

    /// The command link answered (`ok`) or failed (for `/healthz` and
    /// metrics); back up, everything is written and read again.
    pub(crate) fn link_answered(&mut self, now: Millis, ok: bool) {
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        let was = c.up();
        c.health.cmd_ok = ok;
        if ok {
            c.health.down_since = None;
            if std::mem::take(&mut c.health.cut_off) {
                tracing::info!("backend reachable again after a cut-off: ready");
            }
        } else if c.health.down_since.is_none() {
            c.health.down_since = Some(now);
        }
        let is = c.up();
        self.metrics.redis_up.set(i64::from(is));
        if was && !is {
            tracing::warn!("backend unreachable: serving from what this node knows");
        } else if !was && is && c.health.ready {
            tracing::info!("backend reachable: writing and re-reading everything");
            c.resync();
            self.out.wake_rounds();
        }
    }

    /// A machine event in a cluster: its user's record is recomputed (at the
    /// end of the operation); a read marker, which no record carries, is
    /// shown here at once and sent to the others.
    pub(super) fn local_to_cluster(&mut self, ev: &Event) {
        let user = ev.diff.user().clone();
        // Markers read with receipts off are kept for the user, not shown.
        let shown = self.privacy_of(&user).receipts == Receipts::On;
        if let Diff::Read { marker, .. } = ev.diff
            && let Some(c) = self.cluster.as_mut()
        {
            for room in &ev.rooms {
                if shown {
                    c.read(room.clone(), user.clone(), marker);
                }
                if c.shown_in(&user, room) {
                    let shown = Event {
                        rooms: vec![room.clone()],
                        ..ev.clone()
                    };
                    self.metrics.event(&shown);
                    self.batch.route(&shown, false);
                }
            }
        }
        self.touched.insert(user);
    }

    /// Recomputes the records of touched users and routes what changed.
    pub(super) fn cluster_refresh(&mut self, now: Millis) {
        if self.touched.is_empty() {
            return;
        }
        let Some(c) = self.cluster.as_mut() else {
            return;
        };
        let mut events = Vec::new();
        for user in std::mem::take(&mut self.touched) {
            events.extend(c.touch(&self.machine, &user, now));
        }
        self.route(&events);
        self.out.wake_rounds();
    }

    /// Files cluster-level events for this node's sockets.
    fn route(&mut self, events: &[Event]) {
        for ev in events {
            self.metrics.event(ev);
            let watched = self.watchers.contains_key(ev.diff.user());
            self.batch.route(ev, watched);
        }
    }

    /// Takes over a status set on another node: the machine adopts it (so
    /// an invisible user is offline here too) and the user's sockets here
    /// are told.
    fn adopt_statuses(&mut self, now: Millis) {
        let users = self
            .cluster
            .as_mut()
            .map(|c| c.take_statuses())
            .unwrap_or_default();
        for user in &users {
            let Some(v) = self.cluster.as_ref().and_then(|c| c.view(user)).cloned() else {
                continue;
            };
            if self.machine.connections_of(user).is_empty() {
                continue;
            }
            if self
                .machine
                .adopt_privacy(now, user, v.privacy, v.privacy_at)
            {
                self.tell_privacy(user, v.privacy);
            }
            if self
                .machine
                .adopt_status(now, user, v.status, v.text.clone(), v.status_at)
            {
                let msg = encoded(&ServerMessage::SelfStatus {
                    status: v.status,
                    text: v.text,
                });
                for c in self.machine.connections_of(user).to_vec() {
                    self.send(c, msg.clone());
                }
                self.machine.drain_events().for_each(drop);
                self.touched.insert(user.clone());
            }
        }
    }

    /// Routes events that came from the cluster, with status adoption.
    fn deliver_cluster(&mut self, now: Millis, events: Vec<Event>) {
        self.route(&events);
        self.adopt_statuses(now);
        self.cluster_refresh(now);
    }
}
