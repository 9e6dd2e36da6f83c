//! The HTTP API agrees with the sockets and shows each token only what its
//! user may see.

mod common;

use common::*;
use presence_server::presence_core::{RoomId, UserId};
use presence_server::{Identity, PresenceServer, SyncAudience};
use serde_json::json;

/// Rooms named `secret-*` are for ana only; nobody may watch anybody.
struct Strict;

impl SyncAudience for Strict {
    fn may_join(&self, who: &Identity, room: &RoomId) -> bool {
        !room.as_str().starts_with("secret-") || who.user.as_str() == "ana"
    }
    fn may_watch(&self, _watcher: &Identity, _target: &UserId) -> bool {
        false
    }
}

async fn strict_server() -> TestServer {
    TestServer::start_with(
        PresenceServer::builder()
            .config(calm_config())
            .audience(Strict),
    )
    .await
}

#[tokio::test]
async fn the_http_api_agrees_with_what_socket_clients_see() {
    let srv = TestServer::start(calm_config()).await;
    let mut ana = srv.client("ana").await;
    let mut bob = srv.client("bob").await;
    ana.join("r").await;
    bob.join("r").await;
    bob.send(json!({"type": "activity", "state": "idle", "reason": "hidden"}))
        .await;
    bob.send(json!({"type": "status", "status": "busy", "text": "focus"}))
        .await;
    ana.diff("status", "bob").await;

    let (status, view) = srv.get("/v1/users/bob/presence", &token("ana")).await;
    assert_eq!(status, 200);
    assert_eq!(view["state"], "idle");
    assert_eq!(view["reason"], "hidden");
    assert_eq!(view["status"], "busy");
    assert_eq!(view["text"], "focus");

    bob.send(json!({"type": "read", "room": "r", "marker": 41}))
        .await;
    ana.diff("read", "bob").await;
    let snap = ana.join("r").await;
    let (status, room) = srv.get("/v1/rooms/r/members", &token("ana")).await;
    assert_eq!(status, 200);
    assert_eq!(room["members"], snap["members"], "same view as a snapshot");
    assert_eq!(room["receipts"], json!([{"user": "bob", "marker": 41}]));
    assert_eq!(room["receipts"], snap["receipts"]);

    let (status, bulk) = srv
        .post(
            "/v1/presence/bulk",
            &token("ana"),
            r#"{"users":["ana","bob","nobody"]}"#,
        )
        .await;
    assert_eq!(status, 200);
    let states: Vec<&str> = bulk["users"]
        .as_array()
        .expect("users")
        .iter()
        .map(|v| v["state"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(states, ["active", "idle", "offline"]);

    bob.send(json!({"type": "leave", "room": "r"})).await;
    ana.diff("user_left", "bob").await;
    let (_, room) = srv.get("/v1/rooms/r/members", SERVICE_KEY).await;
    assert_eq!(names(&room["members"]), ["ana"]);
    srv.finish().await;
}

#[tokio::test]
async fn the_http_api_refuses_what_the_token_may_not_see() {
    let srv = strict_server().await;
    let mut ana = srv.client("ana").await;
    ana.join("secret-plans").await;
    let mut bob = srv.client("bob").await;
    bob.join("lobby").await;
    // Bob may not join ana's secret room over the socket...
    bob.send(json!({"type": "join", "room": "secret-plans"}))
        .await;
    assert_eq!(bob.frame("error").await["code"], "forbidden");
    bob.send(json!({"type": "watch", "users": ["ana"]})).await;
    assert_eq!(bob.frame("error").await["code"], "forbidden");
    // ...nor read it, nor ana, over HTTP.
    let (status, body) = srv
        .get("/v1/rooms/secret-plans/members", &token("bob"))
        .await;
    assert_eq!(status, 403);
    assert_eq!(body["error"]["code"], "forbidden");
    let (status, _) = srv.get("/v1/users/ana/presence", &token("bob")).await;
    assert_eq!(status, 403);
    let (status, bulk) = srv
        .post(
            "/v1/presence/bulk",
            &token("bob"),
            r#"{"users":["ana","bob"]}"#,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(bulk["forbidden"], json!(["ana"]));
    assert_eq!(names(&bulk["users"]), ["bob"]);
    // Sharing a room makes them visible to each other.
    ana.join("lobby").await;
    let (status, view) = srv.get("/v1/users/ana/presence", &token("bob")).await;
    assert_eq!(status, 200);
    assert_eq!(view["state"], "active");
    // The service key sees everything; no token or a bad one sees nothing.
    let (status, _) = srv.get("/v1/rooms/secret-plans/members", SERVICE_KEY).await;
    assert_eq!(status, 200);
    let (status, body) = srv.get("/v1/users/ana/presence", "").await;
    assert_eq!(status, 401);
    assert_eq!(body["error"]["code"], "unauthorized");
    let (status, _) = srv.get("/v1/users/ana/presence", "nope").await;
    assert_eq!(status, 401);
    srv.finish().await;
}

#[tokio::test]
async fn bad_api_requests_get_clear_json_errors() {
    let srv = TestServer::start(calm_config()).await;
    let (status, body) = srv.post("/v1/presence/bulk", SERVICE_KEY, "{nope").await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "malformed");
    let many: Vec<String> = (0..501).map(|i| format!("u{i}")).collect();
    let (status, body) = srv
        .post(
            "/v1/presence/bulk",
            SERVICE_KEY,
            &json!({ "users": many }).to_string(),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "invalid_field");
    // Past the bulk route's 2 MiB (a ranked query's 10,000 ids).
    let huge = format!(r#"{{"users":["{}"]}}"#, "x".repeat(3_000_000));
    let (status, body) = srv.post("/v1/presence/bulk", SERVICE_KEY, &huge).await;
    assert_eq!(status, 413);
    assert_eq!(body["error"]["code"], "too_large");
    let (status, _) = srv.get("/healthz", "").await;
    assert_eq!(status, 200);
    srv.finish().await;
}

#[tokio::test]
async fn metrics_count_connections_events_and_resumes() {
    let srv = TestServer::start(calm_config()).await;
    let mut ana = srv.client("ana").await;
    ana.join("r").await;
    let token_ = ana.resume_token();
    drop(ana);
    let _ana = srv.adopt(Client::connect(&srv.url("ana"), "ana", Some(&token_)).await);
    let (status, _) = srv.get("/metrics", "").await;
    assert_eq!(status, 200);
    let text = metrics_text(&srv).await;
    for needle in [
        "presence_connections 1",
        "presence_online_users 1",
        "presence_resumes_total 1",
        "presence_events_total{kind=\"user_connected\"}",
        "presence_frames_out_total",
        "presence_bytes_out_total",
        "presence_time_to_offline_seconds_bucket",
        "presence_fanout_deliveries_bucket",
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
    srv.finish().await;
}

async fn metrics_text(srv: &TestServer) -> String {
    http_text(srv.addr, "/metrics").await.1
}

#[tokio::test]
async fn server_actions_over_http_act_like_the_rust_api() {
    let srv = TestServer::start(calm_config()).await;
    let mut ana = srv.client("ana").await;
    let mut bob = srv.client("bob").await;
    ana.join("r").await;
    bob.join("r").await;
    bob.send(json!({"type": "activity", "state": "idle", "reason": "blurred"}))
        .await;
    ana.diff("user_idle", "bob").await;
    let (status, counts) = srv.get("/v1/rooms/r/count", SERVICE_KEY).await;
    assert_eq!(status, 200);
    assert_eq!(
        counts,
        json!({"room": "r", "counts": {"online": 2, "active": 1, "idle": 1}})
    );

    // The app stored bob's message: his typing stops for everyone.
    bob.send(json!({"type": "typing", "room": "r", "active": true}))
        .await;
    ana.diff("typing_started", "bob").await;
    let (status, _) = srv
        .post(
            "/v1/rooms/r/messages/sent",
            SERVICE_KEY,
            r#"{"user":"bob"}"#,
        )
        .await;
    assert_eq!(status, 204);
    ana.diff("typing_stopped", "bob").await;

    // Only the service key may act.
    let (status, _) = srv
        .post(
            "/v1/rooms/r/messages/sent",
            &token("ana"),
            r#"{"user":"bob"}"#,
        )
        .await;
    assert_eq!(status, 403);
    let (status, _) = srv
        .post("/v1/users/bob/disconnect", SERVICE_KEY, r#"{"code":4999}"#)
        .await;
    assert_eq!(status, 400);
    let (status, body) = srv
        .post("/v1/users/bob/disconnect", SERVICE_KEY, r#"{"code":4101}"#)
        .await;
    assert_eq!((status, &body["closed"]), (200, &json!(1)));
    assert_eq!(bob.close_code().await, 4101);
    // After the grace, observers see bob go.
    ana.diff("user_disconnected", "bob").await;
    srv.finish().await;
}

#[tokio::test]
async fn the_router_merges_into_an_app_with_its_own_healthz() {
    use axum::routing::get;
    let server = PresenceServer::builder()
        .config(calm_config())
        .auth(presence_server::JwtAuth::hs256(SECRET).expect("secret"))
        .build()
        .expect("builds");
    let app = axum::Router::new()
        .route("/healthz", get(|| async { "the app's own" }))
        .merge(server.router())
        .nest("/presence", server.ops_router());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let serving = tokio::spawn(async move { axum::serve(listener, app).await });
    let (_, own) = http_text(addr, "/healthz").await;
    assert!(own.ends_with("the app's own"), "{own}");
    let (status, health) = http(addr, "GET", "/presence/healthz", "", None).await;
    assert_eq!((status, &health["status"]), (200, &json!("ok")));
    let (status, _) = http_text(addr, "/presence/metrics").await;
    assert_eq!(status, 200);
    let mut c = Client::connect(
        &format!("ws://{addr}/ws?token={}", token("ana")),
        "ana",
        None,
    )
    .await;
    c.send(json!({"type": "ping"})).await;
    c.frame("pong").await;
    serving.abort();
}

#[tokio::test]
async fn member_lists_come_in_pages_sorted_by_id() {
    let srv = TestServer::start(calm_config()).await;
    let mut clients = Vec::new();
    for user in ["dan", "ana", "eve", "bob", "cat"] {
        let mut c = srv.client(user).await;
        c.join("r").await;
        c.send(json!({"type": "read", "room": "r", "marker": 7}))
            .await;
        clients.push(c);
    }
    let mut seen = Vec::new();
    let mut path = "/v1/rooms/r/members?limit=2".to_owned();
    let mut pages = 0;
    loop {
        let (status, page) = srv.get(&path, SERVICE_KEY).await;
        assert_eq!(status, 200, "{page}");
        pages += 1;
        let names = names(&page["members"]);
        assert!(names.len() <= 2);
        let marked: Vec<&str> = page["receipts"]
            .as_array()
            .map(|r| r.iter().filter_map(|r| r["user"].as_str()).collect())
            .unwrap_or_default();
        for user in &marked {
            assert!(
                names.iter().any(|n| n == user),
                "receipts of this page only"
            );
        }
        seen.extend(names);
        match page["next"].as_str() {
            Some(next) => path = format!("/v1/rooms/r/members?limit=2&after={next}"),
            None => break,
        }
        assert!(pages < 10, "pages end");
    }
    assert_eq!(seen, ["ana", "bob", "cat", "dan", "eve"]);
    assert_eq!(pages, 3);
    for bad in ["limit=0", "limit=1001", "limit=x", "after=a%20b"] {
        let (status, body) = srv
            .get(&format!("/v1/rooms/r/members?{bad}"), SERVICE_KEY)
            .await;
        assert_eq!(status, 400, "{bad}: {body}");
        assert_eq!(body["error"]["code"], "invalid_field");
    }
    drop(clients);
}

/// `notify` and `devices` over real sockets on one node: each rule a socket can reach, every
/// bad parameter a 400 with its code, an unknown user a decision, and the service key only.
#[tokio::test]
async fn notify_decides_from_the_users_devices_and_refuses_bad_questions() {
    let mut config = calm_config();
    config.notify_idle_after = std::time::Duration::from_millis(300);
    let srv = TestServer::start(config).await;
    let notify = |q: &str| format!("/v1/users/ana/notify?{q}");
    let decided = |body: &serde_json::Value| {
        (
            body["decision"].as_str().unwrap_or("?").to_owned(),
            body["reason"].as_str().unwrap_or("?").to_owned(),
        )
    };
    let (status, body) = srv.get(&notify("room=design"), SERVICE_KEY).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        decided(&body),
        ("push".into(), "offline".into()),
        "an unknown user"
    );

    let mut desk = srv.adopt(
        Client::connect_with(&srv.url("ana"), "ana", None, json!({"device": "desktop"})).await,
    );
    desk.join("design").await;
    desk.join("random").await;
    let mut phone = srv.adopt(
        Client::connect_with(&srv.url("ana"), "ana", None, json!({"device": "mobile"})).await,
    );
    phone.join("random").await;
    phone
        .send(json!({"type": "activity", "state": "idle", "reason": "hidden"}))
        .await;
    desk.send(json!({"type": "view", "room": "design"})).await;
    // A view of a room not joined is refused, naming the room.
    phone.send(json!({"type": "view", "room": "design"})).await;
    let e = phone.frame("error").await;
    assert_eq!(
        (&e["code"], &e["room"]),
        (&json!("not_in_room"), &json!("design"))
    );
    desk.send(json!({"type": "ping"})).await;
    desk.frame("pong").await;

    let (_, body) = srv.get("/v1/users/ana/devices", SERVICE_KEY).await;
    let kinds: Vec<(&str, &str, Option<&str>)> = body["devices"]
        .as_array()
        .expect("devices")
        .iter()
        .map(|d| {
            (
                d["kind"].as_str().unwrap_or("?"),
                d["state"].as_str().unwrap_or("?"),
                d["view"].as_str(),
            )
        })
        .collect();
    assert_eq!(
        kinds,
        [
            ("desktop", "active", Some("design")),
            ("mobile", "idle", None)
        ],
        "{body}"
    );
    assert_eq!(body["complete"], true);

    let (_, body) = srv.get(&notify("room=design"), SERVICE_KEY).await;
    assert_eq!(decided(&body), ("live".into(), "viewing".into()), "{body}");
    let (_, body) = srv.get(&notify("room=random"), SERVICE_KEY).await;
    assert_eq!(decided(&body), ("live".into(), "active".into()));
    desk.send(json!({"type": "status", "status": "busy"})).await;
    desk.frame("self_status").await;
    let (_, body) = srv.get(&notify("room=random"), SERVICE_KEY).await;
    assert_eq!(decided(&body), ("none".into(), "busy".into()));
    let (_, body) = srv
        .get(&notify("room=random&mention=true"), SERVICE_KEY)
        .await;
    assert_eq!(decided(&body), ("live".into(), "active".into()));
    desk.send(json!({"type": "read", "room": "random", "marker": 1042}))
        .await;
    desk.send(json!({"type": "status", "status": "available"}))
        .await;
    desk.frame("self_status").await;
    let (_, body) = srv
        .get(&notify("room=random&marker=1042"), SERVICE_KEY)
        .await;
    assert_eq!(decided(&body), ("none".into(), "read".into()));
    // The laptop idle without input (a report comes idle_after after the last input, which is
    // past the 300 ms threshold): a push; hidden too, everything is in the background.
    desk.send(json!({"type": "activity", "state": "idle", "reason": "no_input"}))
        .await;
    desk.send(json!({"type": "ping"})).await;
    desk.frame("pong").await;
    let (_, body) = srv.get(&notify("room=design"), SERVICE_KEY).await;
    assert_eq!(decided(&body), ("push".into(), "idle".into()), "{body}");
    desk.send(json!({"type": "activity", "state": "idle", "reason": "hidden"}))
        .await;
    desk.send(json!({"type": "ping"})).await;
    desk.frame("pong").await;
    let (_, body) = srv.get(&notify("room=design"), SERVICE_KEY).await;
    assert_eq!(decided(&body), ("push".into(), "background".into()));
    // Input again: live at once.
    desk.send(json!({"type": "activity", "state": "active"}))
        .await;
    desk.send(json!({"type": "ping"})).await;
    desk.frame("pong").await;
    let (_, body) = srv.get(&notify("room=design"), SERVICE_KEY).await;
    assert_eq!(decided(&body), ("live".into(), "viewing".into()));
    // Leaving the room ends its view.
    desk.send(json!({"type": "leave", "room": "design"})).await;
    desk.send(json!({"type": "ping"})).await;
    desk.frame("pong").await;
    let (_, body) = srv.get(&notify("room=design"), SERVICE_KEY).await;
    assert_eq!(decided(&body), ("live".into(), "active".into()));

    for bad in [
        "",
        "room=",
        "room=a%20b",
        "room=design&mention=yes",
        "room=design&marker=-1",
        "room=design&marker=x",
    ] {
        let (status, body) = srv.get(&notify(bad), SERVICE_KEY).await;
        assert_eq!(
            (status, &body["error"]["code"]),
            (400, &json!("invalid_field")),
            "{bad}: {body}"
        );
    }
    let (status, _) = srv.get(&notify("room=design"), &token("ana")).await;
    assert_eq!(status, 403, "a user token may not ask");
    let (status, _) = srv.get("/v1/users/ana/devices", &token("bob")).await;
    assert_eq!(status, 403);
    drop((desk, phone));
}

/// A read marker belongs to the room: a member who joins after its reader left sees it in the
/// snapshot and the members list, and `receipts?at=` counts and pages its readers, online or
/// not; bad questions are 400 with the field named.
#[tokio::test]
async fn receipts_stay_after_their_reader_leaves_and_are_counted() {
    let srv = TestServer::start(fast_config()).await;
    let mut ana = srv.client("ana").await;
    ana.join("r").await;
    ana.send(json!({"type": "read", "room": "r", "marker": 1042}))
        .await;
    let mut cy = srv.client("cy").await;
    cy.join("r").await;
    cy.send(json!({"type": "read", "room": "r", "marker": 1050}))
        .await;
    ana.send(json!({"type": "leaving"})).await;
    ana.close().await;
    cy.send(json!({"type": "leave", "room": "r"})).await;
    cy.send(json!({"type": "ping"})).await;
    cy.frame("pong").await;
    let mut bob = srv.client("bob").await;
    // Past ana's leave grace she is offline; cy left the room but is online.
    let deadline = tokio::time::Instant::now() + WAIT;
    let snapshot = loop {
        let snapshot = bob.join("r").await;
        if snapshot["members"].as_array().is_some_and(|m| m.len() == 1) {
            break snapshot;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "ana gone: {snapshot}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    assert_eq!(
        snapshot["receipts"],
        json!([{"user": "ana", "marker": 1042}, {"user": "cy", "marker": 1050}]),
        "{snapshot}"
    );
    let (_, members) = srv.get("/v1/rooms/r/members", SERVICE_KEY).await;
    assert_eq!(members["receipts"], snapshot["receipts"]);
    let (status, seen) = srv.get("/v1/rooms/r/receipts?at=1042", &token("bob")).await;
    assert_eq!(status, 200, "a member may ask: {seen}");
    assert_eq!(seen["count"], 2);
    assert_eq!(
        seen["users"],
        json!([{"user": "cy", "marker": 1050}, {"user": "ana", "marker": 1042}]),
        "most advanced first"
    );
    let (_, page) = srv
        .get("/v1/rooms/r/receipts?at=1042&limit=1", SERVICE_KEY)
        .await;
    assert_eq!(page["users"], json!([{"user": "cy", "marker": 1050}]));
    let next = page["next"].as_str().expect("a next cursor").to_owned();
    let (_, rest) = srv
        .get(
            &format!("/v1/rooms/r/receipts?at=1042&limit=1&after={next}"),
            SERVICE_KEY,
        )
        .await;
    assert_eq!(rest["users"], json!([{"user": "ana", "marker": 1042}]));
    assert!(rest.get("next").is_none(), "{rest}");
    let (_, none) = srv.get("/v1/rooms/r/receipts?at=1051", SERVICE_KEY).await;
    assert_eq!((&none["count"], &none["users"]), (&json!(0), &json!([])));
    for bad in [
        "",
        "at=x",
        "at=1&limit=0",
        "at=1&limit=1001",
        "at=1&after=nope",
    ] {
        let (status, body) = srv
            .get(&format!("/v1/rooms/r/receipts?{bad}"), SERVICE_KEY)
            .await;
        assert_eq!(
            (status, &body["error"]["code"]),
            (400, &json!("invalid_field")),
            "{bad}"
        );
    }
    drop((bob, cy));
}

/// A feed's query: 10,000 ids ranked present-first and paged 1,000 at a time while users
/// change between pages; each id comes once, the present ones first; unknown ids are offline
/// with no last seen; a user token sees only whom it may; bad queries are 400.
#[tokio::test]
async fn ranked_bulk_pages_ten_thousand_ids_each_once_while_users_change() {
    let srv = strict_server().await;
    let mut ana = srv.client("ana").await;
    ana.join("r").await;
    let mut bob = srv.client("bob").await;
    bob.join("r").await;
    bob.send(json!({"type": "activity", "state": "idle", "reason": "hidden"}))
        .await;
    bob.send(json!({"type": "ping"})).await;
    bob.frame("pong").await;
    let mut ids: Vec<String> = (0..9_998).map(|i| format!("nobody-{i:05}")).collect();
    ids.insert(5_000, "bob".into());
    ids.insert(7_000, "ana".into());
    let ask = |after: Option<String>| {
        let mut body = json!({"users": ids, "order": "present_first", "limit": 1000});
        if let Some(a) = after {
            body["after"] = json!(a);
        }
        body.to_string()
    };
    let (status, first) = srv.post("/v1/presence/bulk", SERVICE_KEY, &ask(None)).await;
    assert_eq!(status, 200, "{first}");
    let names = |page: &serde_json::Value| -> Vec<String> {
        page["users"]
            .as_array()
            .expect("users")
            .iter()
            .map(|v| v["user"].as_str().unwrap_or("?").to_owned())
            .collect()
    };
    assert_eq!(names(&first)[..2], ["ana", "bob"], "active, then idle");
    assert_eq!(
        first["counts"],
        json!({"active": 1, "idle": 1, "offline": 9_998})
    );
    assert!(
        first["users"][2]["last_seen"].is_null(),
        "an unknown id is offline, never seen"
    );
    // Between pages bob comes back to the page and ana leaves: neither comes again.
    bob.send(json!({"type": "activity", "state": "active"}))
        .await;
    ana.send(json!({"type": "leaving"})).await;
    ana.close().await;
    let mut seen: std::collections::HashSet<String> = names(&first).into_iter().collect();
    let mut after = first["next"].as_str().map(str::to_owned);
    let mut pages = 1;
    while let Some(cursor) = after {
        let (status, page) = srv
            .post("/v1/presence/bulk", SERVICE_KEY, &ask(Some(cursor)))
            .await;
        assert_eq!(status, 200, "{page}");
        for name in names(&page) {
            assert!(seen.insert(name.clone()), "{name} came twice");
        }
        pages += 1;
        after = page["next"].as_str().map(str::to_owned);
    }
    assert_eq!((pages, seen.len()), (10, 10_000));

    // bob's token sees himself, not carol (no shared room, no watching: the Strict policy).
    let body = json!({"users": ["carol", "bob"], "order": "recent"}).to_string();
    let (status, page) = srv.post("/v1/presence/bulk", &token("bob"), &body).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["forbidden"], json!(["carol"]));
    assert_eq!(names(&page), ["bob"]);
    for bad in [
        json!({"users": ["a"], "order": "loudest"}),
        json!({"users": ["a"], "order": "recent", "limit": 0}),
        json!({"users": ["a"], "order": "recent", "after": "nope"}),
        json!({"users": vec!["x"; 10_001], "order": "recent"}),
    ] {
        let (status, answer) = srv
            .post("/v1/presence/bulk", SERVICE_KEY, &bad.to_string())
            .await;
        assert_eq!(status, 400, "{bad}: {answer}");
    }
    drop(bob);
}
