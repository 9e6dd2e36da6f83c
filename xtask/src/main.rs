//! `cargo xtask`: the project's commands, so a fresh clone needs only two of them.
//!
//! - `cargo xtask test`: installs what the tests need, then runs every check and test.
//! - `cargo xtask demo`: builds the browser package and runs the demo.
//! - `cargo xtask npm`: builds the npm packages (the browser SDK, its React bindings, the Node
//!   server SDK) and checks the browser SDK's size budget.
//! - `cargo xtask size`: builds the packages and prints their sizes (the SDK's against the budget).
//! - `cargo xtask package`: `cargo package` of the crates meant for crates.io, checked.
//! - `cargo xtask bench [--quick] [--cluster | --large [--seconds N] | --million … | --rolling]`:
//!   the benchmark suite (a table, and one JSON line per figure); `--cluster` runs only the
//!   multi-node part, `--large` only the large-room one, `--rolling` only a rolling restart.
//!
//! Layout: `cmd.rs` runs processes and prints step headers, `workspace.rs` finds paths and
//! versions via `cargo metadata`, `setup.rs` installs toolchains, Chromium, Redis and node tools,
//! `npm.rs` builds the npm packages, `test.rs` is the test pipeline, `demo.rs` starts the demo.

#![forbid(unsafe_code)]

mod bench;
mod cmd;
mod crates;
mod demo;
mod minify;
mod npm;
mod server;
mod setup;
mod test;
mod workspace;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "presence-rs project commands")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what is missing, then run formatting, lints, every test and the package build.
    Test,
    /// Build the wasm package, then run the demo (extra arguments go to the demo binary).
    Demo {
        /// Arguments passed through to the demo binary.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Build the npm packages into `presence-wasm/pkg/` and `presence-wasm/react/pkg/`, and pack
    /// them into `target/`.
    Npm,
    /// Build the packages and print their raw and gzipped sizes (the SDK's against the budget).
    Size,
    /// Pack and verify the crates meant for crates.io (`cargo package`), with their README and
    /// licenses.
    Package,
    /// Run the benchmark suite against a release server on loopback.
    Bench {
        /// A smoke run: small sizes, short durations.
        #[arg(long)]
        quick: bool,
        /// Only the cluster benchmark (several nodes over Redis and the Redis Cluster).
        #[arg(long, conflicts_with = "large")]
        cluster: bool,
        /// Only the large-room benchmark (one room of 100 to 10,000 members, 1 % changing a second).
        #[arg(long)]
        large: bool,
        /// Only the simulated cluster: 10k, 100k and 1M users over 4 nodes and the Redis Cluster
        /// (issue 32; about 9 minutes, 15.4 GB at 1M). `--users` stops at a smaller step.
        #[arg(long, conflicts_with_all = ["large", "cluster"])]
        million: bool,
        /// With `--million`: the largest step to run (10000, 100000 or 1000000).
        #[arg(long, requires = "million", default_value_t = 1_000_000)]
        users: usize,
        /// With `--million`: instead of the steps, a node holding `--users` (default 100,000)
        /// killed with SIGKILL beside two nodes of 25,000 (time until its users are offline on
        /// the others, until the store is clean, and the others' probes meanwhile).
        #[arg(long, requires = "million")]
        kill: bool,
        /// With `--kill`: before it, every user of the killed node reloads at once (a thundering
        /// herd of reconnects).
        #[arg(long, requires = "kill")]
        herd: bool,
        /// With `--million`: instead of the steps, `--users` (default 100,000) over 4 nodes with
        /// the change rate doubling every 20 s (x1 to x32), to find the rate sustained with a
        /// probe p99 within 100 ms.
        #[arg(long, requires = "million", conflicts_with = "kill")]
        ramp: bool,
        /// Only a rolling restart: 3 nodes over the Redis Cluster with 3,000 users each, every
        /// node restarted in turn (SIGTERM, then again under its id) while its users come back
        /// with their resume tokens; observers count the flaps (about 2.5 minutes).
        #[arg(long, conflicts_with_all = ["large", "cluster", "million"])]
        rolling: bool,
        /// Seconds of changes in each large-room run (default 30; 5 with --quick).
        #[arg(long)]
        seconds: Option<u64>,
    },
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            // `{:#}` prints the cause chain on one line, without anyhow's backtrace noise.
            eprintln!("\nerror: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    let ws = workspace::Workspace::load()?;
    match command {
        Command::Test => test::run(&ws),
        Command::Package => crates::package(&ws),
        Command::Demo { args } => demo::run(&ws, &args),
        Command::Npm => {
            setup::package_tools(&ws)?;
            npm::build(&ws, npm::Pack::Yes)
        }
        Command::Size => {
            setup::package_tools(&ws)?;
            npm::build(&ws, npm::Pack::No)
        }
        Command::Bench {
            quick,
            cluster,
            large,
            million,
            users,
            kill,
            herd,
            ramp,
            rolling,
            seconds,
        } => {
            let only = match (cluster, large, million) {
                _ if rolling => bench::Only::Rolling,
                (_, _, true) if ramp => {
                    bench::Only::Ramp(if users == 1_000_000 { 100_000 } else { users })
                }
                (_, _, true) if kill => {
                    bench::Only::Kill(if users == 1_000_000 { 100_000 } else { users }, herd)
                }
                (_, _, true) => bench::Only::Million(users),
                (true, _, _) => bench::Only::Cluster,
                (_, true, _) => bench::Only::Large,
                _ => bench::Only::All,
            };
            let seconds = seconds.unwrap_or(if quick { 5 } else { 30 });
            bench::run(&ws, quick, only, seconds)
        }
    }
}
