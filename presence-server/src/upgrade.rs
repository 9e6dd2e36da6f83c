//! The WebSocket handshake (RFC 6455 over HTTP/1.1), done here rather than by
//! axum's `WebSocketUpgrade` so that the session holds tungstenite's own
//! stream: axum's `Message` cannot send a fragment, and the writer fragments
//! big frames so that no socket keeps a big write buffer (see `session::write`).

use std::future::Future;

use axum::body::Body;
use axum::extract::Request;
use axum::http::header::{self, HeaderMap, HeaderValue};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

use crate::config::SocketBuffers;

/// The socket a session runs on.
pub(crate) type Socket = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

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
                        TokioIo::new(io),
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
