//! One task per WebSocket: `hello`, then frames in, replies and batches out.
//!
//! The session is generic over the socket's two halves, so it does not care
//! whether they come from our upgrade (`upgrade.rs`) or from a test channel.
//! Reading and writing run as two tasks: a socket that stops reading fills
//! its outbound queue without stalling our reads, and the hub closes it as a
//! slow consumer.
//!
//! This file wires the task; `hello` is the handshake, `dispatch` takes
//! frames to the hub, `limits` rates them, `errors` words the refusals,
//! `close` closes a socket, `writer` is the writing half (it fragments).

mod close;
mod dispatch;
mod errors;
mod hello;
mod limits;
mod writer;

use std::sync::Arc;
use std::time::Duration;

use futures_util::{Sink, SinkExt, Stream, StreamExt};
use presence_core::protocol::{CloseCode, ServerMessage};
use tokio_tungstenite::tungstenite::{Error as SocketError, Message};

use self::close::{
    CLOSE_TIMEOUT, close_message, closing, drain, last_words, read_failure, text_frame,
};
use self::dispatch::Session;
use self::errors::{describe, error};
use self::hello::read_hello;
use self::writer::write;
use crate::auth::Identity;
use crate::hub::{Hub, Registered};

/// A resume on a node that is still taking back its predecessor's saved
/// connections (a graceful restart) waits at most this long for them.
const RESUME_WAIT: Duration = Duration::from_secs(3);

/// Refuses a socket whose token the authenticator refused: `unauthorized`,
/// then 4101. Done after the upgrade because a browser cannot read the
/// status of a refused one.
pub(crate) async fn refuse<W, R>(mut sink: W, mut stream: R)
where
    W: Sink<Message> + Unpin,
    R: Stream<Item = Result<Message, SocketError>> + Unpin,
{
    let close = (CloseCode::Unauthorized, "the token was refused");
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        if let Some(msg) = last_words(close) {
            let _ = sink.send(text_frame(&msg)).await;
        }
        let _ = sink.send(close_message(close)).await;
    })
    .await;
    drain(&mut stream).await;
}

/// Runs one authenticated socket to its end.
// A block, not an `async fn`: an `async fn` keeps its arguments twice in the
// future (rust-lang/rust#62958), and this future is a task, one per socket.
#[allow(clippy::manual_async_fn)]
pub(crate) fn run<W, R>(
    hub: Arc<Hub>,
    who: Identity,
    mut sink: W,
    mut stream: R,
) -> impl Future<Output = ()>
where
    W: Sink<Message> + Unpin + Send + 'static,
    R: Stream<Item = Result<Message, SocketError>> + Unpin,
{
    async move {
        let _live = hub.session_guard();
        let who = Arc::new(who);
        let user = who.user.clone();
        // Boxed here and below: what runs once or briefly (hello, a close,
        // one frame) must not size the task that every idle socket keeps.
        let (resume, activity, device) = match Box::pin(read_hello(&hub, &mut stream)).await {
            Ok(hello) => hello,
            Err((frame, close)) => {
                if let Some(ServerMessage::Error { code, .. }) = &frame {
                    hub.metrics.reject(*code);
                }
                let _ = Box::pin(tokio::time::timeout(CLOSE_TIMEOUT, async {
                    if let Some(frame) = frame {
                        let _ = sink.send(text_frame(&frame)).await;
                    }
                    let _ = sink.send(close_message(close)).await;
                }))
                .await;
                return;
            }
        };
        // A node that just restarted may not have its predecessor's
        // connections back yet: a resume waits for them (bounded).
        let mut resume = resume;
        if let Some(token) = &resume {
            Box::pin(hub.cluster_settled(RESUME_WAIT)).await;
            // A connection another node holds comes here first.
            if let Some(taken) = Box::pin(hub.take_over(&user, token)).await {
                resume = Some(taken);
            }
        }
        let Registered {
            conn,
            generation,
            outbound,
            close,
        } = match hub.connect(&who, resume.as_ref(), activity, device) {
            Ok(r) => r,
            Err(_) if hub.is_shutting_down() => {
                let close = (CloseCode::GoingAway, "server shutting down");
                let send = tokio::time::timeout(CLOSE_TIMEOUT, sink.send(close_message(close)));
                let _ = Box::pin(send).await;
                return;
            }
            Err(code) => {
                hub.metrics.reject(code);
                let _ = Box::pin(tokio::time::timeout(CLOSE_TIMEOUT, async {
                    let _ = sink
                        .send(text_frame(&error(code, describe(code), Some("hello"))))
                        .await;
                    let _ = sink
                        .send(close_message((CloseCode::PolicyViolation, describe(code))))
                        .await;
                }))
                .await;
                return;
            }
        };
        tracing::debug!(%user, %conn, generation, "connected");
        let writer = tokio::spawn(write(sink, outbound, close.clone()));
        let mut session = Session::new(&hub, who, conn, generation);
        let mut close = close;
        let mut peer_closed = false;
        let killed = loop {
            let frame = tokio::select! {
                biased;
                _ = closing(&mut close) => break true,
                f = stream.next() => f,
            };
            match frame {
                None => break false,
                Some(Ok(Message::Close(_))) => {
                    peer_closed = true;
                    break false;
                }
                Some(Err(e)) => {
                    if let Some((code, close)) = read_failure(e) {
                        hub.metrics.reject(code);
                        hub.close(conn, generation, close);
                        break true;
                    }
                    break false;
                }
                Some(Ok(msg)) => {
                    if let Err(close) = Box::pin(session.frame(msg)).await {
                        hub.close(conn, generation, close);
                        break true;
                    }
                }
            }
        };
        if killed {
            Box::pin(drain(&mut stream)).await;
        } else {
            hub.socket_gone(conn, generation);
        }
        if peer_closed {
            // tungstenite sends its answer to the peer's close frame on the
            // next read: without it a browser sees 1006, not a clean close.
            let _ = Box::pin(tokio::time::timeout(CLOSE_TIMEOUT, stream.next())).await;
        }
        // The writer ends by itself: with the queue's end, or after the close frame.
        let _ = Box::pin(tokio::time::timeout(
            CLOSE_TIMEOUT + Duration::from_secs(1),
            writer,
        ))
        .await;
        tracing::debug!(%user, %conn, generation, killed, "socket ended");
    }
}
