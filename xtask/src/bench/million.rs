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
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use super::cluster::{Store, forget};
use crate::setup;

/// Node processes per step (each its own runtime of 2 threads).
const NODES: usize = 4;
/// The steps: total users, and the activity mix's scale (1: `loadgen sim`'s
/// defaults). At 1M the full mix needs about 3 cores here (3 µs per user
/// per second, heartbeats a third of it), past the machine's 2: the users
/// all connect and heartbeat, and act at a fifth of the rates.
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
        figures.extend(step(loadgen, total, scale, seconds)?);
    }
    Ok(figures)
}

fn step(loadgen: &Path, total: usize, scale: f64, seconds: u64) -> Result<Vec<Value>> {
    let label = format!("million_{total}");
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
        let mut command = Command::new(loadgen);
        command.arg("sim");
        for (flag, rate) in MIX {
            command.args([flag, &(rate * scale).to_string()]);
        }
        let mut child = command
            .args(["--users", &(total / NODES).to_string()])
            .args(["--node-id", &format!("s{k}")])
            .args(["--redis-cluster", &setup::redis_cluster_nodes()])
            .args(["--redis-prefix", &prefix])
            .args(["--bind", &format!("127.0.0.1:{}", ports[k])])
            .args([
                "--next",
                &format!("ws://127.0.0.1:{}/ws", ports[(k + 1) % NODES]),
            ])
            .args(["--settle", "0", "--seconds", &seconds.to_string()])
            .arg("--go-file")
            .arg(&go)
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
        children.push(child);
    }
    drop(tx);
    let mut figures = Vec::new();
    let mut full = 0;
    let started = Instant::now();
    // Every node is full once it printed its RSS per user.
    while full < NODES {
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
        if let Ok(v) = serde_json::from_str::<Value>(&line) {
            if v["figure"]
                .as_str()
                .is_some_and(|f| f.ends_with("_rss_bytes_per_user"))
            {
                full += 1;
            }
            figures.push(relabel(&label, v));
        } else {
            println!("{line}");
        }
    }
    let filled = started.elapsed();
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
        if let Ok(v) = serde_json::from_str::<Value>(&line) {
            figures.push(relabel(&label, v));
        } else {
            println!("{line}");
        }
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

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
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
