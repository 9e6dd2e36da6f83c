//! The in-process backend: several nodes in one process sharing one
//! [`MemoryCluster`]. It is the reference for what a backend does (the
//! conformance suite holds Redis to the same behaviour), and what tests use
//! to run a cluster without an engine.
//!
//! Same semantics as Redis, including lease TTLs and record retention, timed
//! with [`tokio::time::Instant`] so tests may pause time. Records are kept as
//! values, not encoded: there is nothing to corrupt. [`MemoryBackend::set_down`]
//! simulates a lost link for one node: its calls fail, its subscriptions are
//! dropped, and it gets [`Incoming::Reset`] when the link is back.
//!
//! Bounds: it holds what the nodes write, and forgets it as Redis would
//! (expired records and saved connections are swept every
//! [`SWEEP_EVERY`] calls); each node's incoming queue holds
//! [`INCOMING_CAPACITY`] messages.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::future::{BoxFuture, FutureExt};
use presence_core::{RoomId, UserId};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::inbox::{INCOMING_CAPACITY, Inbox};
use super::stream::{Append, Keep, ShardRead, StreamEntry, StreamId};
use super::{
    Backend, BackendError, BackendResult, Bus, EventLog, Incarnation, Incoming, Leases, MAX_OWED,
    Owed, Registry, Replaced, Store, Stored, Topic, UserRecords, Written,
};

/// Expired entries are swept once per this many calls (reads also skip them).
const SWEEP_EVERY: u64 = 1024;

/// What the nodes of one in-process cluster share. Cheap to clone; every
/// clone is the same cluster.
#[derive(Clone, Default)]
pub struct MemoryCluster {
    world: Arc<Mutex<World>>,
}

impl MemoryCluster {
    /// An empty cluster.
    pub fn new() -> Self {
        Self::default()
    }

    /// A new node's link to the cluster, with its own subscriptions and
    /// incoming queue.
    pub fn node(&self) -> MemoryBackend {
        let inbox = Inbox::new(INCOMING_CAPACITY);
        let id = {
            let mut w = lock(&self.world);
            w.next_link += 1;
            let id = w.next_link;
            w.links.insert(
                id,
                Link {
                    inbox: inbox.clone(),
                    topics: HashSet::new(),
                },
            );
            id
        };
        MemoryBackend {
            world: self.world.clone(),
            id,
            inbox,
            down: AtomicBool::new(false),
        }
    }
}

/// One node's link to a [`MemoryCluster`].
pub struct MemoryBackend {
    world: Arc<Mutex<World>>,
    id: u64,
    inbox: Inbox,
    down: AtomicBool,
}

impl MemoryBackend {
    /// Cuts (`true`) or restores (`false`) this node's link, as an outage of
    /// its engine would: while down every call fails with
    /// `BackendError::Engine("down")` and nothing arrives; the subscriptions
    /// are lost, and once restored the node gets [`Incoming::Reset`].
    pub fn set_down(&self, down: bool) {
        let was = self.down.swap(down, Ordering::SeqCst);
        if down && !was {
            lock(&self.world).drop_subscriptions(self.id);
        } else if !down && was {
            self.inbox.reset();
        }
    }

    /// Runs `f` on the shared state, or fails if the link is down.
    fn with<T>(&self, f: impl FnOnce(&mut World, Instant) -> T) -> BackendResult<T> {
        if self.down.load(Ordering::SeqCst) {
            return Err(BackendError::Engine("down".into()));
        }
        let now = Instant::now();
        let mut w = lock(&self.world);
        w.calls += 1;
        if w.calls.is_multiple_of(SWEEP_EVERY) {
            w.sweep(now);
        }
        Ok(f(&mut w, now))
    }

    /// [`Self::with`] as the boxed future the trait returns.
    fn call<'a, T: Send + 'a>(
        &'a self,
        f: impl FnOnce(&mut World, Instant) -> T + Send + 'a,
    ) -> BoxFuture<'a, BackendResult<T>> {
        async move { self.with(f) }.boxed()
    }
}

impl Drop for MemoryBackend {
    fn drop(&mut self) {
        let mut w = lock(&self.world);
        w.drop_subscriptions(self.id);
        w.links.remove(&self.id);
    }
}

#[derive(Default)]
struct World {
    next_link: u64,
    calls: u64,
    users: HashMap<UserId, UserKey>,
    /// Per incarnation: the users whose record of it holds them.
    index: HashMap<Incarnation, BTreeSet<UserId>>,
    members: HashMap<RoomId, BTreeSet<(UserId, Incarnation)>>,
    markers: HashMap<RoomId, BTreeMap<UserId, u64>>,
    /// Registered incarnations, and the deadline of each one's lease.
    registry: BTreeSet<Incarnation>,
    leases: HashMap<Incarnation, Instant>,
    nodes: HashMap<String, Incarnation>,
    resume: HashMap<String, (String, Instant)>,
    subscribers: HashMap<Topic, BTreeSet<u64>>,
    links: HashMap<u64, Link>,
    streams: HashMap<u16, Log>,
    /// Role → holder and the end of its hold; role → saved state.
    roles: HashMap<String, (String, Instant)>,
    role_states: HashMap<String, String>,
    revoked: HashMap<UserId, (u64, Instant)>,
}

/// One shard of the event stream, as a Redis stream keeps it.
#[derive(Default)]
struct Log {
    entries: std::collections::VecDeque<StreamEntry>,
    last: StreamId,
}

impl Log {
    /// Ids from the wall clock, like Redis: never smaller than the last.
    fn append(&mut self, a: Append) {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let id = StreamId {
            ms: ms.max(self.last.ms),
            seq: self.last.seq + 1,
        };
        self.last = id;
        self.entries.push_back(StreamEntry {
            id,
            kind: a.kind,
            user: a.user,
            data: a.data,
        });
    }

    fn trim(&mut self, keep: Keep) -> u64 {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let min_ms = now.saturating_sub(keep.max_age.as_millis() as u64);
        let mut trimmed = 0;
        while self
            .entries
            .front()
            .is_some_and(|e| self.entries.len() > keep.per_shard || e.id.ms < min_ms)
        {
            self.entries.pop_front();
            trimmed += 1;
        }
        trimmed
    }
}

/// One user's records, as one Redis hash with its expiry, and the owed
/// changes beside it.
#[derive(Default)]
struct UserKey {
    records: BTreeMap<Incarnation, Stored>,
    expires: Option<Instant>,
    owed: std::collections::VecDeque<Owed>,
}

struct Link {
    inbox: Inbox,
    topics: HashSet<Topic>,
}

impl UserKey {
    fn owe(&mut self, inc: &str, seq: u64, old: Option<Stored>) -> Vec<Owed> {
        let all = self.all();
        self.owed.push_back(Owed {
            inc: Incarnation::given(inc),
            seq,
            old,
            all,
        });
        while self.owed.len() > MAX_OWED {
            self.owed.pop_front();
        }
        self.owed.iter().cloned().collect()
    }

    fn all(&self) -> UserRecords {
        self.records
            .iter()
            .map(|(i, s)| (i.clone(), s.clone()))
            .collect()
    }

    /// Keeps the key while a record holds the user, else lets it expire.
    fn retain(&mut self, now: Instant, retention: Duration) {
        let holds = self.records.values().any(|s| s.record.holds());
        self.expires = (!holds).then(|| now + retention);
    }
}

impl World {
    /// The user's key, empty if it expired.
    fn user(&mut self, user: &UserId, now: Instant) -> &mut UserKey {
        let key = self.users.entry(user.clone()).or_default();
        if key.expires.is_some_and(|e| e <= now) {
            *key = UserKey::default();
        }
        key
    }

    fn sweep(&mut self, now: Instant) {
        self.users
            .retain(|_, k| !k.records.is_empty() && k.expires.is_none_or(|e| e > now));
        self.resume.retain(|_, (_, e)| *e > now);
    }

    fn live(&self, inc: &str, now: Instant) -> bool {
        self.leases.get(inc).is_some_and(|d| *d > now)
    }

    fn drop_subscriptions(&mut self, id: u64) {
        let Some(link) = self.links.get_mut(&id) else {
            return;
        };
        for topic in link.topics.drain() {
            if let Some(s) = self.subscribers.get_mut(&topic) {
                s.remove(&id);
                if s.is_empty() {
                    self.subscribers.remove(&topic);
                }
            }
        }
    }
}

impl Backend for MemoryBackend {
    fn label(&self) -> String {
        format!("memory:{:p}", Arc::as_ptr(&self.world))
    }
}

impl Store for MemoryBackend {
    fn write<'a>(
        &'a self,
        inc: &'a str,
        writes: Vec<(UserId, Stored)>,
        retention: Duration,
    ) -> BoxFuture<'a, BackendResult<Vec<Written>>> {
        self.call(move |w, now| {
            let mut out = Vec::with_capacity(writes.len());
            for (user, stored) in writes {
                let key = w.user(&user, now);
                // As write.lua: a record never goes back in sequence.
                if let Some(old) = key.records.get(inc).filter(|o| o.seq >= stored.seq) {
                    let previous = Some(old.clone());
                    let all = key.all();
                    let owed = key.owed.iter().cloned().collect();
                    out.push(Written {
                        user,
                        previous,
                        all,
                        owed,
                        wrote: false,
                    });
                    continue;
                }
                let seq = stored.seq;
                let previous = key.records.insert(Incarnation::given(inc), stored);
                key.retain(now, retention);
                let mut owed = key.owe(inc, seq, previous.clone());
                owed.pop();
                let all = key.all();
                // Held, or owed: unindexed once announced.
                w.index
                    .entry(Incarnation::given(inc))
                    .or_default()
                    .insert(user.clone());
                out.push(Written {
                    user,
                    previous,
                    all,
                    owed,
                    wrote: true,
                });
            }
            out
        })
    }

    fn replace<'a>(
        &'a self,
        user: &'a UserId,
        inc: &'a str,
        expected: u64,
        new: Stored,
        retention: Duration,
    ) -> BoxFuture<'a, BackendResult<Option<Replaced>>> {
        self.call(move |w, now| {
            let key = w.user(user, now);
            let slot = key.records.get_mut(inc).filter(|s| s.seq == expected)?;
            let seq = new.seq;
            let old = std::mem::replace(slot, new);
            key.retain(now, retention);
            let owed = key.owe(inc, seq, Some(old));
            Some((key.all(), owed))
        })
    }

    fn unindex<'a>(&'a self, inc: &'a str, users: Vec<UserId>) -> BoxFuture<'a, BackendResult<()>> {
        self.call(move |w, _| {
            if let Some(index) = w.index.get_mut(inc) {
                for u in &users {
                    index.remove(u);
                }
                if index.is_empty() {
                    w.index.remove(inc);
                }
            }
        })
    }

    fn owed<'a>(&'a self, users: &'a [UserId]) -> BoxFuture<'a, BackendResult<Vec<Vec<Owed>>>> {
        self.call(move |w, now| {
            users
                .iter()
                .map(|u| w.user(u, now).owed.iter().cloned().collect())
                .collect()
        })
    }

    fn settle<'a>(
        &'a self,
        settled: Vec<(UserId, Vec<String>)>,
    ) -> BoxFuture<'a, BackendResult<()>> {
        self.call(move |w, now| {
            for (user, ids) in settled {
                let key = w.user(&user, now);
                while key.owed.front().is_some_and(|o| ids.contains(&o.id())) {
                    key.owed.pop_front();
                }
            }
        })
    }

    fn read<'a>(&'a self, users: &'a [UserId]) -> BoxFuture<'a, BackendResult<Vec<UserRecords>>> {
        self.call(move |w, now| users.iter().map(|u| w.user(u, now).all()).collect())
    }

    fn memberships<'a>(
        &'a self,
        inc: &'a str,
        changes: Vec<(RoomId, UserId, bool)>,
    ) -> BoxFuture<'a, BackendResult<()>> {
        self.call(move |w, _| {
            for (room, user, add) in changes {
                let set = w.members.entry(room.clone()).or_default();
                if add {
                    set.insert((user, Incarnation::given(inc)));
                } else {
                    set.remove(&(user, Incarnation::given(inc)));
                    if set.is_empty() {
                        w.members.remove(&room);
                    }
                }
            }
        })
    }

    fn members<'a>(
        &'a self,
        room: &'a RoomId,
    ) -> BoxFuture<'a, BackendResult<Vec<(UserId, Incarnation)>>> {
        self.call(move |w, _| {
            w.members
                .get(room)
                .map(|s| s.iter().cloned().collect())
                .unwrap_or_default()
        })
    }

    fn mark_read<'a>(
        &'a self,
        marks: Vec<(RoomId, UserId, u64)>,
    ) -> BoxFuture<'a, BackendResult<Vec<(RoomId, UserId, u64)>>> {
        self.call(move |w, _| {
            let mut moved = Vec::new();
            for (room, user, marker) in marks {
                let room_markers = w.markers.entry(room.clone()).or_default();
                if room_markers.get(&user).is_none_or(|m| marker > *m) {
                    room_markers.insert(user.clone(), marker);
                    moved.push((room, user, marker));
                }
            }
            moved
        })
    }

    fn receipts<'a>(
        &'a self,
        room: &'a RoomId,
    ) -> BoxFuture<'a, BackendResult<Vec<(UserId, u64)>>> {
        self.call(move |w, _| {
            w.markers
                .get(room)
                .map(|m| m.iter().map(|(u, m)| (u.clone(), *m)).collect())
                .unwrap_or_default()
        })
    }

    fn take_users_of<'a>(
        &'a self,
        dead: &'a str,
        n: usize,
    ) -> BoxFuture<'a, BackendResult<Vec<UserId>>> {
        self.call(move |w, now| {
            if n == 0 {
                return Vec::new();
            }
            let mut taken = Vec::new();
            if let Some(set) = w.index.get_mut(dead) {
                while taken.len() < n
                    && let Some(u) = set.pop_first()
                {
                    taken.push(u);
                }
                if set.is_empty() {
                    w.index.remove(dead);
                }
            }
            // As on Redis: unregistered once a call finds nothing, unless
            // the incarnation came back meanwhile.
            if taken.is_empty() && !w.live(dead, now) {
                w.registry.remove(dead);
                w.leases.remove(dead);
            }
            taken
        })
    }
}

impl Registry for MemoryBackend {
    fn lease<'a>(
        &'a self,
        inc: &'a str,
        ttl: Duration,
        renew: bool,
    ) -> BoxFuture<'a, BackendResult<Leases>> {
        self.call(move |w, now| {
            // As lease.lua: a renewal never brings a lapsed lease back.
            let lapsed = renew && !w.live(inc, now);
            if !lapsed {
                w.leases.insert(Incarnation::given(inc), now + ttl);
                w.registry.insert(Incarnation::given(inc));
            }
            let (live, dead): (Vec<_>, Vec<_>) =
                w.registry.iter().cloned().partition(|i| w.live(i, now));
            let left = live
                .iter()
                .filter_map(|i| Some((i.clone(), w.leases.get(i)?.saturating_duration_since(now))))
                .collect();
            Leases {
                lapsed,
                live,
                dead,
                left,
            }
        })
    }

    fn end_lease<'a>(&'a self, inc: &'a str) -> BoxFuture<'a, BackendResult<()>> {
        self.call(move |w, _| {
            w.leases.remove(inc);
        })
    }

    fn claim<'a>(
        &'a self,
        node: &'a str,
        inc: &'a str,
    ) -> BoxFuture<'a, BackendResult<Option<Incarnation>>> {
        self.call(move |w, _| w.nodes.insert(node.to_owned(), Incarnation::given(inc)))
    }

    fn save_resume<'a>(
        &'a self,
        node: &'a str,
        payload: String,
        ttl: Duration,
    ) -> BoxFuture<'a, BackendResult<()>> {
        self.call(move |w, now| {
            w.resume.insert(node.to_owned(), (payload, now + ttl));
        })
    }

    fn take_resume<'a>(&'a self, node: &'a str) -> BoxFuture<'a, BackendResult<Option<String>>> {
        self.call(move |w, now| {
            w.resume
                .remove(node)
                .filter(|(_, e)| *e > now)
                .map(|(p, _)| p)
        })
    }

    fn revoke<'a>(
        &'a self,
        user: &'a UserId,
        before: u64,
        ttl: Duration,
    ) -> BoxFuture<'a, BackendResult<()>> {
        self.call(move |w, now| {
            w.revoked.insert(user.clone(), (before, now + ttl));
        })
    }

    fn revoked<'a>(&'a self, user: &'a UserId) -> BoxFuture<'a, BackendResult<Option<u64>>> {
        self.call(move |w, now| {
            w.revoked
                .get(user)
                .filter(|(_, until)| *until > now)
                .map(|(b, _)| *b)
        })
    }

    fn hold<'a>(
        &'a self,
        role: &'a str,
        holder: &'a str,
        ttl: Duration,
        save: Option<String>,
    ) -> BoxFuture<'a, BackendResult<(bool, Option<String>)>> {
        self.call(move |w, now| {
            let other = w
                .roles
                .get(role)
                .is_some_and(|(h, until)| h != holder && *until > now);
            if !other {
                w.roles
                    .insert(role.to_owned(), (holder.to_owned(), now + ttl));
                if let Some(state) = save {
                    w.role_states.insert(role.to_owned(), state);
                }
            }
            (!other, w.role_states.get(role).cloned())
        })
    }
}

impl Bus for MemoryBackend {
    fn publish<'a>(&'a self, messages: Vec<(Topic, Vec<u8>)>) -> BoxFuture<'a, BackendResult<()>> {
        self.call(move |w, _| {
            for (topic, payload) in messages {
                let Some(ids) = w.subscribers.get(&topic) else {
                    continue;
                };
                for id in ids {
                    if let Some(link) = w.links.get(id) {
                        link.inbox.message(topic.clone(), payload.clone());
                    }
                }
            }
        })
    }

    fn subscribe<'a>(&'a self, topics: Vec<Topic>) -> BoxFuture<'a, BackendResult<()>> {
        self.call(move |w, _| {
            let Some(link) = w.links.get_mut(&self.id) else {
                return;
            };
            for topic in topics {
                link.topics.insert(topic.clone());
                w.subscribers.entry(topic).or_default().insert(self.id);
            }
        })
    }

    fn unsubscribe<'a>(&'a self, topics: Vec<Topic>) -> BoxFuture<'a, BackendResult<()>> {
        self.call(move |w, _| {
            let Some(link) = w.links.get_mut(&self.id) else {
                return;
            };
            for topic in topics {
                link.topics.remove(&topic);
                if let Some(s) = w.subscribers.get_mut(&topic) {
                    s.remove(&self.id);
                    if s.is_empty() {
                        w.subscribers.remove(&topic);
                    }
                }
            }
        })
    }

    fn incoming(&self) -> mpsc::Receiver<Incoming> {
        self.inbox.take_receiver()
    }
}

impl EventLog for MemoryBackend {
    fn append<'a>(
        &'a self,
        entries: Vec<Append>,
        keep: Keep,
    ) -> BoxFuture<'a, Result<u64, (BackendError, Vec<Append>)>> {
        async move {
            if self.down.load(Ordering::SeqCst) {
                return Err((BackendError::Engine("down".into()), entries));
            }
            let mut w = lock(&self.world);
            let mut touched = BTreeSet::new();
            for a in entries {
                touched.insert(a.shard);
                w.streams.entry(a.shard).or_default().append(a);
            }
            let mut trimmed = 0;
            for shard in touched {
                if let Some(log) = w.streams.get_mut(&shard) {
                    trimmed += log.trim(keep);
                }
            }
            Ok(trimmed)
        }
        .boxed()
    }

    fn read_stream<'a>(
        &'a self,
        after: Vec<(u16, StreamId)>,
        count: usize,
    ) -> BoxFuture<'a, BackendResult<Vec<ShardRead>>> {
        self.call(move |w, _| {
            after
                .into_iter()
                .map(|(shard, pos)| {
                    let Some(log) = w.streams.get(&shard) else {
                        return ShardRead {
                            shard,
                            ..ShardRead::default()
                        };
                    };
                    ShardRead {
                        shard,
                        last: log.last,
                        entries: log
                            .entries
                            .iter()
                            .filter(|e| e.id > pos)
                            .take(count)
                            .cloned()
                            .collect(),
                    }
                })
                .collect()
        })
    }
}

/// Locks ignoring poison: every change to the world is complete before a
/// call can panic.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
