//! The node's shell: its decisions ([`node::Node`]) behind one lock, the
//! sockets' senders ([`wires`]), the host's event channel, and the handles
//! the cluster tasks and HTTP handlers call. Each call takes the lock, gives
//! the node one input with the clock's `now`, settles, and lets go, which
//! hands out what the step decided (see [`Locked`]).
//!
//! The lock is a `std::sync::Mutex`, not an async one, because no critical
//! section ever awaits: the node is pure computation, sending is `try_send`
//! into bounded queues, and closing a socket is a signal to its task. A std
//! mutex is cheaper than tokio's when it is held this briefly (the tokio
//! docs say so too). One lock also gives every socket the same order of
//! frames: a snapshot is queued under the lock that also orders the diffs
//! after it. If this lock ever becomes the bottleneck, shard by room.

use std::ops::{Deref, DerefMut};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use presence_core::machine::MachineError;
use presence_core::protocol::{CloseCode, ErrorCode, ServerMessage, encode};
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
pub(crate) mod node;
mod privacy;
mod watching;
mod wires;

use crate::audience::AudiencePolicy;
use crate::auth::{Authenticator, Identity};
use crate::clock::Clock;
use crate::config::ServerConfig;
use crate::data_dir::DataDir;
use crate::feed::Feed;
use crate::metrics::Metrics;
use node::{NewSocket, Node};
use replica::Replica;
use wires::{Wire, Wires};

/// How a socket is to be closed: code and reason.
pub(crate) type Close = (CloseCode, &'static str);

/// What a session gets back from a successful `hello`.
pub(crate) struct Registered {
    pub conn: ConnId,
    pub generation: u64,
    pub outbound: mpsc::Receiver<Utf8Bytes>,
    pub close: watch::Receiver<Option<Close>>,
}

/// The node's shared state and its collaborators.
pub(crate) struct Hub {
    pub config: ServerConfig,
    pub clock: Arc<dyn Clock>,
    pub auth: Arc<dyn Authenticator>,
    pub audience: Arc<dyn AudiencePolicy>,
    pub metrics: Arc<Metrics>,
    events: broadcast::Sender<Event>,
    state: Mutex<Node>,
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
    pub store_tasks: Mutex<Vec<tokio::task::AbortHandle>>,
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
        let metrics = Arc::new(Metrics::new(clustered));
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
            state: Mutex::new(Node::new(
                config.clone(),
                metrics.clone(),
                audience.clone(),
                data.is_some(),
                cluster
                    .as_ref()
                    .map(|l| l.config.node_id.clone())
                    .zip(replica),
            )),
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
    /// the lock, decisions queue it in [`Node::out`] instead).
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

    /// A fresh resume token (see [`random_token`]).
    fn new_token(&self) -> Option<ResumeToken> {
        random_token(self.cluster.as_ref().map(|l| l.config.node_id.as_str()))
    }

    fn lock(&self) -> Locked<'_> {
        // A panic while holding the lock would be a bug in this crate; the
        // state is still structurally sound, so keep serving.
        let st = self.state.lock().unwrap_or_else(|p| p.into_inner());
        Locked {
            hub: self,
            st,
            since: std::time::Instant::now(),
        }
    }

    /// Hands out what the decisions queued, in order, and closes the sockets
    /// whose queues were full (which may queue more).
    fn deliver(&self, st: &mut Node) {
        while !st.out.is_empty() {
            let slow = self
                .wires
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .deliver(&mut st.out, self);
            if !slow.is_empty() {
                let now = self.clock.now();
                for (conn, generation) in slow {
                    st.slow_consumer(now, conn, generation);
                }
                st.settle(now);
            }
        }
    }

    /// One step of the node: `f` gives it an input at the clock's `now`,
    /// then it settles, and letting go of the lock hands out what it decided
    /// (closing the sockets whose queues were full).
    pub(crate) fn step<R>(&self, f: impl FnOnce(&mut Node, Millis) -> R) -> R {
        let mut st = self.lock();
        let now = self.clock.now();
        let r = f(&mut st, now);
        st.settle(now);
        r
    }

    /// Read-only access for queries.
    pub fn read<R>(&self, f: impl FnOnce(&Machine) -> R) -> R {
        let st = self.lock();
        f(&st.machine)
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
        let token = self.new_token().ok_or(ErrorCode::Internal)?;
        let fresh = ConnId(self.next_conn.fetch_add(1, Ordering::Relaxed));
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        let (tx, outbound) = mpsc::channel(self.config.outbound_queue);
        let (close_tx, close) = watch::channel(None);
        self.wires
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .register(generation, Wire::new(tx, close_tx));
        let registered = self.step(|st, now| {
            // Checked under the lock that close_all takes, so no socket
            // registers after the shutdown closed the others.
            if self.is_shutting_down() {
                return Err(ErrorCode::Internal);
            }
            let socket = NewSocket {
                fresh,
                generation,
                token,
                resume,
                activity,
                device,
            };
            let conn = st.connect(now, who, socket)?;
            Ok(Registered {
                conn,
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
        self.step(|st, _| st.reauthorize(conn, generation, who))
    }

    /// Runs a machine input for a socket's connection, if the socket is still
    /// the connection's current one.
    pub fn act<R>(
        &self,
        conn: ConnId,
        generation: u64,
        f: impl FnOnce(&mut Machine, Millis) -> Result<R, MachineError>,
    ) -> Result<R, ErrorCode> {
        self.step(|st, now| st.act(now, conn, generation, f))
    }

    /// A frame arrived on a socket: it is alive. Unlike [`Hub::act`] this
    /// marks nothing for the cluster (a heartbeat changes no record), so the
    /// frame every socket sends every 25 s costs one lock, not a recomputed
    /// record; with `pong`, the reply goes in the same lock.
    pub fn heartbeat(&self, conn: ConnId, generation: u64, pong: bool) {
        self.step(|st, now| st.heartbeat(now, conn, generation, pong))
    }

    /// Queues a reply (pong, error, …) for a socket.
    pub fn reply(&self, conn: ConnId, generation: u64, msg: &ServerMessage) {
        self.step(|st, _| st.reply(conn, generation, msg))
    }

    /// Moves a read marker (see [`Node::read_marker`]).
    pub fn read_marker(
        &self,
        conn: ConnId,
        generation: u64,
        room: &RoomId,
        marker: u64,
    ) -> Result<(), ErrorCode> {
        self.step(|st, now| st.read_marker(now, conn, generation, room, marker))
    }

    /// Queues a reply only if the socket's queue has room for it: for
    /// replies that must never make a socket a slow consumer.
    pub fn try_reply(&self, conn: ConnId, generation: u64, msg: &ServerMessage) {
        self.lock().offer(conn, generation, msg);
    }

    /// Joins a room and queues its snapshot before any later diff.
    pub fn join(&self, conn: ConnId, generation: u64, room: RoomId) -> Result<(), ErrorCode> {
        self.step(|st, now| st.join(now, conn, generation, room))
    }

    /// Sets the user's status and tells all of their sockets.
    pub fn set_status(
        &self,
        conn: ConnId,
        generation: u64,
        status: Status,
        text: Option<presence_core::StatusText>,
    ) -> Result<(), ErrorCode> {
        self.step(|st, now| st.set_status(now, conn, generation, status, text))
    }

    /// Closes a socket on the session's own initiative (abuse, huge frame).
    pub fn close(&self, conn: ConnId, generation: u64, close: Close) {
        self.step(|st, now| st.close(now, conn, generation, close))
    }

    /// The socket ended (closed by the client, or failed). Unless it had
    /// already been replaced by a resume or closed by the server, its
    /// connection enters the offline grace.
    pub fn socket_gone(&self, conn: ConnId, generation: u64) {
        self.step(|st, now| st.socket_gone(now, conn, generation))
    }

    /// The host app stored a message: the sender's typing stops now.
    pub fn message_sent(&self, user: &UserId, room: &RoomId) {
        self.step(|st, now| st.machine.message_sent(now, user, room));
    }

    /// When the driver should wake next, at the latest in one second.
    pub fn plan(&self) -> Duration {
        let now = self.clock.now();
        self.lock().plan(now).since(now)
    }

    /// Runs due deadlines, closes timed-out sockets, flushes due batches and
    /// forgets the watch lists of connections that are gone for good.
    pub fn tick(&self) {
        let now = self.clock.now();
        self.lock().tick(now);
    }

    /// Closes every socket of `user` on this node with `close` (their
    /// connections enter the offline grace); returns how many.
    pub fn disconnect_user(&self, user: &UserId, close: Close) -> usize {
        self.step(|st, now| st.disconnect_user(now, user, close))
    }

    /// Closes every socket with 1001 (shutdown) after sending what is pending.
    pub fn close_all(&self, close: Close) {
        let now = self.clock.now();
        self.lock().close_all(now, close);
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
    st: MutexGuard<'a, Node>,
    /// When it was taken (wall time, for `presence_hub_lock_held_seconds`).
    since: std::time::Instant,
}

impl Deref for Locked<'_> {
    type Target = Node;
    fn deref(&self) -> &Node {
        &self.st
    }
}

impl DerefMut for Locked<'_> {
    fn deref_mut(&mut self) -> &mut Node {
        &mut self.st
    }
}

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        if !self.st.out.is_empty() && !std::thread::panicking() {
            self.hub.deliver(&mut self.st);
        }
        let held = self.since.elapsed().as_secs_f64();
        self.hub.metrics.lock_held.observe(held);
    }
}
