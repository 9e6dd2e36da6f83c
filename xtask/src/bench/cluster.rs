//! The cluster part of `cargo xtask bench`: several `presence-server`
//! processes over Redis, driven by `loadgen cluster`.
//!
//! - Scaling: 2, 4 and 8 nodes over the 3-master Redis Cluster, each node with the
//!   same rooms, actors and change rate, so a node's inbound bus traffic must stay
//!   flat while the cluster's throughput grows with N.
//! - Ramp: 4 nodes over one Redis and over the Cluster, rising total rates until
//!   p99 passes 100 ms, a change is lost or under 99 % of the offered rate is
//!   delivered; the last passing rate is the figure. Over the Cluster a reader
//!   of the event stream (`GET /v1/events` on the first node) times every
//!   change too, and a step must hold for it as well.
//! - Notify (issue 30): 3 nodes over the Cluster, 10,000 users spread over
//!   them, `GET /v1/users/{id}/notify` asked of a node that does not hold the
//!   user (a bus round trip each), beside `presence` asked the same way.
//! - Stream cost: 4 nodes over the Cluster at 2,000 changes/s without the
//!   event stream (`--event-shards 0`) and with it and its reader, back to
//!   back: Redis CPU per change of each.
//!
//! Every run gets fresh processes and a fresh key prefix, so none sees another's
//! records; its keys are deleted after it (killed nodes leave their records).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, Result};
use serde_json::{Value, json};

use crate::server::{self, Server};
use crate::workspace::Workspace;
use crate::{cmd, setup};

/// Rooms whose actors live on each node, and actors per room: 220 sockets per
/// node, well inside the 20,000 open files of every process here.
const ROOMS_PER_NODE: u32 = 20;
const ACTORS: u32 = 10;
/// Changes per second each node's actors make in the scaling runs.
const RATE_PER_NODE: u32 = 200;
/// The ramp's total rates, and the p99 it must stay under.
const RAMP: [u32; 7] = [500, 1000, 2000, 4000, 8000, 12_000, 16_000];
const P99_LIMIT_MS: f64 = 100.0;
const STANDALONE: &str = "127.0.0.1:6379";
/// The nodes' service key, for the event stream's reader.
const SERVICE_KEY: &str = "bench-service-key-0123456789";
/// The stream cost pair's rate.
const STREAM_COST_RATE: u32 = 2_000;

/// Where the nodes keep their records.
#[derive(Clone, Copy)]
pub(super) enum Store {
    /// The standalone Redis on 6379.
    One,
    /// The 3-master Redis Cluster on 7101-7103.
    Cluster,
}

impl Store {
    fn name(self) -> &'static str {
        match self {
            Store::One => "redis",
            Store::Cluster => "redis_cluster",
        }
    }

    /// Server flags for it.
    fn flags(self) -> Vec<String> {
        match self {
            Store::One => vec!["--redis-url".into(), format!("redis://{STANDALONE}")],
            Store::Cluster => vec!["--redis-cluster".into(), setup::redis_cluster_nodes()],
        }
    }

    /// The ports of its masters.
    pub(super) fn ports(self) -> Vec<String> {
        self.masters()
            .split(',')
            .filter_map(|a| a.rsplit(':').next())
            .map(str::to_owned)
            .collect()
    }

    /// The Redis servers whose CPU time counts.
    fn masters(self) -> String {
        match self {
            Store::One => STANDALONE.to_owned(),
            Store::Cluster => setup::redis_cluster_nodes(),
        }
    }
}

/// One run's outcome: the figures `loadgen cluster` printed.
struct Run(Vec<Value>);

impl Run {
    fn get(&self, suffix: &str) -> f64 {
        self.0
            .iter()
            .find(|f| f["figure"].as_str().is_some_and(|n| n.ends_with(suffix)))
            .and_then(|f| f["value"].as_f64())
            .unwrap_or(f64::NAN)
    }
}

/// Runs the scaling series and (unless `quick`) the ramp; returns every figure.
pub fn run(ws: &Workspace, binary: &Path, loadgen: &Path, quick: bool) -> Result<Vec<Value>> {
    setup::redis()?;
    setup::redis_cluster(ws)?;
    let mut figures = Vec::new();
    let (counts, seconds): (&[usize], u64) = if quick {
        (&[2, 4], 3)
    } else {
        (&[2, 4, 8], 10)
    };
    let mut scaling = Vec::new();
    for &n in counts {
        let label = format!("cluster.n{n}");
        let run = one(
            binary,
            loadgen,
            Load {
                store: Store::Cluster,
                n,
                rate: RATE_PER_NODE * n as u32,
                seconds,
                stream: Stream::Read,
            },
            &label,
        )?;
        scaling.push((n, run));
    }
    println!(
        "\ncluster scaling: {RATE_PER_NODE} changes/s, {ROOMS_PER_NODE} rooms x {ACTORS} actors per node"
    );
    println!(
        "{:>5} {:>10} {:>10} {:>8} {:>8} {:>8} {:>6} {:>14} {:>16} {:>16} {:>9}",
        "nodes",
        "offered/s",
        "deliv./s",
        "p50 ms",
        "p99 ms",
        "max ms",
        "lost",
        "redis µs/chg",
        "node B/s mean",
        "node B/s max",
        "machine%"
    );
    for (n, r) in &scaling {
        println!(
            "{n:>5} {:>10.0} {:>10.0} {:>8.1} {:>8.1} {:>8.1} {:>6} {:>14.1} {:>16.0} {:>16.0} {:>9.0}  stream p50/p99 {:.1}/{:.1} ms",
            r.get(".offered_rate"),
            r.get(".delivered_rate"),
            r.get(".p50"),
            r.get(".p99"),
            r.get(".max"),
            r.get(".lost"),
            r.get(".redis_cpu_per_change"),
            r.get(".node_bytes_in.mean"),
            r.get(".node_bytes_in.max"),
            r.get(".host_cpu"),
            r.get(".stream_p50"),
            r.get(".stream_p99"),
        );
    }
    figures.extend(scaling.into_iter().flat_map(|(_, r)| r.0));
    figures.extend(notify(binary, loadgen, quick)?);
    if quick {
        return Ok(figures);
    }
    figures.extend(stream_cost(binary, loadgen)?);
    for store in [Store::One, Store::Cluster] {
        let mut passed = 0;
        for rate in RAMP {
            let label = format!("ramp.{}.r{rate}", store.name());
            let stream = match store {
                Store::One => Stream::On,
                Store::Cluster => Stream::Read,
            };
            let load = Load {
                store,
                n: 4,
                rate,
                seconds: 5,
                stream,
            };
            let run = one(binary, loadgen, load, &label)?;
            let verdict = verdict(&run, rate, stream == Stream::Read);
            println!(
                "ramp {} at {rate}/s: delivered {:.0}/s, p50 {:.1} ms, p99 {:.1} ms, stream p50 {:.1} ms, \
                 p99 {:.1} ms, machine {:.0} % busy: {}",
                store.name(),
                run.get(".delivered_rate"),
                run.get(".p50"),
                run.get(".p99"),
                run.get(".stream_p50"),
                run.get(".stream_p99"),
                run.get(".host_cpu"),
                verdict.as_deref().unwrap_or("sustained"),
            );
            let ok = verdict.is_none();
            figures.extend(run.0);
            if !ok {
                break;
            }
            passed = rate;
        }
        figures.push(json!({
            "figure": format!("ramp.{}.max_rate", store.name()),
            "value": passed,
            "unit": format!("changes/s with 4 nodes, p99 <= {P99_LIMIT_MS} ms, none lost, >= 99 % delivered"),
        }));
    }
    Ok(figures)
}

/// The Redis CPU the event stream costs: the same load without it and with
/// it (and its reader), back to back.
fn stream_cost(binary: &Path, loadgen: &Path) -> Result<Vec<Value>> {
    let mut figures = Vec::new();
    let mut per_change = Vec::new();
    for (stream, name) in [(Stream::Off, "off"), (Stream::Read, "on")] {
        let load = Load {
            store: Store::Cluster,
            n: 4,
            rate: STREAM_COST_RATE,
            seconds: 10,
            stream,
        };
        let run = one(binary, loadgen, load, &format!("stream_cost.{name}"))?;
        per_change.push(run.get(".redis_cpu_per_change"));
        figures.extend(run.0);
    }
    println!(
        "\nevent stream cost at {STREAM_COST_RATE} changes/s, 4 nodes over the Cluster: Redis CPU per \
         change {:.1} µs without the stream, {:.1} µs with it and a reader ({:.2}x)",
        per_change[0],
        per_change[1],
        per_change[1] / per_change[0]
    );
    figures.push(json!({
        "figure": "stream_cost.ratio",
        "value": per_change[1] / per_change[0],
        "unit": "Redis CPU per change with the event stream and a reader / without",
    }));
    Ok(figures)
}

/// Why a ramp step was not sustained (`None`: it was).
fn verdict(run: &Run, rate: u32, stream: bool) -> Option<String> {
    let (p99, lost, skipped) = (run.get(".p99"), run.get(".lost"), run.get(".skipped"));
    // NaN (nothing observed) fails too.
    if p99.is_nan() || p99 > P99_LIMIT_MS {
        return Some(format!("p99 over {P99_LIMIT_MS} ms"));
    }
    if lost > 0.0 {
        return Some(format!("{lost} changes lost"));
    }
    if stream {
        let (p99, late) = (run.get(".stream_p99"), run.get(".stream_late"));
        if p99.is_nan() || p99 > P99_LIMIT_MS {
            return Some(format!("stream p99 over {P99_LIMIT_MS} ms"));
        }
        if late > 0.0 {
            return Some(format!("{late} changes late in the stream"));
        }
    }
    // Skipped: every actor was still waiting for its last flip (or its socket
    // was backed up), so the offered rate was not reached.
    if run.get(".delivered_rate") < 0.99 * f64::from(rate) {
        return Some(format!("under 99 % delivered ({skipped} changes skipped)"));
    }
    None
}

/// Whether the nodes keep the event stream, and whether it is read.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Stream {
    /// `--event-shards 0`.
    Off,
    /// The default stream, nobody reading it.
    On,
    /// The default stream, read from the first node and timed.
    Read,
}

/// One run's load.
struct Load {
    store: Store,
    n: usize,
    rate: u32,
    seconds: u64,
    stream: Stream,
}

/// N fresh nodes over `store` with a prefix of their own, one `loadgen cluster` run.
fn one(binary: &Path, loadgen: &Path, load: Load, label: &str) -> Result<Run> {
    let Load {
        store,
        n,
        rate,
        seconds,
        stream,
    } = load;
    println!(
        "\n== {label}: {n} nodes over {}, {rate} changes/s",
        store.name()
    );
    // Let the previous run's sockets close first.
    std::thread::sleep(Duration::from_secs(2));
    let prefix = prefix_of(label);
    let extra: &[&str] = match stream {
        Stream::Off => &["--event-shards", "0"],
        Stream::On | Stream::Read => &[],
    };
    let nodes = start_nodes(binary, store, n, &prefix, extra)?;
    let urls: Vec<String> = nodes.iter().map(Server::ws_url).collect();
    let mut command = Command::new(loadgen);
    command.args([
        "cluster",
        "--urls",
        &urls.join(","),
        "--rate",
        &rate.to_string(),
        "--seconds",
        &seconds.to_string(),
        "--rooms-per-node",
        &ROOMS_PER_NODE.to_string(),
        "--actors",
        &ACTORS.to_string(),
        "--redis",
        &store.masters(),
        "--label",
        label,
    ]);
    if stream == Stream::Read {
        command.args(["--feed-key", SERVICE_KEY]);
    }
    let out = cmd::output(&mut command).with_context(|| format!("loadgen cluster ({label})"))?;
    drop(nodes);
    forget(store, &prefix)?;
    let figures: Vec<Value> = out
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .inspect(|v: &Value| println!("{v}"))
        .collect();
    Ok(Run(figures))
}

/// A run's own key prefix.
fn prefix_of(label: &str) -> String {
    format!("bench-{}-{}", std::process::id(), label.replace('.', "-"))
}

/// N fresh nodes over `store` under `prefix`, each with the service key.
fn start_nodes(
    binary: &Path,
    store: Store,
    n: usize,
    prefix: &str,
    extra: &[&str],
) -> Result<Vec<Server>> {
    (0..n)
        .map(|i| {
            let mut flags = store.flags();
            flags.extend([
                "--redis-prefix".into(),
                prefix.to_owned(),
                "--node-id".into(),
                format!("n{i}"),
                "--service-key".into(),
                SERVICE_KEY.into(),
            ]);
            flags.extend(extra.iter().map(|f| (*f).to_owned()));
            let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
            server::start(binary, &flags)
        })
        .collect()
}

/// Nodes in the notification benchmark over the Cluster (issue 30).
const NOTIFY_NODES: usize = 3;

/// `loadgen notify` over 3 nodes of the Redis Cluster: users spread over the
/// nodes, each asked about on a node that does not hold them, so every
/// decision waits for the user's records and a bus round trip to their node;
/// the same load asking `presence` (the records only) first, as the baseline.
fn notify(binary: &Path, loadgen: &Path, quick: bool) -> Result<Vec<Value>> {
    let store = Store::Cluster;
    let label = "notify_cluster";
    let (users, seconds) = if quick { (1_000, 3) } else { (10_000, 10) };
    println!(
        "\n== {label}: {NOTIFY_NODES} nodes over {}, {users} users, notify on another node",
        store.name()
    );
    std::thread::sleep(Duration::from_secs(2));
    let prefix = prefix_of(label);
    let nodes = start_nodes(binary, store, NOTIFY_NODES, &prefix, &[])?;
    let urls: Vec<String> = nodes.iter().map(Server::ws_url).collect();
    let pids: Vec<String> = nodes.iter().map(|s| s.pid().to_string()).collect();
    let out = cmd::output(Command::new(loadgen).args([
        // Spread over source addresses: the runs before leave sockets in TIME_WAIT.
        "--sources",
        "4",
        "notify",
        "--urls",
        &urls.join(","),
        "--users",
        &users.to_string(),
        "--seconds",
        &seconds.to_string(),
        "--pool",
        super::NOTIFY_POOL,
        "--key",
        SERVICE_KEY,
        "--server-pids",
        &pids.join(","),
        "--redis",
        &store.masters(),
        "--label",
        label,
    ]))
    .with_context(|| format!("loadgen notify ({label})"))?;
    drop(nodes);
    forget(store, &prefix)?;
    let mut figures = Vec::new();
    for line in out.lines() {
        match serde_json::from_str::<Value>(line) {
            Ok(v) => {
                println!("{line}");
                figures.push(v);
            }
            Err(_) => println!("{line}"),
        }
    }
    super::notify_summary(&figures, label);
    Ok(figures)
}

/// Deletes every key under `prefix` from each master: `redis-cli --scan` lists
/// a master's own keys, and one `UNLINK` per key (piped) never crosses slots.
pub(super) fn forget(store: Store, prefix: &str) -> Result<()> {
    use std::io::Write;
    let mut deleted = 0;
    for port in store.ports() {
        let cli = || {
            let mut c = Command::new("redis-cli");
            c.args(["-h", "127.0.0.1", "-p", &port]);
            c
        };
        let keys = cmd::output(cli().args(["--scan", "--pattern", &format!("{prefix}:*")]))?;
        let keys: Vec<&str> = keys.lines().filter(|k| !k.is_empty()).collect();
        if keys.is_empty() {
            continue;
        }
        let mut pipe = cli()
            .arg("--pipe")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .spawn()
            .context("redis-cli --pipe")?;
        let mut stdin = pipe.stdin.take().context("redis-cli --pipe stdin")?;
        for key in &keys {
            write!(stdin, "*2\r\n$6\r\nUNLINK\r\n${}\r\n{key}\r\n", key.len())?;
        }
        drop(stdin);
        anyhow::ensure!(
            pipe.wait()?.success(),
            "redis-cli --pipe on port {port} failed"
        );
        deleted += keys.len();
    }
    println!("deleted {deleted} keys under {prefix}");
    Ok(())
}
