//! Presence as observers see it: rooms, tabs, idle/active, typing, receipts,
//! leaving, invisibility and watch lists.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

#[tokio::test]
async fn two_users_see_each_other_join_go_idle_become_active_and_leave() {
    let srv = TestServer::start(calm_config()).await;
    let mut ana = srv.client("ana").await;
    let snap = ana.join("general").await;
    assert_eq!(names(&snap["members"]), ["ana"]);

    let mut bob = srv.client("bob").await;
    let snap = bob.join("general").await;
    assert_eq!(names(&snap["members"]), ["ana", "bob"]);
    let (room, d) = ana.diff("user_connected", "bob").await;
    assert_eq!(room.as_deref(), Some("general"));
    assert_eq!(d["presence"]["state"], "active");

    bob.send(json!({"type": "activity", "state": "idle", "reason": "hidden"}))
        .await;
    let (_, d) = ana.diff("user_idle", "bob").await;
    assert_eq!(d["reason"], "hidden");

    bob.send(json!({"type": "activity", "state": "active"}))
        .await;
    ana.diff("user_active", "bob").await;

    bob.send(json!({"type": "leave", "room": "general"})).await;
    let (_, d) = ana.diff("user_left", "bob").await;
    assert_eq!(
        d,
        json!({"type": "user_left", "user": "bob"}),
        "still online elsewhere"
    );
    srv.finish().await;
}

#[tokio::test]
async fn three_tabs_of_one_user_are_one_user() {
    let srv = TestServer::start(calm_config()).await;
    let mut ana = srv.client("ana").await;
    ana.join("r").await;
    let mut tabs = Vec::new();
    for _ in 0..3 {
        let mut t = srv.client("bob").await;
        t.join("r").await;
        tabs.push(t);
    }
    ana.diff("user_connected", "bob").await;
    // Two tabs go idle, one stays active: bob stays active; then the last one
    // closes after `leaving` and the two idle ones make bob idle, once.
    for t in tabs.iter_mut().take(2) {
        t.send(json!({"type": "activity", "state": "idle", "reason": "no_input"}))
            .await;
    }
    let last = tabs.pop().expect("three tabs");
    let mut last = last;
    last.send(json!({"type": "leaving"})).await;
    last.close().await;
    let seen = ana.diffs_during(Duration::from_millis(600)).await;
    let about_bob: Vec<&str> = seen
        .iter()
        .filter(|(_, d)| diff_user(d) == "bob")
        .map(|(_, d)| d["type"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(about_bob, ["user_idle"], "one user, one transition");

    let snap = ana.join("r").await;
    let bob = snap["members"]
        .as_array()
        .and_then(|m| m.iter().find(|m| m["user"] == "bob").cloned())
        .expect("bob is a member");
    assert_eq!(bob["state"], "idle");
    srv.finish().await;
}

#[tokio::test]
async fn typing_starts_and_expires_without_a_refresh() {
    let srv = TestServer::start(calm_config()).await;
    let mut ana = srv.client("ana").await;
    let mut bob = srv.client("bob").await;
    ana.join("r").await;
    bob.join("r").await;
    bob.send(json!({"type": "typing", "room": "r", "active": true}))
        .await;
    let started = tokio::time::Instant::now();
    ana.diff("typing_started", "bob").await;
    ana.diff("typing_stopped", "bob").await;
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(250),
        "typing expired after its ttl, not before ({took:?})"
    );
    srv.finish().await;
}

#[tokio::test]
async fn host_message_sent_stops_typing_at_once() {
    // A 5 s typing ttl: a stop within WAIT can only come from message_sent.
    let mut config = calm_config();
    config.timing.typing_ttl = Duration::from_secs(5);
    let srv = TestServer::start(config).await;
    let mut ana = srv.client("ana").await;
    let mut bob = srv.client("bob").await;
    ana.join("r").await;
    bob.join("r").await;
    bob.send(json!({"type": "typing", "room": "r", "active": true}))
        .await;
    ana.diff("typing_started", "bob").await;
    let user = presence_server::presence_core::UserId::new("bob").expect("id");
    let room = presence_server::presence_core::RoomId::new("r").expect("id");
    srv.server
        .message_sent(&user, &room)
        .await
        .expect("one node");
    let sent = tokio::time::Instant::now();
    ana.diff("typing_stopped", "bob").await;
    assert!(sent.elapsed() < Duration::from_secs(1));
    srv.finish().await;
}

#[tokio::test]
async fn read_receipts_arrive_in_order_and_never_go_back() {
    let srv = TestServer::start(calm_config()).await;
    let mut ana = srv.client("ana").await;
    let mut bob = srv.client("bob").await;
    ana.join("r").await;
    bob.join("r").await;
    for marker in [1u64, 2, 3, 2, 5, 8, 13] {
        bob.send(json!({"type": "read", "room": "r", "marker": marker}))
            .await;
    }
    let mut markers = Vec::new();
    while markers.last() != Some(&13) {
        let (_, d) = ana.diff("read", "bob").await;
        markers.push(d["marker"].as_u64().expect("marker"));
    }
    assert_eq!(markers, [1, 2, 3, 5, 8, 13]);
    let snap = ana.join("r").await;
    assert_eq!(snap["receipts"], json!([{"user": "bob", "marker": 13}]));
    srv.finish().await;
}

#[tokio::test]
async fn explicit_leaving_goes_offline_within_the_short_leave_grace() {
    let srv = TestServer::start(calm_config()).await;
    let mut ana = srv.client("ana").await;
    let mut bob = srv.client("bob").await;
    ana.join("r").await;
    bob.join("r").await;
    ana.diff("user_connected", "bob").await;
    bob.send(json!({"type": "leaving"})).await;
    let sent = tokio::time::Instant::now();
    bob.close().await;
    ana.diff("user_disconnected", "bob").await;
    let took = sent.elapsed();
    // leave grace 100 ms, offline grace 300 ms: the short one applied.
    assert!(took < Duration::from_millis(280), "took {took:?}");
    srv.finish().await;
}

#[tokio::test]
async fn invisible_status_hides_the_user_while_they_still_receive() {
    let srv = TestServer::start(calm_config()).await;
    let mut ana = srv.client("ana").await;
    let mut bob = srv.client("bob").await;
    ana.join("r").await;
    bob.join("r").await;
    ana.diff("user_connected", "bob").await;

    bob.send(json!({"type": "status", "status": "invisible"}))
        .await;
    let own = bob.frame("self_status").await;
    assert_eq!(own["status"], "invisible");
    let (_, d) = ana.diff("user_disconnected", "bob").await;
    assert_eq!(d["user"], "bob");
    let snap = ana.join("r").await;
    assert_eq!(names(&snap["members"]), ["ana"], "bob is hidden");

    // Invisible bob types: nobody sees it. He still receives ana's changes.
    bob.send(json!({"type": "typing", "room": "r", "active": true}))
        .await;
    ana.send(json!({"type": "activity", "state": "idle", "reason": "blurred"}))
        .await;
    bob.diff("user_idle", "ana").await;
    let seen = ana.diffs_during(Duration::from_millis(200)).await;
    assert!(
        seen.iter().all(|(_, d)| diff_user(d) != "bob"),
        "nothing about invisible bob: {seen:?}"
    );
    let (status, view) = srv.get("/v1/users/bob/presence", SERVICE_KEY).await;
    assert_eq!(status, 200);
    assert_eq!(view["state"], "offline");
    assert_eq!(view["status"], "available", "never shown as invisible");
    srv.finish().await;
}

#[tokio::test]
async fn watchers_see_a_contact_come_and_go_in_any_room() {
    let srv = TestServer::start(calm_config()).await;
    let mut ana = srv.client("ana").await;
    ana.send(json!({"type": "watch", "users": ["bob"]})).await;
    let w = ana.frame("watching").await;
    assert_eq!(w["users"][0]["user"], "bob");
    assert_eq!(w["users"][0]["state"], "offline");

    let mut bob = srv.client("bob").await;
    let (room, _) = ana.diff("user_connected", "bob").await;
    assert_eq!(room, None, "watch-list diffs carry no room");
    bob.send(json!({"type": "activity", "state": "idle", "reason": "locked"}))
        .await;
    ana.diff("user_idle", "bob").await;
    ana.send(json!({"type": "unwatch", "users": ["bob"]})).await;
    // Let the unwatch land before bob changes again.
    ana.send(json!({"type": "ping"})).await;
    ana.frame("pong").await;
    bob.send(json!({"type": "activity", "state": "active"}))
        .await;
    assert!(
        ana.diff_within("user_active", "bob", Duration::from_millis(300))
            .await
            .is_none(),
        "no diffs after unwatch"
    );
    srv.finish().await;
}

/// A user connected in-process (`PresenceServer::connect`) is one like any
/// other: a socket's member sees them join and go idle, they see the socket
/// user's diffs, a big snapshot comes whole, and dropping the handle is a
/// closed socket (offline after the grace).
#[tokio::test]
async fn an_in_process_connection_is_a_user_like_any_other() {
    let srv = TestServer::start(calm_config()).await;
    let mut ana = srv.client("ana").await;
    ana.join("r").await;
    // Four members with 900 bytes of data each: a snapshot past the
    // writer's 2 KiB fragments, which must reach the bot whole.
    let mut others = Vec::new();
    for name in ["b1", "b2", "b3"] {
        let mut c = srv.client(name).await;
        c.join("r").await;
        c.send(json!({"type": "data", "data": {"pad": "x".repeat(900)}}))
            .await;
        ana.diff("data", name).await;
        others.push(c);
    }
    let mut bot = srv
        .server
        .connect(presence_server::Identity::from(
            presence_core::UserId::new("bot").expect("id"),
        ))
        .await
        .expect("connected");
    let frame = |t: String| serde_json::from_str::<serde_json::Value>(&t).expect("json");
    bot.send(json!({"type": "hello", "v": 1}).to_string())
        .await
        .expect("sent");
    assert_eq!(frame(bot.recv().await.expect("welcome"))["type"], "welcome");
    bot.send(json!({"type": "join", "room": "r"}).to_string())
        .await
        .expect("sent");
    let snap = loop {
        let f = frame(bot.recv().await.expect("a frame"));
        if f["type"] == "snapshot" {
            break f;
        }
    };
    assert_eq!(names(&snap["members"]), ["ana", "b1", "b2", "b3", "bot"]);
    assert!(snap.to_string().len() > 2_700, "{snap}");
    ana.diff("user_connected", "bot").await;
    bot.send(json!({"type": "activity", "state": "idle", "reason": "hidden"}).to_string())
        .await
        .expect("sent");
    let (_, d) = ana.diff("user_idle", "bot").await;
    assert_eq!(d["reason"], "hidden");
    drop(bot);
    ana.diff("user_disconnected", "bot").await;
    srv.finish().await;
}
