//! Faults of the engine itself, black-box: three `presence-server` node
//! processes over a private Redis Cluster of 3 masters + 3 replicas that
//! each test starts on free ports (so killing a master touches no other
//! test), 60 users and an observer per node in one room. Masters are killed
//! with SIGKILL and stalled with SIGSTOP; nodes are cut from the lease shard
//! by switching their ACL user off there. Each test asserts that every node's
//! link comes back, that every view (sockets, fresh snapshots, HTTP) equals
//! the truth after the heal, and that users who stayed connected never flap
//! when no node lost its lease. One Redis killed and restarted leaves no ghost.
//!
//! The tests take one at a time (each runs nine to eleven processes); the
//! file runs in about 45 s. `FAULTS_USERS` sets the users per node (20),
//! `PRESENCE_SERVER_BIN` another node binary, `FAULTS_LOG` the nodes' log
//! filter (their logs go to the temp dir, named in failure messages).

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

/// The nodes' lease: short, so a stall of a few seconds outlasts it.
const LEASE: Duration = Duration::from_millis(1_000);
/// The binary's default lease.
const DEFAULT_LEASE: Duration = Duration::from_secs(5);
/// Users per node (`FAULTS_USERS` overrides, e.g. 100 for 300 users).
fn users_per_node() -> usize {
    std::env::var("FAULTS_USERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20)
}

/// The node binary: this build's, or `PRESENCE_SERVER_BIN` (to run these
/// faults against another build, e.g. an earlier commit's).
fn server_bin() -> String {
    std::env::var("PRESENCE_SERVER_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_presence-server").to_owned())
}
/// Redis's own failure detection (`cluster-node-timeout`): a replica is
/// promoted about 1–3 s after its master stops answering.
const NODE_TIMEOUT_MS: u64 = 1_000;
/// After the cluster is healthy again, every node's link is back within
/// this (the link is rebuilt after 2 s of failed probes, plus a round).
const RECOVERY: Duration = Duration::from_secs(6);

/// One test at a time: each starts nine or more processes on 2 cores.
static ONE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A port whose cluster bus port (+10,000) is free too.
fn free_cluster_port() -> u16 {
    loop {
        let p = free_port();
        if p < 55_000 && std::net::TcpListener::bind(("127.0.0.1", p + 10_000)).is_ok() {
            return p;
        }
    }
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "presence-faults-{name}-{}-{}",
        std::process::id(),
        free_port()
    ));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .expect("redis-cli runs");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn signal(child: &Child, sig: &str) {
    let ok = Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .expect("kill runs")
        .success();
    assert!(ok, "kill {sig}");
}

/// One redis-server process.
struct RedisProc {
    port: u16,
    child: Option<Child>,
}

impl Drop for RedisProc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn redis_server(dir: &std::path::Path, port: u16, cluster: bool) -> RedisProc {
    let mut cmd = Command::new("redis-server");
    cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .args(["--dir", &dir.display().to_string()]);
    if cluster {
        cmd.args(["--cluster-enabled", "yes"])
            .args(["--cluster-config-file", &format!("nodes-{port}.conf")])
            .args(["--cluster-node-timeout", &NODE_TIMEOUT_MS.to_string()])
            // A replica's first sync starts at once, not after the default
            // 5 s wait for more replicas to share it.
            .args(["--repl-diskless-sync-delay", "0"]);
    }
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("redis-server runs");
    let deadline = Instant::now() + Duration::from_secs(5);
    while redis_cli(port, &["ping"]).trim() != "PONG" {
        assert!(Instant::now() < deadline, "redis-server on {port} answers");
        std::thread::sleep(Duration::from_millis(20));
    }
    RedisProc {
        port,
        child: Some(child),
    }
}

/// A Redis Cluster of 3 masters, each with one replica.
struct RedisCluster {
    nodes: Vec<RedisProc>,
    _dir: PathBuf,
}

impl RedisCluster {
    fn start() -> RedisCluster {
        let dir = scratch("cluster");
        let nodes: Vec<RedisProc> = (0..6)
            .map(|_| redis_server(&dir, free_cluster_port(), true))
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let out = Command::new("redis-cli")
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("redis-cli --cluster create runs");
        assert!(
            out.status.success(),
            "cluster create: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let c = RedisCluster { nodes, _dir: dir };
        c.wait_healthy(Duration::from_secs(20));
        c
    }

    fn alive(&self) -> impl Iterator<Item = &RedisProc> {
        self.nodes.iter().filter(|n| n.child.is_some())
    }

    /// Every live node says the cluster is ok, with 3 masters serving all
    /// slots, and each master's replica (if it has one alive) is in sync.
    fn healthy(&self) -> bool {
        self.alive().all(|n| {
            let info = redis_cli(n.port, &["cluster", "info"]);
            let role = redis_cli(n.port, &["role"]);
            info.contains("cluster_state:ok")
                && info.contains("cluster_size:3")
                && (!role.starts_with("slave") || role.contains("connected"))
        })
    }

    fn wait_healthy(&self, within: Duration) -> Duration {
        let start = Instant::now();
        while !self.healthy() {
            assert!(start.elapsed() < within, "the Redis Cluster heals in time");
            std::thread::sleep(Duration::from_millis(50));
        }
        start.elapsed()
    }

    fn seeds(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The process serving `key`'s slot as master now.
    fn master_of(&self, key: &str) -> usize {
        let any = self.alive().next().expect("a live node").port;
        let slot: u32 = redis_cli(any, &["cluster", "keyslot", key])
            .trim()
            .parse()
            .expect("a slot");
        let nodes = redis_cli(any, &["cluster", "nodes"]);
        for line in nodes.lines() {
            let f: Vec<&str> = line.split(' ').collect();
            if f.len() < 9 || !f[2].contains("master") || f[2].contains("fail") {
                continue;
            }
            let serves = f[8..].iter().any(|r| match r.split_once('-') {
                Some((a, b)) => {
                    a.parse::<u32>().is_ok_and(|a| a <= slot)
                        && b.parse::<u32>().is_ok_and(|b| slot <= b)
                }
                None => r.parse::<u32>() == Ok(slot),
            });
            if serves {
                let port: u16 = f[1]
                    .split(['@', ':'])
                    .nth(1)
                    .and_then(|p| p.parse().ok())
                    .expect("a port");
                return self
                    .nodes
                    .iter()
                    .position(|n| n.port == port)
                    .expect("one of ours");
            }
        }
        panic!("no master serves slot {slot}")
    }

    fn kill_9(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            c.kill().expect("SIGKILL");
            c.wait().expect("reaped");
        }
    }

    fn stop(&self, i: usize) {
        signal(self.nodes[i].child.as_ref().expect("alive"), "-STOP");
    }

    fn cont(&self, i: usize) {
        signal(self.nodes[i].child.as_ref().expect("alive"), "-CONT");
    }

    /// Runs `args` on every live node (ACLs are per process).
    fn everywhere(&self, args: &[&str]) {
        for n in self.alive() {
            redis_cli(n.port, args);
        }
    }
}

/// A presence-server node process.
struct Node {
    child: Child,
    addr: SocketAddr,
    log: PathBuf,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Node {
    /// `backend` is `--redis-cluster <seeds>` or `--redis-url <url>`.
    async fn start(id: &str, backend: [&str; 2], prefix: &str, lease: Duration) -> Node {
        let port = free_port();
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let log = std::env::temp_dir().join(format!("presence-faults-{id}-{port}.log"));
        let child = Command::new(server_bin())
            .args(["--dev-auth", "--node-id", id])
            .args([
                "--log",
                &std::env::var("FAULTS_LOG").unwrap_or_else(|_| "warn".into()),
            ])
            .args(["--service-key", SERVICE_KEY])
            .args(["--bind", &addr.to_string()])
            .args(["--lease-ttl-ms", &lease.as_millis().to_string()])
            .args(backend)
            .args(["--redis-prefix", prefix])
            .stdout(std::fs::File::create(&log).expect("log file"))
            .stderr(Stdio::null())
            .spawn()
            .expect("the binary starts");
        let node = Node { child, addr, log };
        node.wait_redis(true, Duration::from_secs(10)).await;
        node
    }

    fn url(&self, user: &str) -> String {
        format!("ws://{}/ws?token={user}", self.addr)
    }

    async fn redis_up(&self) -> bool {
        if TcpStream::connect(self.addr).await.is_err() {
            return false;
        }
        let (_, health) = http(self.addr, "GET", "/healthz", "", None).await;
        health["redis"] == "up"
    }

    async fn wait_redis(&self, up: bool, within: Duration) -> Duration {
        let start = Instant::now();
        while self.redis_up().await != up {
            assert!(
                start.elapsed() < within,
                "node {} never became redis up={up} within {within:?}; log: {}",
                self.addr,
                self.log.display()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        start.elapsed()
    }

    async fn members(&self, room: &str) -> BTreeSet<String> {
        let path = format!("/v1/rooms/{room}/members?limit=1000");
        let (status, body) = http(self.addr, "GET", &path, SERVICE_KEY, None).await;
        assert_eq!(status, 200, "{body}");
        names(&body["members"]).into_iter().collect()
    }
}

/// What observers saw: (kind, user) of every diff, per observer.
type Seen = Arc<Mutex<Vec<(String, String)>>>;

/// The kinds of the events a feed told about `user`, in order.
fn told(feed: &Seen, user: &str) -> Vec<String> {
    feed.lock()
        .expect("lock")
        .iter()
        .filter(|(_, u)| u == user)
        .map(|(k, _)| k.clone())
        .collect()
}

/// Reads a node's host event feed (`GET /v1/events`, SSE over HTTP/1.0)
/// from now on, noting (kind, user) of each event.
async fn host_feed(node: &Node) -> Seen {
    use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
    let mut tcp = TcpStream::connect(node.addr).await.expect("connect");
    let req = format!(
        "GET /v1/events HTTP/1.0\r\nHost: t\r\nAuthorization: Bearer {SERVICE_KEY}\r\n\r\n"
    );
    tcp.write_all(req.as_bytes()).await.expect("write");
    let mut lines = BufReader::new(tcp).lines();
    let status = lines.next_line().await.expect("read").unwrap_or_default();
    assert!(status.contains(" 200 "), "the feed opens: {status}");
    // Past the headers, so the feed is open when this returns.
    while let Ok(Some(line)) = lines.next_line().await {
        if line.is_empty() {
            break;
        }
    }
    let seen: Seen = Arc::default();
    let out = seen.clone();
    tokio::spawn(async move {
        let mut kind = String::new();
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(k) = line.strip_prefix("event: ") {
                kind = k.to_owned();
            } else if let Some(d) = line.strip_prefix("data: ")
                && let Ok(v) = serde_json::from_str::<serde_json::Value>(d)
            {
                let user = diff_user(&v).to_owned();
                out.lock().expect("lock").push((kind.clone(), user));
            }
        }
    });
    seen
}

/// Keeps a user's socket read (so its queue never overflows); notes a close.
fn hold(mut c: Client, closed: Arc<Mutex<Vec<String>>>) {
    tokio::spawn(async move {
        while let Some(m) = c.ws.next().await {
            if matches!(m, Ok(Message::Close(_)) | Err(_)) {
                break;
            }
        }
        closed.lock().expect("lock").push(c.user.clone());
    });
}

/// An observer in the room, noting every diff from now on.
async fn observe(node: &Node, name: &str, room: &str) -> Seen {
    let mut c = Client::connect(&node.url(name), name, None).await;
    c.join(room).await;
    let seen: Seen = Arc::default();
    let out = seen.clone();
    tokio::spawn(async move {
        while let Some(Ok(m)) = c.ws.next().await {
            let Message::Text(t) = m else { continue };
            let Ok(f) = serde_json::from_str::<serde_json::Value>(t.as_str()) else {
                continue;
            };
            for d in f["diffs"].as_array().into_iter().flatten() {
                let kind = d["type"].as_str().unwrap_or("").to_owned();
                out.lock()
                    .expect("lock")
                    .push((kind, diff_user(d).to_owned()));
            }
        }
    });
    seen
}

/// Three nodes, [`users_per_node`] users on each and an observer per node, all in
/// room `r`, every view settled.
struct World {
    nodes: Vec<Node>,
    users: BTreeSet<String>,
    seen: Vec<Seen>,
    /// Each node's host event feed.
    host: Vec<Seen>,
    closed: Arc<Mutex<Vec<String>>>,
}

impl World {
    async fn start(backend: [&str; 2], prefix: &str, lease: Duration) -> World {
        let mut nodes = Vec::new();
        for id in ["na", "nb", "nc"] {
            nodes.push(Node::start(id, backend, prefix, lease).await);
        }
        Self::populate(nodes).await
    }

    async fn populate(nodes: Vec<Node>) -> World {
        let closed: Arc<Mutex<Vec<String>>> = Arc::default();
        let mut users = BTreeSet::new();
        let mut seen = Vec::new();
        for (n, node) in nodes.iter().enumerate() {
            let obs = format!("obs{n}");
            seen.push(observe(node, &obs, "r").await);
            users.insert(obs);
            // Joined together: one by one, each waits for its snapshot.
            let joined = (0..users_per_node()).map(|i| {
                let user = format!("u{n}-{i:02}");
                let closed = closed.clone();
                async move {
                    let mut c = Client::connect(&node.url(&user), &user, None).await;
                    c.join("r").await;
                    hold(c, closed);
                    user
                }
            });
            users.extend(futures_util::future::join_all(joined).await);
        }
        let mut w = World {
            nodes,
            users,
            seen,
            host: Vec::new(),
            closed,
        };
        w.converged(Duration::from_secs(10)).await;
        for s in &w.seen {
            s.lock().expect("lock").clear();
        }
        for node in &w.nodes {
            w.host.push(host_feed(node).await);
        }
        w
    }

    /// Waits until every node shows every user in `r`: in a fresh snapshot
    /// and over HTTP. Returns how long it took.
    async fn converged(&self, within: Duration) -> Duration {
        let start = Instant::now();
        loop {
            let mut wrong = Vec::new();
            for (n, node) in self.nodes.iter().enumerate() {
                let name = format!("check{n}");
                let mut c = Client::connect(&node.url(&name), &name, None).await;
                // A big room's snapshot comes in parts.
                let mut snap = c.join("r").await;
                let mut members = names(&snap["members"]);
                while snap["more"] == true {
                    snap = c.frame("snapshot").await;
                    members.extend(names(&snap["members"]));
                }
                // Checkers of earlier tries linger in their leave grace.
                let not_checker = |u: &String| !u.starts_with("check");
                let shown: BTreeSet<String> = members.into_iter().filter(not_checker).collect();
                c.close().await;
                let mut listed = node.members("r").await;
                listed.retain(not_checker);
                if shown != self.users || listed != self.users {
                    wrong.push(format!(
                        "node {n}: snapshot lacks {:?} has {:?}; http lacks {:?}",
                        self.users.difference(&shown).collect::<Vec<_>>(),
                        shown.difference(&self.users).collect::<Vec<_>>(),
                        self.users.difference(&listed).collect::<Vec<_>>(),
                    ));
                }
            }
            if wrong.is_empty() {
                return start.elapsed();
            }
            assert!(
                start.elapsed() < within,
                "views never equal the truth within {within:?}: {wrong:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn all_redis_up(&self, within: Duration) -> Duration {
        let start = Instant::now();
        for node in &self.nodes {
            node.wait_redis(true, within.saturating_sub(start.elapsed()))
                .await;
        }
        start.elapsed()
    }

    /// Who saw which users flap, for failure messages: observer → node
    /// prefixes of the users it saw go.
    fn flap_report(&self) -> String {
        let mut out = Vec::new();
        for (n, s) in self.seen.iter().enumerate() {
            let seen = s.lock().expect("lock");
            let mut of: BTreeSet<String> = BTreeSet::new();
            for (k, u) in seen.iter() {
                if k == "user_disconnected" && self.users.contains(u) {
                    of.insert(u.split('-').next().unwrap_or(u).to_owned());
                }
            }
            out.push(format!("obs{n} saw {of:?} go"));
        }
        let logs: Vec<String> = self
            .nodes
            .iter()
            .map(|n| n.log.display().to_string())
            .collect();
        format!("{out:?}; logs {logs:?}")
    }

    /// `user_disconnected` diffs observers saw about connected users.
    fn flaps(&self) -> usize {
        self.seen
            .iter()
            .map(|s| {
                s.lock()
                    .expect("lock")
                    .iter()
                    .filter(|(k, u)| k == "user_disconnected" && self.users.contains(u))
                    .count()
            })
            .sum()
    }

    /// Every host event about `user` (any kind: a status repeated after a
    /// lapse would show too) in the cluster's event stream, which every
    /// node's feed serves whole: each feed must have told the same.
    fn host_events(&self, user: &str) -> Vec<String> {
        let first = told(&self.host[0], user);
        for (i, h) in self.host.iter().enumerate().skip(1) {
            assert_eq!(told(h, user), first, "node {i}'s feed about {user}");
        }
        first
    }

    /// Waits (at most `bound`) until every node's feed has told the same
    /// about every user: a node whose link just came back reads the shards
    /// it missed at its next poll, after the sockets converged.
    async fn feeds_agree(&self, bound: Duration) {
        let deadline = Instant::now() + bound;
        while Instant::now() < deadline
            && !self.users.iter().all(|u| {
                let first = told(&self.host[0], u);
                self.host.iter().all(|h| told(h, u) == first)
            })
        {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// No host event about anyone: nothing changed for the cluster.
    fn no_host_events(&self) {
        let any: Vec<(String, Vec<String>)> = self
            .users
            .iter()
            .map(|u| (u.clone(), self.host_events(u)))
            .filter(|(_, e)| !e.is_empty())
            .collect();
        assert!(any.is_empty(), "host events where nothing changed: {any:?}");
    }

    fn no_socket_closed(&self) {
        let closed = self.closed.lock().expect("lock");
        assert!(closed.is_empty(), "sockets closed: {closed:?}");
    }
}

fn prefix(test: &str) -> String {
    format!("pfault:{test}:{}", free_port())
}

/// The slot of the registry (leases), whatever the prefix.
const LEASE_KEY: &str = "{reg}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_masters_never_wedge_a_node_nor_flap_a_user() {
    let _one = ONE.lock().await;
    let mut redis = RedisCluster::start();
    let seeds = redis.seeds();
    // The default lease (5 s) outlasts a failover (2–3 s here): nothing
    // may show.
    let w = World::start(["--redis-cluster", &seeds], &prefix("kill"), DEFAULT_LEASE).await;
    let lease_master = redis.master_of(LEASE_KEY);
    let other = (0..6)
        .find(|&i| i != lease_master && redis.master_of(&format!("k{i}")) != lease_master)
        .map(|i| redis.master_of(&format!("k{i}")))
        .expect("another master");
    for (what, victim) in [
        ("the lease master", lease_master),
        ("another master", other),
    ] {
        let killed = Instant::now();
        redis.kill_9(victim);
        let healed = redis.wait_healthy(Duration::from_secs(20));
        let back = w.all_redis_up(RECOVERY).await;
        let views = w.converged(RECOVERY).await;
        println!(
            "kill -9 of {what}: Redis healthy after {healed:?}, every node's link up {back:?} later, \
             every view right {views:?} after that ({:?} in all)",
            killed.elapsed()
        );
        assert_eq!(w.flaps(), 0, "no user flapped: {}", w.flap_report());
    }
    w.no_host_events();
    w.no_socket_closed();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_master_stalled_past_the_lease_declares_nobody_dead() {
    let _one = ONE.lock().await;
    let redis = RedisCluster::start();
    let seeds = redis.seeds();
    let w = World::start(["--redis-cluster", &seeds], &prefix("stall"), LEASE).await;
    let victim = redis.master_of(LEASE_KEY);
    let stall = LEASE * 4;
    redis.stop(victim);
    tokio::time::sleep(stall).await;
    redis.cont(victim);
    let resumed = Instant::now();
    let healed = redis.wait_healthy(Duration::from_secs(20));
    let back = w.all_redis_up(RECOVERY).await;
    let views = w.converged(RECOVERY).await;
    println!(
        "SIGSTOP of the lease master for {stall:?}: Redis healthy {healed:?} after SIGCONT, \
         every node's link up {back:?} later, every view right {views:?} after that \
         ({:?} in all)",
        resumed.elapsed()
    );
    assert_eq!(w.flaps(), 0, "no user flapped: {}", w.flap_report());
    w.no_host_events();
    w.no_socket_closed();
}

/// Switches `login`'s ACL user off on one Redis (and drops its
/// connections there), or on again.
fn acl(port: u16, login: &str, on: bool) {
    redis_cli(
        port,
        &["acl", "setuser", login, if on { "on" } else { "off" }],
    );
    if !on {
        redis_cli(port, &["client", "kill", "user", login]);
    }
}

/// Three nodes, each logging in as its own ACL user (so one can be cut
/// from one shard).
async fn acl_world(redis: &RedisCluster, test: &str) -> World {
    let p = prefix(test);
    let mut nodes = Vec::new();
    for id in ["na", "nb", "nc"] {
        redis.everywhere(&["acl", "setuser", id, "on", ">pw", "~*", "&*", "+@all"]);
        let seeds: Vec<String> = redis
            .nodes
            .iter()
            .map(|n| format!("redis://{id}:pw@127.0.0.1:{}", n.port))
            .collect();
        nodes.push(Node::start(id, ["--redis-cluster", &seeds.join(",")], &p, LEASE).await);
    }
    World::populate(nodes).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_cut_from_the_lease_shard_declares_nobody_dead() {
    let _one = ONE.lock().await;
    let redis = RedisCluster::start();
    let w = acl_world(&redis, "allcut").await;
    let shard = redis.nodes[redis.master_of(LEASE_KEY)].port;
    let cut = LEASE * 3;
    for id in ["na", "nb", "nc"] {
        acl(shard, id, false);
    }
    tokio::time::sleep(cut).await;
    for id in ["na", "nb", "nc"] {
        acl(shard, id, true);
    }
    let healed = Instant::now();
    let back = w.all_redis_up(RECOVERY).await;
    let views = w.converged(RECOVERY).await;
    println!(
        "every node cut from the lease shard for {cut:?}: links up {back:?} after the heal, \
         every view right {views:?} after that ({:?} in all)",
        healed.elapsed()
    );
    assert_eq!(w.flaps(), 0, "no user flapped: {}", w.flap_report());
    w.no_host_events();
    w.no_socket_closed();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_from_the_lease_shard_past_its_lease_shows_its_users_again() {
    let _one = ONE.lock().await;
    let redis = RedisCluster::start();
    let w = acl_world(&redis, "onecut").await;
    let shard = redis.nodes[redis.master_of(LEASE_KEY)].port;
    let cut = LEASE * 3;
    acl(shard, "na", false);
    tokio::time::sleep(cut).await;
    // Its lease lapsed: the others showed its users offline (they cannot
    // tell a cut node from a dead one).
    let gone = w.flaps();
    assert!(gone > 0, "the others saw node A's users go");
    // A says so to a load balancer; the others are ready.
    let (status, body) = http(w.nodes[0].addr, "GET", "/readyz", "", None).await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (503, Some("cut_off_from_backend"))
    );
    let (status, _) = http(w.nodes[1].addr, "GET", "/readyz", "", None).await;
    assert_eq!(status, 200);
    let (_, metrics) = http_text(w.nodes[0].addr, "/metrics").await;
    assert!(
        !metrics.contains("presence_redis_down_seconds 0"),
        "{metrics}"
    );
    acl(shard, "na", true);
    let healed = Instant::now();
    let back = w.all_redis_up(RECOVERY).await;
    let views = w.converged(RECOVERY).await;
    println!(
        "node A cut from the lease shard for {cut:?}: {gone} offline diffs meanwhile; its link \
         up {back:?} after the heal, every view right {views:?} after that ({:?} in all)",
        healed.elapsed()
    );
    w.no_socket_closed();
    let (status, _) = http(w.nodes[0].addr, "GET", "/readyz", "", None).await;
    assert_eq!(status, 200, "ready again");
    let (_, metrics) = http_text(w.nodes[0].addr, "/metrics").await;
    assert!(
        metrics.contains("presence_reincarnations_total 1"),
        "node A went on as a new incarnation once"
    );
    // For the host: each of A's users left once (announced by the cleaner)
    // and came back once (by A); nobody else changed.
    w.feeds_agree(RECOVERY).await;
    for user in &w.users {
        let want: &[&str] = if user.starts_with("u0-") || user == "obs0" {
            &["user_connected", "user_disconnected"]
        } else {
            &[]
        };
        let mut got = w.host_events(user);
        got.sort();
        assert_eq!(
            got,
            want,
            "host events about {user}; feeds hold {:?}",
            w.host
                .iter()
                .map(|h| h.lock().expect("lock").len())
                .collect::<Vec<_>>()
        );
    }
    // Each of A's users left once and came back once, for every observer.
    for s in &w.seen {
        let seen = s.lock().expect("lock");
        for user in w.users.iter().filter(|u| u.starts_with("u0-")) {
            let about: Vec<&str> = seen
                .iter()
                .filter(|(k, u)| u == user && k.starts_with("user_"))
                .map(|(k, _)| k.as_str())
                .collect();
            assert!(
                about.is_empty() || about == ["user_disconnected", "user_connected"],
                "{user}: {about:?}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_leaves_no_ghost() {
    let _one = ONE.lock().await;
    let dir = scratch("single");
    let port = free_port();
    let mut redis = redis_server(&dir, port, false);
    let url = format!("redis://127.0.0.1:{port}");
    let mut w = World::start(["--redis-url", &url], &prefix("restart"), LEASE).await;
    // A user who is online everywhere...
    let mut leaver = Client::connect(&w.nodes[0].url("leaver"), "leaver", None).await;
    leaver.join("r").await;
    let mut check = Client::connect(&w.nodes[1].url("watcher"), "watcher", None).await;
    check.join("r").await;
    w.users.extend(["leaver".to_owned(), "watcher".to_owned()]);
    w.converged(RECOVERY).await;
    // ...leaves while Redis is down (`leaving`: offline after the 2 s leave
    // grace), and Redis comes back empty.
    if let Some(mut c) = redis.child.take() {
        c.kill().expect("SIGKILL");
        c.wait().expect("reaped");
    }
    for node in &w.nodes {
        node.wait_redis(false, Duration::from_secs(5)).await;
    }
    leaver.send(serde_json::json!({"type": "leaving"})).await;
    leaver.close().await;
    // Past the leave grace (2 s) and the replica's sweep (every 10 s), which
    // once dropped the unwritten release with the user.
    tokio::time::sleep(Duration::from_secs(11)).await;
    let _redis = redis_server(&dir, port, false);
    let restarted = Instant::now();
    w.users.remove("leaver");
    let back = w.all_redis_up(RECOVERY).await;
    let views = w.converged(RECOVERY).await;
    println!(
        "one Redis killed and restarted: links up {back:?} later, every view right (no ghost) \
         {views:?} after that ({:?} in all)",
        restarted.elapsed()
    );
    check.diff("user_disconnected", "leaver").await;
    w.no_socket_closed();
}
