//! The demo app in-process: chat endpoints and their validation, the page
//! stream, package serving, and posting a message ending the sender's typing
//! through the embedded presence server (over a real socket on port 0).

use std::path::PathBuf;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use demo_web::Demo;
use futures_util::SinkExt;
use http_body_util::BodyExt;
use presence_server::presence_core::protocol::Diff;
use presence_server::{DevAuth, PresenceServer, ServerConfig};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tower::ServiceExt;

const WAIT: Duration = Duration::from_secs(5);

/// A package folder holding a stand-in wasm file.
fn pkg_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("demo-web-test-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    std::fs::write(dir.join("presence_wasm_bg.wasm"), b"\0asm").expect("write");
    dir
}

fn demo(name: &str, config: ServerConfig) -> Demo {
    let presence = PresenceServer::builder()
        .config(config)
        .auth(DevAuth)
        .build()
        .expect("server builds");
    Demo::new(presence, pkg_dir(name))
}

async fn call(
    app: &Router,
    method: &str,
    uri: &str,
    user: Option<&str>,
    body: &str,
) -> (StatusCode, Value) {
    let mut req = Request::builder().method(method).uri(uri);
    if let Some(user) = user {
        req = req.header(header::AUTHORIZATION, format!("Bearer {user}"));
    }
    if !body.is_empty() {
        req = req.header(header::CONTENT_TYPE, "application/json");
    }
    let res = app
        .clone()
        .oneshot(req.body(Body::from(body.to_owned())).expect("request"))
        .await
        .expect("infallible");
    let status = res.status();
    let bytes = res.into_body().collect().await.expect("body").to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or("(no error code)")
}

#[tokio::test]
async fn posting_validates_every_input_and_numbers_messages_per_room() {
    let app = demo("post", ServerConfig::default()).router();
    let post = |room: &str| format!("/api/rooms/{room}/messages");

    let (s, v) = call(&app, "POST", &post("general"), None, r#"{"text":"hi"}"#).await;
    assert_eq!((s, code(&v)), (StatusCode::UNAUTHORIZED, "unauthorized"));
    let (s, v) = call(
        &app,
        "POST",
        &post("general"),
        Some("a b"),
        r#"{"text":"hi"}"#,
    )
    .await;
    assert_eq!((s, code(&v)), (StatusCode::UNAUTHORIZED, "unauthorized"));
    let (s, v) = call(
        &app,
        "POST",
        &post("Not-OK"),
        Some("ana"),
        r#"{"text":"hi"}"#,
    )
    .await;
    assert_eq!((s, code(&v)), (StatusCode::BAD_REQUEST, "invalid_room"));
    let (s, v) = call(&app, "POST", &post("general"), Some("ana"), r#"{"text":"#).await;
    assert_eq!((s, code(&v)), (StatusCode::BAD_REQUEST, "malformed"));
    let (s, v) = call(
        &app,
        "POST",
        &post("general"),
        Some("ana"),
        r#"{"txt":"hi"}"#,
    )
    .await;
    assert_eq!(code(&v), "malformed", "{s}");
    let (s, v) = call(
        &app,
        "POST",
        &post("general"),
        Some("ana"),
        r#"{"text":"   "}"#,
    )
    .await;
    assert_eq!((s, code(&v)), (StatusCode::BAD_REQUEST, "invalid_text"));
    let long = json!({ "text": "x".repeat(2001) }).to_string();
    let (s, v) = call(&app, "POST", &post("general"), Some("ana"), &long).await;
    assert_eq!((s, code(&v)), (StatusCode::BAD_REQUEST, "invalid_text"));
    let huge = json!({ "text": "x".repeat(20_000) }).to_string();
    let (s, v) = call(&app, "POST", &post("general"), Some("ana"), &huge).await;
    assert_eq!((s, code(&v)), (StatusCode::PAYLOAD_TOO_LARGE, "too_large"));

    for (i, room) in [(1, "general"), (2, "general"), (1, "lunch")] {
        let (s, v) = call(
            &app,
            "POST",
            &post(room),
            Some("ana"),
            r#"{"text":" hi \n"}"#,
        )
        .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        assert_eq!(
            (v["seq"].as_u64(), v["text"].as_str()),
            (Some(i), Some("hi"))
        );
    }
    let (s, v) = call(&app, "GET", "/api/rooms/general/messages?after=1", None, "").await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["latest"], 2);
    assert_eq!(v["messages"].as_array().map(Vec::len), Some(1));
    let (s, v) = call(
        &app,
        "GET",
        "/api/rooms/general/messages?after=-1",
        None,
        "",
    )
    .await;
    assert_eq!((s, code(&v)), (StatusCode::BAD_REQUEST, "malformed"));
    let (_, v) = call(&app, "GET", "/api/rooms", None, "").await;
    assert_eq!(v["rooms"][0]["room"], "lunch", "most recent first: {v}");
    let (_, v) = call(&app, "GET", "/api/people", None, "").await;
    assert_eq!(v["people"], json!(["ana"]));
    let (s, v) = call(&app, "GET", "/api/nothing/here", None, "").await;
    assert_eq!((s, code(&v)), (StatusCode::NOT_FOUND, "not_found"));
}

#[tokio::test]
async fn the_page_and_the_wasm_package_are_served_with_their_types() {
    let app = demo("assets", ServerConfig::default()).router();
    for (uri, status, ty) in [
        ("/", StatusCode::OK, "text/html; charset=utf-8"),
        ("/app.js", StatusCode::OK, "text/javascript; charset=utf-8"),
        (
            "/pkg/presence_wasm_bg.wasm",
            StatusCode::OK,
            "application/wasm",
        ),
        ("/pkg/missing.js", StatusCode::NOT_FOUND, ""),
        ("/pkg/..%2FCargo.toml", StatusCode::NOT_FOUND, ""),
        ("/healthz", StatusCode::OK, "application/json"),
    ] {
        let res = app
            .clone()
            .oneshot(Request::get(uri).body(Body::empty()).expect("request"))
            .await
            .expect("infallible");
        assert_eq!(res.status(), status, "{uri}");
        if !ty.is_empty() {
            assert_eq!(res.headers()[header::CONTENT_TYPE], ty, "{uri}");
        }
    }
}

#[tokio::test]
async fn the_stream_sends_the_backlog_then_new_messages_of_its_room_only() {
    let app = demo("stream", ServerConfig::default()).router();
    call(
        &app,
        "POST",
        "/api/rooms/general/messages",
        Some("ana"),
        r#"{"text":"one"}"#,
    )
    .await;
    let res = app
        .clone()
        .oneshot(
            Request::get("/api/stream?room=general")
                .body(Body::empty())
                .expect("request"),
        )
        .await
        .expect("infallible");
    assert_eq!(res.headers()[header::CONTENT_TYPE], "text/event-stream");
    let mut body = res.into_body();
    call(
        &app,
        "POST",
        "/api/rooms/other/messages",
        Some("bob"),
        r#"{"text":"elsewhere"}"#,
    )
    .await;
    call(
        &app,
        "POST",
        "/api/rooms/general/messages",
        Some("bob"),
        r#"{"text":"two"}"#,
    )
    .await;
    let mut seen = String::new();
    while !seen.contains(r#""text":"two""#) {
        let frame = tokio::time::timeout(WAIT, body.frame())
            .await
            .expect("the stream goes on")
            .expect("not ended")
            .expect("no error");
        if let Ok(data) = frame.into_data() {
            seen.push_str(&String::from_utf8_lossy(&data));
        }
    }
    let one = seen.find(r#""text":"one""#).expect("backlog sent");
    assert!(one < seen.find(r#""text":"two""#).unwrap_or(0), "{seen}");
    assert!(
        !seen.contains("elsewhere"),
        "another room's message leaked: {seen}"
    );
    assert!(seen.starts_with("event: people"), "{seen}");

    let (s, v) = call(&app, "GET", "/api/stream?room=No", None, "").await;
    assert_eq!((s, code(&v)), (StatusCode::BAD_REQUEST, "invalid_room"));
}

#[tokio::test]
async fn posting_a_message_ends_the_senders_typing_at_once() {
    let mut config = ServerConfig::default();
    // Far longer than the test: only `message_sent` can end it in time.
    config.timing.typing_ttl = Duration::from_secs(60);
    let demo = demo("typing", config);
    let mut events = demo.presence().events();
    let app = demo.router();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(axum::serve(listener, app.clone()).into_future());

    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws?token=ana"))
        .await
        .expect("connects");
    for frame in [
        r#"{"type":"hello","v":1}"#,
        r#"{"type":"join","room":"general"}"#,
        r#"{"type":"typing","room":"general","active":true}"#,
    ] {
        ws.send(WsMessage::text(frame)).await.expect("sends");
    }
    let mut next_typing = async || {
        tokio::time::timeout(WAIT, async {
            while let Some(e) = events.recv().await {
                if matches!(
                    e.diff,
                    Diff::TypingStarted { .. } | Diff::TypingStopped { .. }
                ) {
                    return Some(e.name());
                }
            }
            None
        })
        .await
        .ok()
        .flatten()
    };
    assert_eq!(next_typing().await, Some("typing_started"));
    let (s, _) = call(
        &app,
        "POST",
        "/api/rooms/general/messages",
        Some("ana"),
        r#"{"text":"done"}"#,
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    assert_eq!(next_typing().await, Some("typing_stopped"));
    ws.close(None).await.ok();
}

/// Reads `body` (an SSE stream) until it holds `needle`; returns all it read.
async fn read_until(body: &mut Body, needle: &str) -> String {
    let mut seen = String::new();
    while !seen.contains(needle) {
        let frame = tokio::time::timeout(WAIT, body.frame())
            .await
            .unwrap_or_else(|_| panic!("no {needle} within {WAIT:?}; the stream sent: {seen}"))
            .expect("not ended")
            .expect("no error");
        if let Ok(data) = frame.into_data() {
            seen.push_str(&String::from_utf8_lossy(&data));
        }
    }
    seen
}

#[tokio::test]
async fn a_message_is_toasted_to_the_members_the_push_decision_says_push_for() {
    let demo = demo("toast", ServerConfig::default());
    let mut events = demo.presence().events();
    let app = demo.router();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(axum::serve(listener, app.clone()).into_future());
    let post = async |user: &str, text: &str| {
        let body = json!({ "text": text }).to_string();
        let (s, m) = call(
            &app,
            "POST",
            "/api/rooms/general/messages",
            Some(user),
            &body,
        )
        .await;
        assert_eq!(s, StatusCode::CREATED, "{m}");
        m["seq"].as_u64().expect("a seq")
    };
    // ana opens #general once: a member from now on. Her toasts come on any
    // of her streams (this one shows another room); bob's stream gets none.
    let (s, _) = call(
        &app,
        "POST",
        "/api/rooms",
        Some("ana"),
        r#"{"room":"general"}"#,
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    let stream = async |query: &str| {
        let req = Request::get(format!("/api/stream?{query}")).body(Body::empty());
        let res = app.clone().oneshot(req.expect("request")).await;
        res.expect("infallible").into_body()
    };
    let mut ana = stream("room=other&token=ana").await;
    let mut bob = stream("room=general&token=bob").await;

    // ana offline: push/offline.
    let first = post("bob", "one").await;
    let seen = read_until(&mut ana, "event: toast").await;
    assert!(seen.contains(r#""reason":"offline""#), "{seen}");
    assert!(seen.contains(&format!(r#""seq":{first}"#)), "{seen}");

    // ana's page shows #general: live/viewing, no toast. The typing frame
    // after `view` tells when the server has read the view.
    let (mut ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws?token=ana"))
        .await
        .expect("connects");
    let next = async |events: &mut presence_server::Events, name: &str| {
        tokio::time::timeout(WAIT, async {
            while let Some(e) = events.recv().await {
                if e.name() == name {
                    return;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no {name} event within {WAIT:?}"));
    };
    for frame in [
        r#"{"type":"hello","v":1}"#,
        r#"{"type":"join","room":"general"}"#,
        r#"{"type":"view","room":"general"}"#,
        r#"{"type":"typing","room":"general","active":true}"#,
    ] {
        ws.send(WsMessage::text(frame)).await.expect("sends");
    }
    next(&mut events, "typing_started").await;
    let viewing = post("bob", "two").await;

    // ana's page is hidden: push/background.
    ws.send(WsMessage::text(
        r#"{"type":"activity","state":"idle","reason":"hidden"}"#,
    ))
    .await
    .expect("sends");
    next(&mut events, "user_idle").await;
    let hidden = post("bob", "three").await;
    let seen = read_until(&mut ana, &format!(r#""seq":{hidden}"#)).await;
    assert!(seen.contains(r#""reason":"background""#), "{seen}");
    assert!(
        !seen.contains(&format!(r#""seq":{viewing}"#)),
        "a toast for a message ana was viewing: {seen}"
    );
    assert_eq!(seen.matches("event: toast").count(), 1, "{seen}");

    // The sender is never a recipient.
    let seen = read_until(&mut bob, r#""text":"three""#).await;
    assert!(!seen.contains("event: toast"), "bob was toasted: {seen}");
    ws.close(None).await.ok();
}
