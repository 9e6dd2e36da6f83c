//! What this node owes the backend: its own records changed since the last
//! write, the read markers to send, and what makes a failed round owe all
//! of it again.

use std::collections::{BTreeSet, HashMap, HashSet};

use presence_core::cluster::NodeRecord;
use presence_core::{Millis, RoomId, UserId};

use crate::backend::Stored;

pub(super) struct Outbox {
    /// The sequence of this node's record changes.
    seq: u64,
    /// Own records changed since the last write.
    dirty: HashSet<UserId>,
    /// Own records as last written.
    written: HashMap<UserId, NodeRecord>,
    /// Users released here whose index entry waits for their announcement.
    to_unindex: HashSet<UserId>,
    /// Rooms of the own records last written before a rewrite (a reset or
    /// a lapse): the others may still show the user there, so the rewrite
    /// goes to those rooms too.
    rewritten_rooms: HashMap<UserId, Vec<RoomId>>,
    /// A round with writes is under way.
    writing: bool,
    /// Users whose records a failed round may have written but not
    /// published: their next write is published even if it changes nothing.
    unpublished: HashSet<UserId>,
    reads: Vec<(RoomId, UserId, u64)>,
}

impl Outbox {
    pub fn new(now: Millis) -> Self {
        Self {
            // Above any sequence a previous run of this process gave.
            seq: now.0.saturating_mul(1_000),
            dirty: HashSet::new(),
            written: HashMap::new(),
            to_unindex: HashSet::new(),
            rewritten_rooms: HashMap::new(),
            writing: false,
            unpublished: HashSet::new(),
            reads: Vec::new(),
        }
    }

    /// An own record of `user` changed: it is owed; returns its sequence.
    pub fn changed(&mut self, user: &UserId) -> u64 {
        self.seq += 1;
        self.dirty.insert(user.clone());
        self.seq
    }

    /// Whether `user`'s own record waits to be written.
    pub fn owes(&self, user: &UserId) -> bool {
        self.dirty.contains(user)
    }

    /// The rooms of `user`'s record as last written.
    pub fn written_rooms(&self, user: &UserId) -> &[RoomId] {
        self.written.get(user).map_or(&[], |w| &w.rooms)
    }

    /// A local read marker moved: for the backend.
    pub fn read(&mut self, room: RoomId, user: UserId, marker: u64) {
        self.reads.push((room, user, marker));
    }

    /// The owed users, for a round; [`Self::took`] or [`Self::failed`]
    /// follows.
    pub fn take_dirty(&mut self) -> HashSet<UserId> {
        std::mem::take(&mut self.dirty)
    }

    /// The membership changes between `user`'s written record and `rec`:
    /// (room, user, joined).
    pub fn memberships(&self, user: &UserId, rec: &NodeRecord) -> Vec<(RoomId, UserId, bool)> {
        let old: BTreeSet<&RoomId> = self.written_rooms(user).iter().collect();
        let new: BTreeSet<&RoomId> = rec.rooms.iter().collect();
        let joined = new
            .difference(&old)
            .map(|r| ((*r).clone(), user.clone(), true));
        let left = old
            .difference(&new)
            .map(|r| ((*r).clone(), user.clone(), false));
        joined.chain(left).collect()
    }

    pub fn take_reads(&mut self) -> Vec<(RoomId, UserId, u64)> {
        std::mem::take(&mut self.reads)
    }

    /// A round with `writes` is under way (until took/failed).
    pub fn writing(&mut self, writes: bool) {
        self.writing = writes;
    }

    /// The round's writes went through: the backend holds them now, and
    /// the users they released leave the index once their change is
    /// announced.
    pub fn took(&mut self, writes: &[(UserId, Stored)]) {
        self.writing = false;
        for (user, s) in writes {
            self.unpublished.remove(user);
            if s.record.holds() {
                self.written.insert(user.clone(), s.record.clone());
            } else {
                self.written.remove(user);
                self.to_unindex.insert(user.clone());
            }
        }
    }

    /// The round failed: its writes and reads are owed again, and the
    /// writes published even if the store saw them.
    pub fn failed(&mut self, writes: Vec<(UserId, Stored)>, reads: Vec<(RoomId, UserId, u64)>) {
        self.writing = false;
        for (user, _) in writes {
            self.unpublished.insert(user.clone());
            self.dirty.insert(user);
        }
        self.reads.extend(reads);
    }

    pub fn released(&mut self, users: impl IntoIterator<Item = UserId>) {
        self.to_unindex.extend(users);
    }

    /// The released users to take out of the index now: those whose record
    /// here still holds nothing (one held again stays).
    pub fn take_unindex(&mut self) -> Vec<UserId> {
        let written = &self.written;
        self.to_unindex
            .drain()
            .filter(|u| written.get(u).is_none_or(|r| !r.holds()))
            .collect()
    }

    /// Whether every own record has been written (none pending, none in a
    /// round under way).
    pub fn idle(&self) -> bool {
        self.dirty.is_empty() && !self.writing
    }

    /// Whether `user`'s next write is published even if it changes nothing.
    pub fn unpublished(&self, user: &UserId) -> bool {
        self.unpublished.contains(user)
    }

    /// The rooms a rewrite of `user` also goes to, once.
    pub fn take_rewritten_rooms(&mut self, user: &UserId) -> Option<Vec<RoomId>> {
        self.rewritten_rooms.remove(user)
    }

    /// `mine` are written again and published even if the store saw no
    /// change (it may have lost what the others hold); what was written is
    /// forgotten, its rooms kept for the rewrite's publication.
    pub fn rewrite(&mut self, mine: impl IntoIterator<Item = UserId>) {
        for user in mine {
            self.unpublished.insert(user.clone());
            self.dirty.insert(user);
        }
        for (user, rec) in self.written.drain() {
            if !rec.rooms.is_empty() {
                self.rewritten_rooms.insert(user, rec.rooms);
            }
        }
    }

    /// Forgets rewrite rooms of users no longer `known`.
    pub fn retain(&mut self, known: impl Fn(&UserId) -> bool) {
        self.rewritten_rooms.retain(|u, _| known(u));
    }
}
