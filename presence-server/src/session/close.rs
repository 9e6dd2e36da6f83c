//! Closing a socket: the close frame and the words before it, the hub's
//! signal to close, and what a closing socket still sends us.

use std::time::Duration;

use futures_util::{Stream, StreamExt};
use presence_core::protocol::{CloseCode, ErrorCode, ServerMessage};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::{Error as SocketError, Message, Utf8Bytes};

use super::errors::error;
use crate::hub::{Close, encoded};

/// How long a closing socket gets to take its close frame.
pub(super) const CLOSE_TIMEOUT: Duration = Duration::from_secs(3);

/// What a closing socket may still send us, read and discarded, so that its
/// unread input does not make the kernel answer our close with a reset.
const DRAIN_BYTES: usize = 1 << 20;

pub(super) fn text_frame(msg: &ServerMessage) -> Message {
    Message::Text(encoded(msg))
}

pub(super) fn close_message(close: Close) -> Message {
    Message::Close(Some(CloseFrame {
        code: (close.0 as u16).into(),
        reason: Utf8Bytes::from_static(close.1),
    }))
}

/// Resolves when the hub asks this socket to close; never if it does not.
pub(super) async fn closing(rx: &mut watch::Receiver<Option<Close>>) -> Close {
    loop {
        if let Some(close) = *rx.borrow_and_update() {
            return close;
        }
        if rx.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// What a socket is told before a close, beyond the close frame: a 4101 is
/// explained with an `unauthorized` error, which clients can read.
pub(super) fn last_words(close: Close) -> Option<ServerMessage> {
    (close.0 == CloseCode::Unauthorized).then(|| error(ErrorCode::Unauthorized, close.1, None))
}

/// The close a failed read calls for, if the socket can still take one.
pub(super) fn read_failure(err: SocketError) -> Option<(ErrorCode, Close)> {
    match err {
        SocketError::Capacity(_) => Some((
            ErrorCode::FrameTooLarge,
            (CloseCode::TooBig, "frame too large"),
        )),
        SocketError::Utf8(_) => Some((
            ErrorCode::Malformed,
            (CloseCode::InvalidData, "text frame is not valid UTF-8"),
        )),
        _ => None,
    }
}

/// Reads and discards what a socket we are closing still sends, until its
/// close frame or end, within the close timeout and [`DRAIN_BYTES`]: closing
/// a TCP socket with unread input makes the kernel send a reset, and the
/// client would see 1006 instead of our close code. After a read error (a
/// message past the size limit, bad UTF-8) the stream has ended and this
/// reads nothing: the connection's linger (`upgrade::Lingering`) reads the
/// rest as bytes once the socket is dropped.
pub(super) async fn drain<R>(stream: &mut R)
where
    R: Stream<Item = Result<Message, SocketError>> + Unpin,
{
    let mut budget = DRAIN_BYTES;
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
        while let Some(Ok(msg)) = stream.next().await {
            let len = match &msg {
                Message::Text(t) => t.len(),
                Message::Binary(b) | Message::Ping(b) | Message::Pong(b) => b.len(),
                Message::Close(_) => return,
                Message::Frame(f) => f.len(),
            };
            budget = match budget.checked_sub(len.max(1)) {
                Some(left) => left,
                None => return,
            };
        }
    })
    .await;
}
