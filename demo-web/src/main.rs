//! The `demo-web` binary: flags and tracing; the library does the rest.

#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use demo_web::Demo;
use presence_server::{DataDir, PresenceServer, ServerConfig};
use tracing_subscriber::EnvFilter;

/// The presence-rs demo: a chat page with live presence, typing and read receipts.
///
/// Timings default to demo-friendly values (idle after 15 s); the e2e tests pass shorter ones.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// Address to listen on (port 0 picks a free port; the URL is printed).
    #[arg(long, default_value = "127.0.0.1:8080")]
    bind: SocketAddr,
    /// Input-free time after which pages report idle, in ms (a page may override it with `?idle=`).
    #[arg(long, default_value_t = 15_000)]
    idle_after_ms: u64,
    /// Grace after a dropped connection before others see the user offline, in ms.
    #[arg(long, default_value_t = 5_000)]
    offline_grace_ms: u64,
    /// Grace after a page closes on purpose (long enough for a reload), in ms.
    #[arg(long, default_value_t = 1_500)]
    leave_grace_ms: u64,
    /// How often pages ping, in ms.
    #[arg(long, default_value_t = 25_000)]
    heartbeat_interval_ms: u64,
    /// Silence after which a connection counts as dropped, in ms.
    #[arg(long, default_value_t = 70_000)]
    heartbeat_timeout_ms: u64,
    /// Typing indicator lifetime without a refresh, in ms.
    #[arg(long, default_value_t = 6_000)]
    typing_ttl_ms: u64,
    /// Window in which presence changes are coalesced per room, in ms (0 = none).
    #[arg(long, default_value_t = 25)]
    batch_window_ms: u64,
    /// Online members at which a room is large: pages show the server's count ("1,234 online")
    /// and some members (try 3 with a few windows).
    #[arg(long, default_value_t = 1_000)]
    large_room_members: usize,
    /// The npm package folder built by `cargo xtask npm`.
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/../presence-wasm/pkg"))]
    pkg_dir: PathBuf,
    /// Keep statuses, last-seen times and read markers here across restarts (`cargo xtask demo`
    /// uses `target/demo-data`). Default: in memory.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Log filter, RUST_LOG syntax.
    #[arg(long, env = "RUST_LOG", default_value = "info")]
    log: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_new(&args.log).context("--log")?)
        .with_writer(std::io::stderr)
        .init();

    if !args.pkg_dir.join("presence_wasm.js").is_file() {
        bail!(
            "no npm package in {}: run `cargo xtask demo` (or `cargo xtask npm` first)",
            args.pkg_dir.display()
        );
    }
    let mut config = ServerConfig::default();
    let ms = Duration::from_millis;
    config.timing.idle_after = ms(args.idle_after_ms);
    config.timing.offline_grace = ms(args.offline_grace_ms);
    config.timing.leave_grace = ms(args.leave_grace_ms);
    config.timing.heartbeat_interval = ms(args.heartbeat_interval_ms);
    config.timing.heartbeat_timeout = ms(args.heartbeat_timeout_ms);
    config.timing.typing_ttl = ms(args.typing_ttl_ms);
    config.batch_window = ms(args.batch_window_ms);
    config.large_room_members = args.large_room_members;

    tracing::warn!("development auth: the token IS the user name; anyone can be anyone (a demo)");
    let mut builder = PresenceServer::builder()
        .config(config)
        .auth(demo_web::api::DemoAuth);
    if let Some(dir) = &args.data_dir {
        builder = builder.data_dir(DataDir::open(dir).context("--data-dir")?);
    }
    let presence = builder.build().context("presence server")?;
    let demo = Demo::new(presence, args.pkg_dir);
    let listener = tokio::net::TcpListener::bind(args.bind)
        .await
        .with_context(|| format!("binding {}", args.bind))?;
    let addr = listener.local_addr()?;
    // The e2e tests read this line for the port.
    println!("demo-web: open http://{addr}/ in two windows and sign in with two names");
    demo.serve(listener, presence_server::shutdown_signal())
        .await?;
    Ok(())
}
