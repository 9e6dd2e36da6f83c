//! View changes as host events (`--viewing-events`): off by default; on,
//! they reach the feed, webhooks and the cluster's stream (once), and never
//! another user's socket.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::routing::post;
use common::*;
use presence_server::{ClusterConfig, PresenceServer, RedisBackend, RedisConfig, WebhookConfig};
use serde_json::{Value, json};

const HOOK_SECRET: &str = "hook-secret-0123456789";

/// A webhook endpoint on loopback that keeps every event it gets.
#[derive(Clone, Default)]
struct Receiver(Arc<Mutex<Vec<Value>>>);

impl Receiver {
    async fn start() -> (Receiver, String) {
        async fn hook(State(r): State<Receiver>, body: String) -> &'static str {
            let v: Value = serde_json::from_str(&body).expect("a JSON body");
            let events = v["events"].as_array().cloned().unwrap_or_default();
            r.0.lock().expect("lock").extend(events);
            "ok"
        }
        let r = Receiver::default();
        let app = axum::Router::new()
            .route("/hook", post(hook))
            .with_state(r.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr: SocketAddr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        (r, format!("http://{addr}/hook"))
    }

    /// Waits (bounded) until the events got satisfy `done`.
    async fn wait_for(&self, what: &str, done: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let got = self.0.lock().expect("lock").clone();
            if done(&got) {
                return got;
            }
            assert!(Instant::now() < deadline, "{what}: got {got:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn viewing_hooks(url: &str) -> WebhookConfig {
    let mut w = WebhookConfig::new(vec![url.to_owned()], HOOK_SECRET);
    w.kinds = vec!["viewing".into()];
    w.window = Duration::from_millis(50);
    w
}

/// The rooms of `user`'s `viewing` events, in order (`None`: null).
fn viewed(events: &[Value], user: &str) -> Vec<Option<String>> {
    events
        .iter()
        .filter(|e| e["type"] == "viewing" && e["user"] == user)
        .map(|e| e["room"].as_str().map(str::to_owned))
        .collect()
}

/// Reads `who`'s frames until one mentions `until`; fails if one before it
/// mentions a `viewing`.
async fn no_viewing_before(who: &mut Client, until: &str) {
    loop {
        let f = who.next().await.to_string();
        assert!(!f.contains("\"viewing\""), "a socket got a view: {f}");
        if f.contains(until) {
            return;
        }
    }
}

#[tokio::test]
async fn a_view_reaches_the_feed_and_a_webhook_and_no_other_users_socket() {
    let (receiver, url) = Receiver::start().await;
    let mut config = fast_config();
    config.viewing_events = true;
    let srv = TestServer::start_with(
        PresenceServer::builder()
            .config(config)
            .webhooks(viewing_hooks(&url)),
    )
    .await;
    let (status, mut feed) = SseReader::open(&srv, SERVICE_KEY, None).await;
    assert_eq!(status, 200);
    let mut bob = srv.client("bob").await;
    bob.join("r").await;
    bob.send(json!({"type": "watch", "users": ["ana"]})).await;
    bob.frame("watching").await;
    let mut ana = srv.adopt(
        Client::connect_with(&srv.url("ana"), "ana", None, json!({"device": "desktop"})).await,
    );
    let conn = ana.welcome["conn"].clone();
    ana.join("r").await;
    ana.send(json!({"type": "view", "room": "r"})).await;
    // The same view again is no news.
    ana.send(json!({"type": "view", "room": "r"})).await;
    ana.send(json!({"type": "activity", "state": "idle", "reason": "no_input"}))
        .await;

    let e = feed.find("viewing", "ana").await;
    assert_eq!(
        (&e.data["room"], &e.data["conn"], &e.data["device"]),
        (&json!("r"), &conn, &json!("desktop")),
        "{:?}",
        e.data
    );
    assert_eq!(
        (&e.data["global"], &e.data["rooms"]),
        (&json!(false), &json!([]))
    );
    assert!(e.data.get("node").is_none(), "one node: no node");
    assert_eq!(
        e.id.as_deref(),
        e.data["id"].as_u64().map(|n| n.to_string()).as_deref()
    );
    // Everything bob hears up to ana's idle, and no view among it.
    no_viewing_before(&mut bob, "user_idle").await;

    // Leaving the room shown ends the view.
    ana.send(json!({"type": "leave", "room": "r"})).await;
    let e = feed.find("viewing", "ana").await;
    assert_eq!(e.data["room"], Value::Null, "{:?}", e.data);
    let hooked = receiver
        .wait_for("both views", |e| viewed(e, "ana").len() >= 2)
        .await;
    assert_eq!(viewed(&hooked, "ana"), [Some("r".to_owned()), None]);
    assert!(
        hooked.iter().all(|e| e["type"] == "viewing"),
        "only the selected kind: {hooked:?}"
    );
    // Nor the end of it: bob, watching ana, hears her next change only.
    ana.send(json!({"type": "activity", "state": "active"}))
        .await;
    no_viewing_before(&mut bob, "user_active").await;
}

#[tokio::test]
async fn without_the_flag_views_are_no_events_and_a_viewing_webhook_is_refused() {
    let srv = TestServer::start(fast_config()).await;
    let (_, mut feed) = SseReader::open(&srv, SERVICE_KEY, None).await;
    let mut ana = srv.client("ana").await;
    ana.join("r").await;
    ana.send(json!({"type": "view", "room": "r"})).await;
    ana.send(json!({"type": "activity", "state": "idle", "reason": "no_input"}))
        .await;
    loop {
        let e = feed.next().await;
        assert_ne!(e.event, "viewing", "off by default");
        if e.event == "user_idle" {
            break;
        }
    }

    let refused = PresenceServer::builder()
        .config(fast_config())
        .webhooks(viewing_hooks("http://127.0.0.1:9/hook"))
        .auth(presence_server::JwtAuth::hs256(SECRET).expect("secret"))
        .build()
        .map(drop)
        .expect_err("viewing without view events");
    assert!(
        refused.to_string().contains("--viewing-events"),
        "{refused}"
    );
}

#[tokio::test]
async fn over_a_redis_cluster_the_stream_and_a_webhook_carry_each_view_once() {
    let Ok(seeds) = std::env::var("PRESENCE_TEST_REDIS_CLUSTER") else {
        println!(
            "PRESENCE_TEST_REDIS_CLUSTER unset: no Redis Cluster here (cargo xtask test starts one)"
        );
        return;
    };
    let seeds: Vec<String> = seeds.split(',').map(str::to_owned).collect();
    let prefix = format!("ptest:viewing:{}:{}", std::process::id(), now_secs());
    let (receiver, url) = Receiver::start().await;
    let mut nodes = Vec::new();
    for id in ["a", "b"] {
        let mut redis = RedisConfig::cluster(seeds.clone());
        redis.prefix = prefix.clone();
        let backend = Arc::new(RedisBackend::new(redis).expect("redis cluster config"));
        let cc = ClusterConfig {
            node_id: id.into(),
            lease_ttl: Duration::from_millis(600),
            ..ClusterConfig::default()
        };
        let mut config = calm_config();
        config.viewing_events = true;
        let builder = PresenceServer::builder()
            .config(config)
            .cluster(backend, cc)
            .webhooks(viewing_hooks(&url));
        nodes.push(TestServer::start_with(builder).await);
    }
    let deadline = Instant::now() + WAIT;
    while !nodes.iter().all(|n| n.server.cluster_up() == Some(true)) {
        assert!(Instant::now() < deadline, "nodes up");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // A reader on the other node, from the stream's end now.
    let (status, mut feed) = SseReader::open(&nodes[1], SERVICE_KEY, None).await;
    assert_eq!(status, 200);
    let mut ana = nodes[0].client("ana").await;
    let conn = ana.welcome["conn"].clone();
    ana.join("r").await;
    ana.send(json!({"type": "view", "room": "r"})).await;
    ana.send(json!({"type": "view", "room": null})).await;

    // One shard per user, in the order appended: a repeat of the first
    // view would come before the second.
    let mut views = Vec::new();
    while views.len() < 2 {
        let e = feed.next().await;
        if e.event == "viewing" {
            views.push(e.data);
        }
    }
    assert_eq!(viewed(&views, "ana"), [Some("r".to_owned()), None]);
    for v in &views {
        assert_eq!((&v["node"], &v["conn"]), (&json!("a"), &conn), "{v}");
        let id = v["id"].as_str().unwrap_or_default();
        assert!(id.starts_with("v:a."), "an id of node a's run: {id}");
    }
    assert_ne!(views[0]["id"], views[1]["id"]);
    let hooked = receiver
        .wait_for("both views", |e| viewed(e, "ana").len() >= 2)
        .await;
    assert_eq!(
        viewed(&hooked, "ana"),
        [Some("r".to_owned()), None],
        "once per endpoint, though both nodes deliver"
    );
    let urls: Vec<String> = seeds.iter().map(|s| format!("redis://{s}")).collect();
    delete_redis_keys(&urls, &prefix);
}
