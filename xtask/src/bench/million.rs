//! `cargo xtask bench --million` (issue 32): the cluster at 10k, 100k and
//! 1M users, simulated on this machine. Each step starts `NODES` processes
//! of `loadgen sim` (a real node each, its share of the users connected
//! in-process, real WebSocket observers on the next node) over the 3-master
//! Redis Cluster, waits until every node is full, reads Redis's memory, lets
//! them measure together, and reads Redis's CPU and commands over the window.
//!
//! Every step gets a fresh key prefix, deleted after it.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use super::cluster::{Store, forget};
use crate::server::free_port;
use crate::setup;

/// Node processes per step (each its own runtime of 2 threads).
const NODES: usize = 4;
/// The steps: total users, and the activity mix's scale (1: `loadgen sim`'s
/// defaults). At 1M the full mix needs about 2.5 cores of nodes here
/// (2.5 µs per user per second, heartbeats 0.57 of it), past the machine's
/// 2: the users all connect and heartbeat, and act at a fifth of the rates.
const STEPS: [(usize, f64); 3] = [(10_000, 1.0), (100_000, 1.0), (1_000_000, 0.2)];
/// `loadgen sim`'s rates per user per hour at scale 1.
const MIX: [(&str, f64); 5] = [
    ("--idle-per-hour", 12.0),
    ("--status-per-hour", 0.5),
    ("--typing-per-hour", 6.0),
    ("--reloads-per-hour", 2.0),
    ("--leaves-per-hour", 1.0),
];
/// A step's nodes must be full within this.
const FILL_LIMIT: Duration = Duration::from_secs(1_800);

/// Runs the steps up to `max_users`; returns every figure.
pub fn run(loadgen: &Path, max_users: usize, seconds: u64) -> Result<Vec<Value>> {
    let mut figures = Vec::new();
    for (total, scale) in STEPS.into_iter().filter(|&(t, _)| t <= max_users) {
        figures.extend(step(loadgen, total, scale, seconds, 1)?);
    }
    Ok(figures)
}

/// One step of `total` users over [`NODES`] nodes, the mix at `scale`; with
/// `ramp_steps` above 1 the window is cut in that many steps, the rates
/// doubling at each.
fn step(
    loadgen: &Path,
    total: usize,
    scale: f64,
    seconds: u64,
    ramp_steps: usize,
) -> Result<Vec<Value>> {
    let label = match ramp_steps {
        1 => format!("million_{total}"),
        _ => format!("ramp_{total}"),
    };
    println!(
        "\n== {label}: {NODES} nodes over the Redis Cluster, {total} simulated users, mix x{scale}"
    );
    let prefix = format!("million-{}-{total}", std::process::id());
    let store = Store::Cluster;
    let masters = store.ports();
    let memory0: u64 = masters
        .iter()
        .map(|p| info_u64(p, "memory", "used_memory"))
        .sum();
    let ports: Vec<u16> = (0..NODES).map(|_| free_port()).collect::<Result<_>>()?;
    let go = std::env::temp_dir().join(format!("{prefix}.go"));
    let _ = std::fs::remove_file(&go);
    let (tx, rx) = mpsc::channel::<(usize, String)>();
    let mut children = Vec::new();
    for k in 0..NODES {
        let node = Sim {
            id: format!("s{k}"),
            users: total / NODES,
            port: ports[k],
            next: ports[(k + 1) % NODES],
            seconds,
            hold: 0,
            herd_after: 0,
            ramp_steps,
        };
        children.push(node.spawn(loadgen, scale, &prefix, &go, k, &tx)?);
    }
    drop(tx);
    let mut figures = Vec::new();
    let filled = fill(&label, &mut children, &rx, &mut figures)?;
    // Records and memberships settle within a few batch windows.
    std::thread::sleep(Duration::from_secs(2));
    let memory: u64 = masters
        .iter()
        .map(|p| info_u64(p, "memory", "used_memory"))
        .sum();
    let per_user = memory.saturating_sub(memory0) as f64 / total as f64;
    let cpu0: Vec<f64> = masters.iter().map(|p| redis_cpu(p)).collect();
    let ops0: Vec<u64> = masters
        .iter()
        .map(|p| info_u64(p, "stats", "total_commands_processed"))
        .collect();
    std::fs::write(&go, b"go").context("the go file")?;
    let window = Instant::now();
    for (k, mut c) in children.into_iter().enumerate() {
        let status = c.wait()?;
        if !status.success() {
            bail!("{label}: node s{k} failed ({status})");
        }
    }
    let secs = window.elapsed().as_secs_f64();
    for (_, line) in rx.iter() {
        keep(&label, &line, &mut figures);
    }
    let mut own = vec![
        fig(&label, "fill_seconds", filled.as_secs_f64(), "s"),
        fig(&label, "redis_used_bytes", memory as f64, "bytes"),
        fig(&label, "redis_bytes_per_user", per_user, "bytes"),
    ];
    for (i, p) in masters.iter().enumerate() {
        let cpu = redis_cpu(p) - cpu0[i];
        let ops = info_u64(p, "stats", "total_commands_processed").saturating_sub(ops0[i]);
        own.push(fig(
            &label,
            &format!("redis_shard{i}_cpu_share"),
            cpu / secs,
            "cores",
        ));
        own.push(fig(
            &label,
            &format!("redis_shard{i}_ops_per_second"),
            ops as f64 / secs,
            "/s",
        ));
    }
    figures.extend(own);
    for f in &figures {
        println!("{f}");
    }
    let _ = std::fs::remove_file(&go);
    forget(store, &prefix)?;
    Ok(figures)
}

/// Steps of `--million --ramp`, each [`RAMP_STEP_SECONDS`] long, the mix's
/// rates doubling at each (x1 to x32).
const RAMP_STEPS: usize = 6;
const RAMP_STEP_SECONDS: u64 = 20;
/// The latency bound the ramp looks for.
const RAMP_P99_MS: f64 = 100.0;

/// `--million --ramp`: `users` over [`NODES`] nodes, the change rate
/// doubled every [`RAMP_STEP_SECONDS`]; per step, the cluster's changes per
/// second and the worst node's probe p99, and the highest rate sustained
/// with p99 within [`RAMP_P99_MS`].
pub fn ramp(loadgen: &Path, users: usize) -> Result<Vec<Value>> {
    let seconds = RAMP_STEPS as u64 * RAMP_STEP_SECONDS;
    let mut figures = step(loadgen, users, 1.0, seconds, RAMP_STEPS)?;
    let label = format!("ramp_{users}");
    let of = |k: usize, name: &str| -> Vec<f64> {
        let suffix = format!("_ramp{k}_{name}");
        figures
            .iter()
            .filter(|f| f["figure"].as_str().is_some_and(|n| n.ends_with(&suffix)))
            .filter_map(|f| f["value"].as_f64())
            .collect()
    };
    let mut own = Vec::new();
    // The rate of the last step before the first one past the bound.
    let mut sustained = 0.0f64;
    let mut within = true;
    for k in 0..RAMP_STEPS {
        let rate: f64 = of(k, "changes_per_second").iter().sum();
        let p99s = of(k, "observed_ms_p99");
        // A node that saw no probe at all in a step is past any bound.
        let p99 = match p99s.len() {
            NODES => p99s.into_iter().fold(0.0, f64::max),
            _ => f64::INFINITY,
        };
        println!(
            "{label}: step {k} (x{}): {rate:.0} changes/s, worst p99 {p99:.1} ms",
            1 << k
        );
        own.push(fig(
            &label,
            &format!("step{k}_changes_per_second"),
            rate,
            "/s",
        ));
        own.push(fig(&label, &format!("step{k}_worst_p99_ms"), p99, "ms"));
        within &= p99 <= RAMP_P99_MS;
        if within {
            sustained = rate;
        }
    }
    own.push(fig(
        &label,
        "sustained_changes_per_second_p99_within_100ms",
        sustained,
        "/s",
    ));
    for f in &own {
        println!("{f}");
    }
    figures.extend(own);
    Ok(figures)
}

/// Waits until every child is full (it printed its RSS per user), keeping
/// the figures they print meanwhile; returns how long that took.
fn fill(
    label: &str,
    children: &mut [Child],
    rx: &mpsc::Receiver<(usize, String)>,
    figures: &mut Vec<Value>,
) -> Result<Duration> {
    let started = Instant::now();
    let mut full = 0;
    while full < children.len() {
        if started.elapsed() > FILL_LIMIT {
            bail!("{label}: the nodes did not fill in {FILL_LIMIT:?}");
        }
        for (k, c) in children.iter_mut().enumerate() {
            if let Some(status) = c.try_wait()? {
                bail!("{label}: node s{k} ended while filling ({status})");
            }
        }
        let Ok((_, line)) = rx.recv_timeout(Duration::from_secs(1)) else {
            continue;
        };
        full += usize::from(line.contains("_rss_bytes_per_user\""));
        keep(label, &line, figures);
    }
    Ok(started.elapsed())
}

/// The service key `loadgen sim` gives its node.
const SIM_SERVICE_KEY: &str = "sim-service-key-0123456789";
/// Users of the killed node asked about on the others, spread over all of
/// them (a ranked query of this many ids answers in about 0.2 s).
const KILL_SAMPLE: usize = 2_000;
/// The others' nodes: their users, and their window (before the kill and
/// through the clean-up).
const KILL_OTHERS: usize = 25_000;
const KILL_WINDOW_SECONDS: u64 = 150;
/// s0's window: all its users reload at once `HERD_AFTER` into it; it is
/// killed once its window ended (its figures printed).
const HERD_AFTER: u64 = 10;
const S0_WINDOW_SECONDS: u64 = 40;
/// How long to wait for the others to see everyone gone and the store clean.
const KILL_LIMIT: Duration = Duration::from_secs(300);

/// `--million --kill`: node s0 carrying `users` and nodes s1 and s2 of
/// [`KILL_OTHERS`] each (observers: s0's and s2's on s1, s1's on s2), the
/// full mix. Once all are full, with `herd`: every user of s0 reloading at
/// once [`HERD_AFTER`] into its window (s0 reports when all are back and
/// the flaps its observers saw); then, its window over, s0 is killed with
/// SIGKILL. Measured from the kill: when s1 and s2 each answer
/// a ranked query of [`KILL_SAMPLE`] of s0's users with all of them
/// offline, when s0's incarnation's set of users in Redis is empty (every
/// record and membership of it gone), and s1's and s2's probes over their
/// window.
pub fn kill(loadgen: &Path, users: usize, herd: bool) -> Result<Vec<Value>> {
    let label = format!("kill_{users}");
    println!("\n== {label}: s0 of {users} users killed beside 2 nodes of {KILL_OTHERS}");
    let prefix = format!("million-{}-kill", std::process::id());
    let ports: Vec<u16> = (0..3).map(|_| free_port()).collect::<Result<_>>()?;
    let go = std::env::temp_dir().join(format!("{prefix}.go"));
    let _ = std::fs::remove_file(&go);
    let (tx, rx) = mpsc::channel::<(usize, String)>();
    let nodes = [
        (
            users,
            1,
            S0_WINDOW_SECONDS,
            if herd { HERD_AFTER } else { 0 },
        ),
        (KILL_OTHERS, 2, KILL_WINDOW_SECONDS, 0),
        (KILL_OTHERS, 1, KILL_WINDOW_SECONDS, 0),
    ];
    let mut children = Vec::new();
    for (k, (n, next, seconds, herd_after)) in nodes.into_iter().enumerate() {
        let node = Sim {
            id: format!("s{k}"),
            users: n,
            port: ports[k],
            next: ports[next],
            seconds,
            hold: KILL_LIMIT.as_secs(),
            herd_after,
            ramp_steps: 1,
        };
        children.push(node.spawn(loadgen, 1.0, &prefix, &go, k, &tx)?);
    }
    drop(tx);
    let mut figures = Vec::new();
    let result = killed(
        &label,
        users,
        &prefix,
        &ports,
        &go,
        &mut children,
        &rx,
        &mut figures,
    );
    for c in &mut children {
        let _ = c.kill();
        let _ = c.wait();
    }
    let _ = std::fs::remove_file(&go);
    forget(Store::Cluster, &prefix)?;
    // Shown even when the run failed: what came before is what broke.
    for f in &figures {
        println!("{f}");
    }
    result?;
    Ok(figures)
}

#[allow(clippy::too_many_arguments)]
fn killed(
    label: &str,
    users: usize,
    prefix: &str,
    ports: &[u16],
    go: &Path,
    children: &mut [Child],
    rx: &mpsc::Receiver<(usize, String)>,
    figures: &mut Vec<Value>,
) -> Result<()> {
    let filled = fill(label, children, rx, figures)?;
    figures.push(fig(label, "fill_seconds", filled.as_secs_f64(), "s"));
    let master = Store::Cluster.ports()[0].clone();
    let port: u16 = master.parse()?;
    let inc = setup::redis_cli(port, &["-c", "GET", &format!("{prefix}:{{reg}}:node:s0")])
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .context("s0's incarnation in Redis")?;
    let users_key = format!("{prefix}:{{i:{inc}}}:users");
    let sample: Vec<String> = (0..users)
        .step_by((users / KILL_SAMPLE).max(1))
        .map(|i| format!("s0-u{i}"))
        .collect();
    let body = std::env::temp_dir().join(format!("{prefix}.json"));
    let query = json!({"users": sample, "order": "present_first", "limit": 1});
    std::fs::write(&body, query.to_string())?;
    std::fs::write(go, b"go").context("the go file")?;
    // s0's window, with its herd: over once it printed its probes' figures.
    let deadline = Instant::now() + Duration::from_secs(S0_WINDOW_SECONDS + 120);
    loop {
        if Instant::now() > deadline {
            bail!("{label}: s0's window did not end");
        }
        if let Some(status) = children[0].try_wait()? {
            bail!("{label}: s0 ended in its window ({status})");
        }
        if let Ok((_, line)) = rx.recv_timeout(Duration::from_secs(1)) {
            let last = line.contains("sim_s0_probes_seen");
            keep(label, &line, figures);
            if last {
                break;
            }
        }
    }
    drain(label, rx, figures);
    // Whether s0 lost its lease in its window (a lapse: its users flap
    // everywhere as it reincarnates).
    let lapses = metric(ports[0], "presence_reincarnations_total")?;
    figures.push(fig(label, "s0_lease_lapses", lapses, ""));
    let offline = |port: u16| -> Result<(u64, u64)> {
        let v = bulk_counts(port, &body)?;
        let n = |k: &str| v["counts"][k].as_u64().unwrap_or(0);
        Ok((n("active") + n("idle"), n("offline")))
    };
    let before = [offline(ports[1])?, offline(ports[2])?];
    println!(
        "{label}: before the kill, s1 and s2 count s0's sample (online, offline) as {before:?}"
    );
    for (j, (on, _)) in before.iter().enumerate() {
        let name = format!("s{}_sample_online_before", j + 1);
        figures.push(fig(label, &name, *on as f64, "users"));
    }
    // A few are away (the mix's departures); most should be online.
    if before
        .iter()
        .any(|&(on, _)| on < sample.len() as u64 * 9 / 10)
    {
        bail!("{label}: most of s0's sample was not online before the kill: {before:?}");
    }
    let held = scard(port, &users_key).context("SCARD of s0's users")?;
    figures.push(fig(label, "inc_users_before", held as f64, "users"));
    children[0].kill().context("killing s0")?;
    let killed_at = Instant::now();
    println!("{label}: s0 killed (SIGKILL); {held} users in its set");
    let mut gone: [Option<Duration>; 2] = [None, None];
    let mut first: [Option<Duration>; 2] = [None, None];
    let mut clean: Option<Duration> = None;
    while gone.iter().any(Option::is_none) || clean.is_none() {
        if killed_at.elapsed() > KILL_LIMIT {
            bail!(
                "{label}: after {KILL_LIMIT:?}: offline on s1/s2 at {gone:?}, store clean at {clean:?}"
            );
        }
        for (j, node) in [1, 2].into_iter().enumerate() {
            if gone[j].is_none() {
                let (on, off) = offline(ports[node])?;
                // Past those away before the kill.
                if off > before[j].1 && first[j].is_none() {
                    first[j] = Some(killed_at.elapsed());
                }
                if on == 0 {
                    gone[j] = Some(killed_at.elapsed());
                }
            }
        }
        if clean.is_none() && scard(port, &users_key) == Some(0) {
            clean = Some(killed_at.elapsed());
        }
        while let Ok((_, line)) = rx.try_recv() {
            keep(label, &line, figures);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = std::fs::remove_file(&body);
    for (j, node) in ["s1", "s2"].into_iter().enumerate() {
        let secs = |d: Option<Duration>| d.map_or(f64::NAN, |d| d.as_secs_f64());
        figures.push(fig(
            label,
            &format!("{node}_first_offline_seconds"),
            secs(first[j]),
            "s",
        ));
        figures.push(fig(
            label,
            &format!("{node}_all_offline_seconds"),
            secs(gone[j]),
            "s",
        ));
    }
    let clean = clean.map_or(f64::NAN, |d| d.as_secs_f64());
    figures.push(fig(label, "store_clean_seconds", clean, "s"));
    println!("{label}: offline on s1 and s2 after {gone:?}, store clean after {clean:.1} s");
    // s1's and s2's windows end; their figures follow.
    let mut probes = 0;
    let deadline = Instant::now() + Duration::from_secs(KILL_WINDOW_SECONDS + 60);
    while probes < 2 && Instant::now() < deadline {
        if let Ok((_, line)) = rx.recv_timeout(Duration::from_secs(1)) {
            probes += usize::from(line.contains("_probes_seen"));
            keep(label, &line, figures);
        }
    }
    // The last figures after probes_seen: the percentiles.
    drain(label, rx, figures);
    Ok(())
}

/// The lines the nodes print within a second more (a node's figures follow
/// one another at once).
fn drain(label: &str, rx: &mpsc::Receiver<(usize, String)>, figures: &mut Vec<Value>) {
    std::thread::sleep(Duration::from_secs(1));
    while let Ok((_, line)) = rx.try_recv() {
        keep(label, &line, figures);
    }
}

/// A line of a node: a figure (relabelled), or shown.
fn keep(label: &str, line: &str, figures: &mut Vec<Value>) {
    match serde_json::from_str::<Value>(line) {
        Ok(v) => figures.push(relabel(label, v)),
        Err(_) => println!("{line}"),
    }
}

/// The ranked query of `body` on the node at `port`.
fn bulk_counts(port: u16, body: &Path) -> Result<Value> {
    Ok(serde_json::from_slice(&service(
        port,
        "/v1/presence/bulk",
        Some(body),
    )?)?)
}

/// A counter or gauge of the node at `port`.
fn metric(port: u16, name: &str) -> Result<f64> {
    let text = service(port, "/metrics", None)?;
    String::from_utf8_lossy(&text)
        .lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .with_context(|| format!("{name} in the metrics of port {port}"))
}

/// `path` of the node at `port` with the service key: a GET, or a POST of
/// the JSON in `body`; the answer's body, or an error for a failed status.
fn service(port: u16, path: &str, body: Option<&Path>) -> Result<Vec<u8>> {
    let mut curl = Command::new("curl");
    curl.args(["-sS", "--fail-with-body", "-m", "10"])
        .args(["-H", &format!("authorization: Bearer {SIM_SERVICE_KEY}")]);
    if let Some(body) = body {
        curl.args(["-X", "POST", "-H", "content-type: application/json"])
            .arg("--data-binary")
            .arg(format!("@{}", body.display()));
    }
    let out = curl
        .arg(format!("http://127.0.0.1:{port}{path}"))
        .output()
        .context("curl")?;
    if !out.status.success() {
        bail!(
            "{path} on port {port}: {} {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out.stdout)
}

/// `SCARD` of a key of the Cluster (0 when absent; `None` if unreadable).
fn scard(port: u16, key: &str) -> Option<u64> {
    setup::redis_cli(port, &["-c", "SCARD", key]).and_then(|s| s.trim().parse().ok())
}

/// One `loadgen sim` process of a run.
struct Sim {
    id: String,
    users: usize,
    port: u16,
    /// The port of the node its observers sit on.
    next: u16,
    seconds: u64,
    hold: u64,
    /// Seconds into the window at which all its users reload at once (0: never).
    herd_after: u64,
    /// Steps of its window, the rates doubling at each (1: none).
    ramp_steps: usize,
}

impl Sim {
    /// Starts it; its stdout's lines go to `tx` as `(k, line)`.
    fn spawn(
        &self,
        loadgen: &Path,
        scale: f64,
        prefix: &str,
        go: &Path,
        k: usize,
        tx: &mpsc::Sender<(usize, String)>,
    ) -> Result<Child> {
        let mut command = Command::new(loadgen);
        command.arg("sim");
        for (flag, rate) in MIX {
            command.args([flag, &(rate * scale).to_string()]);
        }
        let mut child = command
            .args(["--users", &self.users.to_string()])
            .args(["--node-id", &self.id])
            .args(["--redis-cluster", &setup::redis_cluster_nodes()])
            .args(["--redis-prefix", prefix])
            .args(["--bind", &format!("127.0.0.1:{}", self.port)])
            .args(["--next", &format!("ws://127.0.0.1:{}/ws", self.next)])
            .args(["--settle", "0", "--seconds", &self.seconds.to_string()])
            .args(["--hold", &self.hold.to_string()])
            .args(["--herd-after", &self.herd_after.to_string()])
            .args(["--ramp-steps", &self.ramp_steps.to_string()])
            .arg("--go-file")
            .arg(go)
            .stdout(Stdio::piped())
            .spawn()
            .context("loadgen sim")?;
        let out = child.stdout.take().context("its stdout")?;
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send((k, line)).is_err() {
                    return;
                }
            }
        });
        Ok(child)
    }
}

fn fig(label: &str, name: &str, value: f64, unit: &str) -> Value {
    json!({"figure": format!("{label}_{name}"), "value": value, "unit": unit})
}

/// A node's figure under the step's label.
fn relabel(label: &str, mut v: Value) -> Value {
    if let Some(name) = v["figure"].as_str() {
        v["figure"] = json!(format!("{label}_{name}"));
    }
    v
}

/// One field of `INFO <section>` of the Redis on `port` (0 if absent).
fn info_u64(port: &str, section: &str, field: &str) -> u64 {
    info(port, section, field)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// CPU seconds the Redis on `port` has used (user + system).
fn redis_cpu(port: &str) -> f64 {
    ["used_cpu_user", "used_cpu_sys"]
        .iter()
        .filter_map(|f| info(port, "cpu", f)?.parse::<f64>().ok())
        .sum()
}

fn info(port: &str, section: &str, field: &str) -> Option<String> {
    let out = setup::redis_cli(port.parse().ok()?, &["info", section])?;
    out.lines().find_map(|l| {
        l.strip_prefix(&format!("{field}:"))
            .map(|v| v.trim().to_owned())
    })
}
