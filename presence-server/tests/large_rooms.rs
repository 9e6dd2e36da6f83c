//! Large rooms over real sockets, with a threshold of 5 so they fill fast
//! (PROTOCOL.md, "Large rooms"); the cluster scenarios are in cluster.rs.

mod common;

use std::time::{Duration, Instant};

use common::*;
use presence_server::presence_core::RoomId;
use presence_server::{PresenceServer, ServerConfig};
use serde_json::{Value, json};

const INTERVAL: Duration = Duration::from_millis(300);

fn config() -> ServerConfig {
    ServerConfig {
        large_room_members: 5,
        large_room_interval: INTERVAL,
        ..calm_config()
    }
}

async fn server() -> TestServer {
    TestServer::start(config()).await
}

/// Connects `users` and joins each to `room`, in order.
async fn fill(srv: &TestServer, room: &str, users: &[&str]) -> Vec<Client> {
    let mut out = Vec::new();
    for u in users {
        let mut c = srv.client(u).await;
        c.join(room).await;
        out.push(c);
    }
    out
}

/// The next frame of `kind` about `room`, skipping others (diffs stashed).
async fn next_of(c: &mut Client, kind: &str, room: &str) -> Value {
    loop {
        let f = c.frame(kind).await;
        if f["room"] == room {
            return f;
        }
    }
}

fn counts(f: &Value) -> (u64, u64, u64) {
    let c = &f["counts"];
    (
        c["online"].as_u64().unwrap_or(u64::MAX),
        c["active"].as_u64().unwrap_or(u64::MAX),
        c["idle"].as_u64().unwrap_or(u64::MAX),
    )
}

fn idle() -> Value {
    json!({"type": "activity", "state": "idle", "reason": "hidden"})
}

/// Frames of `room` that arrive during `d`, by type (`diffs` of other
/// audiences left out).
async fn room_frames(c: &mut Client, room: &str, d: Duration) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + d;
    let mut out = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let Some(f) = c.next_within(left).await else {
            return out;
        };
        if f["room"] == room {
            out.push(f);
        }
    }
}

#[tokio::test]
async fn a_room_becomes_large_at_the_threshold_and_every_member_is_told() {
    let srv = server().await;
    let mut early = fill(&srv, "r", &["a1", "a2", "a3", "a4"]).await;
    let snap = early[0].join("r").await;
    assert!(
        snap.get("large").is_none() && snap.get("counts").is_none(),
        "a small room's snapshot is as it always was: {snap}"
    );
    let mut fifth = srv.client("a5").await;
    let snap = fifth.join("r").await;
    assert_eq!(snap["large"], true, "{snap}");
    assert_eq!(counts(&snap), (5, 5, 0));
    assert_eq!(names(&snap["members"]), ["a1", "a2", "a3", "a4", "a5"]);
    for c in &mut early {
        let f = next_of(c, "snapshot", "r").await;
        assert_eq!(f["large"], true, "{}: told unasked", c.user);
        assert_eq!(counts(&f), (5, 5, 0));
    }
}

#[tokio::test]
async fn a_large_room_sends_one_summary_per_interval_instead_of_diffs() {
    let srv = server().await;
    let mut members = fill(&srv, "r", &["b1", "b2", "b3", "b4", "b5", "b6"]).await;
    let mut observer = members.remove(0);
    next_of(&mut observer, "snapshot", "r").await; // the room became large
    let _ = room_frames(&mut observer, "r", INTERVAL * 2).await;

    // Several changes within an interval: one summary with the counts.
    for m in members.iter_mut().take(3) {
        m.send(idle()).await;
    }
    let start = Instant::now();
    let frames = room_frames(&mut observer, "r", INTERVAL * 3).await;
    let kinds: Vec<&str> = frames.iter().filter_map(|f| f["type"].as_str()).collect();
    assert!(
        !kinds.contains(&"diffs"),
        "no per-change diffs in a large room: {kinds:?}"
    );
    let summaries: Vec<&Value> = frames.iter().filter(|f| f["type"] == "summary").collect();
    assert!(!summaries.is_empty(), "a summary came: {frames:?}");
    assert_eq!(
        counts(summaries.last().expect("one")),
        (6, 3, 3),
        "the counts are the truth"
    );
    assert!(
        summaries.len() <= 2,
        "three changes, at most two summaries: {summaries:?}"
    );
    assert!(start.elapsed() >= INTERVAL);

    // A steady trickle of changes for 1.2 s: summaries stay an interval apart.
    let mut seen = Vec::new();
    let mut last = None;
    let until = Instant::now() + Duration::from_millis(1_200);
    let mut i = 0usize;
    while Instant::now() < until {
        let n = members.len();
        let m = &mut members[i % n];
        let state = if i.is_multiple_of(2) {
            json!("active")
        } else {
            json!("idle")
        };
        m.send(json!({"type": "activity", "state": state, "reason": "hidden"}))
            .await;
        i += 1;
        for f in room_frames(&mut observer, "r", Duration::from_millis(50)).await {
            assert_ne!(f["type"], "diffs", "{f}");
            if f["type"] == "summary" {
                seen.push(Instant::now());
                last = Some(f);
            }
        }
    }
    assert!(seen.len() >= 2, "summaries kept coming: {}", seen.len());
    for pair in seen.windows(2) {
        // Arrival times jitter by a poll of 50 ms at most.
        assert!(
            pair[1] - pair[0] >= INTERVAL - Duration::from_millis(60),
            "{:?} apart",
            pair[1] - pair[0]
        );
    }
    // Once the changes stop, the last summary and the HTTP count agree.
    for f in room_frames(&mut observer, "r", INTERVAL * 2).await {
        if f["type"] == "summary" {
            last = Some(f);
        }
    }
    let last = counts(&last.expect("a summary"));
    let (_, body) = srv.get("/v1/rooms/r/count", SERVICE_KEY).await;
    assert_eq!(counts(&body), last, "the HTTP count agrees: {body}");
}

#[tokio::test]
async fn summaries_say_who_came_and_went_and_the_room_is_small_again_below_80_percent() {
    let srv = server().await;
    let mut members = fill(&srv, "r", &["c1", "c2", "c3", "c4", "c5"]).await;
    let mut observer = members.remove(0);
    next_of(&mut observer, "snapshot", "r").await;
    let mut c6 = srv.client("c6").await;
    c6.join("r").await;
    let s = next_of(&mut observer, "summary", "r").await;
    assert_eq!(names(&s["joined"]), ["c6"], "{s}");
    assert_eq!(counts(&s).0, 6);
    c6.send(json!({"type": "leave", "room": "r"})).await;
    members[3].send(json!({"type": "leave", "room": "r"})).await;
    let s = next_of(&mut observer, "summary", "r").await;
    let mut left: Vec<&str> = s["left"]
        .as_array()
        .expect("left")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    left.sort();
    assert_eq!(left, ["c5", "c6"], "{s}");
    assert_eq!(counts(&s).0, 4, "still large at 4 (80 % of 5)");
    let (_, metrics) = http_text(srv.addr, "/metrics").await;
    for line in [
        "presence_large_rooms 1",
        "presence_large_room_switches_total{to=\"large\"} 1",
        "presence_summaries_total 2",
    ] {
        assert!(metrics.contains(line), "{line} in {metrics}");
    }

    // Down to 3: small again, with a full snapshot, then diffs.
    members[2].send(json!({"type": "leave", "room": "r"})).await;
    let snap = next_of(&mut observer, "snapshot", "r").await;
    assert!(snap.get("large").is_none(), "{snap}");
    assert_eq!(names(&snap["members"]), ["c1", "c2", "c3"]);
    let (_, metrics) = http_text(srv.addr, "/metrics").await;
    assert!(metrics.contains("presence_large_rooms 0"), "{metrics}");
    assert!(
        metrics.contains("presence_large_room_switches_total{to=\"small\"} 1"),
        "{metrics}"
    );
    members[0].send(idle()).await;
    let (room, _) = observer.diff("user_idle", "c2").await;
    assert_eq!(room.as_deref(), Some("r"), "per-change diffs again");
}

#[tokio::test]
async fn watch_follows_individuals_in_a_large_room() {
    let srv = server().await;
    let mut members = fill(&srv, "r", &["d1", "d2", "d3", "d4", "d5"]).await;
    let mut observer = members.remove(0);
    next_of(&mut observer, "snapshot", "r").await;
    observer
        .send(json!({"type": "watch", "users": ["d3"]}))
        .await;
    observer.frame("watching").await;
    members[1].send(idle()).await;
    let (room, d) = observer.diff("user_idle", "d3").await;
    assert_eq!(room, None, "the watch list's diff, at once");
    assert_eq!(d["reason"], "hidden");
    let s = next_of(&mut observer, "summary", "r").await;
    assert_eq!(counts(&s), (5, 4, 1));
}

#[tokio::test]
async fn a_room_can_have_its_own_threshold() {
    let srv = TestServer::start_with(
        PresenceServer::builder()
            .config(config())
            .large_room(RoomId::new("everyone").expect("valid"), usize::MAX)
            .large_room(RoomId::new("stage").expect("valid"), 2),
    )
    .await;
    let mut a = fill(&srv, "everyone", &["e1", "e2", "e3", "e4", "e5", "e6"]).await;
    let snap = a[5].join("everyone").await;
    assert!(snap.get("large").is_none(), "never large: {snap}");
    assert_eq!(names(&snap["members"]).len(), 6);

    a[0].join("stage").await;
    let snap = a[1].join("stage").await;
    assert_eq!(snap["large"], true, "large at 2: {snap}");

    srv.server
        .set_large_room(RoomId::new("everyone").expect("valid"), None);
    let mut e7 = srv.client("e7").await;
    let snap = e7.join("everyone").await;
    assert_eq!(
        snap["large"], true,
        "back to the server's threshold: {snap}"
    );
    assert_eq!(counts(&snap), (7, 7, 0));
}

#[tokio::test]
async fn a_large_snapshot_lists_the_first_online_members_and_counts_the_rest() {
    let mut cfg = config();
    cfg.large_room_members = 3;
    let srv = TestServer::start(cfg).await;
    let _members = srv.crowd("big", (0..205).map(|i| format!("m{i:03}"))).await;
    let mut late = srv.client("zz").await;
    late.send(json!({"type": "join", "room": "big"})).await;
    let mut listed = Vec::new();
    loop {
        let part = late.frame("snapshot").await;
        assert_eq!(part["large"], true);
        assert_eq!(counts(&part), (206, 206, 0), "every part has the counts");
        listed.extend(names(&part["members"]));
        if part.get("more").is_none() {
            break;
        }
    }
    assert_eq!(listed.len(), 200, "capped");
    assert_eq!(listed.first().map(String::as_str), Some("m000"));
    assert_eq!(
        listed.last().map(String::as_str),
        Some("m199"),
        "in user-id order"
    );
}
