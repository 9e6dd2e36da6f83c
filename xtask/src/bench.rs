//! `cargo xtask bench`: builds a release server and the load generator, runs
//! each scenario against a fresh server on loopback, then the cluster scenarios
//! (`bench/cluster.rs`) against several, and prints a table plus one JSON line
//! per figure (also written to `target/bench/results.jsonl`).

mod cluster;

use std::fs;
use std::process::Command;

use anyhow::{Context, Result};
use serde_json::{Value, json};

use crate::workspace::Workspace;
use crate::{cmd, npm, server, setup};

/// One scenario: its loadgen arguments and the server flags it needs.
struct Scenario {
    name: String,
    server: Vec<&'static str>,
    loadgen: Vec<String>,
}

fn scenarios(quick: bool, max_connections: usize) -> Vec<Scenario> {
    let s = |name: &str, server: &[&'static str], loadgen: &[&str]| Scenario {
        name: name.to_owned(),
        server: server.to_vec(),
        loadgen: loadgen.iter().map(|a| (*a).to_owned()).collect(),
    };
    // Churn needs graces that end within the loadgen's settle time.
    let short_grace: &[&'static str] = &["--offline-grace-ms", "1000", "--leave-grace-ms", "300"];
    if quick {
        return vec![
            s(
                "hold",
                &[],
                &[
                    "hold",
                    "--connections",
                    "2000",
                    "--seconds",
                    "3",
                    "--server-pid",
                    "{pid}",
                ],
            ),
            s(
                "fanout",
                &[],
                &["fanout", "--members", "100", "--server-pid", "{pid}"],
            ),
            s(
                "latency",
                &[],
                &[
                    "latency",
                    "--rate",
                    "1000",
                    "--seconds",
                    "3",
                    "--rooms",
                    "20",
                ],
            ),
            s(
                "churn",
                short_grace,
                &["churn", "--rate", "100", "--seconds", "3"],
            ),
        ];
    }
    let held = max_connections.to_string();
    vec![
        s(
            "hold",
            &[],
            &[
                "--sources",
                "8",
                "hold",
                "--connections",
                &held,
                "--seconds",
                "30",
                "--server-pid",
                "{pid}",
            ],
        ),
        s(
            "fanout",
            &[],
            &["fanout", "--members", "100", "--server-pid", "{pid}"],
        ),
        s(
            "fanout",
            &[],
            &["fanout", "--members", "1000", "--server-pid", "{pid}"],
        ),
        s(
            "fanout",
            &[],
            &["fanout", "--members", "5000", "--server-pid", "{pid}"],
        ),
        s(
            "latency",
            &[],
            &["latency", "--rate", "1000", "--seconds", "10"],
        ),
        s(
            "latency",
            &[],
            &["latency", "--rate", "10000", "--seconds", "10"],
        ),
        s(
            "churn",
            short_grace,
            &["churn", "--rate", "1000", "--seconds", "10"],
        ),
        // Last: a 10,000-member room leaves gigabytes of freed memory and
        // thousands of closing sockets behind, which disturbs what follows.
        s(
            "fanout",
            &[],
            &["fanout", "--members", "10000", "--server-pid", "{pid}"],
        ),
    ]
}

/// Runs the suite (`cluster_only`: just the cluster scenarios).
pub fn run(ws: &Workspace, quick: bool, cluster_only: bool) -> Result<()> {
    let binary = server::build(ws, "release")?;
    cmd::run(cmd::cargo().current_dir(&ws.root).args([
        "build",
        "--release",
        "--package",
        "presence-tests",
        "--bin",
        "loadgen",
    ]))?;
    let loadgen = ws.target.join("release").join("loadgen");
    // Connections are file descriptors: raise the limit for the server we spawn.
    let (_, hard) = rlimit::Resource::NOFILE.get()?;
    rlimit::Resource::NOFILE.set(hard, hard)?;
    // Both the server and the load generator hold one descriptor per
    // connection; neither may go past the hard limit (raising it needs
    // CAP_SYS_RESOURCE). Aim for 100k, settle for what the box allows.
    let max_connections = 100_000.min(
        usize::try_from(hard)
            .unwrap_or(usize::MAX)
            .saturating_sub(500),
    );
    if max_connections < 100_000 {
        println!(
            "note: RLIMIT_NOFILE hard limit is {hard}: holding {max_connections} connections, not 100,000"
        );
    }
    let mut figures: Vec<Value> = Vec::new();
    let single = if cluster_only {
        Vec::new()
    } else {
        scenarios(quick, max_connections)
    };
    for sc in single {
        println!("\n== {} {}", sc.name, sc.loadgen.join(" "));
        // Let the previous server's sockets and memory go first.
        std::thread::sleep(std::time::Duration::from_secs(3));
        let server = server::start(&binary, &sc.server)?;
        let pid = server.pid().to_string();
        let mut args = vec!["--url".to_owned(), server.ws_url()];
        args.extend(
            sc.loadgen
                .iter()
                .map(|a| if a == "{pid}" { pid.clone() } else { a.clone() }),
        );
        let out = cmd::output(Command::new(&loadgen).args(&args))
            .with_context(|| format!("scenario {}", sc.name))?;
        for line in out.lines() {
            if let Ok(v) = serde_json::from_str::<Value>(line) {
                println!("{line}");
                figures.push(v);
            }
        }
    }
    figures.extend(cluster::run(ws, &binary, &loadgen, quick)?);
    if !cluster_only {
        sdk_sizes(ws, &mut figures)?;
    }
    // A cluster-only run leaves the whole suite's results in place.
    let file = if cluster_only {
        "cluster.jsonl"
    } else {
        "results.jsonl"
    };
    print_and_save(ws, &figures, file)
}

/// The browser SDK's raw and gzipped sizes.
fn sdk_sizes(ws: &Workspace, figures: &mut Vec<Value>) -> Result<()> {
    setup::package_tools(ws)?;
    npm::build(ws, npm::Pack::No)?;
    let pkg = ws.root.join("presence-wasm").join("pkg");
    for (file, name) in [
        ("presence_wasm_bg.wasm", "sdk.wasm"),
        ("presence_wasm.js", "sdk.js"),
    ] {
        let (raw, gz) = npm::sizes(&pkg.join(file))?;
        figures.push(json!({"figure": format!("{name}.raw"), "value": raw, "unit": "bytes"}));
        figures.push(json!({"figure": format!("{name}.gzip"), "value": gz, "unit": "bytes"}));
    }
    Ok(())
}

/// The table of every figure, and `target/bench/<file>`.
fn print_and_save(ws: &Workspace, figures: &[Value], file: &str) -> Result<()> {
    println!("\n{:<44} {:>14}  unit", "figure", "value");
    for f in figures {
        let value = f["value"].as_f64().unwrap_or(f64::NAN);
        println!(
            "{:<44} {:>14.1}  {}",
            f["figure"].as_str().unwrap_or("?"),
            value,
            f["unit"].as_str().unwrap_or("")
        );
    }
    let dir = ws.target.join("bench");
    fs::create_dir_all(&dir)?;
    let lines: Vec<String> = figures.iter().map(Value::to_string).collect();
    fs::write(dir.join(file), lines.join("\n") + "\n")?;
    println!("\nwritten to {}", dir.join(file).display());
    Ok(())
}
