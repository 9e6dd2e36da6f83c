//! Webhooks against a real HTTP receiver on loopback: batched, signed,
//! filtered by kind, retried with backoff, bounded, and once per endpoint
//! across the nodes of a cluster.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use common::*;
use hmac::{Hmac, KeyInit, Mac};
use presence_server::backend::EventLog;
use presence_server::backend::stream::{Append, Keep};
use presence_server::{
    Backend, ClusterConfig, DataDir, MemoryCluster, PresenceServer, RedisBackend, RedisConfig,
    WebhookConfig,
};
use serde_json::{Value, json};
use sha2::Sha256;

const HOOK_SECRET: &str = "hook-secret-0123456789";
/// An answer that comes too late.
const HANG: u16 = 0;

/// One request the receiver got.
#[derive(Clone, Debug)]
struct Got {
    timestamp: String,
    signature: String,
    body: String,
    /// What the receiver answered.
    status: u16,
}

#[derive(Clone, Default)]
struct Receiver {
    got: Arc<Mutex<Vec<Got>>>,
    /// Statuses to answer with, first to last; then 200. `HANG` answers
    /// 200 after a second (longer than the tests' request timeout).
    answers: Arc<Mutex<Vec<u16>>>,
}

async fn hook(State(r): State<Receiver>, headers: HeaderMap, body: String) -> StatusCode {
    let h = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let status = {
        let mut answers = r.answers.lock().expect("lock");
        if answers.is_empty() {
            200
        } else {
            answers.remove(0)
        }
    };
    r.got.lock().expect("lock").push(Got {
        timestamp: h("presence-timestamp"),
        signature: h("presence-signature"),
        body,
        status: if status == HANG { 200 } else { status },
    });
    if status == HANG {
        tokio::time::sleep(Duration::from_secs(1)).await;
        return StatusCode::OK;
    }
    StatusCode::from_u16(status).unwrap_or(StatusCode::OK)
}

impl Receiver {
    /// A receiver answering `answers` first, its app and a listener on a
    /// free loopback port.
    async fn bind(
        answers: &[u16],
    ) -> (Receiver, axum::Router, tokio::net::TcpListener, SocketAddr) {
        let r = Receiver::default();
        r.answers.lock().expect("lock").extend_from_slice(answers);
        let app = axum::Router::new()
            .route("/hook", post(hook))
            .with_state(r.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr: SocketAddr = listener.local_addr().expect("addr");
        (r, app, listener, addr)
    }

    async fn start(answers: &[u16]) -> (Receiver, String) {
        let (r, app, listener, addr) = Self::bind(answers).await;
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (r, format!("http://{addr}/hook"))
    }

    /// The same receiver over HTTPS, its certificate (for 127.0.0.1) signed
    /// by a fresh test CA; also returns that CA as PEM.
    async fn start_tls(answers: &[u16]) -> (Receiver, String, String) {
        use tokio_rustls::rustls;
        let ca_key = rcgen::KeyPair::generate().expect("key");
        let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(rcgen::DnType::CommonName, "presence test CA");
        let ca = ca.self_signed(&ca_key).expect("CA");
        let key = rcgen::KeyPair::generate().expect("key");
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .expect("params")
            .signed_by(&key, &ca, &ca_key)
            .expect("certificate");
        #[allow(deprecated)]
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            )
            .expect("server TLS");
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let (r, app, listener, addr) = Self::bind(answers).await;
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let (acceptor, app) = (acceptor.clone(), app.clone());
                tokio::spawn(async move {
                    // A client that does not trust us fails here.
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper_util::service::TowerToHyperService::new(app);
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                        .await;
                });
            }
        });
        (r, format!("https://{addr}/hook"), ca.pem())
    }

    fn requests(&self) -> Vec<Got> {
        self.got.lock().expect("lock").clone()
    }

    /// Waits until the delivered events (bodies of 2xx-answered requests are
    /// not distinguished here: every request's events) satisfy `done`.
    async fn wait_for(&self, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let events = events_of(&self.requests());
            if done(&events) {
                return events;
            }
            assert!(Instant::now() < deadline, "{what}: got {events:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn events_of(requests: &[Got]) -> Vec<Value> {
    requests
        .iter()
        .flat_map(|g| {
            let v: Value = serde_json::from_str(&g.body).expect("a JSON body");
            v["events"].as_array().cloned().expect("an events array")
        })
        .collect()
}

/// The user-level (global) event kinds about `user`; room-level ones (a
/// user joining a room while online) come too, marked `"global": false`.
fn kinds(events: &[Value], user: &str) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["global"] == true)
        .filter(|e| e["user"] == user || e["presence"]["user"] == user)
        .map(|e| e["type"].as_str().unwrap_or("").to_owned())
        .collect()
}

fn hooks(url: &str) -> WebhookConfig {
    let mut w = WebhookConfig::new(vec![url.to_owned()], HOOK_SECRET);
    w.window = Duration::from_millis(150);
    w.timeout = Duration::from_millis(500);
    w
}

async fn server(w: WebhookConfig) -> TestServer {
    TestServer::start_with(PresenceServer::builder().config(fast_config()).webhooks(w)).await
}

/// The signature a receiver computes, independently of the server's code.
fn expected_signature(timestamp: &str, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(HOOK_SECRET.as_bytes()).expect("key");
    mac.update(format!("{timestamp}.{body}").as_bytes());
    mac.finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test]
async fn events_arrive_batched_signed_with_unique_ids_and_only_the_selected_kinds() {
    let (receiver, url) = Receiver::start(&[]).await;
    let srv = server(hooks(&url)).await;
    let mut ana = srv.client("ana").await;
    ana.join("r").await;
    ana.send(json!({"type": "typing", "room": "r", "active": true}))
        .await;
    ana.send(json!({"type": "activity", "state": "idle", "reason": "hidden"}))
        .await;
    let events = receiver
        .wait_for("connected and idle", |e| kinds(e, "ana").len() >= 2)
        .await;
    assert_eq!(kinds(&events, "ana"), ["user_connected", "user_idle"]);
    assert_eq!(receiver.requests().len(), 1, "one window, one request");
    ana.send(json!({"type": "leaving"})).await;
    ana.close().await;
    let events = receiver
        .wait_for("disconnected", |e| kinds(e, "ana").len() >= 3)
        .await;
    assert_eq!(
        kinds(&events, "ana"),
        ["user_connected", "user_idle", "user_disconnected"],
        "typing is not selected by default"
    );
    let now = now_secs();
    for g in receiver.requests() {
        assert_eq!(g.signature, expected_signature(&g.timestamp, &g.body));
        let ts: u64 = g.timestamp.parse().expect("unix seconds");
        assert!(now.abs_diff(ts) < 60, "timestamp {ts} vs now {now}");
    }
    let mut ids: Vec<&str> = events.iter().filter_map(|e| e["id"].as_str()).collect();
    assert_eq!(ids.len(), events.len(), "every event has a string id");
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), events.len(), "ids are unique");
    assert!(
        events
            .iter()
            .any(|e| e["global"] == false && e["rooms"] == json!(["r"])),
        "joining a room while online is a room-level event: {events:?}"
    );
    let (_, metrics) = http_text(srv.addr, "/metrics").await;
    let delivered = format!("presence_webhook_delivered_events_total {}", events.len());
    assert!(metrics.contains(&delivered), "{delivered} in {metrics}");
}

#[tokio::test]
async fn a_failing_endpoint_is_retried_with_backoff_and_gets_the_same_events() {
    let (receiver, url) = Receiver::start(&[503, 500]).await;
    let srv = server(hooks(&url)).await;
    let mut ana = srv.client("ana").await;
    ana.join("r").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while receiver.requests().len() < 3 {
        assert!(Instant::now() < deadline, "three tries in time");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let got = receiver.requests();
    assert_eq!(got[0].body, got[1].body, "a retry carries the same events");
    assert_eq!(got[1].body, got[2].body);
    let (_, metrics) = http_text(srv.addr, "/metrics").await;
    assert!(
        metrics.contains(r#"presence_webhook_requests_total{outcome="retried"} 2"#),
        "{metrics}"
    );
    assert!(metrics.contains(r#"presence_webhook_requests_total{outcome="delivered"} 1"#));
}

#[tokio::test]
async fn a_slow_endpoint_times_out_and_is_retried_while_presence_flows() {
    let (receiver, url) = Receiver::start(&[HANG]).await;
    let srv = server(hooks(&url)).await;
    let mut ana = srv.client("ana").await;
    ana.join("r").await;
    let mut bob = srv.client("bob").await;
    bob.join("r").await;
    // While the first request hangs, sockets hear everything as usual.
    ana.diff("user_connected", "bob").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while receiver.requests().len() < 2 {
        assert!(Instant::now() < deadline, "retried after the timeout");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let got = receiver.requests();
    assert_eq!(got[0].body, got[1].body, "the timed-out events again");
    let (_, metrics) = http_text(srv.addr, "/metrics").await;
    assert!(
        metrics.contains(r#"presence_webhook_requests_total{outcome="retried"} 1"#),
        "{metrics}"
    );
}

#[tokio::test]
async fn a_refusing_endpoint_is_not_retried_and_the_drop_is_counted() {
    let (receiver, url) = Receiver::start(&[400]).await;
    let srv = server(hooks(&url)).await;
    let mut ana = srv.client("ana").await;
    ana.join("r").await;
    let refused = receiver.wait_for("one request", |e| !e.is_empty()).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(receiver.requests().len(), 1, "no retry after a 400");
    let (_, metrics) = http_text(srv.addr, "/metrics").await;
    let dropped = format!(
        r#"presence_webhook_dropped_events_total{{reason="refused"}} {}"#,
        refused.len()
    );
    assert!(metrics.contains(&dropped), "{dropped} in {metrics}");
}

#[tokio::test]
async fn a_dead_endpoint_keeps_at_most_the_queue_and_counts_the_rest() {
    // Nothing listens there: every try fails to connect.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a port");
    let mut w = hooks(&format!("http://127.0.0.1:{port}/hook"));
    w.queue = 2;
    w.max_attempts = 2;
    let srv = server(w).await;
    let mut clients = Vec::new();
    for user in ["u1", "u2", "u3", "u4", "u5"] {
        clients.push(srv.client(user).await);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, metrics) = http_text(srv.addr, "/metrics").await;
        let dropped = |reason: &str| {
            metrics
                .lines()
                .find(|l| {
                    l.starts_with(&format!(
                        r#"presence_webhook_dropped_events_total{{reason="{reason}"}}"#
                    ))
                })
                .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
                .unwrap_or(0)
        };
        // Five events: at most two queued at once, so at least three are
        // dropped at the queue, and what was queued is dropped after two tries.
        if dropped("queue_full") >= 3 && dropped("queue_full") + dropped("gave_up") == 5 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "drops counted in time: {metrics}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(clients);
}

#[tokio::test]
async fn in_a_memory_cluster_each_change_is_delivered_once_per_endpoint() {
    let cluster = MemoryCluster::new();
    once_per_endpoint(|| Arc::new(cluster.node())).await;
}

#[tokio::test]
async fn over_redis_each_change_is_delivered_once_per_endpoint() {
    let prefix = format!("ptest:hooks:{}:{}", std::process::id(), now_secs());
    let url =
        std::env::var("PRESENCE_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    once_per_endpoint(|| {
        let mut c = RedisConfig::single(url.clone());
        c.prefix = prefix.clone();
        Arc::new(RedisBackend::new(c).expect("redis config"))
    })
    .await;
    // Best effort: the test's keys go with it.
    delete_redis_keys(&[url], &prefix);
}

#[tokio::test]
async fn over_a_redis_cluster_each_change_is_delivered_once_per_endpoint() {
    let Ok(seeds) = std::env::var("PRESENCE_TEST_REDIS_CLUSTER") else {
        println!(
            "PRESENCE_TEST_REDIS_CLUSTER unset: no Redis Cluster here (cargo xtask test starts one)"
        );
        return;
    };
    let seeds: Vec<String> = seeds.split(',').map(str::to_owned).collect();
    let prefix = format!("ptest:hooksc:{}:{}", std::process::id(), now_secs());
    once_per_endpoint(|| {
        let mut c = RedisConfig::cluster(seeds.clone());
        c.prefix = prefix.clone();
        Arc::new(RedisBackend::new(c).expect("redis cluster config"))
    })
    .await;
    let urls: Vec<String> = seeds.iter().map(|s| format!("redis://{s}")).collect();
    delete_redis_keys(&urls, &prefix);
}

async fn once_per_endpoint(backend: impl Fn() -> Arc<dyn Backend>) {
    let (receiver, url) = Receiver::start(&[]).await;
    let mut nodes = Vec::new();
    for id in ["a", "b"] {
        let cc = ClusterConfig {
            node_id: id.into(),
            lease_ttl: Duration::from_millis(600),
            ..ClusterConfig::default()
        };
        let builder = PresenceServer::builder()
            .config(calm_config())
            .cluster(backend(), cc)
            .webhooks(hooks(&url));
        nodes.push(TestServer::start_with(builder).await);
    }
    let deadline = Instant::now() + WAIT;
    while !nodes.iter().all(|n| n.server.cluster_up() == Some(true)) {
        assert!(Instant::now() < deadline, "nodes up");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let start = {
        // The stream's end now, as a position: a reader from the start
        // gets what follows.
        let (_, mut r) = SseReader::open(&nodes[0], SERVICE_KEY, None).await;
        let probe = nodes[0].client("probe").await;
        let e = r.find("user_connected", "probe").await;
        probe.close().await;
        e.id.expect("a position")
    };
    let mut tab_a = nodes[0].client("bob").await;
    tab_a.join("r").await;
    let mut tab_b = nodes[1].client("bob").await;
    tab_b.join("r").await;
    tab_a
        .send(json!({"type": "activity", "state": "idle", "reason": "hidden"}))
        .await;
    tab_b
        .send(json!({"type": "activity", "state": "idle", "reason": "no_input"}))
        .await;
    let events = receiver
        .wait_for("bob idle", |e| {
            kinds(e, "bob").contains(&"user_idle".to_owned())
        })
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let events = if events.len() < events_of(&receiver.requests()).len() {
        events_of(&receiver.requests())
    } else {
        events
    };
    assert_eq!(
        kinds(&events, "bob"),
        ["user_connected", "user_idle"],
        "once per endpoint, whichever node caused it"
    );
    // The same events, under the same ids, as the event stream's readers
    // get on any node.
    let (_, mut feed) = SseReader::open(&nodes[1], SERVICE_KEY, Some(&start)).await;
    let mut from_feed = Vec::new();
    while let Some(e) = feed.next_within(Duration::from_millis(300)).await {
        if e.data["global"] == true && diff_user(&e.data) == "bob" {
            from_feed.push(e.data["id"].as_str().unwrap_or("").to_owned());
        }
    }
    let hooked: Vec<String> = events
        .iter()
        .filter(|e| e["global"] == true && diff_user(e) == "bob")
        .map(|e| e["id"].as_str().unwrap_or("").to_owned())
        .collect();
    assert_eq!(hooked, from_feed, "webhook ids are the stream's ids");

    // The node delivering the endpoint dies while its batch is refused:
    // the other takes the endpoint over within the lease and delivers the
    // batch, under the same ids.
    let mut holder = None;
    for (i, n) in nodes.iter().enumerate() {
        let (_, metrics) = http_text(n.addr, "/metrics").await;
        if metrics.contains("presence_webhook_lag_seconds{endpoint=") {
            holder = Some(i);
        }
    }
    let holder = holder.expect("one node delivers the endpoint");
    let other = 1 - holder;
    receiver.answers.lock().expect("lock").extend([503; 4]);
    let mut carol = nodes[other].client("carol").await;
    carol.join("r").await;
    receiver
        .wait_for("carol's connect, refused", |e| {
            !kinds(e, "carol").is_empty()
        })
        .await;
    nodes[holder].server.halt_cluster();
    nodes[holder].abort();
    let deadline = Instant::now() + Duration::from_secs(15);
    let carols = loop {
        let requests = receiver.requests();
        let ok: Vec<Value> = events_of(
            &requests
                .iter()
                .filter(|g| g.status == 200)
                .cloned()
                .collect::<Vec<_>>(),
        );
        if !kinds(&ok, "carol").is_empty() {
            break events_of(&requests);
        }
        assert!(
            Instant::now() < deadline,
            "carol's connect never delivered: {requests:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut ids: Vec<&str> = carols
        .iter()
        .filter(|e| e["global"] == true && diff_user(e) == "carol")
        .filter_map(|e| e["id"].as_str())
        .collect();
    ids.dedup();
    assert_eq!(
        ids.len(),
        1,
        "one event, the same id on every try: {carols:?}"
    );
}

#[tokio::test]
async fn an_https_endpoint_signed_by_a_private_ca_gets_signed_batches_and_a_wrong_ca_is_refused() {
    let (receiver, url, ca) = Receiver::start_tls(&[]).await;
    let dir = std::env::temp_dir().join(format!("presence-hooks-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca).expect("write CA");
    let mut w = hooks(&url);
    w.ca_file = Some(ca_file);
    let srv = server(w).await;
    let mut ana = srv.client("ana").await;
    ana.join("r").await;
    let events = receiver
        .wait_for("connected over HTTPS", |e| !kinds(e, "ana").is_empty())
        .await;
    assert_eq!(kinds(&events, "ana"), ["user_connected"]);
    for g in receiver.requests() {
        assert_eq!(g.signature, expected_signature(&g.timestamp, &g.body));
    }

    // A node trusting another CA (and the system's roots) refuses the
    // receiver's certificate: counted, retried, never delivered.
    let (_, _, other_ca) = Receiver::start_tls(&[]).await;
    let other = dir.join("other-ca.pem");
    std::fs::write(&other, other_ca).expect("write CA");
    let mut w = hooks(&url);
    w.ca_file = Some(other);
    let wrong = server(w).await;
    let before = receiver.requests().len();
    let mut bob = wrong.client("bob").await;
    bob.join("r").await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, metrics) = http_text(wrong.addr, "/metrics").await;
        if metrics.contains("presence_webhook_requests_total{outcome=\"tls_failed\"}") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no TLS failure counted: {metrics}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(receiver.requests().len(), before, "nothing got through");
    let _ = std::fs::remove_dir_all(dir);
}

/// The kinds webhooks select by default, by event name.
const SELECTED: &[&str] = &[
    "user_connected",
    "user_disconnected",
    "user_left",
    "user_idle",
    "user_active",
    "status",
];

/// One node keeping its state (and its feed) in `dir`, with webhooks.
async fn one_node_in(dir: &std::path::Path, url: &str) -> TestServer {
    // The previous server's store closes when its last task lets go of it.
    let deadline = Instant::now() + Duration::from_secs(5);
    let data = loop {
        match DataDir::open(dir) {
            Ok(d) => break d,
            Err(e) => {
                assert!(Instant::now() < deadline, "{e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    let builder = PresenceServer::builder()
        .config(calm_config())
        .data_dir(data)
        .webhooks(hooks(url));
    TestServer::start_with(builder).await
}

/// (type, id) of the feed's events of the selected kinds, read until
/// nothing comes for a while; each SSE `id:` checked against its `id`.
async fn feed_ids(feed: &mut SseReader) -> Vec<(String, String)> {
    let mut got = Vec::new();
    while let Some(e) = feed.next_within(Duration::from_millis(500)).await {
        let id = e.data["id"]
            .as_u64()
            .expect("one node's feed ids are numbers");
        assert_eq!(e.id, Some(id.to_string()), "the SSE id is the event's");
        if SELECTED.contains(&e.event.as_str()) {
            got.push((e.event, id.to_string()));
        }
    }
    got
}

fn hook_ids(events: &[Value]) -> Vec<(String, String)> {
    events
        .iter()
        .map(|e| {
            let id = e["id"].as_str().expect("webhook ids are strings");
            (e["type"].as_str().unwrap_or("").to_owned(), id.to_owned())
        })
        .collect()
}

#[tokio::test]
async fn one_node_delivers_each_event_under_its_feed_id_and_ids_grow_across_restarts() {
    let dir = std::env::temp_dir().join(format!(
        "presence-hook-ids-{}-{}",
        std::process::id(),
        now_secs()
    ));
    let (receiver, url) = Receiver::start(&[]).await;
    let srv = one_node_in(&dir, &url).await;
    let (_, mut feed) = SseReader::open(&srv, SERVICE_KEY, None).await;
    let mut ana = srv.client("ana").await;
    ana.join("r").await;
    ana.send(json!({"type": "activity", "state": "idle", "reason": "hidden"}))
        .await;
    let hooked = receiver
        .wait_for("ana connected and idle", |e| kinds(e, "ana").len() >= 2)
        .await;
    let fed = feed_ids(&mut feed).await;
    assert_eq!(fed.len(), 3, "connected, joined, idle: {fed:?}");
    assert_eq!(hook_ids(&hooked), fed, "the same events under the same ids");
    srv.stop().await;
    drop(ana);

    // After a restart with the same data directory the feed numbers on
    // after what it kept, and the webhooks with it.
    let (receiver, url) = Receiver::start(&[]).await;
    let srv = one_node_in(&dir, &url).await;
    let last = fed.last().map(|(_, id)| id.clone()).expect("an id");
    let (_, mut feed) = SseReader::open(&srv, SERVICE_KEY, Some(&last)).await;
    let bob = srv.client("bob").await;
    receiver
        .wait_for("bob connected", |e| !kinds(e, "bob").is_empty())
        .await;
    // ana's restored connection goes offline after its grace meanwhile.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let fed_after = feed_ids(&mut feed).await;
    let hooked_after = hook_ids(&events_of(&receiver.requests()));
    assert!(fed_after.iter().any(|(t, _)| t == "user_connected"));
    assert_eq!(
        hooked_after, fed_after,
        "the same events under the same ids"
    );
    let before: u64 = last.parse().expect("a number");
    assert!(
        hooked_after
            .iter()
            .all(|(_, id)| id.parse::<u64>().expect("a number") > before),
        "ids grow across the restart: {before} then {hooked_after:?}"
    );
    drop(bob);
    srv.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn events_a_node_dropped_from_its_outbox_reach_webhooks_as_a_gap() {
    let (receiver, url) = Receiver::start(&[]).await;
    let cluster = MemoryCluster::new();
    let cc = ClusterConfig {
        node_id: "a".into(),
        lease_ttl: Duration::from_millis(600),
        ..ClusterConfig::default()
    };
    let builder = PresenceServer::builder()
        .config(calm_config())
        .cluster(Arc::new(cluster.node()), cc.clone())
        .webhooks(hooks(&url));
    let srv = TestServer::start_with(builder).await;
    // Delivering from the stream: a first event goes through.
    let probe = srv.client("probe").await;
    receiver
        .wait_for("probe connected", |e| !kinds(e, "probe").is_empty())
        .await;
    // What a node whose outbox overflowed appends (stream.rs, flush): a
    // `gap` entry in every shard. Filling a real outbox takes 10,000
    // events the stream refuses, so another link writes the same entries.
    let dropped = json!({"node": "b-1", "dropped": 7}).to_string();
    let gaps = (0..cc.event_shards)
        .map(|shard| Append {
            shard,
            kind: "gap".into(),
            user: String::new(),
            data: dropped.clone(),
        })
        .collect();
    let keep = Keep {
        per_shard: 1000,
        max_age: Duration::from_secs(3600),
    };
    let other = cluster.node();
    other.append(gaps, keep).await.expect("appended");
    let events = receiver
        .wait_for("a gap per shard", |e| {
            e.iter().filter(|e| e["type"] == "gap").count() >= usize::from(cc.event_shards)
        })
        .await;
    let mut shards = Vec::new();
    for gap in events.iter().filter(|e| e["type"] == "gap") {
        assert_eq!((&gap["node"], &gap["dropped"]), (&json!("b-1"), &json!(7)));
        shards.push(gap["shard"].as_u64().expect("its shard"));
    }
    shards.sort();
    assert_eq!(shards, (0..u64::from(cc.event_shards)).collect::<Vec<_>>());
    drop(probe);
    srv.finish().await;
}
