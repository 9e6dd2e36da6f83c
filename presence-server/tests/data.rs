//! Presence data: `info` from the token, `data` from the client, both on
//! online views only, bounded, and announced once per change.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

fn member<'a>(list: &'a Value, user: &str) -> &'a Value {
    list.as_array()
        .and_then(|l| l.iter().find(|m| m["user"] == user))
        .unwrap_or(&Value::Null)
}

async fn connect_with(srv: &TestServer, user: &str, claims: Value) -> Client {
    let mut c = json!({"sub": user, "exp": now_secs() + 3600});
    c.as_object_mut()
        .expect("object")
        .extend(claims.as_object().expect("claims").clone());
    let url = format!("ws://{}/ws?token={}", srv.addr, token_with(c));
    Client::connect(&url, user, None).await
}

#[tokio::test]
async fn data_reaches_members_watchers_and_the_http_api_once_per_change() {
    let srv = TestServer::start(calm_config()).await;
    let mut events = srv.server.events();
    let info = json!({"name": "Bob", "avatar": "https://example.com/b.png"});
    let mut bob = connect_with(&srv, "bob", json!({ "info": info })).await;
    bob.join("r").await;
    let mut ana = srv.client("ana").await;
    let snap = ana.join("r").await;
    assert_eq!(
        member(&snap["members"], "bob")["info"],
        info,
        "info from the token"
    );
    let mut carol = srv.client("carol").await;
    carol.send(json!({"type": "watch", "users": ["bob"]})).await;
    carol.frame("watching").await;

    let data = json!({"viewing": "Q3 plan", "device": "desktop"});
    bob.send(json!({"type": "data", "data": data})).await;
    let (room, d) = ana.diff("data", "bob").await;
    assert_eq!(room.as_deref(), Some("r"));
    assert_eq!((&d["data"], &d["info"]), (&data, &info), "both restated");
    let (room, d) = carol.diff("data", "bob").await;
    assert_eq!((room, &d["data"]), (None, &data), "watchers hear it too");
    // The same content in another key order changes nothing.
    bob.send(json!({"type": "data", "data": {"device": "desktop", "viewing": "Q3 plan"}}))
        .await;
    bob.send(json!({"type": "ping"})).await;
    bob.frame("pong").await;
    let again = ana
        .diff_within("data", "bob", Duration::from_millis(300))
        .await;
    assert!(again.is_none(), "no diff for a non-change: {again:?}");

    let (_, room) = srv.get("/v1/rooms/r/members", SERVICE_KEY).await;
    assert_eq!(member(&room["members"], "bob")["data"], data);
    assert_eq!(member(&room["members"], "bob")["info"], info);
    let (_, view) = srv.get("/v1/users/bob/presence", SERVICE_KEY).await;
    assert_eq!(view["data"], data);
    let ev = tokio::time::timeout(WAIT, async {
        loop {
            let ev = events.recv().await.expect("event stream");
            if ev.name() == "data" {
                return ev;
            }
        }
    })
    .await
    .expect("a data event for the host");
    assert!(ev.global);

    // Clearing: the diff says there is none.
    bob.send(json!({"type": "data"})).await;
    let (_, d) = ana.diff("data", "bob").await;
    assert!(d.get("data").is_none(), "{d}");
    srv.finish().await;
}

#[tokio::test]
async fn bad_data_gets_its_code_and_nothing_else_in_the_room_changes() {
    let srv = TestServer::start(calm_config()).await;
    let mut bob = srv.client("bob").await;
    bob.join("r").await;
    let mut ana = srv.client("ana").await;
    ana.join("r").await;
    let deep = (0..20).fold(json!(1), |v, _| json!({ "a": v }));
    let cases = [
        (
            json!({"type": "data", "data": {"x": "y".repeat(2048)}}),
            "data_too_large",
        ),
        (json!({"type": "data", "data": [1, 2]}), "invalid_field"),
        (json!({"type": "data", "data": "text"}), "invalid_field"),
        (json!({"type": "data", "data": deep}), "invalid_field"),
    ];
    for (frame, code) in cases {
        bob.send(frame).await;
        let e = bob.frame("error").await;
        assert_eq!((&e["code"], &e["frame"]), (&json!(code), &json!("data")));
    }
    let flood =
        (0..30).map(|i| Message::text(json!({"type": "data", "data": {"n": i}}).to_string()));
    bob.send_all(flood).await;
    let e = bob.frame("error").await;
    assert_eq!(
        (&e["code"], &e["frame"]),
        (&json!("rate_limited"), &json!("data"))
    );
    // Ana heard only the accepted ones, each once, in order; the room goes on.
    let kinds = ana.diffs_during(Duration::from_millis(400)).await;
    let ns: Vec<i64> = kinds
        .iter()
        .filter(|(_, d)| d["type"] == "data")
        .filter_map(|(_, d)| d["data"]["n"].as_i64())
        .collect();
    assert!(!ns.is_empty() && ns.len() < 30, "{ns:?}");
    assert!(ns.windows(2).all(|w| w[0] < w[1]), "{ns:?}");
    bob.send(json!({"type": "status", "status": "busy"})).await;
    ana.diff("status", "bob").await;
    srv.finish().await;
}

#[tokio::test]
async fn an_invisible_user_leaks_neither_info_nor_data() {
    let srv = TestServer::start(calm_config()).await;
    let mut bob = connect_with(&srv, "bob", json!({"info": {"name": "Bob"}})).await;
    bob.join("r").await;
    bob.send(json!({"type": "status", "status": "invisible"}))
        .await;
    bob.frame("self_status").await;
    bob.send(json!({"type": "data", "data": {"viewing": "secret"}}))
        .await;
    let mut ana = srv.client("ana").await;
    let snap = ana.join("r").await;
    let b = member(&snap["members"], "bob");
    assert!(b.get("info").is_none() && b.get("data").is_none(), "{b}");
    assert!(
        ana.diff_within("data", "bob", Duration::from_millis(300))
            .await
            .is_none()
    );
    let (_, view) = srv.get("/v1/users/bob/presence", SERVICE_KEY).await;
    assert!(
        view.get("data").is_none() && view.get("info").is_none(),
        "{view}"
    );
    // Visible again: it all comes with user_connected.
    bob.send(json!({"type": "status", "status": "available"}))
        .await;
    let (_, d) = ana.diff("user_connected", "bob").await;
    assert_eq!(d["presence"]["data"], json!({"viewing": "secret"}));
    assert_eq!(d["presence"]["info"], json!({"name": "Bob"}));
    srv.finish().await;
}

#[tokio::test]
async fn a_bad_info_claim_is_refused_like_any_bad_token() {
    let srv = TestServer::start(calm_config()).await;
    for info in [json!([1]), json!("Bob"), json!({"bio": "x".repeat(2000)})] {
        let claims = json!({"sub": "bob", "exp": now_secs() + 3600, "info": info});
        let url = format!("ws://{}/ws?token={}", srv.addr, token_with(claims));
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("upgraded");
        let mut c = Client::raw(ws, "bob");
        assert_eq!(c.frame("error").await["code"], "unauthorized", "{info}");
        assert_eq!(c.close_code().await, 4101);
    }
    srv.finish().await;
}
