//! `cargo xtask bench --rolling` (issue 32): a rolling restart of every node
//! of a 3-node cluster over the Redis Cluster while `loadgen rolling` holds
//! users on each (they come back with their resume token, as the SDK does)
//! and observers on every node count the others' offline diffs. Each node in
//! turn gets SIGTERM (a graceful shutdown: its sockets closed with 1001, its
//! connections saved) and starts again under its id on its port; the next
//! follows once it answers `/readyz` and a pause has passed.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use super::cluster::{Store, forget};
use crate::{server, setup};

const NODES: usize = 3;
/// Users per node and rooms (each with users of every node).
const USERS_PER_NODE: usize = 3_000;
const ROOMS: usize = 50;
/// Between one node answering again and the next one's restart.
const PAUSE: Duration = Duration::from_secs(10);
/// How long the users hold on in all: filling (about 20 s), three restarts
/// with their pauses (about 45 s), and a settle.
const SECONDS: u64 = 120;
/// A node that is not ready again within this fails the run.
const RESTART_LIMIT: Duration = Duration::from_secs(30);
const SERVICE_KEY: &str = "rolling-service-key-0123456789";

/// One node process on a fixed port, so that its users find it again.
struct Node {
    id: String,
    port: u16,
    child: Child,
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn spawn(binary: &Path, id: &str, port: u16, prefix: &str) -> Result<Child> {
    Command::new(binary)
        .args(["--bind", &format!("127.0.0.1:{port}"), "--dev-auth"])
        .args(["--node-id", id, "--service-key", SERVICE_KEY])
        .args(["--redis-cluster", &setup::redis_cluster_nodes()])
        .args(["--redis-prefix", prefix])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| format!("starting node {id}"))
}

/// Waits until the node at `port` answers `/readyz` with 200.
fn ready(port: u16, within: Duration) -> Result<Duration> {
    let start = Instant::now();
    loop {
        if server::answers(&format!("127.0.0.1:{port}"), "/readyz") {
            return Ok(start.elapsed());
        }
        if start.elapsed() > within {
            bail!("node on {port} not ready within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn run(binary: &Path, loadgen: &Path) -> Result<Vec<Value>> {
    let label = "rolling";
    println!(
        "\n== {label}: {NODES} nodes of {USERS_PER_NODE} users each over the Redis Cluster, \
         each restarted in turn (SIGTERM, then again under its id)"
    );
    let prefix = format!("rolling-{}", std::process::id());
    let mut nodes = Vec::new();
    for i in 0..NODES {
        let (id, port) = (format!("r{i}"), server::free_port()?);
        let child = spawn(binary, &id, port, &prefix)?;
        nodes.push(Node { id, port, child });
        ready(port, RESTART_LIMIT)?;
    }
    let urls: Vec<String> = nodes
        .iter()
        .map(|n| format!("ws://127.0.0.1:{}/ws", n.port))
        .collect();
    let launched = Instant::now();
    let mut users = Command::new(loadgen)
        .args(["--sources", "4", "rolling", "--urls", &urls.join(",")])
        .args(["--users-per-node", &USERS_PER_NODE.to_string()])
        .args(["--rooms", &ROOMS.to_string()])
        .args(["--seconds", &SECONDS.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting loadgen rolling")?;
    let stderr = users.stderr.take().context("loadgen's stderr")?;
    let mut lines = BufReader::new(stderr).lines();
    // Its users are in their rooms when it says so.
    for line in lines.by_ref() {
        let line = line?;
        println!("{line}");
        if line.ends_with("rolling: ready") {
            break;
        }
    }
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            println!("{line}");
        }
    });
    let started = Instant::now();
    std::thread::sleep(PAUSE);
    for node in &mut nodes {
        let stop = Instant::now();
        Command::new("kill")
            .args(["-TERM", &node.child.id().to_string()])
            .status()
            .context("kill -TERM")?;
        node.child.wait().context("waiting for the node to stop")?;
        let stopped = stop.elapsed();
        node.child = spawn(binary, &node.id, node.port, &prefix)?;
        let back = ready(node.port, RESTART_LIMIT)?;
        println!(
            "{label}: node {} stopped in {:.2} s, ready again {:.2} s later",
            node.id,
            stopped.as_secs_f64(),
            back.as_secs_f64()
        );
        std::thread::sleep(PAUSE);
    }
    println!(
        "{label}: every node restarted within {:.0} s; the users hold on to the end",
        started.elapsed().as_secs_f64()
    );
    if launched.elapsed() > Duration::from_secs(SECONDS) {
        bail!("{label}: the restarts outlasted the users' {SECONDS} s; nothing to read");
    }
    let out = users.wait_with_output().context("loadgen rolling")?;
    if !out.status.success() {
        bail!("loadgen rolling failed: {}", out.status);
    }
    drop(nodes);
    forget(Store::Cluster, &prefix)?;
    let figures: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .inspect(|v: &Value| println!("{v}"))
        .collect();
    Ok(figures)
}
