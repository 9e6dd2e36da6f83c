//! The host app's side: the event stream, graceful shutdown, and the golden
//! protocol vectors over a real socket.

mod common;

use std::time::Duration;

use common::*;
use presence_server::presence_core::protocol::Diff;
use serde_json::{Value, json};

#[tokio::test]
async fn the_host_event_stream_sees_each_event_once() {
    let srv = TestServer::start(calm_config()).await;
    let mut events = srv.server.events();
    let mut ana = srv.client("ana").await;
    ana.join("r").await;
    ana.send(json!({"type": "activity", "state": "idle", "reason": "no_input"}))
        .await;
    ana.send(json!({"type": "typing", "room": "r", "active": true}))
        .await;
    ana.send(json!({"type": "read", "room": "r", "marker": 7}))
        .await;
    ana.send(json!({"type": "leaving"})).await;
    ana.close().await;
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_millis(800);
    while let Ok(Some(ev)) = tokio::time::timeout_at(deadline, events.recv()).await {
        seen.push((ev.name(), ev.global));
    }
    assert_eq!(
        seen,
        [
            ("user_connected", true),
            ("user_connected", false), // entered room r while online
            ("user_idle", true),
            ("typing_started", false),
            ("read", false),
            ("typing_stopped", false), // left the room when the conn went
            ("user_disconnected", true),
        ]
    );
    assert_eq!(events.missed(), 0);
    srv.finish().await;
}

#[tokio::test]
async fn the_event_stream_works_as_a_stream_and_names_the_user() {
    use futures_util::StreamExt;
    let srv = TestServer::start(calm_config()).await;
    let stream = srv.server.events().into_stream();
    tokio::pin!(stream);
    let _bob = srv.client("bob").await;
    let ev = tokio::time::timeout(WAIT, stream.next())
        .await
        .expect("in time")
        .expect("an event");
    assert!(
        matches!(&ev.diff, Diff::UserConnected { presence } if presence.user.as_str() == "bob")
    );
    let bob = presence_server::presence_core::UserId::new("bob").expect("id");
    assert!(srv.server.is_active_anywhere(&bob).await);
    srv.finish().await;
}

#[tokio::test]
async fn graceful_shutdown_closes_every_socket_with_1001() {
    let srv = TestServer::start(calm_config()).await;
    let mut ana = srv.client("ana").await;
    let mut bob = srv.client("bob").await;
    ana.join("r").await;
    let addr = srv.addr;
    let stopping = tokio::spawn(srv.stop());
    assert_eq!(ana.close_code().await, 1001);
    assert_eq!(bob.close_code().await, 1001);
    tokio::time::timeout(Duration::from_secs(10), stopping)
        .await
        .expect("serve returns once drained")
        .expect("stop task");
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "no longer accepting"
    );
}

#[tokio::test]
async fn every_golden_client_vector_decodes_on_a_real_socket() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../presence-core/vectors/v1.json"
    );
    let Ok(text) = std::fs::read_to_string(path) else {
        eprintln!("no vectors at {path}; skipping");
        return;
    };
    let vectors: Value = serde_json::from_str(&text).expect("vectors are JSON");
    let client = vectors["client"].as_array().expect("client vectors");
    assert!(!client.is_empty());
    let srv = TestServer::start(calm_config()).await;
    let mut ana = srv.client("ana").await;
    let mut failures = Vec::new();
    for v in client {
        let name = v["name"].as_str().unwrap_or("?");
        if name.starts_with("hello") || name == "leaving" || name == "auth" {
            // A second hello is already_greeted; leaving ends the page; the
            // auth vector's token is unsigned, so it ends the socket (below).
            continue;
        }
        ana.send(v["json"].clone()).await;
        // A ping after each vector: its pong marks the end of the replies.
        ana.send(json!({"type": "ping"})).await;
        loop {
            let f = ana.next().await;
            if f["type"] == "pong" {
                break;
            }
            if f["type"] == "error" {
                let code = f["code"].as_str().unwrap_or("");
                if matches!(
                    code,
                    "malformed" | "unknown_type" | "invalid_field" | "frame_too_large"
                ) {
                    failures.push(format!("{name}: {f}"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "vectors refused: {failures:?}");
    let auth = client
        .iter()
        .find(|v| v["name"] == "auth")
        .expect("auth vector");
    let mut carol = srv.client("carol").await;
    carol.send(auth["json"].clone()).await;
    let e = carol.frame("error").await;
    assert_eq!(e["code"], "unauthorized", "decoded, and its token checked");
    let hello = client
        .iter()
        .find(|v| v["name"] == "hello_resume")
        .expect("hello_resume vector");
    let (mut ws, _) = tokio_tungstenite::connect_async(srv.url("bob"))
        .await
        .expect("upgrade");
    use futures_util::SinkExt;
    ws.send(tokio_tungstenite::tungstenite::Message::text(
        hello["json"].to_string(),
    ))
    .await
    .expect("send");
    let mut bob = Client::raw(ws, "bob");
    let welcome = bob.frame("welcome").await;
    assert_eq!(welcome["resumed"], false, "an unknown token starts afresh");
    srv.finish().await;
}
