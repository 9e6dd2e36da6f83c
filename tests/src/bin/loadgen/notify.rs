//! Issue 30: notification decisions (`GET /v1/users/{id}/notify?room=R`,
//! service key) per second and their latency, beside the same load asking
//! `GET /v1/users/{id}/presence` (one presence view) as the baseline.
//!
//! N users connect as real WebSockets (dev auth: the token is the name), one
//! device each, of four kinds by index:
//!
//! | i % 4 | device  | does                                 | its room        | another room    |
//! |-------|---------|--------------------------------------|-----------------|-----------------|
//! | 0     | desktop | `view`s its room, stays active       | live/viewing    | live/active     |
//! | 1     | mobile  | stays active, no view                | live/active     | live/active     |
//! | 2     | desktop | `view`s its room, then idle no_input | live/viewing    | live/recent     |
//! | 3     | mobile  | idle hidden, no view                 | push/background | push/background |
//!
//! Kind 2 turns to push/idle once its quiet time (the server's `idle_after`
//! plus the time since its report) passes the push threshold; answers within
//! 2 s of that moment are counted as unchecked, not judged.
//!
//! Then a pool of keep-alive HTTP/1.1 connections (raw, one request in flight
//! each, closed loop) asks for `seconds`: first `presence`, then `notify`
//! (a quarter of the questions about a room the user is not in). Every answer
//! is checked; wrong ones are counted and the first few printed.
//!
//! With several nodes, user i lives on node i % n and is asked about on node
//! (i + 1) % n, which does not hold them: every `notify` answer needs the
//! user's records and a bus round trip to their node, every `presence`
//! answer the records.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

use crate::conn::{self, Target};
use crate::http::Http;
use crate::probe::{Probe, Sample};
use crate::report::{figure, percentile, process};

/// The shape of one run.
pub struct Plan {
    /// One node, or several of one cluster.
    pub nodes: Vec<Target>,
    /// Loopback source addresses for the WebSockets.
    pub sources: usize,
    pub users: usize,
    /// Each phase's length (presence, then notify).
    pub seconds: Duration,
    /// Keep-alive HTTP connections, over all nodes.
    pub pool: usize,
    /// The nodes' service key.
    pub key: String,
    /// The nodes' pids, for their CPU time.
    pub server_pids: Vec<u32>,
    /// Redis servers whose CPU time to sample around each phase.
    pub redis: Vec<SocketAddr>,
    /// Figure names start with this.
    pub label: String,
    /// The servers' `--notify-idle-ms`.
    pub push_after: Duration,
}

/// Bounds: below the open-files limit of one process, a run's length, the pool.
const MAX_USERS: usize = 19_000;
const MAX_SECONDS: u64 = 120;
const MAX_POOL: usize = 256;
/// Everything is over after this long, whatever happens.
const MAX_RUN: Duration = Duration::from_secs(900);
const HANDSHAKES_IN_FLIGHT: usize = 128;
/// Like a client's heartbeat, so a long set-up does not time sockets out.
const PING: Duration = Duration::from_secs(20);
const MEMBERS_PER_ROOM: usize = 10;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// Kind 2's answers this close to the push threshold are not judged.
const MARGIN_MS: u64 = 2_000;
/// Wrong answers printed per phase.
const SHOW_WRONG: usize = 5;
/// Time for the last set-up changes to reach every node's records.
const SETTLE: Duration = Duration::from_secs(2);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    /// Desktop, views its room, active.
    Viewing,
    /// Mobile, active, no view.
    Active,
    /// Desktop, views its room, idle `no_input`.
    Quiet,
    /// Mobile, idle `hidden`.
    Hidden,
}

impl Kind {
    fn of(i: usize) -> Self {
        match i % 4 {
            0 => Kind::Viewing,
            1 => Kind::Active,
            2 => Kind::Quiet,
            _ => Kind::Hidden,
        }
    }

    fn device(self) -> &'static str {
        match self {
            Kind::Viewing | Kind::Quiet => "desktop",
            Kind::Active | Kind::Hidden => "mobile",
        }
    }

    fn views(self) -> bool {
        matches!(self, Kind::Viewing | Kind::Quiet)
    }

    fn idle(self) -> Option<&'static str> {
        match self {
            Kind::Quiet => Some("no_input"),
            Kind::Hidden => Some("hidden"),
            Kind::Viewing | Kind::Active => None,
        }
    }
}

struct User {
    name: String,
    room: String,
    kind: Kind,
    /// When its idle report went, ms since the epoch.
    idle_at: AtomicU64,
    connected: AtomicBool,
}

/// What every task shares.
struct World {
    users: Vec<User>,
    /// A room nobody joined.
    elsewhere: String,
    epoch: Instant,
    /// From the servers' `welcome`.
    idle_after_ms: AtomicU64,
    push_after_ms: u64,
    /// `error` frames the sockets received, and the first one.
    socket_errors: AtomicU64,
    first_socket_error: std::sync::Mutex<Option<String>>,
}

impl World {
    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// The decision and reason user `i` must get for a message in their own
    /// room (`own`) or elsewhere; `None` too close to the threshold to say.
    fn expect_notify(&self, i: usize, own: bool) -> Option<(&'static str, &'static str)> {
        let u = &self.users[i];
        Some(match (u.kind, own) {
            (Kind::Viewing, true) => ("live", "viewing"),
            (Kind::Viewing, false) | (Kind::Active, _) => ("live", "active"),
            (Kind::Hidden, _) => ("push", "background"),
            (Kind::Quiet, _) => {
                let since = self
                    .now_ms()
                    .saturating_sub(u.idle_at.load(Ordering::Relaxed));
                let quiet = self.idle_after_ms.load(Ordering::Relaxed) + since;
                if quiet + MARGIN_MS < self.push_after_ms {
                    if own {
                        ("live", "viewing")
                    } else {
                        ("live", "recent")
                    }
                } else if quiet > self.push_after_ms + MARGIN_MS {
                    ("push", "idle")
                } else {
                    return None;
                }
            }
        })
    }

    /// The state and idle reason user `i`'s presence view must show.
    fn expect_presence(&self, i: usize) -> (&'static str, Option<&'static str>) {
        let kind = self.users[i].kind;
        match kind.idle() {
            None => ("active", None),
            Some(reason) => ("idle", Some(reason)),
        }
    }
}

pub async fn run(plan: Plan) -> Result<()> {
    let n = plan.nodes.len();
    anyhow::ensure!(n >= 1, "no node");
    anyhow::ensure!(
        (1..=MAX_USERS).contains(&plan.users),
        "1 to {MAX_USERS} users"
    );
    anyhow::ensure!(
        plan.seconds.as_secs() <= MAX_SECONDS,
        "at most {MAX_SECONDS} s a phase"
    );
    anyhow::ensure!(
        (1..=MAX_POOL).contains(&plan.pool),
        "a pool of 1 to {MAX_POOL}"
    );
    let tag = format!("n{}", std::process::id());
    let world = Arc::new(World {
        users: (0..plan.users)
            .map(|i| User {
                name: format!("{tag}u{i}"),
                room: format!("{tag}-r{}", i / MEMBERS_PER_ROOM),
                kind: Kind::of(i),
                idle_at: AtomicU64::new(0),
                connected: AtomicBool::new(false),
            })
            .collect(),
        elsewhere: format!("{tag}-elsewhere"),
        epoch: Instant::now(),
        idle_after_ms: AtomicU64::new(60_000),
        push_after_ms: plan.push_after.as_millis() as u64,
        socket_errors: AtomicU64::new(0),
        first_socket_error: std::sync::Mutex::new(None),
    });
    let l = &plan.label;

    let started = Instant::now();
    let failed = connect_all(&plan, &world).await?;
    let connected = plan.users - failed;
    figure(&format!("{l}.users"), connected as f64, "connected users");
    figure(
        &format!("{l}.failed_connections"),
        failed as f64,
        "connections",
    );
    figure(
        &format!("{l}.connect"),
        started.elapsed().as_secs_f64() * 1000.0,
        &format!("ms for {connected} users"),
    );
    anyhow::ensure!(connected > 0, "no user connected");
    tokio::time::sleep(SETTLE).await;

    // Who is asked about on which node: node t asks about the users of
    // node t - 1 (with one node, everyone on it).
    let mut lists: Vec<Vec<usize>> = vec![Vec::new(); n];
    for (i, u) in world.users.iter().enumerate() {
        if u.connected.load(Ordering::Relaxed) {
            lists[(i % n + 1) % n].push(i);
        }
    }
    let lists: Vec<Arc<Vec<usize>>> = lists.into_iter().map(Arc::new).collect();
    let key: Arc<str> = Arc::from(plan.key.as_str());

    // Users nobody knows get push/offline.
    let mut strangers = Tally::default();
    stranger_checks(&plan, &world, &key, &tag, &mut strangers).await;

    let probe = Probe {
        nodes: if n > 1 {
            plan.nodes.iter().map(|t| t.addr).collect()
        } else {
            Vec::new()
        },
        redis: plan.redis.clone(),
    };
    let presence = measured(&plan, &world, &key, &lists, Ask::Presence, &probe).await?;
    let mut notify = measured(&plan, &world, &key, &lists, Ask::Notify, &probe).await?;
    notify.tally.wrong += strangers.wrong;
    notify.tally.shown.extend(strangers.shown);

    for (what, m) in [("presence", &presence), ("notify", &notify)] {
        for w in &m.tally.shown {
            println!("wrong answer or failure ({what}): {w}");
        }
    }
    if let Some(e) = world
        .first_socket_error
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
    {
        println!("socket error frame: {e}");
    }
    report(&plan, &world, &presence, &notify);
    Ok(())
}

/// Opens every user's socket (join, view, idle as its kind says); returns
/// how many failed.
async fn connect_all(plan: &Plan, world: &Arc<World>) -> Result<usize> {
    let gate = Arc::new(Semaphore::new(HANDSHAKES_IN_FLIGHT));
    let (done_tx, mut done_rx) = mpsc::channel::<Result<()>>(1024);
    let deadline = tokio::time::Instant::now() + MAX_RUN;
    let n = plan.nodes.len();
    for i in 0..plan.users {
        let (target, gate, done, world) = (
            plan.nodes[i % n].clone(),
            gate.clone(),
            done_tx.clone(),
            world.clone(),
        );
        let from = conn::source(i, plan.sources);
        tokio::spawn(async move {
            let Ok(permit) = gate.acquire_owned().await else {
                return;
            };
            let opened =
                tokio::time::timeout(Duration::from_secs(60), set_up(&target, from, &world, i))
                    .await
                    .unwrap_or_else(|_| Err(anyhow::anyhow!("set-up took over 60 s")));
            drop(permit);
            match opened {
                Ok(ws) => {
                    world.users[i].connected.store(true, Ordering::Relaxed);
                    let _ = done.send(Ok(())).await;
                    keep(ws, &world, deadline).await;
                }
                Err(e) => {
                    let _ = done
                        .send(Err(e.context(format!("user {i} on {}", target.addr))))
                        .await;
                }
            }
        });
    }
    drop(done_tx);
    let (mut seen, mut failed) = (0, 0);
    let mut first = None;
    while seen < plan.users {
        match tokio::time::timeout(Duration::from_secs(90), done_rx.recv()).await {
            Ok(Some(Ok(()))) => {}
            Ok(Some(Err(e))) => {
                failed += 1;
                first.get_or_insert(e);
            }
            Ok(None) | Err(_) => {
                failed += plan.users - seen;
                break;
            }
        }
        seen += 1;
    }
    if let Some(e) = first {
        println!("connection failed: {e:#}");
    }
    Ok(failed)
}

/// One user's socket, its device said in `hello`, in its room, viewing it
/// or idle as its kind says.
async fn set_up(
    target: &Target,
    from: std::net::IpAddr,
    world: &World,
    i: usize,
) -> Result<conn::Ws> {
    let u = &world.users[i];
    let hello = format!(r#"{{"type":"hello","v":1,"device":"{}"}}"#, u.kind.device());
    let (mut ws, welcome) = conn::open_with(target, from, &u.name, &hello).await?;
    if i == 0
        && let Some(ms) = serde_json::from_str::<Value>(&welcome)?["idle_after_ms"].as_u64()
    {
        world.idle_after_ms.store(ms, Ordering::Relaxed);
    }
    conn::join(&mut ws, &u.room).await?;
    if u.kind.views() {
        ws.send(Message::text(format!(
            r#"{{"type":"view","room":"{}"}}"#,
            u.room
        )))
        .await?;
    }
    if let Some(reason) = u.kind.idle() {
        ws.send(Message::text(format!(
            r#"{{"type":"activity","state":"idle","reason":"{reason}"}}"#
        )))
        .await?;
        u.idle_at.store(world.now_ms(), Ordering::Relaxed);
    }
    Ok(ws)
}

/// Holds a socket: pings like a client, reads and drops its frames (counting
/// `error` frames), until the run's deadline.
async fn keep(mut ws: conn::Ws, world: &World, deadline: tokio::time::Instant) {
    let mut ping = tokio::time::interval(PING);
    ping.tick().await;
    loop {
        tokio::select! {
            _ = ping.tick() => {
                if ws.send(Message::text(r#"{"type":"ping"}"#)).await.is_err() { return }
            }
            frame = ws.next() => match frame {
                Some(Ok(Message::Text(t))) => {
                    if t.starts_with(r#"{"type":"error""#) {
                        world.socket_errors.fetch_add(1, Ordering::Relaxed);
                        world
                            .first_socket_error
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .get_or_insert_with(|| t.to_string());
                    }
                }
                Some(Ok(_)) => {}
                _ => return,
            },
            _ = tokio::time::sleep_until(deadline) => return,
        }
    }
}

/// Asks each node about a few unknown users: push/offline, complete.
async fn stranger_checks(plan: &Plan, world: &World, key: &str, tag: &str, t: &mut Tally) {
    for (k, node) in plan.nodes.iter().enumerate() {
        let name = format!("{tag}-nobody{k}");
        let path = format!("/v1/users/{name}/notify?room={}", world.elsewhere);
        let answer = match Http::connect(node.addr).await {
            Ok(mut h) => tokio::time::timeout(REQUEST_TIMEOUT, h.get(&path, key))
                .await
                .unwrap_or_else(|_| Err(anyhow::anyhow!("no answer within 5 s"))),
            Err(e) => Err(e),
        };
        match answer {
            Ok((200, body)) => {
                let v: Value = serde_json::from_slice(&body).unwrap_or_default();
                if v["decision"] != "push" || v["reason"] != "offline" || v["user"] != name.as_str()
                {
                    t.wrong(format!(
                        "{name} (unknown) on {}: push/offline expected, got {}",
                        node.addr,
                        String::from_utf8_lossy(&body)
                    ));
                }
            }
            Ok((status, body)) => t.wrong(format!(
                "{name} (unknown) on {}: HTTP {status} {}",
                node.addr,
                String::from_utf8_lossy(&body)
            )),
            Err(e) => t.wrong(format!("{name} (unknown) on {}: {e:#}", node.addr)),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Ask {
    Presence,
    Notify,
}

/// One phase's outcome and what it cost.
struct Measured {
    tally: Tally,
    elapsed: f64,
    /// The servers' CPU seconds over the phase (sum).
    server_cpu: f64,
    /// This process's CPU seconds over the phase.
    loadgen_cpu: f64,
    before: Sample,
    after: Sample,
}

async fn measured(
    plan: &Plan,
    world: &Arc<World>,
    key: &Arc<str>,
    lists: &[Arc<Vec<usize>>],
    ask: Ask,
    probe: &Probe,
) -> Result<Measured> {
    let cpu = |pids: &[u32]| pids.iter().map(|&p| process(p).1).sum::<f64>();
    let me = [std::process::id()];
    let before = probe.spawn().await?.context("probe before")?;
    let (server0, loadgen0) = (cpu(&plan.server_pids), cpu(&me));
    let start = Instant::now();
    let until = start + plan.seconds;
    let mut set = JoinSet::new();
    let n = plan.nodes.len();
    for w in 0..plan.pool {
        let node = w % n;
        set.spawn(worker(
            plan.nodes[node].addr,
            key.clone(),
            world.clone(),
            lists[node].clone(),
            ask,
            until,
            w as u64,
        ));
    }
    let mut tally = Tally::default();
    while let Some(t) = set.join_next().await {
        tally.merge(t?);
    }
    let elapsed = start.elapsed().as_secs_f64();
    let (server1, loadgen1) = (cpu(&plan.server_pids), cpu(&me));
    let after = probe.spawn().await?.context("probe after")?;
    tally.latencies.sort_unstable();
    Ok(Measured {
        tally,
        elapsed,
        server_cpu: server1 - server0,
        loadgen_cpu: loadgen1 - loadgen0,
        before,
        after,
    })
}

/// Counts of one phase.
#[derive(Default)]
struct Tally {
    /// µs per answered question (HTTP 200).
    latencies: Vec<u64>,
    wrong: u64,
    /// Too close to the push threshold to judge.
    unchecked: u64,
    /// `complete: false`: a node holding the user did not answer in time.
    incomplete: u64,
    /// Not answered: connection errors, timeouts, other statuses.
    failed: u64,
    /// The first wrong answers, described.
    shown: Vec<String>,
}

impl Tally {
    fn wrong(&mut self, what: String) {
        self.wrong += 1;
        if self.shown.len() < SHOW_WRONG {
            self.shown.push(what);
        }
    }

    /// Describes a failure (counted in `failed`, not as a wrong answer).
    fn note(&mut self, what: String) {
        if self.shown.len() < SHOW_WRONG {
            self.shown.push(what);
        }
    }

    fn merge(&mut self, o: Tally) {
        self.latencies.extend(o.latencies);
        self.wrong += o.wrong;
        self.unchecked += o.unchecked;
        self.incomplete += o.incomplete;
        self.failed += o.failed;
        for s in o.shown {
            if self.shown.len() < SHOW_WRONG {
                self.shown.push(s);
            }
        }
    }

    /// Judges one answer about user `i`.
    fn check(&mut self, world: &World, ask: Ask, i: usize, own: bool, body: &[u8]) {
        let u = &world.users[i];
        let Ok(v) = serde_json::from_slice::<Value>(body) else {
            self.wrong(format!(
                "{}: not JSON: {}",
                u.name,
                String::from_utf8_lossy(body)
            ));
            return;
        };
        if v["user"] != u.name.as_str() {
            self.wrong(format!("{}: answered about {}", u.name, v["user"]));
            return;
        }
        match ask {
            Ask::Presence => {
                let (state, reason) = world.expect_presence(i);
                if v["state"] != state || v["reason"].as_str() != reason {
                    self.wrong(format!(
                        "{} ({:?}): {state}/{reason:?} expected, got {v}",
                        u.name, u.kind
                    ));
                }
            }
            Ask::Notify => {
                if v["complete"] != true {
                    self.incomplete += 1;
                }
                let Some((decision, reason)) = world.expect_notify(i, own) else {
                    self.unchecked += 1;
                    return;
                };
                if v["decision"] != decision || v["reason"] != reason {
                    let room = if own { &u.room } else { &world.elsewhere };
                    self.wrong(format!(
                        "{} ({:?}) in {room}: {decision}/{reason} expected, got {v}",
                        u.name, u.kind
                    ));
                }
            }
        }
    }
}

/// One keep-alive connection asking about `users` until `until`, one
/// question in flight.
async fn worker(
    addr: SocketAddr,
    key: Arc<str>,
    world: Arc<World>,
    users: Arc<Vec<usize>>,
    ask: Ask,
    until: Instant,
    seed: u64,
) -> Tally {
    let mut t = Tally::default();
    if users.is_empty() {
        return t;
    }
    let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut http: Option<Http> = None;
    let mut reconnects = 0;
    while Instant::now() < until {
        let h = match &mut http {
            Some(h) => h,
            None => {
                reconnects += 1;
                if reconnects > 10 {
                    break;
                }
                match Http::connect(addr).await {
                    Ok(h) => http.insert(h),
                    Err(e) => {
                        t.failed += 1;
                        t.note(format!("connecting to {addr}: {e:#}"));
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                }
            }
        };
        // xorshift64
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let i = users[(rng % users.len() as u64) as usize];
        // A quarter of the questions: a room the user is not in.
        let own = (rng >> 40) % 4 != 3;
        let u = &world.users[i];
        let path = match ask {
            Ask::Presence => format!("/v1/users/{}/presence", u.name),
            Ask::Notify => format!(
                "/v1/users/{}/notify?room={}",
                u.name,
                if own { &u.room } else { &world.elsewhere }
            ),
        };
        let sent = Instant::now();
        let got = tokio::time::timeout(REQUEST_TIMEOUT, h.get(&path, &key)).await;
        let took = sent.elapsed().as_micros() as u64;
        match got {
            Ok(Ok((200, body))) => {
                t.latencies.push(took);
                t.check(&world, ask, i, own, &body);
            }
            Ok(Ok((status, body))) => {
                t.failed += 1;
                t.note(format!(
                    "{path}: HTTP {status} {}",
                    String::from_utf8_lossy(&body)
                ));
            }
            Ok(Err(e)) => {
                t.failed += 1;
                t.note(format!("{path}: {e:#}"));
                http = None;
            }
            Err(_) => {
                t.failed += 1;
                t.note(format!("{path}: no answer within 5 s"));
                http = None;
            }
        }
    }
    t
}

fn report(plan: &Plan, world: &World, presence: &Measured, notify: &Measured) {
    let l = &plan.label;
    for (prefix, m, per) in [
        (format!("{l}.presence"), presence, "request"),
        (l.clone(), notify, "decision"),
    ] {
        let t = &m.tally;
        let answered = t.latencies.len() as f64;
        let ms = |p| percentile(&t.latencies, p) / 1000.0;
        let rate_name = if per == "decision" {
            format!("{prefix}.decisions_per_second")
        } else {
            format!("{prefix}.requests_per_second")
        };
        figure(&rate_name, answered / m.elapsed, &format!("{per}s/s"));
        figure(&format!("{prefix}.p50"), ms(50.0), "ms");
        figure(&format!("{prefix}.p99"), ms(99.0), "ms");
        figure(&format!("{prefix}.p99.9"), ms(99.9), "ms");
        figure(&format!("{prefix}.max"), ms(100.0), "ms");
        figure(&format!("{prefix}.wrong"), t.wrong as f64, "wrong answers");
        figure(&format!("{prefix}.failed"), t.failed as f64, "unanswered");
        if per == "decision" {
            figure(
                &format!("{prefix}.unchecked"),
                t.unchecked as f64,
                "answers too near the push threshold to judge",
            );
            figure(
                &format!("{prefix}.incomplete"),
                t.incomplete as f64,
                "answers with complete: false",
            );
        }
        if !plan.server_pids.is_empty() {
            figure(
                &format!("{prefix}.server_cpu"),
                m.server_cpu / m.elapsed * 100.0,
                &format!(
                    "% of one core, {} server process(es)",
                    plan.server_pids.len()
                ),
            );
            figure(
                &format!("{prefix}.server_cpu_per_{per}"),
                m.server_cpu / answered.max(1.0) * 1e6,
                "µs",
            );
        }
        figure(
            &format!("{prefix}.loadgen_cpu"),
            m.loadgen_cpu / m.elapsed * 100.0,
            "% of one core",
        );
        figure(
            &format!("{prefix}.host_cpu"),
            m.after.host_busy_since(&m.before),
            "% of the machine busy",
        );
        let window = m
            .after
            .at
            .duration_since(m.before.at)
            .as_secs_f64()
            .max(1e-3);
        if !plan.redis.is_empty() {
            let cpu = m.after.redis_cpu - m.before.redis_cpu;
            figure(
                &format!("{prefix}.redis_cpu"),
                cpu / window * 100.0,
                "% of one core",
            );
            figure(
                &format!("{prefix}.redis_cpu_per_{per}"),
                cpu / answered.max(1.0) * 1e6,
                "µs",
            );
        }
        if !m.before.nodes.is_empty() {
            let messages: f64 = m
                .before
                .nodes
                .iter()
                .zip(&m.after.nodes)
                .map(|(b, a)| a.1 - b.1)
                .sum();
            figure(
                &format!("{prefix}.bus_messages_in_per_{per}"),
                messages / answered.max(1.0),
                "messages received by the nodes",
            );
        }
    }
    let rate = |m: &Measured| m.tally.latencies.len() as f64 / m.elapsed;
    figure(
        &format!("{l}.vs_presence"),
        rate(notify) / rate(presence),
        "notify decisions/s over presence requests/s",
    );
    figure(
        &format!("{l}.socket_errors"),
        world.socket_errors.load(Ordering::Relaxed) as f64,
        "error frames on the users' sockets",
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn world(idle_after: u64, push_after: u64) -> World {
        World {
            users: (0..4)
                .map(|i| User {
                    name: format!("u{i}"),
                    room: "r".into(),
                    kind: Kind::of(i),
                    idle_at: AtomicU64::new(0),
                    connected: AtomicBool::new(true),
                })
                .collect(),
            elsewhere: "x".into(),
            epoch: Instant::now(),
            idle_after_ms: AtomicU64::new(idle_after),
            push_after_ms: push_after,
            socket_errors: AtomicU64::new(0),
            first_socket_error: std::sync::Mutex::new(None),
        }
    }

    #[test]
    fn expected_answers_follow_the_rule() {
        let w = world(60_000, 120_000);
        let all: Vec<_> = (0..4)
            .flat_map(|i| [w.expect_notify(i, true), w.expect_notify(i, false)])
            .collect();
        assert_eq!(
            all,
            [
                Some(("live", "viewing")),
                Some(("live", "active")),
                Some(("live", "active")),
                Some(("live", "active")),
                Some(("live", "viewing")),
                Some(("live", "recent")),
                Some(("push", "background")),
                Some(("push", "background")),
            ]
        );
        // Quiet past the threshold: push/idle; at it: not judged.
        let w = world(200_000, 120_000);
        assert_eq!(w.expect_notify(2, true), Some(("push", "idle")));
        let w = world(120_000, 120_000);
        assert_eq!(w.expect_notify(2, true), None);
        assert_eq!(w.expect_presence(3), ("idle", Some("hidden")));
    }
}
