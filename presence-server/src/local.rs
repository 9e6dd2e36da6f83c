//! In-process connections: a user served by the real session (hello, rate
//! limits, batches, closes) over two bounded channels instead of a socket.
//!
//! For a server-side agent that should appear present (a bot, a support
//! desk), for tests, and for simulating many users per node without a file
//! descriptor each (`loadgen sim`). The frames are the wire protocol's, as
//! text: what a browser would send and receive.

use futures_util::{Sink, Stream};
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::{Error as SocketError, Message};

use crate::auth::Identity;

/// Frames from the local client waiting for the session, at most.
pub const LOCAL_INBOUND: usize = 64;
/// Frames from the session waiting for the local client, at most; past
/// them the session's own outbound queue fills, and a client that does not
/// read is closed as a slow consumer, as a socket is.
const LOCAL_OUTBOUND: usize = 16;

/// One in-process connection. Dropping it is the client going away (the
/// session sees its stream end: offline after the grace, as a closed socket).
#[derive(Debug)]
pub struct LocalSocket {
    tx: mpsc::Sender<Message>,
    rx: mpsc::Receiver<Message>,
    /// A fragmented text message so far (big ones come in parts).
    partial: Vec<u8>,
}

/// Why a frame could not be handed to the session.
#[derive(Debug, thiserror::Error)]
#[error("the session has ended")]
pub struct LocalClosed;

impl LocalSocket {
    /// The client's ends, and the session's sink and stream.
    fn pair() -> (
        Self,
        impl Sink<Message> + Unpin + Send + 'static,
        impl Stream<Item = Result<Message, SocketError>> + Unpin + Send + 'static,
    ) {
        let (to_session, from_client) = mpsc::channel::<Message>(LOCAL_INBOUND);
        let (to_client, from_session) = mpsc::channel::<Message>(LOCAL_OUTBOUND);
        let me = Self {
            tx: to_session,
            rx: from_session,
            partial: Vec::new(),
        };
        let sink = futures_util::sink::unfold(to_client, |tx, msg: Message| async move {
            tx.send(msg).await.map_err(|_| LocalClosed)?;
            Ok::<_, LocalClosed>(tx)
        });
        let stream = futures_util::stream::unfold(from_client, |mut rx| async move {
            rx.recv().await.map(|m| (Ok(m), rx))
        });
        (me, Box::pin(sink), Box::pin(stream))
    }

    /// Sends one frame (JSON text, as the protocol's client frames); waits
    /// while the session is [`LOCAL_INBOUND`] frames behind.
    pub async fn send(&mut self, text: impl Into<String>) -> Result<(), LocalClosed> {
        self.tx
            .send(Message::text(text.into()))
            .await
            .map_err(|_| LocalClosed)
    }

    /// The next frame the session sent (text), or `None` once it closed.
    pub async fn recv(&mut self) -> Option<String> {
        loop {
            let msg = self.rx.recv().await?;
            if let Some(done) = self.take(msg)? {
                return Some(done);
            }
        }
    }

    /// A whole text message, `Some(None)` for a part or a control frame,
    /// `None` at the close.
    fn take(&mut self, msg: Message) -> Option<Option<String>> {
        match msg {
            Message::Text(t) => Some(Some(t.to_string())),
            Message::Close(_) => None,
            Message::Frame(f) => {
                let fin = f.header().is_final;
                self.partial.extend_from_slice(f.payload());
                if !fin {
                    return Some(None);
                }
                let whole = std::mem::take(&mut self.partial);
                // The writer cuts between characters; anything else is a bug
                // there, shown rather than hidden.
                Some(Some(String::from_utf8(whole).unwrap_or_else(|e| {
                    String::from_utf8_lossy(e.as_bytes()).into_owned()
                })))
            }
            // Pings: a local client has no use for them.
            _ => Some(None),
        }
    }
}

/// Runs `who`'s session on the channels; the caller spawns it.
pub(crate) fn session(
    hub: std::sync::Arc<crate::hub::Hub>,
    who: Identity,
) -> (LocalSocket, impl Future<Output = ()> + Send + 'static) {
    let (socket, sink, stream) = LocalSocket::pair();
    (socket, crate::session::run(hub, who, sink, stream))
}
