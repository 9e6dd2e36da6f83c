//! Several nodes sharing presence, through each backend: the in-process
//! [`MemoryCluster`], one real Redis (127.0.0.1:6379, or PRESENCE_TEST_REDIS)
//! and a real 3-master Redis Cluster (PRESENCE_TEST_REDIS_CLUSTER, which
//! `cargo xtask test` starts). Three servers in this process, a key prefix
//! unique to each test, real WebSocket clients, short leases so node death
//! is seen in a second. Each scenario runs on every backend.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::*;
use presence_server::backend::MemoryBackend;
use presence_server::presence_core::notify::{Decision, Reason};
use presence_server::{
    Backend, ClusterConfig, MemoryCluster, PresenceServer, RedisBackend, RedisConfig,
};
use serde_json::json;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

const LEASE: Duration = Duration::from_millis(600);

fn redis_url() -> String {
    std::env::var("PRESENCE_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

fn cluster_seeds() -> Option<Vec<String>> {
    let v = std::env::var("PRESENCE_TEST_REDIS_CLUSTER").ok()?;
    Some(v.split(',').map(str::to_owned).collect())
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

/// What the nodes of one test share.
#[derive(Clone)]
enum Fabric {
    Memory(MemoryCluster),
    Redis { url: String, prefix: String },
    Cluster { seeds: Vec<String>, prefix: String },
}

impl Fabric {
    fn memory() -> Self {
        Fabric::Memory(MemoryCluster::new())
    }

    fn redis(test: &str) -> Self {
        Fabric::Redis {
            url: redis_url(),
            prefix: unique_prefix(test),
        }
    }

    fn cluster(test: &str) -> Option<Self> {
        let Some(seeds) = cluster_seeds() else {
            println!(
                "PRESENCE_TEST_REDIS_CLUSTER unset: no Redis Cluster here (cargo xtask test starts one)"
            );
            return None;
        };
        Some(Fabric::Cluster {
            seeds,
            prefix: unique_prefix(test),
        })
    }

    /// A backend for this fabric's keys reached through another Redis URL
    /// (a proxy). Not a `Fabric`: dropping one would clean the keys.
    fn backend_via(&self, url: String) -> Arc<dyn Backend> {
        let Fabric::Redis { prefix, .. } = self else {
            panic!("only one Redis is reached through a proxy");
        };
        let mut c = RedisConfig::single(url);
        c.prefix = prefix.clone();
        Arc::new(RedisBackend::new(c).expect("redis config"))
    }

    fn backend(&self) -> Arc<dyn Backend> {
        match self {
            Fabric::Memory(m) => Arc::new(m.node()),
            Fabric::Redis { url, prefix } => {
                let mut c = RedisConfig::single(url.clone());
                c.prefix = prefix.clone();
                Arc::new(RedisBackend::new(c).expect("redis config"))
            }
            Fabric::Cluster { seeds, prefix } => {
                let mut c = RedisConfig::cluster(seeds.clone());
                c.prefix = prefix.clone();
                Arc::new(RedisBackend::new(c).expect("redis cluster config"))
            }
        }
    }
}

impl Drop for Fabric {
    /// Deletes a test's keys (best effort).
    fn drop(&mut self) {
        let (urls, prefix) = match self {
            Fabric::Memory(_) => return,
            Fabric::Redis { url, prefix } => (vec![url.clone()], prefix.clone()),
            Fabric::Cluster { seeds, prefix } => (
                seeds.iter().map(|s| format!("redis://{s}")).collect(),
                prefix.clone(),
            ),
        };
        delete_redis_keys(&urls, &prefix);
    }
}

/// Runs a scenario on every backend: memory, one Redis, a Redis Cluster.
macro_rules! on_every_backend {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            use super::*;

            #[tokio::test]
            async fn memory() {
                super::$name(Fabric::memory()).await;
            }

            #[tokio::test]
            async fn redis() {
                super::$name(Fabric::redis(stringify!($name))).await;
            }

            #[tokio::test]
            async fn redis_cluster() {
                if let Some(f) = Fabric::cluster(stringify!($name)) {
                    super::$name(f).await;
                }
            }
        }
    )*};
}

on_every_backend!(
    every_event_kind_crosses_nodes_once,
    a_user_with_tabs_on_two_nodes_is_one_user,
    users_of_a_killed_node_go_offline_elsewhere_within_the_lease_once,
    a_restarted_node_does_not_resurrect_its_previous_connections,
    a_gracefully_restarted_node_lets_its_clients_resume_without_a_flap,
    every_client_resumes_at_once_after_a_graceful_restart,
    a_resume_token_works_on_any_node_without_a_flap,
    notify_decides_from_devices_on_every_node,
    a_receipt_outlives_its_reader_on_every_node,
    ranked_bulk_answers_for_the_cluster,
    invisible_set_on_one_node_hides_the_user_everywhere_once,
    host_events_are_announced_once_across_the_nodes,
    one_event_stream_is_read_from_any_node_exactly_once,
    a_ban_on_one_node_closes_the_user_everywhere_and_refuses_the_old_token,
    a_message_sent_on_one_node_stops_typing_on_another,
    in_process_queries_answer_for_the_cluster,
    what_a_dead_node_wrote_but_never_appended_is_announced_by_its_cleaner,
    data_crosses_nodes_and_the_latest_setting_wins,
    a_large_room_spans_nodes_with_counts_and_summaries,
    privacy_set_on_one_node_holds_on_every_node,
);

async fn node_on(
    backend: Arc<dyn Backend>,
    id: &str,
    config: presence_server::ServerConfig,
) -> TestServer {
    let cluster = ClusterConfig {
        node_id: id.into(),
        lease_ttl: LEASE,
        event_shards: 4,
        ..ClusterConfig::default()
    };
    TestServer::start_with(
        PresenceServer::builder()
            .config(config)
            .cluster(backend, cluster),
    )
    .await
}

async fn node_with(f: &Fabric, id: &str, config: presence_server::ServerConfig) -> TestServer {
    node_on(f.backend(), id, config).await
}

async fn node(f: &Fabric, id: &str) -> TestServer {
    node_with(f, id, calm_config()).await
}

/// Waits until every node reaches the backend (bounded).
async fn all_up(nodes: &[&TestServer]) {
    let deadline = Instant::now() + WAIT;
    while !nodes.iter().all(|n| n.server.cluster_up() == Some(true)) {
        assert!(
            Instant::now() < deadline,
            "nodes did not reach the backend in time"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn three(f: &Fabric) -> (TestServer, TestServer, TestServer) {
    let a = node(f, "a").await;
    let b = node(f, "b").await;
    let c = node(f, "c").await;
    all_up(&[&a, &b, &c]).await;
    (a, b, c)
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

async fn every_event_kind_crosses_nodes_once(f: Fabric) {
    let (a, b, c) = three(&f).await;
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
    ana.diff("user_left", "bob").await;

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

async fn a_user_with_tabs_on_two_nodes_is_one_user(f: Fabric) {
    let (a, b, c) = three(&f).await;
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

/// `data` set on one node reaches members on the others once; with tabs
/// on two nodes, the latest setting wins everywhere, and the view stays
/// that when the tab that set it closes while the other stays.
async fn data_crosses_nodes_and_the_latest_setting_wins(f: Fabric) {
    let (a, b, c) = three(&f).await;
    let mut carol = c.client("carol").await;
    carol.join("r").await;
    let mut tab_a = a.client("bob").await;
    tab_a.join("r").await;
    carol.diff("user_connected", "bob").await;
    tab_a
        .send(json!({"type": "data", "data": {"viewing": "plan"}}))
        .await;
    let (_, d) = carol.diff("data", "bob").await;
    assert_eq!(d["data"], json!({"viewing": "plan"}));
    let mut tab_b = b.client("bob").await;
    tab_b.join("r").await;
    tab_b
        .send(json!({"type": "data", "data": {"viewing": "roadmap"}}))
        .await;
    let (_, d) = carol.diff("data", "bob").await;
    assert_eq!(d["data"], json!({"viewing": "roadmap"}));
    let rest = kinds_about(&mut carol, "bob", Duration::from_millis(300)).await;
    assert!(rest.is_empty(), "once: {rest:?}");
    let (_, view) = a.get("/v1/users/bob/presence", SERVICE_KEY).await;
    assert_eq!(
        view["data"],
        json!({"viewing": "roadmap"}),
        "every node agrees"
    );
}

/// Privacy settings are the user's across the cluster: set by her socket on node A, they hide
/// her last seen from an observer on node B; her backend's change of the other setting on node
/// C, while she is offline, keeps the first; every node answers both, and she is welcomed with
/// them on a node she was never on.
async fn privacy_set_on_one_node_holds_on_every_node(f: Fabric) {
    let (a, b, c) = three(&f).await;
    let mut bob = b.client("bob").await;
    bob.join("r").await;
    let mut ana = a.client("ana").await;
    ana.join("r").await;
    bob.diff("user_connected", "ana").await;

    ana.send(json!({"type": "privacy", "last_seen": "nobody"}))
        .await;
    let told = ana.frame("self_privacy").await;
    assert_eq!(told["last_seen"], "nobody", "{told}");
    ana.send(json!({"type": "leaving"})).await;
    ana.close().await;
    let (_, gone) = bob.diff("user_disconnected", "ana").await;
    assert_eq!(gone.get("last_seen"), None, "hidden on node B: {gone}");
    bob.send(json!({"type": "watch", "users": ["ana"]})).await;
    let w = bob.frame("watching").await;
    assert_eq!(w["users"][0]["state"], "offline", "{w}");
    assert_eq!(w["users"][0].get("last_seen"), None, "{w}");
    let (_, v) = c.get("/v1/users/ana/presence", SERVICE_KEY).await;
    assert!(v["last_seen"].is_u64(), "the service key sees it: {v}");

    // Her backend turns receipts off through node C, which never held her.
    let both = json!({"user": "ana", "last_seen": "nobody", "receipts": "off"});
    let (status, now) = http(
        c.addr,
        "PUT",
        "/v1/users/ana/privacy",
        SERVICE_KEY,
        Some(r#"{"receipts":"off"}"#),
    )
    .await;
    assert_eq!((status, &now), (200, &both), "last_seen kept as set on A");
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, on_a) = a.get("/v1/users/ana/privacy", SERVICE_KEY).await;
        if on_a == both {
            break;
        }
        assert!(Instant::now() < deadline, "node A answers {on_a}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let told = json!({"type": "self_privacy", "last_seen": "nobody", "receipts": "off"});
    let mut back = b.client("ana").await;
    assert_eq!(back.next().await, told, "right after the welcome");
    // A node that follows nothing of her learns them from the records: told soon after.
    let d = node(&f, "d").await;
    all_up(&[&d]).await;
    let mut fresh = d.client("ana").await;
    assert_eq!(fresh.frame("self_privacy").await, told);
}

async fn users_of_a_killed_node_go_offline_elsewhere_within_the_lease_once(f: Fabric) {
    let (a, b, c) = three(&f).await;
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
    a.server.halt_cluster();
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

async fn a_restarted_node_does_not_resurrect_its_previous_connections(f: Fabric) {
    let a = node(&f, "a").await;
    let b = node(&f, "b").await;
    all_up(&[&a, &b]).await;
    let mut ana = a.client("ana").await;
    ana.join("r").await;
    let mut bob = b.client("bob").await;
    let snap = bob.join("r").await;
    assert_eq!(names(&snap["members"]), ["ana", "bob"]);
    a.server.halt_cluster();
    a.abort();
    // Same id again, at once: the old incarnation's records go.
    let a2 = node(&f, "a").await;
    all_up(&[&a2]).await;
    bob.diff("user_disconnected", "ana").await;
    let (_, body) = b.get("/v1/rooms/r/members", SERVICE_KEY).await;
    assert_eq!(names(&body["members"]), ["bob"]);
    drop(ana);
}

/// A client that reconnects through a load balancer lands on any node: its token names the node
/// holding its connection, which hands it over. Resumed there with its rooms, a new token of
/// that node, the old socket (if still open) superseded, and no flap for observers.
async fn a_resume_token_works_on_any_node_without_a_flap(f: Fabric) {
    let mut config = calm_config();
    config.timing.offline_grace = Duration::from_secs(3);
    let a = node_with(&f, "a", config.clone()).await;
    let b = node_with(&f, "b", config.clone()).await;
    let c = node_with(&f, "c", config).await;
    all_up(&[&a, &b, &c]).await;
    let mut bob = c.client("bob").await;
    bob.join("r").await;
    let mut ana = a.client("ana").await;
    ana.join("r").await;
    bob.diff("user_connected", "ana").await;
    let token = ana.resume_token();
    assert!(token.starts_with("a."), "the token names its node: {token}");

    // The socket drops; the client comes back on another node within the grace.
    ana.close().await;
    let asked = Instant::now();
    let mut on_b = Client::connect(&b.url("ana"), "ana", Some(&token)).await;
    eprintln!("resumed on another node in {:?}", asked.elapsed());
    assert_eq!(on_b.welcome["resumed"], true, "{}", on_b.welcome);
    let token_b = on_b.resume_token();
    assert!(token_b.starts_with("b."), "{token_b}");
    assert_eq!(names(&on_b.join("r").await["members"]), ["ana", "bob"]);
    // Past node a's leave grace: its copy of the connection went without a word.
    let seen = kinds_about(&mut bob, "ana", Duration::from_millis(800)).await;
    assert!(seen.is_empty(), "no flap for bob: {seen:?}");
    let old = Client::connect(&a.url("ana"), "ana", Some(&token)).await;
    assert_eq!(
        old.welcome["resumed"], false,
        "the old token resumes nothing any more"
    );
    old.close().await;

    // A live socket resumed elsewhere is superseded, as on one node.
    let on_c = Client::connect(&c.url("ana"), "ana", Some(&token_b)).await;
    assert_eq!(on_c.welcome["resumed"], true, "{}", on_c.welcome);
    assert_eq!(on_b.close_code().await, 4100);
    let seen = kinds_about(&mut bob, "ana", Duration::from_millis(500)).await;
    assert!(seen.is_empty(), "no flap for bob: {seen:?}");
    let (_, body) = a.get("/v1/users/ana/presence", SERVICE_KEY).await;
    assert_eq!(body["state"], "active", "{body}");

    // A token of a node that is gone starts a new connection.
    let gone = format!("z.{}", &token[2..]);
    let fresh = Client::connect(&a.url("ana"), "ana", Some(&gone)).await;
    assert_eq!(fresh.welcome["resumed"], false);
    drop((on_c, fresh));
}

/// A user's laptop on node a shows #design, their phone on node b is in the background; node
/// c, which holds neither, answers `devices` and `notify` from both, in one bus round trip.
async fn notify_decides_from_devices_on_every_node(f: Fabric) {
    let (a, b, c) = three(&f).await;
    let mut desk =
        Client::connect_with(&a.url("ana"), "ana", None, json!({"device": "desktop"})).await;
    desk.join("design").await;
    desk.join("random").await;
    desk.send(json!({"type": "view", "room": "design"})).await;
    let mut phone =
        Client::connect_with(&b.url("ana"), "ana", None, json!({"device": "mobile"})).await;
    phone.join("random").await;
    phone
        .send(json!({"type": "activity", "state": "idle", "reason": "hidden"}))
        .await;
    phone
        .send(json!({"type": "read", "room": "random", "marker": 7}))
        .await;
    phone.send(json!({"type": "ping"})).await;
    phone.frame("pong").await;
    // The records reach the store within a round.
    let deadline = Instant::now() + WAIT;
    let body = loop {
        let (_, body) = c.get("/v1/users/ana/devices", SERVICE_KEY).await;
        if body["devices"].as_array().is_some_and(|d| d.len() == 2)
            && body["devices"][1]["state"] == "idle"
            && body["devices"][0]["view"] == "design"
        {
            break body;
        }
        assert!(Instant::now() < deadline, "both devices in time: {body}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(body["complete"], true, "{body}");
    let nodes: Vec<&str> = body["devices"]
        .as_array()
        .map(|d| {
            d.iter()
                .map(|d| d["node"].as_str().unwrap_or("?"))
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(nodes, ["a", "b"]);
    let decided = |body: &serde_json::Value| {
        format!(
            "{}/{}",
            body["decision"].as_str().unwrap_or("?"),
            body["reason"].as_str().unwrap_or("?")
        )
    };
    let asked = Instant::now();
    let (_, body) = c.get("/v1/users/ana/notify?room=design", SERVICE_KEY).await;
    eprintln!("notify over 2 other nodes in {:?}", asked.elapsed());
    assert_eq!(decided(&body), "live/viewing", "{body}");
    let (_, body) = c
        .get("/v1/users/ana/notify?room=random&marker=7", SERVICE_KEY)
        .await;
    assert_eq!(
        decided(&body),
        "none/read",
        "the phone's node knows the marker: {body}"
    );
    desk.send(json!({"type": "activity", "state": "idle", "reason": "locked"}))
        .await;
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, body) = c.get("/v1/users/ana/notify?room=design", SERVICE_KEY).await;
        if decided(&body) == "push/background" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a push once both are away: {body}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The embedded API answers the same, from a node holding one of the devices.
    let n = a
        .server
        .notify(
            &presence_server::presence_core::UserId::new("ana").expect("user"),
            &presence_server::presence_core::RoomId::new("design").expect("room"),
            false,
            None,
        )
        .await;
    assert_eq!((n.decision, n.reason), (Decision::Push, Reason::Background));
    drop((desk, phone, b));
}

/// Ana reads on node a and leaves; bob, joining on node b afterwards, still sees her receipt,
/// and node c counts her among the readers.
async fn a_receipt_outlives_its_reader_on_every_node(f: Fabric) {
    let (a, b, c) = three(&f).await;
    let mut ana = a.client("ana").await;
    ana.join("r").await;
    ana.send(json!({"type": "read", "room": "r", "marker": 1042}))
        .await;
    // The marker reaches the store within a round.
    let deadline = Instant::now() + WAIT;
    loop {
        let (_, seen) = c.get("/v1/rooms/r/receipts?at=1042", SERVICE_KEY).await;
        if seen["count"] == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "ana's marker stored: {seen}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    ana.send(json!({"type": "leaving"})).await;
    ana.close().await;
    let mut bob = b.client("bob").await;
    let deadline = Instant::now() + WAIT;
    let snapshot = loop {
        let snapshot = bob.join("r").await;
        if names(&snapshot["members"]) == ["bob"] {
            break snapshot;
        }
        assert!(Instant::now() < deadline, "ana offline: {snapshot}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(
        snapshot["receipts"],
        json!([{"user": "ana", "marker": 1042}]),
        "{snapshot}"
    );
    let (_, seen) = c.get("/v1/rooms/r/receipts?at=1000", SERVICE_KEY).await;
    assert_eq!(
        (&seen["count"], &seen["users"]),
        (&json!(1), &json!([{"user": "ana", "marker": 1042}]))
    );
    drop(bob);
}

/// A ranked query of 3,000 ids asked of node c ranks users held by nodes a and b, and the
/// embedded API answers the same.
async fn ranked_bulk_answers_for_the_cluster(f: Fabric) {
    let (a, b, c) = three(&f).await;
    let mut ana = a.client("ana").await;
    ana.join("r").await;
    let mut bob = b.client("bob").await;
    bob.join("r").await;
    bob.send(json!({"type": "activity", "state": "idle", "reason": "hidden"}))
        .await;
    let mut ids: Vec<String> = (0..2_998).map(|i| format!("n{i}")).collect();
    ids.push("bob".into());
    ids.push("ana".into());
    let body = json!({"users": ids, "order": "present_first", "limit": 2}).to_string();
    let deadline = Instant::now() + WAIT;
    loop {
        let (status, page) = c.post("/v1/presence/bulk", SERVICE_KEY, &body).await;
        assert_eq!(status, 200, "{page}");
        if names(&page["users"]) == ["ana", "bob"] && page["users"][1]["state"] == "idle" {
            assert_eq!(
                page["counts"],
                json!({"active": 1, "idle": 1, "offline": 2_998})
            );
            break;
        }
        assert!(Instant::now() < deadline, "both ranked from node c: {page}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let users = ids
        .iter()
        .map(|u| presence_server::presence_core::UserId::new(u.as_str()).expect("id"))
        .collect();
    let page = c
        .server
        .ranked(users, presence_server::Order::Recent, 1, None)
        .await
        .expect("a page");
    assert_eq!(page.users[0].user.as_str(), "ana");
    assert!(page.next.is_some());
    drop((ana, bob));
}

async fn a_gracefully_restarted_node_lets_its_clients_resume_without_a_flap(f: Fabric) {
    let mut config = calm_config();
    config.timing.offline_grace = Duration::from_secs(3);
    let a = node_with(&f, "a", config.clone()).await;
    let b = node(&f, "b").await;
    all_up(&[&a, &b]).await;
    let mut ana = a.client("ana").await;
    ana.join("r").await;
    let token = ana.resume_token();
    let mut bob = b.client("bob").await;
    assert_eq!(names(&bob.join("r").await["members"]), ["ana", "bob"]);
    // Read while it stops: the close is answered, not waited out.
    let ((), code) = tokio::join!(a.stop(), ana.close_code());
    assert_eq!(code, 1001);
    // Same id, within the grace: the saved connections come back.
    let a2 = node_with(&f, "a", config).await;
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
    let ((), carol_code, back_code) =
        tokio::join!(a2.stop(), carol.close_code(), back.close_code());
    assert_eq!((carol_code, back_code), (1001, 1001));
    let a3 = node_with(&f, "a", {
        let mut c = calm_config();
        c.timing.offline_grace = Duration::from_millis(300);
        c
    })
    .await;
    all_up(&[&a3]).await;
    bob.diff("user_disconnected", "carol").await;
    drop((back, carol, a3));
}

/// Clients that reconnect the moment the restarted node listens, before it
/// has taken back its predecessor's connections, are resumed all the same.
async fn every_client_resumes_at_once_after_a_graceful_restart(f: Fabric) {
    let mut config = calm_config();
    config.timing.offline_grace = Duration::from_secs(3);
    let a = node_with(&f, "a", config.clone()).await;
    all_up(&[&a]).await;
    let mut tokens = Vec::new();
    let mut clients = Vec::new();
    for i in 0..5 {
        let name = format!("u{i}");
        let c = a.client(&name).await;
        tokens.push((name, c.resume_token()));
        clients.push(c);
    }
    let codes = futures_util::future::join_all(clients.iter_mut().map(|c| c.close_code()));
    let ((), codes) = tokio::join!(a.stop(), codes);
    assert_eq!(codes, [1001; 5]);
    let a2 = node_with(&f, "a", config).await;
    for (name, token) in &tokens {
        let back = Client::connect(&a2.url(name), name, Some(token)).await;
        assert_eq!(back.welcome["resumed"], true, "{name} resumed");
    }
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
    while node.server.cluster_up() != Some(up) {
        assert!(Instant::now() < deadline, "redis_up never became {up}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// How a test cuts one node from the backend and lets it back.
enum Cut {
    Memory(Arc<MemoryBackend>),
    Proxy(Proxy),
}

impl Cut {
    fn set(&self, down: bool) {
        match (self, down) {
            (Cut::Memory(m), _) => m.set_down(down),
            (Cut::Proxy(p), true) => p.cut(),
            (Cut::Proxy(p), false) => p.restore(),
        }
    }
}

#[tokio::test]
async fn a_node_cut_from_the_memory_backend_serves_and_converges() {
    let cluster = MemoryCluster::new();
    let cut = Arc::new(cluster.node());
    let a = node_on(cut.clone(), "a", calm_config()).await;
    let f = Fabric::Memory(cluster);
    cut_and_return(&f, a, Cut::Memory(cut)).await;
}

#[tokio::test]
async fn a_node_cut_from_redis_serves_locally_says_so_and_converges_when_it_returns() {
    if std::env::var("PRESENCE_TEST_REDIS").is_ok() {
        return; // the proxy points at the default Redis only
    }
    let f = Fabric::redis("outage");
    let proxy = Proxy::start().await;
    let a = node_on(f.backend_via(proxy.url()), "a", calm_config()).await;
    cut_and_return(&f, a, Cut::Proxy(proxy)).await;
}

async fn cut_and_return(f: &Fabric, a: TestServer, cut: Cut) {
    let b = node(f, "b").await;
    all_up(&[&a, &b]).await;
    let mut ana = a.client("ana").await;
    ana.join("r").await;
    let mut bob = b.client("bob").await;
    bob.join("r").await;
    ana.diff("user_connected", "bob").await;

    cut.set(true);
    // Any call fails now; the lease round notices within a third of the TTL.
    wait_redis(&a, false).await;
    let (status, health) = a.get("/healthz", "").await;
    assert_eq!((status, health["redis"].as_str()), (200, Some("down")));
    let (_, metrics) = http_text(a.addr, "/metrics").await;
    assert!(metrics.contains("presence_redis_up 0"), "{metrics}");

    // Node A keeps serving, from what it knows: its own users and the last
    // known state of the others (nobody is declared gone on a guess).
    let mut dan = a.client("dan").await;
    let snap = dan.join("r").await;
    assert_eq!(names(&snap["members"]), ["ana", "bob", "dan"]);
    ana.diff("user_connected", "dan").await;
    ana.send(json!({"type": "activity", "state": "idle", "reason": "hidden"}))
        .await;
    dan.diff("user_idle", "ana").await;

    cut.set(false);
    wait_redis(&a, true).await;
    // The cluster converges: B learns what happened on A meanwhile...
    let mut seen: Vec<(String, String)> = bob
        .diffs_during(Duration::from_millis(1_500))
        .await
        .iter()
        .map(|(_, d)| {
            (
                d["type"].as_str().unwrap_or("").to_owned(),
                diff_user(d).to_owned(),
            )
        })
        .collect();
    seen.sort();
    let want = [("user_connected", "dan"), ("user_idle", "ana")]
        .map(|(k, u)| (k.to_owned(), u.to_owned()));
    assert_eq!(seen, want, "each change once");
    let (_, body) = b.get("/v1/users/ana/presence", SERVICE_KEY).await;
    assert_eq!(body["state"], "idle");
    // ...and A's sockets hear only what changed: nothing here.
    let seen = dan.diffs_during(Duration::from_millis(300)).await;
    assert!(seen.is_empty(), "no restatement after the outage: {seen:?}");
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
    let f = Fabric::redis("bench");
    let mut nodes = Vec::new();
    for id in ["a", "b"] {
        let mut config = calm_config();
        config.batch_window = Duration::from_millis(window);
        config.timing.heartbeat_interval = Duration::from_secs(20);
        config.timing.heartbeat_timeout = Duration::from_secs(60);
        config.rate.burst = 10_000;
        config.rate.per_second = 10_000.0;
        nodes.push(node_with(&f, id, config).await);
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

async fn invisible_set_on_one_node_hides_the_user_everywhere_once(f: Fabric) {
    let (a, b, c) = three(&f).await;
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

/// A node as its own `presence-server` process, for SIGKILL.
struct NodeProcess {
    child: std::process::Child,
    port: u16,
}

impl NodeProcess {
    async fn start(f: &Fabric, id: &str) -> NodeProcess {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_presence-server"));
        command
            .args(["--dev-auth", "--log", "warn", "--node-id", id])
            .args(["--bind", &format!("127.0.0.1:{port}")])
            .args(["--lease-ttl-ms", &LEASE.as_millis().to_string()])
            // As the in-process nodes (`node_on`): one cluster, one shape.
            .args(["--event-shards", "4"]);
        match f {
            Fabric::Redis { url, prefix } => {
                command.args(["--redis-url", url, "--redis-prefix", prefix])
            }
            Fabric::Cluster { seeds, prefix } => command.args([
                "--redis-cluster",
                &seeds.join(","),
                "--redis-prefix",
                prefix,
            ]),
            Fabric::Memory(_) => unreachable!("a process cannot share memory"),
        };
        let child = command
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("the binary starts");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let addr: SocketAddr = ([127, 0, 0, 1], port).into();
            if TcpStream::connect(addr).await.is_ok() {
                let (_, health) = http(addr, "GET", "/healthz", "", None).await;
                if health["redis"] == "up" {
                    break;
                }
            }
            assert!(Instant::now() < deadline, "node process up in time");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        NodeProcess { child, port }
    }

    fn url(&self, user: &str) -> String {
        format!("ws://127.0.0.1:{}/ws?token={user}", self.port)
    }
}

impl Drop for NodeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Two node processes; one dies by SIGKILL: its users go offline on the
/// other within the lease, once.
async fn a_killed_node_process_goes_offline_elsewhere(f: Fabric) {
    let a = NodeProcess::start(&f, "pa").await;
    let b = NodeProcess::start(&f, "pb").await;
    let mut ana = Client::connect(&a.url("ana"), "ana", None).await;
    ana.join("r").await;
    let mut bob = Client::connect(&b.url("bob"), "bob", None).await;
    let snap = bob.join("r").await;
    assert_eq!(names(&snap["members"]), ["ana", "bob"]);
    ana.diff("user_connected", "bob").await;
    let mut a = a;
    a.child.kill().expect("SIGKILL");
    a.child.wait().expect("reaped");
    let killed = Instant::now();
    let (_, d) = tokio::time::timeout(Duration::from_secs(3), bob.diff("user_disconnected", "ana"))
        .await
        .expect("bob hears ana go");
    let took = killed.elapsed();
    println!("killed process's user offline elsewhere after {took:?} (lease {LEASE:?})");
    assert!(d["last_seen"].as_u64().is_some());
    assert!(
        took <= LEASE + LEASE / 3 + Duration::from_millis(400),
        "took {took:?}"
    );
    let again = kinds_about(&mut bob, "ana", Duration::from_millis(800)).await;
    assert!(again.is_empty(), "said once, got {again:?}");
    drop(ana);
}

#[tokio::test]
async fn a_killed_node_process_goes_offline_elsewhere_on_redis() {
    a_killed_node_process_goes_offline_elsewhere(Fabric::redis("sigkill")).await;
}

#[tokio::test]
async fn a_killed_node_process_goes_offline_elsewhere_on_the_redis_cluster() {
    if let Some(f) = Fabric::cluster("sigkill") {
        a_killed_node_process_goes_offline_elsewhere(f).await;
    }
}

/// Node processes killed with SIGKILL in the middle of bursts of changes,
/// `KILLS` times (default 4): every change an observer saw is in the
/// cluster's event stream, in order, no event comes twice, and the webhook
/// receiver gets the same events once each.
async fn nodes_killed_during_bursts_lose_no_event(f: Fabric) {
    let kills: usize = std::env::var("KILLS")
        .ok()
        .and_then(|k| k.parse().ok())
        .unwrap_or(4);
    // B delivers the webhooks (no other node has any): from the stream.
    let (hook_url, hooked) = receiver().await;
    let mut hooks = presence_server::WebhookConfig::new(vec![hook_url], "hook-secret-0123456789");
    hooks.window = Duration::from_millis(100);
    let cluster = ClusterConfig {
        node_id: "b".into(),
        lease_ttl: LEASE,
        event_shards: 4,
        ..ClusterConfig::default()
    };
    let b = TestServer::start_with(
        PresenceServer::builder()
            .config(calm_config())
            .cluster(f.backend(), cluster)
            .webhooks(hooks),
    )
    .await;
    all_up(&[&b]).await;
    let (status, mut feed) = SseReader::open(&b, SERVICE_KEY, None).await;
    assert_eq!(status, 200);
    let mut obs = b.client("obs").await;
    obs.join("r").await;
    let mut seen: Vec<(String, String)> = Vec::new();
    let mut users: Vec<String> = Vec::new();
    for k in 0..kills {
        let mut a = NodeProcess::start(&f, &format!("k{k}")).await;
        let mut clients = Vec::new();
        for i in 0..8 {
            let user = format!("k{k}u{i}");
            let mut c = Client::connect(&a.url(&user), &user, None).await;
            c.join("r").await;
            clients.push(c);
            users.push(user);
        }
        for round in 0..6 {
            let frame = if round % 2 == 0 {
                json!({"type": "activity", "state": "idle", "reason": "hidden"})
            } else {
                json!({"type": "activity", "state": "active"})
            };
            for c in &mut clients {
                c.send(frame.clone()).await;
            }
            tokio::time::sleep(Duration::from_millis(4)).await;
        }
        // The kill lands somewhere in the last rounds' writes.
        tokio::time::sleep(Duration::from_millis(10 * k as u64 % 40)).await;
        a.child.kill().expect("SIGKILL");
        a.child.wait().expect("reaped");
        drop(clients);
        // Until every user of the dead node is offline for the observer.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            // The observer lives longer than a silent socket may.
            obs.send(json!({"type": "ping"})).await;
            for (_, d) in obs.diffs_during(Duration::from_millis(100)).await {
                let kind = d["type"].as_str().unwrap_or("").to_owned();
                seen.push((kind, diff_user(&d).to_owned()));
            }
            let gone = (0..8).all(|i| {
                let user = format!("k{k}u{i}");
                seen.iter()
                    .rev()
                    .find(|(_, u)| *u == user)
                    .is_some_and(|(kind, _)| kind == "user_disconnected")
            });
            if gone {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "k{k}'s users offline in time: {seen:?}"
            );
        }
    }
    let mut stream: Vec<SseEvent> = Vec::new();
    while let Some(e) = feed.next_within(Duration::from_millis(1500)).await {
        stream.push(e);
    }
    let mut ids: Vec<&str> = stream
        .iter()
        .filter_map(|e| e.data["id"].as_str())
        .collect();
    let all = ids.len();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), all, "no event twice");
    // The webhook receiver: the same events of the selected kinds (the
    // default: connected, disconnected, idle, active, status), each once.
    let selected = |kind: &str| {
        matches!(
            kind,
            "user_connected"
                | "user_disconnected"
                | "user_left"
                | "user_idle"
                | "user_active"
                | "status"
        )
    };
    let want: Vec<&str> = stream
        .iter()
        .filter(|e| selected(&e.event))
        .filter_map(|e| e.data["id"].as_str())
        .collect();
    let deadline = Instant::now() + Duration::from_secs(5);
    let got = loop {
        let got: Vec<serde_json::Value> = hooked.lock().expect("lock").clone();
        if got.len() >= want.len() || Instant::now() > deadline {
            break got;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // Each user's in order (across users, the order of reads may differ).
    for user in &users {
        let of = |ids: &mut dyn Iterator<Item = &str>| -> Vec<String> {
            ids.filter(|id| id.ends_with(&format!(":{user}")))
                .map(str::to_owned)
                .collect()
        };
        let hooked_ids = of(&mut got.iter().filter_map(|e| e["id"].as_str()));
        assert_eq!(
            hooked_ids,
            of(&mut want.iter().copied()),
            "{user}: the webhook got the stream's events, in order, once"
        );
    }
    assert_eq!(got.len(), want.len(), "nothing else, nothing twice");
    for user in &users {
        let observed: Vec<&str> = seen
            .iter()
            .filter(|(_, u)| u == user)
            .map(|(k, _)| k.as_str())
            .collect();
        let told: Vec<&str> = stream
            .iter()
            .filter(|e| diff_user(&e.data) == user)
            .map(|e| e.event.as_str())
            .collect();
        // The observer's changes, in order, within the stream's.
        let mut rest = told.iter();
        for kind in &observed {
            assert!(
                rest.any(|t| t == kind),
                "{user}: observed {observed:?}, the stream told {told:?}"
            );
        }
    }
    println!(
        "{kills} nodes killed in bursts: {} changes observed, {} events in the stream, none missing",
        seen.len(),
        stream.len()
    );
}

/// A webhook receiver on loopback: every event of every request, in order.
async fn receiver() -> (String, Arc<std::sync::Mutex<Vec<serde_json::Value>>>) {
    let got: Arc<std::sync::Mutex<Vec<serde_json::Value>>> = Arc::default();
    let sink = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: String| {
            let sink = sink.clone();
            async move {
                let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
                let events = v["events"].as_array().cloned().unwrap_or_default();
                sink.lock().expect("lock").extend(events);
                axum::http::StatusCode::OK
            }
        }),
    );
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (format!("http://{addr}/hook"), got)
}

#[tokio::test]
async fn nodes_killed_during_bursts_lose_no_event_on_redis() {
    nodes_killed_during_bursts_lose_no_event(Fabric::redis("burstkill")).await;
}

#[tokio::test]
async fn nodes_killed_during_bursts_lose_no_event_on_the_redis_cluster() {
    if let Some(f) = Fabric::cluster("burstkill") {
        nodes_killed_during_bursts_lose_no_event(f).await;
    }
}

/// The global events about `user` the host streams yield: until `want`
/// many arrived (at most 3 s), then 300 ms more, so a duplicate shows.
async fn host_kinds(
    streams: &mut [presence_server::Events],
    user: &str,
    want: usize,
) -> Vec<String> {
    let mut kinds = Vec::new();
    let give_up = tokio::time::Instant::now() + Duration::from_secs(3);
    let mut deadline = give_up;
    loop {
        let mut got = false;
        for events in streams.iter_mut() {
            while let Ok(Some(ev)) =
                tokio::time::timeout(Duration::from_millis(5), events.recv()).await
            {
                got = true;
                if ev.global && ev.diff.user().as_str() == user {
                    kinds.push(ev.name().to_owned());
                }
            }
        }
        if kinds.len() >= want && deadline == give_up {
            deadline = tokio::time::Instant::now() + Duration::from_millis(300);
        }
        if tokio::time::Instant::now() >= deadline {
            break;
        }
        if !got {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    kinds.sort();
    kinds
}

/// Each cluster-level change reaches the host apps once in all: it is
/// announced by the node whose write caused it (or that cleaned a dead one).
async fn host_events_are_announced_once_across_the_nodes(f: Fabric) {
    let (a, b, c) = three(&f).await;
    let mut streams = [a.server.events(), b.server.events(), c.server.events()];
    let mut tab_a = a.client("bob").await;
    tab_a.join("r").await;
    let mut tab_b = b.client("bob").await;
    tab_b.join("s").await;
    tab_b
        .send(json!({"type": "activity", "state": "idle", "reason": "hidden"}))
        .await;
    tab_a
        .send(json!({"type": "activity", "state": "idle", "reason": "locked"}))
        .await;
    let seen = host_kinds(&mut streams, "bob", 2).await;
    assert_eq!(
        seen,
        ["user_connected", "user_idle"],
        "one tab idle, then both"
    );
    // The locked tab leaves: hidden is the more present reason, so nothing
    // changes. Waited out, so the other tab's leaving comes after it (in the
    // other order the reason would change on the way: a user_idle).
    tab_a.send(json!({"type": "leaving"})).await;
    tab_a.close().await;
    let seen = host_kinds(&mut streams, "bob", 0).await;
    assert!(seen.is_empty(), "{seen:?}");
    tab_b.send(json!({"type": "leaving"})).await;
    tab_b.close().await;
    let seen = host_kinds(&mut streams, "bob", 1).await;
    assert_eq!(seen, ["user_disconnected"]);
}

/// `GET /v1/events` on any node serves the whole cluster's events: a reader
/// that moves from node A to B to C with `Last-Event-ID` gets every change
/// exactly once, each user's in order, with the same ids on every node.
async fn one_event_stream_is_read_from_any_node_exactly_once(f: Fabric) {
    let (a, b, c) = three(&f).await;
    let (status, mut on_a) = SseReader::open(&a, SERVICE_KEY, None).await;
    assert_eq!(status, 200);
    let (_, mut whole) = SseReader::open(&c, SERVICE_KEY, None).await;
    let users = ["ana", "bob", "carol"];
    // What the reader of C sees, phase by phase (each phase waited out, so
    // no change is merged away within a batch window).
    let mut same: Vec<SseEvent> = Vec::new();
    let mut clients = Vec::new();
    for (user, node) in users.iter().zip([&a, &b, &c]) {
        let mut client = node.client(user).await;
        client.join("r").await;
        clients.push(client);
    }
    let phases = [
        json!({"type": "activity", "state": "idle", "reason": "hidden"}),
        json!({"type": "activity", "state": "active"}),
        json!({"type": "status", "status": "busy", "text": "deep work"}),
    ];
    for phase in std::iter::once(None).chain(phases.iter().map(Some)) {
        if let Some(frame) = phase {
            for client in &mut clients {
                client.send(frame.clone()).await;
            }
        }
        for _ in &users {
            same.push(whole.next().await);
        }
    }
    let want = ["user_connected", "user_idle", "user_active", "status"];
    let total = users.len() * want.len();
    // A few events from A, a few more from B, the rest from C.
    let mut got: Vec<SseEvent> = Vec::new();
    for _ in 0..4 {
        got.push(on_a.next().await);
    }
    drop(on_a);
    let last = got.last().and_then(|e| e.id.clone()).expect("an id");
    let (status, mut on_b) = SseReader::open(&b, SERVICE_KEY, Some(&last)).await;
    assert_eq!(status, 200);
    for _ in 0..4 {
        got.push(on_b.next().await);
    }
    drop(on_b);
    let last = got.last().and_then(|e| e.id.clone()).expect("an id");
    let (_, mut on_c) = SseReader::open(&c, SERVICE_KEY, Some(&last)).await;
    while let Some(e) = on_c.next_within(Duration::from_millis(800)).await {
        got.push(e);
    }
    let mut ids: Vec<&str> = got
        .iter()
        .map(|e| e.data["id"].as_str().unwrap_or(""))
        .collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), got.len(), "no event twice: {got:?}");
    for user in users {
        let kinds: Vec<&str> = got
            .iter()
            .filter(|e| diff_user(&e.data) == user)
            .map(|e| e.event.as_str())
            .collect();
        assert_eq!(kinds, want, "{user}'s changes, once each and in order");
    }
    assert_eq!(got.len(), total, "{got:?}");
    // A reader of one node saw the same events under the same ids.
    let key = |v: &[SseEvent]| {
        let mut k: Vec<(String, String)> = v
            .iter()
            .map(|e| {
                (
                    e.data["id"].as_str().unwrap_or("").to_owned(),
                    e.event.clone(),
                )
            })
            .collect();
        k.sort();
        k
    };
    assert_eq!(key(&same), key(&got));

    // Positions that are not ours get a clear answer.
    for (bad, code) in [
        ("17", "bad_last_event_id"),
        ("00000000.4.0.0.0.0.0", "foreign_last_event_id"),
    ] {
        let path = format!("/v1/events?last_event_id={bad}");
        let (status, body) = a.get(&path, SERVICE_KEY).await;
        assert_eq!(
            (status, body["error"]["code"].as_str()),
            (400, Some(code)),
            "{bad}"
        );
    }
}

/// `disconnect` with `revoke` on node A closes the user's sockets on B and
/// C within a bus round trip, and their old token is refused everywhere;
/// a token issued after the ban is welcome.
async fn a_ban_on_one_node_closes_the_user_everywhere_and_refuses_the_old_token(f: Fabric) {
    let (a, b, c) = three(&f).await;
    let old =
        token_with(json!({"sub": "mallory", "exp": now_secs() + 3600, "iat": now_secs() - 60}));
    let url = |n: &TestServer, t: &str| format!("ws://{}/ws?token={t}", n.addr);
    let mut on_b = Client::connect(&url(&b, &old), "mallory", None).await;
    on_b.join("r").await;
    let mut on_c = Client::connect(&url(&c, &old), "mallory", None).await;
    on_c.join("r").await;
    let mut ana = a.client("ana").await;
    ana.join("r").await;
    let (status, body) = a
        .post(
            "/v1/users/mallory/disconnect",
            SERVICE_KEY,
            r#"{"revoke":true}"#,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["closed"], 0, "nothing of mallory's on A");
    assert_eq!(body["revoked"], true);
    let banned = Instant::now();
    assert_eq!(on_b.close_code().await, 4101);
    assert_eq!(on_c.close_code().await, 4101);
    println!(
        "ban on A closed the sockets on B and C within {:?}",
        banned.elapsed()
    );
    ana.diff("user_disconnected", "mallory").await;
    // The old token comes back to any node: refused.
    for n in [&a, &b, &c] {
        let (ws, _) = tokio_tungstenite::connect_async(url(n, &old))
            .await
            .expect("upgrade");
        let mut refused = Client::raw(ws, "mallory");
        assert_eq!(refused.close_code().await, 4101, "old token refused");
    }
    let (status, _) = b.get("/v1/users/ana/presence", &old).await;
    assert_eq!(status, 401, "the old token is refused over HTTP too");
    // A token issued after the ban is welcome.
    let fresh =
        token_with(json!({"sub": "mallory", "exp": now_secs() + 3600, "iat": now_secs() + 1}));
    let mut back = Client::connect(&url(&c, &fresh), "mallory", None).await;
    back.join("r").await;
    ana.diff("user_connected", "mallory").await;
}

/// `messages/sent` on any node stops the user's typing wherever they type.
async fn a_message_sent_on_one_node_stops_typing_on_another(f: Fabric) {
    // Typing lasts 10 s unless stopped: a stop in time is the order's.
    let config = || {
        let mut c = calm_config();
        c.timing.typing_ttl = Duration::from_secs(10);
        c
    };
    let a = node_with(&f, "a", config()).await;
    let b = node_with(&f, "b", config()).await;
    all_up(&[&a, &b]).await;
    let mut bob = b.client("bob").await;
    bob.join("r").await;
    let mut ana = a.client("ana").await;
    ana.join("r").await;
    bob.send(json!({"type": "typing", "room": "r", "active": true}))
        .await;
    ana.diff("typing_started", "bob").await;
    let (status, _) = a
        .post(
            "/v1/rooms/r/messages/sent",
            SERVICE_KEY,
            r#"{"user":"bob"}"#,
        )
        .await;
    assert_eq!(status, 204);
    let sent = Instant::now();
    ana.diff("typing_stopped", "bob").await;
    assert!(
        sent.elapsed() < Duration::from_secs(1),
        "stopped at once, not at the typing expiry: {:?}",
        sent.elapsed()
    );
}

/// `presence` and `is_active_anywhere` on node A answer for a user whose
/// only socket is on node B.
async fn in_process_queries_answer_for_the_cluster(f: Fabric) {
    let (a, b, _c) = three(&f).await;
    let bob_id = presence_server::presence_core::UserId::new("bob").expect("id");
    let mut ana = a.client("ana").await;
    ana.join("r").await;
    let mut bob = b.client("bob").await;
    bob.join("r").await;
    // Seen on A's sockets, so the round that wrote it is done.
    ana.diff("user_connected", "bob").await;
    let v = a.server.presence(&bob_id).await.expect("bob is known");
    assert_eq!(
        v.state,
        presence_server::presence_core::PresenceState::Active
    );
    assert!(a.server.is_active_anywhere(&bob_id).await);
    bob.send(json!({"type": "status", "status": "invisible"}))
        .await;
    bob.send(json!({"type": "activity", "state": "idle", "reason": "hidden"}))
        .await;
    ana.diff("user_disconnected", "bob").await;
    let v = a.server.presence(&bob_id).await.expect("bob is known");
    assert_eq!(
        v.state,
        presence_server::presence_core::PresenceState::Offline,
        "invisible"
    );
    assert!(!a.server.is_active_anywhere(&bob_id).await, "idle on B");
    bob.send(json!({"type": "activity", "state": "active"}))
        .await;
    let deadline = Instant::now() + WAIT;
    while !a.server.is_active_anywhere(&bob_id).await {
        assert!(Instant::now() < deadline, "active on B, invisible or not");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A node that dies after its writes and before its appends leaves its
/// changes owed beside the records: the node that cleans up after it
/// announces them, in order, before the users' going offline.
async fn what_a_dead_node_wrote_but_never_appended_is_announced_by_its_cleaner(f: Fabric) {
    let (a, b, _c) = three(&f).await;
    let (_, mut feed) = SseReader::open(&b, SERVICE_KEY, None).await;
    let mut obs = b.client("obs").await;
    obs.join("r").await;
    a.server.halt_appends();
    let mut ana = a.client("ana").await;
    ana.join("r").await;
    obs.diff("user_connected", "ana").await;
    ana.send(json!({"type": "status", "status": "busy"})).await;
    obs.diff("status", "ana").await;
    ana.send(json!({"type": "activity", "state": "idle", "reason": "hidden"}))
        .await;
    obs.diff("user_idle", "ana").await;
    // Bob comes and goes before A dies: A's record of him holds nothing
    // any more, but his going is owed too.
    let mut bob = a.client("bob").await;
    bob.join("r").await;
    obs.diff("user_connected", "bob").await;
    bob.send(json!({"type": "leaving"})).await;
    bob.close().await;
    obs.diff("user_disconnected", "bob").await;
    // Seen by observers, never appended: A dies.
    a.server.halt_cluster();
    a.abort();
    obs.diff("user_disconnected", "ana").await;
    let mut told: Vec<(String, String)> = Vec::new();
    while let Some(e) = feed.next_within(Duration::from_millis(800)).await {
        if e.data["global"] == true {
            told.push((diff_user(&e.data).to_owned(), e.event.clone()));
        }
    }
    let about = |user: &str| -> Vec<&str> {
        told.iter()
            .filter(|(u, _)| u == user)
            .map(|(_, k)| k.as_str())
            .collect()
    };
    assert_eq!(
        about("ana"),
        ["user_connected", "status", "user_idle", "user_disconnected"],
        "every change, in order, once"
    );
    assert_eq!(about("bob"), ["user_connected", "user_disconnected"]);
    drop(ana);
}

/// A node that starts while its backend is down serves its own sockets at
/// once (snapshots, `watching`) and joins the cluster when it comes up.
#[tokio::test]
async fn a_node_started_without_its_backend_serves_and_joins_later() {
    let cluster = MemoryCluster::new();
    let cut = Arc::new(cluster.node());
    cut.set_down(true);
    let a = node_on(cut.clone(), "a", calm_config()).await;
    let f = Fabric::Memory(cluster);
    let b = node(&f, "b").await;
    all_up(&[&b]).await;
    let mut bob = b.client("bob").await;
    bob.join("r").await;
    let mut ana = a.client("ana").await;
    let snap = tokio::time::timeout(WAIT, ana.join("r"))
        .await
        .expect("a snapshot while the backend is down");
    assert_eq!(names(&snap["members"]), ["ana"]);
    ana.send(json!({"type": "watch", "users": ["bob"]})).await;
    let w = ana.frame("watching").await;
    assert_eq!(w["users"][0]["state"], "offline", "not known yet");
    cut.set_down(false);
    all_up(&[&a]).await;
    ana.diff("user_connected", "bob").await;
    bob.diff("user_connected", "ana").await;
}

/// Each node decides the mode for its own sockets from the room's members
/// it knows, every node's: a room of 3 + 3 members is large (threshold 5)
/// on both, summaries count members of both, and it is small again on both
/// once 3 are left.
async fn a_large_room_spans_nodes_with_counts_and_summaries(f: Fabric) {
    let config = || presence_server::ServerConfig {
        large_room_members: 5,
        large_room_interval: Duration::from_millis(300),
        ..calm_config()
    };
    let a = node_with(&f, "a", config()).await;
    let b = node_with(&f, "b", config()).await;
    all_up(&[&a, &b]).await;
    let mut on_a = Vec::new();
    let mut on_b = Vec::new();
    for i in 0..3 {
        let mut c = a.client(&format!("a{i}")).await;
        c.join("hall").await;
        on_a.push(c);
        let mut c = b.client(&format!("b{i}")).await;
        c.join("hall").await;
        on_b.push(c);
    }
    let counts = |f: &serde_json::Value| {
        (
            f["counts"]["online"].as_u64(),
            f["counts"]["active"].as_u64(),
            f["counts"]["idle"].as_u64(),
        )
    };
    // Until a large snapshot of the whole room (an unasked one, or a summary
    // after it, may come in either order of the members' arrival).
    async fn large_snapshot(c: &mut Client) -> serde_json::Value {
        loop {
            let f = c.frame("snapshot").await;
            if f["large"] == true {
                return f;
            }
        }
    }
    let sa = large_snapshot(&mut on_a[0]).await;
    let sb = large_snapshot(&mut on_b[0]).await;
    for s in [&sa, &sb] {
        let online = counts(s).0.unwrap_or(0);
        assert!((5..=6).contains(&online), "large at 5 or 6: {s}");
    }

    // Diffs from while the room was small.
    on_a[0].diffs_during(Duration::ZERO).await;
    // A change on B is counted in the summaries on A.
    on_b[1]
        .send(json!({"type": "activity", "state": "idle", "reason": "hidden"}))
        .await;
    let deadline = Instant::now() + WAIT;
    loop {
        assert!(
            Instant::now() < deadline,
            "no summary on A with the idle member"
        );
        let s = on_a[0].frame("summary").await;
        if counts(&s) == (Some(6), Some(5), Some(1)) {
            break;
        }
    }
    let rest = on_a[0].diffs_during(Duration::from_millis(400)).await;
    assert!(
        rest.iter().all(|(room, _)| room.is_none()),
        "no room diffs in a large room: {rest:?}"
    );

    // Three leave on B: 3 left, below 4, small again on both nodes.
    for c in &mut on_b {
        c.send(json!({"type": "leave", "room": "hall"})).await;
    }
    for c in on_a.iter_mut().take(2) {
        let deadline = Instant::now() + WAIT;
        loop {
            assert!(Instant::now() < deadline, "{}: not small again", c.user);
            let s = c.frame("snapshot").await;
            if s.get("large").is_none() {
                assert_eq!(names(&s["members"]), ["a0", "a1", "a2"], "{s}");
                break;
            }
        }
    }
    on_a[2]
        .send(json!({"type": "activity", "state": "idle", "reason": "hidden"}))
        .await;
    let (room, _) = on_a[0].diff("user_idle", "a2").await;
    assert_eq!(room.as_deref(), Some("hall"), "per-change diffs again");
}
