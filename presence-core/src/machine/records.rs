//! What outlives the process: user state worth keeping (status, text, last
//! seen, read markers) and, across a planned restart, the connections
//! themselves, so clients that come back within the grace resume silently.
//!
//! The machine only turns its state into records and back; where they are
//! kept (a data directory, Redis) is the server's business.

use serde::{Deserialize, Serialize};

use super::*;

/// A user's durable state: what a restart must not forget.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct UserRecord {
    /// The status they set (invisible included).
    pub status: Status,
    /// Their status text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<StatusText>,
    /// When observers last saw them connected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<Millis>,
    /// When they last had no connection left (for retention).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gone: Option<Millis>,
    /// Read markers per room.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub receipts: Vec<(RoomId, u64)>,
}

/// One connection as it was when the server stopped.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct ConnRecord {
    /// The connection's id.
    pub conn: ConnId,
    /// Who it spoke for.
    pub user: UserId,
    /// The token its client will present.
    pub token: ResumeToken,
    /// Its last activity.
    pub activity: Activity,
    /// The rooms it had joined.
    pub rooms: Vec<RoomId>,
}

/// How long offline users are remembered, and how many at most: the
/// machine's memory (and a data directory) must not grow with every user
/// who ever connected.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct Retention {
    /// Forget a user this long after their last connection went.
    pub keep_for: std::time::Duration,
    /// Beyond this many offline users, the longest gone are forgotten first.
    pub max_offline: usize,
}

impl Default for Retention {
    fn default() -> Self {
        Self {
            keep_for: std::time::Duration::from_secs(30 * 24 * 3600),
            max_offline: 1_000_000,
        }
    }
}

impl Machine {
    /// The user's durable state; `None` if unknown.
    pub fn user_record(&self, user: &UserId) -> Option<UserRecord> {
        let u = self.users.get(user)?;
        let mut receipts: Vec<(RoomId, u64)> =
            u.receipts.iter().map(|(r, m)| (r.clone(), *m)).collect();
        receipts.sort_unstable();
        Some(UserRecord {
            status: u.status,
            text: u.text.clone(),
            last_seen: u.last_seen,
            gone: u.gone,
            receipts,
        })
    }

    /// Takes back a user's durable state after a restart at `now`. A user
    /// the machine already knows is left as it is: what happened since is
    /// newer. A user with no known departure time ages from `now`.
    pub fn restore_user(&mut self, now: Millis, user: UserId, record: UserRecord) {
        if self.users.contains_key(&user) {
            return;
        }
        let mut u = User::new();
        u.status = record.status;
        u.text = record.text;
        u.last_seen = record.last_seen;
        u.gone = Some(record.gone.unwrap_or(now));
        u.receipts = record.receipts.into_iter().collect();
        self.users.insert(user, u);
    }

    /// Every connection, live or in grace, for a planned restart.
    pub fn conn_records(&self) -> Vec<ConnRecord> {
        let mut out: Vec<ConnRecord> = self
            .conns
            .iter()
            .map(|(id, c)| ConnRecord {
                conn: *id,
                user: c.user.clone(),
                token: c.token.clone(),
                activity: c.activity,
                rooms: c.rooms.clone(),
            })
            .collect();
        out.sort_unstable_by_key(|c| c.conn);
        out
    }

    /// Takes back a connection saved by [`Machine::conn_records`], without a
    /// socket: it is in its offline grace from `now`, so its client can
    /// resume it with its token, and observers joining meanwhile see the user
    /// as they were. Announces nothing that was already shown before the
    /// restart (drain and drop the events of a restore).
    pub fn restore_conn(&mut self, now: Millis, record: ConnRecord) -> Result<(), MachineError> {
        let ConnRecord {
            conn,
            user,
            token,
            activity,
            rooms,
        } = record;
        self.connect(now, user, conn, token, None, activity)?;
        for room in rooms.into_iter().take(MAX_ROOMS_PER_CONNECTION) {
            self.join(now, conn, room)?;
        }
        self.dropped(now, conn);
        Ok(())
    }

    /// Forgets offline users gone for longer than `retention.keep_for`, then
    /// the longest gone beyond `retention.max_offline`. Returns who was
    /// forgotten, so a store can drop them too. Costs one pass over users.
    pub fn forget_offline(&mut self, now: Millis, retention: Retention) -> Vec<UserId> {
        let mut offline: Vec<(Millis, UserId)> = self
            .users
            .iter()
            .filter(|(_, u)| u.conns.is_empty())
            .map(|(id, u)| (u.gone.unwrap_or_default(), id.clone()))
            .collect();
        let cutoff = Millis(
            now.0
                .saturating_sub(u64::try_from(retention.keep_for.as_millis()).unwrap_or(u64::MAX)),
        );
        offline.sort_unstable();
        let expired = offline.partition_point(|(gone, _)| *gone < cutoff);
        let over = offline.len().saturating_sub(retention.max_offline);
        let forget = expired.max(over);
        let forgotten: Vec<UserId> = offline.into_iter().take(forget).map(|(_, id)| id).collect();
        for id in &forgotten {
            self.users.remove(id);
        }
        forgotten
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::presence::IdleReason;

    const T0: Millis = Millis(1_000_000);

    fn policy() -> TimingPolicy {
        TimingPolicy {
            heartbeat_interval: Duration::from_secs(10),
            heartbeat_timeout: Duration::from_secs(30),
            offline_grace: Duration::from_secs(10),
            leave_grace: Duration::from_secs(2),
            idle_after: Duration::from_secs(60),
            typing_ttl: Duration::from_secs(6),
        }
    }

    fn id(s: &str) -> UserId {
        UserId::new(s).unwrap()
    }

    fn room(s: &str) -> RoomId {
        RoomId::new(s).unwrap()
    }

    fn tok(n: u64) -> ResumeToken {
        ResumeToken::new(format!("tok{n}")).unwrap()
    }

    #[test]
    fn a_user_record_round_trips_through_a_new_machine() {
        let mut m = Machine::new(policy());
        m.connect(T0, id("ana"), ConnId(1), tok(1), None, Activity::Active)
            .unwrap();
        m.join(T0, ConnId(1), room("r")).unwrap();
        m.set_status(
            T0,
            ConnId(1),
            Status::Busy,
            StatusText::new("focus").unwrap(),
        )
        .unwrap();
        m.read(T0, ConnId(1), &room("r"), 42).unwrap();
        m.leaving(T0.after(Duration::from_secs(1)), ConnId(1));
        m.tick(T0.after(Duration::from_secs(3)));
        let record = m.user_record(&id("ana")).unwrap();
        assert_eq!(record.status, Status::Busy);
        assert_eq!(record.receipts, [(room("r"), 42)]);
        assert!(record.last_seen.is_some() && record.gone.is_some());
        let json = serde_json::to_string(&record).unwrap();
        let back: UserRecord = serde_json::from_str(&json).unwrap();
        let mut fresh = Machine::new(policy());
        fresh.restore_user(T0, id("ana"), back);
        assert_eq!(fresh.view(&id("ana")), m.view(&id("ana")));
        assert_eq!(fresh.user_record(&id("ana")), Some(record));
    }

    #[test]
    fn a_restored_connection_resumes_silently_within_the_grace() {
        let mut m = Machine::new(policy());
        let idle = Activity::Idle(IdleReason::Hidden);
        m.connect(T0, id("ana"), ConnId(7), tok(7), None, idle)
            .unwrap();
        m.join(T0, ConnId(7), room("r")).unwrap();
        let saved = m.conn_records();
        let mut fresh = Machine::new(policy());
        for c in saved {
            fresh.restore_conn(T0, c).unwrap();
        }
        fresh.drain_events().for_each(drop);
        assert_eq!(fresh.members(&room("r")).len(), 1, "shown during the grace");
        let out = fresh
            .connect(
                T0.after(Duration::from_secs(5)),
                id("ana"),
                ConnId(8),
                tok(8),
                Some(&tok(7)),
                idle,
            )
            .unwrap();
        assert!(out.resumed);
        assert_eq!(out.conn, ConnId(7));
        assert_eq!(fresh.rooms_of(ConnId(7)), [room("r")]);
        assert_eq!(fresh.drain_events().count(), 0, "observers see nothing");
        // One that does not come back goes offline after the grace.
        let mut lonely = Machine::new(policy());
        for c in m.conn_records() {
            lonely.restore_conn(T0, c).unwrap();
        }
        lonely.drain_events().for_each(drop);
        lonely.tick(T0.after(Duration::from_secs(10)));
        let names: Vec<&str> = lonely.drain_events().map(|e| e.name()).collect();
        assert_eq!(names, ["user_disconnected"]);
    }

    #[test]
    fn offline_users_are_forgotten_by_age_then_by_count() {
        let mut m = Machine::new(policy());
        for (n, name) in ["a", "b", "c", "d"].iter().enumerate() {
            let rec = UserRecord {
                status: Status::Away,
                text: None,
                last_seen: None,
                gone: Some(Millis(1000 * (n as u64 + 1))),
                receipts: Vec::new(),
            };
            m.restore_user(Millis(0), id(name), rec);
        }
        m.connect(
            Millis(0),
            id("online"),
            ConnId(1),
            tok(1),
            None,
            Activity::Active,
        )
        .unwrap();
        let keep = |secs, max| Retention {
            keep_for: Duration::from_secs(secs),
            max_offline: max,
        };
        // At 4.5 s with 2 s kept: a (1 s) and b (2 s) are too old.
        assert_eq!(
            m.forget_offline(Millis(4500), keep(2, 10)),
            [id("a"), id("b")]
        );
        assert_eq!(m.forget_offline(Millis(4500), keep(60, 1)), [id("c")]);
        assert!(m.view(&id("d")).is_some());
        assert!(m.view(&id("online")).is_some(), "connected users stay");
    }
}
