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
    // Read as they come: a live reader a whole window behind is dropped.
    for i in 0..10 {
        bob.send(serde_json::json!({"type": "read", "room": "r", "marker": i + 1}))
            .await;
        live.find("read", "bob").await;
    }
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
    srv.finish().await;
}

#[tokio::test]
async fn a_last_event_id_that_is_no_id_is_refused_with_bad_last_event_id_as_in_a_cluster() {
    let srv = TestServer::start(calm_config()).await;
    let (status, body) = srv.get("/v1/events?last_event_id=soon", SERVICE_KEY).await;
    assert_eq!(status, 400);
    assert_eq!(body["error"]["code"], "bad_last_event_id", "{body}");
    let (status, _) = Feed::open(&srv, SERVICE_KEY, Some("-1")).await;
    assert_eq!(status, 400);
    srv.finish().await;
}

/// The events a reader gets until nothing comes for a while.
async fn drain(feed: &mut Feed) -> Vec<SseEvent> {
    let mut got = Vec::new();
    while let Some(e) = feed.next_within(Duration::from_millis(300)).await {
        got.push(e);
    }
    got
}

#[tokio::test]
async fn a_gap_carries_the_position_after_it_so_a_reader_back_from_it_gets_no_gap_again() {
    let mut config = calm_config();
    config.event_replay = 4;
    let srv = TestServer::start(config).await;
    let (_, mut live) = Feed::open(&srv, SERVICE_KEY, None).await;
    let mut ana = srv.client("ana").await;
    ana.join("r").await;
    let first = live
        .find("user_connected", "ana")
        .await
        .num()
        .expect("an id");

    // A position with nothing after it (ids from another run, or made up):
    // the gap's id is the newest event, so coming back with it is quiet,
    // and the next event is not lost.
    let future = (first + 1_000_000).to_string();
    let (_, mut lost) = Feed::open(&srv, SERVICE_KEY, Some(&future)).await;
    let gap = lost.next().await;
    assert_eq!(gap.event, "gap");
    let resume = gap.id.clone().expect("the gap has an id");
    let newest: u64 = resume.parse().expect("a number");
    assert_eq!(newest + 1, gap.data["next"], "{gap:?}");
    drop(lost);
    let (_, mut back) = Feed::open(&srv, SERVICE_KEY, Some(&resume)).await;
    let quiet = back.next_within(Duration::from_millis(300)).await;
    assert!(quiet.is_none(), "no gap again: {quiet:?}");
    let bob = srv.client("bob").await;
    let next = back.find("user_connected", "bob").await;
    assert_eq!(next.num(), Some(newest + 1), "nothing lost after the gap");

    // A position the window no longer covers: the gap's id is just before
    // the oldest kept event, which follows it; coming back with it replays
    // the same events and no gap.
    for i in 0..6 {
        ana.send(serde_json::json!({"type": "read", "room": "r", "marker": i + 1}))
            .await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_, mut old) = Feed::open(&srv, SERVICE_KEY, Some(&first.to_string())).await;
    let mut told = drain(&mut old).await;
    assert_eq!(told.first().map(|e| e.event.as_str()), Some("gap"));
    let gap = told.remove(0);
    let oldest = gap.data["oldest"].as_u64().expect("oldest");
    assert_eq!(gap.num(), Some(oldest - 1), "{gap:?}");
    assert_eq!(told.first().and_then(|e| e.num()), Some(oldest));
    let (_, mut again) = Feed::open(&srv, SERVICE_KEY, gap.id.as_deref()).await;
    let replayed = drain(&mut again).await;
    assert!(replayed.iter().all(|e| e.event != "gap"), "{replayed:?}");
    let ids = |events: &[SseEvent]| events.iter().map(|e| e.num()).collect::<Vec<_>>();
    assert_eq!(ids(&replayed), ids(&told), "the same events, none twice");
    drop(bob); // kept so far: its going offline would move the window
    srv.finish().await;
}
