//! Bad input gets stable error codes or a close, and never disturbs anyone
//! else; slow readers are dropped instead of slowing the room.

mod common;

use std::time::Duration;

use axum::serve::ListenerExt;
use common::*;
use futures_util::{SinkExt, StreamExt};
use presence_server::{PresenceServer, RateLimit};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn malformed_oversized_and_unknown_frames_get_error_codes_while_the_room_is_unaffected() {
    let srv = TestServer::start(calm_config()).await;
    let mut ana = srv.client("ana").await;
    let mut bob = srv.client("bob").await;
    ana.join("r").await;
    bob.join("r").await;
    let big = format!(r#"{{"type":"ping","pad":"{}"}}"#, "x".repeat(5000));
    let cases = [
        ("{", "malformed"),
        ("[1,2]", "malformed"),
        (r#"{"type":"fly"}"#, "unknown_type"),
        (r#"{"type":"join"}"#, "invalid_field"),
        (r#"{"type":"join","room":""}"#, "invalid_field"),
        (
            r#"{"type":"typing","room":"elsewhere","active":true}"#,
            "not_in_room",
        ),
        (
            r#"{"type":"read","room":"r","marker":9007199254740992}"#,
            "invalid_marker",
        ),
        (big.as_str(), "frame_too_large"),
    ];
    for (frame, code) in cases {
        ana.send_raw(frame).await;
        let e = ana.frame("error").await;
        assert_eq!(e["code"], code, "for {frame:.40}");
    }
    ana.ws
        .send(Message::binary(vec![1u8, 2, 3]))
        .await
        .expect("send");
    assert_eq!(ana.frame("error").await["code"], "malformed");
    // Ana's socket still works, and bob saw nothing but her real change.
    ana.send(json!({"type": "activity", "state": "idle", "reason": "hidden"}))
        .await;
    bob.diff("user_idle", "ana").await;
    bob.send(json!({"type": "ping"})).await;
    bob.frame("pong").await;
    srv.finish().await;
}

#[tokio::test]
async fn a_frame_far_beyond_the_limit_closes_the_socket_with_1009() {
    let srv = TestServer::start(calm_config()).await;
    let mut ana = srv.client("ana").await;
    let mut bob = srv.client("bob").await;
    bob.join("r").await;
    let huge = format!(r#"{{"type":"ping","pad":"{}"}}"#, "x".repeat(64 * 1024));
    let _ = ana.ws.send(Message::text(huge)).await;
    assert_eq!(ana.close_code().await, 1009);
    bob.send(json!({"type": "ping"})).await;
    bob.frame("pong").await;
    srv.finish().await;
}

#[tokio::test]
async fn the_first_frame_must_be_hello() {
    let srv = TestServer::start(calm_config()).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(srv.url("ana"))
        .await
        .expect("upgrade");
    ws.send(Message::text(r#"{"type":"join","room":"r"}"#))
        .await
        .expect("send");
    let mut c = Client::raw(ws, "ana");
    assert_eq!(c.frame("error").await["code"], "hello_required");
    assert_eq!(c.close_code().await, 1008);
    srv.finish().await;
}

#[tokio::test]
async fn an_unsupported_protocol_version_is_closed_with_4102() {
    let srv = TestServer::start(calm_config()).await;
    let (mut ws, _) = tokio_tungstenite::connect_async(srv.url("ana"))
        .await
        .expect("upgrade");
    ws.send(Message::text(r#"{"type":"hello","v":99}"#))
        .await
        .expect("send");
    let mut codes = Vec::new();
    let mut close = None;
    while let Ok(Some(Ok(msg))) = tokio::time::timeout(WAIT, ws.next()).await {
        match msg {
            Message::Text(t) => {
                let v: serde_json::Value = serde_json::from_str(t.as_str()).expect("json");
                codes.push(v["code"].as_str().unwrap_or("").to_owned());
            }
            Message::Close(f) => {
                close = f.map(|f| u16::from(f.code));
                break;
            }
            _ => {}
        }
    }
    assert_eq!(codes, ["unsupported_version"]);
    assert_eq!(close, Some(4102));
    srv.finish().await;
}

#[tokio::test]
async fn going_over_the_rate_limit_gets_rate_limited_and_a_flood_is_closed_with_1008() {
    let mut config = calm_config();
    config.rate = RateLimit {
        burst: 5,
        per_second: 1.0,
        abuse_factor: 4,
    };
    let srv = TestServer::start(config).await;
    let mut ana = srv.client("ana").await;
    let mut bob = srv.client("bob").await;
    for _ in 0..8 {
        ana.send(json!({"type": "ping"})).await;
    }
    let mut replies = Vec::new();
    for _ in 0..8 {
        let f = ana.next().await;
        replies.push(if f["type"] == "error" {
            f["code"].as_str().unwrap_or("").to_owned()
        } else {
            f["type"].as_str().unwrap_or("").to_owned()
        });
    }
    assert_eq!(replies[..5], ["pong"; 5]);
    assert_eq!(replies[5..], ["rate_limited"; 3]);
    // 4 × burst frames of debt is abuse.
    for _ in 0..30 {
        if ana
            .ws
            .send(Message::text(r#"{"type":"ping"}"#))
            .await
            .is_err()
        {
            break;
        }
    }
    assert_eq!(ana.close_code().await, 1008);
    bob.send(json!({"type": "ping"})).await;
    bob.frame("pong").await;
    srv.finish().await;
}

#[tokio::test]
async fn a_slow_consumer_is_closed_with_4001_while_the_room_keeps_flowing() {
    let mut config = calm_config();
    config.outbound_queue = 64;
    config.rate = RateLimit {
        burst: 100_000,
        per_second: 100_000.0,
        abuse_factor: 10,
    };
    let server = PresenceServer::builder()
        .config(config)
        .auth(presence_server::JwtAuth::hs256(SECRET).expect("secret"))
        .build()
        .expect("builds");
    // Tiny kernel send buffers on the server side, so backpressure reaches
    // the outbound queue after a few KiB instead of megabytes.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let listener = listener.tap_io(|tcp| {
        let _ = socket2::SockRef::from(&*tcp).set_send_buffer_size(4096);
    });
    let router = server.router().merge(server.ops_router());
    let serving = tokio::spawn(async move { axum::serve(listener, router).await });
    let url = |u: &str| format!("ws://{addr}/ws?token={}", token(u));

    // Bob: a tiny receive buffer, and he never reads.
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    let stream = socket.connect(addr).await.expect("connect");
    let (mut bob, _) = tokio_tungstenite::client_async(url("bob"), stream)
        .await
        .expect("upgrade");
    bob.send(Message::text(r#"{"type":"hello","v":1}"#))
        .await
        .expect("hello");
    bob.send(Message::text(r#"{"type":"join","room":"r"}"#))
        .await
        .expect("join");

    // Carol reads everything and counts ana's status changes.
    let mut carol = Client::connect(&url("carol"), "carol", None).await;
    carol.join("r").await;
    let (carol_tx, mut carol_rx) = tokio::sync::mpsc::unbounded_channel();
    let carol_task = tokio::spawn(async move {
        loop {
            let (_, d) = carol.diff("status", "ana").await;
            if carol_tx
                .send(d["text"].as_str().unwrap_or("").to_owned())
                .is_err()
            {
                return;
            }
        }
    });

    let ana = Client::connect(&url("ana"), "ana", None).await;
    let (mut ana_tx, mut ana_rx) = ana.ws.split();
    let ana_reader = tokio::spawn(async move { while ana_rx.next().await.is_some() {} });
    ana_tx
        .send(Message::text(r#"{"type":"join","room":"r"}"#))
        .await
        .expect("join");

    let slow_metric = "presence_slow_consumers_closed_total 1";
    let mut closed = false;
    let started = tokio::time::Instant::now();
    let mut sent = 0u32;
    while !closed && started.elapsed() < Duration::from_secs(10) {
        for _ in 0..50 {
            sent += 1;
            let text = format!("status {sent:05} {}", "x".repeat(80));
            let frame = json!({"type": "status", "status": "busy", "text": text});
            ana_tx
                .send(Message::text(frame.to_string()))
                .await
                .expect("ana sends");
        }
        // Pace ana: wait until carol saw this round, so only bob lags.
        let last = format!("status {sent:05} ");
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let text = tokio::time::timeout_at(deadline, carol_rx.recv())
                .await
                .expect("carol keeps up")
                .expect("carol task alive");
            if text.starts_with(&last) {
                break;
            }
        }
        let (_, metrics) = http_text(addr, "/metrics").await;
        closed = metrics.contains(slow_metric);
    }
    assert!(closed, "bob was never closed as slow ({sent} changes sent)");

    // The room keeps flowing: carol sees ana's very next change.
    ana_tx
        .send(Message::text(
            json!({"type": "status", "status": "away", "text": "after"}).to_string(),
        ))
        .await
        .expect("ana sends");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let text = tokio::time::timeout_at(deadline, carol_rx.recv())
            .await
            .expect("carol keeps receiving")
            .expect("carol task alive");
        if text == "after" {
            break;
        }
    }

    // Bob finally reads: queued frames, then the 4001 close.
    let code = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(msg) = bob.next().await {
            match msg {
                Ok(Message::Close(f)) => return f.map(|f| u16::from(f.code)),
                Ok(_) => continue,
                Err(_) => return None,
            }
        }
        None
    })
    .await
    .expect("bob's socket ends in time");
    assert_eq!(code, Some(4001));

    carol_task.abort();
    ana_reader.abort();
    server.shutdown().await;
    serving.abort();
}
