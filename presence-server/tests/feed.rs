//! `GET /v1/events`: the backend feed as Server-Sent Events over a real
//! HTTP connection, with `Last-Event-ID` resume and a gap when the replay
//! window cannot cover it.

mod common;

use std::time::Duration;

use common::*;

type Feed = SseReader;

trait Numbered {
    fn num(&self) -> Option<u64>;
}

impl Numbered for SseEvent {
    fn num(&self) -> Option<u64> {
        self.id.as_deref().and_then(|i| i.parse().ok())
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
    let first_id = first.num().expect("an id");
    let mut bob = srv.client("bob").await;
    bob.join("r").await;
    let second = live.find("user_connected", "bob").await;
    assert!(second.num().expect("an id") > first_id, "ids grow");

    // A reader back after ana's event gets what followed, bob's included.
    let (_, mut again) = Feed::open(&srv, SERVICE_KEY, Some(&first_id.to_string())).await;
    let replayed = again.next().await;
    assert!(replayed.num().expect("an id") > first_id);
    let bob_again = if diff_user(&replayed.data) == "bob" && replayed.event == "user_connected" {
        replayed
    } else {
        again.find("user_connected", "bob").await
    };
    assert_eq!(bob_again.num(), second.num());

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
