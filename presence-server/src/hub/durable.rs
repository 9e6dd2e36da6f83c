//! What outlives the process: restoring a data directory's (or a graceful
//! restart's) state, and handing the persist task what changed.

use std::sync::atomic::Ordering;

use presence_core::UserId;
use presence_core::machine::{ConnRecord, UserRecord};

use super::Hub;
use crate::data_dir::Loaded;

impl Hub {
    /// Takes back what a data directory (or, for connections, Redis) kept:
    /// users' durable state, and the connections of a graceful shutdown, in their offline grace from now so
    /// clients that come back within it resume silently. Nothing is announced:
    /// observers reconnect and get snapshots.
    pub(crate) fn restore(&self, loaded: Loaded) {
        let mut st = self.lock();
        let now = self.clock.now();
        for (user, record) in loaded.users {
            st.machine.restore_user(now, user, record);
        }
        let mut max_conn = 0;
        for record in loaded.conns {
            let conn = record.conn.0;
            let user = record.user.clone();
            match st.machine.restore_conn(now, record) {
                Ok(()) => {
                    max_conn = max_conn.max(conn);
                    // The cluster hears of them as of any other user.
                    if st.cluster.is_some() {
                        st.touched.insert(user);
                    }
                }
                Err(e) => tracing::warn!(conn, error = %e, "saved connection not restored"),
            }
        }
        self.next_conn.fetch_max(max_conn + 1, Ordering::Relaxed);
        st.machine.drain_events().for_each(drop);
        st.cluster_refresh(now);
        st.planned_wake = None;
        self.wake.notify_one();
    }

    /// The users whose durable state changed (`Some`) or who were forgotten
    /// (`None`) since the last call.
    pub(crate) fn take_durable(&self) -> Vec<(UserId, Option<UserRecord>)> {
        let mut st = self.lock();
        let st = &mut *st;
        let mut out: Vec<(UserId, Option<UserRecord>)> = st
            .durable
            .drain()
            .map(|u| {
                let record = st.machine.user_record(&u);
                (u, record)
            })
            .collect();
        out.extend(st.forgotten.drain(..).map(|u| (u, None)));
        out
    }

    /// A write failed: try these users again with the next one.
    pub(crate) fn retry_durable(&self, users: Vec<UserId>) {
        let mut st = self.lock();
        for user in users {
            if st.machine.view(&user).is_some() {
                st.durable.insert(user);
            } else {
                st.forgotten.push(user);
            }
        }
    }

    /// Every connection, live or in grace, for a planned restart.
    pub(crate) fn conn_records(&self) -> Vec<ConnRecord> {
        self.lock().machine.conn_records()
    }
}
