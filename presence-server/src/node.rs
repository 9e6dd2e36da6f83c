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
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            node_id: random_hex(6),
            lease_ttl: Duration::from_secs(5),
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
}

impl ClusterConfig {
    /// Checks the id and the lease.
    pub fn validate(&self) -> Result<(), ClusterConfigError> {
        let id = &self.node_id;
        if id.is_empty()
            || id.len() > 64
            || id
                .chars()
                .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '.' | '{' | '}'))
        {
            return Err(ClusterConfigError::BadNodeId);
        }
        if self.lease_ttl < Duration::from_millis(300) {
            return Err(ClusterConfigError::LeaseTooShort(self.lease_ttl));
        }
        Ok(())
    }

    /// This run's incarnation: the id and a fresh epoch.
    pub(crate) fn incarnation(&self) -> String {
        format!("{}.{}", self.node_id, random_hex(4))
    }
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
