//! Whole cluster scenarios on virtual time: real nodes (`PresenceServer`
//! with its driver, rounds, leases and cleaning) over the in-process
//! [`MemoryCluster`], users connected in-process ([`LocalSocket`]: the real
//! session, no socket), all on tokio's paused time. Nothing waits for the
//! wall clock, so the scenarios run at the default timings (5 s leases, 10 s
//! offline grace, 25 ms batch window) in milliseconds each, and every time
//! they assert is the virtual time the node took, exact to the round, the
//! same on a loaded machine as on an idle one.

mod common;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use common::{diff_user, names};
use presence_server::backend::MemoryBackend;
use presence_server::presence_core::UserId;
use presence_server::{
    ClusterConfig, Identity, LocalSocket, MemoryCluster, PresenceServer, ServerConfig,
};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// The default lease.
const LEASE: Duration = Duration::from_secs(5);
/// Longer than anything a scenario waits for.
const WAIT: Duration = Duration::from_secs(120);
/// A change reaches another node's socket within this: the writer's batch
/// window and round, the bus, the reader's batch window, on virtual time.
const ROUND: Duration = Duration::from_millis(100);

/// One node and its link, which a scenario may cut.
struct Node {
    server: PresenceServer,
    link: Arc<MemoryBackend>,
}

async fn node_with(mem: &MemoryCluster, id: &str, config: ServerConfig) -> Node {
    let link = Arc::new(mem.node());
    let server = PresenceServer::builder()
        .config(config)
        // Users come in-process (the host vouches for them): no token is read.
        .auth(presence_server::DevAuth)
        .cluster(
            link.clone(),
            ClusterConfig {
                node_id: id.into(),
                event_shards: 4,
                ..ClusterConfig::default()
            },
        )
        .build()
        .expect("a node");
    Node { server, link }
}

/// `n` nodes named a, b, c, … at the default timings, each registered.
async fn nodes(mem: &MemoryCluster, n: usize) -> Vec<Node> {
    let mut v = Vec::new();
    for id in ["a", "b", "c", "d"].into_iter().take(n) {
        v.push(node_with(mem, id, ServerConfig::default()).await);
    }
    up(&v).await;
    v
}

/// Waits (virtual time) until every node reaches the cluster.
async fn up(nodes: &[Node]) {
    let until = Instant::now() + WAIT;
    while !nodes.iter().all(|n| n.server.cluster_up() == Some(true)) {
        assert!(Instant::now() < until, "nodes did not come up");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A user connected in-process. A task answers for it as a browser tab
/// would: it pings every heartbeat interval and queues what arrives, so a
/// user the scenario is not reading stays alive. Dropping it is the tab
/// going away.
struct User {
    name: String,
    out: mpsc::Sender<String>,
    /// What arrived, with when.
    frames: mpsc::Receiver<(Instant, Value)>,
    diffs: VecDeque<(Instant, Value)>,
}

impl User {
    async fn on(node: &Node, name: &str) -> Self {
        Self::resuming(node, name, None).await.0
    }

    /// A tab of `name` on `node`, resuming the connection behind `resume`
    /// if given; with the welcome's `resumed` and resume token.
    async fn resuming(node: &Node, name: &str, resume: Option<&str>) -> (Self, bool, String) {
        let who = Identity::from(UserId::new(name).expect("a user id"));
        let socket = node.server.connect(who).await.expect("connected");
        let (out, out_rx) = mpsc::channel(64);
        let (frames_tx, frames) = mpsc::channel(4096);
        tokio::spawn(tab(socket, out_rx, frames_tx));
        let mut u = Self {
            name: name.into(),
            out,
            frames,
            diffs: VecDeque::new(),
        };
        let mut hello = json!({"type": "hello", "v": 1});
        if let Some(token) = resume {
            hello["resume"] = json!(token);
        }
        u.send(hello).await;
        let welcome = u.frame("welcome").await;
        let token = welcome["resume"].as_str().unwrap_or_default().to_owned();
        (u, welcome["resumed"] == true, token)
    }

    /// [`Self::on`], then joined to `room`.
    async fn in_room(node: &Node, name: &str, room: &str) -> Self {
        let mut u = Self::on(node, name).await;
        u.join(room).await;
        u
    }

    async fn send(&mut self, v: Value) {
        self.out.send(v.to_string()).await.expect("tab alive");
    }

    async fn join(&mut self, room: &str) -> Value {
        self.send(json!({"type": "join", "room": room})).await;
        self.frame("snapshot").await
    }

    /// The next frame within `d`, with when it arrived (diffs are queued
    /// for [`Self::diff`]).
    async fn next_within(&mut self, d: Duration) -> Option<(Instant, Value)> {
        let f = tokio::time::timeout(d, self.frames.recv()).await.ok()?;
        let f = f.unwrap_or_else(|| panic!("{}: tab ended", self.name));
        assert_ne!(f.1["type"], "closed", "{}: closed", self.name);
        Some(f)
    }

    async fn frame(&mut self, kind: &str) -> Value {
        let until = Instant::now() + WAIT;
        loop {
            let f = self
                .next_within(until.saturating_duration_since(Instant::now()))
                .await
                .unwrap_or_else(|| panic!("{}: no {kind}", self.name));
            if f.1["type"] == kind {
                return f.1;
            }
            self.stash(f);
        }
    }

    fn stash(&mut self, (at, f): (Instant, Value)) {
        if f["type"] == "diffs" {
            for d in f["diffs"].as_array().into_iter().flatten() {
                self.diffs.push_back((at, d.clone()));
            }
        }
    }

    /// Skips diffs until one of `kind` about `user`; returns it and when it
    /// arrived.
    async fn diff_at(&mut self, kind: &str, user: &str) -> (Value, Instant) {
        let until = Instant::now() + WAIT;
        loop {
            while let Some((at, d)) = self.diffs.pop_front() {
                if d["type"] == kind && diff_user(&d) == user {
                    return (d, at);
                }
            }
            let f = self
                .next_within(until.saturating_duration_since(Instant::now()))
                .await
                .unwrap_or_else(|| panic!("{}: no {kind} about {user}", self.name));
            self.stash(f);
        }
    }

    /// [`Self::diff_at`], with the virtual time from now until it arrived.
    async fn diff(&mut self, kind: &str, user: &str) -> (Value, Duration) {
        let t0 = Instant::now();
        let (d, at) = self.diff_at(kind, user).await;
        (d, at.saturating_duration_since(t0))
    }

    /// The kinds of the diffs about `user` received during `d`.
    async fn kinds_during(&mut self, d: Duration, user: &str) -> Vec<String> {
        let until = Instant::now() + d;
        while let Some(f) = self
            .next_within(until.saturating_duration_since(Instant::now()))
            .await
        {
            self.stash(f);
        }
        self.diffs
            .drain(..)
            .filter(|(_, d)| diff_user(d) == user)
            .map(|(_, d)| d["type"].as_str().unwrap_or("").to_owned())
            .collect()
    }
}

/// The browser tab's side of a [`User`].
async fn tab(
    mut socket: LocalSocket,
    mut out: mpsc::Receiver<String>,
    frames: mpsc::Sender<(Instant, Value)>,
) {
    let every = presence_server::presence_core::TimingPolicy::default().heartbeat_interval;
    let mut ping = tokio::time::interval_at(Instant::now() + every, every);
    loop {
        tokio::select! {
            got = socket.recv() => {
                let f = match got {
                    Some(t) => serde_json::from_str::<Value>(&t).expect("JSON"),
                    None => json!({"type": "closed"}),
                };
                let closed = f["type"] == "closed";
                if f["type"] != "pong" && frames.send((Instant::now(), f)).await.is_err() || closed {
                    return;
                }
            }
            msg = out.recv() => match msg {
                Some(m) => if socket.send(m).await.is_err() { return },
                None => return,
            },
            _ = ping.tick() => {
                if socket.send(json!({"type": "ping"}).to_string()).await.is_err() {
                    return;
                }
            }
        }
    }
}

#[tokio::test(start_paused = true)]
async fn every_change_crosses_three_nodes_within_a_round() {
    let mem = MemoryCluster::new();
    let n = nodes(&mem, 3).await;
    let mut ana = User::in_room(&n[0], "ana", "r").await;
    let mut carol = User::on(&n[2], "carol").await;
    carol.send(json!({"type": "watch", "users": ["ana"]})).await;
    carol.frame("watching").await;
    let mut bob = User::on(&n[1], "bob").await;
    let snap = bob.join("r").await;
    assert_eq!(
        names(&snap["members"]),
        ["ana", "bob"],
        "the snapshot spans nodes"
    );
    ana.diff("user_connected", "bob").await;

    let steps = [
        (
            json!({"type": "activity", "state": "idle", "reason": "hidden"}),
            "user_idle",
        ),
        (
            json!({"type": "activity", "state": "active"}),
            "user_active",
        ),
        (
            json!({"type": "status", "status": "busy", "text": "call"}),
            "status",
        ),
        (
            json!({"type": "typing", "room": "r", "active": true}),
            "typing_started",
        ),
    ];
    for (frame, kind) in steps {
        ana.send(frame).await;
        let (_, took) = bob.diff(kind, "ana").await;
        assert!(took <= ROUND, "{kind} took {took:?}");
        if kind != "typing_started" {
            let (_, took) = carol.diff(kind, "ana").await;
            assert!(took <= ROUND, "{kind} to a watcher took {took:?}");
        }
    }
    // Typing ends by itself after its TTL (6 s), on the other node too.
    let (_, took) = bob.diff("typing_stopped", "ana").await;
    assert!(
        took >= Duration::from_secs(5) && took <= Duration::from_secs(6) + ROUND,
        "{took:?}"
    );

    // Gone: offline everywhere after the offline grace (10 s), once.
    drop(ana);
    let (d, took) = bob.diff("user_disconnected", "ana").await;
    assert!(
        took >= Duration::from_secs(10) && took <= Duration::from_secs(10) + ROUND,
        "{took:?}"
    );
    assert!(d["last_seen"].is_u64(), "{d}");
    carol.diff("user_disconnected", "ana").await;
    let later = bob.kinds_during(Duration::from_secs(30), "ana").await;
    assert!(later.is_empty(), "announced once: {later:?}");
}

#[tokio::test(start_paused = true)]
async fn a_killed_node_s_users_go_offline_everywhere_within_its_lease_once() {
    let mem = MemoryCluster::new();
    let n = nodes(&mem, 3).await;
    let _ana = User::in_room(&n[0], "ana", "r").await;
    let mut bob = User::in_room(&n[1], "bob", "r").await;
    let mut carol = User::in_room(&n[2], "carol", "r").await;
    bob.diff("user_connected", "carol").await;
    // Past a few renewals, so the lease's phase is any.
    tokio::time::sleep(Duration::from_secs(7)).await;

    // kill -9 as the cluster sees it: no renewal, no cleanup. Its last
    // renewal was at most a third of the lease ago, and the others judge
    // it at their next renewal after it lapsed.
    n[0].server.halt_cluster();
    let killed = Instant::now();
    let lo = LEASE - LEASE / 3;
    let hi = LEASE + LEASE / 3 + ROUND;
    for u in [&mut bob, &mut carol] {
        let (d, at) = u.diff_at("user_disconnected", "ana").await;
        let took = at - killed;
        assert!(took >= lo && took <= hi, "{}: {took:?}", u.name);
        assert!(d["last_seen"].is_u64(), "{d}");
    }
    // Once, and nobody else flapped.
    assert_eq!(
        bob.kinds_during(Duration::from_secs(30), "ana").await,
        Vec::<String>::new()
    );
    assert!(carol.kinds_during(Duration::ZERO, "bob").await.is_empty());
    assert!(bob.kinds_during(Duration::ZERO, "carol").await.is_empty());

    // The store is clean: a node started now, which never followed the
    // dead one, reads ana offline with her last seen, and a room of two.
    let d = node_with(&mem, "d", ServerConfig::default()).await;
    up(std::slice::from_ref(&d)).await;
    let seen = d.server.presence(&UserId::new("ana").expect("id")).await;
    let seen = seen.expect("ana is known");
    assert!(seen.last_seen.is_some(), "{seen:?}");
    let mut dave = User::on(&d, "dave").await;
    let snap = dave.join("r").await;
    assert_eq!(names(&snap["members"]), ["bob", "carol", "dave"]);
}

#[tokio::test(start_paused = true)]
async fn an_outage_of_the_whole_store_declares_nobody_dead() {
    let mem = MemoryCluster::new();
    let n = nodes(&mem, 2).await;
    let mut ana = User::in_room(&n[0], "ana", "r").await;
    let mut bob = User::in_room(&n[1], "bob", "r").await;
    ana.diff("user_connected", "bob").await;

    // The store goes away for three leases: each node serves on what it
    // knows, and a change made meanwhile shows at once on its own node.
    for node in &n {
        node.link.set_down(true);
    }
    let _ana2 = User::in_room(&n[0], "ana2", "r").await;
    ana.diff("user_connected", "ana2").await;
    tokio::time::sleep(LEASE).await;
    assert_eq!(n[0].server.cluster_up(), Some(false));
    bob.send(json!({"type": "status", "status": "away"})).await;
    tokio::time::sleep(2 * LEASE).await;
    assert!(
        ana.kinds_during(Duration::ZERO, "bob").await.is_empty(),
        "bob never left"
    );

    // Back: what each did meanwhile reaches the other; nobody flapped.
    for node in &n {
        node.link.set_down(false);
    }
    let (_, took) = bob.diff("user_connected", "ana2").await;
    assert!(took <= LEASE, "{took:?}");
    let (d, _) = ana.diff("status", "bob").await;
    assert_eq!(d["status"], "away");
    let later = ana.kinds_during(Duration::from_secs(30), "bob").await;
    assert!(later.is_empty(), "no flap after the outage: {later:?}");
    let later = bob.kinds_during(Duration::ZERO, "ana").await;
    assert!(later.is_empty(), "no flap after the outage: {later:?}");
}

#[tokio::test(start_paused = true)]
async fn a_node_cut_off_past_its_lease_comes_back_as_a_new_incarnation() {
    let mem = MemoryCluster::new();
    let n = nodes(&mem, 2).await;
    let mut ana = User::in_room(&n[0], "ana", "r").await;
    let mut bob = User::in_room(&n[1], "bob", "r").await;
    ana.diff("user_connected", "bob").await;

    // Only a's link is cut: from b's side a stopped renewing while the
    // store answered, which is a death, so b shows ana offline.
    n[0].link.set_down(true);
    let (_, took) = bob.diff("user_disconnected", "ana").await;
    assert!(took <= LEASE + LEASE / 3 + ROUND, "{took:?}");
    tokio::time::sleep(LEASE).await;
    // a kept serving ana, and bob as it last knew him.
    assert!(ana.kinds_during(Duration::ZERO, "bob").await.is_empty());

    // Back as a new incarnation: ana online again on b, with no flap on a.
    n[0].link.set_down(false);
    let (_, took) = bob.diff("user_connected", "ana").await;
    assert!(took <= LEASE, "{took:?}");
    assert!(
        ana.kinds_during(Duration::from_secs(20), "bob")
            .await
            .is_empty()
    );
    assert!(bob.kinds_during(Duration::ZERO, "ana").await.is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_large_room_switches_to_counts_and_back_across_nodes() {
    let mem = MemoryCluster::new();
    let config = || ServerConfig {
        large_room_members: 5,
        ..ServerConfig::default()
    };
    let n = vec![
        node_with(&mem, "a", config()).await,
        node_with(&mem, "b", config()).await,
    ];
    up(&n).await;
    let mut on_a = Vec::new();
    let mut on_b = Vec::new();
    for i in 0..3 {
        on_a.push(User::in_room(&n[0], &format!("a{i}"), "hall").await);
        on_b.push(User::in_room(&n[1], &format!("b{i}"), "hall").await);
    }
    let counts = |f: &Value| {
        (
            f["counts"]["online"].as_u64(),
            f["counts"]["active"].as_u64(),
            f["counts"]["idle"].as_u64(),
        )
    };
    // Six members over two nodes: large on both, told by a large snapshot.
    for u in [&mut on_a[0], &mut on_b[0]] {
        let s = loop {
            let s = u.frame("snapshot").await;
            if s["large"] == true {
                break s;
            }
        };
        let online = counts(&s).0.unwrap_or(0);
        assert!((5..=6).contains(&online), "large at 5 or 6: {s}");
    }
    on_a[0].kinds_during(Duration::from_secs(2), "").await;
    // A change on b is counted in a's next summary (once a second), and no
    // per-change diff is sent in a large room.
    on_b[1]
        .send(json!({"type": "activity", "state": "idle", "reason": "hidden"}))
        .await;
    let t0 = Instant::now();
    loop {
        let s = on_a[0].frame("summary").await;
        if counts(&s) == (Some(6), Some(5), Some(1)) {
            break;
        }
    }
    assert!(
        t0.elapsed() <= Duration::from_secs(1) + ROUND,
        "{:?}",
        t0.elapsed()
    );
    assert!(
        on_a[0]
            .kinds_during(Duration::from_secs(3), "b1")
            .await
            .is_empty()
    );

    // Three leave on b: small again on a, with per-change diffs.
    for u in &mut on_b {
        u.send(json!({"type": "leave", "room": "hall"})).await;
    }
    let s = loop {
        let s = on_a[1].frame("snapshot").await;
        if s.get("large").is_none() {
            break s;
        }
    };
    assert_eq!(names(&s["members"]), ["a0", "a1", "a2"], "{s}");
    on_a[2]
        .send(json!({"type": "activity", "state": "idle", "reason": "hidden"}))
        .await;
    let (_, took) = on_a[1].diff("user_idle", "a2").await;
    assert!(took <= ROUND, "{took:?}");
}

#[tokio::test(start_paused = true)]
async fn a_rolling_restart_of_every_node_flaps_nobody() {
    let mem = MemoryCluster::new();
    let mut n = nodes(&mem, 3).await;
    let who = ["ana", "bob", "carol"];
    let mut users = Vec::new();
    let mut tokens = Vec::new();
    for (node, name) in n.iter().zip(who) {
        let (mut u, _, token) = User::resuming(node, name, None).await;
        u.join("r").await;
        users.push(u);
        tokens.push(token);
    }
    users[0].diff("user_connected", "carol").await;
    users[1].diff("user_connected", "carol").await;
    // Each node in turn: a graceful shutdown (its sockets closed with
    // 1001, its connections left for its next run), the same node id
    // started again, its user back with the resume token at once.
    for i in 0..3 {
        n[i].server.shutdown().await;
        n[i] = node_with(&mem, ["a", "b", "c"][i], ServerConfig::default()).await;
        up(std::slice::from_ref(&n[i])).await;
        let (mut u, resumed, token) = User::resuming(&n[i], who[i], Some(&tokens[i])).await;
        assert!(resumed, "{} resumed on the restarted node", who[i]);
        let snap = u.join("r").await;
        assert_eq!(names(&snap["members"]), ["ana", "bob", "carol"]);
        users[i] = u;
        tokens[i] = token;
        // Nobody else saw the user go, nor anyone else.
        for (j, other) in users.iter_mut().enumerate().filter(|(j, _)| *j != i) {
            let seen = other.kinds_during(Duration::from_secs(15), who[i]).await;
            assert!(seen.is_empty(), "{} saw {}: {seen:?}", who[j], who[i]);
        }
    }
}
