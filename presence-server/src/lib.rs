#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

// Layout, socket to core and back:
//
//   server.rs    builder, handle, router, WebSocket upgrade (auth; refused → 4101), shutdown, driver task
//   session/     one task per socket (mod): hello, dispatch (frames → hub), limits (rate),
//                errors (error frames), close, writer (fragments big frames)
//   broadcast.rs per-audience batches: coalesce, encode once, fan out
//   backend/     the seam to what nodes share (store + bus): in-process and Redis
//   cluster.rs   the cluster tasks: rounds, bus, lease, cleaning (drive a Backend for the hub)
//   hub/         the shared state, by concern: sockets and inputs (mod), fanout, watching,
//                durable, replica (what the node follows of the cluster), cluster (routing it)
//   node.rs      who a node is in a cluster: id, lease, incarnation
//   data_dir.rs  single node: user state (and, across a restart, connections) on disk
//   http.rs      JSON API, /healthz, /readyz, /metrics
//   feed.rs      single node: numbered host events in a replay window, served as SSE
//   stream.rs    cluster: host events into the backend's stream, and SSE readers of all of it
//   webhook.rs   host events POSTed to endpoints: batched, signed, retried, bounded
//   auth.rs, audience.rs, clock.rs, config.rs, events.rs, metrics.rs: one job each

mod audience;
mod auth;
pub mod backend;
mod backoff;
mod broadcast;
mod clock;
mod cluster_config;
mod cluster_tasks;
mod config;
mod data_dir;
mod events;
mod feed;
mod http;
mod hub;
mod local;
mod metrics;
mod ranked;
mod server;
mod session;
mod signal;
mod stream;
mod upgrade;
mod webhook;

pub use audience::{AudiencePolicy, OpenAudience, SyncAudience};
pub use auth::{
    AuthError, AuthRequest, Authenticator, DefaultAudience, DevAuth, Identity, JwtAuth,
    JwtKeyError, MAX_SCOPE_ENTRIES, Scope, TokenAuthenticator,
};
pub use backend::{Backend, MemoryCluster, RedisBackend, RedisConfig, RedisSetupError};
pub use clock::{Clock, ManualClock, SystemClock};
pub use cluster_config::{ClusterConfig, ClusterConfigError};
pub use config::{ConfigError, RateLimit, ServerConfig, SocketBuffers};
pub use data_dir::{DataDir, DataDirError};
pub use events::Events;
pub use futures_util::future::BoxFuture;
pub use hub::{Devices, NodeDevice, Notification};
pub use jsonwebtoken::Algorithm as JwtAlgorithm;
pub use local::{LOCAL_INBOUND, LocalClosed, LocalSocket};
pub use presence_core;
pub use ranked::{MAX_RANKED_PAGE, MAX_RANKED_USERS, Order, RankError, Ranked, StateCounts};
pub use server::{BuildError, Builder, PresenceServer};
pub use signal::shutdown_signal;
pub use webhook::{WebhookConfig, WebhookError, sign as webhook_signature};
