//! The JSON API, `/healthz`, `/readyz` and `/metrics`.
//!
//! Protected like the socket: `Authorization: Bearer <user token>` sees what
//! that user could see over a socket (themselves, people sharing a room with
//! them, people the audience policy lets them watch); the configured service
//! key sees everything.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use presence_core::protocol::Counts;
use presence_core::{Machine, PresenceView, Receipts, RoomId, UserId};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::auth::{AuthRequest, Identity};
use crate::backend::Backend;
use crate::hub::{Hub, PolicyTimeout};

/// An API error: HTTP status plus `{"error":{"code","message"}}`.
pub(crate) struct ApiError {
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

    pub(crate) fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "a valid token is required",
        )
    }

    fn forbidden(what: &str) -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("this token may not see {what}"),
        )
    }

    fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_field", message)
    }

    pub(crate) fn unavailable() -> Self {
        Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the app's auth or audience hook did not answer in time; retry",
        )
    }
}

impl From<PolicyTimeout> for ApiError {
    fn from(_: PolicyTimeout) -> Self {
        Self::unavailable()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = json!({ "error": { "code": self.code, "message": self.message } });
        let mut res = (self.status, Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            res.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        res
    }
}

/// Who is asking.
pub(crate) enum Caller {
    Service,
    User(Identity),
}

/// The bearer token of a request, if any.
pub(crate) fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    // Auth scheme names are case-insensitive (RFC 9110, section 11.1).
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Compares without an early exit, so timing does not reveal the key.
fn same_secret(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn caller(
    hub: &Hub,
    headers: &HeaderMap,
    query: &HashMap<String, String>,
) -> Result<Caller, ApiError> {
    let token = bearer(headers).ok_or_else(ApiError::unauthorized)?;
    if let Some(key) = &hub.config.service_key
        && same_secret(key.as_bytes(), token.as_bytes())
    {
        return Ok(Caller::Service);
    }
    let request = AuthRequest {
        token: Some(token),
        headers,
        query,
    };
    match hub.authenticate(&request).await? {
        Ok(who) if hub.is_revoked(&who).await => {
            tracing::debug!(user = %who.user, "HTTP API token revoked");
            Err(ApiError::unauthorized())
        }
        Ok(who) => Ok(Caller::User(who)),
        Err(e) => {
            tracing::debug!(error = %e, "HTTP API token refused");
            Err(ApiError::unauthorized())
        }
    }
}

impl axum::extract::FromRequestParts<Arc<Hub>> for Caller {
    type Rejection = ApiError;

    /// The bearer token (the service key, or a user's token the app's
    /// authenticator accepts), read once for every handler.
    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        hub: &Arc<Hub>,
    ) -> Result<Self, ApiError> {
        let query = Query::<HashMap<String, String>>::try_from_uri(&parts.uri)
            .map(|q| q.0)
            .unwrap_or_default();
        caller(hub, &parts.headers, &query).await
    }
}

/// A caller holding the service key: server actions and what other users
/// never see.
pub(crate) struct Service;

impl axum::extract::FromRequestParts<Arc<Hub>> for Service {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        hub: &Arc<Hub>,
    ) -> Result<Self, ApiError> {
        match Caller::from_request_parts(parts, hub).await? {
            Caller::Service => Ok(Service),
            Caller::User(_) => Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "forbidden",
                "server actions need the service key",
            )),
        }
    }
}

/// Whether `viewer` may see `target`: themselves, a room in common, or
/// their token's watch scope and the audience policy.
async fn may_see(hub: &Hub, viewer: &Identity, target: &UserId) -> Result<bool, ApiError> {
    let shared = viewer.user == *target
        || hub.read(|m| {
            m.rooms_of_user(&viewer.user)
                .iter()
                .any(|room| m.in_room(room, target))
        });
    if shared || hub.may_watch(viewer, target).await? {
        return Ok(true);
    }
    hub.metrics.deny("http");
    Ok(false)
}

fn view_of(machine: &Machine, user: &UserId) -> PresenceView {
    machine
        .view(user)
        .unwrap_or_else(|| PresenceView::offline(user.clone()))
}

/// The cluster backend, when the cluster-level state is to be read from it.
fn backend(hub: &Hub) -> Option<&dyn Backend> {
    hub.cluster
        .as_ref()
        .filter(|_| hub.cluster_up() == Some(true))
        .map(|l| &*l.backend)
}

/// Cluster-wide `may_see`: a shared room anywhere in the cluster counts.
/// `None` if the backend could not answer (the caller falls back to this node).
async fn may_see_cluster(
    hub: &Hub,
    backend: &dyn Backend,
    viewer: &Identity,
    target: &UserId,
) -> Option<bool> {
    if viewer.user == *target || hub.may_watch(viewer, target).await.ok()? {
        return Some(true);
    }
    let pair = [viewer.user.clone(), target.clone()];
    let recs = backend.read(&pair).await.ok()?;
    let [a, b] = recs.as_slice() else {
        return None;
    };
    let (a, b) = (hub.cluster_rooms(a), hub.cluster_rooms(b));
    Some(a.iter().any(|r| b.contains(r)))
}

/// Cluster-level views of `users` for `caller`: (visible views, forbidden).
/// `None` on a store failure.
async fn cluster_views(
    hub: &Hub,
    caller: &Caller,
    users: &[UserId],
) -> Option<(Vec<PresenceView>, Vec<UserId>)> {
    let backend = backend(hub)?;
    let mut allowed = Vec::with_capacity(users.len());
    let mut forbidden = Vec::new();
    for user in users {
        let ok = match caller {
            Caller::Service => true,
            Caller::User(viewer) => may_see_cluster(hub, backend, viewer, user).await?,
        };
        if ok {
            allowed.push(user.clone());
        } else {
            forbidden.push(user.clone());
        }
    }
    let views = if allowed.is_empty() {
        Vec::new()
    } else {
        let recs = backend.read(&allowed).await.ok()?;
        if recs.len() != allowed.len() {
            return None;
        }
        let viewer = match caller {
            Caller::Service => None,
            Caller::User(who) => Some(who),
        };
        hub.cluster_views(&allowed, &recs, None, viewer)
    };
    (views.len() == allowed.len()).then_some((views, forbidden))
}

/// This node's views of `users` for `caller`: (visible views, forbidden).
async fn local_views(
    hub: &Hub,
    caller: &Caller,
    users: &[UserId],
) -> Result<(Vec<PresenceView>, Vec<UserId>), ApiError> {
    let mut allowed = Vec::with_capacity(users.len());
    let mut forbidden = Vec::new();
    for user in users {
        let ok = match caller {
            Caller::Service => true,
            Caller::User(viewer) => may_see(hub, viewer, user).await?,
        };
        if ok {
            allowed.push(user.clone());
        } else {
            forbidden.push(user.clone());
        }
    }
    let views = hub.read(|m| allowed.iter().map(|u| view_of(m, u)).collect());
    let views = match caller {
        Caller::Service => views,
        Caller::User(viewer) => hub.as_seen_by(viewer, views),
    };
    Ok((views, forbidden))
}

/// Views of `users` for `caller`, as its token may see them: cluster-wide
/// when the cluster's store answers, else this node's.
async fn views_for(
    hub: &Hub,
    caller: &Caller,
    users: &[UserId],
) -> Result<(Vec<PresenceView>, Vec<UserId>), ApiError> {
    match cluster_views(hub, caller, users).await {
        Some(found) => Ok(found),
        None => local_views(hub, caller, users).await,
    }
}

/// `GET /v1/users/{id}/presence`
pub(crate) async fn user_presence(
    State(hub): State<Arc<Hub>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<PresenceView>, ApiError> {
    let user = UserId::new(id).map_err(|e| ApiError::invalid(e.to_string()))?;
    let (mut views, forbidden) = views_for(&hub, &caller, std::slice::from_ref(&user)).await?;
    match views.pop() {
        Some(v) if forbidden.is_empty() => Ok(Json(v)),
        _ => Err(ApiError::forbidden("this user")),
    }
}

#[derive(Deserialize)]
struct BulkRequest {
    users: Vec<String>,
    /// Ranked and paged (`present_first` or `recent`); without it, as given.
    #[serde(default)]
    order: Option<crate::ranked::Order>,
    #[serde(default)]
    limit: Option<usize>,
    #[serde(default)]
    after: Option<String>,
}

#[derive(Serialize)]
pub(crate) struct BulkResponse {
    users: Vec<PresenceView>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    forbidden: Vec<UserId>,
}

/// `POST /v1/presence/bulk` with `{"users":[...]}`. Users the caller may not
/// see are listed under `forbidden` instead.
pub(crate) async fn bulk_presence(
    State(hub): State<Arc<Hub>>,
    caller: Caller,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: BulkRequest = json_body(body, r#"{"users":[...]}"#)?;
    if let Some(order) = req.order {
        let users = req
            .users
            .into_iter()
            .map(UserId::new)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| ApiError::invalid(e.to_string()))?;
        let limit = req.limit.unwrap_or(100);
        let page = ranked(&hub, &caller, users, order, limit, req.after.as_deref()).await?;
        return Ok(Json(page).into_response());
    }
    let max = hub.config.max_bulk_users;
    if req.users.len() > max {
        return Err(ApiError::invalid(format!(
            "at most {max} users per request"
        )));
    }
    let users = req
        .users
        .into_iter()
        .map(UserId::new)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ApiError::invalid(e.to_string()))?;
    let (users, forbidden) = views_for(&hub, &caller, &users).await?;
    Ok(Json(BulkResponse { users, forbidden }).into_response())
}

/// One page of a ranked bulk query (see `ranked`), cluster-wide, showing
/// the caller only whom it may see.
pub(crate) async fn ranked(
    hub: &Hub,
    caller: &Caller,
    users: Vec<UserId>,
    order: crate::ranked::Order,
    limit: usize,
    after: Option<&str>,
) -> Result<crate::ranked::Ranked, ApiError> {
    use crate::ranked::{MAX_RANKED_USERS, page, unique};
    if users.len() > MAX_RANKED_USERS {
        return Err(ApiError::invalid(format!(
            "at most {MAX_RANKED_USERS} users per ranked query"
        )));
    }
    let users = unique(users);
    // Hidden last seens are gone before ranking: they rank as unknown.
    let (views, forbidden) = views_for(hub, caller, &users).await?;
    let index: HashMap<&UserId, usize> = users.iter().enumerate().map(|(i, u)| (u, i)).collect();
    let views = views
        .into_iter()
        .filter_map(|v| Some((*index.get(&v.user)?, v)))
        .collect();
    page(&users, views, forbidden, order, limit, after)
        .map_err(|e| ApiError::invalid(e.to_string()))
}

#[derive(Serialize)]
pub(crate) struct RoomMembers {
    room: RoomId,
    members: Vec<PresenceView>,
    /// Visible members' read markers, and on the first page those of the
    /// most advanced readers who are not members.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    receipts: Vec<presence_core::protocol::Receipt>,
    /// When more members follow: pass it as `after` for the next page.
    #[serde(skip_serializing_if = "Option::is_none")]
    next: Option<UserId>,
}

/// `GET /v1/rooms/{room}/members`: the room's visible members, as a `join`
/// snapshot would list them. A user may read rooms they are in or may join.
pub(crate) async fn room_members(
    State(hub): State<Arc<Hub>>,
    caller: Caller,
    Query(query): Query<HashMap<String, String>>,
    Path(room): Path<String>,
) -> Result<Json<RoomMembers>, ApiError> {
    let page = Page::from_query(&query)?;
    let mut all = members_of(&hub, caller, room).await?;
    all.members.sort_by(|a, b| a.user.cmp(&b.user));
    let members: std::collections::HashSet<UserId> =
        all.members.iter().map(|m| m.user.clone()).collect();
    if let Some(after) = &page.after {
        all.members.retain(|m| m.user > *after);
    }
    if all.members.len() > page.limit {
        all.members.truncate(page.limit);
        all.next = all.members.last().map(|m| m.user.clone());
    }
    // Each page carries its members' markers; the first also those of
    // readers who are not members (offline, or gone), as a snapshot does.
    let shown: Vec<&UserId> = all.members.iter().map(|m| &m.user).collect();
    let first = page.after.is_none();
    all.receipts
        .retain(|r| shown.contains(&&r.user) || (first && !members.contains(&r.user)));
    Ok(Json(all))
}

/// Members per page at most (and by default).
const MAX_PAGE: usize = 1_000;

/// `?after=<user>&limit=<n>`: members sorted by id, after `after`, at most
/// `limit` (1-1000, default 1000).
struct Page {
    after: Option<UserId>,
    limit: usize,
}

impl Page {
    fn from_query(query: &HashMap<String, String>) -> Result<Self, ApiError> {
        let after = query
            .get("after")
            .map(|a| UserId::new(a.as_str()))
            .transpose()
            .map_err(|e| ApiError::invalid(format!("after: {e}")))?;
        let limit = match query.get("limit") {
            None => MAX_PAGE,
            Some(l) => l
                .parse::<usize>()
                .ok()
                .filter(|l| (1..=MAX_PAGE).contains(l))
                .ok_or_else(|| ApiError::invalid(format!("limit must be 1-{MAX_PAGE}")))?,
        };
        Ok(Self { after, limit })
    }
}

/// Every visible member of a room, for a caller who may read it.
/// `room`, if the caller may read it: the service key, or a user who is in
/// it or may join it.
async fn readable_room(
    hub: &Hub,
    caller: Caller,
    room: String,
) -> Result<(Caller, RoomId), ApiError> {
    let room = RoomId::new(room).map_err(|e| ApiError::invalid(e.to_string()))?;
    if let Caller::User(viewer) = &caller
        && !hub.read(|m| m.in_room(&room, &viewer.user))
        && !hub.may_join(viewer, &room).await?
    {
        hub.metrics.deny("http");
        return Err(ApiError::forbidden("this room"));
    }
    Ok((caller, room))
}

/// `GET /v1/rooms/{room}/receipts?at=M[&limit=N][&after=CURSOR]`: who has
/// read the room up to marker M or past it, online or not ("seen by 37"):
/// the count and a page of them, most advanced first.
pub(crate) async fn room_receipts(
    State(hub): State<Arc<Hub>>,
    caller: Caller,
    Query(query): Query<HashMap<String, String>>,
    Path(room): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    use presence_core::limits::{MAX_READ_MARKER, MAX_READERS_PAGE};
    use presence_core::receipts::{After, readers};
    let (caller, room) = readable_room(&hub, caller, room).await?;
    // A user with receipts off sees nobody's marker but their own.
    let only = match &caller {
        Caller::User(who) if hub.privacy(&who.user).receipts == Receipts::Off => {
            Some(who.user.clone())
        }
        _ => None,
    };
    let seen = |u: &UserId| only.as_ref().is_none_or(|o| o == u);
    let at = marker_param(&query, "at")?.ok_or_else(|| {
        ApiError::invalid(format!(
            "at is required: the message's marker, an integer from 0 to {MAX_READ_MARKER}"
        ))
    })?;
    let limit = match query.get("limit") {
        None => 20,
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|l| (1..=MAX_READERS_PAGE).contains(l))
            .ok_or_else(|| {
                ApiError::invalid(format!("limit must be 1 to {MAX_READERS_PAGE}, not {l:?}"))
            })?,
    };
    let after = query
        .get("after")
        .map(|a| {
            After::parse(a).ok_or_else(|| {
                ApiError::invalid(format!("after {a:?} is not a cursor this API gave"))
            })
        })
        .transpose()?;
    let found = match &hub.cluster {
        Some(_) => {
            let backend = backend(&hub).ok_or_else(ApiError::unavailable)?;
            let marks = backend
                .receipts(&room)
                .await
                .map_err(|_| ApiError::unavailable())?;
            readers(
                marks.iter().filter(|(u, _)| seen(u)).map(|(u, m)| (u, *m)),
                at,
                after.as_ref(),
                limit,
            )
        }
        None => hub.read(|m| {
            let reads = m.reads_in(&room).filter(|(u, _)| seen(u));
            readers(reads, at, after.as_ref(), limit)
        }),
    };
    let mut body = json!({ "room": room, "at": at, "count": found.count, "users": found.users });
    if let Some(next) = found.next {
        body["next"] = json!(next);
    }
    Ok(Json(body))
}

async fn members_of(hub: &Hub, caller: Caller, room: String) -> Result<RoomMembers, ApiError> {
    let (caller, room) = readable_room(hub, caller, room).await?;
    let viewer = match &caller {
        Caller::Service => None,
        Caller::User(who) => Some(who),
    };
    let found = match backend(hub) {
        Some(backend) => cluster_members(hub, backend, &room, viewer).await,
        None => None,
    };
    let mut found = match found {
        Some(found) => found,
        None => {
            let mut found = hub.read(|m| RoomMembers {
                members: m.members(&room),
                receipts: m.receipts_in(&room),
                next: None,
                room,
            });
            if let Some(who) = viewer {
                found.members = hub.as_seen_by(who, found.members);
            }
            found
        }
    };
    if let Some(who) = viewer {
        found.receipts = hub.receipts_seen_by(who, found.receipts, |r| &r.user);
    }
    Ok(found)
}

/// A room's visible members and their markers, cluster-wide; `None` if the
/// backend could not answer.
async fn cluster_members(
    hub: &Hub,
    backend: &dyn Backend,
    room: &RoomId,
    viewer: Option<&Identity>,
) -> Option<RoomMembers> {
    let mut users: Vec<UserId> = backend
        .members(room)
        .await
        .ok()?
        .into_iter()
        .map(|(u, _)| u)
        .collect();
    users.sort();
    users.dedup();
    let recs = backend.read(&users).await.ok()?;
    let marks = backend.receipts(room).await.ok()?;
    let members = hub.cluster_views(&users, &recs, Some(room), viewer);
    let shown: std::collections::HashSet<&UserId> = members.iter().map(|m| &m.user).collect();
    // As in a snapshot: every shown member's marker, and the most advanced
    // of readers who are not shown.
    let (mut receipts, mut others): (Vec<_>, Vec<_>) = marks
        .into_iter()
        .map(|(user, marker)| presence_core::protocol::Receipt { user, marker })
        .partition(|r| shown.contains(&r.user));
    presence_core::receipts::most_advanced(&mut others, presence_core::limits::RECEIPTS_KEPT);
    receipts.extend(others);
    receipts.sort_by(|a, b| a.user.cmp(&b.user));
    Some(RoomMembers {
        room: room.clone(),
        members,
        receipts,
        next: None,
    })
}

/// A read marker in the query (`name=N`), if given: 0 to `MAX_READ_MARKER`.
fn marker_param(query: &HashMap<String, String>, name: &str) -> Result<Option<u64>, ApiError> {
    use presence_core::limits::MAX_READ_MARKER;
    let Some(m) = query.get(name) else {
        return Ok(None);
    };
    m.parse::<u64>()
        .ok()
        .filter(|m| *m <= MAX_READ_MARKER)
        .map(Some)
        .ok_or_else(|| {
            ApiError::invalid(format!(
                "{name} must be an integer from 0 to {MAX_READ_MARKER}, not {m:?}"
            ))
        })
}

/// A JSON request body, or the error that says what was expected.
fn json_body<T: serde::de::DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
    expected: &str,
) -> Result<T, ApiError> {
    let body = body.map_err(|e| {
        ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("request body refused: {e}"),
        )
    })?;
    serde_json::from_slice(&body).map_err(|e| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "malformed",
            format!("expected {expected}: {e}"),
        )
    })
}

/// Server actions are for the app's backend only.
#[derive(Serialize)]
pub(crate) struct RoomCounts {
    room: RoomId,
    counts: Counts,
}

/// `GET /v1/rooms/{room}/count`: how many visible members are online,
/// active and idle, without the list; readable by whoever may read the
/// members.
pub(crate) async fn room_counts(
    State(hub): State<Arc<Hub>>,
    caller: Caller,
    Path(room): Path<String>,
) -> Result<Json<RoomCounts>, ApiError> {
    let RoomMembers { room, members, .. } = members_of(&hub, caller, room).await?;
    let counts = Counts::of(members.iter().map(|m| m.state));
    Ok(Json(RoomCounts { room, counts }))
}

#[derive(Deserialize)]
struct MessageSent {
    user: String,
}

/// `POST /v1/rooms/{room}/messages/sent` `{"user":...}` (service key): the
/// app stored a message from `user`; their typing in the room stops now.
pub(crate) async fn message_sent(
    State(hub): State<Arc<Hub>>,
    _: Service,
    Path(room): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<StatusCode, ApiError> {
    let room = RoomId::new(room).map_err(|e| ApiError::invalid(e.to_string()))?;
    let req: MessageSent = json_body(body, r#"{"user":"..."}"#)?;
    let user = UserId::new(req.user).map_err(|e| ApiError::invalid(e.to_string()))?;
    hub.message_sent_everywhere(&user, &room)
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "cluster_unavailable",
                format!("typing stopped on this node, the other nodes may not know: {e}; retry"),
            )
        })?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/users/{id}/privacy` (service key, or the user's own token):
/// the user's privacy settings, cluster-wide.
pub(crate) async fn user_privacy(
    State(hub): State<Arc<Hub>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let user = UserId::new(id).map_err(|e| ApiError::invalid(e.to_string()))?;
    if let Caller::User(who) = &caller
        && who.user != user
    {
        return Err(ApiError::forbidden("another user's settings"));
    }
    let p = hub.privacy_anywhere(&user).await;
    Ok(Json(privacy_body(&user, p)))
}

/// `PUT /v1/users/{id}/privacy` (service key) with `{"last_seen"?, "receipts"?}`:
/// changes what is given, keeps the rest, answers the settings now.
pub(crate) async fn set_user_privacy(
    State(hub): State<Arc<Hub>>,
    _: Service,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let user = UserId::new(id).map_err(|e| ApiError::invalid(e.to_string()))?;
    let body: serde_json::Map<String, serde_json::Value> = json_body(
        body,
        r#"{"last_seen":"everyone|contacts|nobody","receipts":"on|off"}"#,
    )?;
    let (mut last_seen, mut receipts) = (None, None);
    for (key, value) in &body {
        let v = value.as_str().unwrap_or_default();
        match key.as_str() {
            "last_seen" => {
                last_seen = Some(presence_core::LastSeen::parse(v).ok_or_else(|| {
                    ApiError::invalid(format!(
                        "last_seen must be everyone, contacts or nobody, not {value}"
                    ))
                })?);
            }
            "receipts" => {
                receipts = Some(Receipts::parse(v).ok_or_else(|| {
                    ApiError::invalid(format!("receipts must be on or off, not {value}"))
                })?);
            }
            other => {
                return Err(ApiError::invalid(format!(
                    "unknown setting {other:?}: last_seen and receipts exist"
                )));
            }
        }
    }
    let p = hub.set_privacy(&user, last_seen, receipts).await;
    Ok(Json(privacy_body(&user, p)))
}

fn privacy_body(user: &UserId, p: presence_core::Privacy) -> serde_json::Value {
    json!({ "user": user, "last_seen": p.last_seen, "receipts": p.receipts })
}

#[derive(Deserialize, Default)]
struct Disconnect {
    code: Option<u16>,
    revoke: Option<bool>,
}

/// `POST /v1/users/{id}/disconnect` `{"code":4101,"revoke":false}` (service
/// key): closes every socket of the user, on every node, with `code` — 4101
/// (the default: revoked, get a new token), 1008 (abuse), 1001 or 1000 —
/// and answers how many this node closed. Their connections then go offline
/// after the grace, as after a drop. With `revoke`, the user's tokens issued
/// (`iat`) before now are refused everywhere from now on.
pub(crate) async fn disconnect_user(
    State(hub): State<Arc<Hub>>,
    _: Service,
    Path(id): Path<String>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let user = UserId::new(id).map_err(|e| ApiError::invalid(e.to_string()))?;
    let empty = matches!(&body, Ok(b) if b.is_empty());
    let req: Disconnect = if empty {
        Disconnect::default()
    } else {
        json_body(body, r#"{"code":4101}"#)?
    };
    let code = req.code.unwrap_or(4101);
    let close = crate::hub::close_for(code)
        .ok_or_else(|| ApiError::invalid(format!("code {code}: use 4101, 1008, 1001 or 1000")))?;
    let revoke = req.revoke.unwrap_or(false);
    let closed = hub
        .disconnect_everywhere(&user, close, revoke)
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "cluster_unavailable",
                format!("this node's sockets were closed, the other nodes' may not be: {e}; retry"),
            )
        })?;
    Ok(Json(
        json!({ "user": user, "closed": closed, "revoked": revoke }),
    ))
}

/// `GET /v1/users/{id}/devices` (service key): the user's live connections
/// on every node. Other users never see these.
pub(crate) async fn user_devices(
    State(hub): State<Arc<Hub>>,
    _: Service,
    Path(id): Path<String>,
) -> Result<Json<crate::Devices>, ApiError> {
    let user = UserId::new(id).map_err(|e| ApiError::invalid(e.to_string()))?;
    Ok(Json(hub.devices(&user, None).await))
}

/// `GET /v1/users/{id}/notify?room=R[&mention=true][&marker=N]` (service
/// key): live, push or none for a message in R, and why. An unknown user is
/// a `push` for `offline`, not a 404: an app always gets a decision.
pub(crate) async fn user_notify(
    State(hub): State<Arc<Hub>>,
    _: Service,
    Query(query): Query<HashMap<String, String>>,
    Path(id): Path<String>,
) -> Result<Json<crate::Notification>, ApiError> {
    let user = UserId::new(id).map_err(|e| ApiError::invalid(e.to_string()))?;
    let room = query
        .get("room")
        .ok_or_else(|| ApiError::invalid("room is required: ?room=<room id>"))?;
    let room = RoomId::new(room.as_str()).map_err(|e| ApiError::invalid(format!("room: {e}")))?;
    let mention = match query.get("mention").map(String::as_str) {
        None | Some("false") => false,
        Some("true") => true,
        Some(other) => {
            return Err(ApiError::invalid(format!(
                "mention must be true or false, not {other:?}"
            )));
        }
    };
    let marker = marker_param(&query, "marker")?;
    Ok(Json(hub.notify(&user, &room, mention, marker).await))
}

/// `GET /v1/events` (service key): every host event as Server-Sent Events;
/// `Last-Event-ID` (or `?last_event_id=`) resumes after that id.
pub(crate) async fn events_feed(
    State(hub): State<Arc<Hub>>,
    _: Service,
    headers: HeaderMap,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let last = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .or(query.get("last_event_id").map(String::as_str));
    if let (Some(stream), Some(link)) = (hub.stream.as_ref().filter(|s| s.appends()), &hub.cluster)
    {
        let from = last
            .map(|s| stream.cursor(s))
            .transpose()
            .map_err(|e| match e {
                crate::stream::CursorError::Malformed(_) => {
                    ApiError::new(StatusCode::BAD_REQUEST, "bad_last_event_id", e.to_string())
                }
                crate::stream::CursorError::Foreign(_) => ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "foreign_last_event_id",
                    e.to_string(),
                ),
            })?;
        let Some(slot) = stream.admit() else {
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too_many_readers",
                format!(
                    "this node serves {} event stream readers at most; try another node",
                    crate::stream::MAX_READERS
                ),
            ));
        };
        let from = match from {
            Some(c) => c,
            None => stream.end(&*link.backend).await.map_err(|e| {
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "stream_unavailable",
                    format!("the event stream cannot be read now: {e}"),
                )
            })?,
        };
        return Ok(crate::stream::serve(
            stream.clone(),
            slot,
            link.backend.clone(),
            from,
            hub.shutdown_signal(),
        )
        .into_response());
    }
    let Some(feed) = &hub.feed else {
        return Err(ApiError::unauthorized());
    };
    // The same code a cluster node gives for a position it cannot read.
    let last = last
        .map(|s| {
            s.trim().parse::<u64>().map_err(|_| {
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_last_event_id",
                    format!("Last-Event-ID {s:?} is not an event id of this node's feed"),
                )
            })
        })
        .transpose()?;
    Ok(crate::feed::stream(feed.resume(last), hub.shutdown_signal()).into_response())
}

/// `GET /healthz`: 200 while serving, 503 while shutting down. With Redis,
/// the body also says `"redis": "up"` or `"down"`: a node cut from Redis is
/// degraded (it serves only its own users) but still healthy, so the load
/// balancer keeps it.
pub(crate) async fn healthz(State(hub): State<Arc<Hub>>) -> Response {
    let status = if hub.is_shutting_down() {
        "shutting_down"
    } else {
        "ok"
    };
    let mut body = json!({ "status": status });
    if let Some(up) = hub.cluster_up() {
        body["redis"] = json!(if up { "up" } else { "down" });
    }
    if hub.is_shutting_down() {
        (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response()
    } else {
        Json(body).into_response()
    }
}

/// `GET /readyz`: 200 while this node should get clients; 503 while it
/// shuts down, before it first registers with the cluster backend (a node
/// started while Redis is down), or while it has been cut from it for longer
/// than the lease (the other nodes then show its users offline, so a load
/// balancer should move them). `/healthz` stays 200 then: the process is
/// fine and serves what it knows.
pub(crate) async fn readyz(State(hub): State<Arc<Hub>>) -> Response {
    let reason = if hub.is_shutting_down() {
        Some("shutting_down")
    } else if hub.cluster_joining() {
        Some("joining_cluster")
    } else if hub.cluster_cut_off() {
        Some("cut_off_from_backend")
    } else {
        None
    };
    match reason {
        None => Json(json!({ "status": "ready" })).into_response(),
        Some(r) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "not_ready", "reason": r })),
        )
            .into_response(),
    }
}

/// `GET /metrics`: Prometheus / OpenMetrics text.
pub(crate) async fn metrics(State(hub): State<Arc<Hub>>) -> Response {
    hub.update_gauges();
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        hub.metrics.render(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_by_content_and_length() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"abc", b"abcd"));
    }

    #[test]
    fn bearer_needs_the_scheme() {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, "Bearer tok".parse().expect("header"));
        assert_eq!(bearer(&h), Some("tok"));
        h.insert(header::AUTHORIZATION, "bearer tok".parse().expect("header"));
        assert_eq!(bearer(&h), Some("tok"), "scheme names are case-insensitive");
        h.insert(header::AUTHORIZATION, "Basic tok".parse().expect("header"));
        assert_eq!(bearer(&h), None);
        h.insert(header::AUTHORIZATION, "Bearer ".parse().expect("header"));
        assert_eq!(bearer(&h), None);
    }
}
