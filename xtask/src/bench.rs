//! `cargo xtask bench`: builds a release server and the load generator, runs
//! each scenario against a fresh server on loopback (among them `notify`,
//! issue 30's decisions per second), then the cluster scenarios
//! (`bench/cluster.rs`) against several, and prints a table plus one JSON line
//! per figure (also written to `target/bench/results.jsonl`). `--large` runs
//! only the large-room scenarios (`large.jsonl`), `--cluster` only the
//! cluster ones (`cluster.jsonl`), `--million` the simulated cluster of 10k
//! to 1M users (`bench/million.rs`, `million.jsonl`), `--rolling` a rolling
//! restart of a 3-node cluster (`bench/rolling.rs`, `rolling.jsonl`).

mod cluster;
mod million;
mod rolling;

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
            s("notify", NOTIFY_SERVER, &notify_args("1000", "3")),
            s("ranked", NOTIFY_SERVER, &ranked_args("500", "5")),
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
            EVERY_CHANGE,
            &["fanout", "--members", "1000", "--server-pid", "{pid}"],
        ),
        s(
            "fanout",
            EVERY_CHANGE,
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
        s("notify", NOTIFY_SERVER, &notify_args("10000", "10")),
        s("ranked", NOTIFY_SERVER, &ranked_args("2000", "50")),
        // Last: a 10,000-member room leaves gigabytes of freed memory and
        // thousands of closing sockets behind, which disturbs what follows.
        s(
            "fanout",
            EVERY_CHANGE,
            &["fanout", "--members", "10000", "--server-pid", "{pid}"],
        ),
    ]
}

/// The service key the notification benchmark asks with.
const NOTIFY_KEY: &str = "bench-service-key-0123456789";
const NOTIFY_SERVER: &[&str] = &["--service-key", NOTIFY_KEY];
/// Keep-alive HTTP connections asking, one question in flight each.
const NOTIFY_POOL: &str = "16";

/// `loadgen notify` on one node (issue 30): `users` connected users, then
/// `seconds` of `presence` questions and `seconds` of `notify` ones.
fn notify_args(users: &'static str, seconds: &'static str) -> Vec<&'static str> {
    vec![
        // Spread over source addresses: the scenarios before leave tens of
        // thousands of sockets in TIME_WAIT on 127.0.0.1.
        "--sources",
        "4",
        "notify",
        "--users",
        users,
        "--seconds",
        seconds,
        "--pool",
        NOTIFY_POOL,
        "--key",
        NOTIFY_KEY,
        "--server-pids",
        "{pid}",
    ]
}

/// `loadgen ranked` on one node (issue 31): `users` connected users among
/// 10,000 ids, `queries` ranked queries of 10 pages and `receipts?at=`
/// questions (BENCHMARKS.md, section 10).
fn ranked_args(users: &'static str, queries: &'static str) -> Vec<&'static str> {
    vec![
        "--sources",
        "4",
        "ranked",
        "--users",
        users,
        "--queries",
        queries,
        "--key",
        NOTIFY_KEY,
    ]
}

/// One line per notify run: decisions/s and latency beside the presence baseline.
fn notify_summary(figures: &[Value], label: &str) {
    let get = |name: &str| {
        figures
            .iter()
            .find(|f| f["figure"] == format!("{label}.{name}"))
            .and_then(|f| f["value"].as_f64())
            .unwrap_or(f64::NAN)
    };
    println!(
        "{label}: {:.0} decisions/s, p50 / p99 / p99.9 {:.2} / {:.2} / {:.2} ms, {} wrong, {} unanswered; \
         presence {:.0} requests/s, {:.2} / {:.2} / {:.2} ms ({:.2}x)",
        get("decisions_per_second"),
        get("p50"),
        get("p99"),
        get("p99.9"),
        get("wrong"),
        get("failed"),
        get("presence.requests_per_second"),
        get("presence.p50"),
        get("presence.p99"),
        get("presence.p99.9"),
        get("vs_presence"),
    );
}

/// Server flags that keep every room out of large mode: the fan-out figures
/// are of diffs to every member (a room of 1,000 would otherwise be large,
/// and its members would wait for diffs that never come).
const EVERY_CHANGE: &[&str] = &["--large-room-members", "1000000000"];

/// One room of M members, 1 % changing a second for `seconds`: small-room
/// figures (100 members), a room too big for its mode (a server whose
/// threshold is above it: every change to every member), and large rooms.
fn large_scenarios(quick: bool, seconds: u64) -> Vec<Scenario> {
    let runs: &[(&str, &[&'static str], usize)] = if quick {
        &[("small", &[], 100), ("large", &[], 1000)]
    } else {
        &[
            ("small", &[], 100),
            ("normal", EVERY_CHANGE, 1000),
            ("normal", EVERY_CHANGE, 5000),
            ("large", &[], 1000),
            ("large", &[], 5000),
            ("large", &[], 10_000),
        ]
    };
    runs.iter()
        .map(|(label, server, members)| Scenario {
            name: format!("large-room {label}"),
            server: server.to_vec(),
            loadgen: [
                "large",
                "--members",
                &members.to_string(),
                "--seconds",
                &seconds.to_string(),
                "--label",
                label,
                "--server-pid",
                "{pid}",
            ]
            .iter()
            .map(|a| (*a).to_owned())
            .collect(),
        })
        .collect()
}

/// Which part of the suite to run.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Only {
    All,
    Cluster,
    Large,
    /// The simulated cluster, up to this many users.
    Million(usize),
    /// A simulated node of this many users killed (after a herd of
    /// reconnects if true).
    Kill(usize, bool),
    /// This many simulated users, the change rate doubling.
    Ramp(usize),
    /// A rolling restart of every node of a 3-node cluster under real users.
    Rolling,
}

/// Runs the suite, or one part of it; `seconds` is each large-room run's.
pub fn run(ws: &Workspace, quick: bool, only: Only, seconds: u64) -> Result<()> {
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
    if let Only::Million(users) = only {
        figures.extend(million::run(&loadgen, users, seconds)?);
        return print_and_save(ws, &figures, "million.jsonl");
    }
    if let Only::Ramp(users) = only {
        figures.extend(million::ramp(&loadgen, users)?);
        return print_and_save(ws, &figures, "million-ramp.jsonl");
    }
    if only == Only::Rolling {
        setup::redis_cluster(ws)?;
        figures.extend(rolling::run(&binary, &loadgen)?);
        return print_and_save(ws, &figures, "rolling.jsonl");
    }
    if let Only::Kill(users, herd) = only {
        figures.extend(million::kill(&loadgen, users, herd)?);
        return print_and_save(ws, &figures, "million-kill.jsonl");
    }
    let single = match only {
        Only::All => {
            let mut all = scenarios(quick, max_connections);
            // Before the 10,000-member fanout, which disturbs what follows.
            let at = all.len().saturating_sub(usize::from(!quick));
            all.splice(at..at, large_scenarios(quick, seconds));
            all
        }
        Only::Large => large_scenarios(quick, seconds),
        Only::Cluster | Only::Million(_) | Only::Kill(..) | Only::Ramp(_) | Only::Rolling => {
            Vec::new()
        }
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
        let mut these = Vec::new();
        for line in out.lines() {
            match serde_json::from_str::<Value>(line) {
                Ok(v) => {
                    println!("{line}");
                    these.push(v);
                }
                // Notes such as a wrong answer's description.
                Err(_) if !line.trim().is_empty() => println!("{line}"),
                Err(_) => {}
            }
        }
        if sc.name == "notify" {
            notify_summary(&these, "notify");
        }
        figures.extend(these);
    }
    if only != Only::Large {
        figures.extend(cluster::run(ws, &binary, &loadgen, quick)?);
    }
    if only == Only::All {
        sdk_sizes(ws, &mut figures)?;
    }
    // A partial run leaves the whole suite's results in place.
    let file = match only {
        Only::All => "results.jsonl",
        Only::Cluster => "cluster.jsonl",
        Only::Large => "large.jsonl",
        Only::Million(_) => "million.jsonl",
        Only::Kill(..) => "million-kill.jsonl",
        Only::Ramp(_) => "million-ramp.jsonl",
        Only::Rolling => "rolling.jsonl",
    };
    print_and_save(ws, &figures, file)?;
    large_table(&figures);
    // A wrong notification decision is a bug, not a figure to file away.
    let wrong: Vec<String> = figures
        .iter()
        .filter(|f| {
            f["figure"]
                .as_str()
                .is_some_and(|n| n.starts_with("notify") && n.ends_with(".wrong"))
                && f["value"].as_f64().is_none_or(|v| v != 0.0)
        })
        .map(|f| format!("{} = {}", f["figure"], f["value"]))
        .collect();
    anyhow::ensure!(
        wrong.is_empty(),
        "wrong answers in the notify benchmark: {} (described above)",
        wrong.join(", ")
    );
    Ok(())
}

/// The large-room figures as one Markdown table (BENCHMARKS.md, "Large rooms").
fn large_table(figures: &[Value]) {
    let value = |name: &str| {
        figures
            .iter()
            .find(|f| f["figure"] == name)
            .and_then(|f| f["value"].as_f64())
    };
    let mut runs: Vec<(String, String)> = figures
        .iter()
        .filter_map(|f| f["figure"].as_str())
        .filter_map(|n| n.strip_suffix(".bytes_per_member_per_second"))
        .filter_map(|n| n.split_once('.'))
        .filter(|(label, _)| ["small", "normal", "large"].contains(label))
        .map(|(l, m)| (l.to_owned(), m.to_owned()))
        .collect();
    runs.dedup();
    if runs.is_empty() {
        return;
    }
    println!(
        "\n| room | members | changes/s | bytes / member / s | frames / member / s | server CPU | counts right everywhere | RSS / member after the join | failed |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for (label, members) in runs {
        let f = |what: &str| value(&format!("{label}.{members}.{what}")).unwrap_or(f64::NAN);
        println!(
            "| {label} | {members} | {:.0} | {:.0} | {:.2} | {:.1} % | {:.0} ms | {:.1} KB | {:.0} |",
            f("changes_per_second"),
            f("bytes_per_member_per_second"),
            f("frames_per_member_per_second"),
            f("server_cpu"),
            f("counts_right_everywhere"),
            f("server_rss_per_member_joined") / 1000.0,
            f("failed_members"),
        );
    }
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
