//! Counters read around a measurement window: each node's bus counters from
//! its `/metrics`, each Redis's CPU time from `INFO cpu`, and the machine's
//! CPU from `/proc/stat` (every process here shares its cores). The requests
//! are blocking, on loopback, run on a plain thread so the load's runtime
//! keeps timestamping observations meanwhile.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// What one probe read, and when.
#[derive(Clone, Debug)]
pub struct Sample {
    pub at: Instant,
    /// Per node: (`presence_backend_bytes_in_total`, `presence_backend_messages_in_total`).
    pub nodes: Vec<(f64, f64)>,
    /// Per node: its state lock's holds so far (`presence_hub_lock_held_seconds`).
    pub holds: Vec<Holds>,
    /// Sum over the Redis servers of `used_cpu_user + used_cpu_sys`, seconds.
    pub redis_cpu: f64,
    /// The machine's (busy, total) CPU time so far, in clock ticks.
    pub host: (u64, u64),
}

impl Sample {
    /// The share of the machine's CPU time that was busy since `before`, in %.
    pub fn host_busy_since(&self, before: &Sample) -> f64 {
        let busy = self.host.0.saturating_sub(before.host.0) as f64;
        let total = self.host.1.saturating_sub(before.host.1).max(1) as f64;
        busy / total * 100.0
    }
}

/// Where to read from.
#[derive(Clone, Debug)]
pub struct Probe {
    pub nodes: Vec<SocketAddr>,
    pub redis: Vec<SocketAddr>,
}

const TIMEOUT: Duration = Duration::from_secs(3);

impl Probe {
    /// Reads every counter on a separate thread; the result arrives on the returned channel.
    pub fn spawn(&self) -> tokio::sync::oneshot::Receiver<Result<Sample>> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let probe = self.clone();
        std::thread::spawn(move || {
            let _ = tx.send(probe.read());
        });
        rx
    }

    fn read(&self) -> Result<Sample> {
        let at = Instant::now();
        let mut holds = Vec::new();
        let nodes = self
            .nodes
            .iter()
            .map(|&addr| {
                let text = http_get(addr, "/metrics")?;
                holds.push(Holds::of(&text));
                Ok((
                    counter(&text, "presence_backend_bytes_in_total")
                        .with_context(|| format!("{addr}/metrics"))?,
                    counter(&text, "presence_backend_messages_in_total")
                        .with_context(|| format!("{addr}/metrics"))?,
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        let mut redis_cpu = 0.0;
        for &addr in &self.redis {
            let info = redis_info_cpu(addr)?;
            redis_cpu += field(&info, "used_cpu_user")? + field(&info, "used_cpu_sys")?;
        }
        Ok(Sample {
            at,
            nodes,
            holds,
            redis_cpu,
            host: host_cpu(&std::fs::read_to_string("/proc/stat").unwrap_or_default()),
        })
    }
}

fn connect(addr: SocketAddr) -> Result<TcpStream> {
    let s = TcpStream::connect_timeout(&addr, TIMEOUT).with_context(|| format!("{addr}"))?;
    s.set_read_timeout(Some(TIMEOUT))?;
    s.set_write_timeout(Some(TIMEOUT))?;
    Ok(s)
}

/// A `Connection: close` GET; the body as text (bounded to 1 MiB).
fn http_get(addr: SocketAddr, path: &str) -> Result<String> {
    let mut s = connect(addr)?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )?;
    let mut body = String::new();
    s.take(1 << 20).read_to_string(&mut body)?;
    if !body.starts_with("HTTP/1.1 200") {
        bail!(
            "{addr}{path}: {}",
            body.lines().next().unwrap_or("no answer")
        );
    }
    Ok(body)
}

/// A node's state-lock holds so far, from its histogram.
#[derive(Clone, Copy, Debug, Default)]
pub struct Holds {
    pub count: f64,
    pub seconds: f64,
    /// Holds longer than 25.6 ms and than 102.4 ms (the histogram's bounds).
    pub over_25ms: f64,
    pub over_100ms: f64,
}

impl Holds {
    const NAME: &str = "presence_hub_lock_held_seconds";

    /// From `/metrics` text; zeros where the histogram is missing.
    fn of(text: &str) -> Self {
        let bucket = |le: f64| {
            text.lines()
                .filter_map(|l| l.strip_prefix(Self::NAME)?.strip_prefix("_bucket{le=\""))
                .filter_map(|l| {
                    let (bound, rest) = l.split_once('"')?;
                    let n: f64 = rest.trim_start_matches('}').trim().parse().ok()?;
                    Some((bound.parse::<f64>().ok()?, n))
                })
                .find(|(bound, _)| (bound - le).abs() < le * 1e-6)
                .map_or(0.0, |(_, n)| n)
        };
        let count = counter(text, &format!("{}_count", Self::NAME)).unwrap_or(0.0);
        Self {
            count,
            seconds: counter(text, &format!("{}_sum", Self::NAME)).unwrap_or(0.0),
            over_25ms: count - bucket(0.0256),
            over_100ms: count - bucket(0.1024),
        }
    }

    /// What happened between `before` and this.
    pub fn since(&self, before: &Holds) -> Holds {
        Holds {
            count: self.count - before.count,
            seconds: self.seconds - before.seconds,
            over_25ms: self.over_25ms - before.over_25ms,
            over_100ms: self.over_100ms - before.over_100ms,
        }
    }
}

/// A Prometheus text line `NAME VALUE` (no labels).
fn counter(text: &str, name: &str) -> Result<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("no {name}"))
}

/// `INFO cpu` in RESP: one bulk string back (bounded to 64 KiB).
fn redis_info_cpu(addr: SocketAddr) -> Result<String> {
    let mut s = connect(addr)?;
    s.write_all(b"*2\r\n$4\r\nINFO\r\n$3\r\ncpu\r\n")?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    while buf.len() < 64 * 1024 {
        let n = s.read(&mut chunk)?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf);
        let Some((head, body)) = text.split_once("\r\n") else {
            continue;
        };
        let len: usize = head
            .strip_prefix('$')
            .and_then(|l| l.parse().ok())
            .with_context(|| format!("{addr}: INFO answered {head}"))?;
        if body.len() >= len {
            return Ok(body[..len].to_owned());
        }
    }
    bail!("{addr}: INFO cpu reply ended early")
}

fn field(info: &str, name: &str) -> Result<f64> {
    info.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
        .and_then(|v| v.trim().parse().ok())
        .with_context(|| format!("INFO cpu without {name}"))
}

/// `/proc/stat`'s first line: every field but idle and iowait is busy.
fn host_cpu(stat: &str) -> (u64, u64) {
    let ticks: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|v| v.parse().ok())
        .collect();
    let total: u64 = ticks.iter().sum();
    let idle = ticks.get(3).copied().unwrap_or(0) + ticks.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_counters_and_info_fields() {
        let text = "# TYPE presence_backend_bytes_in counter\n\
                    presence_backend_bytes_in_total 1234\n\
                    presence_backend_bytes_in_total_x 9\n";
        assert_eq!(
            counter(text, "presence_backend_bytes_in_total").unwrap(),
            1234.0
        );
        let info = "# CPU\r\nused_cpu_sys:1.5\r\nused_cpu_user:2.25\r\n";
        assert_eq!(field(info, "used_cpu_user").unwrap(), 2.25);
        assert_eq!(field(info, "used_cpu_sys").unwrap(), 1.5);
        assert_eq!(
            host_cpu("cpu  10 0 5 80 5 0 0 0 0 0\ncpu0 1 2 3"),
            (15, 100)
        );
    }
}
