//! The load generator behind `cargo xtask bench`: real WebSocket clients
//! against a presence-server on loopback, one scenario per subcommand, one
//! JSON line per figure on stdout. It runs on a single-threaded runtime so
//! it leaves the other core to the server it measures.
//!
//! Every loop is bounded in count and time, and only loopback is accepted.

#![forbid(unsafe_code)]

mod churn;
mod cluster;
mod conn;
mod fanout;
mod hold;
mod http;
mod large;
mod latency;
mod notify;
mod probe;
mod ranked;
mod report;
mod rolling;
mod sim;

use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

/// Load scenarios.
#[derive(Parser)]
struct Args {
    /// `ws://127.0.0.1:PORT/ws` of a server in dev-auth mode (every scenario but `cluster`, and
    /// `notify` with `--urls`).
    #[arg(long)]
    url: Option<String>,
    /// Loopback source addresses to spread connections over (127.0.0.1..).
    #[arg(long, default_value_t = 1)]
    sources: usize,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Hold N idle, heartbeating connections; server RSS and CPU.
    Hold {
        /// Connections to open.
        #[arg(long)]
        connections: usize,
        /// The server's pid, to read its RSS and CPU time from /proc.
        #[arg(long)]
        server_pid: u32,
        /// Seconds to hold them after all are open.
        #[arg(long, default_value_t = 20)]
        seconds: u64,
        /// Ping interval (the server's heartbeat interval).
        #[arg(long, default_value_t = 25_000)]
        heartbeat_ms: u64,
    },
    /// One room of M members; every member changes state once.
    Fanout {
        /// Room size.
        #[arg(long)]
        members: usize,
        /// The server's pid, to report its RSS per member after the join
        /// and after the changes.
        #[arg(long)]
        server_pid: Option<u32>,
        /// What every member changes once.
        #[arg(long, value_enum, default_value = "idle")]
        change: fanout::Change,
    },
    /// One room of M members, a percentage of them changing per second: bytes and frames per
    /// member per second, server CPU, time until everyone's counts are right.
    Large {
        /// Room size.
        #[arg(long)]
        members: usize,
        /// Percent of the members that change per second.
        #[arg(long, default_value_t = 1.0)]
        rate: f64,
        /// Seconds of changes.
        #[arg(long, default_value_t = 30)]
        seconds: u64,
        /// The server's pid, to read its RSS after the join and its CPU time.
        #[arg(long)]
        server_pid: Option<u32>,
        /// Figure names start with this (e.g. `large`, or `normal` for a server whose threshold
        /// is above the room).
        #[arg(long, default_value = "large")]
        label: String,
    },
    /// Change-to-observation latency at a steady rate of changes.
    Latency {
        /// State changes per second, in total.
        #[arg(long)]
        rate: u32,
        /// Seconds to measure.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Rooms (each with its actors and one observer).
        #[arg(long, default_value_t = 100)]
        rooms: usize,
        /// Actors per room.
        #[arg(long, default_value_t = 10)]
        actors: usize,
    },
    /// Connect + disconnect churn, then count ghost users.
    Churn {
        /// New connections per second.
        #[arg(long)]
        rate: u32,
        /// Seconds of churn.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Seconds to wait after the churn for graces to run out.
        #[arg(long, default_value_t = 3)]
        settle: u64,
    },
    /// Notification decisions per second and their latency, beside presence reads: N users
    /// with devices, then `GET /v1/users/{id}/notify` over keep-alive HTTP connections.
    Notify {
        /// Users, each one WebSocket (a device).
        #[arg(long, default_value_t = 10_000)]
        users: usize,
        /// Seconds of each phase (presence, then notify).
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Keep-alive HTTP connections asking, one question in flight each, over all nodes.
        #[arg(long, default_value_t = 16)]
        pool: usize,
        /// The servers' service key.
        #[arg(long)]
        key: String,
        /// Several nodes of one cluster (`ws://127.0.0.1:PORT/ws`, comma-separated): user i on
        /// node i % n, asked about on node (i + 1) % n. Without it, `--url`.
        #[arg(long, value_delimiter = ',')]
        urls: Vec<String>,
        /// The servers' pids, to read their CPU time.
        #[arg(long, value_delimiter = ',')]
        server_pids: Vec<u32>,
        /// Redis servers (`127.0.0.1:PORT`, comma-separated) whose CPU time to sample.
        #[arg(long, value_delimiter = ',')]
        redis: Vec<std::net::SocketAddr>,
        /// Figure names start with this.
        #[arg(long, default_value = "notify")]
        label: String,
        /// The servers' `--notify-idle-ms`.
        #[arg(long, default_value_t = 120_000)]
        push_after_ms: u64,
    },
    /// Issue 31: the ranked, paged presence query (`POST /v1/presence/bulk`, `present_first`) of
    /// `ids` ids of which `users` are connected, and `receipts?at=` on a room of `users` markers
    /// (and on `--seeded-room`).
    Ranked {
        /// Connected users (also the room's readers).
        #[arg(long, default_value_t = 2_000)]
        users: usize,
        /// Ids per query (the users and unknown ids).
        #[arg(long, default_value_t = 10_000)]
        ids: usize,
        /// Page size.
        #[arg(long, default_value_t = 1_000)]
        limit: usize,
        /// Full queries (and receipts questions) to time.
        #[arg(long, default_value_t = 50)]
        queries: usize,
        /// The servers' service key.
        #[arg(long)]
        key: String,
        /// Several nodes of one cluster: users on all but the last, which is asked.
        #[arg(long, value_delimiter = ',')]
        urls: Vec<String>,
        /// Readers of the room in all: beyond `users`, short-lived sockets that connect, join,
        /// read and close.
        #[arg(long, default_value_t = 0)]
        readers: usize,
        /// A room whose markers 1..=`--seeded-markers` were written into Redis beforehand.
        #[arg(long)]
        seeded_room: Option<String>,
        #[arg(long, default_value_t = 100_000)]
        seeded_markers: u64,
        /// Figure names start with this.
        #[arg(long, default_value = "ranked")]
        label: String,
    },
    /// Several nodes of one cluster: every room's observer on another node than its actors.
    Cluster {
        /// One `ws://127.0.0.1:PORT/ws` per node, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        urls: Vec<String>,
        /// State changes per second, over all nodes.
        #[arg(long)]
        rate: u32,
        /// Seconds to measure.
        #[arg(long, default_value_t = 5)]
        seconds: u64,
        /// Rooms whose actors are on each node (the same on every node).
        #[arg(long, default_value_t = 20)]
        rooms_per_node: usize,
        /// Actors per room.
        #[arg(long, default_value_t = 10)]
        actors: usize,
        /// Milliseconds after which an unobserved change counts as lost.
        #[arg(long, default_value_t = 2000)]
        lost_after_ms: u64,
        /// Redis servers (`127.0.0.1:PORT`, comma-separated) whose CPU time to sample.
        #[arg(long, value_delimiter = ',')]
        redis: Vec<std::net::SocketAddr>,
        /// Figure names start with this.
        #[arg(long, default_value = "cluster")]
        label: String,
        /// Also read the cluster's event stream (`GET /v1/events` on the first node) with
        /// this service key, and time each change to it too.
        #[arg(long)]
        feed_key: Option<String>,
    },
    /// Users on every node of a cluster who come back with their resume token whenever their
    /// node closes their socket; observers on every node count the offline diffs about the
    /// others (`cargo xtask bench --rolling` restarts the nodes meanwhile).
    Rolling {
        /// One `ws://127.0.0.1:PORT/ws` per node, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        urls: Vec<String>,
        /// Users on each node (at most 5,000).
        #[arg(long, default_value_t = 1_000)]
        users_per_node: usize,
        /// Rooms (at most 1,000), each with users of every node and an observer on each.
        #[arg(long, default_value_t = 50)]
        rooms: usize,
        /// Seconds the users hold on (at most 600).
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
    /// One node of a simulated cluster: a real node in this process over the Redis Cluster,
    /// carrying `--users` simulated users connected in-process, and real WebSocket observers on
    /// the next node (`--next`) timing probe changes (issue 32; `cargo xtask bench --million`).
    Sim {
        /// Simulated users on this node.
        #[arg(long)]
        users: usize,
        /// This node's id (user and room names start with it).
        #[arg(long)]
        node_id: String,
        /// Redis Cluster seeds, `127.0.0.1:PORT`, comma-separated.
        #[arg(long, value_delimiter = ',', required = true)]
        redis_cluster: Vec<String>,
        /// Key prefix shared by the simulated cluster's nodes.
        #[arg(long, default_value = "sim")]
        redis_prefix: String,
        /// Where this node serves WebSockets and HTTP (loopback).
        #[arg(long)]
        bind: std::net::SocketAddr,
        /// The next node's `ws://127.0.0.1:PORT/ws`, for the observers.
        #[arg(long)]
        next: Option<String>,
        /// Members per room.
        #[arg(long, default_value_t = 20)]
        room_size: usize,
        /// Observed rooms (one real WebSocket each, on the next node).
        #[arg(long, default_value_t = 50)]
        observers: usize,
        /// Probe changes per second, over the observed rooms.
        #[arg(long, default_value_t = 20.0)]
        probe_rate: f64,
        /// Seconds to wait once full, for the other nodes to fill.
        #[arg(long, default_value_t = 5)]
        settle: u64,
        /// Start measuring once this file exists (the runner makes it when every node is full).
        #[arg(long)]
        go_file: Option<std::path::PathBuf>,
        /// Seconds to measure.
        #[arg(long, default_value_t = 30)]
        seconds: u64,
        /// Seconds to stay up after measuring.
        #[arg(long, default_value_t = 0)]
        hold: u64,
        /// Idle/active switches per user per hour.
        #[arg(long, default_value_t = 12.0)]
        idle_per_hour: f64,
        /// Status changes per user per hour.
        #[arg(long, default_value_t = 0.5)]
        status_per_hour: f64,
        /// Typing bursts (one per message sent) per user per hour.
        #[arg(long, default_value_t = 6.0)]
        typing_per_hour: f64,
        /// Reloads (close and reopen within the grace) per user per hour.
        #[arg(long, default_value_t = 2.0)]
        reloads_per_hour: f64,
        /// Departures (offline for `--away-seconds`, then back) per user per hour.
        #[arg(long, default_value_t = 1.0)]
        leaves_per_hour: f64,
        #[arg(long, default_value_t = 20)]
        away_seconds: u64,
        /// Seconds into the window at which every user reloads at once (a thundering herd of
        /// reconnects, as after a network outage); 0: none.
        #[arg(long, default_value_t = 0)]
        herd_after: u64,
        /// The window in this many equal steps, the rates multiplied by `--ramp-factor` at each
        /// (figures per step: changes per second, probe p99).
        #[arg(long, default_value_t = 1)]
        ramp_steps: usize,
        #[arg(long, default_value_t = 2.0)]
        ramp_factor: f64,
    },
}

fn main() -> Result<()> {
    let args = Args::parse();
    let target = args.url.as_deref().map(conn::Target::parse).transpose()?;
    let target = || {
        target
            .as_ref()
            .context("--url is required for this scenario")
    };
    // Each connection is a file descriptor: raise the soft limit to the hard one.
    let (_, hard) = rlimit::Resource::NOFILE.get()?;
    rlimit::Resource::NOFILE.set(hard, hard)?;
    // A node of its own: its own (multi-threaded) runtime.
    if let Scenario::Sim {
        users,
        node_id,
        redis_cluster,
        redis_prefix,
        bind,
        next,
        room_size,
        observers,
        probe_rate,
        settle,
        go_file,
        seconds,
        hold,
        idle_per_hour,
        status_per_hour,
        typing_per_hour,
        reloads_per_hour,
        leaves_per_hour,
        away_seconds,
        herd_after,
        ramp_steps,
        ramp_factor,
    } = args.scenario
    {
        anyhow::ensure!(room_size >= 2, "--room-size is at least 2");
        anyhow::ensure!(
            (1..=12).contains(&ramp_steps) && (1.0..=4.0).contains(&ramp_factor),
            "--ramp-steps is 1 to 12, --ramp-factor 1 to 4"
        );
        return sim::run(sim::Plan {
            users,
            node_id,
            redis_cluster,
            prefix: redis_prefix,
            bind,
            next: next.as_deref().map(conn::Target::parse).transpose()?,
            room_size,
            observers,
            probe_rate,
            settle,
            go: go_file,
            seconds,
            hold,
            mix: sim::Mix {
                idle: idle_per_hour,
                status: status_per_hour,
                typing: typing_per_hour,
                reload: reloads_per_hour,
                leave: leaves_per_hour,
            },
            away: Duration::from_secs(away_seconds),
            herd_after: (herd_after > 0).then(|| Duration::from_secs(herd_after)),
            ramp_steps,
            ramp_factor,
        });
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let sources = args.sources;
    rt.block_on(async move {
        match args.scenario {
            Scenario::Hold {
                connections,
                server_pid,
                seconds,
                heartbeat_ms,
            } => {
                hold::run(
                    target()?,
                    sources,
                    connections,
                    server_pid,
                    Duration::from_secs(seconds),
                    Duration::from_millis(heartbeat_ms),
                )
                .await
            }
            Scenario::Fanout {
                members,
                server_pid,
                change,
            } => fanout::run(target()?, sources, members, server_pid, change).await,
            Scenario::Large {
                members,
                rate,
                seconds,
                server_pid,
                label,
            } => {
                let plan = large::Plan {
                    members,
                    rate,
                    seconds: Duration::from_secs(seconds),
                    server: server_pid,
                    label,
                };
                large::run(target()?, sources, plan).await
            }
            Scenario::Latency {
                rate,
                seconds,
                rooms,
                actors,
            } => {
                latency::run(
                    target()?,
                    sources,
                    rate,
                    Duration::from_secs(seconds),
                    rooms,
                    actors,
                )
                .await
            }
            Scenario::Churn {
                rate,
                seconds,
                settle,
            } => {
                churn::run(
                    target()?,
                    sources,
                    rate,
                    Duration::from_secs(seconds),
                    Duration::from_secs(settle),
                )
                .await
            }
            Scenario::Notify {
                users,
                seconds,
                pool,
                key,
                urls,
                server_pids,
                redis,
                label,
                push_after_ms,
            } => {
                let nodes = if urls.is_empty() {
                    vec![target()?.clone()]
                } else {
                    urls.iter()
                        .map(|u| conn::Target::parse(u))
                        .collect::<Result<_>>()?
                };
                notify::run(notify::Plan {
                    nodes,
                    sources,
                    users,
                    seconds: Duration::from_secs(seconds),
                    pool,
                    key,
                    server_pids,
                    redis,
                    label,
                    push_after: Duration::from_millis(push_after_ms),
                })
                .await
            }
            Scenario::Ranked {
                users,
                ids,
                limit,
                queries,
                key,
                urls,
                seeded_room,
                seeded_markers,
                readers,
                label,
            } => {
                let nodes = if urls.is_empty() {
                    vec![target()?.clone()]
                } else {
                    urls.iter()
                        .map(|u| conn::Target::parse(u))
                        .collect::<Result<_>>()?
                };
                ranked::run(ranked::Plan {
                    nodes,
                    sources,
                    users,
                    ids,
                    limit,
                    queries,
                    key,
                    label,
                    seeded: seeded_room.map(|r| (r, seeded_markers)),
                    readers: readers.max(users),
                })
                .await
            }
            Scenario::Rolling {
                urls,
                users_per_node,
                rooms,
                seconds,
            } => rolling::run(&urls, users_per_node, rooms, seconds, sources).await,
            Scenario::Cluster {
                urls,
                rate,
                seconds,
                rooms_per_node,
                actors,
                lost_after_ms,
                redis,
                label,
                feed_key,
            } => {
                cluster::run(cluster::Plan {
                    feed_key,
                    nodes: urls
                        .iter()
                        .map(|u| conn::Target::parse(u))
                        .collect::<Result<_>>()?,
                    rate,
                    seconds: Duration::from_secs(seconds),
                    rooms_per_node,
                    actors,
                    lost_after: Duration::from_millis(lost_after_ms),
                    redis,
                    label,
                })
                .await
            }
            Scenario::Sim { .. } => anyhow::bail!("sim runs on a runtime of its own"),
        }
    })
}
