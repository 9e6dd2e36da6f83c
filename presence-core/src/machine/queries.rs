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

impl Machine {
    /// Rooms any of the user's connections (live or in grace) has joined.
    pub fn rooms_of_user(&self, user: &UserId) -> Vec<RoomId> {
        self.users
            .get(user)
            .map(|u| u.rooms.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// Whether the user has a connection (live or in grace) in `room`.
    pub fn in_room(&self, room: &RoomId, user: &UserId) -> bool {
        self.rooms.get(room).is_some_and(|m| m.contains(user))
    }
}

impl Machine {
    /// Whether any of the user's live connections is active, whatever their
    /// status (invisible included): for a host deciding to send a push.
    pub fn active_anywhere(&self, user: &UserId) -> bool {
        self.connections_of(user).iter().any(|c| {
            self.conns.get(c).is_some_and(|c| {
                matches!(c.link, Link::Live { .. }) && c.activity == Activity::Active
            })
        })
    }
}

impl Machine {
    /// This node's record of `user` for the cluster (see
    /// [`crate::cluster`]); `None` if the user was never seen here.
    pub fn node_record(&self, user: &UserId) -> Option<NodeRecord> {
        let u = self.users.get(user)?;
        let shown = aggregate(
            u.conns
                .iter()
                .filter_map(|c| self.conns.get(c).map(|c| c.activity)),
        );
        let mut rooms: Vec<RoomId> = u.rooms.keys().cloned().collect();
        rooms.sort();
        let mut typing: Vec<RoomId> = u.typing.keys().cloned().collect();
        typing.sort();
        Some(NodeRecord {
            shown,
            last_active: u.last_active,
            // An invisible user was last seen when they went invisible.
            last_seen: if u.conns.is_empty() || u.status == Status::Invisible {
                u.last_seen
            } else {
                None
            },
            rooms,
            typing,
            status: u.status,
            text: u.text.clone(),
            status_at: u.status_at,
            custom: u.custom.clone(),
            privacy: u.privacy,
            privacy_at: u.privacy_at,
        })
    }
}

impl Machine {
    /// A room's visible members, counted by state.
    pub fn counts(&self, room: &RoomId) -> crate::protocol::Counts {
        crate::protocol::Counts::of(self.room_users(room).map(|(_, u)| u.shown.state()))
    }

    /// Users with a connection in the room, invisible ones included: at
    /// least its online count, in constant time.
    pub fn room_size(&self, room: &RoomId) -> usize {
        self.rooms.get(room).map_or(0, HashSet::len)
    }

    /// A large room's snapshot members: the first online ones by user id
    /// (see [`crate::large`]).
    pub fn first_online(&self, room: &RoomId) -> Vec<PresenceView> {
        let online = self.room_users(room).filter(|(_, u)| u.visible()).collect();
        crate::large::snapshot_members(online)
            .into_iter()
            .map(|(id, u)| u.view(id))
            .collect()
    }
}
