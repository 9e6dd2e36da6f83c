//! The hub's side of running several nodes over a shared store: what this
//! node must tell the store (its node-level record of each user it holds),
//! and what it waits for from it (snapshots and watch lists computed from the
//! cluster-level state).
//!
//! Nothing here does I/O: the hub fills these under its lock, the store's
//! task ([`crate::redis`]) takes them once per batch window and sends them in
//! one script call. A record is the node's whole truth about one user (state,
//! rooms, typing), never a delta, so sending it twice, or again after an
//! outage, is harmless: the store diffs it against what it holds.

use std::collections::{BTreeSet, HashMap, HashSet};

use presence_core::{
    IdleReason, Machine, Millis, PresenceState, RoomId, Status, StatusText, UserId,
};
use serde::Serialize;

/// Read markers, status settings and reads waiting while the store is
/// unreachable are capped so an outage cannot grow memory without bound;
/// records are per user and need no cap.
const MAX_PENDING_OPS: usize = 100_000;

/// One node's view of one user, as the store merges it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub(crate) struct Record {
    /// The user.
    pub u: UserId,
    /// `a`, an idle reason, or `o` (offline or invisible on this node).
    pub n: &'static str,
    /// Last active, ms (0: never).
    pub la: u64,
    /// Last seen when offline here, ms (0: unknown).
    pub ls: u64,
    /// Rooms the user is in on this node.
    pub r: Vec<RoomId>,
    /// Rooms the user types in on this node.
    pub t: Vec<RoomId>,
    /// Read markers to merge (forward only), as decimal strings: Lua numbers
    /// are doubles and its JSON encoder keeps 14 digits.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub rd: Vec<(RoomId, String)>,
    /// The user's status and text, with the time it was set (0: this node
    /// does not know it was set; only fills in an unknown status).
    pub st: (Status, String, u64),
}

impl Record {
    /// Whether the node holds nothing of the user (the store drops its fields).
    fn is_empty(&self) -> bool {
        self.n == "o" && self.r.is_empty() && self.t.is_empty()
    }
}

/// A snapshot the store must compute for a connection that joined a room.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct SnapRequest {
    pub c: u64,
    pub room: RoomId,
}

/// The current presence of users a connection started watching.
#[derive(Clone, Debug, Serialize)]
pub(crate) struct WatchRequest {
    pub c: u64,
    pub users: Vec<UserId>,
}

/// Everything one script call carries.
#[derive(Debug, Default, Serialize)]
pub(crate) struct Outgoing {
    pub users: Vec<Record>,
    pub snaps: Vec<SnapRequest>,
    pub watch: Vec<WatchRequest>,
    /// Users new on this node whose status the store should tell us.
    pub ss: Vec<UserId>,
}

impl Outgoing {
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
            && self.snaps.is_empty()
            && self.watch.is_empty()
            && self.ss.is_empty()
    }
}

/// The hub's cluster bookkeeping (present only when a store is configured).
#[derive(Default)]
pub(crate) struct ClusterState {
    /// The subscription to cluster events is alive.
    pub sub_ok: bool,
    /// The last command to the store succeeded.
    pub cmd_ok: bool,
    /// The store has been cleaned of this node's previous incarnation.
    pub ready: bool,
    /// Users whose record must be sent.
    pub dirty: HashSet<UserId>,
    reads: HashMap<(UserId, RoomId), u64>,
    statuses: HashMap<UserId, (Status, Option<StatusText>, Millis)>,
    pub snaps: Vec<SnapRequest>,
    pub watch: Vec<WatchRequest>,
    pub sync_status: HashSet<UserId>,
    /// Rooms each user types in on this node (from the machine's events).
    pub typing: HashMap<UserId, BTreeSet<RoomId>>,
    /// Last record sent per user, for re-publishing and reconciling.
    pub published: HashMap<UserId, Record>,
    /// Connections that joined a room and wait for its cluster snapshot:
    /// diffs for that room are held back from them until it arrives.
    pub awaiting: HashMap<u64, Vec<RoomId>>,
}

impl ClusterState {
    /// Whether cluster delivery is in force (else: local delivery).
    pub fn up(&self) -> bool {
        self.sub_ok && self.cmd_ok && self.ready
    }

    pub fn read(&mut self, user: UserId, room: RoomId, marker: u64) {
        if self.reads.len() < MAX_PENDING_OPS
            || self.reads.contains_key(&(user.clone(), room.clone()))
        {
            let m = self.reads.entry((user.clone(), room)).or_insert(0);
            *m = (*m).max(marker);
        }
        self.dirty.insert(user);
    }

    pub fn status(&mut self, user: UserId, status: Status, text: Option<StatusText>, at: Millis) {
        if self.statuses.len() < MAX_PENDING_OPS || self.statuses.contains_key(&user) {
            self.statuses.insert(user.clone(), (status, text, at));
        }
        self.dirty.insert(user);
    }

    pub fn typing(&mut self, user: &UserId, room: &RoomId, on: bool) {
        if on {
            self.typing
                .entry(user.clone())
                .or_default()
                .insert(room.clone());
        } else if let Some(rooms) = self.typing.get_mut(user) {
            rooms.remove(room);
            if rooms.is_empty() {
                self.typing.remove(user);
            }
        }
    }

    pub fn is_awaiting(&self, conn: u64, room: &RoomId) -> bool {
        self.awaiting.get(&conn).is_some_and(|r| r.contains(room))
    }

    /// Takes everything pending, computing each dirty user's record from the
    /// machine now (so changes within the window are coalesced).
    pub fn take(&mut self, machine: &Machine) -> Outgoing {
        let mut out = Outgoing::default();
        let mut reads: HashMap<UserId, Vec<(RoomId, String)>> = HashMap::new();
        for ((user, room), marker) in self.reads.drain() {
            reads
                .entry(user)
                .or_default()
                .push((room, marker.to_string()));
        }
        for user in std::mem::take(&mut self.dirty) {
            let mut rec = record(machine, self.typing.get(&user), &user);
            if let Some((status, text, at)) = self.statuses.remove(&user) {
                rec.st = (
                    status,
                    text.map(|t| t.as_str().to_owned()).unwrap_or_default(),
                    at.0,
                );
            }
            rec.rd = reads.remove(&user).unwrap_or_default();
            if rec.is_empty() {
                self.published.remove(&user);
            } else {
                let mut kept = rec.clone();
                kept.rd.clear();
                kept.st.2 = 0;
                self.published.insert(user, kept);
            }
            out.users.push(rec);
        }
        out.snaps = std::mem::take(&mut self.snaps);
        out.watch = std::mem::take(&mut self.watch);
        out.ss = self.sync_status.drain().collect();
        out
    }

    /// A call failed: its records will be recomputed and its operations sent
    /// again. Returns the requests the hub must now answer locally.
    pub fn failed(&mut self, out: Outgoing) -> (Vec<SnapRequest>, Vec<WatchRequest>) {
        for rec in out.users {
            for (room, marker) in &rec.rd {
                if let Ok(m) = marker.parse::<u64>() {
                    self.read(rec.u.clone(), room.clone(), m);
                }
            }
            if rec.st.2 > 0 {
                let text = StatusText::new(&rec.st.1).ok().flatten();
                self.status(rec.u.clone(), rec.st.0, text, Millis(rec.st.2));
            }
            self.dirty.insert(rec.u);
        }
        self.sync_status.extend(out.ss);
        (out.snaps, out.watch)
    }

    /// Users whose record differs from what was last sent although no event
    /// said so: the machine emits nothing for users it shows offline (an
    /// invisible user leaving a room, or their last connection expiring).
    pub fn reconcile(&mut self, machine: &Machine) {
        let stale: Vec<UserId> = self
            .published
            .iter()
            .filter(|(_, rec)| rec.n == "o")
            .filter(|(user, rec)| {
                let now = record(machine, self.typing.get(*user), user);
                now.n != rec.n || now.r != rec.r || now.t != rec.t
            })
            .map(|(user, _)| user.clone())
            .collect();
        self.dirty.extend(stale);
    }
}

fn reason_name(r: IdleReason) -> &'static str {
    match r {
        IdleReason::NoInput => "no_input",
        IdleReason::Blurred => "blurred",
        IdleReason::Hidden => "hidden",
        IdleReason::Locked => "locked",
    }
}

/// This node's record of `user`, from its machine.
fn record(machine: &Machine, typing: Option<&BTreeSet<RoomId>>, user: &UserId) -> Record {
    let (status, text) = machine.status_of(user);
    let st = (
        status,
        text.map(|t| t.as_str().to_owned()).unwrap_or_default(),
        0,
    );
    let Some(view) = machine
        .view(user)
        .filter(|_| !machine.connections_of(user).is_empty())
    else {
        return Record {
            u: user.clone(),
            n: "o",
            la: 0,
            ls: 0,
            r: Vec::new(),
            t: Vec::new(),
            rd: Vec::new(),
            st,
        };
    };
    let n = match view.state {
        PresenceState::Active => "a",
        PresenceState::Idle => view.reason.map_or("no_input", reason_name),
        PresenceState::Offline => "o",
    };
    let mut r = machine.rooms_of_user(user);
    r.sort();
    let t = typing
        .map(|t| t.iter().filter(|room| r.contains(room)).cloned().collect())
        .unwrap_or_default();
    Record {
        u: user.clone(),
        n,
        la: view.last_active.map_or(0, |m| m.0),
        ls: view.last_seen.map_or(0, |m| m.0),
        r,
        t,
        rd: Vec::new(),
        st,
    }
}
