//! The seam between a node and what the nodes of a cluster share: a store
//! of records and a bus of topics. The hub never talks to an engine; its
//! cluster tasks (`crate::cluster_tasks`) drive one [`Backend`].
//!
//! A backend only stores and carries: each node writes its own
//! [`NodeRecord`] of each user it holds, reads the others', and publishes
//! what changed on the topics of the rooms and users concerned. What a user's
//! presence *is* across the cluster is decided in Rust
//! ([`presence_core::cluster`]), on every node, from the records. So an
//! implementation needs per-user atomicity (a write returns the user's
//! records as of that write) and per-key compare-and-set, nothing global:
//! each user's records, each room's members and markers, and each topic live
//! under one key (one hash slot on a Redis Cluster).
//!
//! Two implementations: [`MemoryCluster`] (several nodes in one process: the
//! reference, and what tests use) and [`RedisBackend`] (one Redis or a
//! Redis Cluster). `tests/backend.rs` runs one conformance suite on both.

mod inbox;
mod memory;
mod redis;
pub mod stream;
pub(crate) mod wire;

use std::time::Duration;

use futures_util::future::BoxFuture;
use presence_core::cluster::NodeRecord;
use presence_core::{RoomId, UserId};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

pub use memory::{MemoryBackend, MemoryCluster};
pub use redis::{RedisBackend, RedisConfig, RedisSetupError, RedisTarget};
use stream::{Append, Keep, ShardRead, StreamId};

/// Every backend call (all its round trips) gives up after this long: a
/// hung engine must look like a dead one, not stall the node.
pub(crate) const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// A lost link answers again within this once its engine does (the Redis
/// link probes every 200 ms, is rebuilt after 2 s of failures, and a connect
/// and a call take 2 s at most each). Liveness judgements wait for it.
pub(crate) const RECOVERY_BOUND: Duration = Duration::from_secs(6);

/// One incarnation of a node: its id plus the epoch of one process run, e.g.
/// `eu-1.5f3a9c`. Records are keyed by it, so a restarted node never speaks
/// for its previous run's connections. Checked wherever one comes from
/// outside (a store's reply, the bus): 1 to [`MAX_INCARNATION`] bytes
/// without whitespace, control characters or braces (Redis hash tags); a
/// reply holding another is a decode error, not a record of an unknown node.
/// The default, empty one stands for "no cluster" and is never written.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Incarnation(String);

/// The longest incarnation taken: a node id (64 at most) and its suffix.
pub const MAX_INCARNATION: usize = 128;

/// Why a string is no incarnation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an incarnation: {0:?}")]
pub struct InvalidIncarnation(pub String);

impl Incarnation {
    /// `s` if it is a well-formed incarnation.
    pub fn parse(s: &str) -> Result<Self, InvalidIncarnation> {
        Self::try_from(s.to_owned())
    }

    /// The incarnation as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// One this process made (its node's next run) or was handed by its own
    /// caller (the in-process backend's arguments), taken as it is: nothing
    /// outside produced it.
    pub(crate) fn given(s: &str) -> Self {
        Self(s.to_owned())
    }
}

impl From<InvalidIncarnation> for BackendError {
    fn from(e: InvalidIncarnation) -> Self {
        BackendError::Decode(e.to_string())
    }
}

impl TryFrom<String> for Incarnation {
    type Error = InvalidIncarnation;

    fn try_from(s: String) -> Result<Self, InvalidIncarnation> {
        let ok = !s.is_empty()
            && s.len() <= MAX_INCARNATION
            && !s
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '{' | '}'));
        if ok {
            Ok(Self(s))
        } else {
            Err(InvalidIncarnation(s))
        }
    }
}

impl From<Incarnation> for String {
    fn from(i: Incarnation) -> String {
        i.0
    }
}

impl std::ops::Deref for Incarnation {
    type Target = str;

    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for Incarnation {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl std::borrow::Borrow<str> for Incarnation {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Incarnation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl PartialEq<str> for Incarnation {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for Incarnation {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl PartialEq<Incarnation> for &str {
    fn eq(&self, other: &Incarnation) -> bool {
        *self == other.0
    }
}

/// A record with the sequence its incarnation gave it (only grows).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stored {
    /// The incarnation's sequence number for this record.
    #[serde(rename = "q")]
    pub seq: u64,
    /// The record.
    #[serde(flatten)]
    pub record: NodeRecord,
}

/// Every incarnation's record of one user.
pub type UserRecords = Vec<(Incarnation, Stored)>;

/// The answer to one user's write: what the incarnation held before and what
/// all incarnations hold after, as of that write (atomically), and the
/// user's earlier owed changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Written {
    /// The user.
    pub user: UserId,
    /// This incarnation's record before the write.
    pub previous: Option<Stored>,
    /// Every incarnation's record after it.
    pub all: UserRecords,
    /// Earlier changes of the user not yet announced, oldest first (this
    /// write's own change, if it [wrote](Self::wrote), is owed after them:
    /// see [`Written::own`]).
    pub owed: Vec<Owed>,
    /// Whether the record was written (its sequence was greater).
    pub wrote: bool,
}

impl Written {
    /// This write's own change, as it is owed in the store.
    pub fn own(&self, inc: &str) -> Option<Owed> {
        if !self.wrote {
            return None;
        }
        let (i, new) = self.all.iter().find(|(i, _)| i == inc)?;
        Some(Owed {
            inc: i.clone(),
            seq: new.seq,
            old: self.previous.clone(),
            all: self.all.clone(),
        })
    }
}

/// One change of a user's records that is owed to the event stream, kept
/// beside the records by the same atomic step that made it, until a node
/// has appended its events and [settled](Store::settle) it. So a node
/// that dies between its write and its append leaves it to whoever touches
/// the user next (the node that cleans up after it, at the latest), and
/// that node computes the same events, under the same ids.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Owed {
    /// The incarnation whose record changed (the writer, or the dead one a
    /// cleaner expired).
    pub inc: Incarnation,
    /// That record's new sequence.
    pub seq: u64,
    /// The record before.
    pub old: Option<Stored>,
    /// Every incarnation's record after.
    pub all: UserRecords,
}

impl Owed {
    /// Names the change (unique per user): `<incarnation>:<sequence>`.
    pub fn id(&self) -> String {
        format!("{}:{}", self.inc, self.seq)
    }
}

/// What a [`Store::replace`] that took answers: the user's records after
/// it and the user's owed changes (this one last).
pub type Replaced = (UserRecords, Vec<Owed>);

/// A user's owed changes are bounded: beyond this many the oldest go (a node
/// that never manages to append would otherwise grow them).
pub const MAX_OWED: usize = 64;

/// What a topic is about. A node subscribes to the rooms its sockets joined
/// and the users they watch (and its own users, for their status).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Topic {
    /// Everything about the members of a room.
    Room(RoomId),
    /// Everything about one user.
    User(UserId),
    /// Requests to one node, by its id (the same over its incarnations):
    /// a connection to hand over for a resume elsewhere, and the answers.
    Node(String),
}

/// What arrives from the bus.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Incoming {
    /// A message published on a topic this node subscribed to.
    Message(Topic, Vec<u8>),
    /// The bus connection was lost and re-established: subscriptions are
    /// gone and messages may have been missed. The node subscribes again
    /// and re-reads what it follows.
    Reset,
}

/// Liveness, as one lease renewal sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Leases {
    /// The renewal found the lease lapsed (the node was cut off longer than
    /// the TTL, or the store lost it) and set nothing: others may be
    /// cleaning this incarnation's records, so its node goes on as a new
    /// incarnation. A renewal never brings a lapsed lease back, so no node
    /// sees an incarnation alive again after others saw it dead.
    pub lapsed: bool,
    /// Incarnations whose lease is alive (this one included).
    pub live: Vec<Incarnation>,
    /// Registered incarnations whose lease lapsed, still to be cleaned.
    pub dead: Vec<Incarnation>,
    /// What is left of each live lease (for telling when it was renewed).
    pub left: std::collections::BTreeMap<Incarnation, Duration>,
}

/// A failed backend call. Never fatal: the node serves locally meanwhile.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The engine answered with an error, or the connection failed.
    #[error("backend: {0}")]
    Engine(String),
    /// The call did not finish in time.
    #[error("backend call timed out")]
    Timeout,
    /// The engine's reply had an unexpected shape; it is never trusted.
    #[error("unexpected reply from the backend: {0}")]
    Decode(String),
}

/// Shorthand for backend results.
pub type BackendResult<T> = Result<T, BackendError>;

/// What the nodes of a cluster share, in four seams: the records
/// ([`Store`]), who is in the cluster ([`Registry`]), the [`Bus`] and the
/// event stream ([`EventLog`]). One engine serves all four (memory, Redis),
/// so they are implemented together; a caller names the seam it uses. Every
/// call is bounded in time by the implementation and may fail; the caller
/// retries.
pub trait Backend: Store + Registry + Bus + EventLog + Send + Sync + 'static {
    /// What this backend stores under (Redis: its key prefix), so a stream
    /// position taken from another store is told apart.
    fn label(&self) -> String;
}

/// The records store: every incarnation's record of each user, the owed
/// changes beside them, each incarnation's index of its users, room
/// memberships and read markers.
pub trait Store: Send + Sync {
    /// Writes `inc`'s records (atomically per user, in order) and notes the
    /// users in `inc`'s index for cleaning after its death. A record whose
    /// sequence is not greater than the stored one of `inc` is not written
    /// (its answer shows the store unchanged): records never go back, so a
    /// dead incarnation's late writes cannot undo its cleaning. A record that no
    /// longer [`holds`](NodeRecord::holds) the user is kept (it carries the
    /// status and last-seen time) but lets the user's key expire after
    /// `retention` once no record holds the user.
    ///
    /// The index holds the users whose record of `inc` holds them or whose
    /// change by `inc` may still be owed: every written user is added before
    /// the write, and a released one leaves only by [`Store::unindex`],
    /// once its change is announced, so the node that cleans up after `inc`
    /// visits every user it may owe an announcement. The index is bounded by
    /// what `inc` holds plus what it has not announced yet. This assumes one
    /// incarnation's writes come one call at a time (its cluster task awaits
    /// each). A failed call may have applied part of the batch; repeating
    /// it stores the same records again.
    fn write<'a>(
        &'a self,
        inc: &'a str,
        writes: Vec<(UserId, Stored)>,
        retention: Duration,
    ) -> BoxFuture<'a, BackendResult<Vec<Written>>>;

    /// Replaces `inc`'s record of `user` with `new` only if its sequence is
    /// still `expected` (for expiring a dead incarnation's record); `None` if
    /// it changed meanwhile, else the user's records after and the user's
    /// owed changes (this one last).
    fn replace<'a>(
        &'a self,
        user: &'a UserId,
        inc: &'a str,
        expected: u64,
        new: Stored,
        retention: Duration,
    ) -> BoxFuture<'a, BackendResult<Option<Replaced>>>;

    /// Takes released users whose changes are announced out of `inc`'s index.
    fn unindex<'a>(&'a self, inc: &'a str, users: Vec<UserId>) -> BoxFuture<'a, BackendResult<()>>;

    /// Each user's owed changes, oldest first.
    fn owed<'a>(&'a self, users: &'a [UserId]) -> BoxFuture<'a, BackendResult<Vec<Vec<Owed>>>>;

    /// The changes named (by [`Owed::id`]) are announced: they leave the
    /// front of each user's owed changes (one a newer write queued behind
    /// them stays).
    fn settle<'a>(
        &'a self,
        settled: Vec<(UserId, Vec<String>)>,
    ) -> BoxFuture<'a, BackendResult<()>>;

    /// The records of each user, in order (empty for an unknown user).
    fn read<'a>(&'a self, users: &'a [UserId]) -> BoxFuture<'a, BackendResult<Vec<UserRecords>>>;

    /// Adds (`true`) or removes `inc`'s membership of users in rooms.
    fn memberships<'a>(
        &'a self,
        inc: &'a str,
        changes: Vec<(RoomId, UserId, bool)>,
    ) -> BoxFuture<'a, BackendResult<()>>;

    /// A room's members, with the incarnations that hold each there.
    fn members<'a>(
        &'a self,
        room: &'a RoomId,
    ) -> BoxFuture<'a, BackendResult<Vec<(UserId, Incarnation)>>>;

    /// Moves read markers forward (never back); returns those that moved,
    /// in the order given.
    fn mark_read<'a>(
        &'a self,
        marks: Vec<(RoomId, UserId, u64)>,
    ) -> BoxFuture<'a, BackendResult<Vec<(RoomId, UserId, u64)>>>;

    /// A room's read markers.
    fn receipts<'a>(&'a self, room: &'a RoomId)
    -> BoxFuture<'a, BackendResult<Vec<(UserId, u64)>>>;

    /// Takes up to `n` users from a dead incarnation's index (those whose
    /// record of it held them), for cleaning; once it is empty the
    /// incarnation is unregistered (unless its lease is back) and this
    /// returns nothing. Two nodes cleaning at once never get the same user.
    fn take_users_of<'a>(
        &'a self,
        dead: &'a str,
        n: usize,
    ) -> BoxFuture<'a, BackendResult<Vec<UserId>>>;
}

/// Who is in the cluster: leases and node ids, what a node leaves for its
/// next incarnation, roles held by one node at a time, revoked tokens.
pub trait Registry: Send + Sync {
    /// Sets `inc`'s lease for `ttl` and says who lives. With `renew`, only a
    /// lease still alive is extended (see [`Leases::lapsed`]); without, `inc`
    /// is registered (a new incarnation).
    fn lease<'a>(
        &'a self,
        inc: &'a str,
        ttl: Duration,
        renew: bool,
    ) -> BoxFuture<'a, BackendResult<Leases>>;

    /// Ends `inc`'s lease now: it is dead for everyone from the next renewal.
    fn end_lease<'a>(&'a self, inc: &'a str) -> BoxFuture<'a, BackendResult<()>>;

    /// Records that `inc` is now the incarnation of node `node`; returns the
    /// previous one, if any.
    fn claim<'a>(
        &'a self,
        node: &'a str,
        inc: &'a str,
    ) -> BoxFuture<'a, BackendResult<Option<Incarnation>>>;

    /// Keeps `payload` (this node's connections at a graceful shutdown) for
    /// the node's next incarnation, for `ttl`.
    fn save_resume<'a>(
        &'a self,
        node: &'a str,
        payload: String,
        ttl: Duration,
    ) -> BoxFuture<'a, BackendResult<()>>;

    /// Takes what the previous incarnation of `node` saved, if anything.
    fn take_resume<'a>(&'a self, node: &'a str) -> BoxFuture<'a, BackendResult<Option<String>>>;

    /// Takes `role` for `holder` if nobody holds it, or keeps it for its
    /// holder, for `ttl`; with `save`, also saves the role's state, only if
    /// `holder` holds it. Answers whether `holder` holds it now and the
    /// role's saved state (which outlives holders). One holder at a time per
    /// role: e.g. the one node that delivers an endpoint's webhooks, with
    /// its position in the event stream as the state.
    fn hold<'a>(
        &'a self,
        role: &'a str,
        holder: &'a str,
        ttl: Duration,
        save: Option<String>,
    ) -> BoxFuture<'a, BackendResult<(bool, Option<String>)>>;

    /// Refuses `user`'s tokens issued (`iat`) before `before` (unix
    /// seconds), for `ttl`; a later revocation replaces an earlier one.
    fn revoke<'a>(
        &'a self,
        user: &'a UserId,
        before: u64,
        ttl: Duration,
    ) -> BoxFuture<'a, BackendResult<()>>;

    /// Since when `user`'s tokens are refused, if they are.
    fn revoked<'a>(&'a self, user: &'a UserId) -> BoxFuture<'a, BackendResult<Option<u64>>>;
}

/// Topics: messages published to the nodes that subscribe.
pub trait Bus: Send + Sync {
    /// Publishes messages, each on its topic, in order per topic.
    fn publish<'a>(&'a self, messages: Vec<(Topic, Vec<u8>)>) -> BoxFuture<'a, BackendResult<()>>;

    /// Subscribes to topics; returns once the subscriptions are in force
    /// (messages published after this returns are received).
    fn subscribe<'a>(&'a self, topics: Vec<Topic>) -> BoxFuture<'a, BackendResult<()>>;

    /// Drops subscriptions.
    fn unsubscribe<'a>(&'a self, topics: Vec<Topic>) -> BoxFuture<'a, BackendResult<()>>;

    /// The stream of what arrives on subscribed topics. Called once (a second
    /// call gets a closed receiver); bounded (an overflowing receiver gets
    /// [`Incoming::Reset`] and resyncs).
    fn incoming(&self) -> mpsc::Receiver<Incoming>;
}

/// The cluster's event stream, sharded.
pub trait EventLog: Send + Sync {
    /// Appends host events to the cluster's event stream, each to its
    /// shard, in order per shard, and trims each shard touched to `keep`;
    /// answers how many entries the trimming took. One shard's entries of a
    /// call are appended all or none; on failure the error comes with the
    /// entries of the shards that failed, for the caller to append again (an
    /// answer lost in transit counts as failed, so such an event may then be
    /// appended twice: readers drop repeats by id).
    fn append<'a>(
        &'a self,
        entries: Vec<Append>,
        keep: Keep,
    ) -> BoxFuture<'a, Result<u64, (BackendError, Vec<Append>)>>;

    /// Reads up to `count` entries of each shard after its position (with
    /// `count` 0, only each shard's last id).
    fn read_stream<'a>(
        &'a self,
        after: Vec<(u16, StreamId)>,
        count: usize,
    ) -> BoxFuture<'a, BackendResult<Vec<ShardRead>>>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_incarnation_from_outside_is_checked() {
        let inc = Incarnation::parse("eu-1.5f3a9c").expect("well formed");
        assert_eq!(crate::cluster_config::node_of(&inc), "eu-1");
        for bad in [
            "",
            "a b.1",
            "a{x}.1",
            "a.1\n",
            &"x".repeat(MAX_INCARNATION + 1),
        ] {
            assert!(Incarnation::parse(bad).is_err(), "{bad:?}");
        }
        // In a record set from the bus, a bad one fails the decode.
        let record = NodeRecord::released(
            None,
            presence_core::Status::Available,
            None,
            presence_core::Millis(1),
        );
        let recs: UserRecords = vec![(inc, Stored { seq: 1, record })];
        let good = serde_json::to_string(&recs).expect("encoded");
        let back: UserRecords = serde_json::from_str(&good).expect("decoded");
        assert_eq!(back[0].0, "eu-1.5f3a9c");
        let bad = good.replace("eu-1.5f3a9c", "eu-1 5f3a9c");
        let recs: Result<UserRecords, _> = serde_json::from_str(&bad);
        assert!(recs.is_err(), "{recs:?}");
    }
}
