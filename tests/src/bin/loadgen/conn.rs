//! One load connection: a real WebSocket from a chosen loopback source
//! address, small buffers, raw protocol frames.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{WebSocketStream, client_async_with_config};

/// A connected, greeted client socket.
pub type Ws = WebSocketStream<TcpStream>;

/// Where the server is.
#[derive(Clone, Debug)]
pub struct Target {
    /// `ws://127.0.0.1:PORT/ws`
    pub url: String,
    /// The TCP address of the same.
    pub addr: SocketAddr,
}

impl Target {
    /// Parses a `ws://` URL on loopback; anything else is refused.
    pub fn parse(url: &str) -> Result<Self> {
        let rest = url
            .strip_prefix("ws://")
            .ok_or_else(|| anyhow!("the load generator only speaks ws:// to loopback"))?;
        let host = rest.split('/').next().unwrap_or_default();
        let addr: SocketAddr = host
            .parse()
            .with_context(|| format!("bad address {host}"))?;
        if !addr.ip().is_loopback() {
            bail!("refusing to send load to {addr}: loopback only");
        }
        Ok(Self {
            url: url.to_owned(),
            addr,
        })
    }
}

/// The `i`-th loopback source address (127.0.0.1, 127.0.0.2, …): each gives
/// ~28k ephemeral ports, so several are needed beyond that many connections.
pub fn source(i: usize, sources: usize) -> IpAddr {
    let n = (i % sources.max(1)) as u8;
    IpAddr::from([127, 0, 0, 1 + n])
}

/// Opens a socket as `user` (dev auth: the token is the user name), says
/// hello and waits for `welcome`.
pub async fn open(target: &Target, from: IpAddr, user: &str) -> Result<Ws> {
    Ok(open_with(target, from, user, r#"{"type":"hello","v":1}"#)
        .await?
        .0)
}

/// [`open`] with this `hello` frame; also returns the `welcome` frame.
pub async fn open_with(
    target: &Target,
    from: IpAddr,
    user: &str,
    hello: &str,
) -> Result<(Ws, String)> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::new(from, 0))?;
    let stream = socket.connect(target.addr).await?;
    stream.set_nodelay(true)?;
    let request = format!("{}?token={user}", target.url).into_client_request()?;
    let config = WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_write_buffer_size(64 * 1024);
    let (mut ws, _) = client_async_with_config(request, stream, Some(config)).await?;
    ws.send(Message::text(hello)).await?;
    let welcome = tokio::time::timeout(Duration::from_secs(10), next_text(&mut ws))
        .await
        .context("no welcome within 10 s")??;
    if !welcome.contains(r#""type":"welcome""#) {
        bail!("expected welcome, got {welcome}");
    }
    Ok((ws, welcome))
}

/// The next text frame (pings and pongs skipped).
pub async fn next_text(ws: &mut Ws) -> Result<String> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => return Ok(t.to_string()),
            Some(Ok(Message::Close(c))) => bail!("closed: {c:?}"),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
            None => bail!("socket ended"),
        }
    }
}

/// The next text frame of a socket that only listens, pinging it every
/// `ping` tick meanwhile (as the SDK does); `None` once it closed or failed.
pub async fn listen(ws: &mut Ws, ping: &mut tokio::time::Interval) -> Option<String> {
    loop {
        let frame = tokio::select! {
            _ = ping.tick() => {
                ws.send(Message::text(r#"{"type":"ping"}"#)).await.ok()?;
                continue;
            }
            frame = ws.next() => frame,
        };
        match frame? {
            Ok(Message::Text(t)) => return Some(t.to_string()),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => continue,
        }
    }
}

/// Joins a room and waits for its snapshot.
pub async fn join(ws: &mut Ws, room: &str) -> Result<()> {
    ws.send(Message::text(format!(
        r#"{{"type":"join","room":"{room}"}}"#
    )))
    .await?;
    loop {
        let t = tokio::time::timeout(Duration::from_secs(30), next_text(ws))
            .await
            .context("no snapshot within 30 s")??;
        if t.starts_with(r#"{"type":"snapshot""#) {
            return Ok(());
        }
    }
}

/// An `activity` frame: idle (no input) or active.
pub fn activity(idle: bool) -> Message {
    Message::text(if idle {
        r#"{"type":"activity","state":"idle","reason":"no_input"}"#
    } else {
        r#"{"type":"activity","state":"active"}"#
    })
}
