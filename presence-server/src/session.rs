//! One task per WebSocket: `hello`, then frames in, replies and batches out.
//!
//! The session is generic over the socket's two halves, so it does not care
//! whether they come from our upgrade (`upgrade.rs`) or from a test channel.
//! Reading and writing run as two tasks: a socket that stops reading fills
//! its outbound queue without stalling our reads, and the hub closes it as a
//! slow consumer.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{Sink, SinkExt, Stream, StreamExt};
use presence_core::limits::{
    MAX_ROOMS_PER_CONNECTION, MAX_USERS_PER_WATCH_FRAME, MAX_WATCHED_PER_CONNECTION,
};
use presence_core::protocol::{
    ClientMessage, CloseCode, DecodeError, ErrorCode, ServerMessage, decode_client,
};
use presence_core::{Activity, ConnId, Millis, ResumeToken, RoomId, UserId};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::{CloseFrame, Frame};
use tokio_tungstenite::tungstenite::{Bytes, Error as SocketError, Message, Utf8Bytes};

use crate::auth::{AuthRequest, Identity};
use crate::config::RateLimit;
use crate::hub::{Close, Hub, PolicyTimeout, Registered, encoded};

/// How long a closing socket gets to take its close frame.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);
/// A resume on a node that is still taking back its predecessor's saved
/// connections (a graceful restart) waits at most this long for them.
const RESUME_WAIT: Duration = Duration::from_secs(3);

/// What a closing socket may still send us, read and discarded, so that its
/// unread input does not make the kernel answer our close with a reset.
const DRAIN_BYTES: usize = 1 << 20;

/// `auth` frames: a burst of 3, then one per 10 s; each costs a signature
/// check (or a call to the app's authenticator), so a flood is refused.
const AUTH_RATE: RateLimit = RateLimit {
    burst: 3,
    per_second: 0.1,
    abuse_factor: 10,
};

/// `data` frames: a burst of 10, then 5 a second, on top of the general
/// limit; each one may reach every member of the user's rooms.
const DATA_RATE: RateLimit = RateLimit {
    burst: 10,
    per_second: 5.0,
    abuse_factor: 10,
};

/// Frames a socket may send once, outside the rate limit, so a client can
/// restore the most state the limits allow right after a reconnect: a `join`
/// and a `read` per room, the largest watch list, one `status`.
struct Restore {
    join: usize,
    read: usize,
    watch: usize,
    status: usize,
    data: usize,
}

impl Restore {
    fn new() -> Self {
        Self {
            join: MAX_ROOMS_PER_CONNECTION,
            read: MAX_ROOMS_PER_CONNECTION,
            watch: MAX_WATCHED_PER_CONNECTION.div_ceil(MAX_USERS_PER_WATCH_FRAME),
            status: 1,
            data: 1,
        }
    }

    /// Whether `msg` is paid for by the allowance (and takes from it).
    fn take(&mut self, msg: &ClientMessage) -> bool {
        let left = match msg {
            ClientMessage::Join { .. } => &mut self.join,
            ClientMessage::Read { .. } => &mut self.read,
            ClientMessage::Watch { .. } => &mut self.watch,
            ClientMessage::Status { .. } => &mut self.status,
            ClientMessage::Data { .. } => &mut self.data,
            _ => return false,
        };
        let paid = *left > 0;
        *left = left.saturating_sub(1);
        paid
    }
}

/// A token bucket with a debt counter for abuse.
struct Bucket {
    limit: RateLimit,
    tokens: f64,
    debt: f64,
    last: Millis,
}

enum Verdict {
    Ok,
    Limited,
    Abusive,
}

impl Bucket {
    fn new(limit: RateLimit, now: Millis) -> Self {
        Self {
            limit,
            tokens: f64::from(limit.burst),
            debt: 0.0,
            last: now,
        }
    }

    /// Takes a token at `now` (the server's clock, so tests can drive it).
    fn take(&mut self, now: Millis) -> Verdict {
        let refill = now.since(self.last).as_secs_f64() * self.limit.per_second;
        self.last = now;
        self.tokens = (self.tokens + refill).min(f64::from(self.limit.burst));
        self.debt = (self.debt - refill).max(0.0);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Verdict::Ok;
        }
        self.debt += 1.0;
        if self.debt > f64::from(self.limit.burst) * f64::from(self.limit.abuse_factor) {
            Verdict::Abusive
        } else {
            Verdict::Limited
        }
    }
}

fn error(code: ErrorCode, message: impl Into<String>, frame: Option<&str>) -> ServerMessage {
    let subject = Subject {
        frame,
        ..Subject::default()
    };
    subject.error(code, message)
}

/// The refused frame's type and what it named, so a client can tell which of
/// several frames of one kind failed.
#[derive(Default)]
struct Subject<'m> {
    frame: Option<&'m str>,
    room: Option<&'m RoomId>,
    users: &'m [UserId],
}

impl<'m> Subject<'m> {
    /// A refused frame as a whole: its room, or all the users of a `watch`.
    fn of(msg: &'m ClientMessage) -> Self {
        Self {
            frame: Some(msg.kind()),
            room: msg.room(),
            users: match msg {
                ClientMessage::Watch { users } => users,
                _ => &[],
            },
        }
    }

    /// A frame that did not decode, as far as its error could read it: its
    /// type and valid room, even when another field is what is wrong.
    fn of_error(e: &'m DecodeError) -> Self {
        Self {
            frame: e.frame.as_deref(),
            room: e.room.as_ref(),
            users: &[],
        }
    }

    fn error(&self, code: ErrorCode, message: impl Into<String>) -> ServerMessage {
        ServerMessage::Error {
            code,
            message: message.into(),
            frame: self.frame.map(String::from),
            room: self.room.cloned(),
            users: self.users.to_vec(),
        }
    }
}

/// Why a frame was refused.
enum Refusal {
    Code(ErrorCode),
    /// The app's audience policy did not answer in time.
    PolicyTimeout,
}

impl From<ErrorCode> for Refusal {
    fn from(code: ErrorCode) -> Self {
        Refusal::Code(code)
    }
}

impl From<PolicyTimeout> for Refusal {
    fn from(_: PolicyTimeout) -> Self {
        Refusal::PolicyTimeout
    }
}

/// The decode error for a binary frame, which v1 does not speak.
fn binary_frame() -> DecodeError {
    DecodeError {
        code: ErrorCode::Malformed,
        message: "binary frames are not supported".into(),
        frame: None,
        room: None,
    }
}

fn describe(code: ErrorCode) -> &'static str {
    match code {
        ErrorCode::NotInRoom => "not in this room; join it first",
        ErrorCode::Forbidden => "not allowed by the audience policy",
        ErrorCode::TooManyRooms => "too many rooms on this connection",
        ErrorCode::TooManyWatched => "too many watched users on this connection",
        ErrorCode::TooManyConnections => "too many live connections for this user",
        ErrorCode::InvalidMarker => "read marker out of range",
        ErrorCode::AlreadyGreeted => "hello was already received",
        ErrorCode::RateLimited => "too many frames; slow down",
        ErrorCode::HelloRequired => "the first frame must be hello",
        ErrorCode::Unauthorized => "the token was refused",
        _ => "the server could not process this frame",
    }
}

fn text_frame(msg: &ServerMessage) -> Message {
    Message::Text(encoded(msg))
}

fn close_message(close: Close) -> Message {
    Message::Close(Some(CloseFrame {
        code: (close.0 as u16).into(),
        reason: Utf8Bytes::from_static(close.1),
    }))
}

/// Resolves when the hub asks this socket to close; never if it does not.
async fn closing(rx: &mut watch::Receiver<Option<Close>>) -> Close {
    loop {
        if let Some(close) = *rx.borrow_and_update() {
            return close;
        }
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Reads until `hello`, within the hello timeout. On failure returns the
/// error frame (if any) and the close to send.
async fn read_hello<R>(
    hub: &Hub,
    stream: &mut R,
) -> Result<(Option<ResumeToken>, Activity), (Option<ServerMessage>, Close)>
where
    R: Stream<Item = Result<Message, SocketError>> + Unpin,
{
    let policy = (CloseCode::PolicyViolation, "hello required");
    let deadline = tokio::time::Instant::now() + hub.config.hello_timeout;
    let mut shutdown = hub.shutdown_signal();
    loop {
        let next = tokio::select! {
            r = tokio::time::timeout_at(deadline, stream.next()) => r,
            _ = shutdown.wait_for(|s| *s) => {
                return Err((None, (CloseCode::GoingAway, "server shutting down")));
            }
        };
        let text = match next {
            Err(_) => {
                let e = error(ErrorCode::HelloRequired, "no hello in time", None);
                return Err((Some(e), policy));
            }
            Ok(None | Some(Err(_)) | Some(Ok(Message::Close(_)))) => {
                return Err((None, (CloseCode::GoingAway, "")));
            }
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)))) => continue,
            Ok(Some(Ok(Message::Binary(_)))) => {
                let e = error(
                    ErrorCode::HelloRequired,
                    describe(ErrorCode::HelloRequired),
                    None,
                );
                return Err((Some(e), policy));
            }
            Ok(Some(Ok(Message::Text(t)))) => t,
        };
        return match decode_client(text.as_str()) {
            Ok(ClientMessage::Hello {
                v,
                resume,
                activity,
            }) => {
                if v != presence_core::PROTOCOL_VERSION {
                    let e = error(
                        ErrorCode::UnsupportedVersion,
                        format!("this server speaks v{}", presence_core::PROTOCOL_VERSION),
                        Some("hello"),
                    );
                    return Err((
                        Some(e),
                        (CloseCode::UnsupportedVersion, "unsupported version"),
                    ));
                }
                Ok((resume, activity.unwrap_or(Activity::Active)))
            }
            Ok(other) => Err((
                Some(error(
                    ErrorCode::HelloRequired,
                    describe(ErrorCode::HelloRequired),
                    Some(other.kind()),
                )),
                policy,
            )),
            // A `hello` with a bad field is told what is wrong with it;
            // anything else first (not JSON, another type) is not a hello.
            Err(e) if e.frame.as_deref() == Some("hello") => {
                Err((Some(error(e.code, e.message, Some("hello"))), policy))
            }
            Err(_) => Err((
                Some(error(
                    ErrorCode::HelloRequired,
                    describe(ErrorCode::HelloRequired),
                    None,
                )),
                policy,
            )),
        };
    }
}

/// What a socket is told before a close, beyond the close frame: a 4101 is
/// explained with an `unauthorized` error, which clients can read.
fn last_words(close: Close) -> Option<ServerMessage> {
    (close.0 == CloseCode::Unauthorized).then(|| error(ErrorCode::Unauthorized, close.1, None))
}

/// Refuses a socket whose token the authenticator refused: `unauthorized`,
/// then 4101. Done after the upgrade because a browser cannot read the
/// status of a refused one.
pub(crate) async fn refuse<W, R>(mut sink: W, mut stream: R)
where
    W: Sink<Message> + Unpin,
    R: Stream<Item = Result<Message, SocketError>> + Unpin,
{
    let close = (CloseCode::Unauthorized, "the token was refused");
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        if let Some(msg) = last_words(close) {
            let _ = sink.send(text_frame(&msg)).await;
        }
        let _ = sink.send(close_message(close)).await;
    })
    .await;
    drain(&mut stream).await;
}

/// Text messages past this go out as fragments of at most this many bytes:
/// tungstenite's write buffer keeps the capacity of the biggest frame it
/// ever wrote (tungstenite-rs#500), so one 8 KiB snapshot part would pin
/// 8 KiB on every socket that received one.
pub(crate) const FRAGMENT: usize = 2 * 1024;

/// Sends one text message, past [`FRAGMENT`] as fragments cut between
/// characters. `open` is true while a fragmented message is part-sent: until
/// it ends, only control frames may go out (RFC 6455 5.4).
async fn send<W>(sink: &mut W, text: Utf8Bytes, open: &mut bool) -> Result<(), W::Error>
where
    W: Sink<Message> + Unpin,
{
    if text.len() <= FRAGMENT {
        return sink.send(Message::Text(text)).await;
    }
    let text = Bytes::from(text);
    *open = true;
    let mut start = 0;
    while start < text.len() {
        let mut end = (start + FRAGMENT).min(text.len());
        // UTF-8 continuation bytes are 0b10xx_xxxx.
        while end < text.len() && text[end] & 0xC0 == 0x80 {
            end -= 1;
        }
        let data = if start == 0 {
            Data::Text
        } else {
            Data::Continue
        };
        let last = end == text.len();
        let frame = Frame::message(text.slice(start..end), OpCode::Data(data), last);
        sink.feed(Message::Frame(frame)).await?;
        start = end;
    }
    *open = false;
    sink.flush().await
}

/// Sends queued frames until the queue ends or the hub asks for a close.
async fn write<W>(
    mut sink: W,
    mut outbound: mpsc::Receiver<Utf8Bytes>,
    mut close: watch::Receiver<Option<Close>>,
) where
    W: Sink<Message> + Unpin,
{
    let mut open = false;
    let close = loop {
        let msg = tokio::select! {
            biased;
            c = closing(&mut close) => break c,
            m = outbound.recv() => match m {
                Some(m) => m,
                // The socket ended on the client's side; nothing more to say.
                None => return,
            },
        };
        tokio::select! {
            biased;
            c = closing(&mut close) => break c,
            r = send(&mut sink, msg, &mut open) => if r.is_err() { return },
        }
    };
    let _ = Box::pin(tokio::time::timeout(CLOSE_TIMEOUT, async {
        // Past a cut fragment, an error frame would break the socket.
        if let Some(msg) = last_words(close).filter(|_| !open) {
            let _ = sink.send(text_frame(&msg)).await;
        }
        let _ = sink.send(close_message(close)).await;
        let _ = sink.close().await;
    }))
    .await;
}

/// The close a failed read calls for, if the socket can still take one.
fn read_failure(err: SocketError) -> Option<(ErrorCode, Close)> {
    match err {
        SocketError::Capacity(_) => Some((
            ErrorCode::FrameTooLarge,
            (CloseCode::TooBig, "frame too large"),
        )),
        SocketError::Utf8(_) => Some((
            ErrorCode::Malformed,
            (CloseCode::InvalidData, "text frame is not valid UTF-8"),
        )),
        _ => None,
    }
}

/// Reads and discards what a socket we are closing still sends, until its
/// close frame or end, within the close timeout and [`DRAIN_BYTES`]: closing
/// a TCP socket with unread input makes the kernel send a reset, and the
/// client would see 1006 instead of our close code. After a read error (a
/// message past the size limit, bad UTF-8) the stream has ended and this
/// reads nothing: the connection's linger (`upgrade::Lingering`) reads the
/// rest as bytes once the socket is dropped.
async fn drain<R>(stream: &mut R)
where
    R: Stream<Item = Result<Message, SocketError>> + Unpin,
{
    let mut budget = DRAIN_BYTES;
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        while let Some(Ok(msg)) = stream.next().await {
            let len = match &msg {
                Message::Text(t) => t.len(),
                Message::Binary(b) | Message::Ping(b) | Message::Pong(b) => b.len(),
                Message::Close(_) => return,
                Message::Frame(f) => f.len(),
            };
            budget = match budget.checked_sub(len.max(1)) {
                Some(left) => left,
                None => return,
            };
        }
    })
    .await;
}

/// Runs one authenticated socket to its end.
// A block, not an `async fn`: an `async fn` keeps its arguments twice in the
// future (rust-lang/rust#62958), and this future is a task, one per socket.
#[allow(clippy::manual_async_fn)]
pub(crate) fn run<W, R>(
    hub: Arc<Hub>,
    who: Identity,
    mut sink: W,
    mut stream: R,
) -> impl Future<Output = ()>
where
    W: Sink<Message> + Unpin + Send + 'static,
    R: Stream<Item = Result<Message, SocketError>> + Unpin,
{
    async move {
        let _live = hub.session_guard();
        let user = who.user.clone();
        // Boxed here and below: what runs once or briefly (hello, a close,
        // one frame) must not size the task that every idle socket keeps.
        let (resume, activity) = match Box::pin(read_hello(&hub, &mut stream)).await {
            Ok(hello) => hello,
            Err((frame, close)) => {
                if let Some(ServerMessage::Error { code, .. }) = &frame {
                    hub.metrics.reject(*code);
                }
                let _ = Box::pin(tokio::time::timeout(CLOSE_TIMEOUT, async {
                    if let Some(frame) = frame {
                        let _ = sink.send(text_frame(&frame)).await;
                    }
                    let _ = sink.send(close_message(close)).await;
                }))
                .await;
                return;
            }
        };
        // A node that just restarted may not have its predecessor's
        // connections back yet: a resume waits for them (bounded).
        let mut resume = resume;
        if let Some(token) = &resume {
            Box::pin(hub.cluster_settled(RESUME_WAIT)).await;
            // A connection another node holds comes here first.
            if let Some(taken) = Box::pin(hub.take_over(&user, token)).await {
                resume = Some(taken);
            }
        }
        let Registered {
            conn,
            generation,
            outbound,
            close,
        } = match hub.connect(&who, resume.as_ref(), activity) {
            Ok(r) => r,
            Err(_) if hub.is_shutting_down() => {
                let close = (CloseCode::GoingAway, "server shutting down");
                let send = tokio::time::timeout(CLOSE_TIMEOUT, sink.send(close_message(close)));
                let _ = Box::pin(send).await;
                return;
            }
            Err(code) => {
                hub.metrics.reject(code);
                let _ = Box::pin(tokio::time::timeout(CLOSE_TIMEOUT, async {
                    let _ = sink
                        .send(text_frame(&error(code, describe(code), Some("hello"))))
                        .await;
                    let _ = sink
                        .send(close_message((CloseCode::PolicyViolation, describe(code))))
                        .await;
                }))
                .await;
                return;
            }
        };
        tracing::debug!(%user, %conn, generation, "connected");
        let writer = tokio::spawn(write(sink, outbound, close.clone()));
        let mut session = Session {
            hub: &hub,
            auth_bucket: Bucket::new(AUTH_RATE, hub.clock.now()),
            data_bucket: Bucket::new(DATA_RATE, hub.clock.now()),
            who,
            conn,
            generation,
            bucket: Bucket::new(hub.config.rate, hub.clock.now()),
            restore: Restore::new(),
        };
        let mut close = close;
        let mut peer_closed = false;
        let killed = loop {
            let frame = tokio::select! {
                biased;
                _ = closing(&mut close) => break true,
                f = stream.next() => f,
            };
            match frame {
                None => break false,
                Some(Ok(Message::Close(_))) => {
                    peer_closed = true;
                    break false;
                }
                Some(Err(e)) => {
                    if let Some((code, close)) = read_failure(e) {
                        hub.metrics.reject(code);
                        hub.close(conn, generation, close);
                        break true;
                    }
                    break false;
                }
                Some(Ok(msg)) => {
                    if let Err(close) = Box::pin(session.frame(msg)).await {
                        hub.close(conn, generation, close);
                        break true;
                    }
                }
            }
        };
        if killed {
            Box::pin(drain(&mut stream)).await;
        } else {
            hub.socket_gone(conn, generation);
        }
        if peer_closed {
            // tungstenite sends its answer to the peer's close frame on the
            // next read: without it a browser sees 1006, not a clean close.
            let _ = Box::pin(tokio::time::timeout(CLOSE_TIMEOUT, stream.next())).await;
        }
        // The writer ends by itself: with the queue's end, or after the close frame.
        let _ = Box::pin(tokio::time::timeout(
            CLOSE_TIMEOUT + Duration::from_secs(1),
            writer,
        ))
        .await;
        tracing::debug!(%user, %conn, generation, killed, "socket ended");
    }
}

struct Session<'a> {
    hub: &'a Hub,
    /// Who the socket speaks for; an `auth` frame replaces it.
    who: Identity,
    auth_bucket: Bucket,
    data_bucket: Bucket,
    conn: ConnId,
    generation: u64,
    bucket: Bucket,
    restore: Restore,
}

impl Session<'_> {
    fn reply(&self, msg: &ServerMessage) {
        self.hub.reply(self.conn, self.generation, msg);
    }

    fn refuse(&self, code: ErrorCode, message: impl Into<String>, subject: Subject<'_>) {
        self.hub.metrics.reject(code);
        self.reply(&subject.error(code, message));
    }

    /// Handles one frame; `Err` closes the socket. Awaits only the app's
    /// audience policy (bounded), so this socket's frames stay in order.
    async fn frame(&mut self, msg: Message) -> Result<(), Close> {
        let (hub, conn) = (self.hub, self.conn);
        // Any frame proves the connection alive, whatever becomes of it.
        let _ = hub.act(conn, self.generation, |m, now| m.heartbeat(now, conn));
        let decoded = match msg {
            Message::Text(t) => decode_client(t.as_str()),
            Message::Binary(_) => Err(binary_frame()),
            // Control frames: tungstenite answers pings.
            Message::Ping(_) | Message::Pong(_) | Message::Close(_) | Message::Frame(_) => {
                return Ok(());
            }
        };
        let restoring = decoded.as_ref().is_ok_and(|m| self.restore.take(m));
        if !restoring {
            match self.bucket.take(hub.clock.now()) {
                Verdict::Ok => {}
                Verdict::Limited => {
                    // Only while the queue has room: a flooder's own error
                    // replies must not make it a slow consumer (4001)
                    // before its flood is closed as abuse (1008).
                    let code = ErrorCode::RateLimited;
                    let subject = decoded.as_ref().map_or_else(Subject::of_error, Subject::of);
                    hub.metrics.reject(code);
                    hub.try_reply(conn, self.generation, &subject.error(code, describe(code)));
                    return Ok(());
                }
                Verdict::Abusive => {
                    hub.metrics.reject(ErrorCode::RateLimited);
                    return Err((CloseCode::PolicyViolation, "rate limit far exceeded"));
                }
            }
        }
        let msg = match decoded {
            Ok(m) => m,
            Err(e) => {
                self.refuse(e.code, e.message.clone(), Subject::of_error(&e));
                return Ok(());
            }
        };
        if msg == ClientMessage::Leaving {
            let _ = hub.act(conn, self.generation, |m, now| {
                m.leaving(now, conn);
                Ok(())
            });
            // The socket's work is done; the connection keeps its leave grace.
            return Err((CloseCode::Normal, "left"));
        }
        if let ClientMessage::Auth { token } = &msg {
            return self.refresh(token).await;
        }
        match self.handle(&msg).await {
            Ok(()) => {}
            Err(Refusal::Code(code)) => self.refuse(code, describe(code), Subject::of(&msg)),
            Err(Refusal::PolicyTimeout) => self.refuse(
                ErrorCode::Internal,
                "the audience policy did not answer in time; retry",
                Subject::of(&msg),
            ),
        }
        Ok(())
    }

    /// An `auth` frame: a fresh token for the same user moves the expiry
    /// and replaces the claims; anything else closes with 4101.
    async fn refresh(&mut self, token: &str) -> Result<(), Close> {
        let hub = self.hub;
        let subject = Subject {
            frame: Some("auth"),
            ..Subject::default()
        };
        match self.auth_bucket.take(hub.clock.now()) {
            Verdict::Ok => {}
            Verdict::Limited => {
                let code = ErrorCode::RateLimited;
                self.refuse(code, "at most one auth frame per 10 s", subject);
                return Ok(());
            }
            Verdict::Abusive => {
                hub.metrics.reject(ErrorCode::RateLimited);
                return Err((
                    CloseCode::PolicyViolation,
                    "auth frames far beyond the rate",
                ));
            }
        }
        let (headers, query) = (axum::http::HeaderMap::new(), Default::default());
        let request = AuthRequest {
            token: Some(token),
            headers: &headers,
            query: &query,
        };
        let who = match hub.authenticate(&request).await {
            Ok(Ok(who)) if hub.is_revoked(&who).await => {
                hub.metrics.token("refused");
                hub.metrics.reject(ErrorCode::Unauthorized);
                return Err((CloseCode::Unauthorized, "the refreshed token was revoked"));
            }
            Ok(Ok(who)) => who,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "refreshed token refused");
                hub.metrics.token("refused");
                hub.metrics.reject(ErrorCode::Unauthorized);
                return Err((CloseCode::Unauthorized, "the refreshed token was refused"));
            }
            Err(PolicyTimeout) => {
                let message = "the authenticator did not answer in time; retry";
                self.refuse(ErrorCode::Internal, message, subject);
                return Ok(());
            }
        };
        if who.user != self.who.user {
            hub.metrics.token("refused");
            hub.metrics.reject(ErrorCode::Unauthorized);
            return Err((
                CloseCode::Unauthorized,
                "the refreshed token is for another user",
            ));
        }
        let exp = who.expires;
        if hub.reauthorize(self.conn, self.generation, exp) {
            self.who = who;
            hub.metrics.token("refreshed");
            self.reply(&ServerMessage::AuthOk { exp });
        }
        Ok(())
    }

    async fn handle(&mut self, msg: &ClientMessage) -> Result<(), Refusal> {
        let (hub, conn, generation) = (self.hub, self.conn, self.generation);
        match msg {
            ClientMessage::Hello { .. } => Err(ErrorCode::AlreadyGreeted.into()),
            ClientMessage::Join { room } => {
                if !hub.may_join(&self.who, room).await? {
                    hub.metrics.deny("join");
                    return Err(ErrorCode::Forbidden.into());
                }
                Ok(hub.join(conn, generation, room.clone())?)
            }
            ClientMessage::Leave { room } => {
                Ok(hub.act(conn, generation, |m, now| m.leave(now, conn, room))?)
            }
            ClientMessage::Watch { users } => {
                let mut allowed = Vec::with_capacity(users.len());
                let mut refused = Vec::new();
                for u in users {
                    if hub.may_watch(&self.who, u).await? {
                        allowed.push(u.clone());
                    } else {
                        refused.push(u.clone());
                    }
                }
                if !refused.is_empty() {
                    hub.metrics.deny("watch");
                    let names: Vec<&str> = refused.iter().map(UserId::as_str).collect();
                    self.refuse(
                        ErrorCode::Forbidden,
                        format!("may not watch: {}", names.join(", ")),
                        Subject {
                            frame: Some("watch"),
                            room: None,
                            users: &refused,
                        },
                    );
                    if allowed.is_empty() {
                        return Ok(());
                    }
                }
                Ok(hub.watch(conn, generation, allowed)?)
            }
            ClientMessage::Unwatch { users } => {
                hub.unwatch(conn, generation, users);
                Ok(())
            }
            ClientMessage::Activity { activity } => Ok(hub.act(conn, generation, |m, now| {
                m.set_activity(now, conn, *activity)
            })?),
            ClientMessage::Status { status, text } => {
                Ok(hub.set_status(conn, generation, *status, text.clone())?)
            }
            ClientMessage::Typing { room, active } => Ok(hub.act(conn, generation, |m, now| {
                m.typing(now, conn, room, *active)
            })?),
            ClientMessage::Read { room, marker } => {
                Ok(hub.read_marker(conn, generation, room, *marker)?)
            }
            ClientMessage::Data { data } => {
                let size = data.as_ref().map_or(0, |d| d.len());
                if size > hub.config.max_data_bytes {
                    let message = format!(
                        "data is {size} bytes; the limit is {}",
                        hub.config.max_data_bytes
                    );
                    let subject = Subject::of(msg);
                    self.refuse(ErrorCode::DataTooLarge, message, subject);
                    return Ok(());
                }
                // A flood is closed by the general limit; this one only refuses.
                if !matches!(self.data_bucket.take(hub.clock.now()), Verdict::Ok) {
                    return Err(ErrorCode::RateLimited.into());
                }
                let data = data.clone();
                hub.act(conn, generation, |m, now| m.set_data(now, conn, data))?;
                Ok(())
            }
            ClientMessage::Ping => {
                self.reply(&ServerMessage::Pong);
                Ok(())
            }
            // Handled by `frame`.
            ClientMessage::Leaving | ClientMessage::Auth { .. } => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_a_burst_then_limits_then_calls_a_flood_abuse() {
        let limit = RateLimit {
            burst: 2,
            per_second: 1.0,
            abuse_factor: 3,
        };
        let t = Millis(1_000_000);
        let mut b = Bucket::new(limit, t);
        assert!(matches!(b.take(t), Verdict::Ok));
        assert!(matches!(b.take(t), Verdict::Ok));
        assert!(matches!(b.take(t), Verdict::Limited));
        for _ in 0..5 {
            assert!(matches!(b.take(t), Verdict::Limited));
        }
        assert!(matches!(b.take(t), Verdict::Abusive));
        let later = t.after(Duration::from_secs(60));
        assert!(matches!(b.take(later), Verdict::Ok));
    }
}
