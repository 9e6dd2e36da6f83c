//! Several nodes over one real Redis (127.0.0.1:6379, or PRESENCE_TEST_REDIS):
//! three servers in this process sharing a key prefix unique to each test,
//! real WebSocket clients, short leases so node death is seen in a second.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use presence_server::{PresenceServer, RedisConfig, RedisStore};
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

const LEASE: Duration = Duration::from_millis(600);

fn redis_url() -> String {
    std::env::var("PRESENCE_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

fn unique_prefix(test: &str) -> String {
    let mut b = [0u8; 4];
    getrandom_fill(&mut b);
    format!("ptest:{test}:{:08x}", u32::from_le_bytes(b))
}

fn getrandom_fill(b: &mut [u8]) {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    for (i, x) in b.iter_mut().enumerate() {
        *x = (t >> (i * 8)) as u8 ^ (std::process::id() as u8).wrapping_mul(31);
    }
}

/// Deletes a test's keys (best effort) when it ends.
struct Cleanup(String);

impl Drop for Cleanup {
    fn drop(&mut self) {
        let Ok(client) = redis::Client::open(redis_url()) else {
            return;
        };
        let Ok(mut c) = client.get_connection() else {
            return;
        };
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}:*", self.0))
            .query(&mut c)
            .unwrap_or_default();
        if !keys.is_empty() {
            let _: redis::RedisResult<()> = redis::cmd("DEL").arg(keys).query(&mut c);
        }
    }
}

async fn node_at(url: String, prefix: &str, id: &str) -> TestServer {
    node_with(url, prefix, id, calm_config()).await
}

async fn node_with(
    url: String,
    prefix: &str,
    id: &str,
    config: presence_server::ServerConfig,
) -> TestServer {
    let mut rc = RedisConfig::new(url);
    rc.prefix = prefix.into();
    rc.node_id = id.into();
    rc.lease_ttl = LEASE;
    let store = RedisStore::new(rc).expect("store config");
    TestServer::start_with(PresenceServer::builder().config(config).redis(store)).await
}

async fn node(prefix: &str, id: &str) -> TestServer {
    node_at(redis_url(), prefix, id).await
}

/// Waits until every node reaches Redis (bounded).
async fn all_up(nodes: &[&TestServer]) {
    let deadline = Instant::now() + WAIT;
    while !nodes.iter().all(|n| n.server.redis_up() == Some(true)) {
        assert!(
            Instant::now() < deadline,
            "nodes did not reach Redis in time"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn three(test: &str) -> (Cleanup, TestServer, TestServer, TestServer) {
    let prefix = unique_prefix(test);
    let a = node(&prefix, "a").await;
    let b = node(&prefix, "b").await;
    let c = node(&prefix, "c").await;
    all_up(&[&a, &b, &c]).await;
    (Cleanup(prefix), a, b, c)
}

/// The diff kinds about `user` a client receives during `d`.
async fn kinds_about(client: &mut Client, user: &str, d: Duration) -> Vec<String> {
    client
        .diffs_during(d)
        .await
        .iter()
        .filter(|(_, diff)| diff_user(diff) == user)
        .map(|(_, diff)| diff["type"].as_str().unwrap_or("").to_owned())
        .collect()
}

#[tokio::test]
async fn every_event_kind_crosses_nodes_once() {
    let (_keys, a, b, c) = three("kinds").await;
    let mut ana = a.client("ana").await;
    let snap = ana.join("r").await;
    assert_eq!(names(&snap["members"]), ["ana"]);
    let mut carol = c.client("carol").await;
    carol.send(json!({"type": "watch", "users": ["bob"]})).await;
    let w = carol.frame("watching").await;
    assert_eq!(w["users"][0]["state"], "offline");

    let mut bob = b.client("bob").await;
    let snap = bob.join("r").await;
    assert_eq!(
        names(&snap["members"]),
        ["ana", "bob"],
        "snapshot spans nodes"
    );
    let (room, d) = ana.diff("user_connected", "bob").await;
    assert_eq!(room.as_deref(), Some("r"));
    assert_eq!(d["presence"]["state"], "active");
    let (room, _) = carol.diff("user_connected", "bob").await;
    assert_eq!(room, None, "watchers hear it without a room");

    bob.send(json!({"type": "activity", "state": "idle", "reason": "hidden"}))
        .await;
    let (_, d) = ana.diff("user_idle", "bob").await;
    assert_eq!(d["reason"], "hidden");
    carol.diff("user_idle", "bob").await;
    bob.send(json!({"type": "activity", "state": "active"}))
        .await;
    ana.diff("user_active", "bob").await;
    carol.diff("user_active", "bob").await;

    bob.send(json!({"type": "typing", "room": "r", "active": true}))
        .await;
    ana.diff("typing_started", "bob").await;
    bob.send(json!({"type": "typing", "room": "r", "active": false}))
        .await;
    ana.diff("typing_stopped", "bob").await;
    bob.send(json!({"type": "read", "room": "r", "marker": 9_007_199_254_740_991u64}))
        .await;
    let (_, d) = ana.diff("read", "bob").await;
    assert_eq!(d["marker"], 9_007_199_254_740_991u64);

    bob.send(json!({"type": "status", "status": "busy", "text": "in a meeting"}))
        .await;
    let (_, d) = ana.diff("status", "bob").await;
    assert_eq!(d["status"], "busy");
    assert_eq!(d["text"], "in a meeting");
    carol.diff("status", "bob").await;

    bob.send(json!({"type": "leave", "room": "r"})).await;
    ana.diff("user_disconnected", "bob").await;

    // Nothing was said twice: ana saw each of bob's changes exactly once.
    bob.send(json!({"type": "join", "room": "r"})).await;
    ana.diff("user_connected", "bob").await;
    let rest = kinds_about(&mut ana, "bob", Duration::from_millis(300)).await;
    assert!(rest.is_empty(), "no duplicates, got {rest:?}");

    // The HTTP API answers for the cluster from any node.
    let (status, body) = c.get("/v1/rooms/r/members", SERVICE_KEY).await;
    assert_eq!(status, 200);
    assert_eq!(names(&body["members"]), ["ana", "bob"]);
    let (_, body) = a.get("/v1/users/bob/presence", SERVICE_KEY).await;
    assert_eq!(body["status"], "busy");
    let (_, health) = a.get("/healthz", "").await;
    assert_eq!(health["redis"], "up");
}

#[tokio::test]
async fn a_user_with_tabs_on_two_nodes_is_one_user() {
    let (_keys, a, b, c) = three("tabs").await;
    let mut carol = c.client("carol").await;
    carol.join("r").await;
    let mut tab_a = a.client("bob").await;
    tab_a.join("r").await;
    let mut tab_b = b.client("bob").await;
    tab_b.join("r").await;
    carol.diff("user_connected", "bob").await;

    // One tab idle, the other active: bob stays active.
    tab_a
        .send(json!({"type": "activity", "state": "idle", "reason": "hidden"}))
        .await;
    // Closing the tab on A ends bob on node A (after the leave grace): A's
    // machine emits user_disconnected, which must reach nobody.
    tab_a.send(json!({"type": "leaving"})).await;
    tab_a.close().await;
    let seen = kinds_about(&mut carol, "bob", Duration::from_millis(700)).await;
    assert!(
        seen.is_empty(),
        "closing one of two tabs says nothing, got {seen:?}"
    );
    let (_, body) = c.get("/v1/users/bob/presence", SERVICE_KEY).await;
    assert_eq!(body["state"], "active");

    // The last tab going makes bob go offline, once.
    tab_b
        .send(json!({"type": "activity", "state": "idle", "reason": "no_input"}))
        .await;
    tab_b.send(json!({"type": "leaving"})).await;
    tab_b.close().await;
    let seen = kinds_about(&mut carol, "bob", Duration::from_millis(700)).await;
    assert_eq!(seen, ["user_idle", "user_disconnected"]);
}

#[tokio::test]
async fn users_of_a_killed_node_go_offline_elsewhere_within_the_lease_once() {
    let (_keys, a, b, c) = three("kill").await;
    let mut ana = a.client("ana").await;
    ana.join("r").await;
    let mut bob = b.client("bob").await;
    bob.join("r").await;
    let mut carol = c.client("carol").await;
    let snap = carol.join("r").await;
    assert_eq!(names(&snap["members"]), ["ana", "bob", "carol"]);
    bob.diff("user_connected", "carol").await;

    // kill -9 in-process: no more lease renewals, no cleanup, no goodbye.
    let killed = Instant::now();
    a.server.halt_redis();
    a.abort();
    let (_, d) = tokio::time::timeout(Duration::from_secs(3), bob.diff("user_disconnected", "ana"))
        .await
        .expect("bob hears ana go");
    let took = killed.elapsed();
    println!("killed node's user offline elsewhere after {took:?} (lease {LEASE:?})");
    assert!(d["last_seen"].as_u64().is_some());
    carol.diff("user_disconnected", "ana").await;
    let bound = LEASE + LEASE / 3 + Duration::from_millis(400);
    assert!(took <= bound, "took {took:?}, bound {bound:?}");
    // Exactly once, although two nodes reap.
    let again = kinds_about(&mut bob, "ana", Duration::from_millis(900)).await;
    assert!(again.is_empty(), "said once, got {again:?}");
    let again = kinds_about(&mut carol, "ana", Duration::from_millis(10)).await;
    assert!(again.is_empty(), "said once, got {again:?}");
    let (_, body) = c.get("/v1/rooms/r/members", SERVICE_KEY).await;
    assert_eq!(names(&body["members"]), ["bob", "carol"]);
    drop(ana);
}

#[tokio::test]
async fn a_restarted_node_does_not_resurrect_its_previous_connections() {
    let prefix = unique_prefix("restart");
    let _keys = Cleanup(prefix.clone());
    let a = node(&prefix, "a").await;
    let b = node(&prefix, "b").await;
    all_up(&[&a, &b]).await;
    let mut ana = a.client("ana").await;
    ana.join("r").await;
    let mut bob = b.client("bob").await;
    let snap = bob.join("r").await;
    assert_eq!(names(&snap["members"]), ["ana", "bob"]);
    a.server.halt_redis();
    a.abort();
    // Same id again, at once: the old incarnation's records go.
    let a2 = node(&prefix, "a").await;
    all_up(&[&a2]).await;
    bob.diff("user_disconnected", "ana").await;
    let (_, body) = b.get("/v1/rooms/r/members", SERVICE_KEY).await;
    assert_eq!(names(&body["members"]), ["bob"]);
    drop(ana);
}

#[tokio::test]
async fn a_gracefully_restarted_node_lets_its_clients_resume_without_a_flap() {
    let prefix = unique_prefix("resume");
    let _keys = Cleanup(prefix.clone());
    let mut config = calm_config();
    config.timing.offline_grace = Duration::from_secs(3);
    let a = node_with(redis_url(), &prefix, "a", config.clone()).await;
    let b = node(&prefix, "b").await;
    all_up(&[&a, &b]).await;
    let mut ana = a.client("ana").await;
    ana.join("r").await;
    let token = ana.resume_token();
    let mut bob = b.client("bob").await;
    assert_eq!(names(&bob.join("r").await["members"]), ["ana", "bob"]);
    a.stop().await;
    assert_eq!(ana.close_code().await, 1001);
    // Same id, within the grace: the saved connections come back.
    let a2 = node_with(redis_url(), &prefix, "a", config).await;
    all_up(&[&a2]).await;
    let mut back = Client::connect(&a2.url("ana"), "ana", Some(&token)).await;
    assert_eq!(back.welcome["resumed"], true);
    assert_eq!(names(&back.join("r").await["members"]), ["ana", "bob"]);
    let seen = bob.diffs_during(Duration::from_millis(1500)).await;
    assert!(
        seen.iter().all(|(_, d)| diff_user(d) != "ana"),
        "bob saw no flap of ana: {seen:?}"
    );
    // And a client that does not come back goes offline after its grace.
    let mut carol = a2.client("carol").await;
    carol.join("r").await;
    bob.diff("user_connected", "carol").await;
    a2.stop().await;
    let a3 = node_with(redis_url(), &prefix, "a", {
        let mut c = calm_config();
        c.timing.offline_grace = Duration::from_millis(300);
        c
    })
    .await;
    all_up(&[&a3]).await;
    bob.diff("user_disconnected", "carol").await;
    drop((back, carol, a3));
}

/// A TCP proxy to Redis that can cut every connection and refuse new ones.
struct Proxy {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
    conns: Arc<std::sync::Mutex<JoinSet<()>>>,
    _accept: tokio::task::JoinHandle<()>,
}

impl Proxy {
    async fn start() -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let cut = Arc::new(AtomicBool::new(false));
        let conns = Arc::new(std::sync::Mutex::new(JoinSet::new()));
        let upstream: SocketAddr = "127.0.0.1:6379".parse().expect("addr");
        let (c2, j2) = (cut.clone(), conns.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut down, _)) = listener.accept().await {
                if c2.load(Ordering::SeqCst) {
                    continue; // dropped: connection refused in effect
                }
                j2.lock().expect("lock").spawn(async move {
                    if let Ok(mut up) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                    }
                });
            }
        });
        Proxy {
            addr,
            cut,
            conns,
            _accept: accept,
        }
    }

    fn url(&self) -> String {
        format!("redis://{}", self.addr)
    }

    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        self.conns.lock().expect("lock").abort_all();
    }

    fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

async fn wait_redis(node: &TestServer, up: bool) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while node.server.redis_up() != Some(up) {
        assert!(Instant::now() < deadline, "redis_up never became {up}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn a_node_cut_from_redis_serves_locally_says_so_and_converges_when_it_returns() {
    if std::env::var("PRESENCE_TEST_REDIS").is_ok() {
        return; // the proxy points at the default Redis only
    }
    let prefix = unique_prefix("outage");
    let _keys = Cleanup(prefix.clone());
    let proxy = Proxy::start().await;
    let a = node_at(proxy.url(), &prefix, "a").await;
    let b = node(&prefix, "b").await;
    all_up(&[&a, &b]).await;
    let mut ana = a.client("ana").await;
    ana.join("r").await;
    let mut bob = b.client("bob").await;
    bob.join("r").await;
    ana.diff("user_connected", "bob").await;

    proxy.cut();
    wait_redis(&a, false).await;
    let (status, health) = a.get("/healthz", "").await;
    assert_eq!((status, health["redis"].as_str()), (200, Some("down")));
    let (_, metrics) = http_text(a.addr, "/metrics").await;
    assert!(metrics.contains("presence_redis_up 0"), "{metrics}");

    // Node A keeps serving its own users, from its own state.
    let mut dan = a.client("dan").await;
    let snap = dan.join("r").await;
    assert!(names(&snap["members"]).contains(&"ana".to_owned()));
    ana.diff("user_connected", "dan").await;
    ana.send(json!({"type": "activity", "state": "idle", "reason": "hidden"}))
        .await;
    dan.diff("user_idle", "ana").await;

    proxy.restore();
    wait_redis(&a, true).await;
    // The cluster converges: B learns what happened on A meanwhile...
    bob.diff("user_connected", "dan").await;
    let (_, body) = b.get("/v1/users/ana/presence", SERVICE_KEY).await;
    assert_eq!(body["state"], "idle");
    // ...and A's sockets are resynced with cluster snapshots.
    let snap = dan.frame("snapshot").await;
    assert_eq!(names(&snap["members"]), ["ana", "bob", "dan"]);
    let (_, metrics) = http_text(a.addr, "/metrics").await;
    assert!(metrics.contains("presence_redis_up 1"));
}

/// Cross-node propagation: a change on node A until an observer on node B
/// reads it, over real sockets and Redis, with the default 25 ms batch window
/// (or PRESENCE_BENCH_BATCH_MS). Run:
/// `cargo test -p presence-server --release --test cluster -- --ignored --nocapture propagation`
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: prints cross-node propagation p50/p99"]
async fn propagation_benchmark() {
    let window: u64 = std::env::var("PRESENCE_BENCH_BATCH_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(25);
    let prefix = unique_prefix("bench");
    let _keys = Cleanup(prefix.clone());
    let mut nodes = Vec::new();
    for id in ["a", "b"] {
        let mut config = calm_config();
        config.batch_window = Duration::from_millis(window);
        config.timing.heartbeat_interval = Duration::from_secs(20);
        config.timing.heartbeat_timeout = Duration::from_secs(60);
        config.rate.burst = 10_000;
        config.rate.per_second = 10_000.0;
        let mut rc = RedisConfig::new(redis_url());
        rc.prefix = prefix.clone();
        rc.node_id = id.into();
        let store = RedisStore::new(rc).expect("store config");
        nodes.push(
            TestServer::start_with(PresenceServer::builder().config(config).redis(store)).await,
        );
    }
    all_up(&[&nodes[0], &nodes[1]]).await;
    let mut ana = nodes[0].client("ana").await;
    ana.join("r").await;
    let mut bob = nodes[1].client("bob").await;
    bob.join("r").await;
    bob.diffs_during(Duration::from_millis(200)).await;
    let rounds = 300;
    let mut samples = Vec::with_capacity(rounds);
    for i in 0..rounds {
        let (msg, kind) = if i % 2 == 0 {
            (
                json!({"type": "activity", "state": "idle", "reason": "hidden"}),
                "user_idle",
            )
        } else {
            (
                json!({"type": "activity", "state": "active"}),
                "user_active",
            )
        };
        let sent = Instant::now();
        ana.send(msg).await;
        bob.diff(kind, "ana").await;
        samples.push(sent.elapsed());
        // Spread the changes so each one is its own batch, as in a real room.
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    samples.sort();
    let pct = |p: f64| samples[((samples.len() as f64 * p) as usize).min(samples.len() - 1)];
    println!(
        "cross-node propagation, batch window {window} ms, {rounds} changes: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        pct(0.50).as_secs_f64() * 1e3,
        pct(0.99).as_secs_f64() * 1e3,
        samples[samples.len() - 1].as_secs_f64() * 1e3,
    );
}

#[tokio::test]
async fn invisible_set_on_one_node_hides_the_user_everywhere_once() {
    let (_keys, a, b, c) = three("invisible").await;
    let mut carol = c.client("carol").await;
    carol.join("r").await;
    let mut tab_a = a.client("bob").await;
    tab_a.join("r").await;
    let mut tab_b = b.client("bob").await;
    tab_b.join("r").await;
    carol.diff("user_connected", "bob").await;

    tab_b
        .send(json!({"type": "status", "status": "invisible"}))
        .await;
    assert_eq!(tab_b.frame("self_status").await["status"], "invisible");
    // The tab on the other node learns its own status...
    let s = tab_a.frame("self_status").await;
    assert_eq!(s["status"], "invisible");
    // ...and observers see bob go, once, although node A still shows him.
    let seen = kinds_about(&mut carol, "bob", Duration::from_millis(500)).await;
    assert_eq!(seen, ["user_disconnected"]);
    let (_, body) = c.get("/v1/rooms/r/members", SERVICE_KEY).await;
    assert_eq!(names(&body["members"]), ["carol"]);

    // Back to available from the other node: bob is back, once.
    tab_a
        .send(json!({"type": "status", "status": "available"}))
        .await;
    let s = tab_b.frame("self_status").await;
    assert_eq!(s["status"], "available");
    let seen = kinds_about(&mut carol, "bob", Duration::from_millis(500)).await;
    assert_eq!(seen, ["user_connected"]);
}
