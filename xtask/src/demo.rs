//! `cargo xtask demo`: build the browser package, then run the demo server.

use anyhow::{Result, bail};

use crate::workspace::Workspace;
use crate::{cmd, npm, setup};

/// Builds the npm package and runs `demo-web`'s binary with `args`.
pub fn run(ws: &Workspace, args: &[String]) -> Result<()> {
    if !ws.has_bin("demo-web")? {
        bail!("demo not built yet: the `demo-web` crate has no binary");
    }
    setup::package_tools(ws)?;
    npm::build(ws, npm::Pack::No)?;
    let mut command = cmd::cargo();
    command
        .current_dir(&ws.root)
        .args(["run", "--package", "demo-web", "--profile", "tools", "--"])
        .args(args);
    // Statuses, last-seen times and read markers survive restarts of the demo.
    if !args.iter().any(|a| a.starts_with("--data-dir")) {
        command.arg("--data-dir").arg(ws.target.join("demo-data"));
    }
    cmd::run(&mut command)
}
