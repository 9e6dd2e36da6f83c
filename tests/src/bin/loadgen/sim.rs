//! One node of a simulated cluster (issue 32): a real `presence-server` node
//! in this process (its real sessions, hub and Redis backend), carrying many
//! simulated users that connect in-process ([`PresenceServer::connect`]), so a
//! user costs no file descriptor; plus real WebSocket observers on the *next*
//! node, in rooms of this node's users, timing what people would see.
//!
//! Users live in rooms of `room_size`; each heartbeats like a browser and
//! follows the mix in [`Mix`] (rates per user per hour), drawn every 100 ms.
//! Probes: a member of an observed room sets a status text naming a
//! sequence number; the observer on the next node times it (one clock: both
//! ends are in this process). Figures are JSON lines, as every scenario's.
//!
//! Bounded: users, seconds and rates are capped below; every channel is
//! bounded (a user whose queue is full misses that action, counted).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use presence_server::presence_core::UserId;
use presence_server::{
    ClusterConfig, DevAuth, Identity, LocalSocket, PresenceServer, RedisBackend, RedisConfig,
    ServerConfig,
};
use serde_json::Value;
use tokio::sync::{Semaphore, mpsc};

use crate::conn::{self, Target};
use crate::probe::Probe;
use crate::report::{figure, percentile, process};

const SERVICE_KEY: &str = "sim-service-key-0123456789";

/// At most this many users per process (memory: see BENCHMARKS.md).
const MAX_USERS: usize = 400_000;
const MAX_SECONDS: u64 = 600;
/// Users connecting at once while the node fills.
const CONNECTING: usize = 64;
/// How often the driver draws actions.
const TICK: Duration = Duration::from_millis(100);
/// A browser's heartbeat (the SDK's default interval).
const PING: Duration = Duration::from_secs(25);

/// Actions per user per hour (see BENCHMARKS.md "A million users" for where
/// each comes from).
#[derive(Clone, Copy, Debug)]
pub struct Mix {
    /// Going idle (no input for the idle threshold, or the tab hidden) and
    /// back: each counts one change.
    pub idle: f64,
    pub status: f64,
    pub typing: f64,
    /// A reload or network blip: the socket closes and a new one opens at
    /// once (within the grace: nobody sees a change).
    pub reload: f64,
    /// A real departure: offline, back after `away`.
    pub leave: f64,
}

impl Mix {
    fn per_tick(&self, users: usize) -> [f64; 5] {
        let k = users as f64 * TICK.as_secs_f64() / 3600.0;
        [
            self.idle * k,
            self.status * k,
            self.typing * k,
            self.reload * k,
            self.leave * k,
        ]
    }
}

pub struct Plan {
    pub users: usize,
    pub node_id: String,
    pub redis_cluster: Vec<String>,
    pub prefix: String,
    pub bind: SocketAddr,
    /// The next node's `ws://…/ws`, for this process's observers.
    pub next: Option<Target>,
    pub room_size: usize,
    pub observers: usize,
    /// Probes per second over all observed rooms.
    pub probe_rate: f64,
    /// Seconds to wait after this node is full, for the others to fill.
    pub settle: u64,
    /// With it, measuring starts once this file exists (the runner makes it
    /// when every node is full), at most [`MAX_SECONDS`] after the settle.
    pub go: Option<std::path::PathBuf>,
    pub seconds: u64,
    /// Seconds to stay up after measuring (for faults driven from outside).
    pub hold: u64,
    pub mix: Mix,
    pub away: Duration,
    /// When in the window every user reloads at once (a thundering herd).
    pub herd_after: Option<Duration>,
    /// The window in this many equal steps, the mix's rates multiplied by
    /// `ramp_factor` at each (1 step: no ramp).
    pub ramp_steps: usize,
    pub ramp_factor: f64,
}

#[derive(Clone, Copy, Debug)]
enum Action {
    Idle,
    Status,
    Typing,
    Reload,
    /// A reload of the herd (counted apart).
    Herd,
    Leave,
    Probe(u64),
}

#[derive(Default)]
struct Counters {
    frames_in: AtomicU64,
    bytes_in: AtomicU64,
    sent: [AtomicU64; 6],
    missed: AtomicU64,
    reconnect_failed: AtomicU64,
    /// Herd reloads done (welcome and snapshot again).
    herd_back: AtomicU64,
    /// `user_disconnected` diffs the observers saw: their rooms' members
    /// never leave, so each is a user who flapped.
    flaps: AtomicU64,
}

pub fn run(plan: Plan) -> Result<()> {
    if plan.users > MAX_USERS || plan.users == 0 {
        bail!("--users must be 1..={MAX_USERS}");
    }
    if plan.seconds > MAX_SECONDS || plan.settle > MAX_SECONDS || plan.hold > MAX_SECONDS {
        bail!("--seconds, --settle and --hold are at most {MAX_SECONDS}");
    }
    if !plan.bind.ip().is_loopback() {
        bail!("--bind must be on loopback");
    }
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(node(plan))
}

fn user_name(node: &str, i: usize) -> String {
    format!("{node}-u{i}")
}

fn room_name(node: &str, r: usize) -> String {
    format!("{node}-r{r}")
}

async fn node(plan: Plan) -> Result<()> {
    let config = ServerConfig {
        service_key: Some(SERVICE_KEY.into()),
        ..ServerConfig::default()
    };
    let mut redis = RedisConfig::cluster(plan.redis_cluster.clone());
    redis.prefix = plan.prefix.clone();
    let backend = Arc::new(RedisBackend::new(redis)?);
    let cluster = ClusterConfig {
        node_id: plan.node_id.clone(),
        ..ClusterConfig::default()
    };
    let server = PresenceServer::builder()
        .config(config)
        .auth(DevAuth)
        .cluster(backend, cluster)
        .build()?;
    let listener = tokio::net::TcpListener::bind(plan.bind).await?;
    let addr = listener.local_addr()?;
    let router = server.router().merge(server.ops_router());
    tokio::spawn(async move { axum::serve(listener, router).await });
    let counters = Arc::new(Counters::default());
    let start = Instant::now();
    let me = std::process::id();
    let cpu0 = process(me).1;

    // Observers on the next node, in this node's first rooms, before the
    // fill: a socket's welcome on a node busy filling can wait past 10 s
    // (BENCHMARKS.md, "A million users").
    let probes: Arc<Mutex<HashMap<u64, Instant>>> = Arc::default();
    let (seen_tx, mut seen_rx) = mpsc::unbounded_channel::<(u64, Duration)>();
    let rooms = plan.users.div_ceil(plan.room_size);
    let observed = plan.observers.min(rooms);
    if let Some(next) = &plan.next {
        for k in 0..observed {
            let name = format!("{}-obs{k}", plan.node_id);
            let mut ws = observer(next, &name).await?;
            conn::join(&mut ws, &room_name(&plan.node_id, k)).await?;
            spawn_observer(ws, probes.clone(), seen_tx.clone(), counters.clone());
        }
    }
    // Fill the node.
    let gate = Arc::new(Semaphore::new(CONNECTING));
    let mut joining = tokio::task::JoinSet::new();
    for i in 0..plan.users {
        let (server, gate, node) = (server.clone(), gate.clone(), plan.node_id.clone());
        let room = room_name(&plan.node_id, i / plan.room_size);
        joining.spawn(async move {
            let _p = gate.acquire_owned().await?;
            let socket = enter(&server, &user_name(&node, i), &room).await?;
            anyhow::Ok((i, socket))
        });
    }
    let mut slots: Vec<Option<mpsc::Sender<Action>>> = (0..plan.users).map(|_| None).collect();
    while let Some(done) = joining.join_next().await {
        let (i, socket) = done??;
        let room = room_name(&plan.node_id, i / plan.room_size);
        slots[i] = Some(spawn_user(
            server.clone(),
            user_name(&plan.node_id, i),
            room,
            socket,
            counters.clone(),
            plan.away,
        ));
    }
    let users: Vec<mpsc::Sender<Action>> = slots.into_iter().flatten().collect();
    let filled = start.elapsed();
    let (rss_full, cpu_full) = process(me);
    let label = format!("sim_{}", plan.node_id);
    figure(&format!("{label}_users"), plan.users as f64, "users");
    figure(&format!("{label}_fill_seconds"), filled.as_secs_f64(), "s");
    figure(
        &format!("{label}_fill_cpu_us_per_user"),
        (cpu_full - cpu0) * 1e6 / plan.users as f64,
        "µs",
    );
    figure(&format!("{label}_rss_bytes"), rss_full as f64, "bytes");
    figure(
        &format!("{label}_rss_bytes_per_user"),
        rss_full as f64 / plan.users as f64,
        "bytes",
    );

    drop(seen_tx);
    tokio::time::sleep(Duration::from_secs(plan.settle)).await;
    if let Some(go) = &plan.go {
        let deadline = Instant::now() + Duration::from_secs(MAX_SECONDS);
        while !go.exists() {
            if Instant::now() > deadline {
                bail!("{} did not appear in {MAX_SECONDS} s", go.display());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    // Measure.
    let cpu1 = process(me).1;
    let probe = Probe {
        nodes: vec![addr],
        redis: Vec::new(),
    };
    let bus0 = probe.spawn().await??;
    let in0 = counters.frames_in.load(Ordering::Relaxed);
    let bytes0 = counters.bytes_in.load(Ordering::Relaxed);
    let per_tick = plan.mix.per_tick(users.len());
    let mut owed = [0.0f64; 5];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ u64::from(std::process::id()));
    let mut tick = tokio::time::interval(TICK);
    let window = Duration::from_secs(plan.seconds);
    let began = Instant::now();
    let probe_every = if plan.probe_rate > 0.0 && observed > 0 {
        Some(Duration::from_secs_f64(1.0 / plan.probe_rate))
    } else {
        None
    };
    let mut next_probe = Instant::now();
    let mut seq = 0u64;
    let steps = plan.ramp_steps.max(1);
    // Per ramp step: the first probe's sequence and the changes sent before it.
    let mut ramp: Vec<(u64, u64, Instant)> = Vec::new();
    let changes_sent = |c: &Counters| {
        [0, 1, 4, 5]
            .iter()
            .map(|&i| c.sent[i].load(Ordering::Relaxed))
            .sum::<u64>()
    };
    let mut herd: Option<(Instant, u64, u64)> = None;
    let mut herd_done: Option<Duration> = None;
    let flaps0 = counters.flaps.load(Ordering::Relaxed);
    while began.elapsed() < window {
        tick.tick().await;
        if let Some(after) = plan.herd_after
            && herd.is_none()
            && began.elapsed() >= after
        {
            // Everyone at once; a user whose queue is full misses it (counted).
            let (back0, missed0) = (
                counters.herd_back.load(Ordering::Relaxed),
                counters.missed.load(Ordering::Relaxed),
            );
            for who in 0..users.len() {
                give(&users, who, Action::Herd, &counters);
            }
            let missed = counters.missed.load(Ordering::Relaxed) - missed0;
            herd = Some((Instant::now(), back0, users.len() as u64 - missed));
        }
        if let Some((at, back0, owed)) = herd
            && herd_done.is_none()
            && counters.herd_back.load(Ordering::Relaxed) - back0 >= owed
        {
            herd_done = Some(at.elapsed());
        }
        let step = ((began.elapsed().as_secs_f64() / window.as_secs_f64() * steps as f64) as usize)
            .min(steps - 1);
        if ramp.len() <= step {
            ramp.push((seq + 1, changes_sent(&counters), Instant::now()));
        }
        let factor = plan.ramp_factor.powi(step as i32);
        for (kind, owe) in owed.iter_mut().enumerate() {
            *owe += per_tick[kind] * factor;
            while *owe >= 1.0 {
                *owe -= 1.0;
                let action = [
                    Action::Idle,
                    Action::Status,
                    Action::Typing,
                    Action::Reload,
                    Action::Leave,
                ][kind];
                // Observed rooms' members only probe (their changes are timed).
                let first = (observed * plan.room_size).min(users.len() - 1);
                let who = first + rng.below(users.len() - first);
                give(&users, who, action, &counters);
            }
        }
        if let Some(every) = probe_every {
            while next_probe <= Instant::now() {
                next_probe += every;
                seq += 1;
                let room = (seq as usize) % observed;
                probes.lock().expect("lock").insert(seq, Instant::now());
                give(&users, room * plan.room_size, Action::Probe(seq), &counters);
            }
        }
    }
    let secs = began.elapsed().as_secs_f64();
    let (rss_after, cpu_end) = process(me);
    let cpu = cpu_end - cpu1;
    let bus1 = probe.spawn().await??;
    let mut lat: Vec<u64> = Vec::new();
    let mut by_step: Vec<Vec<u64>> = vec![Vec::new(); ramp.len()];
    while let Ok((seq, d)) = seen_rx.try_recv() {
        lat.push(d.as_micros() as u64);
        let step = ramp.iter().rposition(|(first, _, _)| *first <= seq);
        if let Some(k) = step {
            by_step[k].push(d.as_micros() as u64);
        }
    }
    if steps > 1 {
        let end = (changes_sent(&counters), Instant::now());
        for (k, (_, sent0, at)) in ramp.iter().enumerate() {
            let (sent1, until) = ramp.get(k + 1).map_or(end, |(_, s, t)| (*s, *t));
            let secs = until.duration_since(*at).as_secs_f64();
            let rate = (sent1 - sent0) as f64 / secs;
            figure(&format!("{label}_ramp{k}_changes_per_second"), rate, "/s");
            let l = &mut by_step[k];
            l.sort_unstable();
            if !l.is_empty() {
                let p99 = percentile(l, 99.0) / 1e3;
                figure(&format!("{label}_ramp{k}_observed_ms_p99"), p99, "ms");
            }
        }
    }
    lat.sort_unstable();
    let sent: Vec<u64> = counters
        .sent
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .collect();
    let changes = changes_sent(&counters) as f64 / secs;
    figure(&format!("{label}_changes_per_second"), changes, "/s");
    figure(
        &format!("{label}_typing_per_second"),
        sent[2] as f64 / secs,
        "/s",
    );
    figure(
        &format!("{label}_reloads_per_second"),
        sent[3] as f64 / secs,
        "/s",
    );
    figure(&format!("{label}_cpu_share"), cpu / secs, "cores");
    figure(
        &format!("{label}_cpu_us_per_user_second"),
        cpu * 1e6 / secs / users.len() as f64,
        "µs",
    );
    figure(
        &format!("{label}_rss_bytes_after"),
        rss_after as f64,
        "bytes",
    );
    figure(
        &format!("{label}_frames_in_per_user_second"),
        (counters.frames_in.load(Ordering::Relaxed) - in0) as f64 / secs / users.len() as f64,
        "frames",
    );
    figure(
        &format!("{label}_bytes_in_per_user_second"),
        (counters.bytes_in.load(Ordering::Relaxed) - bytes0) as f64 / secs / users.len() as f64,
        "bytes",
    );
    let (bytes, messages) = (
        bus1.nodes[0].0 - bus0.nodes[0].0,
        bus1.nodes[0].1 - bus0.nodes[0].1,
    );
    if let (Some(h1), Some(h0)) = (bus1.holds.first(), bus0.holds.first()) {
        let h = h1.since(h0);
        figure(
            &format!("{label}_lock_holds_per_second"),
            h.count / secs,
            "/s",
        );
        figure(&format!("{label}_lock_held_share"), h.seconds / secs, "");
        figure(&format!("{label}_lock_holds_over_25ms"), h.over_25ms, "");
        figure(&format!("{label}_lock_holds_over_100ms"), h.over_100ms, "");
    }
    figure(
        &format!("{label}_presence_backend_bytes_in_total_per_second"),
        bytes / secs,
        "bytes/s",
    );
    figure(
        &format!("{label}_presence_backend_messages_in_total_per_second"),
        messages / secs,
        "/s",
    );
    figure(
        &format!("{label}_missed_actions"),
        counters.missed.load(Ordering::Relaxed) as f64,
        "",
    );
    figure(
        &format!("{label}_reconnects_failed"),
        counters.reconnect_failed.load(Ordering::Relaxed) as f64,
        "",
    );
    figure(
        &format!("{label}_observed_flaps"),
        (counters.flaps.load(Ordering::Relaxed) - flaps0) as f64,
        "",
    );
    if let Some((_, _, owed)) = herd {
        figure(&format!("{label}_herd_users"), owed as f64, "users");
        // NaN: not all were back within the window.
        let secs = herd_done.map_or(f64::NAN, |d| d.as_secs_f64());
        figure(&format!("{label}_herd_all_back_seconds"), secs, "s");
    }
    let probes_sent = sent[5];
    figure(&format!("{label}_probes_sent"), probes_sent as f64, "");
    figure(&format!("{label}_probes_seen"), lat.len() as f64, "");
    if !lat.is_empty() {
        for (p, name) in [(50.0, "p50"), (99.0, "p99"), (99.9, "p999")] {
            figure(
                &format!("{label}_observed_ms_{name}"),
                percentile(&lat, p) / 1e3,
                "ms",
            );
        }
    }
    tokio::time::sleep(Duration::from_secs(plan.hold)).await;
    Ok(())
}

/// An observer's socket on the next node, which may still be starting.
async fn observer(next: &Target, name: &str) -> Result<conn::Ws> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match conn::open(next, conn::source(0, 1), name).await {
            Ok(ws) => return Ok(ws),
            Err(e) if Instant::now() > deadline => {
                return Err(e).with_context(|| format!("observer {name}"));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Connects `user` in-process, greets, joins `room` (its snapshot read).
async fn enter(server: &PresenceServer, user: &str, room: &str) -> Result<LocalSocket> {
    let id = UserId::new(user).context("user id")?;
    let mut s = server
        .connect(Identity::from(id))
        .await
        .context("the node refused a local connection")?;
    s.send(r#"{"type":"hello","v":1}"#).await?;
    expect(&mut s, "welcome").await?;
    s.send(format!(r#"{{"type":"join","room":"{room}"}}"#))
        .await?;
    expect(&mut s, "snapshot").await?;
    Ok(s)
}

async fn expect(s: &mut LocalSocket, kind: &str) -> Result<()> {
    let want = format!(r#"{{"type":"{kind}""#);
    let wait = async {
        loop {
            match s.recv().await {
                Some(t) if t.starts_with(&want) => return Ok(()),
                Some(_) => continue,
                None => bail!("closed while waiting for {kind}"),
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(30), wait)
        .await
        .with_context(|| format!("no {kind} in 30 s"))?
}

fn give(users: &[mpsc::Sender<Action>], who: usize, action: Action, counters: &Counters) {
    let i = match action {
        Action::Idle => 0,
        Action::Status => 1,
        Action::Typing => 2,
        Action::Reload | Action::Herd => 3,
        Action::Leave => 4,
        Action::Probe(_) => 5,
    };
    match users[who].try_send(action) {
        Ok(()) => counters.sent[i].fetch_add(1, Ordering::Relaxed),
        Err(_) => counters.missed.fetch_add(1, Ordering::Relaxed),
    };
}

/// One simulated user: reads (and counts) what it is sent, heartbeats, and
/// does what the driver tells it.
fn spawn_user(
    server: PresenceServer,
    name: String,
    room: String,
    mut socket: LocalSocket,
    counters: Arc<Counters>,
    away: Duration,
) -> mpsc::Sender<Action> {
    let (tx, mut rx) = mpsc::channel::<Action>(4);
    tokio::spawn(async move {
        // A random phase, so heartbeats do not come in step.
        let phase = Duration::from_millis(u64::from(name.len() as u32 * 7919) % 25_000);
        let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + phase, PING);
        let mut idle = false;
        loop {
            tokio::select! {
                action = rx.recv() => {
                    let Some(action) = action else { return };
                    let frame = match action {
                        Action::Idle => {
                            idle = !idle;
                            if idle {
                                r#"{"type":"activity","state":"idle","reason":"no_input"}"#.to_owned()
                            } else {
                                r#"{"type":"activity","state":"active"}"#.to_owned()
                            }
                        }
                        Action::Status => r#"{"type":"status","status":"away","text":"brb"}"#.to_owned(),
                        Action::Typing => format!(r#"{{"type":"typing","room":"{room}"}}"#),
                        Action::Probe(seq) => format!(r#"{{"type":"status","status":"available","text":"p{seq}"}}"#),
                        Action::Reload | Action::Herd | Action::Leave => {
                            drop(socket);
                            // Boxed: what runs now and then must not size the
                            // task every user keeps.
                            let back = Box::pin(async {
                                if matches!(action, Action::Leave) {
                                    tokio::time::sleep(away).await;
                                }
                                enter(&server, &name, &room).await
                            });
                            match back.await {
                                Ok(s) => {
                                    socket = s;
                                    if matches!(action, Action::Herd) {
                                        counters.herd_back.fetch_add(1, Ordering::Relaxed);
                                    }
                                }
                                Err(_) => {
                                    counters.reconnect_failed.fetch_add(1, Ordering::Relaxed);
                                    return;
                                }
                            }
                            continue;
                        }
                    };
                    if socket.send(frame).await.is_err() { return }
                }
                _ = ping.tick() => if socket.send(r#"{"type":"ping"}"#).await.is_err() { return },
                got = socket.recv() => match got {
                    Some(t) => {
                        counters.frames_in.fetch_add(1, Ordering::Relaxed);
                        counters.bytes_in.fetch_add(t.len() as u64, Ordering::Relaxed);
                    }
                    None => return,
                },
            }
        }
    });
    tx
}

/// A real WebSocket on the next node: each probe's status text, timed.
fn spawn_observer(
    mut ws: conn::Ws,
    probes: Arc<Mutex<HashMap<u64, Instant>>>,
    seen: mpsc::UnboundedSender<(u64, Duration)>,
    counters: Arc<Counters>,
) {
    tokio::spawn(async move {
        let mut ping = tokio::time::interval(PING);
        ping.tick().await;
        while let Some(t) = conn::listen(&mut ws, &mut ping).await {
            let flaps = t.matches(r#""type":"user_disconnected""#).count();
            counters.flaps.fetch_add(flaps as u64, Ordering::Relaxed);
            if !t.contains(r#""text":"p"#) {
                continue;
            }
            let Ok(v) = serde_json::from_str::<Value>(&t) else {
                continue;
            };
            for d in v["diffs"].as_array().into_iter().flatten() {
                let seq = d["text"]
                    .as_str()
                    .and_then(|s| s.strip_prefix('p'))
                    .and_then(|s| s.parse::<u64>().ok());
                if let Some(seq) = seq
                    && let Some(at) = probes.lock().expect("lock").remove(&seq)
                {
                    let _ = seen.send((seq, at.elapsed()));
                }
            }
        }
    });
}

/// xorshift64*: a cheap, seeded, reproducible draw.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: usize) -> usize {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) % n.max(1) as u64) as usize
    }
}
