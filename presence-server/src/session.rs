//! One task per WebSocket: `hello`, then frames in, replies and batches out.
//!
//! The session is generic over the socket's two halves, so it does not care
//! whether they come from axum or from a test channel. Reading and writing run
//! as two tasks: a socket that stops reading fills its outbound queue without
//! stalling our reads, and the hub closes it as a slow consumer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes};
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use presence_core::protocol::{ClientMessage, CloseCode, ErrorCode, ServerMessage, decode_client};
use presence_core::{Activity, ConnId, ResumeToken, UserId};
use tokio::sync::{mpsc, watch};

use crate::config::RateLimit;
use crate::hub::{Close, Hub, Registered, text_frame};

/// How long a closing socket gets to take its close frame.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);

/// A token bucket with a debt counter for abuse.
struct Bucket {
    limit: RateLimit,
    tokens: f64,
    debt: f64,
    last: Instant,
}

enum Verdict {
    Ok,
    Limited,
    Abusive,
}

impl Bucket {
    fn new(limit: RateLimit) -> Self {
        Self {
            limit,
            tokens: f64::from(limit.burst),
            debt: 0.0,
            last: Instant::now(),
        }
    }

    fn take(&mut self, now: Instant) -> Verdict {
        let refill = now.saturating_duration_since(self.last).as_secs_f64() * self.limit.per_second;
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
    ServerMessage::Error {
        code,
        message: message.into(),
        frame: frame.map(String::from),
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
        _ => "the server could not process this frame",
    }
}

fn close_message(close: Close) -> Message {
    Message::Close(Some(CloseFrame {
        code: close.0 as u16,
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
    R: Stream<Item = Result<Message, axum::Error>> + Unpin,
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
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_)))) => continue,
            Ok(Some(Ok(Message::Binary(_)))) => {
                let e = error(
                    ErrorCode::Malformed,
                    "binary frames are not supported",
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
                    "the first frame must be hello",
                    Some(other.kind()),
                )),
                policy,
            )),
            Err(e) => Err((Some(error(e.code, e.message, e.frame.as_deref())), policy)),
        };
    }
}

/// Sends queued frames until the queue ends or the hub asks for a close.
async fn write<W>(
    mut sink: W,
    mut outbound: mpsc::Receiver<Message>,
    mut close: watch::Receiver<Option<Close>>,
) where
    W: Sink<Message> + Unpin,
{
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
            r = sink.send(msg) => if r.is_err() { return },
        }
    };
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        let _ = sink.send(close_message(close)).await;
        let _ = sink.close().await;
    })
    .await;
}

fn too_big(err: axum::Error) -> bool {
    use tokio_tungstenite::tungstenite::Error;
    matches!(
        err.into_inner().downcast_ref::<Error>(),
        Some(Error::Capacity(_))
    )
}

/// Runs one authenticated socket to its end.
pub(crate) async fn run<W, R>(hub: Arc<Hub>, user: UserId, mut sink: W, mut stream: R)
where
    W: Sink<Message> + Unpin + Send + 'static,
    R: Stream<Item = Result<Message, axum::Error>> + Unpin,
{
    let _live = hub.session_guard();
    let (resume, activity) = match read_hello(&hub, &mut stream).await {
        Ok(hello) => hello,
        Err((frame, close)) => {
            if let Some(ServerMessage::Error { code, .. }) = &frame {
                hub.metrics.reject(*code);
            }
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
                if let Some(frame) = frame {
                    let _ = sink.send(text_frame(&frame)).await;
                }
                let _ = sink.send(close_message(close)).await;
            })
            .await;
            return;
        }
    };
    let Registered {
        conn,
        generation,
        outbound,
        close,
    } = match hub.connect(&user, resume.as_ref(), activity) {
        Ok(r) => r,
        Err(_) if hub.is_shutting_down() => {
            let close = (CloseCode::GoingAway, "server shutting down");
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, sink.send(close_message(close))).await;
            return;
        }
        Err(code) => {
            hub.metrics.reject(code);
            let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
                let _ = sink
                    .send(text_frame(&error(code, describe(code), Some("hello"))))
                    .await;
                let _ = sink
                    .send(close_message((CloseCode::PolicyViolation, describe(code))))
                    .await;
            })
            .await;
            return;
        }
    };
    tracing::debug!(%user, %conn, generation, "connected");
    let writer = tokio::spawn(write(sink, outbound, close.clone()));
    let mut session = Session {
        hub: &hub,
        user: &user,
        conn,
        generation,
        bucket: Bucket::new(hub.config.rate),
    };
    let mut close = close;
    let killed = loop {
        let frame = tokio::select! {
            _ = closing(&mut close) => break true,
            f = stream.next() => f,
        };
        match frame {
            None | Some(Ok(Message::Close(_))) => break false,
            Some(Err(e)) => {
                if too_big(e) {
                    hub.metrics.reject(ErrorCode::FrameTooLarge);
                    hub.close(conn, generation, (CloseCode::TooBig, "frame too large"));
                    break true;
                }
                break false;
            }
            Some(Ok(msg)) => {
                if let Err(close) = session.frame(msg) {
                    hub.close(conn, generation, close);
                    break true;
                }
            }
        }
    };
    if !killed {
        hub.socket_gone(conn, generation);
    }
    // The writer ends by itself: with the queue's end, or after the close frame.
    let _ = tokio::time::timeout(CLOSE_TIMEOUT + Duration::from_secs(1), writer).await;
    tracing::debug!(%user, %conn, generation, killed, "socket ended");
}

struct Session<'a> {
    hub: &'a Hub,
    user: &'a UserId,
    conn: ConnId,
    generation: u64,
    bucket: Bucket,
}

impl Session<'_> {
    fn reply(&self, msg: &ServerMessage) {
        self.hub.reply(self.conn, self.generation, msg);
    }

    fn refuse(&self, code: ErrorCode, message: impl Into<String>, frame: Option<&str>) {
        self.hub.metrics.reject(code);
        self.reply(&error(code, message, frame));
    }

    fn heartbeat(&self) {
        let conn = self.conn;
        let _ = self
            .hub
            .act(conn, self.generation, |m, now| m.heartbeat(now, conn));
    }

    /// Handles one frame; `Err` closes the socket.
    fn frame(&mut self, msg: Message) -> Result<(), Close> {
        let text = match msg {
            Message::Text(t) => t,
            Message::Binary(_) => {
                self.heartbeat();
                self.refuse(
                    ErrorCode::Malformed,
                    "binary frames are not supported",
                    None,
                );
                return Ok(());
            }
            // Control frames: tungstenite answers pings; they still prove life.
            Message::Ping(_) | Message::Pong(_) | Message::Close(_) => {
                self.heartbeat();
                return Ok(());
            }
        };
        match self.bucket.take(Instant::now()) {
            Verdict::Ok => {}
            Verdict::Limited => {
                self.heartbeat();
                self.refuse(
                    ErrorCode::RateLimited,
                    describe(ErrorCode::RateLimited),
                    None,
                );
                return Ok(());
            }
            Verdict::Abusive => {
                self.hub.metrics.reject(ErrorCode::RateLimited);
                return Err((CloseCode::PolicyViolation, "rate limit far exceeded"));
            }
        }
        let msg = match decode_client(text.as_str()) {
            Ok(m) => m,
            Err(e) => {
                self.heartbeat();
                self.refuse(e.code, e.message, e.frame.as_deref());
                return Ok(());
            }
        };
        let kind = msg.kind();
        if let Err(code) = self.handle(msg) {
            self.refuse(code, describe(code), Some(kind));
        }
        Ok(())
    }

    fn handle(&mut self, msg: ClientMessage) -> Result<(), ErrorCode> {
        let (hub, conn, generation) = (self.hub, self.conn, self.generation);
        match msg {
            ClientMessage::Hello { .. } => {
                self.heartbeat();
                Err(ErrorCode::AlreadyGreeted)
            }
            ClientMessage::Join { room } => {
                if !hub.audience.may_join(self.user, &room) {
                    self.heartbeat();
                    return Err(ErrorCode::Forbidden);
                }
                hub.join(conn, generation, room)
            }
            ClientMessage::Leave { room } => {
                hub.act(conn, generation, |m, now| m.leave(now, conn, &room))
            }
            ClientMessage::Watch { users } => {
                let (allowed, refused): (Vec<UserId>, Vec<UserId>) = users
                    .into_iter()
                    .partition(|u| hub.audience.may_watch(self.user, u));
                if !refused.is_empty() {
                    let names: Vec<&str> = refused.iter().map(UserId::as_str).collect();
                    self.refuse(
                        ErrorCode::Forbidden,
                        format!("may not watch: {}", names.join(", ")),
                        Some("watch"),
                    );
                    if allowed.is_empty() {
                        self.heartbeat();
                        return Ok(());
                    }
                }
                hub.watch(conn, generation, allowed)
            }
            ClientMessage::Unwatch { users } => {
                self.heartbeat();
                hub.unwatch(conn, generation, &users);
                Ok(())
            }
            ClientMessage::Activity { activity } => hub.act(conn, generation, |m, now| {
                m.set_activity(now, conn, activity)
            }),
            ClientMessage::Status { status, text } => {
                hub.set_status(conn, generation, status, text)
            }
            ClientMessage::Typing { room, active } => hub.act(conn, generation, |m, now| {
                m.typing(now, conn, &room, active)
            }),
            ClientMessage::Read { room, marker } => hub
                .act(conn, generation, |m, now| m.read(now, conn, &room, marker))
                .map(|_| ()),
            ClientMessage::Ping => {
                self.heartbeat();
                self.reply(&ServerMessage::Pong);
                Ok(())
            }
            ClientMessage::Leaving => hub.act(conn, generation, |m, now| {
                m.leaving(now, conn);
                Ok(())
            }),
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
        let mut b = Bucket::new(limit);
        let t = b.last;
        assert!(matches!(b.take(t), Verdict::Ok));
        assert!(matches!(b.take(t), Verdict::Ok));
        assert!(matches!(b.take(t), Verdict::Limited));
        for _ in 0..5 {
            assert!(matches!(b.take(t), Verdict::Limited));
        }
        assert!(matches!(b.take(t), Verdict::Abusive));
        let later = t + Duration::from_secs(60);
        assert!(matches!(b.take(later), Verdict::Ok));
    }
}
