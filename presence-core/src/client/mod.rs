//! The client side of the protocol, sans I/O: what the browser SDK (and any
//! Rust client, the load generator included) runs.
//!
//! The caller reports page signals and socket events with `now`, performs the
//! [`Action`]s it polls (open the socket, send a frame, close), calls
//! [`Client::tick`] at [`Client::next_deadline`], and hands [`ClientEvent`]s
//! to the app. Only transitions go on the wire: input while active costs a
//! timestamp, not a frame. While disconnected nothing queues up: the client
//! keeps the *desired* state (rooms, watches, status, markers, activity, the
//! room in view) and sends it once after the next `welcome`.
//!
//! That resend fits the server's restore allowance (PROTOCOL.md): at most one
//! `join` per room (64 at most, enforced here), one `read` per room with a
//! marker (sent when the room's snapshot confirms the join), watch frames of
//! at most 200 users (1,000 watched at most: 5 frames) and one `status`. What
//! the server refuses for now (`rate_limited`, `internal`) is reconciled again
//! later, with backoff, in rounds of at most [`RETRY_BATCH`] frames; what it
//! refuses for good (a `join` that is forbidden, a forbidden watch) leaves the
//! desired state and is reported once. Rooms count as confirmed by their
//! snapshot and watched users by `watching`, so a retry resends only what is
//! still missing.

mod activity;
mod backoff;
mod cache;
mod token;
mod vecmap;

use crate::prelude::*;
use alloc::collections::VecDeque;
use core::time::Duration;

pub use activity::{ActivityConfig, ActivityTracker};
pub use backoff::Backoff;
pub use cache::{Cache, Change, MAX_OFFLINE_MEMBERS_KEPT, PresenceKind, RoomView};
pub use token::{MAX_REFUSALS, REFRESH_RETRY};
pub use vecmap::{VecMap, VecSet};

use token::Token;

use crate::ids::{ResumeToken, RoomId, UserId};
use crate::limits::{
    MAX_ROOMS_PER_CONNECTION, MAX_USERS_PER_WATCH_FRAME, MAX_WATCHED_PER_CONNECTION,
};
use crate::object::JsonObject;
use crate::presence::{Activity, DeviceKind, Millis, PresenceView, Status, StatusText};
use crate::privacy::{LastSeen, Privacy, Receipts};
use crate::protocol::decode_server;
use crate::protocol::{ClientMessage, CloseCode, ErrorCode, PROTOCOL_VERSION, ServerMessage};

/// Frames one retry round may send: under the server's default refill (20
/// frames a second), so a round does not run into the limiter again.
pub const RETRY_BATCH: usize = 16;
/// First delay before retrying refused frames; doubles up to [`RETRY_CAP`].
const RETRY_BASE_MS: u64 = 1_000;
/// Longest delay between retry rounds.
const RETRY_CAP_MS: u64 = 30_000;

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
    /// The app can hand out fresh tokens: the client asks for one
    /// ([`Action::FetchToken`]) before connecting without one, before the
    /// current one expires, and after the server refused it (4101).
    pub token_source: bool,
    /// The kind of device, said in every `hello` (`None`: not said, which
    /// the server takes as `other`).
    pub device: Option<DeviceKind>,
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
            token_source: false,
            device: None,
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
    /// Ask the app for a fresh token, then call [`Client::set_token`] (or
    /// [`Client::token_failed`]).
    FetchToken,
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
    /// The server refused the token (4101) and no fresh one could be had:
    /// stopped until the app gives one ([`Client::set_token`]).
    Unauthorized,
}

/// Something the app may want to show.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientEvent {
    /// The connection changed state.
    Connection(ConnectionState),
    /// A user's presence changed, in a room (`Some`) or among watched
    /// users: once per change, never for a non-change.
    Presence {
        /// The room, or `None` for the watch list.
        room: Option<RoomId>,
        /// The user's presence now (for `Left`, as last seen in the room).
        view: PresenceView,
        /// What changed.
        kind: PresenceKind,
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
    /// The user's own privacy settings changed (here, in another tab, or
    /// by their backend).
    SelfPrivacy(Privacy),
    /// The user's own status, as set from any of their connections.
    SelfStatus {
        /// Status.
        status: Status,
        /// Text.
        text: Option<StatusText>,
    },
    /// The server refused a frame for good (refusals the client retries by
    /// itself, `rate_limited` and `internal`, are not reported), or sent one
    /// the client could not read.
    Error {
        /// Stable code.
        code: ErrorCode,
        /// Detail.
        message: String,
        /// The `type` of the refused frame, when the server named it.
        frame: Option<String>,
        /// The room the refused frame named (`join`, `leave`, `typing`, `read`).
        room: Option<RoomId>,
        /// The refused users of a `watch`.
        users: Vec<UserId>,
    },
    /// A room's snapshot arrived: the join is confirmed (after each
    /// `welcome` again).
    Joined(RoomId),
    /// A large room's counts changed (they are in the cache).
    Counts(RoomId),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Link {
    /// Not started, or closed for good.
    Closed,
    /// Waiting for the app's token before opening a socket.
    Authorizing { since: Millis },
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
    /// The `data` the app set (`Some(None)`: cleared), if it ever did.
    data: Option<Option<JsonObject>>,
    data_sent: bool,
    /// The user's privacy settings, as the server last said.
    privacy: Privacy,
    /// The change the app asked for (absent fields: kept), until sent on a
    /// live socket.
    privacy_due: Option<(Option<LastSeen>, Option<Receipts>)>,
    /// The joined room the page shows, as the app last said.
    view: Option<RoomId>,
    /// Whether this socket holds `view`: once false, it goes right after the
    /// room's `join` (or at once when live, the join having gone before).
    view_sent: bool,
    typing: VecMap<RoomId, Typing>,
    markers: VecMap<RoomId, u64>,
    /// Closed by the app: never connects again.
    ended: bool,
    /// Rooms whose snapshot arrived since the last `welcome`.
    confirmed: VecSet<RoomId>,
    /// The room whose snapshot said `more`: its next snapshot extends it.
    more_for: Option<RoomId>,
    /// Watched users whose `watching` arrived since the last `welcome`.
    watch_confirmed: VecSet<UserId>,
    /// Rooms whose marker is still to be sent (once the room is confirmed).
    reads_due: VecSet<RoomId>,
    /// Rooms left (or whose `leave` was refused) the server may still hold.
    leaves_due: VecSet<RoomId>,
    /// Users unwatched (or whose `unwatch` was refused) the server may still hold.
    unwatch_due: VecSet<UserId>,
    /// When to retry what the server refused for now.
    retry_at: Option<Millis>,
    /// Retry rounds since the last `welcome` or the last round with nothing
    /// to resend (the backoff exponent).
    retries: u32,
    token: Token,
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
    /// The room limit per connection is reached.
    TooManyRooms,
}

impl ClientError {
    /// The stable code an SDK reports it with.
    pub fn code(self) -> &'static str {
        match self {
            Self::TooManyWatched => "too_many_watched",
            Self::NotInRoom => "not_in_room",
            Self::TooManyRooms => "too_many_rooms",
        }
    }

    /// The message, as a constant: the browser bundle builds no strings
    /// through `core::fmt` (a test checks the numbers against the limits).
    pub fn message(self) -> &'static str {
        match self {
            Self::TooManyWatched => "at most 1000 watched users",
            Self::NotInRoom => "join the room first",
            Self::TooManyRooms => "at most 64 rooms",
        }
    }
}

impl core::fmt::Display for ClientError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.message())
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
            data: None,
            data_sent: true,
            privacy: Privacy::default(),
            privacy_due: None,
            view: None,
            view_sent: true,
            typing: VecMap::default(),
            markers: VecMap::default(),
            ended: false,
            confirmed: VecSet::default(),
            more_for: None,
            watch_confirmed: VecSet::default(),
            reads_due: VecSet::default(),
            leaves_due: VecSet::default(),
            unwatch_due: VecSet::default(),
            retry_at: None,
            retries: 0,
            token: Token {
                source: config.token_source,
                ..Token::default()
            },
            cache: Cache::default(),
            actions: VecDeque::new(),
            events: VecDeque::new(),
        }
    }

    /// Connects (or reconnects now, skipping any backoff wait). Does nothing
    /// once the app has [closed](Client::close) the client.
    pub fn start(&mut self, now: Millis) {
        if !self.ended && matches!(self.link, Link::Closed | Link::Waiting { .. }) {
            self.token.stopped = false;
            if self.token.source && self.token.exp.is_some_and(|exp| exp <= now) {
                self.token.value = None; // the server would refuse it
            }
            if self.token.source && self.token.value.is_none() {
                self.token.asked = Some(now);
                self.link = Link::Authorizing { since: now };
                self.actions.push_back(Action::FetchToken);
            } else {
                self.open(now);
            }
            self.event(ClientEvent::Connection(ConnectionState::Connecting));
        }
    }

    fn open(&mut self, now: Millis) {
        self.link = Link::Opening { since: now };
        self.actions.push_back(Action::Connect);
    }

    /// The token to present when opening a socket.
    pub fn token(&self) -> Option<&str> {
        self.token.value.as_deref()
    }

    /// A token from the app (asked for or not): used for the next socket,
    /// sent as `auth` on a live one, and it restarts a client stopped as
    /// unauthorized.
    pub fn set_token(&mut self, now: Millis, token: String) {
        self.token.value = Some(token.clone());
        self.token.asked = None;
        match self.link {
            Link::Authorizing { .. } => self.open(now),
            Link::Ready { .. } => {
                self.token.refresh_at = None;
                self.send_now(&ClientMessage::Auth { token });
            }
            Link::Closed if self.token.stopped => self.start(now),
            _ => {}
        }
    }

    /// The app could not give a token (it threw, or answered nothing in
    /// `reply_timeout`). Before connecting, the client stops as
    /// unauthorized; while connected, it asks again later.
    pub fn token_failed(&mut self, now: Millis) {
        self.token.asked = None;
        match self.link {
            Link::Authorizing { .. } => self.unauthorized(),
            Link::Ready { .. } => self.token.refresh_at = Some(now.after(REFRESH_RETRY)),
            _ => {}
        }
    }

    /// Stops for good: the token is refused and no fresh one is coming.
    fn unauthorized(&mut self) {
        self.link = Link::Closed;
        self.token.stopped = true;
        self.event(ClientEvent::Connection(ConnectionState::Unauthorized));
        let message = self
            .token
            .reason
            .take()
            .unwrap_or_else(|| "the token was refused and no fresh one came".into());
        self.event(ClientEvent::Error {
            code: ErrorCode::Unauthorized,
            message,
            frame: None,
            room: None,
            users: Vec::new(),
        });
    }

    /// Closes for good (the app is done). Sends `leaving` first so observers
    /// see the user go within the server's short leave grace. Nothing
    /// reconnects it afterwards: not `start`, the network, nor timers.
    pub fn close(&mut self) {
        if !self.ended {
            self.ended = true;
            self.shut();
        }
    }

    /// Whether the app closed the client.
    pub fn is_closed(&self) -> bool {
        self.ended
    }

    /// The page is being hidden for navigation, close or the back/forward
    /// cache (`pagehide`): say `leaving`, close, and keep the resume token so
    /// `pageshow` (or the reloaded page) can resume with [`Client::start`].
    /// The server closes the socket (1000) after `leaving`; that close comes
    /// to a socket already given up, so it never starts a reconnect.
    pub fn page_hide(&mut self) {
        if !self.ended {
            self.shut();
        }
    }

    fn shut(&mut self) {
        if let Link::Ready { .. } = self.link {
            self.send(&ClientMessage::Leaving);
        }
        if matches!(
            self.link,
            Link::Opening { .. } | Link::Greeting { .. } | Link::Ready { .. }
        ) {
            self.actions.push_back(Action::Close(1000));
        }
        self.link = Link::Closed;
        self.ping_sent = None;
        self.typing = VecMap::default();
        self.event(ClientEvent::Connection(ConnectionState::Closed {
            code: None,
        }));
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
            device: self.config.device,
        };
        self.send_now(&hello);
    }

    /// The socket closed or failed to open. `code` is the close code, if any.
    pub fn closed(&mut self, now: Millis, code: Option<u16>) {
        if matches!(
            self.link,
            Link::Closed | Link::Waiting { .. } | Link::Authorizing { .. }
        ) {
            return; // a stale socket's late close, or already handled
        }
        self.ping_sent = None;
        self.typing = VecMap::default();
        let unauthorized = code == Some(CloseCode::Unauthorized as u16);
        if unauthorized {
            // The token is refused: a fresh one from the app, if it has one.
            self.token.value = None;
            self.token.refusals += 1;
            if !self.token.source || self.token.refusals > MAX_REFUSALS {
                self.unauthorized();
                return;
            }
        }
        // Close codes 4100–4199 mean "do not reconnect by yourself", but
        // for 4101 with a way to a fresh token.
        if !unauthorized && code.is_some_and(|c| (4100..4200).contains(&c)) {
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
        if !matches!(self.link, Link::Greeting { .. } | Link::Ready { .. }) {
            return; // a late frame of a socket given up
        }
        self.last_heard = now;
        let msg = match decode_server(text) {
            Ok(msg) => msg,
            Err(e) => {
                // A newer server may send types we do not know: skip them.
                if e.code != ErrorCode::UnknownType {
                    self.event(ClientEvent::Error {
                        code: e.code,
                        message: e.message,
                        frame: None,
                        room: None,
                        users: Vec::new(),
                    });
                }
                return;
            }
        };
        match msg {
            ServerMessage::Welcome {
                user,
                resume,
                resumed,
                heartbeat_ms,
                idle_after_ms,
                status,
                text,
                exp,
                ..
            } => {
                // Open unless a `self_privacy` follows at once.
                self.privacy = Privacy::default();
                self.token.expires(now, exp);
                let timings = (heartbeat_ms, idle_after_ms);
                self.welcome(now, user, resume, resumed, timings, status, text);
            }
            ServerMessage::Snapshot {
                room,
                members,
                typing,
                receipts,
                more,
                large,
                counts,
            } => {
                let extends = self.more_for.take().as_ref() == Some(&room);
                if more {
                    self.more_for = Some(room.clone());
                }
                if !self.rooms.contains(&room) {
                    return;
                }
                if self.confirmed.insert(room.clone()) {
                    if self.reads_due.remove(&room)
                        && let Some(&marker) = self.markers.get(&room)
                    {
                        self.send(&ClientMessage::Read {
                            room: room.clone(),
                            marker,
                        });
                    }
                    self.event(ClientEvent::Joined(room.clone()));
                }
                let large = counts.filter(|_| large);
                let parts = (extends, more);
                let changes =
                    (self.cache).snapshot(room.clone(), members, typing, receipts, parts, large);
                for change in changes {
                    self.change(Some(room.clone()), change);
                }
            }
            ServerMessage::Summary {
                room,
                counts,
                joined,
                left,
            } => {
                if self.cache.room(&room).is_none() {
                    return;
                }
                for change in self.cache.summary(&room, counts, joined, &left) {
                    self.change(Some(room.clone()), change);
                }
                self.event(ClientEvent::Counts(room));
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
                    if self.watched.contains(&view.user) {
                        self.watch_confirmed.insert(view.user.clone());
                    }
                }
                for change in self.cache.watching(users) {
                    self.change(None, change);
                }
            }
            ServerMessage::SelfPrivacy {
                last_seen,
                receipts,
            } => {
                self.privacy = Privacy {
                    last_seen,
                    receipts,
                };
                self.event(ClientEvent::SelfPrivacy(self.privacy));
            }
            ServerMessage::SelfStatus { status, text } => {
                // The server's word on the user's status (set here or in
                // another tab) is the state; a later local change wins again.
                if self.status_sent {
                    self.status = Some((status, text.clone()));
                }
                self.event(ClientEvent::SelfStatus { status, text });
            }
            // A 4101 follows; the app hears of it only if no fresh token comes.
            ServerMessage::Error {
                code: ErrorCode::Unauthorized,
                message,
                ..
            } => self.token.reason = Some(message),
            ServerMessage::Error {
                code,
                message,
                frame,
                room,
                users,
            } => {
                if self.refused(now, code, frame.as_deref(), room.as_ref(), &users) {
                    self.event(ClientEvent::Error {
                        code,
                        message,
                        frame,
                        room,
                        users,
                    });
                }
            }
            ServerMessage::AuthOk { exp } => self.token.expires(now, exp),
            ServerMessage::Pong => {}
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn welcome(
        &mut self,
        now: Millis,
        user: UserId,
        resume: ResumeToken,
        resumed: bool,
        (heartbeat_ms, idle_after_ms): (u64, u64),
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
        // Rooms and watched users count as confirmed once their snapshot or
        // `watching` is back; only a resumed connection can still hold rooms
        // and users given up meanwhile.
        self.confirmed = VecSet::default();
        self.watch_confirmed = VecSet::default();
        if !resumed {
            self.leaves_due = VecSet::default();
            self.unwatch_due = VecSet::default();
        }
        self.reads_due = VecSet::default();
        for room in self.markers.keys() {
            self.reads_due.insert(room.clone());
        }
        self.retry_at = None;
        self.retries = 0;
        // The status: a change made while disconnected wins; otherwise a
        // fresh connection (the server restarted, or the grace ran out)
        // gets this page's known status back, and a resumed one tells us
        // the server's, which another tab may have changed meanwhile.
        let server = (status, text);
        match &self.status {
            Some(want) if !self.status_sent || (!resumed && *want != server) => {
                self.status_sent = false;
            }
            _ => {
                self.status = Some(server.clone());
                self.event(ClientEvent::SelfStatus {
                    status: server.0,
                    text: server.1,
                });
            }
        }
        // Data set on this page goes again: a fresh connection lacks it, and
        // a resumed one changes nothing by it.
        if matches!(self.data, Some(Some(_))) {
            self.data_sent = false;
        }
        // The view goes again after its room's join. A fresh connection
        // views nothing; a resumed one may still hold a view cleared since.
        self.view_sent = self.view.is_none() && (self.view_sent || !resumed);
        self.reconcile(usize::MAX);
        self.sync_activity(now);
    }

    /// Sends what the server lacks of the desired state, at most `budget`
    /// frames; returns how many it sent.
    fn reconcile(&mut self, budget: usize) -> usize {
        let confirmed = &self.confirmed;
        let mut due: Vec<ClientMessage> = Vec::new();
        let leaves = self.leaves_due.iter().filter(|r| !self.rooms.contains(r));
        due.extend(leaves.map(|r| ClientMessage::Leave { room: r.clone() }));
        let joins = self.rooms.iter().filter(|r| !confirmed.contains(r));
        due.extend(joins.map(|r| ClientMessage::Join { room: r.clone() }));
        // After the joins: a viewed room is confirmed or its join is above,
        // and a cut round keeps the join of any view it sends.
        if !self.view_sent {
            due.push(ClientMessage::View {
                room: self.view.clone(),
            });
        }
        due.extend(self.reads_due.iter().filter_map(|r| {
            let marker = *self.markers.get(r).filter(|_| confirmed.contains(r))?;
            Some(ClientMessage::Read {
                room: r.clone(),
                marker,
            })
        }));
        let watch: Vec<UserId> = self
            .watched
            .iter()
            .filter(|u| !self.watch_confirmed.contains(u))
            .cloned()
            .collect();
        let unwatch: Vec<UserId> = self
            .unwatch_due
            .iter()
            .filter(|u| !self.watched.contains(u))
            .cloned()
            .collect();
        for c in watch.chunks(MAX_USERS_PER_WATCH_FRAME) {
            due.push(ClientMessage::Watch { users: c.to_vec() });
        }
        for c in unwatch.chunks(MAX_USERS_PER_WATCH_FRAME) {
            due.push(ClientMessage::Unwatch { users: c.to_vec() });
        }
        if let (false, Some((status, text))) = (self.status_sent, &self.status) {
            due.push(ClientMessage::Status {
                status: *status,
                text: text.clone(),
            });
        }
        if let (false, Some(data)) = (self.data_sent, &self.data) {
            due.push(ClientMessage::Data { data: data.clone() });
        }
        if let Some((last_seen, receipts)) = self.privacy_due {
            due.push(ClientMessage::Privacy {
                last_seen,
                receipts,
            });
        }
        due.truncate(budget);
        for msg in &due {
            match msg {
                ClientMessage::Leave { room } => {
                    self.leaves_due.remove(room);
                }
                ClientMessage::Read { room, .. } => {
                    self.reads_due.remove(room);
                }
                ClientMessage::Unwatch { users } => {
                    for u in users {
                        self.unwatch_due.remove(u);
                    }
                }
                ClientMessage::Status { .. } => self.status_sent = true,
                ClientMessage::Data { .. } => self.data_sent = true,
                ClientMessage::View { .. } => self.view_sent = true,
                ClientMessage::Privacy { .. } => self.privacy_due = None,
                _ => {}
            }
            self.send(msg);
        }
        due.len()
    }

    /// An `error` frame: updates the desired state and schedules a retry.
    /// Returns whether the app should hear of it.
    fn refused(
        &mut self,
        now: Millis,
        code: ErrorCode,
        frame: Option<&str>,
        room: Option<&RoomId>,
        users: &[UserId],
    ) -> bool {
        let retry = matches!(code, ErrorCode::RateLimited | ErrorCode::Internal);
        match (frame, room) {
            // Refused for good: the app asked for something it may not have.
            (Some("join"), Some(room)) if !retry => self.drop_room(room),
            (Some("watch"), _) if !retry => {
                for u in users {
                    self.watched.remove(u);
                }
                self.cache.unwatch(users);
            }
            // Refused for now. Joins and watches need no note: what is not
            // confirmed is resent anyway.
            (Some("read"), Some(room)) if retry => {
                self.reads_due.insert(room.clone());
            }
            (Some("leave"), Some(room)) if retry => {
                self.leaves_due.insert(room.clone());
            }
            (Some("unwatch"), _) if retry => {
                for u in users {
                    self.unwatch_due.insert(u.clone());
                }
            }
            (Some("status"), _) if retry => self.status_sent = false,
            (Some("data"), _) if retry => self.data_sent = false,
            // Refused for now, or after its room's join was refused (for now:
            // the view goes again after the join's retry; for good: the room
            // and its view are gone, and the socket still holds the view
            // before it, so say none now). A refusal of an older view is no
            // news once another room is in view.
            (Some("view"), r)
                if (retry || code == ErrorCode::NotInRoom)
                    && (self.view.is_none() || r == self.view.as_ref()) =>
            {
                self.view_sent = false;
                if !retry && self.view.is_none() {
                    self.send_view();
                }
            }
            // Refused for good (too large, not an object): not sent again.
            (Some("data"), _) => self.data = None,
            (Some("auth"), _) => self.token.refresh_at = Some(now.after(REFRESH_RETRY)),
            (Some("activity"), _) if retry => self.sent_activity = None,
            (None | Some("read"), _) if retry => {
                // The server did not say which frame: assume the worst of
                // what has no confirmation of its own.
                if self.status.is_some() {
                    self.status_sent = false;
                }
                self.view_sent &= self.view.is_none();
                self.sent_activity = None;
                for room in self.markers.keys() {
                    self.reads_due.insert(room.clone());
                }
            }
            _ => {}
        }
        if retry && self.retry_at.is_none() {
            let ms = (RETRY_BASE_MS << self.retries.min(5)).min(RETRY_CAP_MS);
            self.retry_at = Some(now.after(Duration::from_millis(ms)));
            self.retries += 1;
        }
        // `not_in_room` follows a join still pending or refused (typing, a
        // leave): nothing the app can act on.
        !retry && code != ErrorCode::NotInRoom
    }

    fn drop_room(&mut self, room: &RoomId) {
        self.rooms.remove(room);
        self.confirmed.remove(room);
        self.markers.remove(room);
        self.reads_due.remove(room);
        self.typing.remove(room);
        self.cache.forget_room(room);
        if self.view.as_ref() == Some(room) {
            // Leaving the room views nothing, on the server too.
            self.view = None;
        }
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

    /// Joins a room (again after every reconnect); a
    /// [`ClientEvent::Joined`] follows with its snapshot. At most
    /// [`MAX_ROOMS_PER_CONNECTION`] rooms.
    pub fn try_join(&mut self, room: RoomId) -> Result<(), ClientError> {
        if self.rooms.contains(&room) {
            return Ok(());
        }
        if self.rooms.len() >= MAX_ROOMS_PER_CONNECTION {
            return Err(ClientError::TooManyRooms);
        }
        self.rooms.insert(room.clone());
        self.send(&ClientMessage::Join { room });
        Ok(())
    }

    /// [`Client::try_join`], ignoring the room limit's refusal.
    pub fn join(&mut self, room: RoomId) {
        let _ = self.try_join(room);
    }

    /// Whether `room` is in the desired state (joined, or being joined).
    pub fn is_joined(&self, room: &RoomId) -> bool {
        self.rooms.contains(room)
    }

    /// Whether `room`'s snapshot arrived since the last `welcome`.
    pub fn is_confirmed(&self, room: &RoomId) -> bool {
        self.confirmed.contains(room)
    }

    /// Leaves a room (its read marker is forgotten with it).
    pub fn leave(&mut self, room: &RoomId) {
        if self.rooms.contains(room) {
            self.drop_room(room);
            if self.is_ready() {
                self.send_now(&ClientMessage::Leave { room: room.clone() });
            } else {
                // A resumed connection would still hold it.
                self.leaves_due.insert(room.clone());
            }
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
        for u in &gone {
            self.watch_confirmed.remove(u);
            if !self.is_ready() {
                // A resumed connection would still hold them.
                self.unwatch_due.insert(u.clone());
            }
        }
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

    /// Changes the user's privacy settings (`None`: kept), for all their
    /// connections; sent now, or after reconnecting. The server's answer
    /// comes as [`ClientEvent::SelfPrivacy`].
    pub fn set_privacy(&mut self, last_seen: Option<LastSeen>, receipts: Option<Receipts>) {
        let (l, r) = self.privacy_due.take().unwrap_or_default();
        let (last_seen, receipts) = (last_seen.or(l), receipts.or(r));
        if self.is_ready() {
            self.send(&ClientMessage::Privacy {
                last_seen,
                receipts,
            });
        } else {
            self.privacy_due = Some((last_seen, receipts));
        }
    }

    /// The user's privacy settings, as the server last said.
    pub fn privacy(&self) -> Privacy {
        self.privacy
    }

    /// Sets the user's `data` (`None` clears it); sent now, or after
    /// reconnecting (latest wins).
    pub fn set_data(&mut self, data: Option<JsonObject>) {
        self.data = Some(data.clone());
        self.data_sent = self.is_ready();
        self.send(&ClientMessage::Data { data });
    }

    /// The joined room this page shows (`None`: none), for backends deciding
    /// whether a message is seen as it arrives (PROTOCOL.md, "Devices and
    /// notifications"). Sent when live right after the room's `join`, again
    /// after every reconnect; leaving the room clears it; a non-change sends
    /// nothing. A hidden, blurred or locked page counts as viewing nothing
    /// whatever it said, so the app need not clear it then.
    pub fn view(&mut self, room: Option<RoomId>) -> Result<(), ClientError> {
        if room.as_ref().is_some_and(|r| !self.rooms.contains(r)) {
            return Err(ClientError::NotInRoom);
        }
        if room != self.view {
            self.view = room;
            self.send_view();
        }
        Ok(())
    }

    /// Sends the view when live (every joined room's `join` went on a live
    /// socket: at once, or in the resend after `welcome`); else it waits.
    fn send_view(&mut self) {
        self.view_sent = self.is_ready();
        self.send(&ClientMessage::View {
            room: self.view.clone(),
        });
    }

    /// The user typed in `room`'s composer: start or refresh the indicator,
    /// throttled; it stops by itself after `typing_stop_after` without input.
    pub fn typing(&mut self, now: Millis, room: &RoomId) -> Result<(), ClientError> {
        if !self.rooms.contains(room) {
            return Err(ClientError::NotInRoom);
        }
        if !self.is_ready() {
            return Ok(()); // nobody to tell; a reconnect starts afresh
        }
        let stop_at = now.after(self.config.typing_stop_after);
        let sent_at = match self.typing.get(room) {
            Some(t) if now < t.sent_at.after(self.config.typing_refresh) => t.sent_at,
            _ => {
                self.send_now(&ClientMessage::Typing {
                    room: room.clone(),
                    active: true,
                });
                now
            }
        };
        self.typing
            .insert(room.clone(), Typing { sent_at, stop_at });
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
        if self.confirmed.contains(room) {
            self.send(&ClientMessage::Read {
                room: room.clone(),
                marker,
            });
        } else {
            // Sent once the room's snapshot confirms the join.
            self.reads_due.insert(room.clone());
        }
        Ok(())
    }

    /// Runs timers: idleness, heartbeats, dead-socket detection, reconnects,
    /// typing stops.
    pub fn tick(&mut self, now: Millis) {
        match self.link {
            Link::Waiting { retry_at } if now >= retry_at => self.start(now),
            Link::Authorizing { since } if now >= since.after(self.config.reply_timeout) => {
                self.token_failed(now);
            }
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
                let asked_long_ago = self
                    .token
                    .asked
                    .is_some_and(|at| now >= at.after(self.config.reply_timeout));
                if asked_long_ago {
                    self.token_failed(now);
                }
                if self.token.refresh_at.is_some_and(|at| now >= at) {
                    self.token.refresh_at = None;
                    self.token.asked = Some(now);
                    self.actions.push_back(Action::FetchToken);
                }
                if self.retry_at.is_some_and(|at| now >= at) {
                    self.retry_at = None;
                    match self.reconcile(RETRY_BATCH) {
                        0 => self.retries = 0,
                        // More may be due: the next round after a pause.
                        RETRY_BATCH => {
                            self.retry_at = Some(now.after(Duration::from_millis(RETRY_BASE_MS)))
                        }
                        _ => {}
                    }
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
            Link::Opening { since } | Link::Greeting { since } | Link::Authorizing { since } => {
                Some(since.after(self.config.reply_timeout))
            }
            Link::Ready { next_ping, .. } => {
                let timeout = self.config.reply_timeout;
                let dead = self
                    .ping_sent
                    .filter(|&p| self.last_heard < p)
                    .map(|p| p.after(timeout));
                let asked = self.token.asked.map(|at| at.after(timeout));
                [
                    Some(next_ping),
                    dead,
                    asked,
                    self.retry_at,
                    self.token.refresh_at,
                ]
                .into_iter()
                .flatten()
                .min()
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

    /// Whether what the cache shows may be out of date: not connected, or a
    /// joined room or watched user not yet confirmed since the last
    /// `welcome`. An app shows members greyed out meanwhile.
    pub fn is_stale(&self) -> bool {
        !self.is_ready()
            || self.rooms.iter().any(|r| !self.confirmed.contains(r))
            || self
                .watched
                .iter()
                .any(|u| !self.watch_confirmed.contains(u))
    }

    /// The connection state.
    pub fn connection(&self) -> ConnectionState {
        match self.link {
            Link::Closed if self.token.stopped => ConnectionState::Unauthorized,
            Link::Closed => ConnectionState::Closed { code: None },
            Link::Waiting { retry_at } => ConnectionState::Reconnecting {
                retry_in: retry_at.since(self.last_heard),
                attempt: self.backoff.attempts(),
            },
            Link::Opening { .. } | Link::Greeting { .. } | Link::Authorizing { .. } => {
                ConnectionState::Connecting
            }
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
            (Change::Presence(view, kind), room) => ClientEvent::Presence { room, view, kind },
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
