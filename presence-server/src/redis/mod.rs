//! Several nodes over one Redis: the store of cluster-level presence and the
//! bus that carries its changes to every node.
//!
//! Each node's machine sees only its own connections, so what it emits is
//! node-level: its `user_disconnected` says nothing while the user still has
//! a tab on another node. So nodes never tell observers their own events.
//! Once per batch window a node sends Redis one script call carrying its
//! record of every user that changed (state, rooms, typing, new read markers
//! and status settings). The script (`scripts/common.lua`) merges the
//! records of all nodes into the cluster-level view, compares it with what
//! the cluster last announced, and publishes only the real transitions, in
//! one numbered message on `{prefix}:events`. Every node subscribes to that
//! channel and delivers the diffs to its own room members and watchers.
//! Because the comparison and the publication happen in one atomic script,
//! each cluster transition is announced exactly once, whichever node causes
//! it, and a record sent twice announces nothing.
//!
//! Snapshots (on `join`), `watching` frames and the HTTP API read the
//! cluster-level state. Join and watch requests ride in the same script call
//! as the records, and their answers are published on the node's own channel
//! right after the diffs, on the same subscription: Redis delivers them in
//! publication order, so a snapshot is exact at its place in the stream.
//!
//! Node death: see [`lease`]. Redis outage: the node switches to local
//! delivery from its own machine, reports `redis: down`, keeps trying, and
//! once both links are back re-sends all its records and resyncs its sockets
//! with fresh snapshots.

mod lease;
mod wire;

use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use presence_core::machine::ConnRecord;
use presence_core::{PresenceView, RoomId, UserId};
use redis::aio::ConnectionManager;
use redis::{Client, Script};
use tokio::sync::Notify;

use crate::cluster::Outgoing;
use crate::hub::Hub;

/// Every Redis call gives up after this long: a hung Redis must look like a
/// dead one, not stall the node.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);
/// Reconnect attempts back off from this...
const MIN_BACKOFF: Duration = Duration::from_millis(50);
/// ...to this.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// How to reach Redis and who this node is.
#[derive(Clone, Debug)]
pub struct RedisConfig {
    /// `redis://host:port/db`.
    pub url: String,
    /// Prefix of every key and channel; nodes of one cluster share it.
    /// Default `presence`.
    pub prefix: String,
    /// This node's identity, unique in the cluster and stable across
    /// restarts if possible (a restart then clears its old records at once
    /// instead of after the lease). Default: random.
    pub node_id: String,
    /// How long a node's records survive it: when a node stops refreshing its
    /// lease, the others remove its users after this long (plus at most a
    /// third of it). Also the time a client has to reconnect to another node
    /// without observers seeing it flap. Default 5 s; at least 300 ms.
    pub lease_ttl: Duration,
}

impl RedisConfig {
    /// The defaults for `url`, with a random node id.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            prefix: "presence".into(),
            node_id: random_hex(6),
            lease_ttl: Duration::from_secs(5),
        }
    }
}

/// Why a Redis store could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum RedisSetupError {
    /// The URL does not parse.
    #[error("bad Redis URL: {0}")]
    Url(#[source] redis::RedisError),
    /// The prefix or node id is empty or holds whitespace.
    #[error("{0} must be non-empty and hold no whitespace")]
    BadName(&'static str),
    /// The lease is too short to be refreshed reliably.
    #[error("lease_ttl must be at least 300 ms, got {0:?}")]
    LeaseTooShort(Duration),
}

fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    if getrandom::fill(&mut b).is_err() {
        // Unique enough for an id when the OS has no randomness to give.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        return format!("{t:x}");
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

struct Scripts {
    update: Script,
    reap: Script,
    query: Script,
}

fn scripts() -> Scripts {
    Scripts {
        update: Script::new(concat!(
            include_str!("scripts/common.lua"),
            include_str!("scripts/update.lua")
        )),
        reap: Script::new(concat!(
            include_str!("scripts/common.lua"),
            include_str!("scripts/reap.lua")
        )),
        query: Script::new(concat!(
            include_str!("scripts/common.lua"),
            include_str!("scripts/query.lua")
        )),
    }
}

/// A connection to the Redis store, shared by the node's tasks. Cheap to
/// clone. Connects lazily and reconnects by itself, so a node starts and
/// serves its local users even while Redis is down.
#[derive(Clone)]
pub struct RedisStore {
    inner: Arc<Inner>,
}

struct Inner {
    config: RedisConfig,
    client: Client,
    conn: ConnectionManager,
    /// Identifies this incarnation of the node in its lease.
    epoch: String,
    scripts: Scripts,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.inner.config.prefix)
            .field("node_id", &self.inner.config.node_id)
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// Validates the configuration; no connection is made yet (call inside
    /// a Tokio runtime).
    pub fn new(config: RedisConfig) -> Result<Self, RedisSetupError> {
        for (name, v) in [("prefix", &config.prefix), ("node_id", &config.node_id)] {
            if v.is_empty() || v.chars().any(char::is_whitespace) {
                return Err(RedisSetupError::BadName(name));
            }
        }
        if config.lease_ttl < Duration::from_millis(300) {
            return Err(RedisSetupError::LeaseTooShort(config.lease_ttl));
        }
        let client = Client::open(config.url.as_str()).map_err(RedisSetupError::Url)?;
        let manager = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(Some(CALL_TIMEOUT))
            .set_response_timeout(Some(CALL_TIMEOUT))
            .set_number_of_retries(1)
            .set_max_delay(MAX_BACKOFF);
        let conn = ConnectionManager::new_lazy_with_config(client.clone(), manager)
            .map_err(RedisSetupError::Url)?;
        Ok(Self {
            inner: Arc::new(Inner {
                config,
                client,
                conn,
                epoch: random_hex(8),
                scripts: scripts(),
            }),
        })
    }

    /// The configuration in force.
    pub fn config(&self) -> &RedisConfig {
        &self.inner.config
    }

    fn key(&self, rest: &str) -> String {
        format!("{}:{rest}", self.inner.config.prefix)
    }

    fn conn(&self) -> ConnectionManager {
        self.inner.conn.clone()
    }

    /// Sends records and requests; returns whether the lease had to be
    /// taken again (the caller then re-sends everything).
    async fn update(&self, out: &Outgoing, now: u64) -> Result<bool, StoreError> {
        let payload = serde_json::to_string(out).map_err(|_| StoreError::Encode)?;
        let c = &self.inner.config;
        let ttl = u64::try_from(c.lease_ttl.as_millis()).unwrap_or(u64::MAX);
        let mut conn = self.conn();
        let mut inv = self.inner.scripts.update.prepare_invoke();
        inv.arg(&c.prefix)
            .arg(&c.node_id)
            .arg(&self.inner.epoch)
            .arg(ttl)
            .arg(now)
            .arg(payload);
        let call = inv.invoke_async::<i64>(&mut conn);
        let r = tokio::time::timeout(CALL_TIMEOUT, call)
            .await
            .map_err(|_| StoreError::Timeout)??;
        Ok(r == 1)
    }

    /// Removes the records of nodes whose lease expired (or, with `forced`,
    /// of that node whatever its lease); returns (users removed, nodes left
    /// with users).
    async fn reap(&self, now: u64, budget: usize, forced: &str) -> Result<(u64, u64), StoreError> {
        let c = &self.inner.config;
        let mut conn = self.conn();
        let mut inv = self.inner.scripts.reap.prepare_invoke();
        inv.arg(&c.prefix)
            .arg(&c.node_id)
            .arg(now)
            .arg(budget)
            .arg(forced);
        let call = inv.invoke_async::<(u64, u64)>(&mut conn);
        Ok(tokio::time::timeout(CALL_TIMEOUT, call)
            .await
            .map_err(|_| StoreError::Timeout)??)
    }

    async fn query<T: redis::FromRedisValue>(
        &self,
        op: &str,
        args: &[&str],
    ) -> Result<T, StoreError> {
        let mut conn = self.conn();
        let mut inv = self.inner.scripts.query.prepare_invoke();
        inv.arg(&self.inner.config.prefix).arg(op);
        for a in args {
            inv.arg(*a);
        }
        let call = inv.invoke_async::<T>(&mut conn);
        Ok(tokio::time::timeout(CALL_TIMEOUT, call)
            .await
            .map_err(|_| StoreError::Timeout)??)
    }

    /// Leaves this node's connections for its next incarnation (a graceful
    /// restart), for `ttl`: long enough to restart within the grace.
    pub(crate) async fn save_resume(
        &self,
        conns: &[ConnRecord],
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let payload = serde_json::to_string(conns).map_err(|_| StoreError::Encode)?;
        let ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let key = self.key(&format!("resume:{}", self.inner.config.node_id));
        let mut conn = self.conn();
        let mut cmd = redis::cmd("SET");
        cmd.arg(key).arg(payload).arg("PX").arg(ms);
        let call = cmd.query_async::<()>(&mut conn);
        Ok(tokio::time::timeout(CALL_TIMEOUT, call)
            .await
            .map_err(|_| StoreError::Timeout)??)
    }

    /// Takes what the previous incarnation of this node left (see
    /// [`save_resume`](Self::save_resume)); empty if nothing.
    pub(crate) async fn take_resume(&self) -> Result<Vec<ConnRecord>, StoreError> {
        let key = self.key(&format!("resume:{}", self.inner.config.node_id));
        let mut conn = self.conn();
        let mut cmd = redis::cmd("GETDEL");
        cmd.arg(key);
        let call = cmd.query_async::<Option<String>>(&mut conn);
        let saved = tokio::time::timeout(CALL_TIMEOUT, call)
            .await
            .map_err(|_| StoreError::Timeout)??;
        match saved {
            None => Ok(Vec::new()),
            Some(json) => serde_json::from_str(&json).map_err(|_| StoreError::Decode),
        }
    }

    /// Cluster-level presence of `users`, in order.
    pub(crate) async fn views(&self, users: &[UserId]) -> Result<Vec<PresenceView>, StoreError> {
        let args: Vec<&str> = users.iter().map(UserId::as_str).collect();
        let json: String = self.query("views", &args).await?;
        wire::views(&json).ok_or(StoreError::Decode)
    }

    /// A room's visible members, cluster-wide.
    pub(crate) async fn members(&self, room: &RoomId) -> Result<Vec<PresenceView>, StoreError> {
        let json: String = self.query("members", &[room.as_str()]).await?;
        wire::views(&json).ok_or(StoreError::Decode)
    }

    /// Whether two users are in a room together anywhere in the cluster.
    pub(crate) async fn share_a_room(
        &self,
        viewer: &UserId,
        target: &UserId,
    ) -> Result<bool, StoreError> {
        let n: i64 = self
            .query("shares", &[viewer.as_str(), target.as_str()])
            .await?;
        Ok(n == 1)
    }
}

/// A failed store call. Never fatal: the node falls back to local delivery.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StoreError {
    #[error("redis: {0}")]
    Redis(#[from] redis::RedisError),
    #[error("redis call timed out")]
    Timeout,
    #[error("could not encode the update")]
    Encode,
    #[error("unexpected reply from the store")]
    Decode,
}

fn now_ms(hub: &Hub) -> u64 {
    hub.clock.now().0
}

/// Starts the node's store tasks: the flusher, the subscriber and the lease
/// keeper. Each holds the hub weakly and ends with it or at shutdown.
pub(crate) fn spawn(hub: &Arc<Hub>, store: RedisStore) {
    let wake = hub.cluster_wake.clone();
    let handles = vec![
        tokio::spawn(flush_loop(Arc::downgrade(hub), store.clone(), wake)),
        tokio::spawn(subscribe_loop(Arc::downgrade(hub), store.clone())),
        tokio::spawn(lease::run(Arc::downgrade(hub), store)),
    ];
    let mut tasks = hub.store_tasks.lock().unwrap_or_else(|p| p.into_inner());
    tasks.extend(handles);
}

/// Sleeps `d`, or returns `false` at once if the hub shuts down or is gone.
async fn pause(hub: &Weak<Hub>, d: Duration) -> bool {
    let Some(mut shutdown) = hub.upgrade().map(|h| h.shutdown_signal()) else {
        return false;
    };
    tokio::select! {
        _ = tokio::time::sleep(d) => hub.upgrade().is_some_and(|h| !h.is_shutting_down()),
        _ = shutdown.wait_for(|s| *s) => false,
    }
}

/// Once per batch window: take what the hub has pending and send it in one
/// script call. Failures keep it pending and mark the link down.
async fn flush_loop(hub: Weak<Hub>, store: RedisStore, wake: Arc<Notify>) {
    let mut backoff = MIN_BACKOFF;
    let mut last_reconcile = tokio::time::Instant::now();
    loop {
        let Some(window) = hub.upgrade().map(|h| h.config.batch_window) else {
            return;
        };
        let woken = tokio::time::timeout(Duration::from_secs(1), wake.notified())
            .await
            .is_ok();
        // Coalesce: everything that happens within the window rides along.
        if woken && !pause(&hub, window).await {
            return;
        }
        let Some(h) = hub.upgrade() else {
            return;
        };
        if h.is_shutting_down() {
            return;
        }
        if last_reconcile.elapsed() >= Duration::from_secs(1) {
            last_reconcile = tokio::time::Instant::now();
            h.cluster_reconcile();
        }
        let Some(out) = h.cluster_take() else {
            continue;
        };
        let now = now_ms(&h);
        drop(h);
        let result = store.update(&out, now).await;
        let Some(h) = hub.upgrade() else {
            return;
        };
        match result {
            Ok(reacquired) => {
                backoff = MIN_BACKOFF;
                h.cluster_link(false, true);
                if reacquired {
                    tracing::warn!("lease had expired: re-publishing this node's state");
                    h.cluster_republish();
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, "store update failed");
                h.cluster_failed(out);
                h.cluster_link(false, false);
                drop(h);
                if !pause(&hub, backoff).await {
                    return;
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
                wake.notify_one();
            }
        }
    }
}

/// Holds the subscription to the cluster's events and this node's replies,
/// reconnecting with backoff, and hands what arrives to the hub in order.
async fn subscribe_loop(hub: Weak<Hub>, store: RedisStore) {
    let events = store.key("events");
    let mine = store.key(&format!("node:{}", store.config().node_id));
    let mut backoff = MIN_BACKOFF;
    loop {
        let Some(mut shutdown) = hub.upgrade().map(|h| h.shutdown_signal()) else {
            return;
        };
        let connect = async {
            let mut ps = store.inner.client.get_async_pubsub().await?;
            ps.subscribe(&events).await?;
            ps.subscribe(&mine).await?;
            Ok::<_, redis::RedisError>(ps)
        };
        match tokio::time::timeout(CALL_TIMEOUT, connect).await {
            Ok(Ok(ps)) => {
                backoff = MIN_BACKOFF;
                if let Some(h) = hub.upgrade() {
                    h.cluster_link(true, true);
                }
                let mut stream = ps.into_on_message();
                loop {
                    let msg = tokio::select! {
                        m = stream.next() => m,
                        _ = shutdown.wait_for(|s| *s) => return,
                    };
                    let Some(msg) = msg else { break };
                    let Some(h) = hub.upgrade() else { return };
                    let payload = msg.get_payload_bytes();
                    if msg.get_channel_name() == events {
                        match wire::events(payload) {
                            Some((evs, selfs)) => h.deliver_cluster(evs, selfs),
                            None => tracing::warn!("undecodable cluster message skipped"),
                        }
                    } else {
                        match wire::replies(payload) {
                            Some((snaps, watching, selfs)) => {
                                h.deliver_replies(snaps, watching, selfs)
                            }
                            None => tracing::warn!("undecodable store reply skipped"),
                        }
                    }
                }
                tracing::warn!("subscription to the store lost");
            }
            Ok(Err(e)) => tracing::debug!(error = %e, "store subscription failed"),
            Err(_) => tracing::debug!("store subscription timed out"),
        }
        if let Some(h) = hub.upgrade() {
            h.cluster_link(true, false);
        }
        if !pause(&hub, backoff).await {
            return;
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}
