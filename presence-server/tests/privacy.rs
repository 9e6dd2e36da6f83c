//! Privacy settings (PROTOCOL.md, "Privacy"): who sees a user's last seen
//! and read markers, on every surface a user sees, set by the user's socket
//! or their backend, and kept across a restart.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};

/// Connects `user` with a token whose `watch` claim names `contacts`.
async fn with_contacts(srv: &TestServer, user: &str, contacts: &[&str]) -> Client {
    let claims = json!({"sub": user, "exp": now_secs() + 3600, "watch": contacts});
    let url = format!("ws://{}/ws?token={}", srv.addr, token_with(claims));
    Client::connect(&url, user, None).await
}

fn token_of(user: &str, contacts: &[&str]) -> String {
    token_with(json!({"sub": user, "exp": now_secs() + 3600, "watch": contacts}))
}

fn member<'a>(snapshot: &'a Value, user: &str) -> &'a Value {
    snapshot["members"]
        .as_array()
        .and_then(|l| l.iter().find(|m| m["user"] == user))
        .unwrap_or(&Value::Null)
}

/// Joins `room` until `user` shows offline in the snapshot (bounded).
async fn offline_in(c: &mut Client, room: &str, user: &str) -> Value {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let snapshot = c.join(room).await;
        if member(&snapshot, user)["state"] == "offline" || member(&snapshot, user).is_null() {
            return snapshot;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{user} offline: {snapshot}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A ranked page's users, in its order.
fn order(page: &Value) -> Vec<&str> {
    page["users"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v["user"].as_str())
        .collect()
}

async fn put(srv: &TestServer, path: &str, bearer: &str, body: &str) -> (u16, Value) {
    http(srv.addr, "PUT", path, bearer, Some(body)).await
}

/// Ana shows her last seen to contacts only and turns receipts off: bob (a contact) and cy
/// (not one) see her go offline, rejoin, ask over HTTP and rank her; each surface shows bob her
/// last seen and cy none, and neither the markers she read after turning receipts off.
#[tokio::test]
async fn each_setting_holds_on_every_surface_a_user_sees() {
    let mut config = calm_config();
    // A window long enough that ana's reads are not coalesced with the setting.
    config.batch_window = Duration::from_millis(5);
    let srv = TestServer::start(config).await;
    let mut events = srv.server.events();
    let mut ana = srv.client("ana").await;
    ana.join("r").await;
    let mut bob = with_contacts(&srv, "bob", &["ana"]).await;
    bob.join("r").await;
    let mut cy = with_contacts(&srv, "cy", &["zed"]).await;
    cy.join("r").await;

    ana.send(json!({"type": "read", "room": "r", "marker": 5}))
        .await;
    assert_eq!(ana.diff("read", "ana").await.1["marker"], 5);
    assert_eq!(bob.diff("read", "ana").await.1["marker"], 5);
    assert_eq!(cy.diff("read", "ana").await.1["marker"], 5);

    ana.send(json!({"type": "privacy", "last_seen": "contacts", "receipts": "off"}))
        .await;
    let told = ana.frame("self_privacy").await;
    assert_eq!(
        told,
        json!({"type": "self_privacy", "last_seen": "contacts", "receipts": "off"})
    );
    // A second tab is told them right after its welcome.
    let mut tab = srv.client("ana").await;
    assert_eq!(tab.next().await, told);
    drop(tab);
    ana.send(json!({"type": "read", "room": "r", "marker": 7}))
        .await;
    let (_, own) = ana.diff("read", "ana").await;
    assert_eq!(own["marker"], 7, "her own connections still hear it");
    for c in [&mut bob, &mut cy] {
        let heard = c
            .diff_within("read", "ana", Duration::from_millis(200))
            .await;
        assert!(heard.is_none(), "{}: no marker with receipts off", c.user);
    }
    let host = loop {
        let ev = tokio::time::timeout(WAIT, events.recv())
            .await
            .expect("a host event")
            .expect("open");
        if ev.name() == "read" {
            break ev;
        }
    };
    assert_eq!(
        host.diff.user().as_str(),
        "ana",
        "the host hears every marker"
    );

    // A frame with a value outside the enums is refused.
    ana.send(json!({"type": "privacy", "last_seen": "friends"}))
        .await;
    let err = ana.frame("error").await;
    assert_eq!(
        (&err["code"], &err["frame"]),
        (&json!("invalid_field"), &json!("privacy"))
    );

    ana.send(json!({"type": "leaving"})).await;
    ana.close().await;
    let (_, gone) = bob.diff("user_disconnected", "ana").await;
    assert!(gone["last_seen"].is_u64(), "a contact sees it: {gone}");
    let (_, gone) = cy.diff("user_disconnected", "ana").await;
    assert_eq!(gone.get("last_seen"), None, "not a contact: {gone}");

    // Snapshots (members are the online ones): both see the marker she read before turning
    // receipts off, not the one after.
    for c in [&mut bob, &mut cy] {
        let snap = offline_in(c, "r", "ana").await;
        assert_eq!(
            snap["receipts"],
            json!([{"user": "ana", "marker": 5}]),
            "{snap}"
        );
    }

    // `watching` (bob may watch her; cy's claim names only zed).
    bob.send(json!({"type": "watch", "users": ["ana"]})).await;
    let w = bob.frame("watching").await;
    assert!(w["users"][0]["last_seen"].is_u64(), "{w}");

    // The HTTP API with a user token, and the service key. (cy may not see her at all now:
    // no room in common, and his claim does not name her.)
    let path = "/v1/users/ana/presence";
    let (_, v) = srv.get(path, &token_of("bob", &["ana"])).await;
    assert!(v["last_seen"].is_u64(), "{v}");
    let (status, _) = srv.get(path, &token_of("cy", &["zed"])).await;
    assert_eq!(status, 403);
    let (_, seen) = srv
        .get("/v1/rooms/r/receipts?at=6", &token_of("cy", &["zed"]))
        .await;
    assert_eq!(seen["count"], 0, "her marker 7 is hidden: {seen}");

    // The backend hides it from everyone; bad settings are refused with a code.
    let settings = "/v1/users/ana/privacy";
    let (status, now) = put(&srv, settings, SERVICE_KEY, r#"{"last_seen":"nobody"}"#).await;
    assert_eq!(status, 200, "{now}");
    assert_eq!(
        now,
        json!({"user": "ana", "last_seen": "nobody", "receipts": "off"}),
        "one setting changed, the other kept"
    );
    let (_, v) = srv.get(path, &token_of("bob", &["ana"])).await;
    assert_eq!(v.get("last_seen"), None, "{v}");
    let (_, v) = srv.get(path, SERVICE_KEY).await;
    assert!(v["last_seen"].is_u64(), "the service key sees everything");
    bob.send(json!({"type": "watch", "users": ["ana"]})).await;
    let w = bob.frame("watching").await;
    assert_eq!(w["users"][0].get("last_seen"), None, "{w}");

    // The ranked query: hidden, ana ranks as an offline user with no last seen (after dee,
    // who went offline with one, and by id among those with none), so the order tells bob
    // nothing; the service key ranks her by it.
    let mut dee = srv.client("dee").await;
    dee.join("r").await;
    dee.send(json!({"type": "leaving"})).await;
    dee.close().await;
    offline_in(&mut cy, "r", "dee").await;
    let body = json!({"users": ["ana", "dee", "aa"], "order": "recent"}).to_string();
    let (_, page) = srv
        .post(
            "/v1/presence/bulk",
            &token_of("bob", &["ana", "dee", "aa"]),
            &body,
        )
        .await;
    assert_eq!(order(&page), ["dee", "aa", "ana"], "{page}");
    assert_eq!(page["users"][2].get("last_seen"), None);
    let (_, page) = srv.post("/v1/presence/bulk", SERVICE_KEY, &body).await;
    assert_eq!(order(&page), ["dee", "ana", "aa"], "{page}");

    for bad in [
        r#"{"last_seen":"friends"}"#,
        r#"{"receipts":true}"#,
        r#"{"typo":"on"}"#,
    ] {
        let (status, body) = put(&srv, settings, SERVICE_KEY, bad).await;
        assert_eq!(
            (status, &body["error"]["code"]),
            (400, &json!("invalid_field")),
            "{bad}: {body}"
        );
    }
    let (status, _) = put(&srv, settings, &token("ana"), r#"{"receipts":"on"}"#).await;
    assert_eq!(status, 403, "only the backend sets them over HTTP");
    let (status, mine) = srv.get(settings, &token("ana")).await;
    assert_eq!((status, &mine["last_seen"]), (200, &json!("nobody")));
    let (status, _) = srv.get(settings, &token("bob")).await;
    assert_eq!(status, 403, "nobody else's");

    // A viewer with receipts off sees nobody's markers but their own.
    bob.send(json!({"type": "read", "room": "r", "marker": 6}))
        .await;
    bob.send(json!({"type": "privacy", "receipts": "off"}))
        .await;
    bob.frame("self_privacy").await;
    let snap = bob.join("r").await;
    assert_eq!(
        snap["receipts"],
        json!([{"user": "bob", "marker": 6}]),
        "{snap}"
    );
    // ...nor their new ones: cy's marker reaches cy, not bob, whose own still reaches him (in
    // a later batch: cy's went out before cy heard it).
    cy.send(json!({"type": "read", "room": "r", "marker": 8}))
        .await;
    assert_eq!(cy.diff("read", "cy").await.1["marker"], 8);
    bob.send(json!({"type": "read", "room": "r", "marker": 9}))
        .await;
    while bob.diff("read", "bob").await.1["marker"] != 9 {}
    let heard = bob.diff_within("read", "cy", Duration::ZERO).await;
    assert!(heard.is_none(), "bob heard cy's marker: {heard:?}");
    let (_, seen) = srv
        .get("/v1/rooms/r/receipts?at=0", &token_of("bob", &["ana"]))
        .await;
    assert_eq!(seen["count"], 1, "only his own: {seen}");
    let (_, seen) = srv.get("/v1/rooms/r/receipts?at=0", SERVICE_KEY).await;
    // ana's 5, bob's 6 (his 9 came with receipts off), cy's 8.
    assert_eq!(
        seen["count"], 3,
        "the service key counts every shown marker: {seen}"
    );
    drop((bob, cy));
}

/// Settings set over HTTP for a user who never connected hold when they come, and a
/// restart on the same data directory keeps them.
#[tokio::test]
async fn settings_outlive_a_restart_with_a_data_dir() {
    let dir = std::env::temp_dir().join(format!("presence-privacy-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let start = async || {
        let data = open_data_dir(&dir).await;
        TestServer::start_with(
            presence_server::PresenceServer::builder()
                .config(calm_config())
                .data_dir(data),
        )
        .await
    };
    let srv = start().await;
    let (status, _) = put(
        &srv,
        "/v1/users/ana/privacy",
        SERVICE_KEY,
        r#"{"last_seen":"nobody","receipts":"off"}"#,
    )
    .await;
    assert_eq!(status, 200);
    let mut ana = srv.client("ana").await;
    assert_eq!(
        ana.next().await,
        json!({"type": "self_privacy", "last_seen": "nobody", "receipts": "off"})
    );
    drop(ana);
    srv.stop().await;
    let srv = start().await;
    let (_, now) = srv.get("/v1/users/ana/privacy", SERVICE_KEY).await;
    assert_eq!(
        now,
        json!({"user": "ana", "last_seen": "nobody", "receipts": "off"})
    );
    assert_eq!(
        srv.server
            .privacy(&presence_server::presence_core::UserId::new("ana").expect("id"))
            .await
            .last_seen,
        presence_server::presence_core::LastSeen::Nobody
    );
    srv.stop().await;
    let _ = std::fs::remove_dir_all(&dir);
}
