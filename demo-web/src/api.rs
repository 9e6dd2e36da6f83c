//! The chat's JSON endpoints and the page's Server-Sent Events stream.
//!
//! | endpoint | auth | answer |
//! |---|---|---|
//! | `POST /api/session` | Bearer name | `{"user"}`: the name is valid; remembered for "active now" |
//! | `GET /api/rooms` | none | `{"rooms":[{"room","latest","lastAt"}]}`, most recently active first |
//! | `POST /api/rooms` `{"room"}` | Bearer name | 201, the room (created if new) |
//! | `GET /api/rooms/{room}/messages?after=N` | none | `{"room","latest","messages":[…]}` |
//! | `POST /api/rooms/{room}/messages` `{"text"}` | Bearer name | 201, the stored message |
//! | `GET /api/people` | none | `{"people":[names]}`, most recent first |
//! | `GET /api/stream?room=R&after=N[&token=name]` | token, for toasts | SSE: `message`, `room`, `people`, `resync`; with a token, `toast` |
//!
//! Errors are `{"error":{"code","message"}}`, as in presence-server's API.
//!
//! Toasts: posting a message asks the embedded presence server, for each
//! other member of the room, whether they will see it as it arrives
//! (`PresenceServer::notify`, the rule in PROTOCOL.md, "Devices and
//! notifications"), the way a backend decides whether to send a push. Only
//! a `push` becomes a toast, on the recipient's pages: a real app would send
//! the push instead. `live` needs nothing (the page shows the room, or the
//! user is at the app); `none` means busy and not mentioned (a mention is
//! `@name` in the text), which a push would not disturb either.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures_util::{Stream, StreamExt, stream};
use presence_server::presence_core::UserId;
use presence_server::presence_core::notify::Decision;
use presence_server::{DevAuth, TokenAuthenticator};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{OwnedSemaphorePermit, broadcast, watch};

use crate::AppState;
use crate::chat::{ChatError, Message, RoomName, Toast, Update, check_text};

/// Largest JSON body the chat endpoints read.
const MAX_BODY_BYTES: usize = 16 * 1024;

/// A refused request: status, stable code, human message.
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "sign in first: send `Authorization: Bearer <your name>`",
        )
    }

    /// The JSON 404 for unknown `/api` paths.
    pub fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": { "code": self.code, "message": self.message } });
        (self.status, Json(body)).into_response()
    }
}

impl From<ChatError> for ApiError {
    fn from(e: ChatError) -> Self {
        let status = match e {
            ChatError::TooManyRooms => StatusCode::CONFLICT,
            _ => StatusCode::BAD_REQUEST,
        };
        Self::new(status, e.code(), e.to_string())
    }
}

impl From<JsonRejection> for ApiError {
    fn from(e: JsonRejection) -> Self {
        let status = e.status();
        let code = if status == StatusCode::PAYLOAD_TOO_LARGE {
            "too_large"
        } else {
            "malformed"
        };
        Self::new(status, code, e.body_text())
    }
}

impl From<QueryRejection> for ApiError {
    fn from(e: QueryRejection) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "malformed", e.body_text())
    }
}

/// The chat routes, under `/api`.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/api/session", post(session))
        .route("/api/rooms", get(rooms).post(create_room))
        .route(
            "/api/rooms/{room}/messages",
            get(messages).post(post_message),
        )
        .route("/api/people", get(people))
        .route("/api/stream", get(updates))
        .route("/api/{*rest}", get(not_found).post(not_found))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

async fn not_found() -> ApiError {
    ApiError::not_found()
}

/// Dev auth (the token is the user name) plus an `info` with a display
/// name, as a real app's tokens would carry: "ana" is shown as "Ana".
pub struct DemoAuth;

impl TokenAuthenticator for DemoAuth {
    fn check(&self, token: &str) -> Result<presence_server::Identity, presence_server::AuthError> {
        let mut who = DevAuth.check(token)?;
        let mut chars = who.user.as_str().chars();
        let name: String = chars
            .next()
            .map(|c| c.to_uppercase().chain(chars).collect())
            .unwrap_or_default();
        let info = serde_json::json!({ "name": name }).to_string();
        who.info = presence_server::presence_core::JsonObject::parse(&info, 1024).ok();
        Ok(who)
    }
}

/// The demo signs users in the way presence-server's dev auth does: the
/// bearer token is the user name. Anyone can be anyone; it is a demo.
fn user(headers: &HeaderMap) -> Result<UserId, ApiError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .ok_or_else(ApiError::unauthorized)?;
    signed_in(token)
}

/// The user a token names (in the demo, the token is the name).
fn signed_in(token: &str) -> Result<UserId, ApiError> {
    DevAuth
        .check(token.trim())
        .map(|who| who.user)
        .map_err(|e| {
            ApiError::new(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                format!("not a usable name: {e}"),
            )
        })
}

async fn session(State(app): State<AppState>, headers: HeaderMap) -> Result<Response, ApiError> {
    let user = user(&headers)?;
    app.chat.saw(user.as_str());
    Ok(Json(json!({ "user": user.as_str() })).into_response())
}

async fn rooms(State(app): State<AppState>) -> Response {
    Json(json!({ "rooms": app.chat.rooms() })).into_response()
}

#[derive(Deserialize)]
struct CreateRoom {
    room: String,
}

async fn create_room(
    State(app): State<AppState>,
    headers: HeaderMap,
    body: Result<Json<CreateRoom>, JsonRejection>,
) -> Result<Response, ApiError> {
    let user = user(&headers)?;
    let Json(body) = body?;
    let room = RoomName::parse(&body.room)?;
    let info = app.chat.enter_room(&room, &user)?;
    Ok((StatusCode::CREATED, Json(info)).into_response())
}

#[derive(Deserialize)]
struct After {
    #[serde(default)]
    after: u64,
}

async fn messages(
    State(app): State<AppState>,
    Path(room): Path<String>,
    query: Result<Query<After>, QueryRejection>,
) -> Result<Response, ApiError> {
    let room = RoomName::parse(&room)?;
    let Query(After { after }) = query?;
    let (messages, latest) = app.chat.messages(&room, after);
    Ok(Json(json!({ "room": room, "latest": latest, "messages": messages })).into_response())
}

#[derive(Deserialize)]
struct PostMessage {
    text: String,
}

async fn post_message(
    State(app): State<AppState>,
    Path(room): Path<String>,
    headers: HeaderMap,
    body: Result<Json<PostMessage>, JsonRejection>,
) -> Result<Response, ApiError> {
    let user = user(&headers)?;
    let room = RoomName::parse(&room)?;
    let Json(body) = body?;
    let text = check_text(&body.text)?;
    let message = app.chat.post(&room, &user, text)?;
    // The host-app half of typing indicators: a sent message ends the
    // sender's "typing…" now, not when it would expire.
    if let Some(room_id) = room.room_id() {
        // Embedded on one node: nothing to tell other nodes, so no error.
        let _ = app.presence.message_sent(&user, &room_id).await;
    }
    notify_members(&app, &message).await;
    Ok((StatusCode::CREATED, Json(message)).into_response())
}

/// Whether `text` mentions `user` as `@user` (trailing punctuation aside).
fn mentions(text: &str, user: &str) -> bool {
    text.split_whitespace()
        .filter_map(|w| w.strip_prefix('@'))
        .any(|w| w == user || w.trim_end_matches(|c: char| c.is_ascii_punctuation()) == user)
}

/// Asks the push decision for every other member of the message's room, at
/// send time as a push service would, and toasts those it says `push` for.
/// Before the answer to the sender, so each recipient's toasts come in the
/// order of the messages.
async fn notify_members(app: &AppState, message: &Message) {
    let Some(room_id) = message.room.room_id() else {
        return;
    };
    for member in app.chat.members(&message.room) {
        if member == message.user {
            continue;
        }
        let Ok(recipient) = UserId::new(member.as_str()) else {
            continue;
        };
        let mention = mentions(&message.text, &member);
        let n = app
            .presence
            .notify(&recipient, &room_id, mention, Some(message.seq))
            .await;
        if n.decision == Decision::Push {
            app.chat.toast(Toast {
                user: member,
                message: message.clone(),
                reason: n.reason.as_str(),
            });
        }
    }
}

async fn people(State(app): State<AppState>) -> Response {
    Json(json!({ "people": app.chat.people() })).into_response()
}

#[derive(Deserialize)]
struct StreamQuery {
    room: String,
    #[serde(default)]
    after: u64,
    /// Whose toasts to send too: the user's token (in the demo, the name;
    /// an `EventSource` cannot send an `Authorization` header).
    token: Option<String>,
}

/// What one page stream holds between events.
struct Feed {
    rx: broadcast::Receiver<Update>,
    shutdown: watch::Receiver<bool>,
    room: RoomName,
    /// The user whose toasts this stream carries, if signed in.
    user: Option<UserId>,
    /// Highest message sequence number sent, so the backlog and the live
    /// channel (subscribed before the backlog was read) never repeat one.
    sent: u64,
    _permit: OwnedSemaphorePermit,
}

fn event(kind: &'static str, data: &impl serde::Serialize) -> Option<Event> {
    let data = serde_json::to_string(data).ok()?;
    Some(Event::default().event(kind).data(data))
}

async fn updates(
    State(app): State<AppState>,
    query: Result<Query<StreamQuery>, QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let Query(q) = query?;
    let room = RoomName::parse(&q.room)?;
    let user = q.token.as_deref().map(signed_in).transpose()?;
    let permit = Arc::clone(&app.streams).try_acquire_owned().map_err(|_| {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "busy",
            "too many open streams; try again later",
        )
    })?;
    let rx = app.chat.subscribe();
    let (backlog, _) = app.chat.messages(&room, q.after);
    let sent = backlog.last().map_or(q.after, |m| m.seq);
    let mut first: Vec<Event> = event("people", &json!({ "people": app.chat.people() }))
        .into_iter()
        .collect();
    first.extend(backlog.iter().filter_map(|m| event("message", m)));
    let feed = Feed {
        rx,
        shutdown: app.shutdown.subscribe(),
        room,
        user,
        sent,
        _permit: permit,
    };
    let live = stream::unfold(feed, |mut feed| async move {
        loop {
            let update = tokio::select! {
                u = feed.rx.recv() => u,
                _ = feed.shutdown.wait_for(|s| *s) => return None,
            };
            let ev = match update {
                Ok(Update::Message(m)) if m.room == feed.room && m.seq > feed.sent => {
                    feed.sent = m.seq;
                    event("message", &m)
                }
                Ok(Update::Message(_)) => None,
                Ok(Update::Room(r)) => event("room", &json!({ "room": r })),
                Ok(Update::People(p)) => event("people", &json!({ "people": p })),
                Ok(Update::Toast(t))
                    if feed.user.as_ref().is_some_and(|u| u.as_str() == t.user) =>
                {
                    event("toast", &t)
                }
                Ok(Update::Toast(_)) => None,
                // Fell behind: the page refetches what it missed.
                Err(RecvError::Lagged(_)) => Some(Event::default().event("resync").data("{}")),
                Err(RecvError::Closed) => return None,
            };
            if let Some(ev) = ev {
                return Some((Ok(ev), feed));
            }
        }
    });
    let all = stream::iter(first.into_iter().map(Ok)).chain(live);
    Ok(Sse::new(all).keep_alive(KeepAlive::default()))
}

#[cfg(test)]
mod tests {
    use super::mentions;

    #[test]
    fn a_mention_is_at_name_as_a_word_trailing_punctuation_aside() {
        assert!(mentions("@ana lunch?", "ana"));
        assert!(mentions("lunch, @ana?", "ana"));
        assert!(mentions("ping @a.b", "a.b"));
        assert!(!mentions("ana lunch?", "ana"));
        assert!(!mentions("@anabel hi", "ana"));
        assert!(!mentions("mail@ana", "ana"));
    }
}
