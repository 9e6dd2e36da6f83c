//! The load generator behind `cargo xtask bench`: real WebSocket clients
//! against a presence-server on loopback, one scenario per subcommand, one
//! JSON line per figure on stdout. It runs on a single-threaded runtime so
//! it leaves the other core to the server it measures.
//!
//! Every loop is bounded in count and time, and only loopback is accepted.

#![forbid(unsafe_code)]

mod churn;
mod conn;
mod fanout;
mod hold;
mod latency;
mod report;

use std::time::Duration;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// Load scenarios.
#[derive(Parser)]
struct Args {
    /// `ws://127.0.0.1:PORT/ws` of a server in dev-auth mode.
    #[arg(long)]
    url: String,
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
}

fn main() -> Result<()> {
    let args = Args::parse();
    let target = conn::Target::parse(&args.url)?;
    // Each connection is a file descriptor: raise the soft limit to the hard one.
    let (_, hard) = rlimit::Resource::NOFILE.get()?;
    rlimit::Resource::NOFILE.set(hard, hard)?;
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
                    &target,
                    sources,
                    connections,
                    server_pid,
                    Duration::from_secs(seconds),
                    Duration::from_millis(heartbeat_ms),
                )
                .await
            }
            Scenario::Fanout { members } => fanout::run(&target, sources, members).await,
            Scenario::Latency {
                rate,
                seconds,
                rooms,
                actors,
            } => {
                latency::run(
                    &target,
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
                    &target,
                    sources,
                    rate,
                    Duration::from_secs(seconds),
                    Duration::from_secs(settle),
                )
                .await
            }
        }
    })
}
