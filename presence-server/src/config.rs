//! Server configuration: timing, batching, queues, rate limits and socket
//! buffers, each with a documented default and validated before use.

use std::time::Duration;

use presence_core::TimingPolicy;
use presence_core::limits::MAX_FRAME_BYTES;
use presence_core::machine::Retention;
use presence_core::policy::InvalidPolicy;

/// Everything the server can be tuned with. `ServerConfig::default()` suits a
/// chat app; [`ServerConfig::validate`] runs when the server is built.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Heartbeats, graces, idle and typing delays (see [`TimingPolicy`]).
    pub timing: TimingPolicy,
    /// Changes within this window are coalesced into one `diffs` frame per
    /// room (and per watched user). Zero sends every change at once. Default 25 ms.
    pub batch_window: Duration,
    /// Frames a connection may have queued for sending. A client that lets its
    /// queue overflow is closed with 4001 (slow consumer). Default 256.
    pub outbound_queue: usize,
    /// Per-connection token bucket for client frames.
    pub rate: RateLimit,
    /// WebSocket buffer sizes.
    pub socket: SocketBuffers,
    /// Time a new socket has to send its `hello`. Default 10 s.
    pub hello_timeout: Duration,
    /// Path of the WebSocket endpoint in the router. Default `/ws`.
    pub ws_path: String,
    /// A key that, as `Authorization: Bearer <key>`, lets a backend read every
    /// user's presence through the HTTP API. Default: none.
    pub service_key: Option<String>,
    /// Users one `POST /v1/presence/bulk` may ask for. Default 500.
    pub max_bulk_users: usize,
    /// Largest HTTP request body, in bytes. Default 64 KiB.
    pub max_body_bytes: usize,
    /// Buffered host-app events per subscriber before the slowest one skips. Default 4096.
    pub event_buffer: usize,
    /// Events the backend feed (`GET /v1/events`) keeps for `Last-Event-ID`
    /// resume, and how far a reader may fall behind before it is dropped.
    /// Default 10,000.
    pub event_replay: usize,
    /// Longest wait for an async [`Authenticator`](crate::Authenticator) or
    /// [`AudiencePolicy`](crate::AudiencePolicy) answer. Default 2 s.
    pub policy_timeout: Duration,
    /// How long offline users (status, text, last seen, read markers) are
    /// remembered, and how many at most. Default 30 days, 1,000,000 users.
    pub retention: Retention,
    /// Largest `data` object a client may set, compact, in bytes (1 to the
    /// 4 KiB frame limit). Default 1,024; bigger is `data_too_large`.
    pub max_data_bytes: usize,
    /// A room with at least this many online members is large: its members
    /// get counts, the first online members and a summary per interval
    /// instead of a diff per change, whose cost grows with the square of
    /// the room (PROTOCOL.md, "Large rooms"). Small again below 80 % of it.
    /// Per room: [`Builder::large_room`](crate::Builder::large_room).
    /// Default 1,000.
    pub large_room_members: usize,
    /// A large room's summaries go at most this often. Default 1 s.
    pub large_room_interval: Duration,
    /// No input on any of a user's devices for this long, and a message for
    /// them is a push (`notify`'s rule 7, PROTOCOL.md "Devices and
    /// notifications"). Default 2 min.
    pub notify_idle_after: Duration,
    /// Host events carry view changes (`viewing`: a connection's page now
    /// shows another room, or none) to [`events`](crate::PresenceServer::events),
    /// the feed, the cluster's stream and webhooks. Off by default: tab
    /// switches are frequent, and most hosts ask `notify` instead.
    pub viewing_events: bool,
}

/// A token bucket: `burst` frames at once, refilled at `per_second`.
///
/// Every client frame but `ping` costs one token. A frame without a token is
/// answered with `rate_limited`; a client that keeps sending at many times the
/// rate (its debt reaches `abuse_factor × burst`) is closed with 1008.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RateLimit {
    /// Frames allowed in a burst. Default 40.
    pub burst: u32,
    /// Sustained frames per second. Default 20.
    pub per_second: f64,
    /// How far over the limit counts as abuse. Default 10.
    pub abuse_factor: u32,
}

impl Default for RateLimit {
    fn default() -> Self {
        Self {
            burst: 40,
            per_second: 20.0,
            abuse_factor: 10,
        }
    }
}

/// WebSocket buffer sizes per connection.
///
/// tungstenite reserves 128 KiB of read buffer and 128 KiB of write buffer
/// per connection by default; with 50k sockets that is 12 GiB for frames that
/// are a few hundred bytes. Presence needs far less:
///
/// | field | default | why |
/// |---|---|---|
/// | `read_buffer` | 1 KiB | client frames are mostly under 100 bytes; the buffer grows for the rare big one (a heap profile showed the 4 KiB buffer as 36 % of a connection's memory) |
/// | `write_buffer` | 0 | every frame is written at once (the outbound queue already batches) |
/// | `max_write_buffer` | 1 MiB | bounds what a stalled socket can hold (big messages go out as 2 KiB fragments, so little is held at a time) |
/// | `max_message` | 16 KiB | client frames past 4 KiB get `frame_too_large`; past this the socket closes with 1009 |
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SocketBuffers {
    /// Initial read buffer, in bytes.
    pub read_buffer: usize,
    /// Bytes buffered before a write reaches the socket.
    pub write_buffer: usize,
    /// Most bytes the write buffer may hold.
    pub max_write_buffer: usize,
    /// Largest incoming message (and frame), in bytes.
    pub max_message: usize,
}

impl Default for SocketBuffers {
    fn default() -> Self {
        Self {
            read_buffer: 1024,
            write_buffer: 0,
            max_write_buffer: 1024 * 1024,
            max_message: 4 * MAX_FRAME_BYTES,
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            timing: TimingPolicy::default(),
            batch_window: Duration::from_millis(25),
            outbound_queue: 256,
            rate: RateLimit::default(),
            socket: SocketBuffers::default(),
            hello_timeout: Duration::from_secs(10),
            ws_path: "/ws".into(),
            service_key: None,
            max_bulk_users: 500,
            max_body_bytes: 64 * 1024,
            event_buffer: 4096,
            event_replay: 10_000,
            policy_timeout: Duration::from_secs(2),
            retention: Retention::default(),
            max_data_bytes: presence_core::limits::MAX_DATA_BYTES,
            large_room_members: 1_000,
            large_room_interval: Duration::from_secs(1),
            notify_idle_after: Duration::from_secs(120),
            viewing_events: false,
        }
    }
}

/// A configuration that cannot work.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    /// The timing policy is contradictory.
    #[error("timing policy: {0}")]
    Timing(#[from] InvalidPolicy),
    /// `max_data_bytes` past the frame limit: no frame could carry it.
    #[error("max_data_bytes ({0}) must be at most the frame limit ({MAX_FRAME_BYTES})")]
    DataTooLarge(usize),
    /// A size or count that must be positive was zero.
    #[error("{0} must be greater than zero")]
    Zero(&'static str),
    /// The batch window is so long that presence would feel stale.
    #[error("batch_window ({0:?}) must be at most 1 s")]
    BatchWindowTooLong(Duration),
    /// The rate limit's refill rate is not a positive finite number.
    #[error("rate.per_second must be a positive number, got {0}")]
    BadRate(f64),
    /// The incoming message limit is below the protocol's frame limit.
    #[error(
        "socket.max_message ({0}) must be at least the protocol frame limit ({MAX_FRAME_BYTES})"
    )]
    MaxMessageTooSmall(usize),
    /// The write buffer cap leaves no room for a frame.
    #[error("socket.max_write_buffer must exceed socket.write_buffer by at least 64 KiB")]
    WriteBufferCap,
    /// The WebSocket path is not an absolute path.
    #[error("ws_path must start with '/', got {0:?}")]
    BadPath(String),
    /// An empty service key would let anyone in.
    #[error("service_key must be at least 16 characters")]
    WeakServiceKey,
}

impl ServerConfig {
    /// Checks that the values can work together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.timing.validate()?;
        if self.batch_window > Duration::from_secs(1) {
            return Err(ConfigError::BatchWindowTooLong(self.batch_window));
        }
        for (name, v) in [
            ("outbound_queue", self.outbound_queue),
            ("event_replay", self.event_replay),
            ("rate.burst", self.rate.burst as usize),
            ("rate.abuse_factor", self.rate.abuse_factor as usize),
            ("socket.read_buffer", self.socket.read_buffer),
            ("max_bulk_users", self.max_bulk_users),
            ("max_body_bytes", self.max_body_bytes),
            ("event_buffer", self.event_buffer),
            ("max_data_bytes", self.max_data_bytes),
            ("large_room_members", self.large_room_members),
        ] {
            if v == 0 {
                return Err(ConfigError::Zero(name));
            }
        }
        if self.hello_timeout.is_zero() {
            return Err(ConfigError::Zero("hello_timeout"));
        }
        if self.policy_timeout.is_zero() {
            return Err(ConfigError::Zero("policy_timeout"));
        }
        if self.notify_idle_after.is_zero() {
            return Err(ConfigError::Zero("notify_idle_after"));
        }
        if self.large_room_interval.is_zero() {
            return Err(ConfigError::Zero("large_room_interval"));
        }
        if !(self.rate.per_second.is_finite() && self.rate.per_second > 0.0) {
            return Err(ConfigError::BadRate(self.rate.per_second));
        }
        if self.max_data_bytes > MAX_FRAME_BYTES {
            return Err(ConfigError::DataTooLarge(self.max_data_bytes));
        }
        if self.socket.max_message < MAX_FRAME_BYTES {
            return Err(ConfigError::MaxMessageTooSmall(self.socket.max_message));
        }
        if self.socket.max_write_buffer < self.socket.write_buffer.saturating_add(64 * 1024) {
            return Err(ConfigError::WriteBufferCap);
        }
        if !self.ws_path.starts_with('/') {
            return Err(ConfigError::BadPath(self.ws_path.clone()));
        }
        if self.service_key.as_ref().is_some_and(|k| k.len() < 16) {
            return Err(ConfigError::WeakServiceKey);
        }
        Ok(())
    }
}

/// How long shutdown waits for sockets to take their 1001 and end.
pub(crate) const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_valid() {
        assert_eq!(ServerConfig::default().validate(), Ok(()));
    }

    #[test]
    fn unworkable_configs_are_refused_with_the_field_named() {
        let c = ServerConfig {
            outbound_queue: 0,
            ..ServerConfig::default()
        };
        assert_eq!(c.validate(), Err(ConfigError::Zero("outbound_queue")));
        let c = ServerConfig {
            service_key: Some("short".into()),
            ..ServerConfig::default()
        };
        assert_eq!(c.validate(), Err(ConfigError::WeakServiceKey));
        let mut c = ServerConfig::default();
        c.rate.per_second = f64::NAN;
        assert!(matches!(c.validate(), Err(ConfigError::BadRate(_))));
        let c = ServerConfig {
            batch_window: Duration::ZERO,
            ..ServerConfig::default()
        };
        assert_eq!(c.validate(), Ok(()));
    }
}
