//! Prometheus metrics, served at `/metrics` in the text exposition format.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

type Labels = [(&'static str, &'static str); 1];

/// Every metric the server keeps. Names are listed in the crate README.
pub(crate) struct Metrics {
    registry: Registry,
    pub connections: Gauge,
    pub online_users: Gauge,
    pub events: Family<Labels, Counter>,
    pub frames_out: Counter,
    pub bytes_out: Counter,
    pub slow_consumers: Counter,
    pub rejected: Family<Labels, Counter>,
    pub time_to_offline: Histogram,
    pub resumes: Counter,
    pub handovers: Counter,
    pub unauthorized: Counter,
    pub tokens: Family<Labels, Counter>,
    pub denied: Family<Labels, Counter>,
    pub policy_timeouts: Counter,
    pub fanout: Histogram,
    pub lock_held: Histogram,
    pub large_rooms: Gauge,
    pub large_switches: Family<Labels, Counter>,
    pub summaries: Counter,
    pub redis_up: Gauge,
    pub bad_backend_replies: Counter,
    pub redis_down_seconds: Gauge,
    pub reincarnations: Counter,
    pub backend_bytes_in: Counter,
    pub backend_messages_in: Counter,
    pub webhook_delivered: Counter,
    pub webhook_requests: Family<Labels, Counter>,
    pub webhook_drops: Family<Labels, Counter>,
    pub webhook_latency: Histogram,
    pub webhook_lags: Family<[(&'static str, String); 1], Gauge<f64, std::sync::atomic::AtomicU64>>,
    pub stream: StreamMetrics,
}

/// The event stream's metrics (clones share the counts).
#[derive(Clone)]
pub(crate) struct StreamMetrics {
    pub appended: Counter,
    pub trimmed: Counter,
    pub dropped: Counter,
    pub append_failures: Counter,
    pub pending: Gauge,
    pub readers: Gauge,
    pub gaps: Counter,
    pub lag: Histogram,
}

impl Metrics {
    /// Counts an event by kind; a user going offline everywhere also
    /// observes how long after their last sign of life.
    pub fn event(&self, ev: &presence_core::Event) {
        self.events.get_or_create(&[("kind", ev.name())]).inc();
        if let presence_core::protocol::Diff::UserDisconnected {
            last_seen: Some(last_seen),
            ..
        } = ev.diff
            && ev.global
        {
            self.time_to_offline
                .observe(ev.at.since(last_seen).as_secs_f64());
        }
    }

    pub fn new(clustered: bool) -> Self {
        let mut registry = Registry::with_prefix("presence");
        let connections = Gauge::default();
        registry.register(
            "connections",
            "Open WebSocket connections",
            connections.clone(),
        );
        let online_users = Gauge::default();
        registry.register(
            "online_users",
            "Users shown online (active or idle)",
            online_users.clone(),
        );
        let events = Family::<Labels, Counter>::default();
        registry.register("events", "Presence events emitted, by kind", events.clone());
        let frames_out = Counter::default();
        registry.register("frames_out", "Frames queued to clients", frames_out.clone());
        let bytes_out = Counter::default();
        registry.register("bytes_out", "Bytes queued to clients", bytes_out.clone());
        let slow_consumers = Counter::default();
        registry.register(
            "slow_consumers_closed",
            "Connections closed with 4001 because their outbound queue overflowed",
            slow_consumers.clone(),
        );
        let rejected = Family::<Labels, Counter>::default();
        registry.register(
            "rejected_frames",
            "Client frames refused, by error code",
            rejected.clone(),
        );
        // 50 ms .. ~200 s: covers short test policies and the 70 s + 10 s default.
        let time_to_offline = Histogram::new(exponential_buckets(0.05, 2.0, 13));
        registry.register(
            "time_to_offline_seconds",
            "From the last sign of life of a user's last connection to observers seeing them offline",
            time_to_offline.clone(),
        );
        let resumes = Counter::default();
        registry.register(
            "resumes",
            "Reconnects that took their old connection back, so observers saw no offline/online flap",
            resumes.clone(),
        );
        let handovers = Counter::default();
        registry.register(
            "handovers",
            "Connections given to another node for their client's resume there",
            handovers.clone(),
        );
        let unauthorized = Counter::default();
        registry.register(
            "unauthorized_upgrades",
            "WebSocket upgrades whose token was refused (answered with unauthorized and 4101)",
            unauthorized.clone(),
        );
        let tokens = Family::<Labels, Counter>::default();
        registry.register(
            "tokens",
            "Token lifetime events on live sockets, by outcome (refreshed, refused, expired)",
            tokens.clone(),
        );
        let denied = Family::<Labels, Counter>::default();
        registry.register(
            "denied",
            "Requests the token's scope or the audience policy refused, by what (join, watch, http)",
            denied.clone(),
        );
        let policy_timeouts = Counter::default();
        registry.register(
            "policy_timeouts",
            "Authenticator or audience policy answers that took longer than policy_timeout",
            policy_timeouts.clone(),
        );
        let fanout = Histogram::new(exponential_buckets(1.0, 4.0, 9));
        registry.register(
            "fanout_deliveries",
            "Recipients of each batched diffs frame (deliveries per change batch)",
            fanout.clone(),
        );
        // 100 µs .. ~1.6 s.
        let lock_held = Histogram::new(exponential_buckets(0.0001, 4.0, 8));
        registry.register(
            "hub_lock_held_seconds",
            "How long each step held the node's state lock: every frame, round and tick waits behind it",
            lock_held.clone(),
        );
        let large_rooms = Gauge::default();
        registry.register(
            "large_rooms",
            "Rooms in large mode on this node (counts and summaries instead of diffs)",
            large_rooms.clone(),
        );
        let large_switches = Family::<Labels, Counter>::default();
        registry.register(
            "large_room_switches",
            "Rooms that crossed their threshold on this node, by the mode they switched to (large, small)",
            large_switches.clone(),
        );
        let summaries = Counter::default();
        registry.register(
            "summaries",
            "Summary frames built for large rooms (each encoded once for the room's members here)",
            summaries.clone(),
        );
        let redis_up = Gauge::default();
        let bad_backend_replies = Counter::default();
        let backend_bytes_in = Counter::default();
        let backend_messages_in = Counter::default();
        let redis_down_seconds = Gauge::default();
        let reincarnations = Counter::default();
        if clustered {
            registry.register(
                "redis_down_seconds",
                "Seconds the cluster backend has been unreachable (0 while reachable); past the lease TTL /readyz answers 503",
                redis_down_seconds.clone(),
            );
            registry.register(
                "reincarnations",
                "Times this node's lease had lapsed and it went on as a new incarnation, writing its users again",
                reincarnations.clone(),
            );
            registry.register(
                "backend_bytes_in",
                "Payload bytes this node received from the cluster bus (grows with its own interest, not with the cluster)",
                backend_bytes_in.clone(),
            );
            registry.register(
                "backend_messages_in",
                "Messages this node received from the cluster bus",
                backend_messages_in.clone(),
            );
            registry.register(
                "redis_up",
                "1 while the cluster backend is reachable; 0 while this node serves from what it knows (absent on a single node)",
                redis_up.clone(),
            );
            registry.register(
                "bad_backend_messages",
                "Messages from the cluster bus that did not decode and were skipped",
                bad_backend_replies.clone(),
            );
        }
        let webhook_lags = Family::<
            [(&'static str, String); 1],
            Gauge<f64, std::sync::atomic::AtomicU64>,
        >::default();
        if clustered {
            registry.register(
                "webhook_lag_seconds",
                "Age of the oldest event not yet delivered to each webhook endpoint, on the node delivering it (0: caught up)",
                webhook_lags.clone(),
            );
        }
        let stream = StreamMetrics {
            appended: Counter::default(),
            trimmed: Counter::default(),
            dropped: Counter::default(),
            append_failures: Counter::default(),
            pending: Gauge::default(),
            readers: Gauge::default(),
            gaps: Counter::default(),
            // 1 ms .. ~65 s.
            lag: Histogram::new(exponential_buckets(0.001, 2.0, 17)),
        };
        if clustered {
            registry.register(
                "stream_appended_events",
                "Host events this node appended to the cluster's event stream",
                stream.appended.clone(),
            );
            registry.register(
                "stream_trimmed_events",
                "Entries the event stream's retention (length and age) took after this node's appends",
                stream.trimmed.clone(),
            );
            registry.register(
                "stream_dropped_events",
                "Host events dropped because the stream did not take them and the outbox was full (readers get a gap)",
                stream.dropped.clone(),
            );
            registry.register(
                "stream_append_failures",
                "Append calls to the event stream that failed (their events are kept and appended again)",
                stream.append_failures.clone(),
            );
            registry.register(
                "stream_pending_events",
                "Host events waiting in this node's outbox for the stream",
                stream.pending.clone(),
            );
            registry.register(
                "feed_readers",
                "Readers of GET /v1/events on this node",
                stream.readers.clone(),
            );
            registry.register(
                "feed_gaps",
                "Gaps told to readers of GET /v1/events (retention or a dropped outbox took events they had not read)",
                stream.gaps.clone(),
            );
            registry.register(
                "feed_lag_seconds",
                "Time from an event's append to its sending to a reader of GET /v1/events on this node",
                stream.lag.clone(),
            );
        }
        let webhook_delivered = Counter::default();
        registry.register(
            "webhook_delivered_events",
            "Events delivered to webhook endpoints (2xx)",
            webhook_delivered.clone(),
        );
        let webhook_requests = Family::<Labels, Counter>::default();
        registry.register(
            "webhook_requests",
            "Webhook requests by outcome: delivered, retried, refused (non-retryable status), failed (gave up)",
            webhook_requests.clone(),
        );
        let webhook_drops = Family::<Labels, Counter>::default();
        registry.register(
            "webhook_dropped_events",
            "Webhook events dropped, by reason: queue_full, lagged, refused, gave_up",
            webhook_drops.clone(),
        );
        let webhook_latency = Histogram::new(exponential_buckets(0.001, 4.0, 9));
        registry.register(
            "webhook_request_seconds",
            "Time each webhook request took (one attempt)",
            webhook_latency.clone(),
        );
        Self {
            registry,
            connections,
            online_users,
            events,
            frames_out,
            bytes_out,
            slow_consumers,
            rejected,
            time_to_offline,
            resumes,
            handovers,
            unauthorized,
            tokens,
            denied,
            policy_timeouts,
            fanout,
            lock_held,
            large_rooms,
            large_switches,
            summaries,
            redis_up,
            bad_backend_replies,
            redis_down_seconds,
            reincarnations,
            backend_bytes_in,
            backend_messages_in,
            webhook_delivered,
            webhook_requests,
            webhook_drops,
            webhook_latency,
            webhook_lags,
            stream,
        }
    }

    pub fn webhook_request(&self, outcome: &'static str) {
        self.webhook_requests
            .get_or_create(&[("outcome", outcome)])
            .inc();
    }

    pub fn webhook_lag(&self, endpoint: &str, seconds: f64) {
        self.webhook_lags
            .get_or_create(&[("endpoint", endpoint.to_owned())])
            .set(seconds);
    }

    pub fn webhook_dropped(&self, reason: &'static str, events: u64) {
        self.webhook_drops
            .get_or_create(&[("reason", reason)])
            .inc_by(events);
    }

    pub fn token(&self, outcome: &'static str) {
        self.tokens.get_or_create(&[("outcome", outcome)]).inc();
    }

    pub fn large_switch(&self, to: &'static str) {
        self.large_switches.get_or_create(&[("to", to)]).inc();
    }

    pub fn deny(&self, what: &'static str) {
        self.denied.get_or_create(&[("what", what)]).inc();
    }

    pub fn reject(&self, code: presence_core::protocol::ErrorCode) {
        self.rejected
            .get_or_create(&[("code", code.as_str())])
            .inc();
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
