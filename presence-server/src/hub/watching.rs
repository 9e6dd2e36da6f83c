//! Watch lists: who each connection watches, and the reverse index the
//! fan-out uses.

use std::collections::HashSet;

use presence_core::limits::MAX_WATCHED_PER_CONNECTION;
use presence_core::protocol::ErrorCode;
use presence_core::{ConnId, UserId};

use super::{Hub, Node};

impl Hub {
    /// Adds users to a connection's watch list (already authorised) and
    /// returns their presence now.
    pub fn watch(
        &self,
        conn: ConnId,
        generation: u64,
        users: Vec<UserId>,
    ) -> Result<(), ErrorCode> {
        self.step(|st, _| {
            if !st.is_current(conn, generation) {
                return Err(ErrorCode::Internal);
            }
            let current = st.watches.get(&conn);
            let added = users
                .iter()
                .filter(|u| current.is_none_or(|w| !w.contains(*u)))
                .collect::<HashSet<_>>()
                .len();
            if current.map_or(0, HashSet::len) + added > MAX_WATCHED_PER_CONNECTION {
                return Err(ErrorCode::TooManyWatched);
            }
            for user in &users {
                st.watchers.entry(user.clone()).or_default().insert(conn);
                st.watches.entry(conn).or_default().insert(user.clone());
            }
            if let Some(c) = st.cluster.as_mut() {
                if let Some(views) = c.watch(conn, users) {
                    st.send_watching(conn, views);
                }
                self.cluster_wake();
                return Ok(());
            }
            st.local_watching(conn, &users);
            Ok(())
        })
    }

    /// Removes users from a connection's watch list.
    pub fn unwatch(&self, conn: ConnId, generation: u64, users: &[UserId]) {
        self.step(|st, _| {
            if !st.is_current(conn, generation) {
                return;
            }
            for user in users {
                unwatch_one(st, conn, user);
            }
        });
    }
}

pub(super) fn unwatch_one(st: &mut Node, conn: ConnId, user: &UserId) {
    if let Some(w) = st.watches.get_mut(&conn) {
        w.remove(user);
    }
    if let Some(w) = st.watchers.get_mut(user) {
        w.remove(&conn);
        if w.is_empty() {
            st.watchers.remove(user);
        }
    }
}
