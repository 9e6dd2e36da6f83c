//! Who a node is in a cluster: its id, its lease, and each run's
//! incarnation.

use std::time::Duration;

/// Who this node is in the cluster.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    /// This node's id, unique in the cluster and stable across restarts if
    /// possible (a restart then settles its previous run at once instead of
    /// after the lease). Default: random.
    pub node_id: String,
    /// How long a node's records outlive it: when it stops renewing its
    /// lease, the others count its users offline after this (plus at most a
    /// third of it). Also the time a client has to reconnect to another node
    /// without observers seeing it flap. Default 5 s; at least 300 ms.
    pub lease_ttl: Duration,
    /// Shards of the cluster's event stream (each its own key, so its own
    /// slot on a Redis Cluster). Every node of a cluster must use the same.
    /// Default 8; at most 1024. 0: no stream (each node's feed and webhooks
    /// then carry only the changes its own writes caused).
    pub event_shards: u16,
    /// Events the stream keeps, over all shards (each shard keeps its
    /// share). Default 100,000; at least the number of shards.
    pub event_retention: usize,
    /// Events older than this leave the stream. Default 1 h; at least 1 s.
    pub event_max_age: Duration,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            node_id: random_hex(6),
            lease_ttl: Duration::from_secs(5),
            event_shards: 8,
            event_retention: 100_000,
            event_max_age: Duration::from_secs(3600),
        }
    }
}

/// A bad [`ClusterConfig`].
#[derive(Debug, thiserror::Error)]
pub enum ClusterConfigError {
    /// The node id is empty, too long or holds whitespace or braces.
    #[error("node_id must be 1-64 characters without whitespace, '.', '{{' or '}}'")]
    BadNodeId,
    /// The lease is too short to be renewed reliably.
    #[error("lease_ttl must be at least 300 ms, got {0:?}")]
    LeaseTooShort(Duration),
    /// The event stream's shape is out of bounds.
    #[error(
        "event_shards must be 0 to 1024, event_retention at least event_shards, event_max_age at least 1 s"
    )]
    BadEventStream,
}

impl ClusterConfig {
    /// Checks the id and the lease.
    pub fn validate(&self) -> Result<(), ClusterConfigError> {
        if !valid_node_id(&self.node_id) {
            return Err(ClusterConfigError::BadNodeId);
        }
        if self.lease_ttl < Duration::from_millis(300) {
            return Err(ClusterConfigError::LeaseTooShort(self.lease_ttl));
        }
        if self.event_shards > 1024
            || (self.event_shards > 0
                && (self.event_retention < usize::from(self.event_shards)
                    || self.event_max_age < Duration::from_secs(1)))
        {
            return Err(ClusterConfigError::BadEventStream);
        }
        Ok(())
    }

    /// What each shard of the event stream keeps.
    pub(crate) fn keep(&self) -> crate::backend::stream::Keep {
        crate::backend::stream::Keep {
            per_shard: self
                .event_retention
                .div_ceil(usize::from(self.event_shards.max(1))),
            max_age: self.event_max_age,
        }
    }

    /// This run's incarnation: the id and a fresh epoch.
    pub(crate) fn incarnation(&self) -> crate::backend::Incarnation {
        // A valid node id (checked at build) and hex make a valid one.
        crate::backend::Incarnation::given(&format!("{}.{}", self.node_id, random_hex(4)))
    }
}

/// 1-64 characters without whitespace, control characters, `.` (it ends the
/// id in an incarnation and a resume token) or braces (Redis hash tags).
pub(crate) fn valid_node_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && !id
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '.' | '{' | '}'))
}

/// The node id an incarnation (`<node id>.<hex>`) or a clustered resume
/// token (`<node id>.<hex>`) names.
pub(crate) fn node_of(s: &str) -> &str {
    s.split_once('.').map_or(s, |(node, _)| node)
}

pub(crate) fn random_hex(bytes: usize) -> String {
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
