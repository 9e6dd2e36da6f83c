//! The client side of the protocol, sans I/O: what the browser SDK (and any
//! Rust client, the load generator included) runs.
//!
//! The caller reports page signals and socket events with `now`, performs the
//! [`Action`]s it polls (open the socket, send a frame, close), calls
//! [`Client::tick`] at [`Client::next_deadline`], and hands [`ClientEvent`]s
//! to the app. Only transitions go on the wire: input while active costs a
//! timestamp, not a frame. While disconnected nothing queues up: the client
//! keeps the *desired* state (rooms, watches, status, markers, activity) and
//! sends it once after the next `welcome`.

mod activity;
mod backoff;
mod cache;
mod vecmap;

use crate::prelude::*;
use alloc::collections::VecDeque;
use core::time::Duration;

pub use activity::{ActivityConfig, ActivityTracker};
pub use backoff::Backoff;
pub use cache::{Cache, Change, MAX_OFFLINE_MEMBERS_KEPT, RoomView};
pub use vecmap::{VecMap, VecSet};

use crate::ids::{ResumeToken, RoomId, UserId};
use crate::limits::{MAX_USERS_PER_WATCH_FRAME, MAX_WATCHED_PER_CONNECTION};
use crate::presence::{Activity, Millis, PresenceView, Status, StatusText};
use crate::protocol::decode_server;
use crate::protocol::{ClientMessage, CloseCode, ErrorCode, PROTOCOL_VERSION, ServerMessage};

/// Client timings. Defaults suit a browser tab.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientConfig {
    /// Idle detection delays.
    pub activity: ActivityConfig,
    /// Take `idle_after` from the server's `welcome` (unless the app set one).
    pub idle_after_from_server: bool,
    /// First reconnect ceiling.
    pub backoff_base: Duration,
    /// Largest reconnect delay.
    pub backoff_cap: Duration,
    /// A `ping` (or `hello`) unanswered this long means the socket is dead,
    /// even without a close event (mobile Safari drops sockets silently).
    pub reply_timeout: Duration,
    /// Resend `typing: true` at most this often while the user types.
    pub typing_refresh: Duration,
    /// Send `typing: false` after this long without typing input.
    pub typing_stop_after: Duration,
    /// Seed for heartbeat and backoff jitter.
    pub seed: u64,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            activity: ActivityConfig::default(),
            idle_after_from_server: true,
            backoff_base: Duration::from_millis(500),
            backoff_cap: Duration::from_secs(30),
            reply_timeout: Duration::from_secs(10),
            typing_refresh: Duration::from_secs(3),
            typing_stop_after: Duration::from_secs(4),
            seed: 0x5eed,
        }
    }
}

/// Something the caller must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Open a new socket now, then call [`Client::opened`] (or
    /// [`Client::closed`] if it fails).
    Connect,
    /// Send this text frame.
    Send(String),
    /// Close the socket with this code.
    Close(u16),
}

/// The connection as the app sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectionState {
    /// Opening a socket or waiting for `welcome`.
    Connecting,
    /// `welcome` received: presence is live.
    Connected,
    /// Lost; retrying in `retry_in`.
    Reconnecting {
        /// Delay before the next attempt.
        retry_in: Duration,
        /// Attempts since the last success.
        attempt: u32,
    },
    /// Closed by the app, or refused for good (close code ≥ 4100).
    Closed {
        /// The close code, when the server closed.
        code: Option<u16>,
    },
}

/// Something the app may want to show.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientEvent {
    /// The connection changed state.
    Connection(ConnectionState),
    /// A user's presence changed, in a room (`Some`) or among watched users.
    Presence {
        /// The room, or `None` for the watch list.
        room: Option<RoomId>,
        /// The user's presence now.
        view: PresenceView,
    },
    /// A user started or stopped typing in a room.
    Typing {
        /// The room.
        room: RoomId,
        /// Who.
        user: UserId,
        /// Typing or not.
        active: bool,
    },
    /// A user's read marker moved in a room.
    Receipt {
        /// The room.
        room: RoomId,
        /// Who.
        user: UserId,
        /// The new marker.
        marker: u64,
    },
    /// The user's own status, as set from any of their connections.
    SelfStatus {
        /// Status.
        status: Status,
        /// Text.
        text: Option<StatusText>,
    },
    /// The server refused a frame.
    Error {
        /// Stable code.
        code: ErrorCode,
        /// Detail.
        message: String,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Link {
    /// Not started, or closed for good.
    Closed,
    /// Waiting to reconnect.
    Waiting { retry_at: Millis },
    /// Socket being opened.
    Opening { since: Millis },
    /// `hello` sent, waiting for `welcome`.
    Greeting { since: Millis },
    /// Live.
    Ready {
        next_ping: Millis,
        heartbeat: Duration,
    },
}

#[derive(Clone, Copy, Debug)]
struct Typing {
    sent_at: Millis,
    stop_at: Millis,
}

/// The client machine. See the module docs.
#[derive(Debug)]
pub struct Client {
    config: ClientConfig,
    tracker: ActivityTracker,
    link: Link,
    backoff: Backoff,
    last_heard: Millis,
    ping_sent: Option<Millis>,
    resume: Option<ResumeToken>,
    me: Option<UserId>,
    sent_activity: Option<Activity>,
    rooms: VecSet<RoomId>,
    watched: VecSet<UserId>,
    status: Option<(Status, Option<StatusText>)>,
    status_sent: bool,
    typing: VecMap<RoomId, Typing>,
    markers: VecMap<RoomId, u64>,
    cache: Cache,
    actions: VecDeque<Action>,
    events: VecDeque<ClientEvent>,
}

/// Why a client call was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The watch list would exceed the server's limit.
    TooManyWatched,
    /// Typing or read in a room that was not joined.
    NotInRoom,
}

// Written out with `write_str` (no `write!`): see `crate::text`.
impl core::fmt::Display for ClientError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::TooManyWatched => {
                f.write_str("at most ")?;
                crate::text::write_decimal(f, MAX_WATCHED_PER_CONNECTION as u64)?;
                f.write_str(" watched users")
            }
            Self::NotInRoom => f.write_str("join the room first"),
        }
    }
}

impl Client {
    /// A client that has not connected yet; call [`Client::start`].
    pub fn new(now: Millis, config: ClientConfig) -> Self {
        Self {
            tracker: ActivityTracker::new(now, config.activity),
            backoff: Backoff::new(config.backoff_base, config.backoff_cap, config.seed),
            config,
            link: Link::Closed,
            last_heard: now,
            ping_sent: None,
            resume: None,
            me: None,
            sent_activity: None,
            rooms: VecSet::default(),
            watched: VecSet::default(),
            status: None,
            status_sent: true,
            typing: VecMap::default(),
            markers: VecMap::default(),
            cache: Cache::default(),
            actions: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// Connects (or reconnects now, skipping any backoff wait).
    pub fn start(&mut self, now: Millis) {
        if matches!(self.link, Link::Closed | Link::Waiting { .. }) {
            self.link = Link::Opening { since: now };
            self.actions.push_back(Action::Connect);
            self.event(ClientEvent::Connection(ConnectionState::Connecting));
        }
    }

    /// Closes for good (the app is done). Sends `leaving` first so observers
    /// see the user go within the server's short leave grace.
    pub fn close(&mut self) {
        if let Link::Ready { .. } = self.link {
            self.send(&ClientMessage::Leaving);
        }
        if !matches!(self.link, Link::Closed | Link::Waiting { .. }) {
            self.actions.push_back(Action::Close(1000));
        }
        self.link = Link::Closed;
        self.event(ClientEvent::Connection(ConnectionState::Closed {
            code: None,
        }));
    }

    /// The page is being hidden for navigation, close or the back/forward
    /// cache (`pagehide`): say `leaving`, close, and keep the resume token so
    /// `pageshow` (or the reloaded page) can resume.
    pub fn page_hide(&mut self) {
        self.close();
    }

    /// The token to persist across a reload (per page: `sessionStorage`).
    pub fn resume_token(&self) -> Option<&ResumeToken> {
        self.resume.as_ref()
    }

    /// A token persisted by an earlier page, to present in the next `hello`.
    pub fn set_resume_token(&mut self, token: Option<ResumeToken>) {
        self.resume = token;
    }

    /// The socket opened: say hello.
    pub fn opened(&mut self, now: Millis) {
        if !matches!(self.link, Link::Opening { .. }) {
            return;
        }
        self.link = Link::Greeting { since: now };
        self.last_heard = now;
        let activity = self.tracker.activity(now);
        self.sent_activity = Some(activity);
        let hello = ClientMessage::Hello {
            v: PROTOCOL_VERSION,
            resume: self.resume.clone(),
            activity: Some(activity),
        };
        self.send_now(&hello);
    }

    /// The socket closed or failed to open. `code` is the close code, if any.
    pub fn closed(&mut self, now: Millis, code: Option<u16>) {
        if matches!(self.link, Link::Closed | Link::Waiting { .. }) {
            return; // a stale socket's late close, or already handled
        }
        self.ping_sent = None;
        self.typing = VecMap::default();
        // Close codes 4100–4199 mean "do not reconnect by yourself".
        let final_code = code.is_some_and(|c| (4100..4200).contains(&c));
        if final_code {
            self.link = Link::Closed;
            self.event(ClientEvent::Connection(ConnectionState::Closed { code }));
            return;
        }
        let retry_in = self.backoff.next_delay();
        self.link = Link::Waiting {
            retry_at: now.after(retry_in),
        };
        let attempt = self.backoff.attempts();
        self.event(ClientEvent::Connection(ConnectionState::Reconnecting {
            retry_in,
            attempt,
        }));
    }

    /// The browser says the network is back: retry now instead of waiting.
    pub fn network_online(&mut self, now: Millis) {
        if let Link::Waiting { .. } = self.link {
            self.backoff.reset();
            self.start(now);
        }
    }

    /// The browser says the network is gone. A socket can look open for a
    /// long while after that: probe it with a ping now, so a dead one is
    /// dropped after `reply_timeout` rather than after the next heartbeat.
    /// (Reconnect attempts go on: `navigator.onLine` is only a hint, and
    /// a server on this machine stays reachable.)
    pub fn network_offline(&mut self, now: Millis) {
        if let Link::Ready { heartbeat, .. } = self.link {
            self.link = Link::Ready {
                next_ping: now,
                heartbeat,
            };
            self.tick(now);
        }
    }

    /// A text frame arrived.
    pub fn received(&mut self, now: Millis, text: &str) {
        self.last_heard = now;
        let msg = match decode_server(text) {
            Ok(msg) => msg,
            Err(e) => {
                // A newer server may send types we do not know: skip them.
                if e.code != ErrorCode::UnknownType {
                    self.event(ClientEvent::Error {
                        code: e.code,
                        message: e.message,
                    });
                }
                return;
            }
        };
        match msg {
            ServerMessage::Welcome {
                user,
                resume,
                heartbeat_ms,
                idle_after_ms,
                status,
                text,
                ..
            } => self.welcome(now, user, resume, heartbeat_ms, idle_after_ms, status, text),
            ServerMessage::Snapshot {
                room,
                members,
                typing,
                receipts,
            } => {
                if !self.rooms.contains(&room) {
                    return;
                }
                for view in &members {
                    self.event(ClientEvent::Presence {
                        room: Some(room.clone()),
                        view: view.clone(),
                    });
                }
                self.cache.snapshot(room, members, typing, receipts);
            }
            ServerMessage::Diffs { room, diffs } => {
                for diff in diffs {
                    if let Some(change) = self.cache.apply(now, room.as_ref(), diff) {
                        self.change(room.clone(), change);
                    }
                }
            }
            ServerMessage::Watching { users } => {
                for view in &users {
                    self.event(ClientEvent::Presence {
                        room: None,
                        view: view.clone(),
                    });
                }
                self.cache.watching(users);
            }
            ServerMessage::SelfStatus { status, text } => {
                // The server's word on the user's status (set here or in
                // another tab) is the state; a later local change wins again.
                if self.status_sent {
                    self.status = Some((status, text.clone()));
                }
                self.event(ClientEvent::SelfStatus { status, text });
            }
            ServerMessage::Error { code, message, .. } => {
                self.event(ClientEvent::Error { code, message });
            }
            ServerMessage::Pong => {}
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn welcome(
        &mut self,
        now: Millis,
        user: UserId,
        resume: ResumeToken,
        heartbeat_ms: u64,
        idle_after_ms: u64,
        status: Status,
        text: Option<StatusText>,
    ) {
        self.me = Some(user);
        self.resume = Some(resume);
        self.backoff.reset();
        if self.config.idle_after_from_server && idle_after_ms > 0 {
            let mut c = self.tracker.config();
            c.idle_after = Duration::from_millis(idle_after_ms);
            self.tracker.set_config(c);
        }
        let heartbeat = Duration::from_millis(heartbeat_ms.max(1_000));
        self.link = Link::Ready {
            next_ping: now.after(self.jittered(heartbeat)),
            heartbeat,
        };
        self.event(ClientEvent::Connection(ConnectionState::Connected));
        // Resend the desired state; the server ignores what it already has.
        for room in self.rooms.clone().iter() {
            self.send(&ClientMessage::Join { room: room.clone() });
        }
        let watched: Vec<UserId> = self.watched.iter().cloned().collect();
        for chunk in watched.chunks(MAX_USERS_PER_WATCH_FRAME) {
            self.send(&ClientMessage::Watch {
                users: chunk.to_vec(),
            });
        }
        match self.status.clone() {
            Some((status, text)) if !self.status_sent => {
                self.send(&ClientMessage::Status { status, text });
                self.status_sent = true;
            }
            _ => {
                self.status = Some((status, text.clone()));
                self.event(ClientEvent::SelfStatus { status, text });
            }
        }
        for (room, &marker) in self.markers.clone().iter() {
            self.send(&ClientMessage::Read {
                room: room.clone(),
                marker,
            });
        }
        self.sync_activity(now);
    }

    /// Input (key, pointer, wheel, touch, scroll).
    pub fn input(&mut self, now: Millis) {
        self.tracker.input(now);
        self.sync_activity(now);
    }

    /// `visibilitychange`.
    pub fn set_hidden(&mut self, now: Millis, hidden: bool) {
        self.tracker.set_hidden(now, hidden);
        self.sync_activity(now);
    }

    /// `focus` / `blur` of the window.
    pub fn set_focused(&mut self, now: Millis, focused: bool) {
        self.tracker.set_focused(now, focused);
        self.sync_activity(now);
    }

    /// Screen lock (Idle Detection API).
    pub fn set_locked(&mut self, now: Millis, locked: bool) {
        self.tracker.set_locked(now, locked);
        self.sync_activity(now);
    }

    /// Sets the app's own idle-after, overriding the server's.
    pub fn set_idle_after(&mut self, now: Millis, idle_after: Duration) {
        let mut c = self.tracker.config();
        c.idle_after = idle_after;
        self.tracker.set_config(c);
        self.config.idle_after_from_server = false;
        self.sync_activity(now);
    }

    /// This page's activity now.
    pub fn activity(&self, now: Millis) -> Activity {
        self.tracker.activity(now)
    }

    /// Joins a room (again after every reconnect).
    pub fn join(&mut self, room: RoomId) {
        if self.rooms.insert(room.clone()) {
            self.send(&ClientMessage::Join { room });
        }
    }

    /// Leaves a room.
    pub fn leave(&mut self, room: &RoomId) {
        if self.rooms.remove(room) {
            self.typing.remove(room);
            self.cache.forget_room(room);
            self.send(&ClientMessage::Leave { room: room.clone() });
        }
    }

    /// Watches users (a contact list).
    pub fn watch(&mut self, users: Vec<UserId>) -> Result<(), ClientError> {
        let mut new = VecSet::default();
        for u in users {
            if !self.watched.contains(&u) {
                new.insert(u);
            }
        }
        let new: Vec<UserId> = new.iter().cloned().collect();
        if self.watched.len() + new.len() > MAX_WATCHED_PER_CONNECTION {
            return Err(ClientError::TooManyWatched);
        }
        for u in &new {
            self.watched.insert(u.clone());
        }
        for chunk in new.chunks(MAX_USERS_PER_WATCH_FRAME) {
            self.send(&ClientMessage::Watch {
                users: chunk.to_vec(),
            });
        }
        Ok(())
    }

    /// Stops watching users.
    pub fn unwatch(&mut self, users: Vec<UserId>) {
        let gone: Vec<UserId> = users
            .into_iter()
            .filter(|u| self.watched.remove(u))
            .collect();
        self.cache.unwatch(&gone);
        for chunk in gone.chunks(MAX_USERS_PER_WATCH_FRAME) {
            self.send(&ClientMessage::Unwatch {
                users: chunk.to_vec(),
            });
        }
    }

    /// Sets the user's status; sent now, or after reconnecting (latest wins).
    pub fn set_status(&mut self, status: Status, text: Option<StatusText>) {
        self.status = Some((status, text.clone()));
        self.status_sent = matches!(self.link, Link::Ready { .. });
        self.send(&ClientMessage::Status { status, text });
    }

    /// The user typed in `room`'s composer: start or refresh the indicator,
    /// throttled; it stops by itself after `typing_stop_after` without input.
    pub fn typing(&mut self, now: Millis, room: &RoomId) -> Result<(), ClientError> {
        if !self.rooms.contains(room) {
            return Err(ClientError::NotInRoom);
        }
        let stop_at = now.after(self.config.typing_stop_after);
        let refresh = self.config.typing_refresh;
        let due = self
            .typing
            .get(room)
            .is_none_or(|t| now >= t.sent_at.after(refresh));
        let sent_at = if due && self.is_ready() {
            self.send(&ClientMessage::Typing {
                room: room.clone(),
                active: true,
            });
            now
        } else {
            self.typing.get(room).map_or(now, |t| t.sent_at)
        };
        if self.is_ready() {
            self.typing
                .insert(room.clone(), Typing { sent_at, stop_at });
        }
        Ok(())
    }

    /// The composer lost focus or the message was sent: stop now.
    pub fn stop_typing(&mut self, room: &RoomId) {
        if self.typing.remove(room).is_some() {
            self.send(&ClientMessage::Typing {
                room: room.clone(),
                active: false,
            });
        }
    }

    /// The user read `room` up to `marker`; only forward moves are sent.
    pub fn mark_read(&mut self, room: &RoomId, marker: u64) -> Result<(), ClientError> {
        if !self.rooms.contains(room) {
            return Err(ClientError::NotInRoom);
        }
        if self.markers.get(room).is_some_and(|&m| marker <= m) {
            return Ok(());
        }
        self.markers.insert(room.clone(), marker);
        self.send(&ClientMessage::Read {
            room: room.clone(),
            marker,
        });
        Ok(())
    }

    /// Runs timers: idleness, heartbeats, dead-socket detection, reconnects,
    /// typing stops.
    pub fn tick(&mut self, now: Millis) {
        match self.link {
            Link::Waiting { retry_at } if now >= retry_at => self.start(now),
            Link::Opening { since } | Link::Greeting { since }
                if now >= since.after(self.config.reply_timeout) =>
            {
                self.drop_socket(now);
            }
            Link::Ready {
                next_ping,
                heartbeat,
            } => {
                if let Some(sent) = self.ping_sent
                    && self.last_heard < sent
                    && now >= sent.after(self.config.reply_timeout)
                {
                    self.drop_socket(now);
                    return;
                }
                if now >= next_ping {
                    self.send_now(&ClientMessage::Ping);
                    if self.ping_sent.is_none_or(|p| self.last_heard >= p) {
                        self.ping_sent = Some(now);
                    }
                    self.link = Link::Ready {
                        next_ping: now.after(self.jittered(heartbeat)),
                        heartbeat,
                    };
                }
            }
            _ => {}
        }
        let stopped: Vec<RoomId> = self
            .typing
            .iter()
            .filter(|(_, t)| now >= t.stop_at)
            .map(|(r, _)| r.clone())
            .collect();
        for room in stopped {
            self.stop_typing(&room);
        }
        self.sync_activity(now);
    }

    /// When [`Client::tick`] next has work.
    pub fn next_deadline(&self, now: Millis) -> Option<Millis> {
        let link = match self.link {
            Link::Closed => None,
            Link::Waiting { retry_at } => Some(retry_at),
            Link::Opening { since } | Link::Greeting { since } => {
                Some(since.after(self.config.reply_timeout))
            }
            Link::Ready { next_ping, .. } => {
                let dead = self
                    .ping_sent
                    .filter(|&p| self.last_heard < p)
                    .map(|p| p.after(self.config.reply_timeout));
                Some(dead.map_or(next_ping, |d| d.min(next_ping)))
            }
        };
        let activity = match self.link {
            Link::Closed => None,
            _ => self.tracker.next_change(now),
        };
        let typing = self.typing.values().map(|t| t.stop_at).min();
        [link, activity, typing].into_iter().flatten().min()
    }

    /// The next thing to do, oldest first.
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// The next event for the app, oldest first.
    pub fn poll_event(&mut self) -> Option<ClientEvent> {
        self.events.pop_front()
    }

    /// Rooms and watched users as last heard.
    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// The authenticated user, once welcomed.
    pub fn me(&self) -> Option<&UserId> {
        self.me.as_ref()
    }

    /// The user's own status as last known.
    pub fn status(&self) -> (Status, Option<StatusText>) {
        self.status.clone().unwrap_or((Status::Available, None))
    }

    /// The connection state.
    pub fn connection(&self) -> ConnectionState {
        match self.link {
            Link::Closed => ConnectionState::Closed { code: None },
            Link::Waiting { retry_at } => ConnectionState::Reconnecting {
                retry_in: retry_at.since(self.last_heard),
                attempt: self.backoff.attempts(),
            },
            Link::Opening { .. } | Link::Greeting { .. } => ConnectionState::Connecting,
            Link::Ready { .. } => ConnectionState::Connected,
        }
    }

    fn is_ready(&self) -> bool {
        matches!(self.link, Link::Ready { .. })
    }

    /// Sends when live; otherwise drops the frame, because the desired state
    /// it expresses is kept and resent after `welcome`.
    fn send(&mut self, msg: &ClientMessage) {
        if self.is_ready() {
            self.send_now(msg);
        }
    }

    fn send_now(&mut self, msg: &ClientMessage) {
        self.actions.push_back(Action::Send(msg.to_json()));
    }

    fn sync_activity(&mut self, now: Millis) {
        if !self.is_ready() {
            return;
        }
        let activity = self.tracker.activity(now);
        if self.sent_activity != Some(activity) {
            self.sent_activity = Some(activity);
            self.send_now(&ClientMessage::Activity { activity });
        }
    }

    /// The socket is dead without a close event: close it and back off.
    fn drop_socket(&mut self, now: Millis) {
        self.actions
            .push_back(Action::Close(CloseCode::HeartbeatTimeout as u16));
        self.closed(now, None);
    }

    fn jittered(&mut self, d: Duration) -> Duration {
        // ±10 %, so a fleet of clients does not ping in step.
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let spread = ms / 5;
        let offset = if spread == 0 {
            0
        } else {
            self.backoff.random() % spread
        };
        Duration::from_millis(ms - ms / 10 + offset)
    }

    fn change(&mut self, room: Option<RoomId>, change: Change) {
        let event = match (change, room) {
            (Change::Presence(view), room) => ClientEvent::Presence { room, view },
            (Change::Typing(user, active), Some(room)) => {
                ClientEvent::Typing { room, user, active }
            }
            (Change::Receipt(user, marker), Some(room)) => {
                ClientEvent::Receipt { room, user, marker }
            }
            _ => return,
        };
        self.event(event);
    }

    fn event(&mut self, e: ClientEvent) {
        self.events.push_back(e);
    }
}

#[cfg(test)]
mod tests;
