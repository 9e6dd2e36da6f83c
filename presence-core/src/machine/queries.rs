//! Extra read-only queries the server needs; kept apart from the transitions.

use super::*;

impl Machine {
    /// Connections that have joined `room`, live or in grace.
    pub fn room_connections(&self, room: &RoomId) -> Vec<ConnId> {
        self.room_users(room)
            .flat_map(|(_, u)| u.conns.iter())
            .filter(|c| self.conns.get(c).is_some_and(|c| c.rooms.contains(room)))
            .copied()
            .collect()
    }
}
