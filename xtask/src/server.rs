//! A presence-server child process for tests and benchmarks: dev auth, on a
//! free loopback port, killed when dropped.

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use crate::cmd;
use crate::workspace::Workspace;

/// A running server.
pub struct Server {
    child: Child,
    /// `127.0.0.1:PORT`
    pub addr: String,
}

impl Server {
    /// The WebSocket URL.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addr)
    }

    /// The process id, for reading its memory and CPU time.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Builds the server binary in `profile` (`dev` reuses what `cargo test`
/// already compiled) and returns its path.
pub fn build(ws: &Workspace, profile: &str) -> Result<std::path::PathBuf> {
    cmd::run(cmd::cargo().current_dir(&ws.root).args([
        "build",
        "--package",
        "presence-server",
        "--bin",
        "presence-server",
        "--profile",
        profile,
    ]))?;
    let dir = if profile == "dev" { "debug" } else { profile };
    Ok(ws.target.join(dir).join("presence-server"))
}

/// Starts `binary` in dev-auth mode with `args` on a free port and waits
/// until `/healthz` answers.
pub fn start(binary: &std::path::Path, args: &[&str]) -> Result<Server> {
    let port = free_port()?;
    let addr = format!("127.0.0.1:{port}");
    println!(
        "$ {} --bind {addr} --dev-auth {}",
        binary.display(),
        args.join(" ")
    );
    let child = Command::new(binary)
        .args(["--bind", &addr, "--dev-auth"])
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", binary.display()))?;
    let server = Server { child, addr };
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if answers(&server.addr, "/healthz") {
            return Ok(server);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    bail!(
        "presence-server did not answer /healthz on {} within 20 s",
        server.addr
    )
}

/// A free loopback port (free when asked).
pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// Whether the server at `addr` answers `GET path` with 200.
pub fn answers(addr: &str, path: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if s.write_all(request.as_bytes()).is_err() {
        return false;
    }
    let mut response = String::new();
    let _ = s.read_to_string(&mut response);
    response.starts_with("HTTP/1.1 200")
}
