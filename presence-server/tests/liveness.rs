//! Dead connections, graces, reconnects and resumes: observers see a user go
//! offline exactly once, and never flap.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

fn count(seen: &[(Option<String>, serde_json::Value)], kind: &str, user: &str) -> usize {
    seen.iter()
        .filter(|(_, d)| d["type"] == kind && diff_user(d) == user)
        .count()
}

/// Keeps `c` alive with pings for `d` (the fast policy times out in 400 ms).
async fn ping_for(c: &mut Client, d: Duration) -> Vec<(Option<String>, serde_json::Value)> {
    let mut seen = Vec::new();
    let end = tokio::time::Instant::now() + d;
    while tokio::time::Instant::now() < end {
        c.send(json!({"type": "ping"})).await;
        seen.extend(c.diffs_during(Duration::from_millis(100)).await);
    }
    seen
}

#[tokio::test]
async fn silent_connection_goes_offline_exactly_once_after_timeout_and_grace() {
    let srv = TestServer::start(fast_config()).await;
    let mut ana = srv.client("ana").await;
    ana.join("r").await;
    let mut bob = srv.client("bob").await;
    bob.join("r").await;
    ana.diff("user_connected", "bob").await;
    // Bob's laptop lid shuts: the socket stays open but nothing more comes.
    let frozen = tokio::time::Instant::now();
    let bob_task = tokio::spawn(async move {
        // The server gives up on the socket after the heartbeat timeout.
        bob.close_code_within(Duration::from_secs(3)).await
    });
    let seen = ping_for(&mut ana, Duration::from_millis(600)).await;
    assert_eq!(
        count(&seen, "user_disconnected", "bob"),
        0,
        "not before timeout + grace"
    );
    let mut seen = seen;
    while count(&seen, "user_disconnected", "bob") == 0 {
        assert!(
            frozen.elapsed() < Duration::from_secs(3),
            "bob never went offline"
        );
        seen.extend(ping_for(&mut ana, Duration::from_millis(100)).await);
    }
    let took = frozen.elapsed();
    assert!(
        took >= Duration::from_millis(650),
        "timeout 400 + grace 300, took {took:?}"
    );
    // Well past the point where a duplicate would appear: still exactly one.
    seen.extend(ping_for(&mut ana, Duration::from_millis(700)).await);
    assert_eq!(count(&seen, "user_disconnected", "bob"), 1);
    let code = bob_task.await.expect("bob task");
    assert_eq!(code, Some(4000), "heartbeat timeout close code");
    srv.finish().await;
}

#[tokio::test]
async fn tcp_drop_without_close_frame_goes_offline_exactly_once_after_grace() {
    let srv = TestServer::start(fast_config()).await;
    let mut ana = srv.client("ana").await;
    ana.join("r").await;
    let mut bob = srv.client("bob").await;
    bob.join("r").await;
    ana.diff("user_connected", "bob").await;
    // Abort: the TCP connection goes away without a WebSocket close frame.
    let dropped = tokio::time::Instant::now();
    drop(bob);
    let mut seen = Vec::new();
    while count(&seen, "user_disconnected", "bob") == 0 {
        assert!(
            dropped.elapsed() < Duration::from_secs(3),
            "bob never went offline"
        );
        seen.extend(ping_for(&mut ana, Duration::from_millis(100)).await);
    }
    let took = dropped.elapsed();
    assert!(
        took >= Duration::from_millis(250),
        "offline grace 300 ms, took {took:?}"
    );
    seen.extend(ping_for(&mut ana, Duration::from_millis(900)).await);
    assert_eq!(count(&seen, "user_disconnected", "bob"), 1, "exactly once");
    srv.finish().await;
}

#[tokio::test]
async fn reconnect_within_grace_is_silent() {
    let srv = TestServer::start(calm_config()).await;
    let mut ana = srv.client("ana").await;
    ana.join("r").await;
    let mut bob = srv.client("bob").await;
    bob.join("r").await;
    ana.diff("user_connected", "bob").await;
    // A network blip: the socket dies, a new one comes within the 300 ms grace.
    drop(bob);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut bob = srv.client("bob").await;
    bob.join("r").await;
    let seen = ana.diffs_during(Duration::from_millis(800)).await;
    assert_eq!(count(&seen, "user_disconnected", "bob"), 0, "{seen:?}");
    assert_eq!(count(&seen, "user_connected", "bob"), 0, "{seen:?}");
    srv.finish().await;
}

#[tokio::test]
async fn resume_after_reload_is_silent_and_keeps_the_connection() {
    let srv = TestServer::start(calm_config()).await;
    let mut ana = srv.client("ana").await;
    ana.join("r").await;
    let mut bob = srv.client("bob").await;
    bob.join("r").await;
    ana.diff("user_connected", "bob").await;
    let token = bob.resume_token();
    let conn = bob.welcome["conn"].clone();
    // A reload: `leaving`, close, and the new page resumes within leave grace.
    bob.send(json!({"type": "leaving"})).await;
    bob.close().await;
    let bob = srv.adopt(Client::connect(&srv.url("bob"), "bob", Some(&token)).await);
    assert_eq!(bob.welcome["resumed"], true);
    assert_eq!(bob.welcome["conn"], conn);
    let seen = ana.diffs_during(Duration::from_millis(600)).await;
    assert!(
        seen.iter().all(|(_, d)| diff_user(d) != "bob"),
        "no offline/online pair: {seen:?}"
    );
    // The resumed connection kept its room.
    let (status, members) = srv.get("/v1/rooms/r/members", SERVICE_KEY).await;
    assert_eq!(status, 200);
    assert_eq!(names(&members["members"]), ["ana", "bob"]);
    srv.finish().await;
}

#[tokio::test]
async fn resume_on_a_new_socket_supersedes_the_old_one_with_4100_and_no_flap() {
    let srv = TestServer::start(calm_config()).await;
    let mut ana = srv.client("ana").await;
    ana.join("r").await;
    let mut old = srv.client("bob").await;
    old.join("r").await;
    ana.diff("user_connected", "bob").await;
    let token = old.resume_token();
    let mut new = srv.adopt(Client::connect(&srv.url("bob"), "bob", Some(&token)).await);
    assert_eq!(new.welcome["resumed"], true);
    assert_eq!(old.close_code().await, 4100);
    drop(old);
    // The old socket's end must not count as a drop of the resumed connection.
    let seen = ana.diffs_during(Duration::from_millis(700)).await;
    assert!(seen.iter().all(|(_, d)| diff_user(d) != "bob"), "{seen:?}");
    new.send(json!({"type": "typing", "room": "r", "active": true}))
        .await;
    ana.diff("typing_started", "bob").await;
    srv.finish().await;
}

#[tokio::test]
async fn a_resume_token_of_another_user_starts_a_fresh_connection() {
    let srv = TestServer::start(calm_config()).await;
    let bob = srv.client("bob").await;
    let token = bob.resume_token();
    let eve = srv.adopt(Client::connect(&srv.url("eve"), "eve", Some(&token)).await);
    assert_eq!(eve.welcome["resumed"], false);
    assert_eq!(eve.welcome["user"], "eve");
    assert_ne!(eve.welcome["conn"], bob.welcome["conn"]);
    srv.finish().await;
}
