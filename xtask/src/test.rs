//! `cargo xtask test`: every check and test, in the order a failure is cheapest to find.

use std::fs;

use anyhow::Result;

use crate::cmd::{self, Steps};
use crate::workspace::Workspace;
use crate::{crates, npm, server, setup};

/// Short timings so the browser tests see graces and idleness in well under a second.
const BROWSER_TEST_TIMINGS: &[&str] = &[
    "--heartbeat-interval-ms",
    "1000",
    "--heartbeat-timeout-ms",
    "3000",
    "--offline-grace-ms",
    "400",
    "--leave-grace-ms",
    "150",
    "--typing-ttl-ms",
    "3000",
    "--batch-window-ms",
    "10",
];

/// The React consumer test's server: users go idle after 1.5 s without input, and leave within
/// 150 ms of their page closing its client.
const REACT_TEST_TIMINGS: &[&str] = &[
    "--idle-after-ms",
    "1500",
    "--leave-grace-ms",
    "150",
    "--batch-window-ms",
    "10",
];

/// Tests run at once in each test binary (unless `RUST_TEST_THREADS` says).
const TEST_THREADS: &str = "4";

/// Runs the whole pipeline, stopping at the first failing step.
pub fn run(ws: &Workspace) -> Result<()> {
    let cargo = || {
        let mut command = cmd::cargo();
        command.current_dir(&ws.root);
        command
    };
    let mut steps = Steps::new(13);
    steps.step(
        "setup: toolchain, Chromium, Redis, Redis Cluster, PostgreSQL, node tools, wasm test runner",
        || {
            setup::toolchain(ws)?;
            setup::chromium()?;
            setup::redis()?;
            setup::redis_cluster(ws)?;
            setup::postgres()?;
            setup::node_tools(ws)?;
            setup::wasm_test_runner(ws)
        },
    )?;
    steps.step("format", || {
        cmd::run(cargo().args(["fmt", "--all", "--check"]))
    })?;
    steps.step("clippy", || {
        cmd::run(cargo().args([
            "clippy",
            "--workspace",
            "--all-targets",
            "--",
            "-D",
            "warnings",
        ]))
    })?;
    steps.step("clippy for the browser bundle (wasm32, no std)", || {
        cmd::run(cargo().args([
            "clippy",
            "--package",
            "presence-core",
            "--package",
            "presence-wasm",
            "--no-default-features",
            "--target",
            "wasm32-unknown-unknown",
            "--",
            "-D",
            "warnings",
        ]))
    })?;
    steps.step("cargo test --workspace", || {
        let mut test = cargo();
        test.args(["test", "--workspace"])
            .env(setup::REDIS_CLUSTER_ENV, setup::redis_cluster_nodes());
        // Most server tests wait on sockets and timers, not the CPU: four
        // at a time per binary instead of one per core takes the server's
        // suite from 281 s to 206 s on 2 cores (the cluster scenarios,
        // several nodes with 600 ms leases each, stay within their leases
        // four at a time: 20 of 20 runs). The fault drills, whole Redis
        // Clusters each, bound themselves to one at a time.
        if std::env::var_os("RUST_TEST_THREADS").is_none() {
            test.env("RUST_TEST_THREADS", TEST_THREADS);
        }
        cmd::run(&mut test)
    })?;
    steps.step(
        "crates: cargo package (each packed crate built alone) with README and licenses",
        || crates::package(ws),
    )?;
    steps.step(
        "browser tests (headless Chromium, against a real server)",
        || {
            let binary = server::build(ws, "dev")?;
            let server = server::start(&binary, BROWSER_TEST_TIMINGS)?;
            // chromedriver leaves ~14 MB of profile folders per run in TMPDIR: keep them in target/.
            let tmp = ws.target.join("tmp").join("wasm-test");
            if tmp.exists() {
                fs::remove_dir_all(&tmp)?;
            }
            fs::create_dir_all(&tmp)?;
            cmd::run(
                cargo()
                    .args([
                        "test",
                        "--package",
                        "presence-wasm",
                        "--target",
                        "wasm32-unknown-unknown",
                    ])
                    .env("CHROMEDRIVER", setup::CHROMEDRIVER)
                    // Read at compile time by the tests (`option_env!`).
                    .env("PRESENCE_TEST_WS", server.ws_url())
                    .env("TMPDIR", &tmp)
                    // Absolute path, so a custom CARGO_TARGET_DIR still finds the runner.
                    .env(
                        "CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER",
                        ws.wasm_test_runner(),
                    ),
            )
        },
    )?;
    steps.step("npm package and size budget", || {
        npm::build(ws, npm::Pack::Yes)
    })?;
    steps.step(
        "npm consumer: the README example from the packed tarball",
        || {
            let consumer = ws.root.join("presence-wasm").join("consumer");
            let tarball = npm::tarball(ws, npm::Package::Sdk)?;
            let binary = server::build(ws, "dev")?;
            let server = server::start(&binary, &[])?;
            cmd::run(cmd::in_dir("npm", &consumer).args(["ci", "--no-audit", "--no-fund"]))?;
            cmd::run(
                cmd::in_dir("node", &ws.root)
                    .arg(consumer.join("run.mjs"))
                    .env("PRESENCE_TEST_WS", server.ws_url())
                    .env("PRESENCE_TARBALL", &tarball)
                    .env("TMPDIR", ws.target.join("tmp")),
            )
        },
    )?;
    steps.step(
        "Node server SDK (presence-node) against one node and a cluster",
        || {
            let tarball = npm::tarball(ws, npm::Package::Node)?;
            let binary = server::build(ws, "dev")?;
            cmd::run(
                cmd::in_dir("node", &ws.root)
                    .arg(ws.root.join("presence-node").join("test").join("run.mjs"))
                    .env("PRESENCE_SERVER", &binary)
                    .env(setup::REDIS_CLUSTER_ENV, setup::redis_cluster_nodes())
                    .env("PRESENCE_NODE_TARBALL", &tarball)
                    .env("TMPDIR", ws.target.join("tmp")),
            )
        },
    )?;
    steps.step(
        "React consumer: a strict Vite + React + TypeScript app from the packed tarballs",
        || react_consumer(ws),
    )?;
    steps.step(
        "SDK against the server binary: restart, token lifetime, large rooms (presence-wasm/e2e-restart)",
        || {
            let dir = ws.root.join("presence-wasm").join("e2e-restart");
            let tarball = npm::tarball(ws, npm::Package::Sdk)?;
            let binary = server::build(ws, "dev")?;
            cmd::run(cmd::in_dir("npm", &dir).args(["ci", "--no-audit", "--no-fund"]))?;
            cmd::run(
                cmd::in_dir("node", &ws.root)
                    .arg(dir.join("run.mjs"))
                    .env("PRESENCE_SERVER", &binary)
                    .env("PRESENCE_TARBALL", &tarball)
                    .env("TMPDIR", ws.target.join("tmp")),
            )
        },
    )?;
    steps.step("end-to-end (demo-web/e2e)", || {
        let e2e = ws.root.join("demo-web").join("e2e");
        if !e2e.join("package.json").exists() {
            println!("skipped: no e2e suite yet (demo-web/e2e/package.json)");
            return Ok(());
        }
        let install = if e2e.join("package-lock.json").exists() {
            "ci"
        } else {
            "install"
        };
        cmd::run(cmd::in_dir("npm", &e2e).args([install, "--no-audit", "--no-fund"]))?;
        cmd::run(cmd::in_dir("node", &ws.root).arg(e2e.join("run.mjs")))
    })?;
    println!("\nall steps passed in {}", cmd::human(steps.elapsed()));
    Ok(())
}

/// `presence-wasm/react-consumer/`: installed from the committed lockfile and the packed tarballs,
/// type-checked and built as its authors would, then run in Chromium by its `run.mjs`.
pub fn react_consumer(ws: &Workspace) -> Result<()> {
    let app = ws.root.join("presence-wasm").join("react-consumer");
    let binary = server::build(ws, "dev")?;
    let server = server::start(&binary, REACT_TEST_TIMINGS)?;
    let run_npm = |args: &[&str]| cmd::run(cmd::in_dir("npm", &app).args(args));
    run_npm(&["ci", "--no-audit", "--no-fund"])?;
    // After `ci`, which installs the registry packages from the committed lockfile: the
    // tarballs change with every build, so the lockfile cannot pin them.
    let sdk = npm::tarball(ws, npm::Package::Sdk)?;
    let react = npm::tarball(ws, npm::Package::React)?;
    cmd::run(
        cmd::in_dir("npm", &app)
            .args(["install", "--no-save", "--no-audit", "--no-fund"])
            .arg(&sdk)
            .arg(&react),
    )?;
    // `tsc -b && vite build`, as the app's authors run it; then React's development
    // build, the one where StrictMode mounts every effect twice, for the browser run.
    run_npm(&["run", "build"])?;
    cmd::run(
        cmd::in_dir(app.join("node_modules/.bin/vite"), &app)
            .args(["build", "--outDir", "dist-dev", "--logLevel", "warn"])
            .env("NODE_ENV", "development"),
    )?;
    cmd::run(
        cmd::in_dir("node", &ws.root)
            .arg(app.join("run.mjs"))
            .env("PRESENCE_TEST_WS", server.ws_url())
            .env("TMPDIR", ws.target.join("tmp")),
    )
}
