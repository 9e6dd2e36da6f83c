//! Installing and starting what the tests need, each only when it is missing.

use std::path::Path;
use std::process::Command;
use std::thread::sleep;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::cmd;
use crate::workspace::Workspace;

/// Debian's Chromium and its WebDriver, used by the browser tests.
pub const CHROMIUM: &str = "/usr/bin/chromium";
/// See [`CHROMIUM`].
pub const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// The toolchain, components and targets named in `rust-toolchain.toml`. With
/// `RUSTUP_AUTO_INSTALL=0` rustup installs none of them by itself, and a missing wasm target only
/// shows up later as "can't find crate for `std`".
pub fn toolchain(ws: &Workspace) -> Result<()> {
    let rustup = || {
        let mut command = cmd::in_dir("rustup", &ws.root);
        // Set by the rustup proxy that started cargo; without it rustup reads the toolchain file,
        // which also names the components and targets to install.
        command.env_remove("RUSTUP_TOOLCHAIN");
        command
    };
    cmd::run(rustup().args(["toolchain", "install", "--no-self-update"]))?;
    cmd::run(rustup().args(["target", "add", "wasm32-unknown-unknown"]))
}

/// Chromium and chromedriver from apt, if either is missing.
pub fn chromium() -> Result<()> {
    if Path::new(CHROMIUM).exists() && Path::new(CHROMEDRIVER).exists() {
        println!("chromium and chromedriver present");
        return Ok(());
    }
    apt_install(&["chromium", "chromium-driver"])
}

/// Redis on 127.0.0.1:6379 (normally already running), started if `redis-cli ping` fails.
pub fn redis() -> Result<()> {
    if redis_answers() {
        println!("redis answers on 127.0.0.1:6379");
        return Ok(());
    }
    if !cmd::succeeds(Command::new("redis-server").arg("--version")) {
        apt_install(&["redis-server"])?;
    }
    cmd::run(Command::new("redis-server").args([
        "--daemonize",
        "yes",
        "--bind",
        "127.0.0.1",
        "-::1",
        "--port",
        "6379",
        "--save",
        "",
        "--appendonly",
        "no",
    ]))?;
    if answers_within(Duration::from_secs(5), redis_answers) {
        println!("redis started");
        return Ok(());
    }
    bail!("redis-server was started but does not answer `redis-cli ping`")
}

/// Polls `check` every 100 ms until it holds or `limit` has passed.
fn answers_within(limit: Duration, check: impl Fn() -> bool) -> bool {
    let step = Duration::from_millis(100);
    for _ in 0..limit.as_millis() / step.as_millis() {
        if check() {
            return true;
        }
        sleep(step);
    }
    check()
}

fn redis_answers() -> bool {
    redis_port_answers(6379)
}

fn redis_port_answers(port: u16) -> bool {
    redis_cli(port, &["ping"]).is_some_and(|out| out.starts_with("PONG"))
}

/// `redis-cli -h 127.0.0.1 -p <port> <args>`'s output, if it ran and succeeded.
pub(crate) fn redis_cli(port: u16, args: &[&str]) -> Option<String> {
    Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .output()
        .ok()
        .filter(|out| out.status.success())
        .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The masters of the tests' private Redis Cluster, on loopback.
const REDIS_CLUSTER_PORTS: [u16; 3] = [7101, 7102, 7103];

/// Tells the tests where the cluster is: its masters as `host:port`, comma-separated.
pub const REDIS_CLUSTER_ENV: &str = "PRESENCE_TEST_REDIS_CLUSTER";

/// The value of [`REDIS_CLUSTER_ENV`]: `127.0.0.1:7101,127.0.0.1:7102,127.0.0.1:7103`.
pub fn redis_cluster_nodes() -> String {
    redis_cluster_addrs().join(",")
}

fn redis_cluster_addrs() -> Vec<String> {
    REDIS_CLUSTER_PORTS
        .iter()
        .map(|port| format!("127.0.0.1:{port}"))
        .collect()
}

/// A private 3-master Redis Cluster on 127.0.0.1:7101-7103 (no replicas, no persistence), for
/// the tests of cluster routing that one standalone Redis cannot show. A healthy one left by an
/// earlier run is reused; otherwise its nodes are stopped and the cluster is made afresh in
/// `target/redis-cluster`. The nodes outlive xtask, like the Redis on 6379.
pub fn redis_cluster(ws: &Workspace) -> Result<()> {
    if redis_cluster_healthy() {
        println!("redis cluster answers on {}", redis_cluster_nodes());
        return Ok(());
    }
    if !cmd::succeeds(Command::new("redis-server").arg("--version")) {
        bail!("redis-server not found (needed for the Redis Cluster on ports 7101-7103)");
    }
    if !cmd::succeeds(Command::new("redis-cli").arg("--version")) {
        bail!("redis-cli not found (needed to create the Redis Cluster on ports 7101-7103)");
    }
    stop_redis_cluster()?;
    let dir = ws.target.join("redis-cluster");
    if dir.exists() {
        std::fs::remove_dir_all(&dir)?;
    }
    std::fs::create_dir_all(&dir)?;
    for port in REDIS_CLUSTER_PORTS {
        start_cluster_node(&dir, port)?;
    }
    create_redis_cluster()?;
    if answers_within(Duration::from_secs(20), redis_cluster_healthy) {
        println!("redis cluster started on {}", redis_cluster_nodes());
        return Ok(());
    }
    bail!(
        "the Redis Cluster on ports 7101-7103 was created but does not reach cluster_state:ok \
         with 3 masters within 20 s (logs in {})",
        dir.display()
    )
}

/// Every node says `cluster_state:ok` and counts 3 masters serving slots, so a client may start
/// at any of them.
fn redis_cluster_healthy() -> bool {
    REDIS_CLUSTER_PORTS.iter().all(|&port| {
        redis_cli(port, &["cluster", "info"]).is_some_and(|info| {
            let lines: Vec<&str> = info.lines().map(str::trim).collect();
            lines.contains(&"cluster_state:ok") && lines.contains(&"cluster_size:3")
        })
    })
}

/// Shuts down whatever Redis answers on the cluster's ports (a broken cluster of an earlier run),
/// so the ports and a fresh `nodes-<port>.conf` are free.
fn stop_redis_cluster() -> Result<()> {
    for port in REDIS_CLUSTER_PORTS {
        if !redis_port_answers(port) {
            continue;
        }
        println!("stopping the stale redis on 127.0.0.1:{port}");
        redis_cli(port, &["shutdown", "nosave"]);
        if !answers_within(Duration::from_secs(5), || !redis_port_answers(port)) {
            bail!("the redis on 127.0.0.1:{port} does not stop after `shutdown nosave`");
        }
    }
    Ok(())
}

/// One cluster-enabled `redis-server`, daemonized, its files and log in `dir`.
fn start_cluster_node(dir: &Path, port: u16) -> Result<()> {
    let port_arg = port.to_string();
    let in_dir = |name: String| dir.join(name).display().to_string();
    cmd::run(Command::new("redis-server").args([
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        &in_dir(format!("nodes-{port}.conf")),
        "--port",
        &port_arg,
        "--bind",
        "127.0.0.1",
        "--daemonize",
        "yes",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        &dir.display().to_string(),
        "--logfile",
        &in_dir(format!("redis-{port}.log")),
    ]))?;
    if answers_within(Duration::from_secs(5), || redis_port_answers(port)) {
        return Ok(());
    }
    bail!(
        "redis-server on 127.0.0.1:{port} was started but does not answer `redis-cli ping` \
         (see {})",
        in_dir(format!("redis-{port}.log"))
    )
}

/// Joins the three nodes into one cluster, the 16384 slots split between them.
fn create_redis_cluster() -> Result<()> {
    let nodes = redis_cluster_addrs();
    let mut command = Command::new("redis-cli");
    command.arg("--cluster").arg("create").args(&nodes).args([
        "--cluster-replicas",
        "0",
        "--cluster-yes",
    ]);
    println!(
        "$ redis-cli --cluster create {} --cluster-replicas 0 --cluster-yes",
        nodes.join(" ")
    );
    let out = command
        .output()
        .context("could not start `redis-cli --cluster create`")?;
    if !out.status.success() {
        // redis-cli prints its `[ERR] …` lines on stdout.
        bail!(
            "`redis-cli --cluster create` failed ({}): {} {}",
            out.status,
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// PostgreSQL on 127.0.0.1:5432, for the audience-policy test: the machine
/// has a cluster; start it if it is down.
pub fn postgres() -> Result<()> {
    if postgres_answers() {
        println!("postgres answers on 127.0.0.1:5432");
        return Ok(());
    }
    let versions: Vec<String> = std::fs::read_dir("/etc/postgresql")
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    let Some(version) = versions.first() else {
        bail!(
            "PostgreSQL is not on 127.0.0.1:5432 and no cluster is configured in /etc/postgresql"
        );
    };
    cmd::run(Command::new("pg_ctlcluster").args([
        "--skip-systemctl-redirect",
        version,
        "main",
        "start",
    ]))?;
    if answers_within(Duration::from_secs(10), postgres_answers) {
        println!("postgres started");
        return Ok(());
    }
    bail!("PostgreSQL was started but does not accept connections on 127.0.0.1:5432")
}

fn postgres_answers() -> bool {
    std::net::TcpStream::connect_timeout(
        &std::net::SocketAddr::from(([127, 0, 0, 1], 5432)),
        Duration::from_secs(1),
    )
    .is_ok()
}

/// What building the browser package needs: the wasm target and the node tools.
pub fn package_tools(ws: &Workspace) -> Result<()> {
    toolchain(ws)?;
    node_tools(ws)
}

/// The node tools in `xtask/node/` (binaryen's `wasm-opt`, `esbuild`, `tsc`), installed from the
/// committed lockfile.
pub fn node_tools(ws: &Workspace) -> Result<()> {
    // Probe the newest tool, so a checkout that predates it reinstalls.
    npm_ci(&ws.root.join("xtask").join("node"), "tsc")
}

/// `npm ci` in `dir` unless `node_modules/.bin/<probe>` is already there.
pub fn npm_ci(dir: &Path, probe: &str) -> Result<()> {
    if dir.join("node_modules").join(".bin").join(probe).exists() {
        println!("node packages in {} present", dir.display());
        return Ok(());
    }
    cmd::run(cmd::in_dir("npm", dir).args(["ci", "--no-audit", "--no-fund"]))
}

/// The in-workspace wasm-bindgen test runner (a second binary of the xtask package, so it reuses
/// the already-compiled wasm-bindgen crates).
pub fn wasm_test_runner(ws: &Workspace) -> Result<()> {
    cmd::run(cmd::cargo().current_dir(&ws.root).args([
        "build",
        "--package",
        "xtask",
        "--profile",
        "tools",
        "--bin",
        "wasm-test-runner",
    ]))
}

fn apt_install(packages: &[&str]) -> Result<()> {
    let apt = || {
        let mut command = Command::new("apt-get");
        command.env("DEBIAN_FRONTEND", "noninteractive");
        command
    };
    cmd::run(apt().args(["update", "-q"]))?;
    cmd::run(apt().args(["install", "-y", "-q"]).args(packages))
}
