//! `GET /v1/events`: the backend feed as Server-Sent Events over a real
//! HTTP connection, with `Last-Event-ID` resume and a gap when the replay
//! window cannot cover it.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// One SSE reader. HTTP/1.0, so the body is the raw event stream (no
/// chunked framing to undo).
struct Feed {
    lines: tokio::io::Lines<BufReader<TcpStream>>,
}

#[derive(Debug)]
struct Sse {
    id: Option<u64>,
    event: String,
    data: Value,
}

impl Feed {
    async fn open(srv: &TestServer, bearer: &str, last: Option<&str>) -> (u16, Feed) {
        let mut tcp = TcpStream::connect(srv.addr).await.expect("connect");
        let resume = last.map_or(String::new(), |l| format!("Last-Event-ID: {l}\r\n"));
        let req = format!(
            "GET /v1/events HTTP/1.0\r\nHost: t\r\nAuthorization: Bearer {bearer}\r\n{resume}\r\n"
        );
        tcp.write_all(req.as_bytes()).await.expect("write");
        let mut lines = BufReader::new(tcp).lines();
        let status_line = lines.next_line().await.expect("read").unwrap_or_default();
        let status = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        while let Ok(Some(line)) = lines.next_line().await {
            if line.is_empty() {
                break;
            }
        }
        (status, Feed { lines })
    }

    async fn next(&mut self) -> Sse {
        let mut ev = Sse {
            id: None,
            event: String::new(),
            data: Value::Null,
        };
        loop {
            let line = tokio::time::timeout(WAIT, self.lines.next_line())
                .await
                .expect("an event in time")
                .expect("read")
                .expect("stream open");
            if line.is_empty() && !ev.event.is_empty() {
                return ev;
            }
            if let Some(v) = line.strip_prefix("id: ").or(line.strip_prefix("id:")) {
                ev.id = v.trim().parse().ok();
            } else if let Some(v) = line.strip_prefix("event: ").or(line.strip_prefix("event:")) {
                ev.event = v.trim().to_owned();
            } else if let Some(v) = line.strip_prefix("data: ").or(line.strip_prefix("data:")) {
                ev.data = serde_json::from_str(v).expect("json data");
            }
        }
    }

    /// Skips to the next `kind` event about `user`.
    async fn find(&mut self, kind: &str, user: &str) -> Sse {
        loop {
            let ev = self.next().await;
            if ev.event == kind && diff_user(&ev.data) == user {
                return ev;
            }
        }
    }
}

#[tokio::test]
async fn the_feed_numbers_events_and_resumes_after_last_event_id() {
    let mut config = calm_config();
    config.event_replay = 8;
    let srv = TestServer::start(config).await;
    let (status, mut live) = Feed::open(&srv, SERVICE_KEY, None).await;
    assert_eq!(status, 200);

    let mut ana = srv.client("ana").await;
    ana.join("r").await;
    let first = live.find("user_connected", "ana").await;
    assert_eq!(first.data["global"], true);
    let first_id = first.id.expect("an id");
    let mut bob = srv.client("bob").await;
    bob.join("r").await;
    let second = live.find("user_connected", "bob").await;
    assert!(second.id.expect("an id") > first_id, "ids grow");

    // A reader back after ana's event gets what followed, bob's included.
    let (_, mut again) = Feed::open(&srv, SERVICE_KEY, Some(&first_id.to_string())).await;
    let replayed = again.next().await;
    assert!(replayed.id.expect("an id") > first_id);
    let bob_again = if diff_user(&replayed.data) == "bob" && replayed.event == "user_connected" {
        replayed
    } else {
        again.find("user_connected", "bob").await
    };
    assert_eq!(bob_again.id, second.id);

    // More events than the window keeps: an old id gets a gap first.
    for i in 0..10 {
        bob.send(serde_json::json!({"type": "read", "room": "r", "marker": i + 1}))
            .await;
    }
    live.find("read", "bob").await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (_, mut late) = Feed::open(&srv, SERVICE_KEY, Some(&first_id.to_string())).await;
    let gap = late.next().await;
    assert_eq!(gap.event, "gap");
    assert_eq!(gap.data["after"], first_id);

    // Bad ids and user tokens are refused.
    let (status, _) = Feed::open(&srv, SERVICE_KEY, Some("soon")).await;
    assert_eq!(status, 400);
    let (status, _) = Feed::open(&srv, &token("ana"), None).await;
    assert_eq!(status, 403);
    srv.stop().await;
}
