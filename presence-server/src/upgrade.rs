//! The WebSocket handshake (RFC 6455 over HTTP/1.1), done here rather than by
//! axum's `WebSocketUpgrade` so that the session holds tungstenite's own
//! stream: axum's `Message` cannot send a fragment, and the writer fragments
//! big frames so that no socket keeps a big write buffer (see `session::writer::write`).

use std::future::{Future, poll_fn};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

use crate::config::SocketBuffers;

/// The socket a session runs on.
pub(crate) type Socket = WebSocketStream<Lingering<TokioIo<hyper::upgrade::Upgraded>>>;

/// How long a dropped connection keeps reading what its peer still sends.
const LINGER_TIME: Duration = Duration::from_secs(2);

/// Most bytes a dropped connection reads (and discards) before it closes.
const LINGER_BYTES: usize = 1 << 20;

/// A connection that closes lingeringly when dropped: it sends its FIN, then
/// reads and discards input until the peer's own FIN, for at most
/// [`LINGER_TIME`] (2 s) and [`LINGER_BYTES`] (1 MiB), and only then closes.
///
/// Closing a TCP socket with unread input makes the kernel answer with a
/// reset, which makes the client's next write fail and may throw away our
/// close frame before the client reads it: a browser then sees 1006 instead
/// of our close code. The session drains the WebSocket up to the peer's
/// close frame (`session::close::drain`), but after a read error (a message past
/// the size limit, bad UTF-8) tungstenite's stream has ended, while a client
/// sending a big message in fragments still has most of it on the way: only
/// the bytes can be read then. Bounded, so that a peer that never stops gets
/// its reset after all; it runs as a task of its own once the session is
/// done with the socket.
pub(crate) struct Lingering<T: AsyncRead + AsyncWrite + Unpin + Send + 'static>(Option<T>);

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Lingering<T> {
    fn io(&mut self) -> io::Result<Pin<&mut T>> {
        // Taken only by `drop`.
        self.0
            .as_mut()
            .map(Pin::new)
            .ok_or_else(|| io::ErrorKind::NotConnected.into())
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> AsyncRead for Lingering<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.io()?.poll_read(cx, buf)
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> AsyncWrite for Lingering<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.io()?.poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.io()?.poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.as_ref().is_some_and(T::is_write_vectored)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.io()?.poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.io()?.poll_shutdown(cx)
    }
}

impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Drop for Lingering<T> {
    fn drop(&mut self) {
        // Outside a runtime (one shutting down) the socket just closes.
        if let (Some(io), Ok(runtime)) = (self.0.take(), tokio::runtime::Handle::try_current()) {
            runtime.spawn(linger(io));
        }
    }
}

/// Shuts down our side of `io` (what we wrote, the close frame last, goes
/// out before our FIN), then reads and discards until the peer's FIN, an
/// error, [`LINGER_BYTES`] or [`LINGER_TIME`], whichever comes first.
async fn linger<T: AsyncRead + AsyncWrite + Unpin>(mut io: T) {
    let _ = tokio::time::timeout(LINGER_TIME, async {
        // A failed shutdown still leaves input to read.
        let _ = poll_fn(|cx| Pin::new(&mut io).poll_shutdown(cx)).await;
        let mut buf = [0u8; 2048];
        let mut left = LINGER_BYTES;
        loop {
            let mut read = ReadBuf::new(&mut buf);
            if poll_fn(|cx| Pin::new(&mut io).poll_read(cx, &mut read))
                .await
                .is_err()
            {
                return;
            }
            left = match left.checked_sub(read.filled().len()) {
                // An empty read is the peer's FIN.
                Some(left) if !read.filled().is_empty() => left,
                _ => return,
            };
        }
    })
    .await;
}

/// A checked upgrade request, not yet answered.
pub(crate) struct Upgrade {
    on_upgrade: OnUpgrade,
    accept: HeaderValue,
}

/// Whether header `name`, a comma-separated list, holds `token` (any case).
fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

/// Why a request to the socket path gets no socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    NotGet,
    NoUpgrade,
    BadVersion,
    NoKey,
    /// The host's HTTP server was not run with upgrades enabled.
    NotUpgradable,
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        use header::{SEC_WEBSOCKET_VERSION, UPGRADE};
        // A 426 names what to ask for instead (RFC 9110 15.5.22, RFC 6455 4.4).
        let (status, wanted, why) = match self {
            Self::NotGet => (
                StatusCode::METHOD_NOT_ALLOWED,
                None,
                "a WebSocket upgrade must be a GET",
            ),
            Self::NoUpgrade => (
                StatusCode::UPGRADE_REQUIRED,
                Some((UPGRADE, "websocket")),
                "this path takes WebSocket upgrades only (Connection: upgrade, Upgrade: websocket)",
            ),
            Self::BadVersion => (
                StatusCode::UPGRADE_REQUIRED,
                Some((SEC_WEBSOCKET_VERSION, "13")),
                "the Sec-WebSocket-Version header must be 13",
            ),
            Self::NoKey => (
                StatusCode::BAD_REQUEST,
                None,
                "the Sec-WebSocket-Key header is missing",
            ),
            Self::NotUpgradable => (
                StatusCode::INTERNAL_SERVER_ERROR,
                None,
                "this connection cannot be upgraded",
            ),
        };
        let mut response = (status, why).into_response();
        if let Some((name, value)) = wanted {
            response
                .headers_mut()
                .insert(name, HeaderValue::from_static(value));
        }
        response
    }
}

impl Upgrade {
    /// Checks that `request` asks for a WebSocket.
    pub(crate) fn check(request: &mut Request) -> Result<Self, Refusal> {
        if request.method() != Method::GET {
            return Err(Refusal::NotGet);
        }
        let headers = request.headers();
        if !has_token(headers, header::CONNECTION, "upgrade")
            || !has_token(headers, header::UPGRADE, "websocket")
        {
            return Err(Refusal::NoUpgrade);
        }
        if headers
            .get(header::SEC_WEBSOCKET_VERSION)
            .map(|v| v.as_bytes())
            != Some(b"13")
        {
            return Err(Refusal::BadVersion);
        }
        let key = headers
            .get(header::SEC_WEBSOCKET_KEY)
            .ok_or(Refusal::NoKey)?;
        let accept = HeaderValue::from_str(&derive_accept_key(key.as_bytes()))
            .map_err(|_| Refusal::NoKey)?;
        let on_upgrade = request
            .extensions_mut()
            .remove::<OnUpgrade>()
            .ok_or(Refusal::NotUpgradable)?;
        Ok(Self { on_upgrade, accept })
    }

    /// Answers 101 and runs `session` on the socket once the client has it.
    pub(crate) fn run<F, Fut>(self, buffers: SocketBuffers, session: F) -> Response
    where
        F: FnOnce(Socket) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let config = WebSocketConfig::default()
            .read_buffer_size(buffers.read_buffer)
            .write_buffer_size(buffers.write_buffer)
            .max_write_buffer_size(buffers.max_write_buffer)
            .max_message_size(Some(buffers.max_message))
            .max_frame_size(Some(buffers.max_message));
        let on_upgrade = self.on_upgrade;
        tokio::spawn(async move {
            match on_upgrade.await {
                Ok(io) => {
                    let socket = WebSocketStream::from_raw_socket(
                        Lingering(Some(TokioIo::new(io))),
                        Role::Server,
                        Some(config),
                    )
                    .await;
                    session(socket).await;
                }
                Err(e) => tracing::debug!(error = %e, "upgrade failed"),
            }
        });
        let mut response = Response::new(Body::empty());
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let h = response.headers_mut();
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(header::SEC_WEBSOCKET_ACCEPT, self.accept);
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(method: Method, headers: &[(&str, &str)]) -> Request {
        let mut b = axum::http::Request::builder().method(method).uri("/ws");
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(Body::empty()).expect("request")
    }

    #[test]
    fn each_missing_part_of_an_upgrade_has_its_refusal() {
        let full = [
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "WebSocket"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ];
        let refusal = |method, skip: Option<&str>| {
            let headers: Vec<_> = full.into_iter().filter(|(k, _)| Some(*k) != skip).collect();
            Upgrade::check(&mut request(method, &headers)).err()
        };
        let cases = [
            (Method::POST, None, Refusal::NotGet),
            (Method::GET, Some("connection"), Refusal::NoUpgrade),
            (Method::GET, Some("upgrade"), Refusal::NoUpgrade),
            (
                Method::GET,
                Some("sec-websocket-version"),
                Refusal::BadVersion,
            ),
            (Method::GET, Some("sec-websocket-key"), Refusal::NoKey),
        ];
        for (method, skip, want) in cases {
            assert_eq!(
                refusal(method.clone(), skip),
                Some(want),
                "{method} without {skip:?}"
            );
        }
        // A request no hyper server handed over: nothing to upgrade.
        assert_eq!(refusal(Method::GET, None), Some(Refusal::NotUpgradable));
        let answer = Refusal::NotUpgradable.into_response();
        assert_eq!(answer.status(), StatusCode::INTERNAL_SERVER_ERROR);
    }
}
