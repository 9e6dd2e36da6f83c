//! What PROTOCOL.md promises, checked through a real socket: one test per
//! statement an independent client found the server breaking, and the code
//! tables read from PROTOCOL.md itself.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;
use futures_util::SinkExt;
use presence_server::RateLimit;
use presence_server::presence_core::protocol::{CloseCode, ErrorCode};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::{Bytes, Message};

const PROTOCOL: &str = include_str!("../../PROTOCOL.md");

/// The first column of the table under `heading`, backticks removed.
fn table(heading: &str) -> Vec<String> {
    let start = PROTOCOL.find(heading).expect("heading in PROTOCOL.md");
    PROTOCOL[start..]
        .lines()
        .skip_while(|l| !l.starts_with('|'))
        .take_while(|l| l.starts_with('|'))
        .skip(2)
        .filter_map(|l| l.split('|').nth(1))
        .map(|c| c.trim().trim_matches('`').to_owned())
        .collect()
}

#[test]
fn the_error_code_table_lists_every_code_the_server_has() {
    let documented: BTreeSet<String> = table("## Error codes").into_iter().collect();
    let known: BTreeSet<String> = ErrorCode::ALL
        .iter()
        .map(|c| c.as_str().to_owned())
        .collect();
    assert_eq!(documented, known);
}

#[test]
fn the_close_code_table_lists_every_code_the_server_sends() {
    let documented: BTreeSet<u16> = table("## Close codes")
        .iter()
        .map(|c| c.parse().expect("numeric close code"))
        .collect();
    let sent: BTreeSet<u16> = [
        CloseCode::Normal,
        CloseCode::GoingAway,
        CloseCode::InvalidData,
        CloseCode::PolicyViolation,
        CloseCode::TooBig,
        CloseCode::HeartbeatTimeout,
        CloseCode::SlowConsumer,
        CloseCode::Superseded,
        CloseCode::Unauthorized,
        CloseCode::UnsupportedVersion,
    ]
    .into_iter()
    .map(|c| c as u16)
    .collect();
    assert_eq!(documented, sent);
}

/// The item-1 timings: heartbeat 300 ms, timeout 1.2 s, graces 1 s / 400 ms.
fn item_config() -> presence_server::ServerConfig {
    let mut c = fast_config();
    c.timing.heartbeat_interval = Duration::from_millis(300);
    c.timing.heartbeat_timeout = Duration::from_millis(1200);
    c.timing.offline_grace = Duration::from_millis(1000);
    c.timing.leave_grace = Duration::from_millis(400);
    c
}

#[tokio::test]
async fn a_close_from_the_client_is_answered_with_a_close_frame() {
    let srv = TestServer::start(item_config()).await;
    let mut ana = srv.client("ana").await;
    ana.ws
        .close(Some(tokio_tungstenite::tungstenite::protocol::CloseFrame {
            code: tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode::Normal,
            reason: "bye".into(),
        }))
        .await
        .expect("close sent");
    // The handshake completes: the server's close frame comes back (a
    // browser would otherwise report 1006).
    let answer = tokio::time::timeout(WAIT, futures_util::StreamExt::next(&mut ana.ws))
        .await
        .expect("an answer in time");
    assert!(
        matches!(answer, Some(Ok(Message::Close(_)))),
        "the server answered the close: {answer:?}"
    );
}

#[tokio::test]
async fn leaving_closes_the_socket_with_1000_and_the_user_goes_after_the_leave_grace() {
    let srv = TestServer::start(item_config()).await;
    let mut bob = srv.client("bob").await;
    bob.join("r").await;
    let mut ana = srv.client("ana").await;
    ana.join("r").await;
    bob.diff("user_connected", "ana").await;
    ana.send(json!({"type": "leaving"})).await;
    // The socket stays open on the client's side and keeps pinging: the
    // server must end it rather than hold it forever.
    ana.send(json!({"type": "ping"})).await;
    assert_eq!(ana.close_code().await, 1000);
    let (_, gone) = bob.diff("user_disconnected", "ana").await;
    assert_eq!(gone["type"], "user_disconnected");
    let (status, metrics) = http_text(srv.addr, "/metrics").await;
    assert_eq!(status, 200);
    assert!(
        metrics.contains("presence_connections 1\n"),
        "only bob's socket is left:\n{metrics}"
    );
    srv.finish().await;
}

#[tokio::test]
async fn a_resume_within_the_leave_grace_after_leaving_is_silent() {
    let srv = TestServer::start(item_config()).await;
    let mut bob = srv.client("bob").await;
    bob.join("r").await;
    let mut ana = srv.client("ana").await;
    ana.join("r").await;
    bob.diff("user_connected", "ana").await;
    let token = ana.resume_token();
    ana.send(json!({"type": "leaving"})).await;
    assert_eq!(ana.close_code().await, 1000);
    let mut back = srv.adopt(Client::connect(&srv.url("ana"), "ana", Some(&token)).await);
    assert_eq!(back.welcome["resumed"], true);
    let seen = bob.diffs_during(Duration::from_millis(700)).await;
    assert!(seen.is_empty(), "observers saw nothing: {seen:?}");
    back.send(json!({"type": "ping"})).await;
    back.frame("pong").await;
    srv.finish().await;
}

#[tokio::test]
async fn every_frame_counts_as_a_heartbeat() {
    let srv = TestServer::start(item_config()).await;
    let mut bob = srv.client("bob").await;
    bob.join("r").await;
    let frames = [
        json!({"type": "status", "status": "busy"}),
        json!({"type": "join", "room": "r"}),
        json!({"type": "watch", "users": ["bob"]}),
    ];
    let mut clients = Vec::new();
    for (i, _) in frames.iter().enumerate() {
        let mut c = srv.client(&format!("u{i}")).await;
        c.join("r").await;
        clients.push(c);
    }
    // 2.4 s of nothing but that one kind of frame every 300 ms: twice the
    // heartbeat timeout.
    let until = tokio::time::Instant::now() + Duration::from_millis(2400);
    while tokio::time::Instant::now() < until {
        for (c, f) in clients.iter_mut().zip(&frames) {
            c.send(f.clone()).await;
        }
        bob.send(json!({"type": "ping"})).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let seen = bob.diffs_during(Duration::from_millis(50)).await;
    assert!(
        !seen.iter().any(|(_, d)| d["type"] == "user_disconnected"),
        "nobody was taken for gone: {seen:?}"
    );
    for mut c in clients {
        c.send(json!({"type": "ping"})).await;
        c.frame("pong").await;
    }
    srv.finish().await;
}

#[tokio::test]
async fn typing_in_two_tabs_of_one_user_does_not_flap() {
    let mut config = fast_config();
    config.timing.typing_ttl = Duration::from_secs(3);
    config.timing.heartbeat_timeout = Duration::from_secs(10);
    let srv = TestServer::start(config).await;
    let mut bob = srv.client("bob").await;
    bob.join("r").await;
    let mut tab1 = srv.client("ana").await;
    let mut tab2 = srv.client("ana").await;
    tab1.join("r").await;
    tab2.join("r").await;
    bob.diff("user_connected", "ana").await;
    let typing = |on: bool| json!({"type": "typing", "room": "r", "active": on});
    for (tab, on) in [(1, true), (2, true), (1, false), (2, true), (2, false)] {
        let c = if tab == 1 { &mut tab1 } else { &mut tab2 };
        c.send(typing(on)).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let seen: Vec<Value> = bob
        .diffs_during(Duration::from_millis(200))
        .await
        .into_iter()
        .map(|(_, d)| d["type"].clone())
        .collect();
    assert_eq!(seen, ["typing_started", "typing_stopped"]);
    srv.finish().await;
}

#[tokio::test]
async fn a_flood_written_at_once_is_closed_with_1008_not_a_reset() {
    let srv = TestServer::start(calm_config()).await;
    for _ in 0..3 {
        let mut c = srv.client("ana").await;
        c.send_all((0..1000).map(|_| Message::text(r#"{"type":"ping"}"#)))
            .await;
        assert_eq!(c.close_code().await, 1008);
    }
    srv.finish().await;
}

/// A 40 KB text message in 41 fragments is answered with a 1009 close frame
/// that arrives before the TCP connection ends, whether the fragments come at
/// once or one write each (as a browser sends them, still writing when the
/// server closes): the server keeps reading and discarding what the client
/// sends, so its kernel never answers with a reset (1006 in a browser).
/// Twenty times, because a reset was a race; then the same for a whole 40 KB
/// frame with more frames behind it.
#[tokio::test]
async fn a_message_far_beyond_the_limit_whole_or_in_fragments_is_closed_with_1009_not_a_reset() {
    let srv = TestServer::start(calm_config()).await;
    let started = std::time::Instant::now();
    let chunk = Bytes::from("x".repeat(1000));
    let fragments = || {
        (0..41).map(|i| {
            let opcode = if i == 0 { Data::Text } else { Data::Continue };
            Message::Frame(Frame::message(chunk.clone(), OpCode::Data(opcode), i == 40))
        })
    };
    let whole = || {
        let big = Message::text("x".repeat(40 * 1024));
        std::iter::once(big).chain((0..20).map(|_| Message::text(r#"{"type":"ping"}"#)))
    };
    for round in 0..25 {
        let mut c = srv.client("ana").await;
        if round < 20 && round % 2 == 0 {
            c.send_all(fragments()).await;
        } else {
            let frames: Vec<Message> = if round < 20 {
                fragments().collect()
            } else {
                whole().collect()
            };
            for (i, frame) in frames.into_iter().enumerate() {
                if let Err(e) = c.ws.send(frame).await {
                    panic!("round {round}: frame {i} not sent: {e}");
                }
                // Lets the server read, refuse and close mid-message.
                tokio::task::yield_now().await;
            }
        }
        assert_eq!(c.close_code().await, 1009, "round {round}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    srv.finish().await;
}

#[tokio::test]
async fn invalid_utf8_is_closed_with_1007() {
    let srv = TestServer::start(calm_config()).await;
    let mut c = srv.client("ana").await;
    let frame = Frame::message(vec![b'{', 0xff, 0xfe, b'}'], OpCode::Data(Data::Text), true);
    c.ws.send(Message::Frame(frame)).await.expect("send");
    assert_eq!(c.close_code().await, 1007);
    srv.finish().await;
}

#[tokio::test]
async fn anything_but_hello_first_gets_hello_required_then_1008() {
    let srv = TestServer::start(calm_config()).await;
    let firsts = [
        Message::text("garbage"),
        Message::text("[]"),
        Message::text(r#"{"type":"fly"}"#),
        Message::text(r#"{"type":"ping"}"#),
        Message::binary(vec![1, 2, 3]),
    ];
    for first in firsts {
        let shown = format!("{first:?}");
        let (mut ws, _) = tokio_tungstenite::connect_async(srv.url("ana"))
            .await
            .expect("upgrade");
        ws.send(first).await.expect("send");
        let mut c = Client::raw(ws, "ana");
        assert_eq!(c.frame("error").await["code"], "hello_required", "{shown}");
        assert_eq!(c.close_code().await, 1008, "{shown}");
    }
    // A hello with a bad field is told what is wrong with it.
    let (mut ws, _) = tokio_tungstenite::connect_async(srv.url("ana"))
        .await
        .expect("upgrade");
    ws.send(Message::text(r#"{"type":"hello","v":"one"}"#))
        .await
        .expect("send");
    let mut c = Client::raw(ws, "ana");
    assert_eq!(c.frame("error").await["code"], "invalid_field");
    assert_eq!(c.close_code().await, 1008);
    srv.finish().await;
}

#[tokio::test]
async fn out_of_range_markers_get_invalid_marker() {
    let srv = TestServer::start(calm_config()).await;
    let mut c = srv.client("ana").await;
    c.join("r").await;
    for marker in [
        "-1",
        "18446744073709551616",
        "9007199254740992",
        "9007199254740993",
        "9223372036854775808",
    ] {
        c.send_raw(&format!(
            r#"{{"type":"read","room":"r","marker":{marker}}}"#
        ))
        .await;
        let e = c.frame("error").await;
        assert_eq!(e["code"], "invalid_marker", "{marker}");
        assert_eq!(e["frame"], "read", "{marker}");
    }
    srv.finish().await;
}

#[tokio::test]
async fn a_refused_frame_names_its_room_or_users() {
    let srv = TestServer::start(calm_config()).await;
    let mut c = srv.client("ana").await;
    c.send(json!({"type": "typing", "room": "nowhere", "active": true}))
        .await;
    let e = c.frame("error").await;
    assert_eq!(
        (&e["code"], &e["frame"], &e["room"]),
        (&json!("not_in_room"), &json!("typing"), &json!("nowhere"))
    );
    for i in 0..64 {
        c.join(&format!("r{i}")).await;
    }
    c.send(json!({"type": "join", "room": "r64"})).await;
    let e = c.frame("error").await;
    assert_eq!(
        (&e["code"], &e["frame"], &e["room"]),
        (&json!("too_many_rooms"), &json!("join"), &json!("r64"))
    );
    for chunk in 0..5 {
        let users: Vec<String> = (0..200).map(|u| format!("w{}", chunk * 200 + u)).collect();
        c.send(json!({"type": "watch", "users": users})).await;
        c.frame("watching").await;
    }
    c.send(json!({"type": "watch", "users": ["one-more"]}))
        .await;
    let e = c.frame("error").await;
    assert_eq!(
        (&e["code"], &e["users"]),
        (&json!("too_many_watched"), &json!(["one-more"]))
    );
    srv.finish().await;
}

/// PROTOCOL.md, "Error codes": an error refusing a `typing` or `read` frame
/// names its room whatever field is wrong (when rate-limited too), and names
/// none when the room itself is not a valid room id.
#[tokio::test]
async fn an_error_names_the_room_even_when_another_field_is_wrong() {
    let mut config = calm_config();
    // The ten bad frames below, then `rate_limited` (the join is restoring).
    config.rate = RateLimit {
        burst: 10,
        per_second: 0.001,
        abuse_factor: 100,
    };
    let srv = TestServer::start(config).await;
    let mut c = srv.client("ana").await;
    c.join("general").await;
    let long = format!(
        r#"{{"type":"typing","room":"{}","active":true}}"#,
        "r".repeat(129)
    );
    let named = [
        (
            r#"{"type":"typing","room":"general","active":"yes"}"#,
            "invalid_field",
        ),
        (r#"{"type":"typing","room":"general"}"#, "invalid_field"),
        (
            r#"{"type":"read","room":"general","marker":-1}"#,
            "invalid_marker",
        ),
        (
            r#"{"type":"read","room":"general","marker":1.5}"#,
            "invalid_marker",
        ),
        (
            r#"{"type":"read","room":"general","marker":9007199254740992}"#,
            "invalid_marker",
        ),
        (
            r#"{"type":"read","room":"general","marker":"7"}"#,
            "invalid_field",
        ),
    ];
    // The room itself is what is wrong: not echoed.
    let unnamed = [
        r#"{"type":"typing","room":"","active":true}"#,
        r#"{"type":"typing","room":"a b","active":true}"#,
        long.as_str(),
        r#"{"type":"read","room":7,"marker":1}"#,
    ];
    let cases = named
        .into_iter()
        .map(|(text, code)| (text, code, Some("general")))
        .chain(
            unnamed
                .into_iter()
                .map(|text| (text, "invalid_field", None)),
        );
    for (text, code, room) in cases {
        c.send_raw(text).await;
        let e = c.frame("error").await;
        let frame = &serde_json::from_str::<Value>(text).expect("JSON")["type"];
        assert_eq!(
            (&e["code"], &e["frame"]),
            (&json!(code), frame),
            "{text:.60}"
        );
        assert_eq!(e.get("room"), room.map(|r| json!(r)).as_ref(), "{text:.60}");
    }
    c.send_raw(r#"{"type":"read","room":"general","marker":"8"}"#)
        .await;
    let e = c.frame("error").await;
    assert_eq!(
        (&e["code"], &e["frame"], &e["room"]),
        (&json!("rate_limited"), &json!("read"), &json!("general"))
    );
    srv.finish().await;
}

#[tokio::test]
async fn a_new_socket_may_restore_the_most_state_the_limits_allow_at_once() {
    let srv = TestServer::start(calm_config()).await;
    let mut c = srv.client("ana").await;
    // Written at once, as the SDK does after a welcome: 64 joins, 64 reads,
    // 1,000 watched users in 5 frames, one status, then a full burst.
    let mut frames: Vec<Value> = Vec::new();
    for i in 0..64 {
        frames.push(json!({"type": "join", "room": format!("r{i}")}));
    }
    for i in 0..64 {
        frames.push(json!({"type": "read", "room": format!("r{i}"), "marker": i}));
    }
    for chunk in 0..5 {
        let users: Vec<String> = (0..200).map(|u| format!("w{}", chunk * 200 + u)).collect();
        frames.push(json!({"type": "watch", "users": users}));
    }
    frames.push(json!({"type": "status", "status": "busy", "text": "focus"}));
    for _ in 0..40 {
        frames.push(json!({"type": "ping"}));
    }
    c.send_all(frames.iter().map(|f| Message::text(f.to_string())))
        .await;
    let (mut snapshots, mut watching, mut pongs) = (0, 0, 0);
    // Pongs answer at once; snapshots come with the next batch.
    while (snapshots, watching, pongs) != (64, 5, 40) {
        let f = c.next().await;
        match f["type"].as_str() {
            Some("snapshot") => snapshots += 1,
            Some("watching") => watching += 1,
            Some("pong") => pongs += 1,
            Some("error") => panic!("refused: {f}"),
            _ => {}
        }
    }
    assert_eq!((snapshots, watching), (64, 5));
    // The allowance is spent: the rate limit applies again.
    for _ in 0..3 {
        c.send(json!({"type": "ping"})).await;
    }
    let mut limited = false;
    while let Some(f) = c.next_within(Duration::from_millis(300)).await {
        limited |= f["code"] == "rate_limited";
    }
    assert!(limited, "the 41st ping of the burst is limited");
    let (_, user) = srv.get("/v1/users/ana/presence", SERVICE_KEY).await;
    assert_eq!(
        (&user["status"], &user["text"]),
        (&json!("busy"), &json!("focus"))
    );
    srv.finish().await;
}

#[tokio::test]
async fn a_joiner_gets_no_diff_its_snapshot_already_shows() {
    let mut config = calm_config();
    config.batch_window = Duration::from_millis(200);
    let srv = TestServer::start(config).await;
    let mut bob = srv.client("bob").await;
    bob.join("r").await;
    // Within one batch window: bob changes, then ana joins.
    bob.send(json!({"type": "status", "status": "away", "text": "lunch"}))
        .await;
    let mut ana = srv.client("ana").await;
    let snap = ana.join("r").await;
    assert_eq!(names(&snap["members"]), ["ana", "bob"]);
    let shown = snap["members"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["user"] == "bob"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(shown["status"], "away");
    let seen = ana.diffs_during(Duration::from_millis(500)).await;
    assert!(seen.is_empty(), "nothing restated: {seen:?}");
    // bob, already a member, hears both.
    bob.diff("status", "bob").await;
    bob.diff("user_connected", "ana").await;
    srv.finish().await;
}

/// Every text message past 2 KiB comes as fragments of at most 2 KiB
/// (PROTOCOL.md, "Limits"): a client that takes no bigger frame still gets
/// the whole snapshot of a room whose parts are bigger than that.
#[tokio::test]
async fn big_messages_come_as_fragments_of_at_most_2_kib() {
    use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
    let srv = TestServer::start(calm_config()).await;
    let users = (0..120).map(|i| format!("a-member-with-a-longer-name-{i:03}"));
    let _members = srv.crowd("big", users).await;
    let config = WebSocketConfig::default().max_frame_size(Some(2048));
    let (ws, _) = tokio_tungstenite::connect_async_with_config(srv.url("zed"), Some(config), false)
        .await
        .expect("upgrade accepted");
    let mut zed = Client::raw(ws, "zed");
    zed.send(json!({"type": "hello", "v": 1})).await;
    zed.frame("welcome").await;
    let mut parts = vec![zed.join("big").await];
    while parts.last().is_some_and(|p| p["more"] == true) {
        parts.push(zed.frame("snapshot").await);
    }
    let got: usize = parts.iter().map(|p| names(&p["members"]).len()).sum();
    assert_eq!(got, 121, "{} parts", parts.len());
    assert!(
        parts.iter().any(|p| p.to_string().len() > 4096),
        "some part is bigger than a fragment, or this proves nothing"
    );
    srv.finish().await;
}

/// The status line and headers of the answer to a raw upgrade request.
async fn handshake(addr: std::net::SocketAddr, method: &str, headers: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let req = format!("{method} /ws HTTP/1.1\r\nHost: t\r\n{headers}\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    while !out.windows(4).any(|w| w == b"\r\n\r\n") {
        let mut buf = [0u8; 1024];
        let n = tokio::time::timeout(WAIT, s.read(&mut buf))
            .await
            .expect("an answer in time")
            .expect("read");
        assert!(n > 0, "closed before an answer");
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&out).to_lowercase()
}

#[tokio::test]
async fn what_is_not_a_websocket_upgrade_gets_a_plain_http_answer() {
    let srv = TestServer::start(calm_config()).await;
    let upgrade = "Connection: keep-alive, Upgrade\r\nUpgrade: WebSocket\r\n";
    let v13 = "Sec-WebSocket-Version: 13\r\n";
    // The key and its accept value from RFC 6455, section 1.3.
    let key = "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";
    let cases = [
        ("GET", String::new(), "426", "upgrade: websocket"),
        (
            "GET",
            format!("Connection: close\r\nUpgrade: websocket\r\n{v13}{key}"),
            "426",
            "upgrade: websocket",
        ),
        (
            "GET",
            format!("{upgrade}Sec-WebSocket-Version: 8\r\n{key}"),
            "426",
            "sec-websocket-version: 13",
        ),
        ("GET", format!("{upgrade}{v13}"), "400", ""),
        ("HEAD", format!("{upgrade}{v13}{key}"), "405", ""),
        ("POST", format!("{upgrade}{v13}{key}"), "405", ""),
        (
            "GET",
            format!("{upgrade}{v13}{key}"),
            "101",
            "sec-websocket-accept: s3pplmbitxaq9kygzzhzrbk+xoo=",
        ),
    ];
    for (method, headers, status, header) in cases {
        let answer = handshake(srv.addr, method, &headers).await;
        let line = answer.lines().next().unwrap_or_default();
        assert!(
            line.starts_with(&format!("http/1.1 {status}")),
            "{method} {headers:?}: {answer}"
        );
        assert!(answer.contains(header), "{method} {headers:?}: {answer}");
    }
    srv.finish().await;
}
