//! The client's picture of the rooms it joined and the users it watches,
//! kept current by snapshots and diffs.

use crate::ids::{RoomId, UserId};
use crate::prelude::*;
use crate::presence::{Millis, PresenceState, PresenceView};
use crate::protocol::{Counts, Diff, Receipt};

use super::vecmap::{VecMap, VecSet};

/// Offline members kept per room for "last seen …"; the oldest go first.
pub const MAX_OFFLINE_MEMBERS_KEPT: usize = 500;

/// One joined room as the client sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RoomView {
    /// Members, online and recently gone, by user.
    pub members: VecMap<UserId, PresenceView>,
    /// Members typing now.
    pub typing: VecSet<UserId>,
    /// Read markers by user.
    pub receipts: VecMap<UserId, u64>,
    /// In a large room (PROTOCOL.md, "Large rooms"), the server's counts:
    /// `members` then holds some online members only (the snapshot's first
    /// ones, and who came since; who left is dropped). `None` in a small
    /// room.
    pub large: Option<Counts>,
}

impl RoomView {
    /// How many members are online, active and idle: the server's word in
    /// a large room, counted from `members` in a small one.
    pub fn counts(&self) -> Counts {
        self.large
            .unwrap_or_else(|| Counts::of(self.members.values().map(|v| v.state)))
    }
}

/// What changed about a user, as `onPresence` tells the app.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PresenceKind {
    /// In a room: the user is there now (entered it online, or came online
    /// in it), including every online member of a first snapshot.
    Joined,
    /// A watched user came online (or was first seen online).
    Online,
    /// In a room: the user left it, still online elsewhere.
    Left,
    /// The user went offline (or was first seen offline).
    Offline,
    /// The user became active.
    Active,
    /// The user became idle, or idle for another reason.
    Idle,
    /// The user's status or status text changed.
    Status,
    /// The user's `info` or `data` changed.
    Data,
}

impl PresenceKind {
    /// The name apps see.
    pub fn name(self) -> &'static str {
        match self {
            Self::Joined => "joined",
            Self::Online => "online",
            Self::Left => "left",
            Self::Offline => "offline",
            Self::Active => "active",
            Self::Idle => "idle",
            Self::Status => "status",
            Self::Data => "data",
        }
    }
}

/// What a user's view going from `before` to `after` tells the app, if
/// anything: times alone moving is no change.
fn kind(before: Option<&PresenceView>, after: &PresenceView, room: bool) -> Option<PresenceKind> {
    let was_online = before.is_some_and(|b| b.state.is_online());
    Some(match (was_online, after.state) {
        (false, PresenceState::Offline) => match before {
            Some(b) if b.status == after.status && b.text == after.text => return None,
            Some(_) => PresenceKind::Status,
            None => PresenceKind::Offline,
        },
        (false, _) if room => PresenceKind::Joined,
        (false, _) => PresenceKind::Online,
        (true, PresenceState::Offline) => PresenceKind::Offline,
        (true, state) => {
            let b = before?;
            if b.state != state || b.reason != after.reason {
                match state {
                    PresenceState::Active => PresenceKind::Active,
                    _ => PresenceKind::Idle,
                }
            } else if b.status != after.status || b.text != after.text {
                PresenceKind::Status
            } else if b.info != after.info || b.data != after.data {
                PresenceKind::Data
            } else {
                return None;
            }
        }
    })
}

/// `view` as the server renders one (`machine::aggregate::render`): an
/// offline user shows no idle reason, last active time, `info` or `data`
/// (PROTOCOL.md, "Presence data"), an online one no last seen. Every view
/// the cache stores passes here, so a member who goes offline keeps none of
/// what they showed while online, whichever frame said so.
fn shaped(mut view: PresenceView) -> PresenceView {
    if view.state.is_online() {
        view.last_seen = None;
    } else {
        view.reason = None;
        view.last_active = None;
        view.info = None;
        view.data = None;
    }
    view
}

/// Stores `view` and says what changed, if anything.
fn update(
    members: &mut VecMap<UserId, PresenceView>,
    view: PresenceView,
    room: bool,
) -> Option<Change> {
    let view = shaped(view);
    let kind = kind(members.get(&view.user), &view, room);
    members.insert(view.user.clone(), view.clone());
    Some(Change::Presence(view, kind?))
}

/// What one diff changed, for the app's callbacks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A user's presence changed; here is the new view (for `Left`, the
    /// last one) and what changed.
    Presence(PresenceView, PresenceKind),
    /// A user started or stopped typing.
    Typing(UserId, bool),
    /// A user's read marker moved.
    Receipt(UserId, u64),
}

/// Rooms and watched users. `version` moves on every change so a UI store
/// (React's `useSyncExternalStore`) can tell when to re-read.
#[derive(Clone, Debug, Default)]
pub struct Cache {
    rooms: VecMap<RoomId, RoomView>,
    watched: VecMap<UserId, PresenceView>,
    version: u64,
    /// While a snapshot comes in parts: the members it replaces, so the
    /// last part can tell who is gone.
    replaced: Option<(RoomId, VecMap<UserId, PresenceView>)>,
}

impl Cache {
    /// Bumped on every change.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// A joined room, if its snapshot arrived.
    pub fn room(&self, room: &RoomId) -> Option<&RoomView> {
        self.rooms.get(room)
    }

    /// Every joined room.
    pub fn rooms(&self) -> &VecMap<RoomId, RoomView> {
        &self.rooms
    }

    /// Watched users' presence.
    pub fn watched(&self) -> &VecMap<UserId, PresenceView> {
        &self.watched
    }

    /// Replaces a room's state with a snapshot (or, with `extends`, adds a
    /// later part of one to it; `more` says another part follows). Returns
    /// what changed against what the client knew: nothing for a member
    /// shown as before, `Left` for one no longer there. `large` holds a
    /// large room's counts.
    pub fn snapshot(
        &mut self,
        room: RoomId,
        members: Vec<PresenceView>,
        typing: Vec<UserId>,
        receipts: Vec<Receipt>,
        (extends, more): (bool, bool),
        large: Option<Counts>,
    ) -> Vec<Change> {
        let mut view = if extends {
            self.rooms.remove(&room).unwrap_or_default()
        } else {
            let old = self.rooms.remove(&room).unwrap_or_default();
            self.replaced = Some((room.clone(), old.members));
            RoomView::default()
        };
        let mut changes = Vec::new();
        let known = match &mut self.replaced {
            Some((r, known)) if *r == room => Some(known),
            _ => None,
        };
        let mut known = known;
        view.large = large;
        for v in members.into_iter().map(shaped) {
            let before = known.as_deref_mut().and_then(|k| k.remove(&v.user));
            let kind = kind(before.as_ref(), &v, true);
            if let Some(kind) = kind {
                changes.push(Change::Presence(v.clone(), kind));
            }
            view.members.insert(v.user.clone(), v);
        }
        if !more && let Some((r, gone)) = self.replaced.take() {
            if r != room {
                self.replaced = Some((r, gone));
            } else if large.is_none() {
                // (A large room's snapshot lists some members only: who it
                // leaves out did not leave.)
                for v in gone.values().filter(|v| v.state.is_online()) {
                    changes.push(Change::Presence(v.clone(), PresenceKind::Left));
                }
            }
        }
        for u in typing {
            view.typing.insert(u);
        }
        for r in receipts {
            view.receipts.insert(r.user, r.marker);
        }
        self.rooms.insert(room, view);
        self.version += 1;
        changes
    }

    /// A large room's summary: its counts, who came (as they are now) and
    /// who went (dropped: the room lists online members only; told as
    /// `Left`, whether they left the room or went offline). Returns what
    /// changed for the app.
    pub fn summary(
        &mut self,
        room: &RoomId,
        counts: Counts,
        joined: Vec<PresenceView>,
        left: &[UserId],
    ) -> Vec<Change> {
        let mut changes = Vec::new();
        let Some(view) = self.rooms.get_mut(room) else {
            return changes;
        };
        view.large = Some(counts);
        for v in joined {
            changes.extend(update(&mut view.members, v, true));
        }
        for u in left {
            if let Some(v) = view.members.remove(u) {
                changes.push(Change::Presence(v, PresenceKind::Left));
            }
        }
        self.version += 1;
        changes
    }

    /// Forgets a room the client left.
    pub fn forget_room(&mut self, room: &RoomId) {
        if self.rooms.remove(room).is_some() {
            self.version += 1;
        }
    }

    /// Records watched users' presence; returns what changed.
    pub fn watching(&mut self, users: Vec<PresenceView>) -> Vec<Change> {
        self.version += 1;
        users
            .into_iter()
            .filter_map(|v| update(&mut self.watched, v, false))
            .collect()
    }

    /// Forgets unwatched users.
    pub fn unwatch(&mut self, users: &[UserId]) {
        for u in users {
            self.watched.remove(u);
        }
        self.version += 1;
    }

    /// Applies a diff to a room (`Some`) or to the watch list (`None`),
    /// received at `now` (diffs carry no time; "idle since" is stamped here).
    /// Returns what changed, or `None` for a diff about an unknown room.
    pub fn apply(&mut self, now: Millis, room: Option<&RoomId>, diff: Diff) -> Option<Change> {
        let change = match room {
            Some(room) => {
                let view = self.rooms.get_mut(room)?;
                let change = apply_to(now, &mut view.members, Some(&mut view.typing), diff);
                if let Some(Change::Receipt(user, marker)) = &change
                    && view.receipts.get(user).is_none_or(|m| m < marker)
                {
                    view.receipts.insert(user.clone(), *marker);
                }
                trim_offline(&mut view.members);
                change
            }
            None => apply_to(now, &mut self.watched, None, diff),
        };
        self.version += 1;
        change
    }
}

fn apply_to(
    now: Millis,
    members: &mut VecMap<UserId, PresenceView>,
    typing: Option<&mut VecSet<UserId>>,
    diff: Diff,
) -> Option<Change> {
    let mut typing = typing;
    let entry = |members: &mut VecMap<UserId, PresenceView>, user: &UserId| {
        members
            .get(user)
            .cloned()
            .unwrap_or_else(|| PresenceView::offline(user.clone()))
    };
    let room = typing.is_some();
    let view = match diff {
        Diff::UserConnected { presence } => presence,
        Diff::UserLeft { user } => {
            if let Some(t) = typing.as_deref_mut() {
                t.remove(&user);
            }
            let last = members.remove(&user)?;
            return Some(Change::Presence(last, PresenceKind::Left));
        }
        Diff::UserDisconnected { user, last_seen } => {
            if let Some(t) = typing.as_deref_mut() {
                t.remove(&user);
            }
            // `update` drops what only an online view shows.
            let mut v = entry(members, &user);
            v.state = PresenceState::Offline;
            v.last_seen = last_seen;
            v
        }
        Diff::UserIdle { user, reason } => {
            let mut v = entry(members, &user);
            if v.state != PresenceState::Idle {
                v.last_active = Some(now);
            }
            v.state = PresenceState::Idle;
            v.reason = Some(reason);
            v
        }
        Diff::UserActive { user } => {
            let mut v = entry(members, &user);
            v.state = PresenceState::Active;
            v.reason = None;
            v.last_active = Some(now);
            v
        }
        Diff::Status { user, status, text } => {
            let mut v = entry(members, &user);
            v.status = status;
            v.text = text;
            v
        }
        Diff::Data { user, info, data } => {
            let mut v = entry(members, &user);
            v.info = info;
            v.data = data;
            v
        }
        Diff::TypingStarted { user } => {
            typing?.insert(user.clone());
            return Some(Change::Typing(user, true));
        }
        Diff::TypingStopped { user } => {
            typing?.remove(&user);
            return Some(Change::Typing(user, false));
        }
        Diff::Read { user, marker } => return Some(Change::Receipt(user, marker)),
        // Host-only: no server sends it to a client.
        #[cfg(feature = "std")]
        Diff::Viewing { .. } => return None,
    };
    update(members, view, room)
}

/// Drops the longest-gone offline members beyond the limit. Diffs add at
/// most one offline member each, so this removes at most one per call.
fn trim_offline(members: &mut VecMap<UserId, PresenceView>) {
    let offline = || members.values().filter(|v| !v.state.is_online());
    if offline().count() <= MAX_OFFLINE_MEMBERS_KEPT {
        return;
    }
    let oldest = offline()
        .min_by_key(|v| v.last_seen.unwrap_or_default())
        .map(|v| v.user.clone());
    if let Some(user) = oldest {
        members.remove(&user);
    }
}
