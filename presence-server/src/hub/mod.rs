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

use std::collections::{BTreeSet, HashMap, HashSet};
use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use presence_core::machine::MachineError;
use presence_core::protocol::{CloseCode, Diff, ErrorCode, ServerMessage, encode};
use presence_core::{
    Activity, ConnId, Event, Machine, Millis, ResumeToken, RoomId, Status, UserId,
};
use tokio::sync::{Notify, broadcast, mpsc, watch};
use tokio_tungstenite::tungstenite::Utf8Bytes;

mod bridge;
mod control;
pub(crate) mod replica;

pub(crate) use bridge::BackendLink;
pub(crate) use control::close_for;
pub use devices::{Devices, NodeDevice, Notification};
mod devices;
mod durable;
mod fanout;
mod large;
mod privacy;
mod watching;
mod wires;

use watching::unwatch_one;

use crate::audience::AudiencePolicy;
use crate::auth::{Authenticator, Identity};
use crate::broadcast::Batch;
use crate::clock::Clock;
use crate::config::ServerConfig;
use crate::data_dir::DataDir;
use crate::feed::Feed;
use crate::metrics::Metrics;
use replica::Replica;
use wires::{Outbound, Wire, Wires};

/// How a socket is to be closed: code and reason.
pub(crate) type Close = (CloseCode, &'static str);

/// What a session gets back from a successful `hello`.
pub(crate) struct Registered {
    pub conn: ConnId,
    pub generation: u64,
    pub outbound: mpsc::Receiver<Utf8Bytes>,
    pub close: watch::Receiver<Option<Close>>,
}

/// One live socket. A machine connection outlives its sockets: a resume puts
/// a new socket (with a new generation) under the same `ConnId`.
struct Socket {
    generation: u64,
    user: UserId,
    /// Its token's identity: the privacy rule asks whether it is a contact.
    who: Arc<Identity>,
    /// When its token expires: it is closed with 4101 then, unless an
    /// `auth` frame moved this.
    expires: Option<Millis>,
}

struct State {
    machine: Machine,
    sockets: HashMap<ConnId, Socket>,
    /// The sockets' token expiries, soonest first.
    expiries: BTreeSet<(Millis, ConnId)>,
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
    /// In a cluster: what this node follows of it and owes it.
    cluster: Option<Replica>,
    /// In a cluster: users whose record this node must recompute.
    touched: HashSet<UserId>,
    /// With a data directory: users whose durable state changed since the
    /// last write, and users forgotten by retention (to delete).
    durable: HashSet<UserId>,
    forgotten: Vec<UserId>,
    /// When retention next looks for offline users to forget.
    next_sweep: Millis,
    /// The rooms that are large here, with their pending summaries.
    large: presence_core::large::LargeRooms,
    /// What this step owes the sockets and the host, handed out when the
    /// lock is let go.
    out: Outbound,
}

impl State {
    /// Whether `generation` is still the socket speaking for `conn` (not one
    /// replaced by a resume, nor one the server already closed).
    fn is_current(&self, conn: ConnId, generation: u64) -> bool {
        self.sockets
            .get(&conn)
            .is_some_and(|s| s.generation == generation)
    }

    /// The node's next deadline, the one table the driver sleeps on: the
    /// machine's (graces, heartbeats, typing), the end of the batch window,
    /// the soonest token expiry, the large rooms' summaries and retention's
    /// sweep. `settle` wakes the driver when an operation moved it earlier;
    /// `plan` sleeps until it.
    fn next_deadline(&self, batch_window: Duration) -> Option<Millis> {
        [
            self.machine.next_deadline(),
            self.batch_since.map(|since| since.after(batch_window)),
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
    fn remove_socket(&mut self, conn: ConnId, close: Option<Close>) -> Option<Socket> {
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
    fn send(&mut self, conn: ConnId, frame: Utf8Bytes) {
        if let Some(socket) = self.sockets.get(&conn) {
            self.out.frame(conn, socket.generation, frame);
        }
    }
}

/// The node's shared state and its collaborators.
pub(crate) struct Hub {
    pub config: ServerConfig,
    pub clock: Arc<dyn Clock>,
    pub auth: Arc<dyn Authenticator>,
    pub audience: Arc<dyn AudiencePolicy>,
    pub metrics: Metrics,
    events: broadcast::Sender<Event>,
    state: Mutex<State>,
    /// The sockets' senders: only the shell's delivery touches them, taken
    /// while `state` is held, never the other way round.
    wires: Mutex<Wires>,
    /// Wakes the driver early: a batch started or a deadline moved earlier.
    wake: Arc<Notify>,
    /// The shared backend, when the server runs as one node of several.
    pub cluster: Option<BackendLink>,
    /// Where user state outlives the process, on a single node.
    pub data: Option<DataDir>,
    /// The numbered feed for backends (`GET /v1/events`), with a service
    /// key, on a single node.
    pub feed: Option<Feed>,
    /// With a backend: the owed changes' announcements, and the cluster's
    /// event stream (`GET /v1/events`) unless `event_shards` is 0.
    pub stream: Option<Arc<crate::stream::EventStream>>,
    revocations: control::Revocations,
    handovers: control::Handovers,
    gathers: devices::Gathers,
    /// The cluster's tasks, so a failure drill can stop them dead.
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
    /// In a backend shared with the other nodes.
    Shared(BackendLink),
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

/// 128 random bits in hex, after `<node id>.` in a cluster: the node a
/// resume elsewhere asks for the connection (see `control`).
fn random_token(node: Option<&str>) -> Option<ResumeToken> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).ok()?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    match node {
        Some(node) => ResumeToken::new(format!("{node}.{hex}")).ok(),
        None => ResumeToken::new(hex).ok(),
    }
}

impl Hub {
    pub fn new(
        config: ServerConfig,
        clock: Arc<dyn Clock>,
        auth: Arc<dyn Authenticator>,
        audience: Arc<dyn AudiencePolicy>,
        wake: Arc<Notify>,
        kept: Kept,
    ) -> Self {
        let (cluster, data) = match kept {
            Kept::InMemory => (None, None),
            Kept::OnDisk(data) => (None, Some(data)),
            Kept::Shared(link) => (Some(link), None),
        };
        let replica = cluster
            .as_ref()
            .map(|l| Replica::new(l.config.incarnation(), clock.now()));
        let clustered = cluster.is_some();
        let metrics = Metrics::new(clustered);
        let stream = cluster.as_ref().map(|l| {
            Arc::new(crate::stream::EventStream::new(
                l.config.event_shards,
                l.config.keep(),
                &l.backend.label(),
                metrics.stream.clone(),
            ))
        });
        // Without a cluster stream, the node's own numbered feed.
        let feed = (config.service_key.is_some() && !stream.as_ref().is_some_and(|s| s.appends()))
            .then(|| Feed::new(config.event_replay, clock.now()));
        let (events, _) = broadcast::channel(config.event_buffer);
        Self {
            state: Mutex::new(State {
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
            }),
            wires: Mutex::new(Wires::default()),
            config,
            clock,
            auth,
            audience,
            metrics,
            events,
            wake,
            cluster,
            data,
            feed,
            stream,
            revocations: control::Revocations::default(),
            handovers: control::Handovers::default(),
            gathers: devices::Gathers::default(),
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

    /// Who `request` speaks for, by the app's authenticator (bounded); a token
    /// already past its `expires` by this server's clock is refused: the clock
    /// that closes a socket at `expires` also decides acceptance, so no token
    /// is welcomed and then closed at the next tick.
    pub async fn authenticate(
        &self,
        request: &crate::auth::AuthRequest<'_>,
    ) -> Result<Result<crate::auth::Identity, crate::auth::AuthError>, PolicyTimeout> {
        let who = self.bounded(self.auth.authenticate(request)).await?;
        Ok(who.and_then(|who| match who.expires {
            Some(at) if at <= self.clock.now() => Err(crate::auth::AuthError::Expired),
            _ => Ok(who),
        }))
    }

    /// Hands a host-level event to the app's subscribers and the feed (under
    /// the lock, decisions queue it in [`State::out`] instead).
    fn publish(&self, ev: &Event) {
        // No receivers is fine: host apps subscribe if they want to.
        let _ = self.events.send(ev.clone());
        if let Some(feed) = &self.feed {
            feed.push(ev);
        }
    }

    /// A view change (on only with `viewing_events`): for the host alone,
    /// no socket. In a cluster it is no record change, so it skips the
    /// replica: it goes straight into the stream's outbox, named by its
    /// node (connection ids are per node). At most once there: a node that
    /// dies before appending it loses it.
    fn publish_view(&self, st: &mut State, mut ev: Event) {
        self.record(&ev);
        if let (Diff::Viewing { node, .. }, Some(l)) = (&mut ev.diff, &self.cluster) {
            *node = Some(l.config.node_id.clone());
        }
        match st.cluster.as_ref().map(|c| c.me.clone()) {
            Some(me) => st.out.own(me, ev),
            None => st.out.host(ev),
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// A fresh resume token (see [`random_token`]).
    fn new_token(&self) -> Option<ResumeToken> {
        random_token(self.cluster.as_ref().map(|l| l.config.node_id.as_str()))
    }

    fn lock(&self) -> Locked<'_> {
        // A panic while holding the lock would be a bug in this crate; the
        // state is still structurally sound, so keep serving.
        Locked {
            hub: self,
            st: self.state.lock().unwrap_or_else(|p| p.into_inner()),
        }
    }

    /// Hands out what the decisions queued, in order, and closes the sockets
    /// whose queues were full (which may queue more).
    fn deliver(&self, st: &mut State) {
        while !st.out.is_empty() {
            let out = std::mem::take(&mut st.out);
            let slow = self
                .wires
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .deliver(out, self);
            let now = self.clock.now();
            let mut closed = false;
            for (conn, generation) in slow {
                if !st.is_current(conn, generation) {
                    continue;
                }
                self.metrics.slow_consumers.inc();
                tracing::info!(%conn, "outbound queue full; closing slow consumer");
                self.close_socket(
                    st,
                    now,
                    conn,
                    (CloseCode::SlowConsumer, "slow consumer"),
                    true,
                );
                closed = true;
            }
            if closed {
                self.settle(st, now);
            }
        }
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
        for ev in &events {
            if let Diff::Viewing { .. } = ev.diff {
                self.publish_view(st, ev.clone());
                continue;
            }
            if self.data.is_some()
                && matches!(
                    ev.diff,
                    Diff::Status { .. } | Diff::UserDisconnected { .. } | Diff::Read { .. }
                )
            {
                st.durable.insert(ev.diff.user().clone());
            }
            if st.cluster.is_some() {
                // In a cluster, observers hear the cluster view, which this
                // node recomputes from its record: a node's own
                // `user_disconnected` is no news while the user is online
                // elsewhere.
                self.local_to_cluster(st, ev);
            } else {
                self.record(ev);
                let watched = st.watchers.contains_key(ev.diff.user());
                st.batch.route(ev, watched);
                st.out.host(ev.clone());
            }
        }
        if st.cluster.is_some() {
            self.cluster_refresh(st, now);
        }
        if !st.batch.is_empty() || !st.snapshots.is_empty() {
            if self.config.batch_window.is_zero() {
                self.flush(st);
            } else if st.batch_since.is_none() {
                st.batch_since = Some(now);
            }
        }
        if let Some(next) = st.next_deadline(self.config.batch_window)
            && st.planned_wake.is_none_or(|w| next < w)
        {
            st.planned_wake = Some(next);
            self.wake.notify_one();
        }
        self.metrics.connections.set(st.sockets.len() as i64);
    }

    fn record(&self, ev: &Event) {
        self.metrics
            .events
            .get_or_create(&[("kind", ev.name())])
            .inc();
        if let Diff::UserDisconnected {
            last_seen: Some(last_seen),
            ..
        } = ev.diff
            && ev.global
        {
            self.metrics
                .time_to_offline
                .observe(ev.at.since(last_seen).as_secs_f64());
        }
    }

    /// Signals a socket's task to close with `close`. With `dropped`, the
    /// machine connection enters its offline grace (the client may resume).
    fn close_socket(&self, st: &mut State, now: Millis, conn: ConnId, close: Close, dropped: bool) {
        if let Some(c) = st.cluster.as_mut() {
            c.forget_conn(conn);
        }
        if st.remove_socket(conn, Some(close)).is_some() && dropped {
            st.machine.dropped(now, conn);
        }
    }

    /// A `hello` was accepted: start or resume the machine connection and
    /// register the socket. The `welcome` is the first frame in its queue.
    pub fn connect(
        &self,
        who: &Arc<Identity>,
        resume: Option<&ResumeToken>,
        activity: Activity,
        device: presence_core::DeviceKind,
    ) -> Result<Registered, ErrorCode> {
        let user = &who.user;
        let token = self.new_token().ok_or(ErrorCode::Internal)?;
        let fresh = ConnId(self.next_conn.fetch_add(1, Ordering::Relaxed));
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        let (tx, outbound) = mpsc::channel(self.config.outbound_queue);
        let (close_tx, close) = watch::channel(None);
        self.wires
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .register(generation, Wire::new(tx, close_tx));
        let registered = self.apply(|st, now| {
            // Checked under the lock that close_all takes, so no socket
            // registers after the shutdown closed the others.
            if self.is_shutting_down() {
                return Err(ErrorCode::Internal);
            }
            if st.cluster.is_some() {
                st.touched.insert(user.clone());
            }
            // Before the connect, so a user coming online carries it.
            st.machine.set_info(now, user, who.info.clone());
            let outcome = st
                .machine
                .connect(now, user.clone(), fresh, token, resume, activity)
                .map_err(MachineError::code)?;
            if outcome.resumed {
                self.metrics.resumes.inc();
            }
            // The connection is known to the machine now; a resume may say
            // it moved to another device kind (a desktop site on a phone).
            let _ = st.machine.set_device(outcome.conn, device);
            if outcome.superseded {
                self.close_socket(
                    st,
                    now,
                    outcome.conn,
                    (CloseCode::Superseded, "resumed on another socket"),
                    false,
                );
            }
            // Settings set on another node, as far as this one follows the
            // user: told right after the welcome (else `self_privacy`
            // follows once the records come).
            if let Some((p, at)) = st
                .cluster
                .as_ref()
                .and_then(|c| c.view(user))
                .map(|v| (v.privacy, v.privacy_at))
            {
                st.machine.adopt_privacy(now, user, p, at);
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
                exp: who.expires,
            };
            st.sockets.insert(
                outcome.conn,
                Socket {
                    generation,
                    user: user.clone(),
                    who: who.clone(),
                    expires: None,
                },
            );
            self.set_expiry(st, outcome.conn, who.expires);
            st.send(outcome.conn, encoded(&welcome));
            // Settings that are not both open follow at once, before anything else.
            let p = st.machine.privacy(user);
            if !p.is_open() {
                let privacy = ServerMessage::SelfPrivacy {
                    last_seen: p.last_seen,
                    receipts: p.receipts,
                };
                st.send(outcome.conn, encoded(&privacy));
            }
            Ok(Registered {
                conn: outcome.conn,
                generation,
                outbound,
                close,
            })
        });
        if registered.is_err() {
            self.wires
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(generation);
        }
        registered
    }

    /// Takes a socket's fresh token: its expiry and its claims; `false` if
    /// the socket is no longer current.
    pub fn reauthorize(&self, conn: ConnId, generation: u64, who: &Arc<Identity>) -> bool {
        self.apply(|st, _| {
            let current = st.is_current(conn, generation);
            if current {
                self.set_expiry(st, conn, who.expires);
                if let Some(s) = st.sockets.get_mut(&conn) {
                    s.who = who.clone();
                }
            }
            current
        })
    }

    /// Called under `apply`, whose `settle` wakes the driver for it.
    fn set_expiry(&self, st: &mut State, conn: ConnId, expires: Option<Millis>) {
        let Some(socket) = st.sockets.get_mut(&conn) else {
            return;
        };
        if let Some(old) = std::mem::replace(&mut socket.expires, expires) {
            st.expiries.remove(&(old, conn));
        }
        if let Some(at) = expires {
            st.expiries.insert((at, conn));
        }
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
            if st.cluster.is_some()
                && let Some(user) = st.machine.user_of(conn)
            {
                // Leaving a room while invisible emits nothing, yet changes
                // this node's record.
                st.touched.insert(user.clone());
            }
            f(&mut st.machine, now).map_err(MachineError::code)
        })
    }

    /// A frame arrived on a socket: it is alive. Unlike [`Hub::act`] this
    /// marks nothing for the cluster (a heartbeat changes no record), so the
    /// frame every socket sends every 25 s costs one lock, not a recomputed
    /// record; with `pong`, the reply goes in the same lock.
    pub fn heartbeat(&self, conn: ConnId, generation: u64, pong: bool) {
        self.apply(|st, now| {
            if !st.is_current(conn, generation) {
                return;
            }
            let _ = st.machine.heartbeat(now, conn);
            if pong {
                st.send(conn, encoded(&ServerMessage::Pong));
            }
        });
    }

    /// Queues a reply (pong, error, …) for a socket.
    pub fn reply(&self, conn: ConnId, generation: u64, msg: &ServerMessage) {
        self.apply(|st, _| {
            if st.is_current(conn, generation) {
                st.send(conn, encoded(msg));
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
        let mut st = self.lock();
        if st.is_current(conn, generation) {
            st.out.offer(generation, encoded(msg));
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
            if let Some(c) = st.cluster.as_mut() {
                if let Some(user) = st.machine.user_of(conn) {
                    st.touched.insert(user.clone());
                }
                // Until the room's members are read, its diffs wait.
                if !c.joined(conn, &room) {
                    return Ok(());
                }
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
            if st.cluster.is_some() {
                st.touched.insert(user.clone());
            }
            if changed {
                let msg = encoded(&ServerMessage::SelfStatus { status, text });
                let own: Vec<ConnId> = st.machine.connections_of(&user).to_vec();
                for c in own {
                    st.send(c, msg.clone());
                }
            }
            Ok(())
        })
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
                st.remove_socket(conn, None);
                if let Some(c) = st.cluster.as_mut() {
                    c.forget_conn(conn);
                }
                st.machine.dropped(now, conn);
            }
        });
    }

    /// The host app stored a message: the sender's typing stops now.
    pub fn message_sent(&self, user: &UserId, room: &RoomId) {
        self.apply(|st, now| st.machine.message_sent(now, user, room));
    }

    /// When the driver should wake next, at the latest in one second.
    pub fn plan(&self) -> Duration {
        let mut st = self.lock();
        let now = self.clock.now();
        let mut wake = now.after(Duration::from_secs(1));
        if let Some(next) = st.next_deadline(self.config.batch_window) {
            wake = wake.min(next);
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
            let State { machine, large, .. } = &mut *st;
            large.retain(|room| machine.room_size(room) > 0);
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
        // Expired tokens: the connection enters its offline grace, so a
        // client back with a fresh token within it resumes unseen.
        while let Some(due) = st.expiries.first().copied().filter(|(at, _)| *at <= now) {
            st.expiries.remove(&due);
            let conn = due.1;
            self.metrics.token("expired");
            self.close_socket(
                &mut st,
                now,
                conn,
                (CloseCode::Unauthorized, "the token expired"),
                true,
            );
        }
        self.settle(&mut st, now);
        if st
            .batch_since
            .is_some_and(|since| since.after(self.config.batch_window) <= now)
            || st.large.next_due().is_some_and(|at| at <= now)
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
        self.cluster_cut_off();
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

/// One message, encoded: what an outbound queue holds, a text frame's
/// payload shared by every recipient (not a `Message`, whose `Frame` variant
/// makes each of a queue's slots half again as big).
pub(crate) fn encoded(msg: &ServerMessage) -> Utf8Bytes {
    Utf8Bytes::from(encode(msg))
}

/// The state's lock: what the decisions queued while it was held is handed
/// out when it is let go, so every step's frames leave in the order decided,
/// before the next step's.
struct Locked<'a> {
    hub: &'a Hub,
    st: MutexGuard<'a, State>,
}

impl Deref for Locked<'_> {
    type Target = State;
    fn deref(&self) -> &State {
        &self.st
    }
}

impl DerefMut for Locked<'_> {
    fn deref_mut(&mut self) -> &mut State {
        &mut self.st
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        if !self.st.out.is_empty() && !std::thread::panicking() {
            self.hub.deliver(&mut self.st);
        }
    }
}
