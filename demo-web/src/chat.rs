//! The chat: rooms of messages in memory, bounded, and the people seen so far.
//!
//! Every room keeps its last [`MAX_MESSAGES_PER_ROOM`] messages; each message
//! has a per-room sequence number that only grows, and that number is the
//! read marker the page sends to the presence server. A room's members are
//! who opened it or posted in it: the recipients of its messages' toasts. New messages and
//! people are broadcast to the page streams through one bounded channel: a
//! stream that falls behind is told to resync instead of slowing the rest.
//!
//! A std `Mutex` is right here: it is held for a few map operations and
//! never across an `.await`.

use std::collections::{HashMap, VecDeque};
use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

use presence_server::presence_core::{RoomId, UserId};
use serde::Serialize;
use tokio::sync::broadcast;

/// Messages kept per room; older ones are dropped.
pub const MAX_MESSAGES_PER_ROOM: usize = 200;
/// Rooms the demo holds at once.
pub const MAX_ROOMS: usize = 100;
/// Longest message, in characters.
pub const MAX_TEXT_CHARS: usize = 2000;
/// Longest room name, in characters.
pub const MAX_ROOM_CHARS: usize = 40;
/// People remembered for the "active now" strip (most recent first).
pub const MAX_PEOPLE: usize = 200;
/// Members remembered per room (the most recent to open it or post in it).
pub const MAX_MEMBERS_PER_ROOM: usize = 200;
/// Updates buffered per page stream before it has to resync.
const UPDATE_BUFFER: usize = 256;

/// Why a chat request was refused. Each is the caller's fault and maps to a
/// 4xx answer with a stable code.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChatError {
    /// The room name breaks the naming rule.
    #[error(
        "room names are 1 to {MAX_ROOM_CHARS} characters: lowercase letters, digits, '-' and '_'"
    )]
    BadRoom,
    /// The message is empty after trimming.
    #[error("the message is empty")]
    EmptyText,
    /// The message is too long.
    #[error("the message is longer than {MAX_TEXT_CHARS} characters")]
    TextTooLong,
    /// The message holds control characters other than newlines and tabs.
    #[error("the message contains control characters")]
    BadText,
    /// Every room slot is taken.
    #[error("the demo holds at most {MAX_ROOMS} rooms")]
    TooManyRooms,
}

impl ChatError {
    /// The stable code sent in JSON errors.
    pub fn code(&self) -> &'static str {
        match self {
            ChatError::BadRoom => "invalid_room",
            ChatError::EmptyText | ChatError::TextTooLong | ChatError::BadText => "invalid_text",
            ChatError::TooManyRooms => "too_many_rooms",
        }
    }
}

/// A room name: 1–40 of `a-z`, `0-9`, `-`, `_`. Stricter than the protocol's
/// room ids so names read well in a URL and a sidebar.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct RoomName(String);

impl RoomName {
    /// Validates `s`.
    pub fn parse(s: &str) -> Result<Self, ChatError> {
        let ok = !s.is_empty()
            && s.chars().count() <= MAX_ROOM_CHARS
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(ChatError::BadRoom)
        }
    }

    /// The name as the presence protocol's room id.
    pub fn room_id(&self) -> Option<RoomId> {
        RoomId::new(self.0.as_str()).ok()
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Checks and trims a message text.
pub fn check_text(text: &str) -> Result<String, ChatError> {
    let text = text.trim();
    if text.is_empty() {
        return Err(ChatError::EmptyText);
    }
    if text.chars().count() > MAX_TEXT_CHARS {
        return Err(ChatError::TextTooLong);
    }
    if text
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return Err(ChatError::BadText);
    }
    Ok(text.to_owned())
}

/// One chat message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Message {
    /// The room it was posted in.
    pub room: RoomName,
    /// Per-room sequence number, from 1; the read marker.
    pub seq: u64,
    /// The author.
    pub user: String,
    /// The text, trimmed.
    pub text: String,
    /// When it was stored, in ms since the Unix epoch.
    pub at: u64,
}

/// A room in the room list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RoomInfo {
    /// Its name.
    pub room: RoomName,
    /// The latest sequence number (0 if empty).
    pub latest: u64,
    /// When the last message was posted (or the room created), in ms.
    #[serde(rename = "lastAt")]
    pub last_at: u64,
}

/// What page streams are told.
#[derive(Clone, Debug)]
pub enum Update {
    /// A message was posted.
    Message(Message),
    /// A room was created.
    Room(RoomName),
    /// The people list changed (most recent first).
    People(Vec<String>),
    /// A message `user` will not see as it arrives: their pages show a
    /// "new message" toast (where a real app would send a push).
    Toast(Toast),
}

/// A "new message" toast for one user, with the push decision's reason.
#[derive(Clone, Debug, Serialize)]
pub struct Toast {
    /// Whose pages show it.
    #[serde(skip)]
    pub user: String,
    /// The message.
    pub message: Message,
    /// Why a push: `offline`, `background` or `idle` (PROTOCOL.md, "Devices
    /// and notifications").
    pub reason: &'static str,
}

#[derive(Default)]
struct Room {
    messages: VecDeque<Message>,
    /// Who opened the room or posted in it, least recent first.
    members: VecDeque<String>,
    latest: u64,
    last_at: u64,
    /// `State::ticks` when last created or posted to: orders the room list
    /// even within one millisecond.
    touched: u64,
}

impl Room {
    /// Adds `user` as the most recent member, forgetting the least recent
    /// past [`MAX_MEMBERS_PER_ROOM`].
    fn add_member(&mut self, user: &str) {
        if self.members.back().is_some_and(|m| m == user) {
            return;
        }
        self.members.retain(|m| m != user);
        self.members.push_back(user.to_owned());
        while self.members.len() > MAX_MEMBERS_PER_ROOM {
            self.members.pop_front();
        }
    }
}

#[derive(Default)]
struct State {
    rooms: HashMap<RoomName, Room>,
    people: VecDeque<String>,
    ticks: u64,
}

/// The in-memory chat, shared by the handlers.
pub struct Chat {
    state: Mutex<State>,
    updates: broadcast::Sender<Update>,
}

impl Default for Chat {
    fn default() -> Self {
        Self::new()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

impl Chat {
    /// An empty chat with a `general` room.
    pub fn new() -> Self {
        let (updates, _) = broadcast::channel(UPDATE_BUFFER);
        let mut state = State::default();
        if let Ok(general) = RoomName::parse("general") {
            state.rooms.insert(
                general,
                Room {
                    last_at: now_ms(),
                    ..Room::default()
                },
            );
        }
        Self {
            state: Mutex::new(state),
            updates,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic elsewhere while holding the lock leaves plain data behind:
        // keep serving it rather than poisoning the whole demo.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Subscribes to updates from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Update> {
        self.updates.subscribe()
    }

    /// `user` opens `room`, which is created if it does not exist yet; they
    /// are one of its members from now on.
    pub fn enter_room(&self, room: &RoomName, user: &UserId) -> Result<RoomInfo, ChatError> {
        let mut state = self.lock();
        let created = !state.rooms.contains_key(room);
        let info = Self::room_entry(&mut state, room)?;
        if let Some(r) = state.rooms.get_mut(room) {
            r.add_member(user.as_str());
        }
        drop(state);
        if created {
            let _ = self.updates.send(Update::Room(room.clone()));
        }
        Ok(info)
    }

    fn room_entry(state: &mut State, room: &RoomName) -> Result<RoomInfo, ChatError> {
        if !state.rooms.contains_key(room) && state.rooms.len() >= MAX_ROOMS {
            return Err(ChatError::TooManyRooms);
        }
        state.ticks += 1;
        let touched = state.ticks;
        let r = state.rooms.entry(room.clone()).or_insert_with(|| Room {
            last_at: now_ms(),
            touched,
            ..Room::default()
        });
        Ok(RoomInfo {
            room: room.clone(),
            latest: r.latest,
            last_at: r.last_at,
        })
    }

    /// Rooms, most recently active first.
    pub fn rooms(&self) -> Vec<RoomInfo> {
        let state = self.lock();
        let mut rooms: Vec<(&RoomName, &Room)> = state.rooms.iter().collect();
        rooms.sort_by_key(|(_, r)| std::cmp::Reverse(r.touched));
        rooms
            .into_iter()
            .map(|(name, r)| RoomInfo {
                room: name.clone(),
                latest: r.latest,
                last_at: r.last_at,
            })
            .collect()
    }

    /// Stores a message from `user` (text already checked), creating the
    /// room if needed, and tells the streams.
    pub fn post(&self, room: &RoomName, user: &UserId, text: String) -> Result<Message, ChatError> {
        let mut state = self.lock();
        let created = !state.rooms.contains_key(room);
        Self::room_entry(&mut state, room)?;
        state.ticks += 1;
        let touched = state.ticks;
        let Some(r) = state.rooms.get_mut(room) else {
            return Err(ChatError::TooManyRooms);
        };
        r.touched = touched;
        r.latest += 1;
        r.last_at = now_ms();
        let message = Message {
            room: room.clone(),
            seq: r.latest,
            user: user.as_str().to_owned(),
            text,
            at: r.last_at,
        };
        r.messages.push_back(message.clone());
        while r.messages.len() > MAX_MESSAGES_PER_ROOM {
            r.messages.pop_front();
        }
        r.add_member(user.as_str());
        let people = Self::remember(&mut state, user.as_str());
        drop(state);
        if created {
            let _ = self.updates.send(Update::Room(room.clone()));
        }
        let _ = self.updates.send(Update::Message(message.clone()));
        if let Some(people) = people {
            let _ = self.updates.send(Update::People(people));
        }
        Ok(message)
    }

    /// Messages of `room` with a sequence number above `after`, oldest first,
    /// and the room's latest sequence number.
    pub fn messages(&self, room: &RoomName, after: u64) -> (Vec<Message>, u64) {
        let state = self.lock();
        match state.rooms.get(room) {
            Some(r) => (
                r.messages
                    .iter()
                    .filter(|m| m.seq > after)
                    .cloned()
                    .collect(),
                r.latest,
            ),
            None => (Vec::new(), 0),
        }
    }

    /// The members of `room` (who opened it or posted in it), least recent
    /// first.
    pub fn members(&self, room: &RoomName) -> Vec<String> {
        let state = self.lock();
        state
            .rooms
            .get(room)
            .map(|r| r.members.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Tells `toast.user`'s pages about a message they will not see live.
    pub fn toast(&self, toast: Toast) {
        let _ = self.updates.send(Update::Toast(toast));
    }

    /// Remembers that `user` was here, most recent first.
    pub fn saw(&self, user: &str) {
        let people = Self::remember(&mut self.lock(), user);
        if let Some(people) = people {
            let _ = self.updates.send(Update::People(people));
        }
    }

    /// Adds `user` to the people list; the new list if it changed.
    fn remember(state: &mut State, user: &str) -> Option<Vec<String>> {
        if state.people.front().is_some_and(|p| p == user) {
            return None;
        }
        let known = state.people.iter().position(|p| p == user);
        if let Some(i) = known {
            state.people.remove(i);
        }
        state.people.push_front(user.to_owned());
        state.people.truncate(MAX_PEOPLE);
        // Reordering alone is not news for the pages: they watch a set.
        known
            .is_none()
            .then(|| state.people.iter().cloned().collect())
    }

    /// People seen so far, most recent first.
    pub fn people(&self) -> Vec<String> {
        self.lock().people.iter().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn room(s: &str) -> RoomName {
        RoomName::parse(s).expect("valid room")
    }

    fn user(s: &str) -> UserId {
        UserId::new(s).expect("valid user")
    }

    #[test]
    fn room_names_are_short_lowercase_words() {
        assert!(RoomName::parse("general").is_ok());
        assert!(RoomName::parse("team-2_x").is_ok());
        for bad in ["", "General", "a b", "ü", "a/b", "../x", &"a".repeat(41)] {
            assert_eq!(RoomName::parse(bad), Err(ChatError::BadRoom), "{bad:?}");
        }
        assert!(RoomName::parse(&"a".repeat(40)).is_ok());
    }

    #[test]
    fn texts_are_trimmed_bounded_and_free_of_control_characters() {
        assert_eq!(check_text("  hi\n"), Ok("hi".into()));
        assert_eq!(check_text("a\nb\tc"), Ok("a\nb\tc".into()));
        assert_eq!(check_text(" \n "), Err(ChatError::EmptyText));
        assert_eq!(check_text("a\u{7}"), Err(ChatError::BadText));
        assert!(check_text(&"é".repeat(MAX_TEXT_CHARS)).is_ok());
        assert_eq!(
            check_text(&"é".repeat(MAX_TEXT_CHARS + 1)),
            Err(ChatError::TextTooLong)
        );
    }

    #[test]
    fn sequence_numbers_grow_per_room_and_old_messages_are_dropped() {
        let chat = Chat::new();
        let (a, b) = (room("a"), room("b"));
        for i in 1..=(MAX_MESSAGES_PER_ROOM as u64 + 5) {
            let m = chat.post(&a, &user("ana"), format!("m{i}")).expect("posts");
            assert_eq!(m.seq, i);
        }
        assert_eq!(
            chat.post(&b, &user("bob"), "x".into()).map(|m| m.seq),
            Ok(1)
        );
        let (all, latest) = chat.messages(&a, 0);
        assert_eq!(latest, MAX_MESSAGES_PER_ROOM as u64 + 5);
        assert_eq!(all.len(), MAX_MESSAGES_PER_ROOM);
        assert_eq!(all.first().map(|m| m.seq), Some(6));
        let (tail, _) = chat.messages(&a, latest - 2);
        assert_eq!(
            tail.iter().map(|m| m.seq).collect::<Vec<_>>(),
            [latest - 1, latest]
        );
        assert_eq!(chat.messages(&room("nowhere"), 0), (Vec::new(), 0));
    }

    #[test]
    fn rooms_are_bounded() {
        let chat = Chat::new(); // holds `general`
        for i in 1..MAX_ROOMS {
            chat.enter_room(&room(&format!("r{i}")), &user("ana"))
                .expect("room");
        }
        assert_eq!(
            chat.enter_room(&room("one-too-many"), &user("ana")),
            Err(ChatError::TooManyRooms)
        );
        assert_eq!(
            chat.post(&room("one-too-many"), &user("ana"), "x".into()),
            Err(ChatError::TooManyRooms)
        );
        // Existing rooms still take messages.
        assert!(chat.post(&room("r1"), &user("ana"), "x".into()).is_ok());
        assert_eq!(chat.rooms().first().map(|r| r.room.as_str()), Some("r1"));
    }

    #[test]
    fn people_are_most_recent_first_bounded_and_announced_only_when_new() {
        let chat = Chat::new();
        let mut rx = chat.subscribe();
        chat.saw("ana");
        chat.saw("bob");
        chat.saw("ana");
        assert_eq!(chat.people(), ["ana", "bob"]);
        let mut announced = Vec::new();
        while let Ok(u) = rx.try_recv() {
            if let Update::People(p) = u {
                announced.push(p);
            }
        }
        assert_eq!(announced, [vec!["ana"], vec!["bob", "ana"]]);
        for i in 0..MAX_PEOPLE + 10 {
            chat.saw(&format!("u{i}"));
        }
        assert_eq!(chat.people().len(), MAX_PEOPLE);
    }

    #[test]
    fn members_are_who_opened_or_posted_least_recent_first_and_bounded() {
        let chat = Chat::new();
        let general = room("general");
        chat.enter_room(&general, &user("ana")).expect("enters");
        chat.post(&general, &user("bob"), "hi".into())
            .expect("posts");
        chat.enter_room(&general, &user("ana"))
            .expect("enters again");
        assert_eq!(chat.members(&general), ["bob", "ana"]);
        assert!(chat.members(&room("elsewhere")).is_empty());
        for i in 0..MAX_MEMBERS_PER_ROOM {
            chat.enter_room(&general, &user(&format!("u{i}")))
                .expect("enters");
        }
        let members = chat.members(&general);
        assert_eq!(members.len(), MAX_MEMBERS_PER_ROOM);
        assert!(
            !members.contains(&"bob".to_owned()),
            "the least recent go first"
        );
    }
}
