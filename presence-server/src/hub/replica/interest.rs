//! What this node follows of the cluster for its sockets: the topics it
//! subscribes to, the rooms it has read (with their read markers), the
//! users and rooms to read next, and the joiners and watchers waiting for
//! those reads.

use std::collections::{BTreeSet, HashMap, HashSet};

use presence_core::{ConnId, RoomId, UserId};

use crate::backend::Topic;

/// Users whose records one call reads at most; the rest waits a window.
const MAX_FETCH: usize = 2_000;

/// A room some local connection is in.
#[derive(Default)]
struct RoomState {
    /// Its members' records have been read since the subscription.
    synced: bool,
    receipts: HashMap<UserId, u64>,
}

pub(super) struct Interest {
    rooms: HashMap<RoomId, RoomState>,
    subscribed: HashSet<Topic>,
    /// Users whose records are to be read (subscribed, not read yet).
    fetch: BTreeSet<UserId>,
    /// Rooms whose members are to be read.
    sync: BTreeSet<RoomId>,
    /// Topics whose interest may have changed.
    check: HashSet<Topic>,
    /// Connections that joined a room not yet synced: its diffs wait.
    awaiting: HashMap<ConnId, Vec<RoomId>>,
    /// `watching` answers waiting for their users' records.
    watching: Vec<(ConnId, Vec<UserId>)>,
}

impl Interest {
    /// Interested in `own` from the start (the node's own topic).
    pub fn new(own: Topic) -> Self {
        Self {
            rooms: HashMap::new(),
            subscribed: HashSet::new(),
            fetch: BTreeSet::new(),
            sync: BTreeSet::new(),
            check: HashSet::from([own]),
            awaiting: HashMap::new(),
            watching: Vec::new(),
        }
    }

    /// Whether the sockets still want `topic` is to be asked next round.
    pub fn check(&mut self, topic: Topic) {
        self.check.insert(topic);
    }

    /// Whether some local connection is in `room` (subscribed).
    pub fn follows(&self, room: &RoomId) -> bool {
        self.rooms.contains_key(room)
    }

    pub fn subscribed(&self, topic: &Topic) -> bool {
        self.subscribed.contains(topic)
    }

    /// Whether the node's sockets see `room`'s members already.
    pub fn synced(&self, room: &RoomId) -> bool {
        self.rooms.get(room).is_some_and(|r| r.synced)
    }

    /// `conn` waits for `room`'s members before its snapshot.
    pub fn await_room(&mut self, conn: ConnId, room: &RoomId) {
        let waiting = self.awaiting.entry(conn).or_default();
        if !waiting.contains(room) {
            waiting.push(room.clone());
        }
    }

    pub fn is_awaiting(&self, conn: ConnId, room: &RoomId) -> bool {
        self.awaiting.get(&conn).is_some_and(|r| r.contains(room))
    }

    /// Every connection waiting for a room, with its rooms.
    pub fn take_awaiting(&mut self) -> Vec<(ConnId, Vec<RoomId>)> {
        self.awaiting.drain().collect()
    }

    /// `room`'s members were read with `receipts`: it is synced; returns
    /// the connections now owed its snapshot (`None` if no longer followed).
    pub fn room_synced(
        &mut self,
        room: &RoomId,
        receipts: Vec<(UserId, u64)>,
    ) -> Option<Vec<ConnId>> {
        let state = self.rooms.get_mut(room)?;
        state.synced = true;
        for (user, marker) in receipts {
            let m = state.receipts.entry(user).or_insert(0);
            *m = (*m).max(marker);
        }
        let mut owed = Vec::new();
        self.awaiting.retain(|conn, rooms| {
            if let Some(i) = rooms.iter().position(|r| r == room) {
                rooms.remove(i);
                owed.push(*conn);
            }
            !rooms.is_empty()
        });
        Some(owed)
    }

    /// Notes a read marker seen here; returns whether it moved.
    pub fn receipt(&mut self, room: &RoomId, user: &UserId, marker: u64) -> bool {
        let Some(r) = self.rooms.get_mut(room) else {
            return false;
        };
        let m = r.receipts.entry(user.clone()).or_insert(0);
        if marker > *m {
            *m = marker;
            true
        } else {
            false
        }
    }

    /// The read markers known in `room`.
    pub fn receipts(&self, room: &RoomId) -> impl Iterator<Item = (&UserId, &u64)> {
        self.rooms
            .get(room)
            .into_iter()
            .flat_map(|r| r.receipts.iter())
    }

    /// `conn`'s `watching` answer waits for `users`' records.
    pub fn wait_watch(&mut self, conn: ConnId, users: Vec<UserId>) {
        self.watching.push((conn, users));
    }

    /// The waiting `watching` answers whose users are all read now.
    pub fn ready_watching(&mut self) -> Vec<(ConnId, Vec<UserId>)> {
        let fetch = &self.fetch;
        let (ready, waiting) = std::mem::take(&mut self.watching)
            .into_iter()
            .partition(|(_, users)| users.iter().all(|u| !fetch.contains(u)));
        self.watching = waiting;
        ready
    }

    /// Every waiting `watching` answer.
    pub fn take_watching(&mut self) -> Vec<(ConnId, Vec<UserId>)> {
        std::mem::take(&mut self.watching)
    }

    /// Asks `wanted` of every checked topic; returns the topics to
    /// subscribe and unsubscribe. A room subscribed is to be read, and a
    /// user's records too.
    pub fn topics(&mut self, wanted: &impl Fn(&Topic) -> bool) -> (Vec<Topic>, Vec<Topic>) {
        let (mut subscribe, mut unsubscribe) = (Vec::new(), Vec::new());
        for topic in std::mem::take(&mut self.check) {
            let want = wanted(&topic);
            let has = self.subscribed.contains(&topic);
            if want && !has {
                self.subscribed.insert(topic.clone());
                match &topic {
                    Topic::Room(room) => {
                        self.rooms.entry(room.clone()).or_default();
                        self.sync.insert(room.clone());
                    }
                    Topic::User(user) => {
                        self.fetch.insert(user.clone());
                    }
                    Topic::Node(_) => {}
                }
                subscribe.push(topic);
            } else if !want && has {
                self.subscribed.remove(&topic);
                if let Topic::Room(room) = &topic {
                    self.rooms.remove(room);
                    self.sync.remove(room);
                }
                unsubscribe.push(topic);
            }
        }
        (subscribe, unsubscribe)
    }

    /// The users to read this round (at most [`MAX_FETCH`]).
    pub fn to_fetch(&self) -> Vec<UserId> {
        self.fetch.iter().take(MAX_FETCH).cloned().collect()
    }

    /// The rooms to read this round.
    pub fn take_sync(&mut self) -> BTreeSet<RoomId> {
        std::mem::take(&mut self.sync)
    }

    /// The round read `users`.
    pub fn fetched(&mut self, users: &[UserId]) {
        for user in users {
            self.fetch.remove(user);
        }
    }

    /// The round failed: its subscriptions and reads are to be done again.
    pub fn failed(
        &mut self,
        subscribe: Vec<Topic>,
        unsubscribe: Vec<Topic>,
        sync: impl IntoIterator<Item = RoomId>,
    ) {
        for topic in subscribe {
            self.subscribed.remove(&topic);
            self.check.insert(topic);
        }
        self.check.extend(unsubscribe);
        self.sync.extend(sync);
    }

    /// Every followed topic is to be subscribed and read again.
    pub fn resync(&mut self) {
        for topic in std::mem::take(&mut self.subscribed) {
            if let Topic::Room(room) = &topic
                && let Some(r) = self.rooms.get_mut(room)
            {
                r.synced = false;
            }
            self.check.insert(topic);
        }
    }

    /// A connection that left or closed waits for nothing.
    pub fn forget_conn(&mut self, conn: ConnId) {
        self.awaiting.remove(&conn);
        self.watching.retain(|(c, _)| *c != conn);
    }
}
