//! A keep-alive HTTP/1.1 client connection (raw, one request in flight),
//! shared by the `notify` and `ranked` scenarios.

use std::net::SocketAddr;

use anyhow::{Context, Result, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A keep-alive HTTP/1.1 client connection, one request at a time.
pub struct Http {
    tcp: TcpStream,
    addr: SocketAddr,
    buf: Vec<u8>,
}

/// Largest response head plus body read.
const MAX_RESPONSE: usize = 4 << 20;

impl Http {
    pub async fn connect(addr: SocketAddr) -> Result<Self> {
        anyhow::ensure!(addr.ip().is_loopback(), "loopback only");
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        Ok(Self {
            tcp,
            addr,
            buf: Vec::with_capacity(4096),
        })
    }

    /// `GET path` with the service key: the status and the body.
    pub async fn get(&mut self, path: &str, key: &str) -> Result<(u16, Vec<u8>)> {
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {key}\r\n\r\n",
            self.addr
        );
        self.tcp.write_all(request.as_bytes()).await?;
        self.response().await
    }

    /// `POST path` with a JSON body and the service key: the status and the body.
    pub async fn post(&mut self, path: &str, key: &str, body: &[u8]) -> Result<(u16, Vec<u8>)> {
        let head = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {key}\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            self.addr,
            body.len()
        );
        let mut request = head.into_bytes();
        request.extend_from_slice(body);
        self.tcp.write_all(&request).await?;
        self.response().await
    }

    async fn response(&mut self) -> Result<(u16, Vec<u8>)> {
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = std::str::from_utf8(&self.buf[..end]).context("response head")?;
                let status: u16 = head
                    .split(' ')
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .with_context(|| format!("bad status line in {head:?}"))?;
                let len: usize = head
                    .lines()
                    .find_map(|l| {
                        let (name, value) = l.split_once(':')?;
                        name.eq_ignore_ascii_case("content-length")
                            .then(|| value.trim().parse().ok())?
                    })
                    .with_context(|| format!("no content-length in {head:?}"))?;
                let total = end + 4 + len;
                if self.buf.len() >= total {
                    let body = self.buf[end + 4..total].to_vec();
                    self.buf.drain(..total);
                    return Ok((status, body));
                }
            }
            if self.buf.len() > MAX_RESPONSE {
                bail!("response over {MAX_RESPONSE} bytes");
            }
            if self.tcp.read_buf(&mut self.buf).await? == 0 {
                bail!("connection closed");
            }
        }
    }
}
