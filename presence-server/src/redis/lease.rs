//! Node liveness: a lease per node, and the reaper that removes the users of
//! nodes that stopped renewing theirs.
//!
//! Every node renews `{prefix}:node:{id}` (value: this incarnation's epoch)
//! every third of the lease TTL, and on every node the reaper looks at the
//! registered nodes at the same pace. The users of a node whose lease expired
//! (killed, frozen, or cut from Redis) are removed by the reap script, which
//! announces each resulting `user_disconnected` once: the script is atomic
//! and compares with what the cluster last announced, so two nodes reaping
//! the same dead node at once cannot both announce it, and no lock is needed.
//! A user who reconnected to another node within the lease stays online
//! without a flap. Bound: lease TTL + one reaper period (TTL/3).
//!
//! A node starting with the id of a previous incarnation takes back the
//! connections that incarnation left at a graceful shutdown
//! (`{prefix}:resume:{id}`, kept for the offline grace plus the lease): they
//! resume in their grace, its records are simply re-sent, and observers see
//! nothing. Without them (the previous one was killed) it first removes
//! that incarnation's records (a forced reap), so stale connections are not
//! resurrected. A node whose own lease expired while it lived (cut from
//! Redis for longer than the TTL) was reaped: when the update script reports
//! that it had to take the lease again, the node re-sends all its records.

use std::sync::Weak;

use super::{MAX_BACKOFF, MIN_BACKOFF, RedisStore, now_ms, pause};
use crate::cluster::Outgoing;
use crate::hub::Hub;

/// Users one reap call may remove: keeps each script call short.
const REAP_BUDGET: usize = 1_000;
/// Reap calls per period at most; the rest waits for the next period.
const REAP_CALLS: usize = 20;

pub(super) async fn run(hub: Weak<Hub>, store: RedisStore) {
    let node = store.config().node_id.clone();
    let period = store.config().lease_ttl / 3;
    // First clear the previous incarnation's records, retrying until Redis
    // answers; until then the node serves locally.
    let mut backoff = MIN_BACKOFF;
    loop {
        let Some(now) = hub.upgrade().map(|h| now_ms(&h)) else {
            return;
        };
        match resume_or_clear(&hub, &store, now, &node).await {
            Ok(()) => break,
            Err(e) => {
                tracing::warn!(error = %e, "store unreachable at start; serving locally meanwhile");
                if let Some(h) = hub.upgrade() {
                    h.cluster_link(false, false);
                }
                if !pause(&hub, backoff).await {
                    return;
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
    let keep_after_shutdown = match hub.upgrade() {
        Some(h) => {
            h.cluster_link(false, true);
            h.cluster_ready();
            h.config.timing.offline_grace + crate::server::DRAIN_TIMEOUT
        }
        None => return,
    };
    let mut stopping_since: Option<std::time::Instant> = None;
    loop {
        let Some(now) = hub.upgrade().map(|h| now_ms(&h)) else {
            return;
        };
        let renewed = store.update(&Outgoing::default(), now).await;
        let Some(h) = hub.upgrade() else {
            return;
        };
        match renewed {
            Ok(reacquired) => {
                h.cluster_link(false, true);
                if reacquired {
                    tracing::warn!("lease had expired: re-publishing this node's state");
                    h.cluster_republish();
                }
                drop(h);
                reap(&store, now).await;
            }
            Err(e) => {
                tracing::debug!(error = %e, "lease renewal failed");
                h.cluster_link(false, false);
            }
        }
        // Not `pause`: the lease is renewed through a graceful shutdown's
        // drain and the offline grace after it, so the users this node still
        // holds (saved for its next incarnation) are not reaped while a
        // restart can still resume them; then it lapses and the others reap.
        if hub.upgrade().is_none_or(|h| h.is_shutting_down()) {
            let since = *stopping_since.get_or_insert_with(std::time::Instant::now);
            if since.elapsed() > keep_after_shutdown {
                return;
            }
        }
        tokio::time::sleep(period).await;
    }
}

/// Takes back the previous incarnation's saved connections, or clears its
/// records when it left none.
async fn resume_or_clear(
    hub: &Weak<Hub>,
    store: &RedisStore,
    now: u64,
    node: &str,
) -> Result<(), super::StoreError> {
    let saved = store.take_resume().await?;
    if saved.is_empty() {
        return clear_previous(store, now, node).await;
    }
    tracing::info!(
        connections = saved.len(),
        "resuming the previous incarnation's connections"
    );
    if let Some(h) = hub.upgrade() {
        h.restore(crate::data_dir::Loaded {
            conns: saved,
            ..Default::default()
        });
    }
    Ok(())
}

async fn clear_previous(store: &RedisStore, now: u64, node: &str) -> Result<(), super::StoreError> {
    for _ in 0..REAP_CALLS * 50 {
        let (removed, _) = store.reap(now, REAP_BUDGET, node).await?;
        if removed < REAP_BUDGET as u64 {
            break;
        }
    }
    Ok(())
}

async fn reap(store: &RedisStore, now: u64) {
    for _ in 0..REAP_CALLS {
        match store.reap(now, REAP_BUDGET, "").await {
            Ok((removed, _)) if removed > 0 => {
                tracing::info!(removed, "removed the users of nodes whose lease expired");
                if removed < REAP_BUDGET as u64 {
                    return;
                }
            }
            Ok(_) => return,
            Err(e) => {
                tracing::debug!(error = %e, "reap failed");
                return;
            }
        }
    }
}
