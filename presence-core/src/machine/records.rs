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
    /// Who sees their last seen and markers.
    #[serde(default, skip_serializing_if = "crate::privacy::Privacy::is_open")]
    pub privacy: crate::privacy::Privacy,
}

/// Users one [`Machine::forget_offline`] forgets at most: a first pass
/// after a long stop may find many due, and each is work under the
/// server's lock.
pub const FORGET_AT_ONCE: usize = 10_000;

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
            privacy: u.privacy,
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
        u.privacy = record.privacy;
        // Markers read while invisible were never shown; this restores the
        // ones of a user who is not invisible now.
        if u.status != Status::Invisible && u.privacy.receipts == crate::privacy::Receipts::On {
            for (room, marker) in &u.receipts {
                self.reads
                    .entry(room.clone())
                    .or_default()
                    .insert(user.clone(), *marker);
            }
        }
        self.offline
            .insert((u.gone.unwrap_or_default(), user.clone()));
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

    /// Gives the user's connection behind `token` to another node, which
    /// takes it back with [`Machine::restore_conn`] for its client's resume:
    /// the record, and whether the connection was live (its socket is then
    /// superseded: the caller closes it). The token resumes nothing here any
    /// more; the connection stays for the short leave grace, so the user's
    /// record here goes only after the other node's shows them, and nobody
    /// sees a flap. `None` if no connection of `user` holds the token.
    pub fn hand_over(
        &mut self,
        now: Millis,
        user: &UserId,
        token: &ResumeToken,
    ) -> Option<(ConnRecord, bool)> {
        let conn = *self.tokens.get(token)?;
        let c = self.conns.get(&conn).filter(|c| c.user == *user)?;
        let record = ConnRecord {
            conn,
            user: c.user.clone(),
            token: c.token.clone(),
            activity: c.activity,
            rooms: c.rooms.clone(),
        };
        let live = matches!(c.link, Link::Live { .. });
        self.tokens.remove(token);
        self.leaving(now, conn);
        Some((record, live))
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
    /// the longest gone beyond `retention.max_offline`, at most
    /// [`FORGET_AT_ONCE`] (call again while it returns that many). Returns
    /// who was forgotten, so a store can drop them too. Costs what it
    /// forgets, not a pass over the users.
    pub fn forget_offline(&mut self, now: Millis, retention: Retention) -> Vec<UserId> {
        let cutoff = Millis(
            now.0
                .saturating_sub(u64::try_from(retention.keep_for.as_millis()).unwrap_or(u64::MAX)),
        );
        let mut forgotten = Vec::new();
        while forgotten.len() < FORGET_AT_ONCE {
            let due = self.offline.first().is_some_and(|(gone, _)| *gone < cutoff)
                || self.offline.len() > retention.max_offline;
            if !due {
                break;
            }
            let Some((_, id)) = self.offline.pop_first() else {
                break;
            };
            let Some(u) = self.users.remove(&id) else {
                continue;
            };
            for room in u.receipts.keys() {
                if let Some(reads) = self.reads.get_mut(room) {
                    reads.remove(&id);
                    if reads.is_empty() {
                        self.reads.remove(room);
                    }
                }
            }
            forgotten.push(id);
        }
        forgotten
    }

    /// Whether the offline index holds exactly the users with no
    /// connection, each at their departure.
    #[cfg(test)]
    pub(crate) fn offline_index_is_exact(&self) -> bool {
        let want: BTreeSet<(Millis, UserId)> = self
            .users
            .iter()
            .filter(|(_, u)| u.conns.is_empty())
            .map(|(id, u)| (u.gone.unwrap_or_default(), id.clone()))
            .collect();
        want == self.offline
    }
}
