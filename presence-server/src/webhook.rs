//! Signed webhooks: host events `POST`ed as JSON batches to each endpoint.
//!
//! Every host event of a selected kind is encoded once (the feed's shape,
//! with a string `id` unique across nodes and restarts: one node's feed id,
//! or in a cluster the stream's) and queued for each endpoint. Each
//! endpoint has its own task: it waits one window after the first pending
//! event, sends what is queued (at most `max_batch` events) in one request,
//! and retries a failed request with exponential backoff and jitter, so at
//! most one request per window is in flight per endpoint.
//!
//! A request body is `{"events":[...]}`. It is signed: header
//! `presence-timestamp` (unix seconds) and `presence-signature`, the
//! lowercase hex HMAC-SHA256 with the shared secret over
//! `<timestamp>.<body>`. A receiver recomputes it, compares in constant
//! time, rejects old timestamps, and drops events whose `id` it has seen
//! (delivery is at least once: a retried request may have arrived).
//!
//! Bounds: each endpoint queues at most `queue` events (more are dropped and
//! counted, never buffered without limit); each request waits at most
//! `timeout`; a request is tried at most `max_attempts` times, then its
//! events are dropped and counted. 2xx is delivered; 408, 429 and 5xx,
//! timeouts and connection errors are retried; any other status is a
//! permanent refusal (dropped, counted).
//!
//! In a cluster each node delivers the events its own writes caused (see
//! the crate docs, "Host events"), so each cluster-level change is delivered
//! once per endpoint, not once per node. Events a node had queued when it
//! died are lost (at most its queue); its users' going offline is then
//! announced, and delivered, by the node that cleans it.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use hmac::{Hmac, KeyInit, Mac};
use http_body_util::Full;
use hyper::Uri;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use presence_core::Event;
use sha2::Sha256;
use tokio::sync::{Notify, broadcast};

use crate::hub::Hub;

/// A failed request's first retry waits up to this (full jitter), each next
/// one up to twice the last...
const RETRY_MIN: Duration = Duration::from_millis(250);
/// ...and never more than this.
const RETRY_MAX: Duration = Duration::from_secs(30);

/// Kinds a webhook may select, by product name, and the events each covers.
const KINDS: &[(&str, &[&str])] = &[
    ("connected", &["user_connected"]),
    ("disconnected", &["user_disconnected", "user_left"]),
    ("idle", &["user_idle"]),
    ("active", &["user_active"]),
    ("status", &["status"]),
    ("typing", &["typing_started", "typing_stopped"]),
    ("read", &["read"]),
    ("data", &["data"]),
    ("viewing", &["viewing"]),
];

/// Where and what to deliver.
#[derive(Clone, Debug)]
pub struct WebhookConfig {
    /// Endpoints (`http://` or `https://host:port/path`); each gets every
    /// selected event.
    pub urls: Vec<String>,
    /// The shared secret requests are signed with.
    pub secret: String,
    /// Selected kinds (see [`WebhookConfig::new`]; `typing` and `read` are
    /// chatty, so they are not selected by default; `viewing` needs
    /// [`ServerConfig::viewing_events`](crate::ServerConfig::viewing_events)).
    pub kinds: Vec<String>,
    /// Events within this window go out in one request. Default 1 s.
    pub window: Duration,
    /// How long one request may take. Default 5 s.
    pub timeout: Duration,
    /// Events queued per endpoint at most. Default 10,000.
    pub queue: usize,
    /// Events per request at most. Default 500.
    pub max_batch: usize,
    /// Tries per request. Default 8 (seven waits of at most 32 s in all).
    pub max_attempts: u32,
    /// PEM certificates of a private CA that `https://` endpoints may be
    /// signed by, besides the system's roots.
    pub ca_file: Option<std::path::PathBuf>,
}

/// The shortest webhook secret accepted, as for the service key.
pub const MIN_SECRET_BYTES: usize = 16;

/// A [`WebhookConfig`] that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum WebhookError {
    /// A URL does not parse or is not `http(s)://host[:port]/...`.
    #[error("webhook URL {0:?}: {1}")]
    BadUrl(String, &'static str),
    /// No secret: receivers could not tell our requests from anyone's.
    #[error("webhooks need a secret (--webhook-secret or --webhook-secret-file)")]
    NoSecret,
    /// A secret shorter than [`MIN_SECRET_BYTES`]: guessable, so anyone could forge our requests.
    #[error("the webhook secret is {0} bytes; use at least 16 (e.g. `openssl rand -hex 32`)")]
    WeakSecret(usize),
    /// A kind not in the list.
    #[error(
        "unknown webhook event kind {0:?} (known: connected, disconnected, idle, active, status, typing, read, data, viewing)"
    )]
    UnknownKind(String),
    /// `viewing` selected while the server emits no view changes.
    #[error(
        "webhook kind \"viewing\" needs view changes as events: turn them on with --viewing-events (ServerConfig::viewing_events)"
    )]
    ViewingOff,
    /// A bound of zero.
    #[error("webhook {0} must be at least 1")]
    Zero(&'static str),
    /// The CA file cannot be read or holds no PEM certificate.
    #[error("webhook CA file {0}: {1}")]
    CaFile(String, String),
}

impl WebhookConfig {
    /// Endpoints and secret with the defaults: kinds `connected`,
    /// `disconnected`, `idle`, `active`, `status`.
    pub fn new(urls: Vec<String>, secret: impl Into<String>) -> Self {
        Self {
            urls,
            secret: secret.into(),
            kinds: ["connected", "disconnected", "idle", "active", "status"]
                .map(str::to_owned)
                .to_vec(),
            window: Duration::from_secs(1),
            timeout: Duration::from_secs(5),
            queue: 10_000,
            max_batch: 500,
            max_attempts: 8,
            ca_file: None,
        }
    }

    /// Checks every setting.
    pub fn validate(&self) -> Result<(), WebhookError> {
        if self.secret.is_empty() {
            return Err(WebhookError::NoSecret);
        }
        if self.secret.len() < MIN_SECRET_BYTES {
            return Err(WebhookError::WeakSecret(self.secret.len()));
        }
        for url in &self.urls {
            parse_url(url)?;
        }
        self.selected()?;
        self.private_roots()?;
        for (name, v) in [
            ("queue", self.queue),
            ("max_batch", self.max_batch),
            ("max_attempts", self.max_attempts as usize),
        ] {
            if v == 0 {
                return Err(WebhookError::Zero(name));
            }
        }
        Ok(())
    }

    /// Refuses `viewing` when the server emits no view changes: the
    /// endpoint would wait for events that never come.
    pub(crate) fn check_viewing(&self, viewing_events: bool) -> Result<(), WebhookError> {
        if !viewing_events && self.kinds.iter().any(|k| k == "viewing") {
            return Err(WebhookError::ViewingOff);
        }
        Ok(())
    }

    /// The event names the selected kinds cover.
    fn selected(&self) -> Result<Vec<&'static str>, WebhookError> {
        let mut names = Vec::new();
        for kind in &self.kinds {
            let (_, events) = KINDS
                .iter()
                .find(|(k, _)| k == kind)
                .ok_or_else(|| WebhookError::UnknownKind(kind.clone()))?;
            names.extend_from_slice(events);
        }
        Ok(names)
    }
}

impl WebhookConfig {
    /// The certificates of [`WebhookConfig::ca_file`].
    fn private_roots(
        &self,
    ) -> Result<Vec<rustls_pki_types::CertificateDer<'static>>, WebhookError> {
        use rustls_pki_types::pem::PemObject;
        let Some(path) = &self.ca_file else {
            return Ok(Vec::new());
        };
        let bad = |why: String| WebhookError::CaFile(path.display().to_string(), why);
        let pem = std::fs::read(path).map_err(|e| bad(e.to_string()))?;
        let certs = rustls_pki_types::CertificateDer::pem_slice_iter(&pem)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(format!("not PEM: {e}")))?;
        if certs.is_empty() {
            return Err(bad("holds no certificate".into()));
        }
        Ok(certs)
    }

    /// The TLS settings: the system's roots plus the private CA's.
    fn tls(&self) -> Result<rustls::ClientConfig, WebhookError> {
        let mut roots = rustls::RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        for e in &native.errors {
            tracing::warn!("webhooks: a system root certificate could not be read: {e}");
        }
        let (_, ignored) = roots.add_parsable_certificates(native.certs);
        if ignored > 0 {
            tracing::debug!(
                ignored,
                "webhooks: system root certificates rustls cannot use"
            );
        }
        for cert in self.private_roots()? {
            roots.add(cert).map_err(|e| {
                WebhookError::CaFile(
                    self.ca_file
                        .as_ref()
                        .map(|p| p.display().to_string())
                        .unwrap_or_default(),
                    e.to_string(),
                )
            })?;
        }
        // ring, not aws-lc-rs: no C toolchain beyond ring's own, and a faster
        // cold build. Its provider lacks post-quantum key exchange, which
        // rustls flags as deprecated; webhooks carry short-lived events.
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map(|b| b.with_root_certificates(roots).with_no_client_auth())
            .map_err(|e| WebhookError::CaFile(String::new(), e.to_string()))
    }
}

/// The HTTP(S) client every endpoint of a node shares.
pub(crate) type HttpClient = Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

fn client(config: &WebhookConfig) -> Result<HttpClient, WebhookError> {
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config.tls()?)
        .https_or_http()
        .enable_http1()
        .build();
    Ok(Client::builder(TokioExecutor::new()).build(https))
}

fn parse_url(url: &str) -> Result<Uri, WebhookError> {
    let bad = |why| WebhookError::BadUrl(url.to_owned(), why);
    let uri: Uri = url.parse().map_err(|_| bad("not a URL"))?;
    match uri.scheme_str() {
        Some("http" | "https") => {}
        _ => return Err(bad("must start with http:// or https://")),
    }
    if uri.host().is_none() {
        return Err(bad("has no host"));
    }
    Ok(uri)
}

/// The lowercase hex HMAC-SHA256 of `<timestamp>.<body>`.
pub fn sign(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    // Any key length is valid for HMAC.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return String::new();
    };
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

struct Endpoint {
    url: String,
    uri: Uri,
    queue: Mutex<VecDeque<Arc<str>>>,
    wake: Notify,
}

impl Endpoint {
    fn queue(&self) -> std::sync::MutexGuard<'_, VecDeque<Arc<str>>> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Starts the webhook tasks (validate the config first). Each holds the hub
/// weakly and ends with it, after a last try at what is queued.
pub(crate) fn spawn(hub: &Arc<Hub>, config: WebhookConfig) {
    let Ok(names) = config.selected() else {
        return;
    };
    let endpoints: Vec<Arc<Endpoint>> = config
        .urls
        .iter()
        .filter_map(|url| {
            Some(Arc::new(Endpoint {
                url: url.clone(),
                uri: parse_url(url).ok()?,
                queue: Mutex::new(VecDeque::new()),
                wake: Notify::new(),
            }))
        })
        .collect();
    if endpoints.is_empty() {
        return;
    }
    let client = match client(&config) {
        Ok(c) => c,
        Err(e) => {
            // validate() checked the same; only a vanished file gets here.
            tracing::error!("webhooks off: {e}");
            return;
        }
    };
    let config = Arc::new(config);
    if hub.stream.as_ref().is_some_and(|s| s.appends()) {
        // Among the cluster's tasks, so a node halted as if killed stops
        // delivering too.
        let mut tasks = hub.store_tasks.lock().unwrap_or_else(|p| p.into_inner());
        for ep in endpoints {
            tasks.push(
                tokio::spawn(from_stream(
                    Arc::downgrade(hub),
                    ep,
                    config.clone(),
                    client.clone(),
                    names.clone(),
                ))
                .abort_handle(),
            );
        }
        return;
    }
    for ep in &endpoints {
        tokio::spawn(deliver(
            Arc::downgrade(hub),
            ep.clone(),
            config.clone(),
            client.clone(),
        ));
    }
    // Subscribed here, before any task runs, so no event falls in between.
    let source = Source::new(hub);
    tokio::spawn(fan_out(
        Arc::downgrade(hub),
        source,
        endpoints,
        config,
        names,
    ));
}

/// Where a node without a cluster stream takes its webhook events from, and
/// the `id` each gets (a string, unique across nodes and restarts).
enum Source {
    /// One node with a feed (it has one with a service key): the feed's
    /// entries under the feed's ids, so a backend reading both sees one id
    /// per event (as a string here, a number there); they grow across
    /// restarts as the feed's do.
    Feed(broadcast::Receiver<Arc<crate::feed::Entry>>),
    /// The host events, numbered here: alone (no feed to share ids with),
    /// from where the feed would start; in a cluster without a stream,
    /// `<incarnation>-<n>`.
    Events {
        events: broadcast::Receiver<Event>,
        node: Option<String>,
        next: u64,
    },
}

/// What a [`Source`] had next.
enum Next {
    /// An event of a selected kind, encoded.
    Event(Arc<str>),
    /// An event of another kind.
    Skipped,
    /// This many events went by while the fan-out was behind.
    Missed(u64),
    Closed,
}

impl Source {
    fn new(hub: &Hub) -> Self {
        match (&hub.feed, hub.cluster_me()) {
            (Some(feed), me) if me.is_empty() => Source::Feed(feed.subscribe()),
            (_, me) => Source::Events {
                events: hub.subscribe(),
                next: if me.is_empty() {
                    crate::feed::first_id(hub.clock.now())
                } else {
                    1
                },
                node: (!me.is_empty()).then(|| me.to_string()),
            },
        }
    }

    async fn next(&mut self, names: &[&str]) -> Next {
        use broadcast::error::RecvError;
        match self {
            Source::Feed(entries) => match entries.recv().await {
                Ok(e) if names.contains(&e.kind.as_str()) => Next::Event(with_id(&e.json, e.id)),
                Ok(_) => Next::Skipped,
                Err(RecvError::Lagged(n)) => Next::Missed(n),
                Err(RecvError::Closed) => Next::Closed,
            },
            Source::Events { events, node, next } => match events.recv().await {
                Ok(ev) if names.contains(&ev.name()) => {
                    let id = match node {
                        Some(me) => format!("{me}-{next}"),
                        None => next.to_string(),
                    };
                    *next += 1;
                    Next::Event(crate::feed::encode(&ev, serde_json::json!(id)).into())
                }
                Ok(_) => Next::Skipped,
                Err(RecvError::Lagged(n)) => Next::Missed(n),
                Err(RecvError::Closed) => Next::Closed,
            },
        }
    }
}

/// A feed entry's JSON with its `id` as a string.
fn with_id(json: &str, id: u64) -> Arc<str> {
    match serde_json::from_str::<serde_json::Map<String, serde_json::Value>>(json) {
        Ok(mut fields) => {
            fields.insert("id".into(), id.to_string().into());
            serde_json::Value::Object(fields).to_string().into()
        }
        // The feed encoded it; it parses.
        Err(_) => json.into(),
    }
}

/// Encodes each selected host event once and queues it for every endpoint.
async fn fan_out(
    hub: Weak<Hub>,
    mut source: Source,
    endpoints: Vec<Arc<Endpoint>>,
    config: Arc<WebhookConfig>,
    names: Vec<&'static str>,
) {
    let Some(mut shutdown) = hub.upgrade().map(|h| h.shutdown_signal()) else {
        return;
    };
    loop {
        let got = tokio::select! {
            got = source.next(&names) => got,
            _ = shutdown.wait_for(|s| *s) => break,
        };
        let Some(h) = hub.upgrade() else { break };
        match got {
            Next::Event(json) => {
                for ep in &endpoints {
                    let mut q = ep.queue();
                    if q.len() >= config.queue {
                        h.metrics.webhook_dropped("queue_full", 1);
                    } else {
                        q.push_back(json.clone());
                        ep.wake.notify_one();
                    }
                }
            }
            Next::Skipped => {}
            Next::Missed(missed) => {
                tracing::warn!(missed, "webhooks fell behind the host events");
                h.metrics
                    .webhook_dropped("lagged", missed * endpoints.len() as u64);
            }
            Next::Closed => break,
        }
    }
    for ep in &endpoints {
        ep.wake.notify_one();
    }
}

/// One endpoint's sender: one request per window, retried with backoff.
async fn deliver(
    hub: Weak<Hub>,
    ep: Arc<Endpoint>,
    config: Arc<WebhookConfig>,
    client: HttpClient,
) {
    let Some(mut shutdown) = hub.upgrade().map(|h| h.shutdown_signal()) else {
        return;
    };
    loop {
        let stopping = *shutdown.borrow();
        if !stopping {
            tokio::select! {
                _ = ep.wake.notified() => {}
                _ = shutdown.wait_for(|s| *s) => {}
            }
            // Coalesce: what happens within the window rides along.
            tokio::select! {
                _ = tokio::time::sleep(config.window) => {}
                _ = shutdown.wait_for(|s| *s) => {}
            }
        }
        let batch: Vec<Arc<str>> = {
            let mut q = ep.queue();
            let n = q.len().min(config.max_batch);
            q.drain(..n).collect()
        };
        if batch.is_empty() {
            if stopping || hub.upgrade().is_none() {
                return;
            }
            continue;
        }
        let mut body = String::from("{\"events\":[");
        for (i, e) in batch.iter().enumerate() {
            if i > 0 {
                body.push(',');
            }
            body.push_str(e);
        }
        body.push_str("]}");
        let body = Bytes::from(body);
        let tries = if stopping { 1 } else { config.max_attempts };
        send_with_retries(&hub, &ep, &config, &client, body, batch.len() as u64, tries).await;
        if !ep.queue().is_empty() {
            ep.wake.notify_one();
        }
    }
}

/// With a cluster: one node at a time delivers an endpoint (a role held in
/// the backend, `hook-<FNV-1a 64 of the URL>`), from the cluster's event
/// stream, and saves its position there after each batch it is done with.
/// A node that dies is followed, within the lease TTL, by another that goes
/// on from the saved position: the batch in flight is sent again, with the
/// same ids. The backlog is the stream (its retention), not a node's memory.
/// An event the stream holds twice (same id) is delivered once.
async fn from_stream(
    hub: Weak<Hub>,
    ep: Arc<Endpoint>,
    config: Arc<WebhookConfig>,
    client: HttpClient,
    names: Vec<&'static str>,
) {
    let role = format!("hook-{:016x}", fnv64(&ep.url));
    let Some((backend, stream, ttl, mut shutdown)) = hub.upgrade().and_then(|h| {
        let link = h.cluster.as_ref()?;
        Some((
            link.backend.clone(),
            h.stream.clone()?,
            link.config.lease_ttl,
            h.shutdown_signal(),
        ))
    }) else {
        return;
    };
    let beat = ttl / 3;
    let stop = shutdown.clone();
    let pause = |d: Duration| {
        let mut shutdown = stop.clone();
        async move {
            tokio::select! {
                _ = tokio::time::sleep(d) => true,
                _ = shutdown.wait_for(|s| *s) => false,
            }
        }
    };
    'holding: loop {
        let Some(me) = hub.upgrade().map(|h| h.cluster_me()) else {
            return;
        };
        let saved = match backend.hold(&role, &me, ttl, None).await {
            Ok((true, saved)) => saved,
            _ => {
                if !pause(beat).await {
                    return;
                }
                continue;
            }
        };
        let from = match saved.as_deref().map(|s| stream.cursor(s)) {
            Some(Ok(c)) => c,
            other => {
                if let Some(Err(e)) = other {
                    tracing::warn!(url = %ep.url, "webhooks: saved position unusable ({e}); starting at the end");
                }
                match stream.end(&*backend).await {
                    Ok(c) => c,
                    Err(_) => {
                        if !pause(beat).await {
                            return;
                        }
                        continue;
                    }
                }
            }
        };
        tracing::info!(url = %ep.url, node = %me, "webhooks: this node delivers the endpoint");
        let mut tail = crate::stream::Tail::new(from);
        let mut renewed = tokio::time::Instant::now();
        let mut waited = false;
        loop {
            if *shutdown.borrow() {
                return;
            }
            if renewed.elapsed() >= beat {
                match backend.hold(&role, &me, ttl, None).await {
                    Ok((true, _)) => renewed = tokio::time::Instant::now(),
                    Ok((false, _)) => continue 'holding,
                    Err(_) => {}
                }
            }
            let appended = stream.appended();
            tokio::pin!(appended);
            appended.as_mut().enable();
            let items = match tail.read(&*backend, config.max_batch).await {
                Ok(items) => items,
                Err(_) => {
                    if !pause(crate::stream::POLL * 10).await {
                        return;
                    }
                    continue;
                }
            };
            let lag = items.iter().find_map(|i| match i {
                crate::stream::Item::Event { entry, .. } => Some(entry.id.ms),
                crate::stream::Item::Gap { .. } => None,
            });
            if let Some(h) = hub.upgrade() {
                let age = lag.map_or(0.0, |ms| {
                    crate::stream::now_ms().saturating_sub(ms) as f64 / 1000.0
                });
                h.metrics.webhook_lag(&ep.url, age);
            }
            if items.is_empty() {
                waited = false;
                tokio::select! {
                    _ = appended => {}
                    _ = tokio::time::sleep(crate::stream::POLL) => {}
                    _ = shutdown.wait_for(|s| *s) => return,
                }
                continue;
            }
            if !waited {
                // Coalesce: what comes within the window rides along.
                waited = true;
                if !pause(config.window).await {
                    return;
                }
                continue;
            }
            waited = false;
            let mut body = String::from("{\"events\":[");
            let mut events = 0usize;
            // The tail moves as the batch is built: if the role is lost
            // before the batch is done, the next holder starts from the
            // saved position anyway.
            for item in &items {
                if !tail.pass(item) {
                    continue; // a repeat, already delivered
                }
                if let Some(json) = hook_json(item, &names) {
                    if events > 0 {
                        body.push(',');
                    }
                    body.push_str(&json);
                    events += 1;
                    if events == config.max_batch {
                        break;
                    }
                }
            }
            body.push_str("]}");
            if events > 0 {
                let send = send_with_retries(
                    &hub,
                    &ep,
                    &config,
                    &client,
                    Bytes::from(body),
                    events as u64,
                    config.max_attempts,
                );
                tokio::pin!(send);
                // Keep the role while the batch is tried (retries back off
                // for up to a minute).
                loop {
                    tokio::select! {
                        _ = &mut send => break,
                        _ = tokio::time::sleep(beat) => {
                            if let Ok((false, _)) = backend.hold(&role, &me, ttl, None).await {
                                continue 'holding;
                            }
                            renewed = tokio::time::Instant::now();
                        }
                    }
                }
            }
            match backend.hold(&role, &me, ttl, Some(tail.cursor())).await {
                Ok((true, _)) => renewed = tokio::time::Instant::now(),
                Ok((false, _)) => continue 'holding,
                // Kept in memory; saved with the next batch.
                Err(e) => {
                    tracing::debug!(url = %ep.url, error = %e, "webhooks: position not saved")
                }
            }
        }
    }
}

/// What webhooks deliver of a stream item: an event of a selected kind as
/// the stream holds it, and every gap as `{"type":"gap","shard",...}`,
/// whether retention took entries (`after`, `first`, `last`) or a node
/// dropped events from its full outbox (its `gap` entry: `node`,
/// `dropped`, in every shard).
fn hook_json(item: &crate::stream::Item, names: &[&str]) -> Option<String> {
    use crate::stream::Item;
    let gap = |data: &serde_json::Value, shard: u16| {
        let mut fields = data.as_object().cloned().unwrap_or_default();
        fields.insert("type".into(), "gap".into());
        fields.insert("shard".into(), shard.into());
        serde_json::Value::Object(fields).to_string()
    };
    match item {
        Item::Gap { shard, data, .. } => Some(gap(data, *shard)),
        Item::Event { shard, entry } if entry.kind == "gap" => Some(gap(
            &serde_json::from_str(&entry.data).unwrap_or_default(),
            *shard,
        )),
        Item::Event { entry, .. } => names
            .contains(&entry.kind.as_str())
            .then(|| entry.data.clone()),
    }
}

fn fnv64(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

enum Outcome {
    Delivered,
    Refused(u16),
    /// Worth trying again; `tls` if the TLS handshake failed (a bad or
    /// untrusted certificate, a wrong host name).
    Retry {
        why: String,
        tls: bool,
    },
}

async fn send_with_retries(
    hub: &Weak<Hub>,
    ep: &Endpoint,
    config: &WebhookConfig,
    client: &HttpClient,
    body: Bytes,
    events: u64,
    tries: u32,
) {
    let mut backoff = crate::backoff::backoff(RETRY_MIN, RETRY_MAX);
    for attempt in 1..=tries {
        let Some(h) = hub.upgrade() else { return };
        let now_s = h.clock.now().0 / 1000;
        let started = tokio::time::Instant::now();
        let outcome = send(ep, config, client, body.clone(), now_s).await;
        h.metrics
            .webhook_latency
            .observe(started.elapsed().as_secs_f64());
        match outcome {
            Outcome::Delivered => {
                h.metrics.webhook_request("delivered");
                h.metrics.webhook_delivered.inc_by(events);
                return;
            }
            Outcome::Refused(status) => {
                tracing::warn!(url = %ep.url, status, events, "webhook refused; events dropped");
                h.metrics.webhook_request("refused");
                h.metrics.webhook_dropped("refused", events);
                return;
            }
            Outcome::Retry { why, tls } if attempt < tries => {
                if tls {
                    tracing::warn!(url = %ep.url, attempt, why, "webhook TLS handshake failed; retrying");
                    h.metrics.webhook_request("tls_failed");
                } else {
                    tracing::debug!(url = %ep.url, attempt, why, "webhook failed; retrying");
                }
                h.metrics.webhook_request("retried");
                drop(h);
                tokio::time::sleep(backoff.next_delay()).await;
            }
            Outcome::Retry { why, tls } => {
                if tls {
                    h.metrics.webhook_request("tls_failed");
                }
                tracing::warn!(url = %ep.url, attempts = tries, why, events, "webhook gave up; events dropped");
                h.metrics.webhook_request("failed");
                h.metrics.webhook_dropped("gave_up", events);
            }
        }
    }
}

async fn send(
    ep: &Endpoint,
    config: &WebhookConfig,
    client: &HttpClient,
    body: Bytes,
    now_s: u64,
) -> Outcome {
    let signature = sign(config.secret.as_bytes(), now_s, &body);
    let request = hyper::Request::post(ep.uri.clone())
        .header("content-type", "application/json")
        .header("user-agent", "presence-server")
        .header("presence-timestamp", now_s.to_string())
        .header("presence-signature", signature)
        .body(Full::new(body));
    let Ok(request) = request else {
        return Outcome::Refused(0);
    };
    match tokio::time::timeout(config.timeout, client.request(request)).await {
        Err(_) => Outcome::Retry {
            why: "timed out".into(),
            tls: false,
        },
        Ok(Err(e)) => Outcome::Retry {
            why: chain(&e),
            tls: is_tls(&e),
        },
        Ok(Ok(response)) => {
            let status = response.status();
            if status.is_success() {
                Outcome::Delivered
            } else if status.is_server_error() || matches!(status.as_u16(), 408 | 429) {
                Outcome::Retry {
                    why: format!("status {status}"),
                    tls: false,
                }
            } else {
                Outcome::Refused(status.as_u16())
            }
        }
    }
}

/// An error with its causes, `: `-separated.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

/// Whether rustls refused the connection somewhere down the causes (an
/// `io::Error` hides the error it wraps from `source()`, so it is opened).
fn is_tls(e: &(dyn std::error::Error + 'static)) -> bool {
    if e.is::<rustls::Error>() {
        return true;
    }
    if let Some(io) = e.downcast_ref::<std::io::Error>()
        && let Some(inner) = io.get_ref()
        && is_tls(inner)
    {
        return true;
    }
    e.source().is_some_and(is_tls)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_signature_is_hmac_sha256_hex_over_timestamp_dot_body() {
        let sig = sign(b"Jefe", 0, b"what do ya want for nothing?");
        assert_eq!(sig.len(), 64);
        assert_ne!(sig, sign(b"Jefe", 1, b"what do ya want for nothing?"));
        let mut mac = Hmac::<Sha256>::new_from_slice(b"k").expect("key");
        mac.update(b"12.{}");
        let want: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        assert_eq!(sign(b"k", 12, b"{}"), want);
    }

    #[test]
    fn every_kind_is_named_in_the_error_the_help_and_the_readme() {
        let error = WebhookError::UnknownKind("x".into()).to_string();
        let readme = include_str!("../README.md");
        let kinds_line = readme
            .lines()
            .find(|l| l.contains("- **Kinds** (`--webhook-events`)"))
            .expect("the README lists the kinds");
        let next = readme
            .lines()
            .skip_while(|l| !l.contains("- **Kinds**"))
            .nth(1)
            .unwrap_or("");
        let listed = format!("{kinds_line} {next}");
        for (kind, _) in KINDS {
            assert!(error.contains(kind), "{kind} in {error}");
            assert!(
                listed.contains(&format!("`{kind}`")),
                "{kind} in the README"
            );
        }
    }

    #[test]
    fn gaps_of_both_causes_are_delivered_and_events_only_of_selected_kinds() {
        use crate::backend::stream::{StreamEntry, StreamId};
        use crate::stream::Item;
        use serde_json::{Value, json};
        let entry = |kind: &str, data: Value| Item::Event {
            shard: 3,
            entry: StreamEntry {
                id: StreamId { ms: 1, seq: 1 },
                kind: kind.into(),
                user: String::new(),
                data: data.to_string(),
            },
        };
        let names = ["user_idle"];
        let parsed = |item: &Item| {
            hook_json(item, &names).map(|j| serde_json::from_str::<Value>(&j).expect("JSON"))
        };
        let idle = json!({"type": "user_idle", "id": "i:1:0:ana"});
        assert_eq!(parsed(&entry("user_idle", idle.clone())), Some(idle));
        assert_eq!(parsed(&entry("typing_started", json!({}))), None);
        let dropped = entry("gap", json!({"node": "b-1", "dropped": 7}));
        assert_eq!(
            parsed(&dropped),
            Some(json!({"type": "gap", "shard": 3, "node": "b-1", "dropped": 7}))
        );
        let retention = Item::Gap {
            shard: 2,
            to: None,
            data: json!({"shard": 2, "after": "1-1", "first": "5-9", "last": "5-9"}),
        };
        assert_eq!(
            parsed(&retention),
            Some(json!({"type": "gap", "shard": 2, "after": "1-1", "first": "5-9", "last": "5-9"}))
        );
    }

    #[test]
    fn bad_settings_are_refused_with_what_is_wrong() {
        const S: &str = "0123456789abcdef";
        let ok = WebhookConfig::new(vec!["http://127.0.0.1:9/hook".into()], S);
        assert!(ok.validate().is_ok());
        let mut c = ok.clone();
        c.secret.clear();
        assert!(matches!(c.validate(), Err(WebhookError::NoSecret)));
        c.secret = "abc".into();
        assert!(matches!(c.validate(), Err(WebhookError::WeakSecret(3))));
        assert!(
            WebhookConfig::new(vec!["https://x/hook".into()], S)
                .validate()
                .is_ok()
        );
        for url in ["ftp://x", "not a url", "/relative"] {
            let c = WebhookConfig::new(vec![url.into()], S);
            assert!(
                matches!(c.validate(), Err(WebhookError::BadUrl(..))),
                "{url}"
            );
        }
        let mut c = ok.clone();
        c.kinds.push("typo".into());
        assert!(matches!(c.validate(), Err(WebhookError::UnknownKind(_))));
        let mut c = ok.clone();
        c.queue = 0;
        assert!(matches!(c.validate(), Err(WebhookError::Zero("queue"))));
        let mut c = ok;
        c.ca_file = Some("/nonexistent/ca.pem".into());
        assert!(matches!(c.validate(), Err(WebhookError::CaFile(..))));
        let dir = std::env::temp_dir().join(format!("presence-ca-{}", std::process::id()));
        std::fs::write(&dir, "not a certificate").expect("write");
        c.ca_file = Some(dir.clone());
        assert!(matches!(c.validate(), Err(WebhookError::CaFile(..))));
        let _ = std::fs::remove_file(dir);
    }
}
