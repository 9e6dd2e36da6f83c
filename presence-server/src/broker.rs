//! The seam for running several nodes: each node publishes the events its
//! own machine emits, and delivers the events other nodes publish to its own
//! sockets (see [`crate::PresenceServer::deliver_remote`]).
//!
//! A single node needs nobody to talk to, so the default [`LocalBroker`]
//! publishes nowhere. A Redis pub/sub broker implements the same trait.

use presence_core::Event;

/// Carries this node's events to the other nodes.
pub trait Broker: Send + Sync + 'static {
    /// Publishes events emitted on this node, oldest first. Called with the
    /// hub's lock held: implementations must only enqueue (e.g. into a
    /// channel drained by their own task), never block or await.
    fn publish(&self, events: &[Event]);
}

/// A single node: there is no other node to tell.
#[derive(Debug, Clone, Copy, Default)]
pub struct LocalBroker;

impl Broker for LocalBroker {
    fn publish(&self, _events: &[Event]) {}
}
