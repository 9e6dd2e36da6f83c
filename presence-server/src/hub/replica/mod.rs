//! What one node follows of the cluster, and what it owes the backend. No
//! I/O: the hub calls it under its lock; the cluster tasks
//! (`crate::cluster_tasks`) take what is pending and hand back what arrived.
//! Its parts, one concern each: which incarnations live ([`liveness`]),
//! what the node follows ([`interest`]) and what it owes ([`outbox`]); this
//! module holds the records and the views computed from them.
//!
//! The node keeps the records (every incarnation's, see
//! [`presence_core::cluster`]) of the users its sockets care about: members
//! of the rooms they joined, users they watch, and its own users. For each
//! such user it remembers the view it last announced here; whenever a record
//! or a lease changes it recomputes the view and announces the difference
//! to its own sockets. Its own records come straight from its machine, so a
//! local change is shown locally at once and to the others one write later.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use presence_core::cluster::{ClusterView, Liveness, Records, transitions};
use presence_core::protocol::{Counts, Receipt, ServerMessage};
use presence_core::{ConnId, Event, Machine, Millis, PresenceView, RoomId, UserId};

use indexmap::IndexMap;

use crate::backend::wire::{BusMessage, UserUpdate};
use crate::backend::{Incarnation, Owed, Stored, Topic, UserRecords, Written};

mod interest;
mod liveness;
mod outbox;

use interest::Interest;
use liveness::Lives;
use outbox::Outbox;

/// How often a pass starts that drops the users nobody here follows any more.
const SWEEP: Duration = Duration::from_secs(10);
/// Users a pass looks at per round, under the hub's lock. One pass over
/// 250,000 users at once held it for over 100 ms every 10 s, and every
/// frame of the node waited (BENCHMARKS.md, "A million users").
const SWEEP_SLICE: usize = 4_096;

/// The host events owed for one change of a user's records ([`Owed`]).
#[derive(Debug)]
pub(crate) struct Announcement {
    pub user: UserId,
    /// The change's [`Owed::id`], to settle once its events are appended.
    pub owed: String,
    /// Whether this node (or an earlier run of it) made the change.
    pub own: bool,
    /// Its events, each with its id (`<change id>:<n>:<user>`: the same
    /// whichever node computes them).
    pub events: Vec<(String, Event)>,
}

struct Known {
    records: Records,
    /// What this node last announced of the user.
    shown: ClusterView,
}

/// How the link to the backend fares.
#[derive(Default, Clone, Copy)]
pub(crate) struct LinkHealth {
    /// The last command succeeded.
    pub cmd_ok: bool,
    /// The node has registered and settled its previous incarnation.
    pub ready: bool,
    /// Since when calls have been failing (`None` while they succeed).
    pub down_since: Option<Millis>,
    /// The outage outlasted the lease, and was logged as an error.
    pub cut_off: bool,
}

/// What one round of the cluster task sends.
#[derive(Debug, Default)]
pub(crate) struct Take {
    pub writes: Vec<(UserId, Stored)>,
    pub memberships: Vec<(RoomId, UserId, bool)>,
    pub reads: Vec<(RoomId, UserId, u64)>,
    pub subscribe: Vec<Topic>,
    pub unsubscribe: Vec<Topic>,
    pub fetch: Vec<UserId>,
    /// Rooms to read, each with the members this node already shows there
    /// (read too: one may have left while nobody here followed the room).
    pub sync: Vec<(RoomId, Vec<UserId>)>,
}

impl Take {
    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
            && self.memberships.is_empty()
            && self.reads.is_empty()
            && self.subscribe.is_empty()
            && self.unsubscribe.is_empty()
            && self.fetch.is_empty()
            && self.sync.is_empty()
    }
}

/// The node's replica. See the module docs.
pub(crate) struct Replica {
    pub me: Incarnation,
    /// In insertion order, so that a sweep can go over it a slice at a time.
    users: IndexMap<UserId, Known>,
    /// Room → users shown in it here (an index over `users`).
    members: HashMap<RoomId, HashSet<UserId>>,
    lives: Lives,
    interest: Interest,
    outbox: Outbox,
    pub health: LinkHealth,
    /// Users whose status or text changed since the hub last looked.
    statuses: Vec<UserId>,
    next_sweep: Millis,
    /// Where the sweep's pass is in `users`, while one is under way.
    sweep_at: Option<usize>,
}

impl Replica {
    pub fn new(me: Incarnation, now: Millis) -> Self {
        // The node's own topic, for resumes handed over between nodes.
        let interest = Interest::new(Topic::Node(crate::cluster_config::node_of(&me).to_owned()));
        Self {
            me,
            users: IndexMap::new(),
            members: HashMap::new(),
            lives: Lives::default(),
            interest,
            outbox: Outbox::new(now),
            health: LinkHealth::default(),
            statuses: Vec::new(),
            next_sweep: Millis(0),
            sweep_at: None,
        }
    }

    /// Whether an incarnation of `node` holds a live lease.
    pub fn node_alive(&self, node: &str) -> bool {
        self.lives.node_alive(node)
    }

    /// Whether cluster delivery is healthy (for `/healthz`).
    pub fn up(&self) -> bool {
        self.health.cmd_ok && self.health.ready
    }

    fn liveness(&self, inc: &str) -> Liveness {
        self.lives.of(inc, &self.me)
    }

    fn view_of(&self, records: &Records) -> ClusterView {
        records.view(|inc| self.liveness(inc))
    }

    /// Whether a live incarnation's record shows the user active, before
    /// invisibility.
    pub fn active_in(&self, recs: &UserRecords) -> bool {
        recs.iter().any(|(inc, s)| {
            s.record.shown == presence_core::machine::Shown::Active
                && self.liveness(inc) == Liveness::Live
        })
    }

    /// The view of a set of records fetched for a query.
    pub fn view_of_records(&self, recs: &UserRecords) -> ClusterView {
        self.view_assuming(recs, None)
    }

    /// The view of fetched records, counting `alive` as live whatever the
    /// last lease round said.
    pub fn view_assuming(&self, recs: &UserRecords, alive: Option<&str>) -> ClusterView {
        records_of(recs).view(|inc| {
            if Some(inc) == alive {
                Liveness::Live
            } else {
                self.liveness(inc)
            }
        })
    }

    /// The user's view here, if followed.
    pub fn view(&self, user: &UserId) -> Option<&ClusterView> {
        self.users.get(user).map(|k| &k.shown)
    }

    /// Whether members of `room` here see `user` in it.
    pub fn shown_in(&self, user: &UserId, room: &RoomId) -> bool {
        self.view(user).is_some_and(|v| v.shown_in(room))
    }

    /// The machine changed something of `user`: refresh this node's record
    /// and announce what the cluster view now shows. Returns the events.
    pub fn touch(&mut self, machine: &Machine, user: &UserId, now: Millis) -> Vec<Event> {
        let Some(rec) = machine.node_record(user) else {
            return Vec::new();
        };
        let known = self.users.entry(user.clone()).or_insert_with(|| Known {
            records: Records::default(),
            shown: ClusterView::offline(),
        });
        let same = known.records.get(&self.me).is_some_and(|(_, r)| *r == rec);
        // Privacy settings set here (a backend's, for a user this node never
        // held) live only in this node's record: written, or they are lost.
        let set_here = rec.privacy_at > Millis(0);
        if !same && (rec.holds() || set_here || known.records.get(&self.me).is_some()) {
            let seq = self.outbox.changed(user);
            known.records.apply(&self.me, seq, rec);
        }
        self.interest.check(Topic::User(user.clone()));
        for room in machine.rooms_of_user(user) {
            self.interest.check(Topic::Room(room));
        }
        for room in self.outbox.written_rooms(user) {
            self.interest.check(Topic::Room(room.clone()));
        }
        self.refresh(user, now)
    }

    /// Recomputes `user`'s view; returns what to announce here.
    fn refresh(&mut self, user: &UserId, now: Millis) -> Vec<Event> {
        let Some(known) = self.users.get(user) else {
            return Vec::new();
        };
        let after = self.view_of(&known.records);
        if after == known.shown {
            return Vec::new();
        }
        let events = transitions(user, &known.shown, &after, now);
        if after.status_changed(&known.shown) {
            self.statuses.push(user.clone());
        }
        let before_rooms: Vec<RoomId> = known.shown.rooms.iter().cloned().collect();
        for room in before_rooms {
            if !after.shown_in(&room)
                && let Some(m) = self.members.get_mut(&room)
            {
                m.remove(user);
                if m.is_empty() {
                    self.members.remove(&room);
                }
            }
        }
        for room in after.rooms.iter().filter(|_| after.visible()) {
            self.members
                .entry(room.clone())
                .or_default()
                .insert(user.clone());
        }
        if let Some(known) = self.users.get_mut(user) {
            known.shown = after;
        }
        events
    }

    /// Takes other incarnations' records (this node's own come from its
    /// machine); returns what to announce here.
    pub fn apply(&mut self, user: &UserId, recs: &UserRecords, now: Millis) -> Vec<Event> {
        let known = self.users.entry(user.clone()).or_insert_with(|| Known {
            records: Records::default(),
            shown: ClusterView::offline(),
        });
        let mut changed = false;
        for (inc, s) in recs {
            if *inc == self.me {
                continue;
            }
            self.lives.seen(inc, now);
            changed |= known.records.apply(inc, s.seq, s.record.clone());
        }
        if changed {
            self.refresh(user, now)
        } else {
            Vec::new()
        }
    }

    /// A message from the bus; returns what to announce here, and the read
    /// markers to show (room, user, marker).
    pub fn incoming(
        &mut self,
        msg: BusMessage,
        now: Millis,
    ) -> (Vec<Event>, Vec<(RoomId, UserId, u64)>) {
        let mut events = Vec::new();
        for u in msg.u {
            events.extend(self.apply(&u.user, &u.recs, now));
        }
        let mut reads = Vec::new();
        for (room, user, marker) in msg.rd {
            if self.interest.receipt(&room, &user, marker) && self.shown_in(&user, &room) {
                reads.push((room, user, marker));
            }
        }
        (events, reads)
    }

    /// A local read marker moved: tell the backend.
    pub fn read(&mut self, room: RoomId, user: UserId, marker: u64) {
        self.interest.receipt(&room, &user, marker);
        self.outbox.read(room, user, marker);
    }

    /// A lease round that started at `started` found `live` alive; returns
    /// what to announce here for users whose incarnations died or returned.
    /// An absent incarnation is declared dead only if `may_judge` it (the
    /// lease store answered long enough for it to renew, see
    /// `crate::cluster_tasks`); returns are always taken.
    pub fn set_liveness(
        &mut self,
        live: Vec<Incarnation>,
        dead: &[Incarnation],
        started: Millis,
        may_judge: impl Fn(&str) -> bool,
        now: Millis,
    ) -> Vec<Event> {
        let flipped = self
            .lives
            .round(&self.me, live, dead, started, may_judge, now);
        if flipped.is_empty() {
            return Vec::new();
        }
        let users: Vec<UserId> = self
            .users
            .iter()
            .filter(|(_, k)| k.records.iter().any(|(inc, _, _)| flipped.contains(inc)))
            .map(|(u, _)| u.clone())
            .collect();
        users.iter().flat_map(|u| self.refresh(u, now)).collect()
    }

    /// A connection joined `room`: `true` if its snapshot can be built now.
    pub fn joined(&mut self, conn: ConnId, room: &RoomId) -> bool {
        self.interest.check(Topic::Room(room.clone()));
        // Unreachable backend: serve what is known; the resync once it is
        // back tells the difference.
        if self.interest.synced(room) || !self.up() {
            return true;
        }
        self.interest.await_room(conn, room);
        false
    }

    pub fn is_awaiting(&self, conn: ConnId, room: &RoomId) -> bool {
        self.interest.is_awaiting(conn, room)
    }

    /// Every connection waiting for a room's members, with its rooms.
    pub fn take_awaiting(&mut self) -> Vec<(ConnId, Vec<RoomId>)> {
        self.interest.take_awaiting()
    }

    /// A room's members were read: takes their records and receipts, marks it
    /// synced; returns the events and the connections now owed its snapshot.
    pub fn room_synced(
        &mut self,
        room: &RoomId,
        members: Vec<(UserId, UserRecords)>,
        receipts: Vec<(UserId, u64)>,
        now: Millis,
    ) -> (Vec<Event>, Vec<ConnId>) {
        let Some(owed) = self.interest.room_synced(room, receipts) else {
            return (Vec::new(), Vec::new());
        };
        let mut events = Vec::new();
        for (user, recs) in members {
            events.extend(self.apply(&user, &recs, now));
        }
        (events, owed)
    }

    /// A room's snapshot from the replica.
    pub fn snapshot(&self, room: &RoomId) -> ServerMessage {
        let users = self.members.get(room);
        let shown = || users.into_iter().flatten();
        let mut members: Vec<PresenceView> = shown()
            .filter_map(|u| Some(self.view(u)?.presence(u)))
            .collect();
        members.sort_by(|a, b| a.user.cmp(&b.user));
        let mut typing: Vec<UserId> = shown()
            .filter(|u| self.view(u).is_some_and(|v| v.typing_in(room)))
            .cloned()
            .collect();
        typing.sort();
        // Every shown member's marker, and the most advanced of readers who
        // are not shown (offline, or gone from the room): a receipt belongs
        // to the room (`Machine::receipts_in` on one node).
        let (mut receipts, mut others): (Vec<Receipt>, Vec<Receipt>) = self
            .interest
            .receipts(room)
            .map(|(u, m)| Receipt {
                user: u.clone(),
                marker: *m,
            })
            .partition(|r| self.shown_in(&r.user, room));
        presence_core::receipts::most_advanced(&mut others, presence_core::limits::RECEIPTS_KEPT);
        receipts.extend(others);
        receipts.sort_by(|a, b| a.user.cmp(&b.user));
        ServerMessage::Snapshot {
            room: room.clone(),
            members,
            typing,
            receipts,
            more: false,
            large: false,
            counts: None,
        }
    }

    /// Users shown in `room` here.
    pub fn room_size(&self, room: &RoomId) -> usize {
        self.members.get(room).map_or(0, HashSet::len)
    }

    /// The members shown in `room` here, counted by state.
    pub fn counts(&self, room: &RoomId) -> Counts {
        let users = self.members.get(room).into_iter().flatten();
        Counts::of(users.filter_map(|u| Some(self.view(u)?.shown.state())))
    }

    /// A large room's snapshot members: the first shown by user id.
    pub fn first_online(&self, room: &RoomId) -> Vec<PresenceView> {
        let users = self.members.get(room).into_iter().flatten();
        let shown = users.filter_map(|u| Some((u, self.view(u)?))).collect();
        presence_core::large::snapshot_members(shown)
            .into_iter()
            .map(|(u, v)| v.presence(u))
            .collect()
    }

    /// A connection started watching `users`: `Some(views)` to answer now,
    /// or `None` when their records must be read first.
    pub fn watch(&mut self, conn: ConnId, users: Vec<UserId>) -> Option<Vec<PresenceView>> {
        for u in &users {
            self.interest.check(Topic::User(u.clone()));
        }
        if !self.up()
            || users
                .iter()
                .all(|u| self.interest.subscribed(&Topic::User(u.clone())))
        {
            return Some(self.views(&users));
        }
        self.interest.wait_watch(conn, users);
        None
    }

    fn views(&self, users: &[UserId]) -> Vec<PresenceView> {
        users
            .iter()
            .map(|u| {
                self.view(u)
                    .map_or_else(|| ClusterView::offline().presence(u), |v| v.presence(u))
            })
            .collect()
    }

    /// Users' records were read; returns the events and the `watching`
    /// answers now ready.
    pub fn fetched(
        &mut self,
        got: Vec<(UserId, UserRecords)>,
        now: Millis,
    ) -> (Vec<Event>, Vec<(ConnId, Vec<PresenceView>)>) {
        let mut events = Vec::new();
        for (user, recs) in got {
            self.users.entry(user.clone()).or_insert_with(|| Known {
                records: Records::default(),
                shown: ClusterView::offline(),
            });
            events.extend(self.apply(&user, &recs, now));
        }
        let answers = self
            .interest
            .ready_watching()
            .into_iter()
            .map(|(conn, users)| (conn, self.views(&users)))
            .collect();
        (events, answers)
    }

    /// Answers every waiting `watching` from what is known (the backend is
    /// unreachable).
    pub fn watching_now(&mut self) -> Vec<(ConnId, Vec<PresenceView>)> {
        self.interest
            .take_watching()
            .into_iter()
            .map(|(conn, users)| (conn, self.views(&users)))
            .collect()
    }

    /// Owns this node's write: the hub's own users' records as they stand.
    /// `wanted` says whether local sockets still care about a topic.
    pub fn take(&mut self, now: Millis, wanted: impl Fn(&Topic) -> bool) -> Take {
        let (subscribe, unsubscribe) = self.interest.topics(&wanted);
        let mut t = Take {
            subscribe,
            unsubscribe,
            ..Take::default()
        };
        // After the rooms above are known, and while every owed record is
        // still marked dirty: a record swept with its user while its write is
        // in flight would be lost if the write failed (a release during an
        // outage: a ghost).
        if self.sweep_at.is_none() && now >= self.next_sweep {
            self.next_sweep = now.after(SWEEP);
            self.sweep_at = Some(0);
        }
        self.sweep(&wanted);
        for user in self.outbox.take_dirty() {
            let Some((seq, rec)) = self
                .users
                .get(&user)
                .and_then(|k| k.records.get(&self.me))
                .map(|(s, r)| (s, r.clone()))
            else {
                continue;
            };
            t.memberships.extend(self.outbox.memberships(&user, &rec));
            t.writes.push((user, Stored { seq, record: rec }));
        }
        t.reads = self.outbox.take_reads();
        t.fetch = self.interest.to_fetch();
        t.sync = self
            .interest
            .take_sync()
            .into_iter()
            .map(|room| {
                let shown = self
                    .members
                    .get(&room)
                    .into_iter()
                    .flatten()
                    .cloned()
                    .collect();
                (room, shown)
            })
            .collect();
        self.outbox.writing(!t.writes.is_empty());
        t
    }

    /// The write went through: remember what the backend holds now; the
    /// users it released leave the index once their change is announced.
    pub fn took(&mut self, t: &Take) {
        self.outbox.took(&t.writes);
        self.interest.fetched(&t.fetch);
    }

    /// The round failed: everything in it is owed again.
    pub fn failed(&mut self, t: Take) {
        self.outbox.failed(t.writes, t.reads);
        self.interest.failed(
            t.subscribe,
            t.unsubscribe,
            t.sync.into_iter().map(|(room, _)| room),
        );
    }

    /// Users whose status changed, for their own sockets here.
    pub fn take_statuses(&mut self) -> Vec<UserId> {
        std::mem::take(&mut self.statuses)
    }

    /// Users whose released records this round wrote: out of the index once
    /// their changes are announced.
    pub fn released(&mut self, users: impl IntoIterator<Item = UserId>) {
        self.outbox.released(users);
    }

    /// The released users to take out of the index now: those whose record
    /// here still holds nothing (one held again stays).
    pub fn take_unindex(&mut self) -> Vec<UserId> {
        self.outbox.take_unindex()
    }

    /// Whether every own record has been written (none pending, none in a
    /// round under way).
    pub fn idle(&self) -> bool {
        self.outbox.idle()
    }

    /// The answers to this node's writes: other incarnations' records to
    /// take, the host events owed for each user (this write's change and
    /// any earlier one not yet settled, whichever node made it), and the
    /// messages to publish.
    pub fn written(
        &mut self,
        replies: Vec<Written>,
        now: Millis,
    ) -> (Vec<Event>, Vec<Announcement>, BTreeMap<Topic, BusMessage>) {
        let mut local = Vec::new();
        let mut host = Vec::new();
        let mut out: BTreeMap<Topic, BusMessage> = BTreeMap::new();
        for mut w in replies {
            let mut owed = std::mem::take(&mut w.owed);
            owed.extend(w.own(&self.me));
            host.extend(self.announce(&w.user, &owed, now));
            let after = records_of(&w.all);
            let mut before = after.clone();
            before.remove(&self.me);
            if let Some(p) = &w.previous {
                before.apply(&self.me, p.seq, p.record.clone());
            }
            // Before, as the others showed it: this node's retired
            // incarnations counted until the new one's record superseded
            // them (a lapse nobody cleaned announces nothing).
            let v0 = before.view(|inc| {
                if self.lives.is_retired(inc) {
                    Liveness::Live
                } else {
                    self.liveness(inc)
                }
            });
            let v1 = self.view_of(&after);
            let republish = self.outbox.unpublished(&w.user);
            if v0 == v1 && !republish {
                continue;
            }
            // A record written again (the store may have lost what the
            // others hold) also goes to the rooms of the record written
            // before: a node that re-read them before this write would
            // otherwise never hear of it.
            let mut topics = v0;
            if let Some(rooms) = self.outbox.take_rewritten_rooms(&w.user) {
                topics.rooms.extend(rooms);
            }
            address(&mut out, &w.user, &w.all, &topics, &v1);
            local.extend(self.apply(&w.user, &w.all, now));
        }
        (local, host, out)
    }

    /// The host events of a user's owed changes: each change's records
    /// before and after, the changing incarnation (and this node's retired
    /// ones) counted alive, as the cluster showed it then. Deterministic in
    /// the change, so any node computes the same events under the same ids.
    pub fn announce(&self, user: &UserId, owed: &[Owed], now: Millis) -> Vec<Announcement> {
        owed.iter()
            .map(|o| {
                let after = records_of(&o.all);
                let mut before = after.clone();
                before.remove(&o.inc);
                if let Some(p) = &o.old {
                    before.apply(&o.inc, p.seq, p.record.clone());
                }
                let alive = |inc: &str| {
                    if inc == o.inc || self.lives.is_retired(inc) {
                        Liveness::Live
                    } else {
                        self.liveness(inc)
                    }
                };
                let v0 = before.view(alive);
                let v1 = after.view(alive);
                let id = o.id();
                let events = transitions(user, &v0, &v1, now)
                    .into_iter()
                    .enumerate()
                    .map(|(i, e)| (format!("{id}:{i}:{user}"), e))
                    .collect();
                Announcement {
                    user: user.clone(),
                    own: o.inc == self.me || self.lives.is_retired(&o.inc),
                    owed: id,
                    events,
                }
            })
            .collect()
    }

    /// Every own user's record must be written again (the backend lost
    /// them, or the link came back), and every followed topic subscribed
    /// and re-read.
    pub fn resync(&mut self) {
        self.rewrite_own();
        self.interest.resync();
    }

    /// Own records owed again, the first half of [`resync`](Self::resync).
    fn rewrite_own(&mut self) {
        let me = &self.me;
        let mine: Vec<UserId> = self
            .users
            .iter()
            .filter(|(_, k)| k.records.get(me).is_some())
            .map(|(u, _)| u.clone())
            .collect();
        // Published even if the store saw no change (as after a lapse).
        self.outbox.rewrite(mine);
    }

    /// This node's lease lapsed, so others may have cleaned (or may yet
    /// clean) its records: it goes on as the fresh incarnation `new`, whose
    /// records nobody else ever touches. Own records move there with new
    /// sequence numbers and are owed to the backend, room memberships too;
    /// the old incarnation counts as gone here at once (it never writes
    /// again), while the others merge both until they judge it dead, so
    /// observers see no flap. Returns the old incarnation.
    pub fn reincarnate(&mut self, new: Incarnation, now: Millis) -> Incarnation {
        let old = std::mem::replace(&mut self.me, new);
        let mut moved = Vec::new();
        for (user, k) in &mut self.users {
            let Some((_, rec)) = k.records.get(&old).map(|(s, r)| (s, r.clone())) else {
                continue;
            };
            k.records.apply(&self.me, self.outbox.changed(user), rec);
            moved.push(user.clone());
        }
        // Published even if the store saw no change: it may have lost what
        // the others still hold (a Redis restarted empty).
        self.outbox.rewrite(moved);
        // Own users' views do not change: the new records are the same.
        let _ = self.retire(old.clone(), now);
        old
    }

    /// `inc`, an earlier incarnation of this node, is dead whatever a lease
    /// round says; returns what to announce here.
    pub fn retire(&mut self, inc: Incarnation, now: Millis) -> Vec<Event> {
        self.lives.retire(&inc, now);
        let users: Vec<UserId> = self
            .users
            .iter()
            .filter(|(_, k)| k.records.get(&inc).is_some())
            .map(|(u, _)| u.clone())
            .collect();
        users.iter().flat_map(|u| self.refresh(u, now)).collect()
    }

    /// Drops users nothing here follows any more: the next
    /// [`SWEEP_SLICE`] of the pass under way, and at its end the indexes.
    fn sweep(&mut self, wanted: &impl Fn(&Topic) -> bool) {
        let Some(mut at) = self.sweep_at else {
            return;
        };
        for _ in 0..SWEEP_SLICE {
            let Some((user, k)) = self.users.get_index(at) else {
                break;
            };
            // An own record not yet written (a release during an outage)
            // is owed to the backend: dropping it would leave a ghost.
            let keep = self.outbox.owes(user)
                || k.records.get(&self.me).is_some_and(|(_, r)| r.holds())
                || wanted(&Topic::User(user.clone()))
                || k.shown.rooms.iter().any(|r| {
                    self.interest.follows(r)
                        && self.members.get(r).is_some_and(|m| m.contains(user))
                });
            if keep {
                at += 1;
                continue;
            }
            // The last user moves here; it is looked at next.
            let Some((user, k)) = self.users.swap_remove_index(at) else {
                break;
            };
            for room in &k.shown.rooms {
                if let Some(m) = self.members.get_mut(room) {
                    m.remove(&user);
                }
            }
        }
        if at < self.users.len() {
            self.sweep_at = Some(at);
            return;
        }
        self.sweep_at = None;
        let interest = &self.interest;
        self.members
            .retain(|room, m| interest.follows(room) && !m.is_empty());
        let users = &self.users;
        self.outbox.retain(|u| users.contains_key(u));
        // Only incarnations no lease round found alive are looked for, and
        // the look stops at their first record.
        self.lives
            .retain(|inc| users.values().any(|k| k.records.get(inc).is_some()));
    }

    /// Connections that left or closed wait for nothing.
    pub fn forget_conn(&mut self, conn: ConnId) {
        self.interest.forget_conn(conn);
    }
}

/// Records as fetched, for computing a view.
fn records_of(recs: &UserRecords) -> Records {
    let mut r = Records::default();
    for (inc, s) in recs {
        r.apply(inc, s.seq, s.record.clone());
    }
    r
}

/// Files `user`'s record set under the topics that must hear of a change
/// from `before` to `after`: the user's, and every room it was or is in.
pub(crate) fn address(
    out: &mut BTreeMap<Topic, BusMessage>,
    user: &UserId,
    recs: &UserRecords,
    before: &ClusterView,
    after: &ClusterView,
) {
    let update = UserUpdate {
        user: user.clone(),
        recs: recs.clone(),
    };
    let rooms = before.rooms.union(&after.rooms);
    for topic in rooms
        .map(|r| Topic::Room(r.clone()))
        .chain(std::iter::once(Topic::User(user.clone())))
    {
        out.entry(topic).or_default().u.push(update.clone());
    }
}

#[cfg(test)]
mod tests {
    use presence_core::cluster::NodeRecord;
    use presence_core::{Activity, PresenceState, ResumeToken, TimingPolicy};

    use super::*;

    fn inc(s: &str) -> Incarnation {
        Incarnation::parse(s).expect("an incarnation")
    }

    fn ana() -> UserId {
        UserId::new("ana").expect("a user id")
    }

    /// Ana connected to a node whose record of her was written.
    fn written_online() -> (Machine, Replica, Millis) {
        let mut m = Machine::new(TimingPolicy::default());
        let mut r = Replica::new(inc("a.1"), Millis(0));
        let t = Millis(1_000);
        let token = ResumeToken::new("tok1").expect("a token");
        m.connect(t, ana(), ConnId(1), token, None, Activity::Active)
            .expect("connects");
        r.touch(&m, &ana(), t);
        let take = r.take(t, |_| false);
        assert_eq!(take.writes.len(), 1);
        r.took(&take);
        (m, r, t)
    }

    #[test]
    fn a_release_whose_write_failed_survives_the_sweep() {
        let (mut m, mut r, t) = written_online();
        // Ana leaves while the backend is unreachable...
        m.leaving(t, ConnId(1));
        let later = t
            .after(m.policy().leave_grace)
            .after(Duration::from_millis(1));
        m.tick(later);
        r.touch(&m, &ana(), later);
        // ...the write of her release fails while the sweep is due...
        let due = later.after(SWEEP);
        let take = r.take(due, |_| false);
        assert!(!take.writes[0].1.record.holds());
        r.failed(take);
        // ...and it is still owed at the next round, and the next sweep.
        let take = r.take(due.after(SWEEP), |_| false);
        assert_eq!(take.writes.len(), 1, "the release is still owed");
        assert!(!take.writes[0].1.record.holds());
    }

    #[test]
    fn after_a_lapse_the_host_hears_of_a_return_only_if_the_user_was_cleaned() {
        let (_, mut r, t) = written_online();
        let (seq, old) = r.users[&ana()]
            .records
            .get("a.1")
            .map(|(s, rec)| (s, rec.clone()))
            .expect("own record");
        r.reincarnate(inc("a.2"), t);
        let take = r.take(t, |_| false);
        let new = take.writes[0].1.clone();
        let stored = |rec: NodeRecord, seq| Stored { seq, record: rec };
        let written = |before: Stored| {
            let all = vec![(inc("a.1"), before), (inc("a.2"), new.clone())];
            Written {
                user: ana(),
                previous: None,
                owed: Vec::new(),
                wrote: true,
                all,
            }
        };
        let events = |host: &[Announcement]| -> Vec<(String, &'static str)> {
            host.iter()
                .flat_map(|a| a.events.iter().map(|(id, e)| (id.clone(), e.diff.name())))
                .collect()
        };
        // Nobody cleaned a.1: the others still showed ana through it.
        let (_, host, _) = r.written(vec![written(stored(old.clone(), seq))], t);
        assert!(events(&host).is_empty(), "{host:?}");
        assert!(
            host.iter().all(|a| a.own),
            "owed, and settled, all the same"
        );
        // A cleaner expired a.1 first: the others showed her offline.
        let (_, host, _) = r.written(vec![written(stored(old.expired(t), seq + 1))], t);
        let want = format!("a.2:{}:0:ana", new.seq);
        assert_eq!(
            events(&host),
            [(want, "user_connected")],
            "named by the change"
        );
    }

    #[test]
    fn a_new_incarnation_owes_every_own_record_under_a_greater_sequence() {
        let (_, mut r, t) = written_online();
        let before = r.users[&ana()].records.get("a.1").map(|(s, _)| s);
        let old = r.reincarnate(inc("a.2"), t);
        assert_eq!(old, "a.1");
        let take = r.take(t, |_| false);
        assert_eq!(take.writes.len(), 1);
        let (user, stored) = &take.writes[0];
        assert_eq!(user, &ana());
        assert!(Some(stored.seq) > before && stored.record.holds());
        assert!(!r.idle(), "a round with writes is under way");
        // The old incarnation is dead here whatever a lease round says.
        let events = r.set_liveness(vec![inc("a.1"), inc("a.2")], &[], t, |_| true, t);
        assert!(events.is_empty());
        assert_eq!(r.liveness("a.1"), Liveness::Gone(t));
    }

    #[test]
    fn records_of_a_node_judged_dead_read_offline_here_though_never_followed() {
        let (_, theirs, t) = written_online();
        let (seq, record) = theirs.users[&ana()]
            .records
            .get("a.1")
            .map(|(s, rec)| (s, rec.clone()))
            .expect("a.1's record of ana");
        let recs: UserRecords = vec![(inc("a.1"), Stored { seq, record })];
        // b.1 never heard of a.1: an HTTP query reads ana's records from the store.
        let mut r = Replica::new(inc("b.1"), t);
        let state = |r: &Replica| r.view_of_records(&recs).presence(&ana()).state;
        assert_ne!(state(&r), PresenceState::Offline);
        let later = t.after(Duration::from_secs(5));
        let events = r.set_liveness(vec![inc("b.1")], &[inc("a.1")], later, |_| true, later);
        assert!(events.is_empty(), "nobody here followed her");
        assert_eq!(state(&r), PresenceState::Offline);
        assert_eq!(
            r.liveness("a.1"),
            Liveness::Gone(later),
            "since the first round"
        );
        let next = later.after(Duration::from_secs(1));
        r.set_liveness(vec![inc("b.1")], &[inc("a.1")], next, |_| true, next);
        assert_eq!(r.liveness("a.1"), Liveness::Gone(later));
        // Cleaned (no longer registered): forgotten.
        r.set_liveness(vec![inc("b.1")], &[], next, |_| true, next);
        assert_eq!(r.liveness("a.1"), Liveness::Live);
    }

    #[test]
    fn a_sweep_goes_a_slice_at_a_time_and_keeps_whom_something_follows() {
        // Node a holds the users in room r; node b read their records.
        let mut m = Machine::new(TimingPolicy::default());
        let t = Millis(1_000);
        let room = RoomId::new("r").expect("a room");
        let n = SWEEP_SLICE * 2 + 10;
        let user = |i: usize| UserId::new(format!("u{i}")).expect("a user id");
        let mut r = Replica::new(inc("b.1"), Millis(0));
        for i in 0..n {
            let token = ResumeToken::new(format!("tok{i}")).expect("a token");
            m.connect(t, user(i), ConnId(i as u64), token, None, Activity::Active)
                .expect("connects");
            m.join(t, ConnId(i as u64), room.clone()).expect("joins");
            let record = m.node_record(&user(i)).expect("a record");
            r.apply(&user(i), &vec![(inc("a.1"), Stored { seq: 1, record })], t);
        }
        assert_eq!(r.room_size(&room), n);
        // Nobody here follows room r; a watcher here follows u7.
        let u7 = Topic::User(user(7));
        let wanted = |topic: &Topic| *topic == u7;
        r.take(t, wanted);
        let left = r.users.len();
        assert!(left >= n - SWEEP_SLICE && left < n, "one slice at a time");
        assert!(r.sweep_at.is_some());
        r.take(t, wanted);
        r.take(t, wanted);
        assert_eq!(r.users.len(), 1, "the watched user stays");
        assert!(r.users.contains_key(&user(7)));
        assert!(r.sweep_at.is_none(), "the pass is over");
        assert!(r.members.is_empty(), "the index follows");
        // The next pass starts once SWEEP has passed since this one did.
        let (before, after) = (t.after(SWEEP - Duration::from_millis(1)), t.after(SWEEP));
        r.take(before, |_| false);
        assert_eq!(r.users.len(), 1);
        r.take(after, |_| false);
        assert!(r.users.is_empty());
    }
}
