//! The cluster's event stream, node side: this node's host events queued in
//! order for the backend's stream (a bounded outbox, flushed by the cluster
//! task before it publishes), and `GET /v1/events` readers, which read the
//! whole cluster's stream from the backend, so any node serves every event.
//!
//! A reader's position is one id per shard; its SSE `id:` is that position
//! encoded ([`Cursor`]), so `Last-Event-ID` resumes it on any node. Each
//! event's `id` field names the change it comes from
//! (`<incarnation>:<sequence>:<n>:<user>`, see `Announcement`): the same on
//! every node, in webhooks, and when an event is appended twice, which
//! readers drop. A node's own view changes owe nothing: `v:<incarnation>:<n>`,
//! appended at most once ([`EventStream::push_own`]).

use std::collections::{HashSet, VecDeque};
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use futures_util::{Stream, StreamExt};
use presence_core::UserId;
use tokio::sync::{Notify, watch};

use crate::backend::stream::{Append, Keep, StreamEntry, StreamId, fnv1a32, shard_of};
use crate::backend::{Backend, BackendError};
use crate::hub::replica::Announcement;
use crate::metrics::StreamMetrics;

/// Host events a node holds for the stream while the backend does not take
/// them; past it the oldest are dropped and a `gap` entry says how many.
pub const OUTBOX: usize = 10_000;
/// Events one append call carries at most.
const APPEND_AT_ONCE: usize = 1_000;
/// Entries one reader takes per shard and read.
const READ_AT_ONCE: usize = 256;
/// A reader with nothing new looks again after this (sooner when this node
/// appended something).
pub const POLL: Duration = Duration::from_millis(50);
/// Readers of the stream one node serves at once.
pub const MAX_READERS: usize = 64;

/// The node's side of the stream.
pub(crate) struct EventStream {
    /// 0: no stream (the owed changes are only settled).
    shards: u16,
    keep: Keep,
    /// Names the store, so a position from another one is refused.
    label: u32,
    outbox: Mutex<Outbox>,
    /// One flush at a time keeps the outbox's order in the stream.
    flushing: tokio::sync::Mutex<()>,
    /// Readers on this node look at once after an append.
    appended: Notify,
    readers: AtomicUsize,
    metrics: StreamMetrics,
    /// A failure drill: nothing is appended (see `PresenceServer::halt_appends`).
    halted: std::sync::atomic::AtomicBool,
    /// Numbers this node's own events ([`EventStream::push_own`]).
    own: std::sync::atomic::AtomicU64,
}

/// One owed change of a user: its events, appended together (one shard),
/// then the change is settled in the backend. A host-only event of this
/// node (a view change) owes nothing: `owed` is none.
struct Unit {
    user: UserId,
    owed: Option<String>,
    appends: Vec<Append>,
}

#[derive(Default)]
struct Outbox {
    queue: VecDeque<Unit>,
    /// (user, change) of every queued unit: a change that comes back in a
    /// later write's answer before it is settled is not queued twice.
    queued: HashSet<(UserId, String)>,
    /// Events in the queue.
    events: usize,
    dropped: u64,
}

impl Outbox {
    fn pop(&mut self) -> Option<Unit> {
        let u = self.queue.pop_front()?;
        if let Some(owed) = &u.owed {
            self.queued.remove(&(u.user.clone(), owed.clone()));
        }
        self.events -= u.appends.len();
        Some(u)
    }

    /// Drops the oldest units past the bound. Their changes stay owed in
    /// the backend (never settled), so the user's next write announces them
    /// again; readers hear of the hole meanwhile.
    fn bound(&mut self, metrics: &StreamMetrics) {
        while self.events > OUTBOX {
            let Some(u) = self.pop() else { break };
            self.dropped += u.appends.len() as u64;
            metrics.dropped.inc_by(u.appends.len() as u64);
        }
        metrics.pending.set(self.events as i64);
    }
}

impl EventStream {
    pub fn new(shards: u16, keep: Keep, label: &str, metrics: StreamMetrics) -> Self {
        Self {
            metrics,
            shards,
            keep,
            label: fnv1a32(label),
            outbox: Mutex::default(),
            flushing: tokio::sync::Mutex::new(()),
            appended: Notify::new(),
            readers: AtomicUsize::new(0),
            halted: std::sync::atomic::AtomicBool::new(false),
            own: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// From now on nothing is appended nor settled, as if the node died
    /// after each write and before its append.
    pub fn halt(&self) {
        self.halted.store(true, Ordering::SeqCst);
    }

    /// Whether events go into a stream (`event_shards` > 0).
    pub fn appends(&self) -> bool {
        self.shards > 0
    }

    fn outbox(&self) -> std::sync::MutexGuard<'_, Outbox> {
        self.outbox.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues an owed change's events for the stream, in order (once).
    pub fn push(&self, a: &Announcement) {
        let mut o = self.outbox();
        if !o.queued.insert((a.user.clone(), a.owed.clone())) {
            return;
        }
        let appends: Vec<Append> = if self.appends() {
            let shard = shard_of(a.user.as_str(), self.shards);
            a.events
                .iter()
                .map(|(id, ev)| Append {
                    shard,
                    kind: ev.name().to_owned(),
                    user: a.user.as_str().to_owned(),
                    data: crate::feed::encode(ev, serde_json::json!(id)),
                })
                .collect()
        } else {
            Vec::new()
        };
        o.events += appends.len();
        o.queue.push_back(Unit {
            user: a.user.clone(),
            owed: Some(a.owed.clone()),
            appends,
        });
        o.bound(&self.metrics);
    }

    /// Queues an event of this node's own that no record change owes (a
    /// view change) under the id `v:<incarnation>:<n>`, unique across nodes
    /// and restarts (an incarnation is a node's run). Nothing settles it: if
    /// the node dies before appending it, it is lost.
    pub fn push_own(&self, me: &str, ev: &presence_core::Event) {
        if !self.appends() {
            return;
        }
        let n = self.own.fetch_add(1, Ordering::Relaxed);
        let user = ev.diff.user();
        let append = Append {
            shard: shard_of(user.as_str(), self.shards),
            kind: ev.name().to_owned(),
            user: user.as_str().to_owned(),
            data: crate::feed::encode(ev, serde_json::json!(format!("v:{me}:{n}"))),
        };
        let mut o = self.outbox();
        o.events += 1;
        o.queue.push_back(Unit {
            user: user.clone(),
            owed: None,
            appends: vec![append],
        });
        o.bound(&self.metrics);
    }

    /// Appends what is queued, in order, then settles each change in the
    /// backend; what the backend refuses stays queued, ahead of anything
    /// newer, for the next flush.
    pub async fn flush(&self, backend: &dyn Backend, me: &str) -> Result<(), BackendError> {
        let metrics = &self.metrics;
        let _one = self.flushing.lock().await;
        if self.halted.load(Ordering::SeqCst) {
            return Ok(());
        }
        loop {
            let (units, mut batch) = {
                let mut o = self.outbox();
                let mut batch = Vec::new();
                if o.dropped > 0 && self.appends() {
                    // Every shard hears of it: a service reading one shard
                    // must know its sequence has a hole.
                    let data = serde_json::json!({ "node": me, "dropped": o.dropped }).to_string();
                    batch.extend((0..self.shards).map(|shard| Append {
                        shard,
                        kind: "gap".into(),
                        user: String::new(),
                        data: data.clone(),
                    }));
                }
                o.dropped = 0;
                let mut units = Vec::new();
                let mut n = 0;
                while n < APPEND_AT_ONCE {
                    let Some(u) = o.pop() else { break };
                    n += u.appends.len();
                    units.push(u);
                }
                metrics.pending.set(o.events as i64);
                (units, batch)
            };
            if units.is_empty() && batch.is_empty() {
                return Ok(());
            }
            for u in &units {
                batch.extend(u.appends.iter().cloned());
            }
            let failed: HashSet<u16> = match backend.append(batch, self.keep).await {
                Ok(trimmed) => {
                    metrics.trimmed.inc_by(trimmed);
                    HashSet::new()
                }
                Err((e, back)) => {
                    metrics.append_failures.inc();
                    tracing::debug!(error = %e, "appending to the event stream failed; kept");
                    back.iter().map(|a| a.shard).collect()
                }
            };
            // A user's events are in one shard: a unit went in whole or not.
            let (back, done): (Vec<Unit>, Vec<Unit>) = units
                .into_iter()
                .partition(|u| u.appends.first().is_some_and(|a| failed.contains(&a.shard)));
            let appended: usize = done.iter().map(|u| u.appends.len()).sum();
            metrics.appended.inc_by(appended as u64);
            if appended > 0 {
                self.appended.notify_waiters();
            }
            let mut settle: Vec<(UserId, Vec<String>)> = Vec::new();
            for u in done {
                let Some(owed) = u.owed else { continue };
                match settle.iter_mut().find(|(user, _)| *user == u.user) {
                    Some((_, ids)) => ids.push(owed),
                    None => settle.push((u.user, vec![owed])),
                }
            }
            if !settle.is_empty()
                && let Err(e) = backend.settle(settle).await
            {
                // Still owed in the backend: announced again (same ids) by
                // the user's next write.
                tracing::debug!(error = %e, "settling announced changes failed");
            }
            if !back.is_empty() {
                let mut o = self.outbox();
                for u in back.into_iter().rev() {
                    if let Some(owed) = &u.owed {
                        o.queued.insert((u.user.clone(), owed.clone()));
                    }
                    o.events += u.appends.len();
                    o.queue.push_front(u);
                }
                o.bound(metrics);
                return Err(BackendError::Engine(
                    "the event stream did not take every event".into(),
                ));
            }
        }
    }

    /// Fires at this node's next append.
    pub fn appended(&self) -> tokio::sync::futures::Notified<'_> {
        self.appended.notified()
    }

    /// Whether anything waits to be appended or settled.
    pub fn pending(&self) -> bool {
        let o = self.outbox();
        !o.queue.is_empty() || o.dropped > 0
    }

    /// Parses a `Last-Event-ID`.
    pub fn cursor(&self, text: &str) -> Result<Cursor, CursorError> {
        Cursor::parse(text, self.label, self.shards)
    }

    /// The position of the stream's end now (a reader without
    /// `Last-Event-ID` starts there).
    pub async fn end(&self, backend: &dyn Backend) -> Result<Cursor, BackendError> {
        let reads = backend
            .read_stream(
                (0..self.shards).map(|s| (s, StreamId::default())).collect(),
                0,
            )
            .await?;
        let mut pos = vec![StreamId::default(); usize::from(self.shards)];
        for r in reads {
            if let Some(p) = pos.get_mut(usize::from(r.shard)) {
                *p = r.last;
            }
        }
        Ok(Cursor {
            label: self.label,
            pos,
        })
    }

    /// Takes a reader's slot, if one is free.
    pub fn admit(self: &Arc<Self>) -> Option<ReaderSlot> {
        let n = self.readers.fetch_add(1, Ordering::AcqRel);
        if n >= MAX_READERS {
            self.readers.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        Some(ReaderSlot(self.clone()))
    }
}

/// One reader's place among [`MAX_READERS`]; freed when dropped.
pub(crate) struct ReaderSlot(Arc<EventStream>);

impl Drop for ReaderSlot {
    fn drop(&mut self) {
        self.0.readers.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A reader's position: one id per shard, as `Last-Event-ID` text
/// `<label>.<shards>.<base>.<d>-<n>...`: the store's label (8 hex digits),
/// the shard count, the smallest millisecond among the ids, then each
/// shard's id as milliseconds after the base and number (`0` before its
/// first entry).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Cursor {
    label: u32,
    pos: Vec<StreamId>,
}

/// A `Last-Event-ID` that names no position of this stream.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum CursorError {
    /// Not a position at all (e.g. an id of a single node's feed).
    #[error("Last-Event-ID {0:?} is not a position of the event stream")]
    Malformed(String),
    /// A position of another store (another prefix or cluster), or of a
    /// stream cut into another number of shards.
    #[error("Last-Event-ID {0:?} is a position of another event stream")]
    Foreign(String),
}

impl Cursor {
    fn encode(&self) -> String {
        let base = self
            .pos
            .iter()
            .filter(|p| p.seq > 0)
            .map(|p| p.ms)
            .min()
            .unwrap_or(0);
        let mut s = format!("{:08x}.{}.{base}", self.label, self.pos.len());
        for p in &self.pos {
            if p.seq == 0 {
                s.push_str(".0");
            } else {
                s.push_str(&format!(".{}-{}", p.ms - base, p.seq));
            }
        }
        s
    }

    fn parse(text: &str, label: u32, shards: u16) -> Result<Self, CursorError> {
        let malformed = || CursorError::Malformed(text.chars().take(64).collect());
        let mut parts = text.trim().split('.');
        let (Some(l), Some(n), Some(base)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(malformed());
        };
        let l = u32::from_str_radix(l, 16).map_err(|_| malformed())?;
        let n: u16 = n.parse().map_err(|_| malformed())?;
        let base: u64 = base.parse().map_err(|_| malformed())?;
        let pos = parts
            .map(|p| match p {
                "0" => Ok(StreamId::default()),
                p => {
                    let id: StreamId = p.parse().map_err(|_| malformed())?;
                    let ms = base.checked_add(id.ms).ok_or_else(malformed)?;
                    Ok(StreamId { ms, seq: id.seq })
                }
            })
            .collect::<Result<Vec<_>, _>>()?;
        if pos.len() != usize::from(n) {
            return Err(malformed());
        }
        if l != label || n != shards {
            return Err(CursorError::Foreign(text.chars().take(64).collect()));
        }
        Ok(Self { label, pos })
    }
}

/// The SSE response for one reader: from `from`, the whole
/// cluster's events, each shard in order; `event: gap` where retention (or a
/// node's full outbox, or a store that lost the stream) took events the
/// reader had not read. Ends when the server shuts down.
pub(crate) fn serve(
    stream: Arc<EventStream>,
    slot: ReaderSlot,
    backend: Arc<dyn Backend>,
    from: Cursor,
    mut shutdown: watch::Receiver<bool>,
) -> Sse<impl Stream<Item = Result<SseEvent, Infallible>>> {
    stream.metrics.readers.inc();
    let reader = Reader {
        stream,
        backend,
        tail: Tail::new(from),
        pending: VecDeque::new(),
        _slot: slot,
    };
    let events = futures_util::stream::unfold(reader, |mut r| async move {
        let e = r.next().await;
        Some((Ok(e), r))
    });
    let stop = async move {
        let _ = shutdown.wait_for(|s| *s).await;
    };
    Sse::new(events.take_until(stop)).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}

struct Reader {
    stream: Arc<EventStream>,
    backend: Arc<dyn Backend>,
    tail: Tail,
    pending: VecDeque<SseEvent>,
    _slot: ReaderSlot,
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.stream.metrics.readers.dec();
    }
}

impl Reader {
    async fn next(&mut self) -> SseEvent {
        loop {
            if let Some(e) = self.pending.pop_front() {
                return e;
            }
            // Registered before the read, so an append during it wakes us.
            let stream = self.stream.clone();
            let appended = stream.appended();
            tokio::pin!(appended);
            appended.as_mut().enable();
            match self.tail.read(&*self.backend, READ_AT_ONCE).await {
                Ok(items) if !items.is_empty() => {
                    let now = now_ms();
                    for item in items {
                        if !self.tail.pass(&item) {
                            continue;
                        }
                        let cursor = self.tail.cursor();
                        let sse = match item {
                            Item::Gap { data, .. } => {
                                self.stream.metrics.gaps.inc();
                                SseEvent::default().event("gap").data(data.to_string())
                            }
                            Item::Event { entry, .. } => {
                                self.stream
                                    .metrics
                                    .lag
                                    .observe(now.saturating_sub(entry.id.ms) as f64 / 1000.0);
                                SseEvent::default()
                                    .event(entry.kind.clone())
                                    .data(entry.data)
                            }
                        };
                        self.pending.push_back(sse.id(cursor));
                    }
                }
                Ok(_) => {
                    let _ = tokio::time::timeout(POLL, appended).await;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "event stream read failed; retrying");
                    tokio::time::sleep(POLL * 10).await;
                }
            }
        }
    }
}

/// Milliseconds since the Unix epoch, by this machine's clock (stream ids
/// come from the engine's, so lags are as good as the clocks' agreement).
pub(crate) fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// What a read of the whole stream found, in the order to hand it on.
#[derive(Debug)]
pub(crate) enum Item {
    /// Entries of `shard` after the reader's position are gone (retention,
    /// or the engine lost the stream); `to` is where to go on when nothing
    /// of the shard is left to read.
    Gap {
        shard: u16,
        to: Option<StreamId>,
        data: serde_json::Value,
    },
    /// One event.
    Event { shard: u16, entry: StreamEntry },
}

/// How many event ids a reader remembers to drop repeats: an event appended
/// twice (a node died between appending and settling, or two nodes
/// announced one change at once) comes again within moments.
const SEEN: usize = 8192;

/// The `id` of an entry's JSON, if it has one.
fn event_id(data: &str) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Id {
        id: Option<String>,
    }
    serde_json::from_str::<Id>(data).ok()?.id
}

/// A position in every shard, read forward, and the ids lately passed.
pub(crate) struct Tail {
    label: u32,
    pos: Vec<StreamId>,
    seen: HashSet<String>,
    order: VecDeque<String>,
}

impl Tail {
    pub fn new(from: Cursor) -> Self {
        Self {
            label: from.label,
            pos: from.pos,
            seen: HashSet::new(),
            order: VecDeque::new(),
        }
    }

    /// Moves past `item`; whether it is news (not an event already passed
    /// under the same id).
    pub fn pass(&mut self, item: &Item) -> bool {
        self.advance(item);
        let Item::Event { entry, .. } = item else {
            return true;
        };
        let Some(id) = event_id(&entry.data) else {
            return true;
        };
        if !self.seen.insert(id.clone()) {
            return false;
        }
        self.order.push_back(id);
        if self.order.len() > SEEN
            && let Some(old) = self.order.pop_front()
        {
            self.seen.remove(&old);
        }
        true
    }

    pub fn cursor(&self) -> String {
        cursor(self.label, &self.pos)
    }

    /// Up to `per_shard` entries of each shard after the position, gaps
    /// first; across shards roughly by time, within a shard strictly in
    /// order. The position moves only by [`Tail::pass`].
    pub async fn read(
        &self,
        backend: &dyn Backend,
        per_shard: usize,
    ) -> Result<Vec<Item>, BackendError> {
        let after = self
            .pos
            .iter()
            .enumerate()
            .map(|(s, p)| (s as u16, *p))
            .collect();
        let reads = backend.read_stream(after, per_shard).await?;
        let mut gaps = Vec::new();
        let mut entries = Vec::new();
        for r in reads {
            let Some(at) = self.pos.get(usize::from(r.shard)).copied() else {
                continue;
            };
            if r.gap(at) {
                let data = serde_json::json!({
                    "shard": r.shard,
                    "after": at.to_string(),
                    "first": r.entries.first().map(|e| e.id.to_string()),
                    "last": r.last.to_string(),
                });
                gaps.push(Item::Gap {
                    shard: r.shard,
                    to: r.entries.is_empty().then_some(r.last),
                    data,
                });
            }
            entries.extend(r.entries.into_iter().map(|e| (r.shard, e)));
        }
        entries.sort_by_key(|(s, e)| (e.id.ms, *s, e.id.seq));
        gaps.extend(
            entries
                .into_iter()
                .map(|(shard, entry)| Item::Event { shard, entry }),
        );
        Ok(gaps)
    }

    /// Moves past `item`.
    fn advance(&mut self, item: &Item) {
        let (shard, to) = match item {
            Item::Gap { shard, to, .. } => (*shard, *to),
            Item::Event { shard, entry } => (*shard, Some(entry.id)),
        };
        if let (Some(p), Some(to)) = (self.pos.get_mut(usize::from(shard)), to) {
            *p = to;
        }
    }
}

fn cursor(label: u32, pos: &[StreamId]) -> String {
    Cursor {
        label,
        pos: pos.to_vec(),
    }
    .encode()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_what_is_not_theirs() {
        let c = Cursor {
            label: fnv1a32("presence"),
            pos: vec![
                StreamId::default(),
                StreamId {
                    ms: 1_700_000_000_123,
                    seq: 7,
                },
                StreamId {
                    ms: 1_700_000_000_100,
                    seq: 1,
                },
            ],
        };
        let text = c.encode();
        assert!(text.ends_with(".3.1700000000100.0.23-7.0-1"), "{text}");
        assert_eq!(Cursor::parse(&text, c.label, 3), Ok(c.clone()));
        assert!(matches!(
            Cursor::parse(&text, fnv1a32("other"), 3),
            Err(CursorError::Foreign(_))
        ));
        assert!(matches!(
            Cursor::parse(&text, c.label, 4),
            Err(CursorError::Foreign(_))
        ));
        for bad in [
            "",
            "12345",
            "zz.3.1.0.0.0",
            "0.3.1.0.0",
            "0.3.1.0.0.0.0",
            "0.3.1.0.x-1.0",
            "0.3.18446744073709551615.0.1-1.0",
        ] {
            assert!(
                matches!(Cursor::parse(bad, 0, 3), Err(CursorError::Malformed(_))),
                "{bad:?}"
            );
        }
    }
}
