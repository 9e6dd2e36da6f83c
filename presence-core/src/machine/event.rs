//! What the machine tells the world.

use crate::ids::RoomId;
use crate::presence::Millis;
use crate::protocol::Diff;

/// One observable change, already in the form observers receive.
///
/// The broadcast layer appends `diff` to the batch of every room in `rooms`,
/// and, when `global` is set, to the batches of the user's watchers. Host apps
/// subscribing to events usually want the `global` ones: those are the
/// user-level `user_connected` / `user_disconnected` / `user_idle` /
/// `user_active` / status transitions; a non-global connected/disconnected is
/// a user entering or leaving one room while staying online.
/// `viewing` ([`Machine::with_view_events`](crate::Machine::with_view_events))
/// has neither rooms nor `global`: it is for the host alone.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Event {
    /// When it happened.
    pub at: Millis,
    /// The change.
    pub diff: Diff,
    /// Rooms whose members are told.
    pub rooms: Vec<RoomId>,
    /// Whether this changed the user's overall presence (watchers are told).
    pub global: bool,
}

impl Event {
    /// The event's product name: `user_connected`, `user_idle`, `typing_started`, …
    pub fn name(&self) -> &'static str {
        self.diff.name()
    }
}
