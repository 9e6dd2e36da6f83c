//! The connection to one Redis or a Redis Cluster: made lazily, repaired by
//! redis-rs, rebuilt from scratch when that repair does not complete, every
//! call bounded in time, and [`Incoming::Reset`] once the link answers again
//! after it was lost.
//!
//! One RESP3 connection per Redis node carries commands and the sharded
//! subscriptions; its pushes arrive in [`Link::on_push`]. A link counts as
//! lost when redis-rs reports a `Disconnection` push or a call fails for a
//! reason other than a server's error reply (I/O, refused, timed out, no
//! connection for a slot). Then a probe pings every [`PROBE_EVERY`] and, once
//! Redis answers, queues one Reset: the node subscribes again and re-reads
//! what it follows. Server-side
//! subscriptions of a dropped connection are gone, so nothing is missed
//! silently; a Reset too many only costs a resync.
//!
//! Rebuild: redis-rs repairs its own connections, but after a Cluster
//! failover under load its recovery can stall for good (seen: nodes whose
//! last log line was "beginning slot refresh", never back), and a master
//! that hangs without closing its sockets is never replaced by its promoted
//! replica. The probe cannot tell (a cluster `PING` is answered by any one
//! node). So the link counts its calls' failures: once they have kept coming
//! for [`REBUILD_AFTER`] (a streak ends after [`QUIET`] without one), it drops
//! its connection, at most once per [`REBUILD_AFTER`]; the next call makes a
//! new one from the seeds, which learns the slots afresh, and a Reset has
//! the node subscribe again through it. A stalled old connection keeps at
//! most its own sockets until redis-rs lets it go.
//!
//! Resubscription: the single-Redis connection does not resubscribe by
//! itself (the node does, on Reset). The cluster connection of redis-rs
//! always resubscribes a repaired node's shard channels; that is kept (it
//! restores delivery sooner) and the Reset still comes, and a second
//! `SSUBSCRIBE` of a channel is a no-op in Redis.
//!
//! [`Incoming::Reset`]: crate::backend::Incoming::Reset

use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, ErrorKind, Pipeline, PushInfo, PushKind, RedisError, RedisFuture, Value};
use tokio::sync::Mutex;

use super::keys::Keys;
use crate::backend::inbox::Inbox;
use crate::backend::{BackendError, CALL_TIMEOUT};

/// One connection attempt gives up after this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// A lost link is probed this often until it answers.
pub(super) const PROBE_EVERY: Duration = Duration::from_millis(200);
/// A link whose calls keep failing this long is rebuilt (and again each time
/// this long passes): a failover promotes a replica in 1–5 s, so a rebuild
/// after it finds the new master.
pub(super) const REBUILD_AFTER: Duration = Duration::from_secs(2);
/// Failures this far apart belong to one streak: more than a lease period
/// (1.7 s by default) plus a call that times out (2 s).
pub(super) const QUIET: Duration = Duration::from_secs(5);
/// A pipeline carries at most this many commands; larger batches go out as
/// several pipelines, one after the other.
pub(super) const MAX_PIPELINE: usize = 256;

/// What to connect to (clients are built up front, so bad addresses are
/// refused at setup).
pub(super) enum Target {
    Single(redis::Client),
    Cluster(Box<ClusterClient>),
}

/// A connected handle (cheap to clone: both are multiplexed).
#[derive(Clone)]
pub(super) enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Self::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

/// Why a call failed, before it becomes a [`BackendError`].
pub(super) enum Failure {
    Redis(RedisError),
    Decode(BackendError),
}

impl From<RedisError> for Failure {
    fn from(e: RedisError) -> Self {
        Self::Redis(e)
    }
}

impl From<BackendError> for Failure {
    fn from(e: BackendError) -> Self {
        Self::Decode(e)
    }
}

/// Where pushes find the link once it exists (the cluster client takes its
/// push sender before the link is built).
type Me = Arc<OnceLock<Weak<Link>>>;

/// The link: target, lazily made connection, and where pushes go.
pub(super) struct Link {
    target: Target,
    /// Made on first use, dropped to be made again (see the module docs).
    conn: Mutex<Option<Conn>>,
    pub(super) keys: Keys,
    inbox: Inbox,
    /// A probe task is running.
    probing: AtomicBool,
    /// The current streak of failed calls (see the module docs).
    streak: std::sync::Mutex<Streak>,
    /// Pushes on channels that are not ours (logged on the first and every
    /// 1000th).
    ignored: AtomicU64,
    me: Me,
}

impl Link {
    /// Builds the link, connecting nothing yet. `make_target` gets the push
    /// handler a cluster client needs at build time.
    pub(super) fn new(
        keys: Keys,
        inbox: Inbox,
        make_target: impl FnOnce(PushHandler) -> Result<Target, RedisError>,
    ) -> Result<Arc<Self>, RedisError> {
        let me = Me::default();
        let target = make_target(PushHandler(me.clone()))?;
        let link = Arc::new(Link {
            target,
            conn: Mutex::new(None),
            keys,
            inbox,
            probing: AtomicBool::new(false),
            streak: std::sync::Mutex::new(Streak::default()),
            ignored: AtomicU64::new(0),
            me: me.clone(),
        });
        // Only ever set here.
        let _ = me.set(Arc::downgrade(&link));
        Ok(link)
    }

    /// The connection, made on first use and after a rebuild (callers wait
    /// for one attempt, bounded by their own timeout).
    async fn conn(&self) -> Result<Conn, RedisError> {
        let mut slot = self.conn.lock().await;
        if let Some(c) = slot.as_ref() {
            return Ok(c.clone());
        }
        let made = match &self.target {
            Target::Single(client) => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_response_timeout(Some(CALL_TIMEOUT))
                    .set_number_of_retries(1)
                    .set_min_delay(Duration::from_millis(50))
                    .set_max_delay(Duration::from_secs(1))
                    .set_push_sender(PushHandler(self.me.clone()).into_sender());
                ConnectionManager::new_lazy_with_config(client.clone(), config).map(Conn::Single)
            }
            // Bounded, so no caller waits on the lock for longer.
            Target::Cluster(client) => {
                match tokio::time::timeout(CALL_TIMEOUT, client.get_async_connection()).await {
                    Ok(made) => made.map(Conn::Cluster),
                    Err(_) => Err(RedisError::from((
                        ErrorKind::Io,
                        "connecting to the Redis Cluster timed out",
                    ))),
                }
            }
        }?;
        *slot = Some(made.clone());
        Ok(made)
    }

    /// Drops the connection: the next call makes a new one.
    async fn rebuild(&self) {
        self.conn.lock().await.take();
    }

    /// Runs one call on the connection, bounded by [`CALL_TIMEOUT`]; a
    /// failure of the link (not a server's error reply) starts the probe.
    pub(super) async fn run<T, F, Fut>(&self, f: F) -> Result<T, BackendError>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        let call = async {
            let conn = self.conn().await?;
            f(conn).await
        };
        match tokio::time::timeout(CALL_TIMEOUT, call).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(Failure::Decode(e))) => {
                tracing::warn!("backend: {e}");
                Err(e)
            }
            Ok(Err(Failure::Redis(e))) => {
                if !matches!(e.kind(), ErrorKind::Server(_)) {
                    self.lost();
                    self.failed();
                }
                Err(BackendError::Engine(e.to_string()))
            }
            Err(_) => {
                self.lost();
                self.failed();
                Err(BackendError::Timeout)
            }
        }
    }

    /// The link failed: probe it until it answers, then queue a Reset.
    fn lost(&self) {
        if self.probing.swap(true, Ordering::SeqCst) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            self.probing.store(false, Ordering::SeqCst);
            return;
        };
        let this = self.me.get().cloned().unwrap_or_default();
        runtime.spawn(async move {
            loop {
                tokio::time::sleep(PROBE_EVERY).await;
                let Some(link) = this.upgrade() else {
                    return;
                };
                if link.ping().await {
                    link.probing.store(false, Ordering::SeqCst);
                    tracing::info!("backend: link to Redis is back; resetting subscriptions");
                    link.inbox.reset();
                    return;
                }
            }
        });
    }

    /// A call failed with the link: rebuild it if failures keep coming.
    fn failed(&self) {
        let now = tokio::time::Instant::now();
        let rebuild = self
            .streak
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .failed(now);
        if !rebuild {
            return;
        }
        let (Ok(runtime), Some(this)) = (tokio::runtime::Handle::try_current(), self.me.get())
        else {
            return;
        };
        let this = this.clone();
        runtime.spawn(async move {
            let Some(link) = this.upgrade() else {
                return;
            };
            tracing::warn!(
                after = ?REBUILD_AFTER,
                "backend: calls to Redis keep failing; making a new connection"
            );
            link.rebuild().await;
            // The subscriptions went with the old connection: the node makes
            // them again now on the shards that answer (and once more when
            // the probe finds all of them answering).
            link.inbox.reset();
        });
    }

    /// Whether Redis answers a `PING` (on a cluster, one node's answer does:
    /// whether every shard is back shows in the calls, see `failed`).
    async fn ping(&self) -> bool {
        let ping = async {
            let mut conn = self.conn().await?;
            redis::cmd("PING").query_async::<Value>(&mut conn).await
        };
        matches!(tokio::time::timeout(CALL_TIMEOUT, ping).await, Ok(Ok(_)))
    }

    fn on_push(&self, info: PushInfo) {
        match info.kind {
            PushKind::SMessage => {
                let mut data = info.data.into_iter();
                let (Some(channel), Some(payload)) = (data.next(), data.next()) else {
                    return self.ignore("a shard message without channel or payload");
                };
                let topic = super::reply::bytes(&channel).and_then(|c| self.keys.topic(c));
                match (topic, super::reply::bytes(&payload)) {
                    (Some(topic), Some(payload)) => self.inbox.message(topic, payload.to_vec()),
                    _ => self.ignore("a shard message on a channel that is not a topic"),
                }
            }
            PushKind::Disconnection => {
                tracing::warn!("backend: a Redis connection was lost");
                self.lost();
            }
            _ => {}
        }
    }

    fn ignore(&self, what: &str) {
        let n = self.ignored.fetch_add(1, Ordering::Relaxed);
        if n.is_multiple_of(1000) {
            tracing::warn!(ignored = n + 1, "backend: ignored {what}");
        }
    }
}

/// Calls failing one after the other: since when, the last one, and the
/// last rebuild.
#[derive(Default)]
struct Streak {
    since: Option<tokio::time::Instant>,
    last: Option<tokio::time::Instant>,
    rebuilt: Option<tokio::time::Instant>,
}

impl Streak {
    /// A call failed now; returns whether to rebuild the connection.
    fn failed(&mut self, now: tokio::time::Instant) -> bool {
        if self.last.is_none_or(|l| now.duration_since(l) > QUIET) {
            self.since = Some(now);
        }
        self.last = Some(now);
        let long = self
            .since
            .is_some_and(|s| now.duration_since(s) >= REBUILD_AFTER);
        let due = self
            .rebuilt
            .is_none_or(|r| now.duration_since(r) >= REBUILD_AFTER);
        if long && due {
            self.rebuilt = Some(now);
        }
        long && due
    }
}

/// Hands pushes to the link without keeping it alive.
pub(super) struct PushHandler(Me);

impl PushHandler {
    /// As the callback redis-rs takes. It never blocks: the inbox drops
    /// (and owes a Reset) when the node's queue is full.
    pub(super) fn into_sender(
        self,
    ) -> impl Fn(PushInfo) -> Result<(), std::convert::Infallible> + Send + Sync + 'static {
        move |info| {
            if let Some(link) = self.0.get().and_then(Weak::upgrade) {
                link.on_push(info);
            }
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_that_keep_coming_rebuild_at_most_every_two_seconds() {
        let t0 = tokio::time::Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut s = Streak::default();
        // One failure every 400 ms: a rebuild once they have lasted 2 s...
        let rebuilt: Vec<u64> = (0..=15)
            .map(|i| i * 400)
            .filter(|&ms| s.failed(at(ms)))
            .collect();
        assert_eq!(rebuilt, [2_000, 4_000, 6_000]);
        // ...and a new streak after a quiet spell starts from nothing.
        assert!(!s.failed(at(6_000 + 5_001)));
        assert!(!s.failed(at(6_000 + 6_000)));
        // Failures further apart than QUIET never add up.
        let mut s = Streak::default();
        assert!((0..5).all(|i| !s.failed(at(i * 5_100))));
    }
}
