//! Large rooms: past a threshold, a room's members stop hearing every change.
//!
//! In a room of N members where everyone changes, per-change diffs cost N²
//! deliveries. A room with at least [`Threshold`] online members is *large*:
//! a joiner's `snapshot` carries the counts and only the first online members
//! (in user-id order, at most [`MAX_LARGE_SNAPSHOT_MEMBERS`]), and instead of
//! `diffs` the members get a `summary` at most once per interval: the counts
//! as they stand and who came and went (bounded). Individuals a client shows
//! are followed with `watch`, as anywhere. The room is small again below 80 %
//! of the threshold; the gap keeps a room at the boundary from flapping.
//!
//! This module is the rule and one room's bookkeeping, sans I/O: the server
//! feeds a [`LargeRoom`] the room's diffs, asks it when a summary is due, and
//! hands it the true counts then. Counts are never accumulated from diffs, so
//! they cannot drift from the truth.

use std::collections::HashMap;
use std::time::Duration;

use crate::ids::{RoomId, UserId};
use crate::limits::{
    MAX_LARGE_SNAPSHOT_MEMBERS, MAX_SUMMARY_BYTES, MAX_SUMMARY_JOINED, MAX_SUMMARY_LEFT,
};
use crate::presence::{Millis, PresenceView};
use crate::protocol::{Counts, Diff, ServerMessage, encode};

/// The online members at which a room becomes large.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Threshold(pub usize);

impl Threshold {
    /// A large room is small again below this: 80 % of the threshold
    /// (rounded up), so one member coming and going at the threshold does
    /// not switch the mode each time.
    pub fn leave_below(self) -> usize {
        self.0 - self.0 / 5
    }

    /// Whether a room with `online` members is large, given whether it was.
    pub fn is_large(self, was_large: bool, online: usize) -> bool {
        online
            >= if was_large {
                self.leave_below()
            } else {
                self.0
            }
    }
}

/// One large room's pending summary. Holds at most [`MAX_SUMMARY_JOINED`] +
/// [`MAX_SUMMARY_LEFT`] user ids, whatever the room's size.
#[derive(Clone, Debug)]
pub struct LargeRoom {
    /// Who came (or came back) since the last summary, oldest first.
    joined: Vec<UserId>,
    /// Who left since the last summary, oldest first.
    left: Vec<UserId>,
    /// The counts the members were last shown.
    shown: Counts,
    /// A change that may move the counts arrived since the last summary.
    news: bool,
    /// No summary before this: the last one's time plus the interval.
    next: Millis,
}

impl LargeRoom {
    /// A room that became large at `now`, its members just shown `counts`
    /// in a snapshot; the first summary may follow one interval later.
    pub fn new(now: Millis, interval: Duration, counts: Counts) -> Self {
        Self {
            joined: Vec::new(),
            left: Vec::new(),
            shown: counts,
            news: false,
            next: now.after(interval),
        }
    }

    /// Takes one of the room's diffs. A user's last move wins: one who came
    /// and went within an interval is only listed as left. Typing, read
    /// markers and status changes are not summarized.
    pub fn note(&mut self, diff: &Diff) {
        let (user, came) = match diff {
            Diff::UserConnected { presence } => (&presence.user, true),
            Diff::UserDisconnected { user, .. } | Diff::UserLeft { user } => (user, false),
            Diff::UserIdle { .. } | Diff::UserActive { .. } => {
                self.news = true;
                return;
            }
            _ => return,
        };
        self.joined.retain(|u| u != user);
        self.left.retain(|u| u != user);
        let (list, max) = if came {
            (&mut self.joined, MAX_SUMMARY_JOINED)
        } else {
            (&mut self.left, MAX_SUMMARY_LEFT)
        };
        if list.len() < max {
            list.push(user.clone());
        }
        self.news = true;
    }

    /// When the next summary may go out, if one may be owed.
    pub fn due(&self) -> Option<Millis> {
        self.news.then_some(self.next)
    }

    /// The summary to send at `now`, given the room's true `counts` and each
    /// user's view in the room (`None`: not shown there any more); `None`
    /// when none is due or nothing the members were shown changed.
    pub fn take(
        &mut self,
        room: &RoomId,
        now: Millis,
        interval: Duration,
        counts: Counts,
        view: impl Fn(&UserId) -> Option<PresenceView>,
    ) -> Option<ServerMessage> {
        if !self.news || now < self.next {
            return None;
        }
        self.news = false;
        let mut joined: Vec<PresenceView> =
            self.joined.drain(..).filter_map(|u| view(&u)).collect();
        let mut left = core::mem::take(&mut self.left);
        if counts == self.shown && joined.is_empty() && left.is_empty() {
            return None;
        }
        self.shown = counts;
        self.next = now.after(interval);
        // Long ids and status texts could make the lists far bigger than
        // usual: keep the frame as bounded as every other (the later moves
        // go first, and who came before who went).
        let frame = 160 + encode(room).len();
        while !(joined.is_empty() && left.is_empty())
            && frame + encode(&joined).len() + encode(&left).len() > MAX_SUMMARY_BYTES
        {
            if joined.is_empty() {
                left.truncate(left.len() / 2);
            } else {
                joined.truncate(joined.len() / 2);
            }
        }
        Some(ServerMessage::Summary {
            room: room.clone(),
            counts,
            joined,
            left,
        })
    }
}

/// What became of a large room whose summary was due.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Due {
    /// Send this `summary` to the room's members.
    Summary(ServerMessage),
    /// The room is small again: send every member a full snapshot.
    Small,
    /// Nothing the members were shown changed.
    Quiet,
}

/// Which of a node's rooms are large, with their pending summaries; one
/// entry per large room this node has members in.
#[derive(Clone, Debug)]
pub struct LargeRooms {
    threshold: usize,
    interval: Duration,
    /// Per-room thresholds set by the host app.
    overrides: HashMap<RoomId, usize>,
    rooms: HashMap<RoomId, LargeRoom>,
}

impl LargeRooms {
    /// Rooms become large at `threshold` online members; summaries go at
    /// most once per `interval`.
    pub fn new(threshold: usize, interval: Duration) -> Self {
        Self {
            threshold,
            interval,
            overrides: HashMap::new(),
            rooms: HashMap::new(),
        }
    }

    /// Sets (`Some`) or clears a room's own threshold; it applies from the
    /// room's next change on.
    pub fn set_threshold(&mut self, room: RoomId, threshold: Option<usize>) {
        match threshold {
            Some(t) => self.overrides.insert(room, t),
            None => self.overrides.remove(&room),
        };
    }

    /// The threshold that applies to `room`.
    pub fn threshold(&self, room: &RoomId) -> Threshold {
        Threshold(*self.overrides.get(room).unwrap_or(&self.threshold))
    }

    /// Whether `room` is large here.
    pub fn is_large(&self, room: &RoomId) -> bool {
        self.rooms.contains_key(room)
    }

    /// How many rooms are large here.
    pub fn len(&self) -> usize {
        self.rooms.len()
    }

    /// Whether no room is large here.
    pub fn is_empty(&self) -> bool {
        self.rooms.is_empty()
    }

    /// Whether a small room with at most `size` online members could be
    /// large: lets the caller skip counting rooms far below the threshold.
    pub fn may_enter(&self, room: &RoomId, size: usize) -> bool {
        !self.is_large(room) && size >= self.threshold(room).0
    }

    /// A small room had changes and now has `counts`: `true` if it just
    /// became large (send every member a large snapshot).
    pub fn enter(&mut self, room: &RoomId, now: Millis, counts: Counts) -> bool {
        if self.is_large(room) || !self.threshold(room).is_large(false, counts.online) {
            return false;
        }
        let large = LargeRoom::new(now, self.interval, counts);
        self.rooms.insert(room.clone(), large);
        true
    }

    /// Files a room's diffs: `true` if the room is large, and they wait for
    /// its next summary instead of going out.
    pub fn absorb(&mut self, room: &RoomId, diffs: &[Diff]) -> bool {
        let Some(large) = self.rooms.get_mut(room) else {
            return false;
        };
        for d in diffs {
            large.note(d);
        }
        true
    }

    /// When the next summary of any room is due.
    pub fn next_due(&self) -> Option<Millis> {
        self.rooms.values().filter_map(LargeRoom::due).min()
    }

    /// The large rooms whose summary is due at `now`.
    pub fn due(&self, now: Millis) -> Vec<RoomId> {
        self.rooms
            .iter()
            .filter(|(_, l)| l.due().is_some_and(|at| at <= now))
            .map(|(r, _)| r.clone())
            .collect()
    }

    /// A due room, given its true `counts` and its members' views: its
    /// summary, or the news that it is small again (then it is forgotten).
    pub fn summarize(
        &mut self,
        room: &RoomId,
        now: Millis,
        counts: Counts,
        view: impl Fn(&UserId) -> Option<PresenceView>,
    ) -> Due {
        if !self.threshold(room).is_large(true, counts.online) {
            return match self.rooms.remove(room) {
                Some(_) => Due::Small,
                None => Due::Quiet,
            };
        }
        let interval = self.interval;
        match self.rooms.get_mut(room) {
            Some(large) => large
                .take(room, now, interval, counts, view)
                .map_or(Due::Quiet, Due::Summary),
            None => Due::Quiet,
        }
    }

    /// Forgets rooms `keep` says this node has no members in any more.
    pub fn retain(&mut self, mut keep: impl FnMut(&RoomId) -> bool) {
        self.rooms.retain(|room, _| keep(room));
    }
}

/// The first `max` of `members` in user-id order (for a large room's
/// snapshot), without sorting all of them.
pub fn first_by_user<T>(mut members: Vec<(&UserId, T)>, max: usize) -> Vec<(&UserId, T)> {
    if members.len() > max {
        if max == 0 {
            return Vec::new();
        }
        members.select_nth_unstable_by(max - 1, |a, b| a.0.cmp(b.0));
        members.truncate(max);
    }
    members.sort_unstable_by(|a, b| a.0.cmp(b.0));
    members
}

/// [`first_by_user`] with the snapshot's cap.
pub fn snapshot_members<T>(members: Vec<(&UserId, T)>) -> Vec<(&UserId, T)> {
    first_by_user(members, MAX_LARGE_SNAPSHOT_MEMBERS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::presence::PresenceState;

    const SEC: Duration = Duration::from_secs(1);

    fn id(s: &str) -> UserId {
        UserId::new(s).expect("valid")
    }

    fn view(u: &UserId) -> Option<PresenceView> {
        Some(PresenceView {
            state: PresenceState::Active,
            ..PresenceView::offline(u.clone())
        })
    }

    fn came(u: &str) -> Diff {
        Diff::UserConnected {
            presence: view(&id(u)).expect("a view"),
        }
    }

    fn went(u: &str) -> Diff {
        Diff::UserDisconnected {
            user: id(u),
            last_seen: Some(Millis(1)),
        }
    }

    fn online(n: usize) -> Counts {
        Counts {
            online: n,
            active: n,
            idle: 0,
        }
    }

    #[test]
    fn the_threshold_is_hysteretic() {
        let t = Threshold(1000);
        assert_eq!(t.leave_below(), 800);
        assert!(!t.is_large(false, 999));
        assert!(t.is_large(false, 1000));
        assert!(t.is_large(true, 800), "stays large down to 80 %");
        assert!(!t.is_large(true, 799));
        assert!(!t.is_large(false, 800), "but does not become large there");
        let t = Threshold(5);
        assert_eq!(t.leave_below(), 4);
        assert_eq!(Threshold(7).leave_below(), 6, "80 % rounded up");
        assert_eq!(Threshold(1).leave_below(), 1);
    }

    #[test]
    fn summaries_go_at_most_once_per_interval_and_only_with_news() {
        let room = RoomId::new("r").expect("valid");
        let mut l = LargeRoom::new(Millis(0), SEC, online(10));
        assert_eq!(l.due(), None, "nothing owed");
        l.note(&came("a"));
        assert_eq!(
            l.due(),
            Some(Millis(1000)),
            "one interval after the snapshot"
        );
        assert!(l.take(&room, Millis(999), SEC, online(11), view).is_none());
        let Some(ServerMessage::Summary {
            counts,
            joined,
            left,
            ..
        }) = l.take(&room, Millis(1000), SEC, online(11), view)
        else {
            panic!("a summary is due");
        };
        assert_eq!((counts.online, joined.len(), left.len()), (11, 1, 0));
        assert_eq!(l.due(), None);
        assert!(
            l.take(&room, Millis(5000), SEC, online(11), view).is_none(),
            "no news, no summary"
        );
        l.note(&Diff::UserActive { user: id("a") });
        assert_eq!(l.due(), Some(Millis(2000)));
        assert!(
            l.take(&room, Millis(5000), SEC, online(11), view).is_none(),
            "news that did not move the counts is no summary"
        );
        l.note(&Diff::TypingStarted { user: id("a") });
        assert_eq!(l.due(), None, "typing is not summarized");
        l.note(&went("b"));
        assert_eq!(
            l.due(),
            Some(Millis(2000)),
            "a quiet room's next change goes at once"
        );
        assert!(l.take(&room, Millis(5000), SEC, online(10), view).is_some());
    }

    #[test]
    fn a_users_last_move_wins_and_lists_are_bounded() {
        let room = RoomId::new("r").expect("valid");
        let mut l = LargeRoom::new(Millis(0), Duration::ZERO, online(0));
        l.note(&came("a"));
        l.note(&went("a"));
        l.note(&went("b"));
        l.note(&came("b"));
        for i in 0..1000 {
            l.note(&came(&format!("j{i}")));
            l.note(&went(&format!("l{i}")));
        }
        let Some(ServerMessage::Summary { joined, left, .. }) =
            l.take(&room, Millis(0), Duration::ZERO, online(5), view)
        else {
            panic!("a summary");
        };
        assert_eq!(joined.len(), MAX_SUMMARY_JOINED);
        assert_eq!(left.len(), MAX_SUMMARY_LEFT);
        assert_eq!(joined[0].user, id("b"), "left, then back: joined");
        assert_eq!(left[0], id("a"), "came, then went: left");
        assert!(!left.contains(&id("b")) && !joined.iter().any(|v| v.user == id("a")));
    }

    #[test]
    fn a_summary_of_long_ids_stays_within_its_byte_bound() {
        let room = RoomId::new("r").expect("valid");
        let mut l = LargeRoom::new(Millis(0), Duration::ZERO, online(0));
        let long = |p: &str, i: usize| format!("{p}{i:03}{}", "x".repeat(120));
        for i in 0..MAX_SUMMARY_LEFT {
            l.note(&came(&long("j", i)));
            l.note(&went(&long("l", i)));
        }
        let msg = l
            .take(&room, Millis(0), Duration::ZERO, online(1), view)
            .expect("a summary");
        assert!(encode(&msg).len() <= MAX_SUMMARY_BYTES);
        let ServerMessage::Summary { joined, left, .. } = msg else {
            panic!("a summary");
        };
        assert!(
            joined.is_empty() && !left.is_empty(),
            "who went is kept longest"
        );
        assert_eq!(left[0], id(&long("l", 0)), "the first to go");
    }

    #[test]
    fn the_first_members_are_the_smallest_ids_in_order() {
        let ids: Vec<UserId> = (0..50).rev().map(|i| id(&format!("u{i:02}"))).collect();
        let got = first_by_user(ids.iter().map(|u| (u, ())).collect(), 3);
        let names: Vec<&str> = got.iter().map(|(u, _)| u.as_str()).collect();
        assert_eq!(names, ["u00", "u01", "u02"]);
        assert!(first_by_user(ids.iter().map(|u| (u, ())).collect(), 0).is_empty());
        assert_eq!(
            first_by_user(ids.iter().map(|u| (u, ())).collect(), 99).len(),
            50
        );
    }
}
