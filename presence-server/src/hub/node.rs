//! The node's decisions: one step per input, no I/O.
//!
//! A [`Node`] owns what one server process knows (the presence machine, its
//! sockets by connection, watch lists, pending batches, large rooms and, in
//! a cluster, the replica) and decides everything on it. Inputs are methods
//! that take the time as `now`: a socket's hello, frames and end
//! (`connect`, `act`, `heartbeat`, `join`, `set_status`, `socket_gone`, …),
//! the cluster's answers (`hub::bridge`), and [`Node::tick`] at the time
//! [`Node::plan`] asked for. What a step decides for the outside goes into
//! its [`Outbound`] (frames, closes, host events, which tasks to wake), for
//! the shell to hand out.
//!
//! Call order, as the shell (`Hub`) keeps it: take the lock; run one input;
//! `settle` (route the machine's events, start the batch window, note an
//! earlier deadline); let go of the lock, which hands out the outbound in
//! order and reports full queues back as slow consumers to close. The shell
//! sleeps until [`Node::plan`]'s deadline, or until woken, then calls
//! [`Node::tick`].

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use presence_core::machine::MachineError;
use presence_core::protocol::{CloseCode, Diff, ErrorCode, ServerMessage};
use presence_core::{
    Activity, ConnId, DeviceKind, Event, Machine, Millis, ResumeToken, RoomId, Status, UserId,
};
use tokio_tungstenite::tungstenite::Utf8Bytes;

use super::replica::Replica;
use super::watching::unwatch_one;
use super::wires::Outbound;
use super::{Close, encoded};
use crate::audience::AudiencePolicy;
use crate::auth::Identity;
use crate::broadcast::Batch;
use crate::config::ServerConfig;
use crate::metrics::Metrics;

/// A socket a `hello` asks to register, as the shell numbered it.
pub(super) struct NewSocket<'a> {
    /// The connection id if this starts a new connection (a resume keeps
    /// its own).
    pub fresh: ConnId,
    /// Unique per socket: the shell's senders are kept under it.
    pub generation: u64,
    pub token: ResumeToken,
    pub resume: Option<&'a ResumeToken>,
    pub activity: Activity,
    pub device: DeviceKind,
}

/// One live socket. A machine connection outlives its sockets: a resume puts
/// a new socket (with a new generation) under the same `ConnId`.
pub(super) struct Socket {
    pub(super) generation: u64,
    pub(super) user: UserId,
    /// Its token's identity: the privacy rule asks whether it is a contact.
    pub(super) who: Arc<Identity>,
    /// When its token expires: it is closed with 4101 then, unless an
    /// `auth` frame moved this.
    pub(super) expires: Option<Millis>,
}

pub(crate) struct Node {
    pub(super) machine: Machine,
    pub(super) sockets: HashMap<ConnId, Socket>,
    /// The sockets' token expiries, soonest first.
    pub(super) expiries: BTreeSet<(Millis, ConnId)>,
    /// Per connection (not socket: watches survive a resume), who it watches.
    pub(super) watches: HashMap<ConnId, HashSet<UserId>>,
    /// The reverse index: user → connections watching them.
    pub(super) watchers: HashMap<UserId, HashSet<ConnId>>,
    pub(super) batch: Batch,
    /// Snapshots owed to connections that joined a room, sent at the next
    /// flush after that room's pending diffs went to the others: the
    /// snapshot already shows those, so the joiner's first diffs are newer.
    pub(super) snapshots: HashMap<RoomId, HashSet<ConnId>>,
    /// When the oldest pending diff arrived.
    pub(super) batch_since: Option<Millis>,
    /// When the driver plans to wake next.
    pub(super) planned_wake: Option<Millis>,
    /// In a cluster: what this node follows of it and owes it.
    pub(super) cluster: Option<Replica>,
    /// In a cluster: users whose record this node must recompute.
    pub(super) touched: HashSet<UserId>,
    /// With a data directory: users whose durable state changed since the
    /// last write, and users forgotten by retention (to delete).
    pub(super) durable: HashSet<UserId>,
    pub(super) forgotten: Vec<UserId>,
    /// When retention next looks for offline users to forget.
    pub(super) next_sweep: Millis,
    /// The rooms that are large here, with their pending summaries.
    pub(super) large: presence_core::large::LargeRooms,
    /// What this step owes the sockets and the host, handed out when the
    /// lock is let go.
    pub(super) out: Outbound,
    pub(super) config: ServerConfig,
    pub(super) metrics: Arc<Metrics>,
    /// Who may see whom (the app's hook, asked synchronously).
    pub(super) audience: Arc<dyn AudiencePolicy>,
    /// Whether user state is kept in a data directory.
    pub(super) on_disk: bool,
    /// This node's id in a cluster, named in its view events.
    pub(super) node_id: Option<String>,
}

impl Node {
    pub(super) fn new(
        config: ServerConfig,
        metrics: Arc<Metrics>,
        audience: Arc<dyn AudiencePolicy>,
        on_disk: bool,
        cluster: Option<(String, Replica)>,
    ) -> Self {
        let (node_id, replica) = cluster.unzip();
        Self {
            machine: Machine::new(config.timing).with_view_events(config.viewing_events),
            sockets: HashMap::new(),
            expiries: BTreeSet::new(),
            watches: HashMap::new(),
            watchers: HashMap::new(),
            batch: Batch::default(),
            snapshots: HashMap::new(),
            batch_since: None,
            planned_wake: None,
            cluster: replica,
            touched: HashSet::new(),
            durable: HashSet::new(),
            forgotten: Vec::new(),
            next_sweep: Millis(0),
            large: presence_core::large::LargeRooms::new(
                config.large_room_members,
                config.large_room_interval,
            ),
            out: Outbound::default(),
            config,
            metrics,
            audience,
            on_disk,
            node_id,
        }
    }

    /// Whether `generation` is still the socket speaking for `conn` (not one
    /// replaced by a resume, nor one the server already closed).
    pub(super) fn is_current(&self, conn: ConnId, generation: u64) -> bool {
        self.sockets
            .get(&conn)
            .is_some_and(|s| s.generation == generation)
    }

    /// The node's next deadline, the one table the driver sleeps on: the
    /// machine's (graces, heartbeats, typing), the end of the batch window,
    /// the soonest token expiry, the large rooms' summaries and retention's
    /// sweep. `settle` wakes the driver when an operation moved it earlier;
    /// `plan` sleeps until it.
    pub(super) fn next_deadline(&self) -> Option<Millis> {
        [
            self.machine.next_deadline(),
            self.batch_since
                .map(|since| since.after(self.config.batch_window)),
            self.expiries.first().map(|&(at, _)| at),
            self.large.next_due(),
            Some(self.next_sweep),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Unregisters a socket (its expiry with it) and closes it with
    /// `close`, or, without, lets its sender go.
    pub(super) fn remove_socket(&mut self, conn: ConnId, close: Option<Close>) -> Option<Socket> {
        let socket = self.sockets.remove(&conn)?;
        if let Some(at) = socket.expires {
            self.expiries.remove(&(at, conn));
        }
        match close {
            Some(close) => self.out.close(socket.generation, close),
            None => self.out.forget(socket.generation),
        }
        Some(socket)
    }

    /// Queues a frame for a socket (a full queue makes it a slow consumer).
    pub(super) fn send(&mut self, conn: ConnId, frame: Utf8Bytes) {
        if let Some(socket) = self.sockets.get(&conn) {
            self.out.frame(conn, socket.generation, frame);
        }
    }

    /// A view change (on only with `viewing_events`): for the host alone,
    /// no socket. In a cluster it is no record change, so it skips the
    /// replica: it goes straight into the stream's outbox, named by its
    /// node (connection ids are per node). At most once there: a node that
    /// dies before appending it loses it.
    pub(super) fn publish_view(&mut self, mut ev: Event) {
        self.metrics.event(&ev);
        if let (Diff::Viewing { node, .. }, Some(id)) = (&mut ev.diff, &self.node_id) {
            *node = Some(id.clone());
        }
        match self.cluster.as_ref().map(|c| c.me.clone()) {
            Some(me) => self.out.own(me, ev),
            None => self.out.host(ev),
        }
    }

    pub(super) fn settle(&mut self, now: Millis) {
        let events: Vec<Event> = self.machine.drain_events().collect();
        for ev in &events {
            if let Diff::Viewing { .. } = ev.diff {
                self.publish_view(ev.clone());
                continue;
            }
            if self.on_disk
                && matches!(
                    ev.diff,
                    Diff::Status { .. } | Diff::UserDisconnected { .. } | Diff::Read { .. }
                )
            {
                self.durable.insert(ev.diff.user().clone());
            }
            if self.cluster.is_some() {
                // In a cluster, observers hear the cluster view, which this
                // node recomputes from its record: a node's own
                // `user_disconnected` is no news while the user is online
                // elsewhere.
                self.local_to_cluster(ev);
            } else {
                self.metrics.event(ev);
                let watched = self.watchers.contains_key(ev.diff.user());
                self.batch.route(ev, watched);
                self.out.host(ev.clone());
            }
        }
        if self.cluster.is_some() {
            self.cluster_refresh(now);
        }
        if !self.batch.is_empty() || !self.snapshots.is_empty() {
            if self.config.batch_window.is_zero() {
                self.flush(now);
            } else if self.batch_since.is_none() {
                self.batch_since = Some(now);
            }
        }
        if let Some(next) = self.next_deadline()
            && self.planned_wake.is_none_or(|w| next < w)
        {
            self.planned_wake = Some(next);
            self.out.wake_driver();
        }
        self.metrics.connections.set(self.sockets.len() as i64);
    }

    /// Signals a socket's task to close with `close`. With `dropped`, the
    /// machine connection enters its offline grace (the client may resume).
    pub(super) fn close_socket(&mut self, now: Millis, conn: ConnId, close: Close, dropped: bool) {
        if let Some(c) = self.cluster.as_mut() {
            c.forget_conn(conn);
        }
        if self.remove_socket(conn, Some(close)).is_some() && dropped {
            self.machine.dropped(now, conn);
        }
    }

    /// A socket's queue was full when its frames were handed out: it is
    /// closed as a slow consumer, and its connection enters the grace.
    pub(super) fn slow_consumer(&mut self, now: Millis, conn: ConnId, generation: u64) {
        if !self.is_current(conn, generation) {
            return;
        }
        self.metrics.slow_consumers.inc();
        tracing::info!(%conn, "outbound queue full; closing slow consumer");
        self.close_socket(now, conn, (CloseCode::SlowConsumer, "slow consumer"), true);
    }

    /// Called within a step, whose `settle` wakes the driver for it.
    pub(super) fn set_expiry(&mut self, conn: ConnId, expires: Option<Millis>) {
        let Some(socket) = self.sockets.get_mut(&conn) else {
            return;
        };
        if let Some(old) = std::mem::replace(&mut socket.expires, expires) {
            self.expiries.remove(&(old, conn));
        }
        if let Some(at) = expires {
            self.expiries.insert((at, conn));
        }
    }

    /// A `hello` was accepted: starts or resumes the machine connection and
    /// registers the socket; its `welcome` is the first frame queued for it.
    pub(super) fn connect(
        &mut self,
        now: Millis,
        who: &Arc<Identity>,
        s: NewSocket<'_>,
    ) -> Result<ConnId, ErrorCode> {
        let user = &who.user;
        if self.cluster.is_some() {
            self.touched.insert(user.clone());
        }
        // Before the connect, so a user coming online carries it.
        self.machine.set_info(now, user, who.info.clone());
        let outcome = self
            .machine
            .connect(now, user.clone(), s.fresh, s.token, s.resume, s.activity)
            .map_err(MachineError::code)?;
        if outcome.resumed {
            self.metrics.resumes.inc();
        }
        // The connection is known to the machine now; a resume may say
        // it moved to another device kind (a desktop site on a phone).
        let _ = self.machine.set_device(outcome.conn, s.device);
        if outcome.superseded {
            self.close_socket(
                now,
                outcome.conn,
                (CloseCode::Superseded, "resumed on another socket"),
                false,
            );
        }
        // Settings set on another node, as far as this one follows the
        // user: told right after the welcome (else `self_privacy`
        // follows once the records come).
        if let Some((p, at)) = self
            .cluster
            .as_ref()
            .and_then(|c| c.view(user))
            .map(|v| (v.privacy, v.privacy_at))
        {
            self.machine.adopt_privacy(now, user, p, at);
        }
        let (status, text) = self.machine.status_of(user);
        let policy = self.machine.policy();
        let welcome = ServerMessage::Welcome {
            v: presence_core::PROTOCOL_VERSION,
            user: user.clone(),
            conn: outcome.conn,
            resume: outcome.token,
            resumed: outcome.resumed,
            heartbeat_ms: u64::try_from(policy.heartbeat_interval.as_millis()).unwrap_or(u64::MAX),
            idle_after_ms: u64::try_from(policy.idle_after.as_millis()).unwrap_or(u64::MAX),
            status,
            text,
            exp: who.expires,
        };
        self.sockets.insert(
            outcome.conn,
            Socket {
                generation: s.generation,
                user: user.clone(),
                who: who.clone(),
                expires: None,
            },
        );
        self.set_expiry(outcome.conn, who.expires);
        self.send(outcome.conn, encoded(&welcome));
        // Settings that are not both open follow at once, before anything else.
        let p = self.machine.privacy(user);
        if !p.is_open() {
            let privacy = ServerMessage::SelfPrivacy {
                last_seen: p.last_seen,
                receipts: p.receipts,
            };
            self.send(outcome.conn, encoded(&privacy));
        }
        Ok(outcome.conn)
    }

    /// Takes a socket's fresh token: its expiry and its claims; `false` if
    /// the socket is no longer current.
    pub(super) fn reauthorize(
        &mut self,
        conn: ConnId,
        generation: u64,
        who: &Arc<Identity>,
    ) -> bool {
        let current = self.is_current(conn, generation);
        if current {
            self.set_expiry(conn, who.expires);
            if let Some(s) = self.sockets.get_mut(&conn) {
                s.who = who.clone();
            }
        }
        current
    }

    /// Runs a machine input for a socket's connection, if the socket is still
    /// the connection's current one.
    pub(super) fn act<R>(
        &mut self,
        now: Millis,
        conn: ConnId,
        generation: u64,
        f: impl FnOnce(&mut Machine, Millis) -> Result<R, MachineError>,
    ) -> Result<R, ErrorCode> {
        if !self.is_current(conn, generation) {
            return Err(ErrorCode::Internal);
        }
        if self.cluster.is_some()
            && let Some(user) = self.machine.user_of(conn)
        {
            // Leaving a room while invisible emits nothing, yet changes
            // this node's record.
            self.touched.insert(user.clone());
        }
        f(&mut self.machine, now).map_err(MachineError::code)
    }

    /// Moves a read marker. Kept durable even when nobody is told (an
    /// invisible user's markers are kept, not shown).
    pub(super) fn read_marker(
        &mut self,
        now: Millis,
        conn: ConnId,
        generation: u64,
        room: &RoomId,
        marker: u64,
    ) -> Result<(), ErrorCode> {
        let moved = self.act(now, conn, generation, |m, now| {
            m.read(now, conn, room, marker)
        })?;
        if moved
            && self.on_disk
            && let Some(user) = self.machine.user_of(conn)
        {
            self.durable.insert(user.clone());
        }
        Ok(())
    }

    /// A frame arrived on a socket: it is alive. Unlike [`Node::act`] this
    /// marks nothing for the cluster (a heartbeat changes no record); with
    /// `pong`, the reply goes in the same step.
    pub(super) fn heartbeat(&mut self, now: Millis, conn: ConnId, generation: u64, pong: bool) {
        if !self.is_current(conn, generation) {
            return;
        }
        let _ = self.machine.heartbeat(now, conn);
        if pong {
            self.send(conn, encoded(&ServerMessage::Pong));
        }
    }

    /// Queues a reply (pong, error, …) for a socket.
    pub(super) fn reply(&mut self, conn: ConnId, generation: u64, msg: &ServerMessage) {
        if self.is_current(conn, generation) {
            self.send(conn, encoded(msg));
        }
    }

    /// Joins a room and queues its snapshot before any later diff.
    pub(super) fn join(
        &mut self,
        now: Millis,
        conn: ConnId,
        generation: u64,
        room: RoomId,
    ) -> Result<(), ErrorCode> {
        if !self.is_current(conn, generation) {
            return Err(ErrorCode::Internal);
        }
        self.machine
            .join(now, conn, room.clone())
            .map_err(MachineError::code)?;
        if let Some(c) = self.cluster.as_mut() {
            if let Some(user) = self.machine.user_of(conn) {
                self.touched.insert(user.clone());
            }
            // Until the room's members are read, its diffs wait.
            if !c.joined(conn, &room) {
                return Ok(());
            }
        }
        self.local_snapshot(conn, room);
        Ok(())
    }

    /// Sets the user's status and tells all of their sockets.
    pub(super) fn set_status(
        &mut self,
        now: Millis,
        conn: ConnId,
        generation: u64,
        status: Status,
        text: Option<presence_core::StatusText>,
    ) -> Result<(), ErrorCode> {
        let Some(user) = self
            .sockets
            .get(&conn)
            .filter(|s| s.generation == generation)
            .map(|s| s.user.clone())
        else {
            return Err(ErrorCode::Internal);
        };
        let changed = self
            .machine
            .set_status(now, conn, status, text.clone())
            .map_err(MachineError::code)?;
        if changed && self.on_disk {
            self.durable.insert(user.clone());
        }
        if self.cluster.is_some() {
            self.touched.insert(user.clone());
        }
        if changed {
            let msg = encoded(&ServerMessage::SelfStatus { status, text });
            let own: Vec<ConnId> = self.machine.connections_of(&user).to_vec();
            for c in own {
                self.send(c, msg.clone());
            }
        }
        Ok(())
    }

    /// Closes a socket on the session's own initiative (abuse, huge frame).
    pub(super) fn close(&mut self, now: Millis, conn: ConnId, generation: u64, close: Close) {
        if self.is_current(conn, generation) {
            self.close_socket(now, conn, close, true);
        }
    }

    /// The socket ended (closed by the client, or failed). Unless it had
    /// already been replaced by a resume or closed by the server, its
    /// connection enters the offline grace.
    pub(super) fn socket_gone(&mut self, now: Millis, conn: ConnId, generation: u64) {
        if self.is_current(conn, generation) {
            self.remove_socket(conn, None);
            if let Some(c) = self.cluster.as_mut() {
                c.forget_conn(conn);
            }
            self.machine.dropped(now, conn);
        }
    }

    /// Closes every socket of `user` on this node with `close` (their
    /// connections enter the offline grace); returns how many.
    pub(super) fn disconnect_user(&mut self, now: Millis, user: &UserId, close: Close) -> usize {
        let conns: Vec<ConnId> = self
            .machine
            .connections_of(user)
            .iter()
            .filter(|c| self.sockets.contains_key(c))
            .copied()
            .collect();
        for &conn in &conns {
            self.close_socket(now, conn, close, true);
        }
        conns.len()
    }

    /// When the driver should wake next: the soonest deadline, at the
    /// latest a second from `now` (noted, so `settle` wakes the driver
    /// only for a deadline sooner than this).
    pub(super) fn plan(&mut self, now: Millis) -> Millis {
        let mut wake = now.after(Duration::from_secs(1));
        if let Some(next) = self.next_deadline() {
            wake = wake.min(next);
        }
        self.planned_wake = Some(wake);
        wake
    }

    /// Runs due deadlines, closes timed-out sockets, flushes due batches and
    /// forgets the watch lists of connections that are gone for good.
    pub(super) fn tick(&mut self, now: Millis) {
        if now >= self.next_sweep {
            let forgotten = self.machine.forget_offline(now, self.config.retention);
            // A full batch: more may be due, at the next tick.
            self.next_sweep = match forgotten.len() {
                presence_core::machine::FORGET_AT_ONCE => now,
                _ => now.after(RETENTION_SWEEP),
            };
            let Node { machine, large, .. } = &mut *self;
            large.retain(|room| machine.room_size(room) > 0);
            if self.on_disk {
                for user in &forgotten {
                    self.durable.remove(user);
                }
                self.forgotten.extend(forgotten);
            }
        }
        let timed_out = self.machine.tick(now);
        for conn in timed_out {
            self.close_socket(
                now,
                conn,
                (CloseCode::HeartbeatTimeout, "heartbeat timeout"),
                false,
            );
        }
        // Expired tokens: the connection enters its offline grace, so a
        // client back with a fresh token within it resumes unseen.
        while let Some(due) = self.expiries.first().copied().filter(|(at, _)| *at <= now) {
            self.expiries.remove(&due);
            let conn = due.1;
            self.metrics.token("expired");
            self.close_socket(
                now,
                conn,
                (CloseCode::Unauthorized, "the token expired"),
                true,
            );
        }
        self.settle(now);
        if self
            .batch_since
            .is_some_and(|since| since.after(self.config.batch_window) <= now)
            || self.large.next_due().is_some_and(|at| at <= now)
        {
            self.flush(now);
            self.settle(now);
        }
        let gone: Vec<ConnId> = self
            .watches
            .keys()
            .filter(|c| self.machine.user_of(**c).is_none())
            .copied()
            .collect();
        for conn in gone {
            if let Some(users) = self.watches.get(&conn).cloned() {
                for user in &users {
                    unwatch_one(self, conn, user);
                }
            }
            self.watches.remove(&conn);
        }
    }

    /// Closes every socket with 1001 (shutdown) after sending what is pending.
    pub(super) fn close_all(&mut self, now: Millis, close: Close) {
        self.flush(now);
        let conns: Vec<ConnId> = self.sockets.keys().copied().collect();
        for conn in conns {
            self.close_socket(now, conn, close, false);
        }
        self.metrics.connections.set(0);
    }

    /// Offers a reply: sent only if the socket's queue has room for it.
    pub(super) fn offer(&mut self, conn: ConnId, generation: u64, msg: &ServerMessage) {
        if self.is_current(conn, generation) {
            self.out.offer(generation, encoded(msg));
        }
    }
}

/// How often retention looks for offline users to forget (it costs what it
/// forgets: the machine keeps them in order of departure).
const RETENTION_SWEEP: Duration = Duration::from_secs(60);

#[cfg(test)]
mod tests {
    //! The node driven alone, on the times its inputs name: no lock, no
    //! socket, no runtime.

    use presence_core::IdleReason;

    use super::*;
    use crate::audience::OpenAudience;

    const T0: Millis = Millis(1_000_000);

    fn node() -> Node {
        Node::new(
            ServerConfig::default(),
            Arc::new(Metrics::new(false)),
            Arc::new(OpenAudience),
            false,
            None,
        )
    }

    fn user(name: &str) -> Arc<Identity> {
        Arc::new(Identity::from(UserId::new(name).unwrap()))
    }

    /// Connects `who` as socket `generation` (also its connection id), in
    /// room `r` if given; returns what the step owes.
    fn connect(node: &mut Node, now: Millis, who: &Arc<Identity>, generation: u64) -> Outbound {
        let socket = NewSocket {
            fresh: ConnId(generation),
            generation,
            token: ResumeToken::new(format!("t{generation}")).unwrap(),
            resume: None,
            activity: Activity::Active,
            device: DeviceKind::default(),
        };
        node.connect(now, who, socket).unwrap();
        node.settle(now);
        std::mem::take(&mut node.out)
    }

    fn step(node: &mut Node, now: Millis, f: impl FnOnce(&mut Node)) -> Outbound {
        f(node);
        node.settle(now);
        std::mem::take(&mut node.out)
    }

    fn kinds(frames: &[String]) -> Vec<String> {
        frames
            .iter()
            .map(|f| {
                let v: serde_json::Value = serde_json::from_str(f).unwrap();
                v["type"].as_str().unwrap_or_default().to_owned()
            })
            .collect()
    }

    #[test]
    fn a_change_reaches_the_room_when_the_batch_window_ends_and_not_before() {
        let mut n = node();
        let window = n.config.batch_window;
        let room = RoomId::new("r").unwrap();
        let (alice, bob) = (user("alice"), user("bob"));
        assert_eq!(
            kinds(&connect(&mut n, T0, &alice, 1).frames(1)),
            ["welcome"]
        );
        connect(&mut n, T0, &bob, 2);
        step(&mut n, T0, |n| {
            n.join(T0, ConnId(1), 1, room.clone()).unwrap()
        });
        step(&mut n, T0, |n| {
            n.join(T0, ConnId(2), 2, room.clone()).unwrap()
        });
        let t1 = T0.after(Duration::from_secs(1));
        let out = step(&mut n, t1, |n| n.tick(t1));
        assert!(kinds(&out.frames(2)).contains(&"snapshot".to_owned()));

        let idle = Activity::Idle(IdleReason::Hidden);
        let out = step(&mut n, t1, |n| {
            n.act(t1, ConnId(1), 1, |m, now| {
                m.set_activity(now, ConnId(1), idle)
            })
            .unwrap()
        });
        assert!(out.frames(2).is_empty(), "nothing before the window ends");
        let due = n.plan(t1);
        assert_eq!(
            due,
            t1.after(window),
            "the driver wakes at the window's end"
        );
        let early = Millis(due.0 - 1);
        assert!(step(&mut n, early, |n| n.tick(early)).frames(2).is_empty());
        let out = step(&mut n, due, |n| n.tick(due));
        let frames = out.frames(2);
        assert_eq!(kinds(&frames), ["diffs"], "{frames:?}");
        assert!(frames[0].contains("\"user_idle\""), "{frames:?}");
    }

    #[test]
    fn a_resume_closes_the_socket_it_replaces_and_greets_only_the_new_one() {
        let mut n = node();
        let alice = user("alice");
        connect(&mut n, T0, &alice, 1);
        let token = ResumeToken::new("t1").unwrap();
        let socket = NewSocket {
            fresh: ConnId(9),
            generation: 2,
            token: ResumeToken::new("t2").unwrap(),
            resume: Some(&token),
            activity: Activity::Active,
            device: DeviceKind::default(),
        };
        let out = step(&mut n, T0, |n| {
            assert_eq!(n.connect(T0, &alice, socket), Ok(ConnId(1)));
        });
        assert_eq!(
            out.closed(1).map(|c| c.0),
            Some(CloseCode::Superseded),
            "the old socket is closed"
        );
        assert!(out.frames(1).is_empty());
        assert_eq!(kinds(&out.frames(2)), ["welcome"]);
        assert!(out.frames(2)[0].contains("\"resumed\":true"));
        // Its frames now go to the new socket only.
        let out = step(&mut n, T0, |n| n.reply(ConnId(1), 2, &ServerMessage::Pong));
        assert_eq!(kinds(&out.frames(2)), ["pong"]);
        let out = step(&mut n, T0, |n| n.reply(ConnId(1), 1, &ServerMessage::Pong));
        assert!(out.frames(1).is_empty() && out.frames(2).is_empty());
    }

    #[test]
    fn an_expiring_token_closes_its_socket_at_the_expiry_and_not_before() {
        let mut n = node();
        let expires = T0.after(Duration::from_secs(5));
        let alice = Arc::new(Identity {
            expires: Some(expires),
            ..(*user("alice")).clone()
        });
        connect(&mut n, T0, &alice, 1);
        assert!(n.plan(T0) <= expires, "the driver wakes by the expiry");
        let before = Millis(expires.0 - 1);
        assert_eq!(step(&mut n, before, |n| n.tick(before)).closed(1), None);
        let out = step(&mut n, expires, |n| n.tick(expires));
        assert_eq!(out.closed(1).map(|c| c.0), Some(CloseCode::Unauthorized));
        assert!(!n.is_current(ConnId(1), 1));
    }
}
