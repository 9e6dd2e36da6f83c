//! Frames in, to the hub: rate limits, then each frame's work, or its refusal.

use presence_core::protocol::{
    ClientMessage, CloseCode, DecodeError, ErrorCode, ServerMessage, decode_client,
};
use presence_core::{ConnId, UserId};
use tokio_tungstenite::tungstenite::Message;

use super::errors::{Subject, describe};
use super::limits::{AUTH_RATE, Bucket, DATA_RATE, Restore, VIEW_RATE, Verdict};
use crate::auth::{AuthRequest, Identity};
use crate::hub::{Close, Hub, PolicyTimeout};

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

/// What the reading half keeps between frames: who the socket speaks for,
/// and what it may still send.
pub(super) struct Session<'a> {
    hub: &'a Hub,
    /// Who the socket speaks for; an `auth` frame replaces it.
    who: std::sync::Arc<Identity>,
    auth_bucket: Bucket,
    data_bucket: Bucket,
    view_bucket: Bucket,
    conn: ConnId,
    generation: u64,
    bucket: Bucket,
    restore: Restore,
}

impl<'a> Session<'a> {
    pub(super) fn new(
        hub: &'a Hub,
        who: std::sync::Arc<Identity>,
        conn: ConnId,
        generation: u64,
    ) -> Self {
        Session {
            hub,
            auth_bucket: Bucket::new(AUTH_RATE, hub.clock.now()),
            data_bucket: Bucket::new(DATA_RATE, hub.clock.now()),
            view_bucket: Bucket::new(VIEW_RATE, hub.clock.now()),
            who,
            conn,
            generation,
            bucket: Bucket::new(hub.config.rate, hub.clock.now()),
            restore: Restore::new(),
        }
    }

    fn reply(&self, msg: &ServerMessage) {
        self.hub.reply(self.conn, self.generation, msg);
    }

    fn refuse(&self, code: ErrorCode, message: impl Into<String>, subject: Subject<'_>) {
        self.hub.metrics.reject(code);
        self.reply(&subject.error(code, message));
    }

    /// Handles one frame; `Err` closes the socket. Awaits only the app's
    /// audience policy (bounded), so this socket's frames stay in order.
    pub(super) async fn frame(&mut self, msg: Message) -> Result<(), Close> {
        let (hub, conn) = (self.hub, self.conn);
        // Any frame proves the connection alive, whatever becomes of it.
        let decoded = match msg {
            Message::Text(t) => decode_client(t.as_str()),
            Message::Binary(_) => Err(binary_frame()),
            // Control frames: tungstenite answers pings.
            Message::Ping(_) | Message::Pong(_) | Message::Close(_) | Message::Frame(_) => {
                hub.heartbeat(conn, self.generation, false);
                return Ok(());
            }
        };
        let restoring = decoded.as_ref().is_ok_and(|m| self.restore.take(m));
        let verdict = if restoring {
            Verdict::Ok
        } else {
            self.bucket.take(hub.clock.now())
        };
        // A ping (the most frequent frame) is answered in the heartbeat's
        // step; a rate-limited one still proves the socket alive, unanswered.
        let pong = verdict == Verdict::Ok && matches!(decoded, Ok(ClientMessage::Ping));
        hub.heartbeat(conn, self.generation, pong);
        if pong {
            return Ok(());
        }
        match verdict {
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
        let who = std::sync::Arc::new(who);
        if hub.reauthorize(self.conn, self.generation, &who) {
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
            ClientMessage::View { room } => {
                // Tab switches are frequent but cheap; a flood only refuses.
                if !matches!(self.view_bucket.take(hub.clock.now()), Verdict::Ok) {
                    return Err(ErrorCode::RateLimited.into());
                }
                Ok(hub.act(conn, generation, |m, now| {
                    m.set_view(now, conn, room.clone())
                })?)
            }
            ClientMessage::Privacy {
                last_seen,
                receipts,
            } => Ok(hub.set_own_privacy(conn, generation, *last_seen, *receipts)?),
            // Handled by `frame`.
            ClientMessage::Ping | ClientMessage::Leaving | ClientMessage::Auth { .. } => Ok(()),
        }
    }
}
