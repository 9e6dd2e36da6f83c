//! The presence state machine: connections in, events out, time passed in.
//!
//! Owns no socket and reads no clock. The caller feeds it what happened on
//! each connection with `now`, calls [`Machine::tick`] at
//! [`Machine::next_deadline`], and drains [`Machine::drain_events`].
//!
//! Flap-free by construction: for each user the machine remembers what it
//! last announced ([`Shown`]) and, after any input, recomputes what observers
//! should see and emits only the difference. A connection that drops (or says
//! it is leaving) is kept, frozen, for a grace period; if it resumes within it
//! the recomputed state is unchanged and nothing is emitted.

mod aggregate;
mod devices;
mod event;
mod node_record;
mod queries;
mod records;
mod timers;

use std::collections::{BTreeSet, HashMap, HashSet, hash_map};

pub use aggregate::{Custom, Shown, aggregate, render};
pub use event::Event;
pub use node_record::NodeRecord;
pub use records::{ConnRecord, FORGET_AT_ONCE, Retention, UserRecord};
use timers::{TimerKey, Timers};

use crate::ids::{ConnId, ResumeToken, RoomId, UserId};
use crate::limits::{MAX_CONNECTIONS_PER_USER, MAX_READ_MARKER, MAX_ROOMS_PER_CONNECTION};
use crate::object::JsonObject;
use crate::policy::TimingPolicy;
use crate::presence::{Activity, DeviceKind, Millis, PresenceView, Status, StatusText};
use crate::privacy::{LastSeen, Privacy, Receipts};
use crate::protocol::{Diff, ErrorCode, Receipt};

/// Why the machine refused an input. Each maps to a stable [`ErrorCode`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MachineError {
    /// The connection is not known (already gone).
    #[error("unknown connection")]
    UnknownConnection,
    /// The connection id or resume token is already in use.
    #[error("connection id or resume token already in use")]
    DuplicateConnection,
    /// The connection has not joined the room.
    #[error("not in this room; join it first")]
    NotInRoom,
    /// The connection is in too many rooms.
    #[error("at most {MAX_ROOMS_PER_CONNECTION} rooms per connection")]
    TooManyRooms,
    /// The user holds too many live connections.
    #[error("at most {MAX_CONNECTIONS_PER_USER} connections per user")]
    TooManyConnections,
    /// The read marker is out of range.
    #[error("read marker must be at most {MAX_READ_MARKER}")]
    InvalidMarker,
}

impl MachineError {
    /// The wire code for an error frame.
    pub fn code(self) -> ErrorCode {
        match self {
            MachineError::UnknownConnection | MachineError::DuplicateConnection => {
                ErrorCode::Internal
            }
            MachineError::NotInRoom => ErrorCode::NotInRoom,
            MachineError::TooManyRooms => ErrorCode::TooManyRooms,
            MachineError::TooManyConnections => ErrorCode::TooManyConnections,
            MachineError::InvalidMarker => ErrorCode::InvalidMarker,
        }
    }
}

/// The result of [`Machine::connect`].
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Outcome {
    /// The connection's id: the resumed one's, or the one passed in.
    pub conn: ConnId,
    /// The token to give the client for its next resume.
    pub token: ResumeToken,
    /// Whether an earlier connection was taken over (observers saw nothing).
    pub resumed: bool,
    /// Whether the taken-over connection was still live: the caller must close
    /// the old socket, which no longer speaks for this connection.
    pub superseded: bool,
}

/// Counts for metrics.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct Stats {
    /// Connections held, live or in grace.
    pub connections: usize,
    /// Users shown online.
    pub online_users: usize,
    /// Users known (online, or offline with a last-seen time).
    pub known_users: usize,
    /// Pending deadlines.
    pub timers: usize,
}

#[derive(Clone, Copy, Debug)]
enum Link {
    Live { last_heard: Millis },
    Detached { since: Millis, until: Millis },
}

#[derive(Debug)]
struct Conn {
    user: UserId,
    token: ResumeToken,
    activity: Activity,
    /// When `activity` last changed.
    since: Millis,
    device: DeviceKind,
    /// The joined room its page shows, if any.
    view: Option<RoomId>,
    link: Link,
    rooms: Vec<RoomId>,
}

#[derive(Debug)]
struct User {
    conns: Vec<ConnId>,
    /// Rooms with the number of this user's connections in each.
    rooms: HashMap<RoomId, u16>,
    status: Status,
    text: Option<StatusText>,
    /// When the status was last set here (0: never), for the cluster's
    /// latest-setting-wins merge.
    status_at: Millis,
    shown: Shown,
    last_active: Option<Millis>,
    last_seen: Option<Millis>,
    /// Per room, the connections typing there and when each one's typing
    /// expires: the user types while any of them does, so one tab stopping
    /// does not stop another's typing.
    typing: HashMap<RoomId, Vec<(ConnId, Millis)>>,
    receipts: HashMap<RoomId, u64>,
    /// `info` and `data`; `data` lives while the user has a connection.
    custom: Custom,
    /// When the user's last connection went; `None` while they have one.
    /// Retention ages offline users by it (not by `last_seen`, which an
    /// invisible user must not move).
    gone: Option<Millis>,
    privacy: Privacy,
    /// When `privacy` was last set here (0: never), merged like the status.
    privacy_at: Millis,
}

impl User {
    fn new() -> Self {
        Self {
            conns: Vec::new(),
            rooms: HashMap::new(),
            status: Status::Available,
            text: None,
            status_at: Millis(0),
            shown: Shown::Offline,
            last_active: None,
            last_seen: None,
            typing: HashMap::new(),
            receipts: HashMap::new(),
            custom: Custom::default(),
            gone: None,
            privacy: Privacy::default(),
            privacy_at: Millis(0),
        }
    }

    fn visible(&self) -> bool {
        self.shown != Shown::Offline
    }

    fn view(&self, id: &UserId) -> PresenceView {
        render(
            id,
            self.shown,
            self.status,
            self.text.as_ref(),
            (self.last_active, self.last_seen),
            &self.custom,
        )
    }
}

/// The presence state machine for one node. See the module docs.
#[derive(Debug)]
pub struct Machine {
    policy: TimingPolicy,
    users: HashMap<UserId, User>,
    conns: HashMap<ConnId, Conn>,
    tokens: HashMap<ResumeToken, ConnId>,
    rooms: HashMap<RoomId, HashSet<UserId>>,
    /// The users with no connection, by when they went (0: never connected
    /// here), so that retention forgets the longest gone without a pass
    /// over every user: one over 1,000,000 offline users took 200–300 ms,
    /// under the server's lock (BENCHMARKS.md, "A million users").
    offline: BTreeSet<(Millis, UserId)>,
    /// Each room's shown read markers, online or not: a receipt belongs to
    /// the room, not to its reader's connection (see `receipts`).
    reads: HashMap<RoomId, HashMap<UserId, u64>>,
    timers: Timers,
    events: Vec<Event>,
    /// Whether view changes are events (`Diff::Viewing`; see
    /// [`Machine::with_view_events`]).
    view_events: bool,
}

impl Machine {
    /// A machine with the given timing policy (validate it first).
    pub fn new(policy: TimingPolicy) -> Self {
        Self {
            policy,
            users: HashMap::new(),
            conns: HashMap::new(),
            tokens: HashMap::new(),
            rooms: HashMap::new(),
            offline: BTreeSet::new(),
            reads: HashMap::new(),
            timers: Timers::default(),
            events: Vec::new(),
            view_events: false,
        }
    }

    /// Emits a `viewing` event each time a connection's view changes
    /// (tab switches: frequent, so off unless the host wants them).
    pub fn with_view_events(mut self, on: bool) -> Self {
        self.view_events = on;
        self
    }

    /// The timing policy.
    pub fn policy(&self) -> &TimingPolicy {
        &self.policy
    }

    /// A connection said hello. With a `resume` token that belongs to one of
    /// this user's connections, that connection is taken back silently;
    /// otherwise `conn` and `token` start a new one.
    pub fn connect(
        &mut self,
        now: Millis,
        user: UserId,
        conn: ConnId,
        token: ResumeToken,
        resume: Option<&ResumeToken>,
        activity: Activity,
    ) -> Result<Outcome, MachineError> {
        if let Some(old) = resume.and_then(|t| self.tokens.get(t)).copied()
            && let Some(c) = self.conns.get_mut(&old)
            && c.user == user
        {
            let superseded = matches!(c.link, Link::Live { .. });
            c.link = Link::Live { last_heard: now };
            if c.activity != activity {
                c.since = now;
            }
            c.activity = activity;
            let token = c.token.clone();
            self.timers.ensure(
                TimerKey::Conn(old),
                now.after(self.policy.heartbeat_timeout),
            );
            self.refresh(now, &user, now, &[]);
            return Ok(Outcome {
                conn: old,
                token,
                resumed: true,
                superseded,
            });
        }
        if self.conns.contains_key(&conn) || self.tokens.contains_key(&token) {
            return Err(MachineError::DuplicateConnection);
        }
        let held = self.users.get(&user).map_or(0, |u| u.conns.len());
        if held >= MAX_CONNECTIONS_PER_USER {
            let oldest_detached = self.users.get(&user).and_then(|u| {
                u.conns
                    .iter()
                    .filter_map(|c| match self.conns.get(c)?.link {
                        Link::Detached { since, .. } => Some((since, *c)),
                        Link::Live { .. } => None,
                    })
                    .min()
            });
            match oldest_detached {
                Some((since, c)) => self.remove_conn(now, c, since),
                None => return Err(MachineError::TooManyConnections),
            }
        }
        let u = self.users.entry(user.clone()).or_insert_with(User::new);
        if u.conns.is_empty() {
            self.offline
                .remove(&(u.gone.unwrap_or_default(), user.clone()));
        }
        u.conns.push(conn);
        u.gone = None;
        self.tokens.insert(token.clone(), conn);
        self.conns.insert(
            conn,
            Conn {
                user: user.clone(),
                token: token.clone(),
                activity,
                since: now,
                device: DeviceKind::default(),
                view: None,
                link: Link::Live { last_heard: now },
                rooms: Vec::new(),
            },
        );
        self.timers.ensure(
            TimerKey::Conn(conn),
            now.after(self.policy.heartbeat_timeout),
        );
        self.refresh(now, &user, now, &[]);
        Ok(Outcome {
            conn,
            token,
            resumed: false,
            superseded: false,
        })
    }

    /// The connection is alive (any frame counts, a `ping` included).
    pub fn heartbeat(&mut self, now: Millis, conn: ConnId) -> Result<(), MachineError> {
        let c = self
            .conns
            .get_mut(&conn)
            .ok_or(MachineError::UnknownConnection)?;
        if let Link::Live { last_heard } = &mut c.link {
            *last_heard = (*last_heard).max(now);
        }
        Ok(())
    }

    /// The connection became active or idle.
    pub fn set_activity(
        &mut self,
        now: Millis,
        conn: ConnId,
        activity: Activity,
    ) -> Result<(), MachineError> {
        let c = self
            .conns
            .get_mut(&conn)
            .ok_or(MachineError::UnknownConnection)?;
        if c.activity != activity {
            c.since = now;
        }
        c.activity = activity;
        let user = c.user.clone();
        // `last_active` moves only with the user's shown state (in `refresh`), as
        // observers' copies do: a second tab's "active" is no news.
        self.refresh(now, &user, now, &[]);
        Ok(())
    }

    /// The connection joins a room. Returns `false` if it was already in it.
    pub fn join(&mut self, now: Millis, conn: ConnId, room: RoomId) -> Result<bool, MachineError> {
        let c = self
            .conns
            .get_mut(&conn)
            .ok_or(MachineError::UnknownConnection)?;
        if c.rooms.contains(&room) {
            return Ok(false);
        }
        if c.rooms.len() >= MAX_ROOMS_PER_CONNECTION {
            return Err(MachineError::TooManyRooms);
        }
        c.rooms.push(room.clone());
        let user_id = c.user.clone();
        let Some(user) = self.users.get_mut(&user_id) else {
            return Err(MachineError::UnknownConnection);
        };
        let count = user.rooms.entry(room.clone()).or_insert(0);
        *count += 1;
        if *count == 1 {
            self.rooms
                .entry(room.clone())
                .or_default()
                .insert(user_id.clone());
            if user.visible() {
                let diff = Diff::UserConnected {
                    presence: user.view(&user_id),
                };
                self.emit(now, diff, vec![room], false);
            }
        }
        Ok(true)
    }

    /// The connection leaves a room.
    pub fn leave(&mut self, now: Millis, conn: ConnId, room: &RoomId) -> Result<(), MachineError> {
        let c = self
            .conns
            .get_mut(&conn)
            .ok_or(MachineError::UnknownConnection)?;
        let Some(at) = c.rooms.iter().position(|r| r == room) else {
            return Err(MachineError::NotInRoom);
        };
        c.rooms.swap_remove(at);
        let user = c.user.clone();
        if c.view.as_ref() == Some(room) {
            self.set_view(now, conn, None)?;
        }
        self.stop_conn_typing(now, &user, conn, room);
        if self.release_room(now, &user, room) {
            self.announce_left(now, &user, room);
        }
        Ok(())
    }

    /// The user sets their status and text, from one of their connections.
    /// Returns whether anything changed (then tell all of the user's own
    /// connections with `self_status`).
    pub fn set_status(
        &mut self,
        now: Millis,
        conn: ConnId,
        status: Status,
        text: Option<StatusText>,
    ) -> Result<bool, MachineError> {
        let user_id = self
            .user_of(conn)
            .ok_or(MachineError::UnknownConnection)?
            .clone();
        let Some(user) = self.users.get_mut(&user_id) else {
            return Err(MachineError::UnknownConnection);
        };
        if user.status == status && user.text == text {
            return Ok(false);
        }
        user.status = status;
        user.text = text;
        user.status_at = now;
        let was_visible = user.visible();
        if status == Status::Invisible {
            self.stop_all_typing(now, &user_id);
        }
        self.refresh(now, &user_id, now, &[]);
        if let Some(user) = self.users.get(&user_id)
            && was_visible
            && user.visible()
        {
            let diff = Diff::Status {
                user: user_id.clone(),
                status: user.status,
                text: user.text.clone(),
            };
            let rooms = user.rooms.keys().cloned().collect();
            self.emit(now, diff, rooms, true);
        }
        Ok(true)
    }

    /// The user (or their backend) changed privacy settings (absent: kept);
    /// a user never seen here is remembered offline, so the settings hold
    /// when they come. Returns the settings if they changed (then tell the
    /// user's own connections with `self_privacy`). Observers hear nothing:
    /// the settings decide what they are sent from now on.
    pub fn set_privacy(
        &mut self,
        now: Millis,
        user: &UserId,
        last_seen: Option<LastSeen>,
        receipts: Option<Receipts>,
    ) -> Option<Privacy> {
        let u = self.user_or_offline(user, Some(now));
        let next = u.privacy.with(last_seen, receipts);
        u.privacy_at = now;
        (next != u.privacy).then(|| {
            u.privacy = next;
            next
        })
    }

    /// Takes settings set elsewhere in the cluster at `at`, if newer (a
    /// user never seen here is remembered offline); returns whether they
    /// changed.
    pub fn adopt_privacy(
        &mut self,
        now: Millis,
        user: &UserId,
        privacy: Privacy,
        at: Millis,
    ) -> bool {
        let u = self.user_or_offline(user, Some(now));
        if u.privacy_at > at {
            return false;
        }
        u.privacy_at = at;
        std::mem::replace(&mut u.privacy, privacy) != privacy
    }

    /// The user's privacy settings (open if unknown).
    pub fn privacy(&self, user: &UserId) -> Privacy {
        self.users.get(user).map(|u| u.privacy).unwrap_or_default()
    }

    /// `user`, remembered offline, gone since `gone` (`None`: never
    /// connected here, the oldest for retention), if the machine did not
    /// know them.
    fn user_or_offline(&mut self, user: &UserId, gone: Option<Millis>) -> &mut User {
        match self.users.entry(user.clone()) {
            hash_map::Entry::Occupied(e) => e.into_mut(),
            hash_map::Entry::Vacant(e) => {
                self.offline
                    .insert((gone.unwrap_or_default(), user.clone()));
                let mut u = User::new();
                u.gone = gone;
                e.insert(u)
            }
        }
    }

    /// What the server says about `user` (the `info` of the token of the
    /// connection about to connect): the latest connection's wins. Call it
    /// before [`Machine::connect`], so a user coming online carries it.
    pub fn set_info(&mut self, now: Millis, user: &UserId, info: Option<JsonObject>) {
        let u = self.user_or_offline(user, None);
        u.custom.info_at = now;
        if u.custom.info != info {
            u.custom.info = info;
            self.announce_custom(now, user);
        }
    }

    /// A client set its user's `data` (`None` clears it): the latest
    /// setting wins over all the user's connections. Returns whether it
    /// changed anything.
    pub fn set_data(
        &mut self,
        now: Millis,
        conn: ConnId,
        data: Option<JsonObject>,
    ) -> Result<bool, MachineError> {
        let user_id = self
            .user_of(conn)
            .ok_or(MachineError::UnknownConnection)?
            .clone();
        let Some(u) = self.users.get_mut(&user_id) else {
            return Err(MachineError::UnknownConnection);
        };
        u.custom.data_at = now;
        if u.custom.data == data {
            return Ok(false);
        }
        u.custom.data = data;
        self.announce_custom(now, &user_id);
        Ok(true)
    }

    /// Tells the user's rooms and watchers their `info` and `data`, unless
    /// they are offline or invisible (they come with `user_connected`).
    fn announce_custom(&mut self, now: Millis, user_id: &UserId) {
        let Some(u) = self.users.get(user_id).filter(|u| u.visible()) else {
            return;
        };
        let diff = Diff::Data {
            user: user_id.clone(),
            info: u.custom.info.clone(),
            data: u.custom.data.clone(),
        };
        let rooms = u.rooms.keys().cloned().collect();
        self.emit(now, diff, rooms, true);
    }

    /// Takes a status set elsewhere in the cluster at `at`, if it is newer
    /// than the one this machine knows; returns whether it changed anything.
    pub fn adopt_status(
        &mut self,
        now: Millis,
        user: &UserId,
        status: Status,
        text: Option<StatusText>,
        at: Millis,
    ) -> bool {
        let Some(u) = self.users.get(user) else {
            return false;
        };
        let Some(&conn) = u.conns.first() else {
            return false;
        };
        if u.status_at > at || (u.status == status && u.text == text) {
            return false;
        }
        let changed = self.set_status(now, conn, status, text) == Ok(true);
        if let Some(u) = self.users.get_mut(user) {
            u.status_at = at;
        }
        changed
    }

    /// Typing started or was refreshed (`active`), or stopped, in a room the
    /// connection has joined. Invisible users' typing is not shown.
    pub fn typing(
        &mut self,
        now: Millis,
        conn: ConnId,
        room: &RoomId,
        active: bool,
    ) -> Result<(), MachineError> {
        let user_id = self.member(conn, room)?;
        if !active {
            self.stop_conn_typing(now, &user_id, conn, room);
            return Ok(());
        }
        let Some(user) = self.users.get_mut(&user_id) else {
            return Err(MachineError::UnknownConnection);
        };
        if user.status == Status::Invisible {
            return Ok(());
        }
        let expires = now.after(self.policy.typing_ttl);
        let typers = user.typing.entry(room.clone()).or_default();
        let started = typers.is_empty();
        match typers.iter_mut().find(|(c, _)| *c == conn) {
            Some((_, at)) => *at = expires,
            None => typers.push((conn, expires)),
        }
        self.timers
            .ensure(TimerKey::Typing(user_id.clone(), room.clone()), expires);
        if started {
            let diff = Diff::TypingStarted { user: user_id };
            self.emit(now, diff, vec![room.clone()], false);
        }
        Ok(())
    }

    /// The host app saw the user send a message in `room`: typing stops now.
    pub fn message_sent(&mut self, now: Millis, user: &UserId, room: &RoomId) {
        self.stop_typing(now, user, room);
    }

    /// The user read `room` up to `marker`. Markers only move forward; returns
    /// whether this one did. Invisible users' receipts are kept, not shown;
    /// those of users with receipts off are kept and announced (the server
    /// shows them to the user's own connections only), but the room's
    /// shown marker stays where it was.
    pub fn read(
        &mut self,
        now: Millis,
        conn: ConnId,
        room: &RoomId,
        marker: u64,
    ) -> Result<bool, MachineError> {
        if marker > MAX_READ_MARKER {
            return Err(MachineError::InvalidMarker);
        }
        let user_id = self.member(conn, room)?;
        let Some(user) = self.users.get_mut(&user_id) else {
            return Err(MachineError::UnknownConnection);
        };
        if user
            .receipts
            .get(room)
            .is_some_and(|&current| marker <= current)
        {
            return Ok(false);
        }
        user.receipts.insert(room.clone(), marker);
        let shown = user.privacy.receipts == Receipts::On;
        if user.visible() {
            if shown {
                self.reads
                    .entry(room.clone())
                    .or_default()
                    .insert(user_id.clone(), marker);
            }
            let diff = Diff::Read {
                user: user_id,
                marker,
            };
            self.emit(now, diff, vec![room.clone()], false);
        }
        Ok(true)
    }

    /// The client said it is leaving on purpose: observers see the user go
    /// after the short leave grace unless the connection resumes first.
    pub fn leaving(&mut self, now: Millis, conn: ConnId) {
        self.detach(conn, now, self.policy.leave_grace);
    }

    /// The socket closed or failed without a `leaving`: the full offline grace
    /// runs. After `leaving` this changes nothing.
    pub fn dropped(&mut self, now: Millis, conn: ConnId) {
        self.detach(conn, now, self.policy.offline_grace);
    }

    /// Runs every deadline due at `now`. Returns the connections whose
    /// heartbeat timed out: the caller closes their sockets.
    pub fn tick(&mut self, now: Millis) -> Vec<ConnId> {
        let mut timed_out = Vec::new();
        while let Some(key) = self.timers.pop_due(now) {
            match key {
                TimerKey::Conn(id) => {
                    let Some(c) = self.conns.get_mut(&id) else {
                        continue;
                    };
                    match c.link {
                        Link::Live { last_heard } => {
                            let deadline = last_heard.after(self.policy.heartbeat_timeout);
                            if deadline > now {
                                self.timers.ensure(TimerKey::Conn(id), deadline);
                                continue;
                            }
                            let until = deadline.after(self.policy.offline_grace);
                            c.link = Link::Detached {
                                since: last_heard,
                                until,
                            };
                            self.timers.ensure(TimerKey::Conn(id), until);
                            timed_out.push(id);
                        }
                        Link::Detached { since, until } => {
                            if until > now {
                                self.timers.ensure(TimerKey::Conn(id), until);
                            } else {
                                self.remove_due(now, id, since);
                            }
                        }
                    }
                }
                TimerKey::Typing(user, room) => {
                    let Some(typers) = self
                        .users
                        .get_mut(&user)
                        .and_then(|u| u.typing.get_mut(&room))
                    else {
                        continue;
                    };
                    typers.retain(|&(_, at)| at > now);
                    match typers.iter().map(|&(_, at)| at).min() {
                        Some(at) => self.timers.ensure(TimerKey::Typing(user, room), at),
                        None => self.stop_typing(now, &user, &room),
                    }
                }
            }
        }
        timed_out
    }

    /// When [`Machine::tick`] next has work; `None` when nothing is pending.
    pub fn next_deadline(&self) -> Option<Millis> {
        self.timers.next()
    }

    /// Takes the events emitted since the last call, oldest first.
    pub fn drain_events(&mut self) -> std::vec::Drain<'_, Event> {
        self.events.drain(..)
    }

    /// One user's presence as others see it; `None` if never seen.
    pub fn view(&self, user: &UserId) -> Option<PresenceView> {
        self.users.get(user).map(|u| u.view(user))
    }

    /// Visible members of a room (invisible users are left out).
    pub fn members(&self, room: &RoomId) -> Vec<PresenceView> {
        self.room_users(room)
            .filter(|(_, u)| u.visible())
            .map(|(id, u)| u.view(id))
            .collect()
    }

    /// Members typing in a room.
    pub fn typing_in(&self, room: &RoomId) -> Vec<UserId> {
        self.room_users(room)
            .filter(|(_, u)| u.visible() && u.typing.contains_key(room))
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// A room's read markers for a snapshot: every visible member's, and the
    /// [`RECEIPTS_KEPT`](crate::limits::RECEIPTS_KEPT) most advanced of
    /// readers who are not (offline, or gone from the room): "seen by ana"
    /// stays after ana leaves.
    pub fn receipts_in(&self, room: &RoomId) -> Vec<Receipt> {
        let mut out: Vec<Receipt> = self
            .room_users(room)
            .filter(|(_, u)| u.visible())
            .filter_map(|(id, u)| {
                // With receipts off, the marker shown before they went off.
                let marker = match u.privacy.receipts {
                    Receipts::On => u.receipts.get(room),
                    Receipts::Off => self.reads.get(room)?.get(id),
                };
                Some(Receipt {
                    user: id.clone(),
                    marker: *marker?,
                })
            })
            .collect();
        let shown: HashSet<&UserId> = out.iter().map(|r| &r.user).collect();
        let mut others: Vec<Receipt> = self
            .reads
            .get(room)
            .into_iter()
            .flatten()
            .filter(|(u, _)| !shown.contains(u))
            .map(|(u, m)| Receipt {
                user: u.clone(),
                marker: *m,
            })
            .collect();
        crate::receipts::most_advanced(&mut others, crate::limits::RECEIPTS_KEPT);
        out.extend(others);
        out.sort_unstable_by(|a, b| a.user.cmp(&b.user));
        out
    }

    /// Every shown read marker of `room`, online or not, by user.
    pub fn reads_in(&self, room: &RoomId) -> impl Iterator<Item = (&UserId, u64)> {
        self.reads
            .get(room)
            .into_iter()
            .flatten()
            .map(|(u, m)| (u, *m))
    }

    /// The user a connection speaks for.
    pub fn user_of(&self, conn: ConnId) -> Option<&UserId> {
        self.conns.get(&conn).map(|c| &c.user)
    }

    /// A user's connections, live or in grace.
    pub fn connections_of(&self, user: &UserId) -> &[ConnId] {
        self.users.get(user).map_or(&[], |u| &u.conns)
    }

    /// The rooms a connection has joined.
    pub fn rooms_of(&self, conn: ConnId) -> &[RoomId] {
        self.conns.get(&conn).map_or(&[], |c| &c.rooms)
    }

    /// A user's own status and text (invisible included).
    pub fn status_of(&self, user: &UserId) -> (Status, Option<StatusText>) {
        self.users
            .get(user)
            .map_or((Status::Available, None), |u| (u.status, u.text.clone()))
    }

    /// Counts for metrics.
    pub fn stats(&self) -> Stats {
        Stats {
            connections: self.conns.len(),
            online_users: self.users.values().filter(|u| u.visible()).count(),
            known_users: self.users.len(),
            timers: self.timers.len(),
        }
    }

    /// The user of `conn`, if that connection has joined `room`.
    fn member(&self, conn: ConnId, room: &RoomId) -> Result<UserId, MachineError> {
        let c = self
            .conns
            .get(&conn)
            .ok_or(MachineError::UnknownConnection)?;
        if !c.rooms.contains(room) {
            return Err(MachineError::NotInRoom);
        }
        Ok(c.user.clone())
    }

    fn room_users<'a>(&'a self, room: &RoomId) -> impl Iterator<Item = (&'a UserId, &'a User)> {
        self.rooms
            .get(room)
            .into_iter()
            .flatten()
            .filter_map(|id| Some((id, self.users.get(id)?)))
    }

    fn emit(&mut self, at: Millis, diff: Diff, rooms: Vec<RoomId>, global: bool) {
        self.events.push(Event {
            at,
            diff,
            rooms,
            global,
        });
    }

    fn detach(&mut self, conn: ConnId, now: Millis, grace: std::time::Duration) {
        let Some(c) = self.conns.get_mut(&conn) else {
            return;
        };
        let until = now.after(grace);
        c.link = match c.link {
            Link::Live { .. } => Link::Detached { since: now, until },
            Link::Detached { since, until: old } => Link::Detached {
                since,
                until: old.min(until),
            },
        };
        if let Link::Detached { until, .. } = c.link {
            self.timers.ensure(TimerKey::Conn(conn), until);
        }
    }

    /// Removes a connection whose grace is over, with every other
    /// connection of its user whose grace is over too: removed one by one,
    /// the first would seem to leave its rooms while the user is still
    /// online, though they go offline at this very moment.
    fn remove_due(&mut self, now: Millis, conn: ConnId, seen: Millis) {
        let mut due = vec![(conn, seen)];
        if let Some(u) = self.conns.get(&conn).and_then(|c| self.users.get(&c.user)) {
            for other in &u.conns {
                if let Some(Conn {
                    link: Link::Detached { since, until },
                    ..
                }) = self.conns.get(other)
                    && *other != conn
                    && *until <= now
                {
                    due.push((*other, *since));
                }
            }
        }
        self.remove_conns(now, &due);
    }

    /// Removes a connection (evicted, or its grace is over) and announces
    /// what observers now see. `seen` is when it was last heard.
    fn remove_conn(&mut self, now: Millis, conn: ConnId, seen: Millis) {
        self.remove_conns(now, &[(conn, seen)]);
    }

    /// Removes connections of one user at once (see [`Self::remove_due`]).
    fn remove_conns(&mut self, now: Millis, conns: &[(ConnId, Millis)]) {
        let mut user = None;
        let mut gone: Vec<RoomId> = Vec::new();
        let mut last_seen = Millis(0);
        for &(conn, seen) in conns {
            self.view_gone(now, conn);
            let Some(c) = self.conns.remove(&conn) else {
                continue;
            };
            last_seen = last_seen.max(seen);
            self.tokens.remove(&c.token);
            self.timers.cancel(&TimerKey::Conn(conn));
            if let Some(u) = self.users.get_mut(&c.user) {
                u.conns.retain(|x| *x != conn);
                if u.conns.is_empty() {
                    u.gone = Some(now);
                    self.offline.insert((now, c.user.clone()));
                    // Presence data is the online user's; it goes with them.
                    u.custom.data = None;
                }
            }
            for room in &c.rooms {
                self.stop_conn_typing(now, &c.user, conn, room);
            }
            for room in &c.rooms {
                if self.release_room(now, &c.user, room) && !gone.contains(room) {
                    gone.push(room.clone());
                }
            }
            user = Some(c.user);
        }
        let Some(user) = user else {
            return;
        };
        if !self.connections_of(&user).is_empty() {
            for room in &gone {
                self.announce_left(now, &user, room);
            }
            // The rooms left heard the user go: what the other connections
            // now show (idle, say) is no news there.
            self.refresh(now, &user, last_seen, &[]);
        } else {
            self.refresh(now, &user, last_seen, &gone);
        }
    }

    /// Drops one of the user's connections from a room; returns whether that
    /// was the user's last connection in it (typing there has stopped).
    fn release_room(&mut self, now: Millis, user_id: &UserId, room: &RoomId) -> bool {
        let Some(user) = self.users.get_mut(user_id) else {
            return false;
        };
        let Some(count) = user.rooms.get_mut(room) else {
            return false;
        };
        *count = count.saturating_sub(1);
        if *count > 0 {
            return false;
        }
        user.rooms.remove(room);
        if let Some(members) = self.rooms.get_mut(room) {
            members.remove(user_id);
            if members.is_empty() {
                self.rooms.remove(room);
            }
        }
        self.stop_typing(now, user_id, room);
        true
    }

    fn announce_left(&mut self, now: Millis, user_id: &UserId, room: &RoomId) {
        if self.users.get(user_id).is_some_and(User::visible) {
            let diff = Diff::UserLeft {
                user: user_id.clone(),
            };
            self.emit(now, diff, vec![room.clone()], false);
        }
    }

    fn stop_typing(&mut self, now: Millis, user_id: &UserId, room: &RoomId) {
        let Some(user) = self.users.get_mut(user_id) else {
            return;
        };
        if user.typing.remove(room).is_none() {
            return;
        }
        let visible = user.visible();
        self.timers
            .cancel(&TimerKey::Typing(user_id.clone(), room.clone()));
        if visible {
            let diff = Diff::TypingStopped {
                user: user_id.clone(),
            };
            self.emit(now, diff, vec![room.clone()], false);
        }
    }

    /// One connection stopped typing in `room` (or left it): the user's
    /// typing stops there only if no other connection still types.
    fn stop_conn_typing(&mut self, now: Millis, user_id: &UserId, conn: ConnId, room: &RoomId) {
        let Some(typers) = self
            .users
            .get_mut(user_id)
            .and_then(|u| u.typing.get_mut(room))
        else {
            return;
        };
        typers.retain(|&(c, _)| c != conn);
        if typers.is_empty() {
            self.stop_typing(now, user_id, room);
        }
    }

    fn stop_all_typing(&mut self, now: Millis, user_id: &UserId) {
        let rooms: Vec<RoomId> = self
            .users
            .get(user_id)
            .map(|u| u.typing.keys().cloned().collect())
            .unwrap_or_default();
        for room in rooms {
            self.stop_typing(now, user_id, &room);
        }
    }

    /// Recomputes what observers should see of `user_id` and emits the
    /// difference from what they were last told, if any. `seen` is the
    /// last-seen time to record if the user goes offline; `gone` are rooms
    /// the user just left that must still hear about it.
    fn refresh(&mut self, now: Millis, user_id: &UserId, seen: Millis, gone: &[RoomId]) {
        let Some(user) = self.users.get(user_id) else {
            return;
        };
        let target = if user.status == Status::Invisible {
            Shown::Offline
        } else {
            aggregate(
                user.conns
                    .iter()
                    .filter_map(|c| self.conns.get(c).map(|c| c.activity)),
            )
        };
        let before = user.shown;
        if target == before {
            return;
        }
        let Some(user) = self.users.get_mut(user_id) else {
            return;
        };
        user.shown = target;
        if before == Shown::Active || target == Shown::Active {
            user.last_active = Some(now);
        }
        let diff = match (before, target) {
            (_, Shown::Offline) => {
                let last_seen = user.last_seen.map_or(seen, |s| s.max(seen));
                user.last_seen = Some(last_seen);
                Diff::UserDisconnected {
                    user: user_id.clone(),
                    last_seen: Some(last_seen),
                }
            }
            (Shown::Offline, _) => Diff::UserConnected {
                presence: user.view(user_id),
            },
            (_, Shown::Idle(reason)) => Diff::UserIdle {
                user: user_id.clone(),
                reason,
            },
            (_, Shown::Active) => Diff::UserActive {
                user: user_id.clone(),
            },
        };
        let mut rooms: Vec<RoomId> = user.rooms.keys().cloned().collect();
        rooms.extend(gone.iter().cloned());
        self.emit(now, diff, rooms, true);
    }
}

#[cfg(test)]
mod tests;
