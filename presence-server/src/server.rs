//! The builder, the server handle, the router and graceful shutdown.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Weak};
use std::time::Duration;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Query, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use futures_util::StreamExt;
use presence_core::protocol::CloseCode;
use presence_core::{LastSeen, PresenceView, Privacy, Receipts, RoomId, UserId};
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};

use crate::audience::{AudiencePolicy, OpenAudience};
use crate::auth::{AuthRequest, Authenticator, Identity};
use crate::backend::Backend;
use crate::clock::{Clock, SystemClock};
use crate::cluster_config::{ClusterConfig, ClusterConfigError};
use crate::config::{ConfigError, ServerConfig};
use crate::data_dir::{DataDir, DataDirError};
use crate::events::Events;
use crate::http::{self, ApiError};
use crate::hub::{Devices, Hub, Kept, Notification};
use crate::local::LocalSocket;
use crate::session;
use crate::upgrade::Upgrade;
use crate::webhook::{WebhookConfig, WebhookError};

/// Why a server could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The configuration cannot work.
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    /// No authenticator was given: tokens could not be checked.
    #[error("no authenticator: call .auth(JwtAuth::hs256(secret)) (or DevAuth for development)")]
    NoAuthenticator,
    /// `build` ran outside a Tokio runtime, where the driver cannot start.
    #[error("build() must be called inside a Tokio runtime")]
    NoRuntime,
    /// The data directory could not be read.
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    /// Both a data directory and a cluster backend were given: in a
    /// cluster, user state lives in the backend, shared by every node.
    #[error(
        "give a data directory or a cluster backend, not both: in a cluster the user state lives in the backend"
    )]
    DataDirWithRedis,
    /// The cluster configuration cannot work.
    #[error("invalid cluster configuration: {0}")]
    Cluster(#[from] ClusterConfigError),
    /// The webhook configuration cannot work.
    #[error("invalid webhook configuration: {0}")]
    Webhook(#[from] WebhookError),
}

/// Builds a [`PresenceServer`]. Only an authenticator is required.
#[must_use]
pub struct Builder {
    config: ServerConfig,
    auth: Option<Arc<dyn Authenticator>>,
    audience: Arc<dyn AudiencePolicy>,
    clock: Arc<dyn Clock>,
    cluster: Option<(Arc<dyn Backend>, ClusterConfig)>,
    webhooks: Option<WebhookConfig>,
    data: Option<DataDir>,
    large_rooms: Vec<(RoomId, usize)>,
}

impl Builder {
    /// Replaces the configuration (default: [`ServerConfig::default`]).
    pub fn config(mut self, config: ServerConfig) -> Self {
        self.config = config;
        self
    }

    /// Sets how tokens are verified (required).
    pub fn auth(mut self, auth: impl Authenticator) -> Self {
        self.auth = Some(Arc::new(auth));
        self
    }

    /// Sets who may join which room and watch whom (default: [`OpenAudience`]).
    pub fn audience(mut self, audience: impl AudiencePolicy) -> Self {
        self.audience = Arc::new(audience);
        self
    }

    /// Sets the clock (default: [`SystemClock`]).
    pub fn clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Runs this server as one node of several sharing `backend` (a
    /// [`RedisBackend`](crate::backend::RedisBackend), or a
    /// [`MemoryCluster`](crate::backend::MemoryCluster) node in tests):
    /// observers see cluster-level presence, and snapshots and the HTTP API
    /// answer for the whole cluster (see the crate docs, "Several nodes").
    pub fn cluster(mut self, backend: Arc<dyn Backend>, config: ClusterConfig) -> Self {
        self.cluster = Some((backend, config));
        self
    }

    /// Delivers host events to webhook endpoints, signed and batched (see
    /// [`WebhookConfig`]).
    pub fn webhooks(mut self, webhooks: WebhookConfig) -> Self {
        self.webhooks = Some(webhooks);
        self
    }

    /// Keeps user state (status, text, last seen, read markers) in `data`,
    /// so a restart, even a `kill -9`, forgets at most the last batch window
    /// of changes; after a graceful shutdown, connections resume too. Without
    /// it (and without Redis) that state lives in memory.
    pub fn data_dir(mut self, data: DataDir) -> Self {
        self.data = Some(data);
        self
    }

    /// Makes `room` large at `members` online members instead of at
    /// [`ServerConfig::large_room_members`] (`usize::MAX`: never large);
    /// e.g. an announcements channel that should never list its audience.
    /// [`PresenceServer::set_large_room`] changes it later.
    pub fn large_room(mut self, room: RoomId, members: usize) -> Self {
        self.large_rooms.push((room, members));
        self
    }

    /// Validates the configuration and starts the driver task (and, with
    /// [`cluster`](Self::cluster), the cluster tasks).
    pub fn build(self) -> Result<PresenceServer, BuildError> {
        self.config.validate()?;
        if let Some(w) = &self.webhooks {
            w.validate()?;
            w.check_viewing(self.config.viewing_events)?;
        }
        let auth = self.auth.ok_or(BuildError::NoAuthenticator)?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| BuildError::NoRuntime)?;
        let clustered = self.cluster.is_some();
        let kept = match (self.data.clone(), self.cluster) {
            (Some(_), Some(_)) => return Err(BuildError::DataDirWithRedis),
            (Some(data), None) => Kept::OnDisk(data),
            (None, Some((backend, config))) => {
                config.validate()?;
                Kept::Shared(crate::hub::BackendLink {
                    backend,
                    config,
                    wake: Arc::new(Notify::new()),
                    ready: tokio::sync::watch::channel(false).0,
                })
            }
            (None, None) => Kept::InMemory,
        };
        let loaded = self.data.as_ref().map(DataDir::load).transpose()?;
        let wake = Arc::new(Notify::new());
        let hub = Arc::new(Hub::new(
            self.config,
            self.clock,
            auth,
            self.audience,
            wake.clone(),
            kept,
        ));
        for (room, members) in self.large_rooms {
            hub.set_large_room(room, Some(members));
        }
        if let Some(mut loaded) = loaded {
            let events = std::mem::take(&mut loaded.events);
            if let Some(feed) = &hub.feed {
                tracing::info!(
                    events = events.len(),
                    "event feed: kept in the data directory; replaying what it held"
                );
                feed.restore(events);
            }
            if loaded.skipped > 0 {
                tracing::warn!(
                    rows = loaded.skipped,
                    "data directory: rows that did not decode were skipped"
                );
            }
            tracing::info!(
                users = loaded.users.len(),
                connections = loaded.conns.len(),
                "data directory: state restored"
            );
            hub.restore(loaded);
        }
        if hub.feed.is_some() && self.data.is_none() {
            tracing::info!(
                "event feed: kept in memory only, a restart loses it (give a data directory, or run a cluster, to keep it)"
            );
        }
        runtime.spawn(drive(Arc::downgrade(&hub), wake, hub.shutdown_signal()));
        if let Some(data) = self.data {
            runtime.spawn(persist(Arc::downgrade(&hub), data, hub.shutdown_signal()));
        }
        let _guard = runtime.enter();
        if clustered {
            crate::cluster_tasks::spawn(&hub);
        }
        if let Some(w) = self.webhooks {
            crate::webhook::spawn(&hub, w);
        }
        Ok(PresenceServer { hub })
    }
}

/// Ticks the machine at its deadlines and flushes batches at the end of
/// their window. Holds only a weak reference, so it ends with the server.
async fn drive(hub: Weak<Hub>, wake: Arc<Notify>, mut shutdown: watch::Receiver<bool>) {
    loop {
        let Some(wait) = hub.upgrade().map(|h| h.plan()) else {
            return;
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = wake.notified() => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        let Some(hub) = hub.upgrade() else {
            return;
        };
        hub.tick();
    }
}

/// Writes changed user state to the data directory once per batch window
/// (at least every 10 ms, at most every 25 ms when batching is off), off the
/// hub's lock and on a blocking thread.
async fn persist(hub: Weak<Hub>, data: DataDir, mut shutdown: watch::Receiver<bool>) {
    let every = match hub.upgrade().map(|h| h.config.batch_window) {
        Some(w) if w.is_zero() => Duration::from_millis(25),
        Some(w) => w.max(Duration::from_millis(10)),
        None => return,
    };
    loop {
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        let Some(hub) = hub.upgrade() else {
            return;
        };
        write_durable(&hub, &data).await;
    }
}

async fn write_durable(hub: &Hub, data: &DataDir) {
    let users = hub.take_durable();
    let events = hub
        .feed
        .as_ref()
        .map(|f| f.take_unsaved())
        .unwrap_or_default();
    if users.is_empty() && events.is_empty() {
        return;
    }
    let keep = hub.feed.as_ref().map_or(0, |f| f.capacity());
    let ids: Vec<UserId> = users.iter().map(|(u, _)| u.clone()).collect();
    let data = data.clone();
    let entries = events.clone();
    let done = tokio::task::spawn_blocking(move || {
        let rows: Vec<(u64, &str, &str)> = entries
            .iter()
            .map(|e| (e.id, e.kind.as_str(), e.json.as_str()))
            .collect();
        data.write_users(&users, &rows, keep)
    })
    .await;
    let failed = match done {
        Ok(Ok(())) => return,
        Ok(Err(e)) => e.to_string(),
        Err(e) => e.to_string(),
    };
    tracing::error!(error = %failed, "data directory write failed; retrying with the next");
    hub.retry_durable(ids);
    if let Some(feed) = &hub.feed {
        feed.retry_unsaved(events);
    }
}

/// A running presence server: merge its [`router`](Self::router) into an
/// axum app, or [`serve`](Self::serve) it on a listener. Cheap to clone.
#[derive(Clone)]
pub struct PresenceServer {
    hub: Arc<Hub>,
}

impl std::fmt::Debug for PresenceServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PresenceServer").finish_non_exhaustive()
    }
}

impl PresenceServer {
    /// Starts building a server.
    pub fn builder() -> Builder {
        Builder {
            config: ServerConfig::default(),
            auth: None,
            audience: Arc::new(OpenAudience),
            clock: Arc::new(SystemClock::new()),
            cluster: None,
            webhooks: None,
            data: None,
            large_rooms: Vec::new(),
        }
    }

    /// Connects `who` in-process, served by the same session as a WebSocket:
    /// send `hello` first, then the protocol's frames, as text. No socket and
    /// no token (the host vouches for the identity); a revoked user or a
    /// server shutting down gets `None`. The session runs as a task until
    /// the [`LocalSocket`] is dropped or the server closes it.
    pub async fn connect(&self, who: Identity) -> Option<LocalSocket> {
        if self.hub.is_shutting_down() || self.hub.is_revoked(&who).await {
            return None;
        }
        let (socket, session) = crate::local::session(self.hub.clone(), who);
        tokio::spawn(session);
        Some(socket)
    }

    /// The app-facing routes: the WebSocket endpoint (`/ws` by default) and
    /// the `/v1/...` API. Merge it into your app; mount
    /// [`ops_router`](Self::ops_router) where (and if) you want health and
    /// metrics, so an app with its own `/healthz` does not collide. Serve it
    /// with `axum::serve` or another hyper server with upgrades enabled;
    /// without them the WebSocket endpoint answers 500.
    pub fn router(&self) -> Router {
        Router::new()
            .route(&self.hub.config.ws_path, get(upgrade))
            .route("/v1/users/{id}/presence", get(http::user_presence))
            .route("/v1/users/{id}/disconnect", post(http::disconnect_user))
            .route("/v1/users/{id}/devices", get(http::user_devices))
            .route("/v1/users/{id}/notify", get(http::user_notify))
            .route(
                "/v1/users/{id}/privacy",
                get(http::user_privacy).put(http::set_user_privacy),
            )
            // A ranked query names up to 10,000 ids of up to 128 bytes.
            .route(
                "/v1/presence/bulk",
                post(http::bulk_presence)
                    .layer(DefaultBodyLimit::max(crate::ranked::MAX_BODY_BYTES)),
            )
            .route("/v1/rooms/{room}/members", get(http::room_members))
            .route("/v1/rooms/{room}/count", get(http::room_counts))
            .route("/v1/rooms/{room}/receipts", get(http::room_receipts))
            .route("/v1/rooms/{room}/messages/sent", post(http::message_sent))
            .route("/v1/events", get(http::events_feed))
            .layer(DefaultBodyLimit::max(self.hub.config.max_body_bytes))
            .with_state(self.hub.clone())
    }

    /// `/healthz`, `/readyz` and `/metrics`, for the operator: e.g.
    /// `app.nest("/presence", server.ops_router())`. [`serve`](Self::serve)
    /// mounts both routers at the root.
    pub fn ops_router(&self) -> Router {
        Router::new()
            .route("/healthz", get(http::healthz))
            .route("/readyz", get(http::readyz))
            .route("/metrics", get(http::metrics))
            .with_state(self.hub.clone())
    }

    /// Subscribes to every presence event from now on.
    ///
    /// ```no_run
    /// # async fn demo(server: presence_server::PresenceServer) {
    /// // Send a push notification only if the recipient is active nowhere:
    /// // keep the set of users with an active connection from the events...
    /// use std::collections::HashSet;
    /// use std::sync::{Arc, Mutex};
    /// use presence_server::presence_core::{PresenceState, UserId, protocol::Diff};
    ///
    /// let active: Arc<Mutex<HashSet<UserId>>> = Arc::default();
    /// let mut events = server.events();
    /// let seen = active.clone();
    /// tokio::spawn(async move {
    ///     while let Some(event) = events.recv().await {
    ///         if !event.global {
    ///             continue; // a room entered or left, not the user's presence
    ///         }
    ///         let Ok(mut set) = seen.lock() else { return };
    ///         match event.diff {
    ///             Diff::UserActive { user } => { set.insert(user); }
    ///             Diff::UserConnected { presence } if presence.state == PresenceState::Active => {
    ///                 set.insert(presence.user);
    ///             }
    ///             Diff::UserIdle { user, .. } | Diff::UserDisconnected { user, .. } => {
    ///                 set.remove(&user);
    ///             }
    ///             _ => {}
    ///         }
    ///     }
    /// });
    ///
    /// // ...and when the app stores a message for `bob`:
    /// let bob = UserId::new("bob").expect("valid id");
    /// let active_somewhere = active.lock().map(|s| s.contains(&bob)).unwrap_or(false);
    /// if !active_somewhere {
    ///     // send_push(&bob, "ana: lunch?").await;
    /// }
    /// // (`server.is_active_anywhere(&bob)` asks the machine directly, and
    /// // also sees through an invisible status.)
    /// # }
    /// ```
    pub fn events(&self) -> Events {
        Events::new(self.hub.subscribe())
    }

    /// The host app stored a message from `user` in `room`: their typing
    /// indicator there stops now instead of at its expiry, on this node at
    /// once and (with a cluster) on every node within a bus round trip; an
    /// error says the other nodes may not have heard.
    pub async fn message_sent(
        &self,
        user: &UserId,
        room: &RoomId,
    ) -> Result<(), crate::backend::BackendError> {
        self.hub.message_sent_everywhere(user, room).await
    }

    /// Closes `user`'s sockets on every node with 4101 (get a new token);
    /// with `revoke`, their tokens issued (`iat`) before now are refused
    /// everywhere from now on (for 30 days). Returns how many sockets this
    /// node closed; an error says the other nodes may not have heard.
    pub async fn disconnect(
        &self,
        user: &UserId,
        revoke: bool,
    ) -> Result<usize, crate::backend::BackendError> {
        let close = crate::hub::close_for(4101).unwrap_or((
            presence_core::protocol::CloseCode::Unauthorized,
            "disconnected by the server",
        ));
        self.hub.disconnect_everywhere(user, close, revoke).await
    }

    /// A user's presence as others see it (`None` if never seen). With a
    /// cluster it is read from the backend, so every node answers the same:
    /// each node's part as of its last round (one batch window); if the
    /// backend cannot be reached, this node's own view.
    pub async fn presence(&self, user: &UserId) -> Option<PresenceView> {
        if let Some(recs) = self.hub.cluster_records(user).await {
            return self
                .hub
                .cluster_views(std::slice::from_ref(user), &[recs], None, None)
                .pop()
                .filter(|v| {
                    v.state != presence_core::PresenceState::Offline || v.last_seen.is_some()
                });
        }
        self.hub.read(|m| m.view(user))
    }

    /// Sets `room`'s large-room threshold (`None`: back to
    /// [`ServerConfig::large_room_members`]); it applies from the room's
    /// next change. See [`Builder::large_room`].
    pub fn set_large_room(&self, room: RoomId, members: Option<usize>) {
        self.hub.set_large_room(room, members);
    }

    /// One page of `users` ranked by `order` (`limit` of them, 1 to 1,000,
    /// after the cursor `after` of the previous page), with counts by state:
    /// `POST /v1/presence/bulk` with an `order`, for a backend (it sees
    /// everyone). Cluster-wide. Each user comes once over the pages, ranked
    /// as they are when their page is asked for.
    pub async fn ranked(
        &self,
        users: Vec<UserId>,
        order: crate::Order,
        limit: usize,
        after: Option<&str>,
    ) -> Result<crate::Ranked, crate::RankError> {
        use crate::ranked::{MAX_RANKED_PAGE, MAX_RANKED_USERS, RankError};
        if users.len() > MAX_RANKED_USERS {
            return Err(RankError::TooMany);
        }
        if !(1..=MAX_RANKED_PAGE).contains(&limit) {
            return Err(RankError::BadLimit);
        }
        http::ranked(
            &self.hub,
            &http::Caller::Service,
            users,
            order,
            limit,
            after,
        )
        .await
        .map_err(|_| RankError::BadCursor)
    }

    /// The user's live connections on every node: device kind, activity, the
    /// room in view, time since the last input (PROTOCOL.md, "Devices and
    /// notifications"). With a cluster, one bus round trip (at most 300 ms;
    /// `complete` says whether every node answered).
    pub async fn devices(&self, user: &UserId) -> Devices {
        self.hub.devices(user, None).await
    }

    /// Whether a message in `room` should reach `user` live, by a push, or
    /// not at all, and why: the rule in PROTOCOL.md, "Devices and
    /// notifications", over every node's devices. `mention`: the message
    /// names them (it reaches a busy user); `marker`: its sequence number
    /// (a user who read that far gets nothing).
    pub async fn notify(
        &self,
        user: &UserId,
        room: &RoomId,
        mention: bool,
        marker: Option<u64>,
    ) -> Notification {
        self.hub.notify(user, room, mention, marker).await
    }

    /// A user's privacy settings (PROTOCOL.md, "Privacy"); with a cluster,
    /// the latest any node set, read from the backend.
    pub async fn privacy(&self, user: &UserId) -> Privacy {
        self.hub.privacy_anywhere(user).await
    }

    /// Changes a user's privacy settings for their backend (`None`: kept),
    /// connected or not; their own sockets are told. Returns the settings.
    pub async fn set_privacy(
        &self,
        user: &UserId,
        last_seen: Option<LastSeen>,
        receipts: Option<Receipts>,
    ) -> Privacy {
        self.hub.set_privacy(user, last_seen, receipts).await
    }

    /// Whether any live connection of the user is active, invisible or not;
    /// with a cluster, on any live node (read from the backend as
    /// [`presence`](Self::presence) is).
    pub async fn is_active_anywhere(&self, user: &UserId) -> bool {
        if let Some(recs) = self.hub.cluster_records(user).await {
            return self.hub.cluster_active(&recs);
        }
        self.hub.read(|m| m.active_anywhere(user))
    }

    /// Runs what is due at the clock's time now (deadlines, expired tokens,
    /// batches) instead of at the driver's next wake-up, which may be up to
    /// a second away: for tests that move a [`ManualClock`](crate::ManualClock).
    pub fn tick(&self) {
        self.hub.tick();
    }

    /// Whether this node reaches its cluster backend (`None` without one).
    /// While it does not, the node serves from what it knows.
    pub fn cluster_up(&self) -> Option<bool> {
        self.hub.cluster_up()
    }

    /// Stops talking to the cluster at once, without any cleanup, as if the
    /// process had died (`kill -9`): the lease is no longer renewed and the
    /// other nodes count this node's users offline when it lapses. For
    /// failure drills and tests; the node is useless afterwards.
    pub fn halt_cluster(&self) {
        let tasks = std::mem::take(
            &mut *self
                .hub
                .store_tasks
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        for t in tasks {
            t.abort();
        }
    }

    /// Stops appending to the cluster's event stream, as if the process died
    /// after each of its writes and before its append: its changes stay
    /// owed in the backend, for the node that cleans up after it to
    /// announce. For failure drills and tests, with [`halt_cluster`](Self::halt_cluster)
    /// after it.
    pub fn halt_appends(&self) {
        if let Some(stream) = &self.hub.stream {
            stream.halt();
        }
    }

    /// Serves the router on `listener` until `shutdown` resolves, then shuts
    /// down gracefully (see [`shutdown`](Self::shutdown)) and returns once
    /// the sockets are drained.
    pub async fn serve(
        &self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let this = self.clone();
        axum::serve(listener, self.router().merge(self.ops_router()))
            .with_graceful_shutdown(async move {
                shutdown.await;
                this.close_sockets();
            })
            .await?;
        self.shutdown().await;
        Ok(())
    }

    fn close_sockets(&self) {
        self.hub.begin_shutdown();
        self.hub
            .close_all((CloseCode::GoingAway, "server shutting down"));
    }

    /// Graceful shutdown for an embedded router: refuse new sockets, close
    /// every socket with 1001 (clients reconnect and resume elsewhere), and
    /// wait (at most 5 s) for their tasks to end.
    pub async fn shutdown(&self) {
        self.close_sockets();
        let hub = &self.hub;
        let _ = tokio::time::timeout(crate::config::DRAIN_TIMEOUT, async {
            loop {
                let done = hub.sessions_done.notified();
                tokio::pin!(done);
                done.as_mut().enable();
                if hub.live_sessions() == 0 {
                    return;
                }
                done.await;
            }
        })
        .await;
        if let Some(link) = &hub.cluster {
            // Kept for the grace plus the lease: a restart with the same
            // node id within it resumes these without a flap.
            let ttl = hub.config.timing.offline_grace + link.config.lease_ttl;
            let conns = hub.conn_records();
            match crate::cluster_tasks::save_resume(hub, &conns, ttl).await {
                Ok(()) => {
                    tracing::info!(connections = conns.len(), "saved in the backend for resume")
                }
                Err(e) => tracing::warn!(error = %e, "connections not saved for resume"),
            }
        }
        if let Some(data) = hub.data.clone() {
            write_durable(hub, &data).await;
            let conns = hub.conn_records();
            let count = conns.len();
            match tokio::task::spawn_blocking(move || data.save_conns(&conns)).await {
                Ok(Ok(())) => {
                    tracing::info!(connections = count, "data directory: saved for resume")
                }
                Ok(Err(e)) => tracing::error!(error = %e, "data directory: connections not saved"),
                Err(e) => tracing::error!(error = %e, "data directory: connections not saved"),
            }
        }
    }
}

/// The WebSocket upgrade: the token is checked before the session starts; a
/// refused one still gets a socket, told `unauthorized` and closed with 4101,
/// because a browser cannot read the status of a refused upgrade.
async fn upgrade(
    State(hub): State<Arc<Hub>>,
    Query(query): Query<HashMap<String, String>>,
    mut request: Request,
) -> Response {
    let ws = match Upgrade::check(&mut request) {
        Ok(ws) => ws,
        Err(refused) => return refused.into_response(),
    };
    if hub.is_shutting_down() {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    }
    let headers = request.headers();
    let token = query
        .get("token")
        .map(String::as_str)
        .or_else(|| http::bearer(headers));
    let auth = AuthRequest {
        token,
        headers,
        query: &query,
    };
    let buffers = hub.config.socket;
    let user = match hub.authenticate(&auth).await {
        Ok(Ok(user)) if hub.is_revoked(&user).await => {
            tracing::debug!(user = %user.user, "upgrade refused: the token was revoked");
            hub.metrics.unauthorized.inc();
            return ws.run(buffers, |socket| {
                let (sink, stream) = socket.split();
                session::refuse(sink, stream)
            });
        }
        Ok(Ok(user)) => user,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "upgrade refused");
            hub.metrics.unauthorized.inc();
            return ws.run(buffers, |socket| {
                let (sink, stream) = socket.split();
                session::refuse(sink, stream)
            });
        }
        Err(_) => return ApiError::unavailable().into_response(),
    };
    ws.run(buffers, move |socket| {
        let (sink, stream) = socket.split();
        session::run(hub, user, sink, stream)
    })
}
