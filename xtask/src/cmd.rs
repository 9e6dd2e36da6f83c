//! Running external commands and printing step headers.

use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// A `cargo` command using the same cargo binary that started xtask.
pub fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// A command for `program`, run in `dir`.
pub fn in_dir(program: impl AsRef<OsStr>, dir: &Path) -> Command {
    let mut command = Command::new(program);
    command.current_dir(dir);
    command
}

/// Runs `command`, echoing it first; fails unless it exits successfully.
pub fn run(command: &mut Command) -> Result<()> {
    println!("$ {}", show(command));
    let status = command
        .status()
        .with_context(|| format!("could not start `{}`", show(command)))?;
    if !status.success() {
        bail!("`{}` failed ({status})", show(command));
    }
    Ok(())
}

/// Runs `command` quietly and tells whether it succeeded (false if it could not start).
pub fn succeeds(command: &mut Command) -> bool {
    command
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

/// Runs `command` and returns its standard output; fails unless it exits successfully.
pub fn output(command: &mut Command) -> Result<String> {
    let out = command
        .output()
        .with_context(|| format!("could not start `{}`", show(command)))?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            show(command),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    String::from_utf8(out.stdout).with_context(|| format!("`{}` printed non-UTF-8", show(command)))
}

fn show(command: &Command) -> String {
    std::iter::once(command.get_program())
        .chain(command.get_args())
        .map(|part| part.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Runs named steps in order with a header each, stopping at the first failure.
pub struct Steps {
    total: usize,
    done: usize,
    started: Instant,
}

impl Steps {
    /// A sequence of `total` steps, timed from now.
    pub fn new(total: usize) -> Self {
        Steps {
            total,
            done: 0,
            started: Instant::now(),
        }
    }

    /// Runs one step under a header, then prints how long it took.
    pub fn step(&mut self, name: &str, body: impl FnOnce() -> Result<()>) -> Result<()> {
        self.done += 1;
        println!("\n==> [{}/{}] {name}", self.done, self.total);
        let started = Instant::now();
        body().with_context(|| format!("step `{name}` failed"))?;
        println!("<== {name}: ok in {}", human(started.elapsed()));
        Ok(())
    }

    /// Time since the first step started.
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }
}

/// `1m 05s` / `4.2s`.
pub fn human(duration: Duration) -> String {
    let secs = duration.as_secs();
    if secs >= 60 {
        format!("{}m {:02}s", secs / 60, secs % 60)
    } else {
        format!("{:.1}s", duration.as_secs_f64())
    }
}
