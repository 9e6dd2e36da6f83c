//! Installing and starting what the tests need, each only when it is missing.

use std::path::Path;
use std::process::Command;
use std::thread::sleep;
use std::time::Duration;

use anyhow::{Result, bail};

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
fn answers_within(limit: Duration, check: fn() -> bool) -> bool {
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
    Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", "6379", "ping"])
        .output()
        .is_ok_and(|out| out.status.success() && out.stdout.starts_with(b"PONG"))
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

/// The node tools in `xtask/node/` (binaryen's `wasm-opt`, `esbuild`), installed from the
/// committed lockfile.
pub fn node_tools(ws: &Workspace) -> Result<()> {
    // Probe the newest tool, so a checkout that predates it reinstalls.
    npm_ci(&ws.root.join("xtask").join("node"), "esbuild")
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
