//! Several nodes sharing presence through a [`Backend`].
//!
//! Each node writes, once per batch window, its own record of every user
//! whose record changed here ([`presence_core::cluster::NodeRecord`]), and
//! publishes the user's full record set (as the write returned it) on the
//! topics of the user and of every room the user is or was in. Each node
//! subscribes to the topics its sockets need — rooms they joined, users they
//! watch, its own users — and nothing else, so its inbound traffic grows
//! with its own interest, not with the cluster. From the records, every
//! node computes the same cluster view in Rust ([`replica`]) and tells its
//! sockets what changed since it last told them: duplicates, reordering and
//! a message seen both on a room and on a user topic announce nothing twice.
//!
//! Liveness: each incarnation renews a lease every third of its TTL and, in
//! the same call, learns which incarnations live. A dead one's records count
//! as offline everywhere from the next round (offline within TTL + TTL/3),
//! and one node cleans it from the store, user by user, each user taken by
//! exactly one cleaner. A node restarted with the same id claims the id:
//! without saved connections it ends the previous incarnation's lease at
//! once (no resurrection); with them (a graceful restart) it restores them
//! first, writes their records, then ends it, so observers see no flap.
//!
//! Host events: each change of a user's records is owed to the cluster's
//! event stream from the step that made it (kept beside the records); the
//! node that made it appends its events after its round's publications and
//! settles it, and any node that touches the user later (the cleaner of a
//! dead one at the latest) announces what is still owed ([`crate::stream`],
//! `backend::Owed`), so any node's feed serves each change once.
//!
//! Outage: while the backend is unreachable the node keeps serving: its
//! own changes are merged with the last known records of the others and
//! shown at once. Nobody is declared dead on a guess: an absent lease counts
//! only if its incarnation was seen renewing while the store answered this
//! node ([`Judge`]). A node whose own lease lapsed never renews it: it goes
//! on as a new incarnation ([`reincarnate`]), whose records supersede the
//! old one's in the merge rule. When the link returns it writes all its
//! records again, resubscribes and re-reads everything it follows, and
//! announces only the differences.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use presence_core::machine::ConnRecord;
use presence_core::{Millis, RoomId, UserId};
use tokio::sync::Notify;

use crate::backend::wire::BusMessage;
use crate::backend::{
    Backend, BackendError, Incarnation, Leases, RECOVERY_BOUND, Stored, Topic, UserRecords,
};
use crate::backoff;
use crate::cluster_config::ClusterConfig;
use crate::hub::Hub;
use crate::hub::replica::Take;

/// Reconnect attempts back off from this...
const MIN_BACKOFF: Duration = Duration::from_millis(50);
/// ...to this.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

/// Rooms synced at once in a round.
const SYNCS_AT_ONCE: usize = 32;
/// Users of a dead incarnation one cleaning call takes.
const CLEAN_BATCH: usize = 500;
/// Records one cleaning call expires at once (pipelined).
const CLEANS_AT_ONCE: usize = 64;
/// Cleaning calls per pass at most (50,000 users; a pass runs beside the
/// lease renewals, and the next starts at a lease round after it ended).
const CLEAN_CALLS: usize = 100;
/// How long a user nobody holds keeps their status and last seen.
const RETENTION: Duration = Duration::from_secs(86_400);

/// Starts the node's cluster tasks: rounds, incoming, lease. Each holds the
/// hub weakly and ends with it or at shutdown.
///
/// On a multi-threaded runtime they run on a thread of their own, with a
/// runtime of its own: a storm of sessions runnable at once (a herd of
/// 100,000 reconnects) would otherwise queue each lease renewal behind them
/// past the lease, and the others would judge this node dead (BENCHMARKS.md,
/// "A herd"). The backend's connection is made by their first call (the
/// registration), so its I/O runs there too. On a single-threaded runtime
/// (tests, on paused time) they stay on it.
pub(crate) fn spawn(hub: &Arc<Hub>) {
    let multi = tokio::runtime::Handle::current().runtime_flavor()
        == tokio::runtime::RuntimeFlavor::MultiThread;
    let handles = match multi.then(|| own_thread(Arc::downgrade(hub))) {
        Some(Ok(handles)) => handles,
        Some(Err(e)) => {
            tracing::warn!(error = %e, "no thread for the cluster tasks; they share the runtime");
            here(Arc::downgrade(hub))
        }
        None => here(Arc::downgrade(hub)),
    };
    let mut tasks = hub.store_tasks.lock().unwrap_or_else(|p| p.into_inner());
    tasks.extend(handles);
}

/// Spawns the three tasks on the runtime it runs in.
fn spawn_tasks(hub: Weak<Hub>) -> [tokio::task::JoinHandle<()>; 3] {
    [
        tokio::spawn(rounds(hub.clone())),
        tokio::spawn(incoming(hub.clone())),
        tokio::spawn(lease(hub)),
    ]
}

fn here(hub: Weak<Hub>) -> Vec<tokio::task::AbortHandle> {
    spawn_tasks(hub).iter().map(|t| t.abort_handle()).collect()
}

/// The cluster tasks on the thread `presence-cluster`, which ends when they
/// all have.
fn own_thread(hub: Weak<Hub>) -> std::io::Result<Vec<tokio::task::AbortHandle>> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let tasks = {
        let _on = rt.enter();
        spawn_tasks(hub)
    };
    let handles = tasks.iter().map(|t| t.abort_handle()).collect();
    std::thread::Builder::new()
        .name("presence-cluster".into())
        .spawn(move || {
            rt.block_on(async {
                for t in tasks {
                    let _ = t.await;
                }
            });
        })?;
    Ok(handles)
}

fn link(hub: &Weak<Hub>) -> Option<(Arc<dyn Backend>, Arc<Notify>)> {
    let h = hub.upgrade()?;
    let l = h.cluster.as_ref()?;
    Some((l.backend.clone(), l.wake.clone()))
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

/// Once per batch window: take what is pending and send it.
async fn rounds(hub: Weak<Hub>) {
    let Some((backend, wake)) = link(&hub) else {
        return;
    };
    let mut backoff = backoff::backoff(MIN_BACKOFF, MAX_BACKOFF);
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
        let Some(h) = hub.upgrade() else { return };
        if h.is_shutting_down() {
            return;
        }
        let Some(take) = h.step(|n, now| n.take_round(now)) else {
            drop(h);
            // Events owed to the stream (a cleaning's, or a failed flush's).
            flush(&hub, &*backend).await;
            unindex(&hub, &*backend).await;
            continue;
        };
        drop(h);
        match round(&hub, &*backend, &take).await {
            Ok(()) => {
                backoff.reset();
                let Some(h) = hub.upgrade() else { return };
                h.step(|n, now| n.link_answered(now, true));
            }
            Err(e) => {
                tracing::debug!(error = %e, "cluster round failed");
                let Some(h) = hub.upgrade() else { return };
                h.step(|n, _| n.round_failed(take));
                h.step(|n, now| n.link_answered(now, false));
                drop(h);
                if !pause(&hub, backoff.next_delay()).await {
                    return;
                }
                wake.notify_one();
            }
        }
    }
}

/// One round, in the order that keeps readers exact: subscribe before
/// reading; write a record, then its room memberships, then publish it (a
/// reader that subscribed and then read the members sees the user one way
/// or the other).
async fn round(hub: &Weak<Hub>, backend: &dyn Backend, take: &Take) -> Result<(), BackendError> {
    let gone = || BackendError::Engine("node stopped".into());
    let me = hub.upgrade().ok_or_else(gone)?.cluster_me();
    if !take.subscribe.is_empty() {
        backend.subscribe(take.subscribe.clone()).await?;
    }
    let mut messages: BTreeMap<Topic, BusMessage> = BTreeMap::new();
    if !take.writes.is_empty() {
        let replies = backend.write(&me, take.writes.clone(), RETENTION).await?;
        messages = hub
            .upgrade()
            .ok_or_else(gone)?
            .step(|n, now| n.written(now, replies));
    }
    if !take.memberships.is_empty() {
        backend.memberships(&me, take.memberships.clone()).await?;
    }
    if !take.reads.is_empty() {
        for (room, user, marker) in backend.mark_read(take.reads.clone()).await? {
            let topic = Topic::Room(room.clone());
            messages
                .entry(topic)
                .or_default()
                .rd
                .push((room, user, marker));
        }
    }
    publish(backend, messages).await?;
    if let Some(h) = hub.upgrade() {
        h.with_replica(|c| c.took(take));
    }
    // The changes are owed in the store since their write, so the stream
    // can take them after the sockets are told: a node that dies first
    // leaves them to the one that cleans up after it.
    flush(hub, backend).await;
    unindex(hub, backend).await;
    if !take.fetch.is_empty() {
        let recs = backend.read(&take.fetch).await?;
        let got = take.fetch.iter().cloned().zip(recs).collect();
        hub.upgrade()
            .ok_or_else(gone)?
            .step(|n, now| n.fetched(now, got));
    }
    // Rooms sync side by side: each is three round trips, and a node filling
    // up (or back from an outage) has thousands to sync, whose joiners wait.
    let pending: Vec<_> = take
        .sync
        .iter()
        .map(|(room, shown)| sync_room(backend, room, shown))
        .collect();
    let mut syncs = futures_util::stream::iter(pending).buffer_unordered(SYNCS_AT_ONCE);
    while let Some(synced) = syncs.next().await {
        let (room, members, receipts) = synced?;
        hub.upgrade()
            .ok_or_else(gone)?
            .step(|n, now| n.synced(now, room, members, receipts));
    }
    if !take.unsubscribe.is_empty() {
        backend.unsubscribe(take.unsubscribe.clone()).await?;
    }
    Ok(())
}

/// A room's members (with the ones its sockets were shown), their records
/// and its read markers, for the sockets that joined it.
async fn sync_room<'a>(
    backend: &dyn Backend,
    room: &'a RoomId,
    shown: &[UserId],
) -> Result<(&'a RoomId, Vec<(UserId, UserRecords)>, Vec<(UserId, u64)>), BackendError> {
    let members = backend.members(room).await?;
    let mut users: Vec<_> = members
        .into_iter()
        .map(|(u, _)| u)
        .chain(shown.iter().cloned())
        .collect();
    users.sort();
    users.dedup();
    let recs = backend.read(&users).await?;
    let receipts = backend.receipts(room).await?;
    Ok((room, users.into_iter().zip(recs).collect(), receipts))
}

/// Appends the host events this node owes the event stream. A failure
/// keeps them for the next round and never fails the round: sockets do not
/// wait for the stream.
async fn flush(hub: &Weak<Hub>, backend: &dyn Backend) {
    let Some(h) = hub.upgrade() else { return };
    let Some(stream) = h.stream.clone() else {
        return;
    };
    if !stream.pending() {
        return;
    }
    let me = h.cluster_me();
    drop(h);
    if let Err(e) = stream.flush(backend, &me).await {
        tracing::debug!(error = %e, "appending to the event stream failed; kept for the next round");
    }
}

/// Takes released users whose changes are announced out of this
/// incarnation's index (while anything is still to append, they stay, so a
/// cleaner would visit them). Only the round task calls it, so no write of
/// this node races it.
async fn unindex(hub: &Weak<Hub>, backend: &dyn Backend) {
    let Some(h) = hub.upgrade() else { return };
    if h.stream.as_ref().is_some_and(|s| s.pending()) {
        return;
    }
    let users = h.with_replica(|c| c.take_unindex()).unwrap_or_default();
    if users.is_empty() {
        return;
    }
    let me = h.cluster_me();
    drop(h);
    if let Err(e) = backend.unindex(&me, users.clone()).await {
        tracing::debug!(error = %e, "unindexing released users failed; later");
        if let Some(h) = hub.upgrade() {
            h.with_replica(|c| c.released(users));
        }
    }
}

async fn publish(
    backend: &dyn Backend,
    messages: BTreeMap<Topic, BusMessage>,
) -> Result<(), BackendError> {
    if messages.is_empty() {
        return Ok(());
    }
    let mut out = Vec::with_capacity(messages.len());
    for (topic, msg) in messages {
        let bytes = serde_json::to_vec(&msg).map_err(|e| BackendError::Decode(e.to_string()))?;
        out.push((topic, bytes));
    }
    backend.publish(out).await
}

/// Hands what arrives on the bus to the hub, in order.
async fn incoming(hub: Weak<Hub>) {
    let Some(mut rx) = hub
        .upgrade()
        .and_then(|h| h.cluster.as_ref().map(|l| l.backend.incoming()))
    else {
        return;
    };
    let Some(mut shutdown) = hub.upgrade().map(|h| h.shutdown_signal()) else {
        return;
    };
    loop {
        let got = tokio::select! {
            m = rx.recv() => m,
            _ = shutdown.wait_for(|s| *s) => return,
        };
        let Some(got) = got else { return };
        let Some(h) = hub.upgrade() else { return };
        match got {
            crate::backend::Incoming::Message(_, bytes) => {
                h.metrics.backend_messages_in.inc();
                h.metrics.backend_bytes_in.inc_by(bytes.len() as u64);
                match serde_json::from_slice::<BusMessage>(&bytes) {
                    Ok(mut msg) => {
                        h.obey(std::mem::take(&mut msg.ctl));
                        h.step(|n, now| n.bus(now, msg));
                    }
                    Err(e) => {
                        h.metrics.bad_backend_replies.inc();
                        tracing::warn!(error = %e, "undecodable bus message skipped");
                    }
                }
            }
            crate::backend::Incoming::Reset => {
                tracing::info!("bus reconnected: resubscribing and re-reading");
                h.with_replica(|c| c.resync());
                h.cluster_wake();
            }
        }
    }
}

/// Registers, settles the previous incarnation, then renews the lease every
/// third of the TTL, learning who lives and cleaning the dead.
///
/// No death on a guess: an incarnation whose lease is missing is judged dead
/// (and cleaned) only if this node saw it renew since the store last failed
/// this node, so it failed to renew while the store answered; or once the
/// store has answered for the TTL plus [`RECOVERY_BOUND`], long enough for
/// any live node's link to return and renew after an outage of the store. So
/// an outage of the lease store, for this node or for all, declares nobody
/// dead by itself.
async fn lease(hub: Weak<Hub>) {
    let Some((backend, _)) = link(&hub) else {
        return;
    };
    let Some((config, mut me, grace)) = hub.upgrade().and_then(|h| {
        let l = h.cluster.as_ref()?;
        Some((
            l.config.clone(),
            h.cluster_me(),
            h.config.timing.offline_grace + crate::config::DRAIN_TIMEOUT,
        ))
    }) else {
        return;
    };
    let period = config.lease_ttl / 3;
    let mut judge = Judge::new(config.lease_ttl);
    let mut backoff = backoff::backoff(MIN_BACKOFF, MAX_BACKOFF);
    let previous = loop {
        match start(&hub, &*backend, &config, &me).await {
            Ok(previous) => break previous,
            Err(e) => {
                judge.failed();
                tracing::warn!(error = %e, "backend unreachable at start; serving locally meanwhile");
                if let Some(h) = hub.upgrade() {
                    h.step(|n, now| n.link_answered(now, false));
                }
                if !pause(&hub, backoff.next_delay()).await {
                    return;
                }
            }
        }
    };
    if let Some(h) = hub.upgrade() {
        h.cluster_ready();
    }
    // A graceful restart's previous incarnation, and one left after a lapsed
    // lease, are ended once this one's records are out, so observers merge
    // both meanwhile and see no flap.
    let mut retire: Vec<Incarnation> = previous.into_iter().collect();
    let mut stopping_since: Option<tokio::time::Instant> = None;
    // A failed renewal is retried soon, not a period later: a call may take
    // CALL_TIMEOUT (2 s) to fail, so two failures a period apart would lapse
    // the default lease (5 s) while the store was back in between.
    let mut retry = backoff::backoff(MIN_BACKOFF, period / 4);
    let mut cleaning: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        let Some(started) = hub.upgrade().map(|h| h.clock.now()) else {
            return;
        };
        let next = match backend.lease(&me, config.lease_ttl, true).await {
            Ok(leases) => {
                retry.reset();
                if let Some(h) = hub.upgrade() {
                    h.step(|n, now| n.link_answered(now, true));
                }
                if leases.lapsed {
                    if hub.upgrade().is_none_or(|h| h.is_shutting_down()) {
                        // Nothing to come back for: a draining node's lease ends.
                        return;
                    }
                    match reincarnate(&hub, &*backend, &config, &me).await {
                        // The new one is live from the next round on.
                        Ok(new) => retire.push(std::mem::replace(&mut me, new)),
                        Err(e) => {
                            tracing::warn!(error = %e, "could not take a new incarnation; retrying");
                            tokio::time::sleep(MIN_BACKOFF).await;
                            continue;
                        }
                    }
                }
                judge.answered(started, &leases);
                let dead: Vec<Incarnation> = leases
                    .dead
                    .iter()
                    .filter(|d| **d != me && judge.may(d, started))
                    .cloned()
                    .collect();
                let Some(h) = hub.upgrade() else { return };
                h.replicate(|c, now| {
                    c.set_liveness(
                        leases.live,
                        &dead,
                        started,
                        |inc| judge.may(inc, started),
                        now,
                    )
                });
                let idle = h.cluster_idle();
                drop(h);
                if idle {
                    for prev in std::mem::take(&mut retire) {
                        match backend.end_lease(&prev).await {
                            Ok(()) => {
                                if let Some(h) = hub.upgrade() {
                                    h.replicate(|c, now| c.retire(prev, now));
                                }
                            }
                            Err(e) => {
                                tracing::debug!(error = %e, "could not end a previous lease");
                                retire.push(prev);
                            }
                        }
                    }
                }
                // Cleaning runs beside the renewals, one pass at a time: a
                // dead node's users take a round trip each, and a node that
                // held 100,000 would hold this loop past its own lease.
                if !dead.is_empty() && cleaning.as_ref().is_none_or(|c| c.is_finished()) {
                    let (hub, backend) = (hub.clone(), backend.clone());
                    cleaning = Some(tokio::spawn(async move {
                        for d in dead {
                            clean(&hub, &*backend, &d).await;
                        }
                    }));
                }
                period
            }
            Err(e) => {
                judge.failed();
                tracing::debug!(error = %e, "lease renewal failed");
                if let Some(h) = hub.upgrade() {
                    h.step(|n, now| n.link_answered(now, false));
                }
                retry.next_delay()
            }
        };
        if let Some(h) = hub.upgrade() {
            h.cluster_cut_off();
        }
        // Not `pause`: the lease is renewed through a graceful shutdown's
        // drain and the offline grace after it, so the users this node still
        // holds (saved for its next incarnation) count as online while a
        // restart can still resume them; then it lapses.
        if hub.upgrade().is_none_or(|h| h.is_shutting_down()) {
            let since = *stopping_since.get_or_insert_with(tokio::time::Instant::now);
            if since.elapsed() > grace {
                return;
            }
        }
        tokio::time::sleep(next).await;
    }
}

/// When the lease store's answers are enough to declare an incarnation dead.
struct Judge {
    ttl: Duration,
    /// How long the store must answer before any absent lease is trusted.
    after: Duration,
    /// Since when every renewal succeeded (`None` after a failure).
    since: Option<Millis>,
    /// Incarnations seen renewing since then: their lease lapsing later was
    /// a failure to renew while the store answered.
    seen: HashSet<Incarnation>,
}

impl Judge {
    fn new(ttl: Duration) -> Self {
        // A live node's link is back within RECOVERY_BOUND after the store
        // answers again, and it renews within a third of the TTL after that.
        Self {
            ttl,
            after: ttl + RECOVERY_BOUND,
            // No failure seen yet: nothing suggests an outage, so absent
            // leases are trusted from the first round, as after a long
            // healthy spell. (A node whose very first call lands just as the
            // store returns from an outage is the one it cannot tell.)
            since: Some(Millis(0)),
            seen: HashSet::new(),
        }
    }

    fn failed(&mut self) {
        self.since = None;
        self.seen.clear();
    }

    /// A round that started `at` found `leases`. A lease merely still alive
    /// proves nothing (it may have been set before the outage); one renewed
    /// since the store answers this node again does.
    fn answered(&mut self, at: Millis, leases: &Leases) {
        let since = *self.since.get_or_insert(at);
        for (inc, left) in &leases.left {
            // Renewed `ttl - left` before `at`: no earlier than `since`?
            if self.ttl.saturating_sub(*left) <= at.since(since) {
                self.seen.insert(inc.clone());
            }
        }
    }

    fn may(&self, inc: &str, at: Millis) -> bool {
        self.seen.contains(inc) || self.since.is_some_and(|s| at.since(s) >= self.after)
    }
}

/// This incarnation's lease lapsed, so others may clean its records: go on
/// as a fresh incarnation (registered and claimed before the hub switches,
/// so nobody judges it dead). The caller ends the old one's lease once the
/// new records are out.
async fn reincarnate(
    hub: &Weak<Hub>,
    backend: &dyn Backend,
    config: &ClusterConfig,
    old: &str,
) -> Result<Incarnation, BackendError> {
    let new = config.incarnation();
    backend.lease(&new, config.lease_ttl, false).await?;
    backend.claim(&config.node_id, &new).await?;
    tracing::error!(
        old,
        new = %new,
        "this node's lease had lapsed (cut off from the lease store longer than the TTL): \
         others may have shown its users offline; writing them again as a new incarnation"
    );
    if let Some(h) = hub.upgrade() {
        h.metrics.reincarnations.inc();
        let now = h.clock.now();
        h.with_replica(|c| c.reincarnate(new.clone(), now));
        h.cluster_wake();
    }
    Ok(new)
}

/// Registers this incarnation and claims the node id; returns the previous
/// incarnation if it is to be ended once this one's records are out.
async fn start(
    hub: &Weak<Hub>,
    backend: &dyn Backend,
    config: &ClusterConfig,
    me: &str,
) -> Result<Option<Incarnation>, BackendError> {
    backend.lease(me, config.lease_ttl, false).await?;
    let previous = backend.claim(&config.node_id, me).await?;
    let saved = backend.take_resume(&config.node_id).await?;
    let conns: Vec<ConnRecord> = match saved {
        None => Vec::new(),
        Some(json) => serde_json::from_str(&json).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "saved connections unreadable; not resumed");
            Vec::new()
        }),
    };
    if conns.is_empty() {
        if let Some(prev) = previous {
            backend.end_lease(&prev).await?;
            if let Some(h) = hub.upgrade() {
                h.replicate(|c, now| c.retire(prev, now));
            }
        }
        return Ok(None);
    }
    tracing::info!(
        connections = conns.len(),
        "resuming the previous incarnation's connections"
    );
    if let Some(h) = hub.upgrade() {
        h.restore(crate::data_dir::Loaded {
            conns,
            ..Default::default()
        });
    }
    Ok(previous)
}

/// Cleans a dead incarnation: each of its records that still holds a user
/// becomes a released one (compare-and-set, so a live writer always wins),
/// its room memberships go, and the change is announced once.
async fn clean(hub: &Weak<Hub>, backend: &dyn Backend, dead: &str) {
    for _ in 0..CLEAN_CALLS {
        let users = match backend.take_users_of(dead, CLEAN_BATCH).await {
            Ok(users) if users.is_empty() => return,
            Ok(users) => users,
            Err(e) => {
                tracing::debug!(error = %e, "cleaning failed");
                return;
            }
        };
        let Ok(all) = backend.read(&users).await else {
            return;
        };
        let Some(now) = hub.upgrade().map(|h| h.clock.now()) else {
            return;
        };
        let mut messages: BTreeMap<Topic, BusMessage> = BTreeMap::new();
        let mut leave = Vec::new();
        let mut not_held = Vec::new();
        // The dead incarnation's record of each user, expired.
        let mut expire = Vec::new();
        for (user, recs) in users.iter().zip(all) {
            let old = recs
                .iter()
                .find(|(inc, _)| inc == dead)
                .map(|(_, s)| s.clone())
                .filter(|s| s.record.holds());
            match old {
                Some(old) => {
                    let new = Stored {
                        seq: old.seq + 1,
                        record: old.record.expired(now),
                    };
                    expire.push((user, recs, old, new));
                }
                // Nothing to expire, but maybe changes it left unannounced.
                None => not_held.push(user.clone()),
            }
        }
        // Pipelined on the one connection, answers taken in order: one
        // round trip each, one after another, took 36–45 s for 100,000
        // users (BENCHMARKS.md, "A node of 100,000 users killed").
        let calls: Vec<_> = expire
            .iter()
            .map(|(user, _, old, new)| backend.replace(user, dead, old.seq, new.clone(), RETENTION))
            .collect();
        let replaced: Vec<_> = futures_util::stream::iter(calls)
            .buffered(CLEANS_AT_ONCE)
            .collect()
            .await;
        for ((user, recs, old, _), result) in expire.iter().zip(replaced) {
            match result {
                Ok(Some((after, owed))) => {
                    // Only a record this cleaner expired leaves its rooms.
                    for room in &old.record.rooms {
                        leave.push((room.clone(), (*user).clone(), false));
                    }
                    if let Some(h) = hub.upgrade() {
                        h.step(|n, now| {
                            n.cleaned(now, user, dead, (recs, &after), &owed, &mut messages)
                        });
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::debug!(error = %e, "cleaning a record failed");
                    return;
                }
            }
        }
        if !not_held.is_empty() {
            let Ok(owed) = backend.owed(&not_held).await else {
                return;
            };
            if let Some(h) = hub.upgrade() {
                for (user, owed) in not_held.iter().zip(owed) {
                    h.step(|n, now| n.owed(now, user, &owed));
                }
            }
        }
        if !leave.is_empty() && backend.memberships(dead, leave).await.is_err() {
            return;
        }
        if publish(backend, messages).await.is_err() {
            return;
        }
        flush(hub, backend).await;
        tracing::info!(
            users = users.len(),
            incarnation = dead,
            "cleaned a dead node's users"
        );
    }
}

/// Leaves this node's connections for its next incarnation (a graceful
/// restart), for `ttl`: long enough to restart within the grace.
pub(crate) async fn save_resume(
    hub: &Hub,
    conns: &[ConnRecord],
    ttl: Duration,
) -> Result<(), BackendError> {
    let Some(l) = hub.cluster.as_ref() else {
        return Ok(());
    };
    let payload = serde_json::to_string(conns).map_err(|e| BackendError::Decode(e.to_string()))?;
    l.backend.save_resume(&l.config.node_id, payload, ttl).await
}
