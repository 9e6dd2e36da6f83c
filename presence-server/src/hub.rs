//! The shared state of one node: the presence machine, the live sockets, the
//! watch lists and the pending batches, and the routing between them.
//!
//! Everything sits behind one `std::sync::Mutex`, not an async one, because
//! no critical section ever awaits: the machine is pure computation, sending
//! is `try_send` into bounded queues, and closing a socket is a signal to its
//! task. A std mutex is cheaper than tokio's when it is held this briefly
//! (the tokio docs say so too). One lock also gives every socket the same
//! order of frames: a snapshot is queued under the lock that also orders the
//! diffs after it. If this lock ever becomes the bottleneck, shard by room.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::extract::ws::{Message, Utf8Bytes};
use presence_core::limits::MAX_WATCHED_PER_CONNECTION;
use presence_core::machine::{ConnRecord, MachineError, UserRecord};
use presence_core::protocol::{CloseCode, Diff, ErrorCode, ServerMessage, encode};
use presence_core::{
    Activity, ConnId, Event, Machine, Millis, PresenceState, PresenceView, ResumeToken, RoomId,
    Status, UserId,
};
use tokio::sync::{Notify, broadcast, mpsc, watch};

use crate::audience::AudiencePolicy;
use crate::auth::{Authenticator, Identity};
use crate::broadcast::{Audience, Batch};
use crate::broker::Broker;
use crate::clock::Clock;
use crate::cluster::{ClusterState, Outgoing, SnapRequest, WatchRequest};
use crate::config::ServerConfig;
use crate::data_dir::{DataDir, Loaded};
use crate::feed::Feed;
use crate::metrics::Metrics;

/// How a socket is to be closed: code and reason.
pub(crate) type Close = (CloseCode, &'static str);

/// What a session gets back from a successful `hello`.
pub(crate) struct Registered {
    pub conn: ConnId,
    pub generation: u64,
    pub outbound: mpsc::Receiver<Message>,
    pub close: watch::Receiver<Option<Close>>,
}

/// One live socket. A machine connection outlives its sockets: a resume puts
/// a new socket (with a new generation) under the same `ConnId`.
struct Socket {
    generation: u64,
    user: UserId,
    tx: mpsc::Sender<Message>,
    close: watch::Sender<Option<Close>>,
}

struct State {
    machine: Machine,
    sockets: HashMap<ConnId, Socket>,
    /// Per connection (not socket: watches survive a resume), who it watches.
    watches: HashMap<ConnId, HashSet<UserId>>,
    /// The reverse index: user → connections watching them.
    watchers: HashMap<UserId, HashSet<ConnId>>,
    batch: Batch,
    /// Snapshots owed to connections that joined a room, sent at the next
    /// flush after that room's pending diffs went to the others: the
    /// snapshot already shows those, so the joiner's first diffs are newer.
    snapshots: HashMap<RoomId, HashSet<ConnId>>,
    /// When the oldest pending diff arrived.
    batch_since: Option<Millis>,
    /// When the driver plans to wake next.
    planned_wake: Option<Millis>,
    /// Sockets whose queue overflowed during the current operation.
    slow: Vec<ConnId>,
    /// With a shared store: what to tell it and what we wait for from it.
    cluster: Option<ClusterState>,
    /// With a data directory: users whose durable state changed since the
    /// last write, and users forgotten by retention (to delete).
    durable: HashSet<UserId>,
    forgotten: Vec<UserId>,
    /// When retention next looks for offline users to forget.
    next_sweep: Millis,
}

impl State {
    /// Whether `generation` is still the socket speaking for `conn` (not one
    /// replaced by a resume, nor one the server already closed).
    fn is_current(&self, conn: ConnId, generation: u64) -> bool {
        self.sockets
            .get(&conn)
            .is_some_and(|s| s.generation == generation)
    }
}

/// The node's shared state and its collaborators.
pub(crate) struct Hub {
    pub config: ServerConfig,
    pub clock: Arc<dyn Clock>,
    pub auth: Arc<dyn Authenticator>,
    pub audience: Arc<dyn AudiencePolicy>,
    broker: Arc<dyn Broker>,
    pub metrics: Metrics,
    events: broadcast::Sender<Event>,
    state: Mutex<State>,
    /// Wakes the driver early: a batch started or a deadline moved earlier.
    wake: Arc<Notify>,
    /// Wakes the store's task: something is pending for it.
    pub cluster_wake: Arc<Notify>,
    /// The shared store, when the server runs as one node of several.
    pub store: Option<crate::redis::RedisStore>,
    /// Where user state outlives the process, on a single node.
    pub data: Option<DataDir>,
    /// The numbered feed for backends (`GET /v1/events`), with a service key.
    pub feed: Option<Feed>,
    /// The store's tasks, so a failure drill can stop them dead.
    pub store_tasks: Mutex<Vec<tokio::task::JoinHandle<()>>>,
    next_conn: AtomicU64,
    next_generation: AtomicU64,
    shutdown: watch::Sender<bool>,
    sessions: AtomicUsize,
    pub sessions_done: Notify,
}

/// An app hook (authenticator or audience policy) did not answer within
/// `ServerConfig::policy_timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PolicyTimeout;

/// Where user state outlives this process.
pub(crate) enum Kept {
    /// Nowhere: a restart forgets it.
    InMemory,
    /// In a data directory, on a single node.
    OnDisk(DataDir),
    /// In Redis, shared with the other nodes.
    InRedis(crate::redis::RedisStore),
}

/// Counts a live session task; shutdown waits for the count to reach zero.
pub(crate) struct SessionGuard(Arc<Hub>);

impl Drop for SessionGuard {
    fn drop(&mut self) {
        if self.0.sessions.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.sessions_done.notify_waiters();
        }
    }
}

fn offline_view(user: &UserId) -> PresenceView {
    PresenceView {
        user: user.clone(),
        state: PresenceState::Offline,
        reason: None,
        status: Status::Available,
        text: None,
        last_active: None,
        last_seen: None,
    }
}

fn random_token() -> Option<ResumeToken> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).ok()?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    ResumeToken::new(hex).ok()
}

impl Hub {
    pub fn new(
        config: ServerConfig,
        clock: Arc<dyn Clock>,
        auth: Arc<dyn Authenticator>,
        audience: Arc<dyn AudiencePolicy>,
        broker: Arc<dyn Broker>,
        wake: Arc<Notify>,
        kept: Kept,
    ) -> Self {
        let (store, data) = match kept {
            Kept::InMemory => (None, None),
            Kept::OnDisk(data) => (None, Some(data)),
            Kept::InRedis(store) => (Some(store), None),
        };
        let clustered = store.is_some();
        let feed = config
            .service_key
            .is_some()
            .then(|| Feed::new(config.event_replay, clock.now()));
        let (events, _) = broadcast::channel(config.event_buffer);
        Self {
            state: Mutex::new(State {
                machine: Machine::new(config.timing),
                sockets: HashMap::new(),
                watches: HashMap::new(),
                watchers: HashMap::new(),
                batch: Batch::default(),
                snapshots: HashMap::new(),
                batch_since: None,
                planned_wake: None,
                slow: Vec::new(),
                cluster: clustered.then(ClusterState::default),
                durable: HashSet::new(),
                forgotten: Vec::new(),
                next_sweep: Millis(0),
            }),
            config,
            clock,
            auth,
            audience,
            broker,
            metrics: Metrics::new(clustered),
            events,
            wake,
            cluster_wake: Arc::new(Notify::new()),
            store,
            data,
            feed,
            store_tasks: Mutex::new(Vec::new()),
            next_conn: AtomicU64::new(1),
            next_generation: AtomicU64::new(1),
            shutdown: watch::channel(false).0,
            sessions: AtomicUsize::new(0),
            sessions_done: Notify::new(),
        }
    }

    pub fn session_guard(self: &Arc<Self>) -> SessionGuard {
        self.sessions.fetch_add(1, Ordering::AcqRel);
        SessionGuard(self.clone())
    }

    /// Stops taking sockets and tells waiting sessions and the driver.
    pub fn begin_shutdown(&self) {
        self.shutdown.send_replace(true);
    }

    pub fn is_shutting_down(&self) -> bool {
        *self.shutdown.borrow()
    }

    pub fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    pub fn live_sessions(&self) -> usize {
        self.sessions.load(Ordering::Acquire)
    }

    /// Whether the token's scope and the audience policy both let
    /// `who` join (and read) `room`; `Err` if the policy did not answer in
    /// time.
    pub async fn may_join(&self, who: &Identity, room: &RoomId) -> Result<bool, PolicyTimeout> {
        if !who.rooms.allows(room.as_str()) {
            return Ok(false);
        }
        self.bounded(self.audience.may_join(who, room)).await
    }

    /// Whether the token's scope and the audience policy both let `who`
    /// watch `target`; `Err` if the policy did not answer in time.
    pub async fn may_watch(&self, who: &Identity, target: &UserId) -> Result<bool, PolicyTimeout> {
        if !who.watch.allows(target.as_str()) {
            return Ok(false);
        }
        self.bounded(self.audience.may_watch(who, target)).await
    }

    /// Runs an app hook within the policy timeout, counting timeouts.
    pub async fn bounded<T>(&self, hook: impl Future<Output = T>) -> Result<T, PolicyTimeout> {
        let r = tokio::time::timeout(self.config.policy_timeout, hook).await;
        if r.is_err() {
            self.metrics.policy_timeouts.inc();
            tracing::warn!(timeout = ?self.config.policy_timeout, "an app hook did not answer in time");
        }
        r.map_err(|_| PolicyTimeout)
    }

    /// Hands a host-level event to the app's subscribers and the feed.
    fn publish(&self, ev: &Event) {
        // No receivers is fine: host apps subscribe if they want to.
        let _ = self.events.send(ev.clone());
        if let Some(feed) = &self.feed {
            feed.push(ev);
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock would be a bug in this crate; the
        // state is still structurally sound, so keep serving.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on the state, then routes what the machine emitted and closes
    /// sockets whose queues overflowed.
    fn apply<R>(&self, f: impl FnOnce(&mut State, Millis) -> R) -> R {
        let mut st = self.lock();
        let now = self.clock.now();
        let r = f(&mut st, now);
        self.settle(&mut st, now);
        r
    }

    /// Read-only access for queries.
    pub fn read<R>(&self, f: impl FnOnce(&Machine) -> R) -> R {
        let st = self.lock();
        f(&st.machine)
    }

    fn settle(&self, st: &mut State, now: Millis) {
        let events: Vec<Event> = st.machine.drain_events().collect();
        if !events.is_empty() {
            self.broker.publish(&events);
            // With a store that is up, observers hear the cluster-level
            // events the store publishes instead of this node's: a node's
            // `user_disconnected` is no news while the user is online elsewhere.
            let local = st.cluster.as_ref().is_none_or(|c| !c.up());
            for ev in &events {
                self.record(ev);
                if let Some(c) = st.cluster.as_mut() {
                    track(c, ev);
                }
                if self.data.is_some()
                    && matches!(
                        ev.diff,
                        Diff::Status { .. } | Diff::UserDisconnected { .. } | Diff::Read { .. }
                    )
                {
                    st.durable.insert(ev.diff.user().clone());
                }
                if local {
                    let watched = st.watchers.contains_key(ev.diff.user());
                    st.batch.route(ev, watched);
                    self.publish(ev);
                }
            }
            if st.cluster.is_some() {
                self.cluster_wake.notify_one();
            }
        }
        if !st.batch.is_empty() || !st.snapshots.is_empty() {
            if self.config.batch_window.is_zero() {
                self.flush(st);
            } else if st.batch_since.is_none() {
                st.batch_since = Some(now);
                self.wake.notify_one();
            }
        }
        if let Some(next) = st.machine.next_deadline()
            && st.planned_wake.is_none_or(|w| next < w)
        {
            st.planned_wake = Some(next);
            self.wake.notify_one();
        }
        while let Some(conn) = st.slow.pop() {
            self.metrics.slow_consumers.inc();
            tracing::info!(%conn, "outbound queue full; closing slow consumer");
            self.close_socket(
                st,
                now,
                conn,
                (CloseCode::SlowConsumer, "slow consumer"),
                true,
            );
        }
        self.metrics.connections.set(st.sockets.len() as i64);
    }

    fn record(&self, ev: &Event) {
        self.metrics
            .events
            .get_or_create(&[("kind", ev.name())])
            .inc();
        if let Diff::UserDisconnected { last_seen, .. } = ev.diff
            && ev.global
        {
            self.metrics
                .time_to_offline
                .observe(ev.at.since(last_seen).as_secs_f64());
        }
    }

    /// Sends every pending batch: one encoding per audience, the same bytes
    /// to every recipient.
    fn flush(&self, st: &mut State) {
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
                    (Some(room), Some(cl)) => !cl.is_awaiting(c.0, room),
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
    fn send_snapshots(&self, st: &mut State, joiners: HashMap<RoomId, HashSet<ConnId>>) {
        for (room, conns) in joiners {
            // Left again (or gone) before the flush: nothing is owed.
            let conns: Vec<ConnId> = conns
                .into_iter()
                .filter(|c| st.machine.rooms_of(*c).contains(&room))
                .collect();
            if conns.is_empty() {
                continue;
            }
            let frame = text_frame(&ServerMessage::Snapshot {
                members: st.machine.members(&room),
                typing: st.machine.typing_in(&room),
                receipts: st.machine.receipts_in(&room),
                room,
            });
            for conn in conns {
                self.send(st, conn, frame.clone());
            }
        }
    }

    /// Queues a frame for a socket; a full queue marks it slow.
    fn send(&self, st: &mut State, conn: ConnId, msg: Message) {
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

    /// Signals a socket's task to close with `close`. With `dropped`, the
    /// machine connection enters its offline grace (the client may resume).
    fn close_socket(&self, st: &mut State, now: Millis, conn: ConnId, close: Close, dropped: bool) {
        if let Some(c) = st.cluster.as_mut() {
            c.awaiting.remove(&conn.0);
        }
        if let Some(socket) = st.sockets.remove(&conn) {
            let _ = socket.close.send(Some(close));
            if dropped {
                st.machine.dropped(now, conn);
            }
        }
    }

    /// A `hello` was accepted: start or resume the machine connection and
    /// register the socket. The `welcome` is the first frame in its queue.
    pub fn connect(
        &self,
        user: &UserId,
        resume: Option<&ResumeToken>,
        activity: Activity,
    ) -> Result<Registered, ErrorCode> {
        let token = random_token().ok_or(ErrorCode::Internal)?;
        let fresh = ConnId(self.next_conn.fetch_add(1, Ordering::Relaxed));
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        let (tx, outbound) = mpsc::channel(self.config.outbound_queue);
        let (close_tx, close) = watch::channel(None);
        self.apply(|st, now| {
            // Checked under the lock that close_all takes, so no socket
            // registers after the shutdown closed the others.
            if self.is_shutting_down() {
                return Err(ErrorCode::Internal);
            }
            let new_here = st.machine.connections_of(user).is_empty();
            if let Some(c) = st.cluster.as_mut() {
                c.dirty.insert(user.clone());
                if new_here {
                    // Its status may have been set on another node.
                    c.sync_status.insert(user.clone());
                }
                self.cluster_wake.notify_one();
            }
            let outcome = st
                .machine
                .connect(now, user.clone(), fresh, token, resume, activity)
                .map_err(MachineError::code)?;
            if outcome.resumed {
                self.metrics.resumes.inc();
            }
            if outcome.superseded {
                self.close_socket(
                    st,
                    now,
                    outcome.conn,
                    (CloseCode::Superseded, "resumed on another socket"),
                    false,
                );
            }
            let (status, text) = st.machine.status_of(user);
            let policy = st.machine.policy();
            let welcome = ServerMessage::Welcome {
                v: presence_core::PROTOCOL_VERSION,
                user: user.clone(),
                conn: outcome.conn,
                resume: outcome.token,
                resumed: outcome.resumed,
                heartbeat_ms: u64::try_from(policy.heartbeat_interval.as_millis())
                    .unwrap_or(u64::MAX),
                idle_after_ms: u64::try_from(policy.idle_after.as_millis()).unwrap_or(u64::MAX),
                status,
                text,
            };
            st.sockets.insert(
                outcome.conn,
                Socket {
                    generation,
                    user: user.clone(),
                    tx,
                    close: close_tx,
                },
            );
            self.send(st, outcome.conn, text_frame(&welcome));
            Ok(Registered {
                conn: outcome.conn,
                generation,
                outbound,
                close,
            })
        })
    }

    /// Runs a machine input for a socket's connection, if the socket is still
    /// the connection's current one.
    pub fn act<R>(
        &self,
        conn: ConnId,
        generation: u64,
        f: impl FnOnce(&mut Machine, Millis) -> Result<R, MachineError>,
    ) -> Result<R, ErrorCode> {
        self.apply(|st, now| {
            if !st.is_current(conn, generation) {
                return Err(ErrorCode::Internal);
            }
            if let Some(c) = st.cluster.as_mut()
                && let Some(user) = st.machine.user_of(conn)
            {
                // Leaving a room while invisible emits nothing, yet changes
                // this node's record.
                c.dirty.insert(user.clone());
            }
            f(&mut st.machine, now).map_err(MachineError::code)
        })
    }

    /// Queues a reply (pong, error, …) for a socket.
    pub fn reply(&self, conn: ConnId, generation: u64, msg: &ServerMessage) {
        self.apply(|st, _| {
            if st.is_current(conn, generation) {
                self.send(st, conn, text_frame(msg));
            }
        });
    }

    /// Moves a read marker. Kept durable even when nobody is told (an
    /// invisible user's markers are kept, not shown).
    pub fn read_marker(
        &self,
        conn: ConnId,
        generation: u64,
        room: &RoomId,
        marker: u64,
    ) -> Result<(), ErrorCode> {
        let moved = self.act(conn, generation, |m, now| m.read(now, conn, room, marker))?;
        if moved && self.data.is_some() {
            let mut st = self.lock();
            if let Some(user) = st.machine.user_of(conn).cloned() {
                st.durable.insert(user);
            }
        }
        Ok(())
    }

    /// Queues a reply only if the socket's queue has room for it: for
    /// replies that must never make a socket a slow consumer.
    pub fn try_reply(&self, conn: ConnId, generation: u64, msg: &ServerMessage) {
        let st = self.lock();
        if st.is_current(conn, generation)
            && let Some(socket) = st.sockets.get(&conn)
            && socket.tx.try_send(text_frame(msg)).is_ok()
        {
            self.metrics.frames_out.inc();
        }
    }

    /// Joins a room and queues its snapshot before any later diff.
    pub fn join(&self, conn: ConnId, generation: u64, room: RoomId) -> Result<(), ErrorCode> {
        self.apply(|st, now| {
            if !st.is_current(conn, generation) {
                return Err(ErrorCode::Internal);
            }
            st.machine
                .join(now, conn, room.clone())
                .map_err(MachineError::code)?;
            if let Some(c) = st.cluster.as_mut().filter(|c| c.up()) {
                // The snapshot comes from the store, in order with the
                // cluster's diffs; until then this room's diffs wait.
                if let Some(user) = st.machine.user_of(conn) {
                    c.dirty.insert(user.clone());
                }
                c.awaiting.entry(conn.0).or_default().push(room.clone());
                c.snaps.push(SnapRequest { c: conn.0, room });
                self.cluster_wake.notify_one();
                return Ok(());
            }
            self.local_snapshot(st, conn, room);
            Ok(())
        })
    }

    /// Sets the user's status and tells all of their sockets.
    pub fn set_status(
        &self,
        conn: ConnId,
        generation: u64,
        status: Status,
        text: Option<presence_core::StatusText>,
    ) -> Result<(), ErrorCode> {
        self.apply(|st, now| {
            let Some(user) = st
                .sockets
                .get(&conn)
                .filter(|s| s.generation == generation)
                .map(|s| s.user.clone())
            else {
                return Err(ErrorCode::Internal);
            };
            let changed = st
                .machine
                .set_status(now, conn, status, text.clone())
                .map_err(MachineError::code)?;
            if changed && self.data.is_some() {
                st.durable.insert(user.clone());
            }
            if let Some(c) = st.cluster.as_mut() {
                // Sent even when this node's machine saw no change: it may
                // not know a status set on another node.
                c.status(user.clone(), status, text.clone(), now);
                self.cluster_wake.notify_one();
            }
            if changed {
                let msg = text_frame(&ServerMessage::SelfStatus { status, text });
                let own: Vec<ConnId> = st.machine.connections_of(&user).to_vec();
                for c in own {
                    self.send(st, c, msg.clone());
                }
            }
            Ok(())
        })
    }

    /// Adds users to a connection's watch list (already authorised) and
    /// returns their presence now.
    pub fn watch(
        &self,
        conn: ConnId,
        generation: u64,
        users: Vec<UserId>,
    ) -> Result<(), ErrorCode> {
        self.apply(|st, _| {
            if !st.is_current(conn, generation) {
                return Err(ErrorCode::Internal);
            }
            let current = st.watches.get(&conn);
            let added = users
                .iter()
                .filter(|u| current.is_none_or(|w| !w.contains(*u)))
                .collect::<HashSet<_>>()
                .len();
            if current.map_or(0, HashSet::len) + added > MAX_WATCHED_PER_CONNECTION {
                return Err(ErrorCode::TooManyWatched);
            }
            for user in &users {
                st.watchers.entry(user.clone()).or_default().insert(conn);
                st.watches.entry(conn).or_default().insert(user.clone());
            }
            if let Some(c) = st.cluster.as_mut().filter(|c| c.up()) {
                c.watch.push(WatchRequest { c: conn.0, users });
                self.cluster_wake.notify_one();
                return Ok(());
            }
            self.local_watching(st, conn, &users);
            Ok(())
        })
    }

    /// Removes users from a connection's watch list.
    pub fn unwatch(&self, conn: ConnId, generation: u64, users: &[UserId]) {
        self.apply(|st, _| {
            if !st.is_current(conn, generation) {
                return;
            }
            for user in users {
                unwatch_one(st, conn, user);
            }
        });
    }

    /// Closes a socket on the session's own initiative (abuse, huge frame).
    pub fn close(&self, conn: ConnId, generation: u64, close: Close) {
        self.apply(|st, now| {
            if st.is_current(conn, generation) {
                self.close_socket(st, now, conn, close, true);
            }
        });
    }

    /// The socket ended (closed by the client, or failed). Unless it had
    /// already been replaced by a resume or closed by the server, its
    /// connection enters the offline grace.
    pub fn socket_gone(&self, conn: ConnId, generation: u64) {
        self.apply(|st, now| {
            if st.is_current(conn, generation) {
                st.sockets.remove(&conn);
                if let Some(c) = st.cluster.as_mut() {
                    c.awaiting.remove(&conn.0);
                }
                st.machine.dropped(now, conn);
            }
        });
    }

    /// The host app stored a message: the sender's typing stops now.
    pub fn message_sent(&self, user: &UserId, room: &RoomId) {
        self.apply(|st, now| st.machine.message_sent(now, user, room));
    }

    /// Events from another node: deliver them to this node's sockets.
    pub fn deliver_remote(&self, events: Vec<Event>) {
        self.apply(|st, _| {
            for ev in &events {
                let watched = st.watchers.contains_key(ev.diff.user());
                st.batch.route(ev, watched);
            }
        });
    }

    /// Owes `conn` a snapshot of `room` from this node's machine, sent at
    /// the next flush (see [`State::snapshots`]).
    fn local_snapshot(&self, st: &mut State, conn: ConnId, room: RoomId) {
        st.snapshots.entry(room).or_default().insert(conn);
    }

    fn local_watching(&self, st: &mut State, conn: ConnId, users: &[UserId]) {
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

    /// Whether a store is configured and cluster delivery is in force.
    pub fn cluster_up(&self) -> Option<bool> {
        self.lock().cluster.as_ref().map(ClusterState::up)
    }

    /// Takes what the store must hear (`None` if nothing, or no store).
    pub(crate) fn cluster_take(&self) -> Option<Outgoing> {
        let mut st = self.lock();
        let st = &mut *st;
        let c = st.cluster.as_mut()?;
        if !c.ready {
            return None;
        }
        let out = c.take(&st.machine);
        (!out.is_empty()).then_some(out)
    }

    /// A call to the store failed: keep its content for the next try, and
    /// answer its snapshot and watch requests from this node's machine.
    pub(crate) fn cluster_failed(&self, out: Outgoing) {
        self.apply(|st, _| {
            let Some(c) = st.cluster.as_mut() else {
                return;
            };
            let (snaps, watch) = c.failed(out);
            self.answer_locally(st, snaps, watch);
        });
    }

    fn answer_locally(&self, st: &mut State, snaps: Vec<SnapRequest>, watch: Vec<WatchRequest>) {
        for s in snaps {
            let conn = ConnId(s.c);
            let waiting = st.cluster.as_mut().is_some_and(|c| {
                let Some(rooms) = c.awaiting.get_mut(&s.c) else {
                    return false;
                };
                let before = rooms.len();
                rooms.retain(|r| *r != s.room);
                rooms.len() != before
            });
            if waiting {
                self.local_snapshot(st, conn, s.room);
            }
        }
        for w in watch {
            self.local_watching(st, ConnId(w.c), &w.users);
        }
    }

    /// The subscription (`sub`) or the command link (`!sub`) to the store
    /// went up or down. Going down switches to local delivery and answers
    /// pending requests locally; coming back re-sends this node's whole
    /// state and resyncs every socket with fresh snapshots, so the cluster
    /// and every observer converge whatever was missed meanwhile.
    pub(crate) fn cluster_link(&self, sub: bool, ok: bool) {
        self.apply(|st, _| {
            let Some(c) = st.cluster.as_mut() else {
                return;
            };
            let was = c.up();
            if sub {
                c.sub_ok = ok;
            } else {
                c.cmd_ok = ok;
            }
            let is = c.up();
            self.metrics.redis_up.set(i64::from(is));
            if was && !is {
                tracing::warn!("store unreachable: serving local users from this node only");
                let snaps = std::mem::take(&mut c.snaps);
                let watch = std::mem::take(&mut c.watch);
                let awaiting: Vec<SnapRequest> = c
                    .awaiting
                    .drain()
                    .flat_map(|(conn, rooms)| {
                        rooms
                            .into_iter()
                            .map(move |room| SnapRequest { c: conn, room })
                    })
                    .collect();
                for s in &awaiting {
                    self.local_snapshot(st, ConnId(s.c), s.room.clone());
                }
                self.answer_locally(st, snaps, watch);
            } else if !was && is {
                tracing::info!("store reachable: re-publishing this node's state");
                self.resync(st);
            }
        });
    }

    /// The store was cleaned of this node's previous incarnation: records
    /// may be sent from now on.
    pub(crate) fn cluster_ready(&self) {
        self.apply(|st, _| {
            if let Some(c) = st.cluster.as_mut() {
                let was = c.up();
                c.ready = true;
                if !was && c.up() {
                    self.resync(st);
                }
            }
        });
    }

    /// The store lost this node's records (its lease had expired, or the
    /// store restarted empty): send them all again.
    pub(crate) fn cluster_republish(&self) {
        self.apply(|st, _| self.mark_all_dirty(st));
    }

    fn mark_all_dirty(&self, st: &mut State) {
        let State {
            cluster, sockets, ..
        } = st;
        if let Some(c) = cluster.as_mut() {
            let users: Vec<UserId> = c
                .published
                .keys()
                .cloned()
                .chain(sockets.values().map(|s| s.user.clone()))
                .collect();
            c.dirty.extend(users);
            self.cluster_wake.notify_one();
        }
    }

    fn resync(&self, st: &mut State) {
        self.mark_all_dirty(st);
        let conns: Vec<ConnId> = st.sockets.keys().copied().collect();
        let Some(c) = st.cluster.as_mut() else {
            return;
        };
        for conn in conns {
            for room in st.machine.rooms_of(conn) {
                let waiting = c.awaiting.entry(conn.0).or_default();
                if !waiting.contains(room) {
                    waiting.push(room.clone());
                    c.snaps.push(SnapRequest {
                        c: conn.0,
                        room: room.clone(),
                    });
                }
            }
            if let Some(users) = st.watches.get(&conn).filter(|w| !w.is_empty()) {
                c.watch.push(WatchRequest {
                    c: conn.0,
                    users: users.iter().cloned().collect(),
                });
            }
        }
    }

    /// Once a second: catch record changes no event announced.
    pub(crate) fn cluster_reconcile(&self) {
        let mut st = self.lock();
        let st = &mut *st;
        if let Some(c) = st.cluster.as_mut() {
            c.reconcile(&st.machine);
        }
    }

    /// Cluster-level events from the store: deliver them to this node's
    /// sockets and host subscribers. `selfs` are users' own status changes:
    /// this node's machine adopts them (so it shows an invisible user
    /// offline too) and tells the user's sockets here.
    pub(crate) fn deliver_cluster(
        &self,
        events: Vec<Event>,
        selfs: Vec<(UserId, Status, Option<presence_core::StatusText>)>,
    ) {
        self.apply(|st, now| {
            if st.cluster.as_ref().is_some_and(|c| !c.up()) {
                // Local delivery is in force; the resync after the link
                // returns covers what this would have said.
                return;
            }
            for ev in &events {
                let watched = st.watchers.contains_key(ev.diff.user());
                st.batch.route(ev, watched);
                self.publish(ev);
            }
            self.adopt_statuses(st, now, selfs);
        });
    }

    fn adopt_statuses(
        &self,
        st: &mut State,
        now: Millis,
        selfs: Vec<(UserId, Status, Option<presence_core::StatusText>)>,
    ) {
        for (user, status, text) in selfs {
            let Some(conn) = st.machine.connections_of(&user).first().copied() else {
                continue;
            };
            if st.machine.set_status(now, conn, status, text.clone()) == Ok(true) {
                let msg = text_frame(&ServerMessage::SelfStatus { status, text });
                let own: Vec<ConnId> = st.machine.connections_of(&user).to_vec();
                for c in own {
                    self.send(st, c, msg.clone());
                }
            }
        }
    }

    /// Answers from the store to this node's requests, in order with the
    /// cluster's diffs: pending batches go out first, then the snapshot, so a
    /// socket never gets a diff older than its snapshot after it.
    pub(crate) fn deliver_replies(
        &self,
        snaps: Vec<(ConnId, ServerMessage)>,
        watching: Vec<(ConnId, Vec<PresenceView>)>,
        selfs: Vec<(UserId, Status, Option<presence_core::StatusText>)>,
    ) {
        self.apply(|st, now| {
            if !snaps.is_empty() || !watching.is_empty() {
                self.flush(st);
            }
            for (conn, snap) in snaps {
                let ServerMessage::Snapshot { room, .. } = &snap else {
                    continue;
                };
                let waiting = st.cluster.as_mut().is_some_and(|c| {
                    let Some(rooms) = c.awaiting.get_mut(&conn.0) else {
                        return false;
                    };
                    let before = rooms.len();
                    rooms.retain(|r| r != room);
                    let hit = rooms.len() != before;
                    if rooms.is_empty() {
                        c.awaiting.remove(&conn.0);
                    }
                    hit
                });
                if waiting {
                    self.send(st, conn, text_frame(&snap));
                }
            }
            for (conn, users) in watching {
                self.send(st, conn, text_frame(&ServerMessage::Watching { users }));
            }
            self.adopt_statuses(st, now, selfs);
        });
    }

    /// When the driver should wake next, at the latest in one second.
    pub fn plan(&self) -> Duration {
        let mut st = self.lock();
        let now = self.clock.now();
        let mut wake = now.after(Duration::from_secs(1));
        if let Some(next) = st.machine.next_deadline() {
            wake = wake.min(next);
        }
        if let Some(since) = st.batch_since {
            wake = wake.min(since.after(self.config.batch_window));
        }
        st.planned_wake = Some(wake);
        wake.since(now)
    }

    /// Runs due deadlines, closes timed-out sockets, flushes due batches and
    /// forgets the watch lists of connections that are gone for good.
    pub fn tick(&self) {
        let mut st = self.lock();
        let now = self.clock.now();
        if now >= st.next_sweep {
            st.next_sweep = now.after(RETENTION_SWEEP);
            let forgotten = st.machine.forget_offline(now, self.config.retention);
            if self.data.is_some() {
                for user in &forgotten {
                    st.durable.remove(user);
                }
                st.forgotten.extend(forgotten);
            }
        }
        let timed_out = st.machine.tick(now);
        for conn in timed_out {
            self.close_socket(
                &mut st,
                now,
                conn,
                (CloseCode::HeartbeatTimeout, "heartbeat timeout"),
                false,
            );
        }
        self.settle(&mut st, now);
        if st
            .batch_since
            .is_some_and(|since| since.after(self.config.batch_window) <= now)
        {
            self.flush(&mut st);
            self.settle(&mut st, now);
        }
        let gone: Vec<ConnId> = st
            .watches
            .keys()
            .filter(|c| st.machine.user_of(**c).is_none())
            .copied()
            .collect();
        for conn in gone {
            if let Some(users) = st.watches.get(&conn).cloned() {
                for user in &users {
                    unwatch_one(&mut st, conn, user);
                }
            }
            st.watches.remove(&conn);
        }
    }

    /// Closes every socket of `user` on this node with `close` (their
    /// connections enter the offline grace); returns how many.
    pub fn disconnect_user(&self, user: &UserId, close: Close) -> usize {
        self.apply(|st, now| {
            let conns: Vec<ConnId> = st
                .machine
                .connections_of(user)
                .iter()
                .filter(|c| st.sockets.contains_key(c))
                .copied()
                .collect();
            for &conn in &conns {
                self.close_socket(st, now, conn, close, true);
            }
            conns.len()
        })
    }

    /// Closes every socket with 1001 (shutdown) after sending what is pending.
    pub fn close_all(&self, close: Close) {
        let mut st = self.lock();
        let now = self.clock.now();
        self.flush(&mut st);
        let conns: Vec<ConnId> = st.sockets.keys().copied().collect();
        for conn in conns {
            self.close_socket(&mut st, now, conn, close, false);
        }
        self.metrics.connections.set(0);
    }

    /// Refreshes gauges before a scrape.
    pub fn update_gauges(&self) {
        let st = self.lock();
        self.metrics
            .online_users
            .set(st.machine.stats().online_users as i64);
        self.metrics.connections.set(st.sockets.len() as i64);
    }
}

/// How often retention looks for offline users to forget: one pass over the
/// users each time.
const RETENTION_SWEEP: Duration = Duration::from_secs(60);

impl Hub {
    /// Takes back what a data directory (or, for connections, Redis) kept:
    /// users' durable state, and the connections of a graceful shutdown, in their offline grace from now so
    /// clients that come back within it resume silently. Nothing is announced:
    /// observers reconnect and get snapshots.
    pub(crate) fn restore(&self, loaded: Loaded) {
        let mut st = self.lock();
        let now = self.clock.now();
        for (user, record) in loaded.users {
            st.machine.restore_user(now, user, record);
        }
        let mut max_conn = 0;
        for record in loaded.conns {
            let conn = record.conn.0;
            let user = record.user.clone();
            match st.machine.restore_conn(now, record) {
                Ok(()) => {
                    max_conn = max_conn.max(conn);
                    // The shared store hears of them as of any other user.
                    if let Some(c) = st.cluster.as_mut() {
                        c.dirty.insert(user);
                    }
                }
                Err(e) => tracing::warn!(conn, error = %e, "saved connection not restored"),
            }
        }
        self.cluster_wake.notify_one();
        self.next_conn.fetch_max(max_conn + 1, Ordering::Relaxed);
        st.machine.drain_events().for_each(drop);
        st.planned_wake = None;
        self.wake.notify_one();
    }

    /// The users whose durable state changed (`Some`) or who were forgotten
    /// (`None`) since the last call.
    pub(crate) fn take_durable(&self) -> Vec<(UserId, Option<UserRecord>)> {
        let mut st = self.lock();
        let st = &mut *st;
        let mut out: Vec<(UserId, Option<UserRecord>)> = st
            .durable
            .drain()
            .map(|u| {
                let record = st.machine.user_record(&u);
                (u, record)
            })
            .collect();
        out.extend(st.forgotten.drain(..).map(|u| (u, None)));
        out
    }

    /// A write failed: try these users again with the next one.
    pub(crate) fn retry_durable(&self, users: Vec<UserId>) {
        let mut st = self.lock();
        for user in users {
            if st.machine.view(&user).is_some() {
                st.durable.insert(user);
            } else {
                st.forgotten.push(user);
            }
        }
    }

    /// Every connection, live or in grace, for a planned restart.
    pub(crate) fn conn_records(&self) -> Vec<ConnRecord> {
        self.lock().machine.conn_records()
    }
}

/// Notes what the store must hear of a machine event.
fn track(c: &mut ClusterState, ev: &Event) {
    let user = ev.diff.user();
    match &ev.diff {
        Diff::TypingStarted { .. } | Diff::TypingStopped { .. } => {
            let on = matches!(ev.diff, Diff::TypingStarted { .. });
            for room in &ev.rooms {
                c.typing(user, room, on);
            }
        }
        Diff::Read { marker, .. } => {
            for room in &ev.rooms {
                c.read(user.clone(), room.clone(), *marker);
            }
        }
        _ => {}
    }
    c.dirty.insert(user.clone());
}

fn unwatch_one(st: &mut State, conn: ConnId, user: &UserId) {
    if let Some(w) = st.watches.get_mut(&conn) {
        w.remove(user);
    }
    if let Some(w) = st.watchers.get_mut(user) {
        w.remove(&conn);
        if w.is_empty() {
            st.watchers.remove(user);
        }
    }
}

/// One message as a text frame.
pub(crate) fn text_frame(msg: &ServerMessage) -> Message {
    Message::Text(Utf8Bytes::from(encode(msg)))
}
