//! The writing half of a socket: queued frames out, big ones in fragments,
//! and the close the hub asks for.

use futures_util::{Sink, SinkExt};
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::{Bytes, Message, Utf8Bytes};

use super::close::{CLOSE_TIMEOUT, close_message, closing, last_words, text_frame};
use crate::hub::Close;

/// Text messages past this go out as fragments of at most this many bytes:
/// tungstenite's write buffer keeps the capacity of the biggest frame it
/// ever wrote (tungstenite-rs#500), so one 8 KiB snapshot part would pin
/// 8 KiB on every socket that received one.
const FRAGMENT: usize = 2 * 1024;

/// Sends one text message, past [`FRAGMENT`] as fragments cut between
/// characters. `open` is true while a fragmented message is part-sent: until
/// it ends, only control frames may go out (RFC 6455 5.4).
async fn send<W>(sink: &mut W, text: Utf8Bytes, open: &mut bool) -> Result<(), W::Error>
where
    W: Sink<Message> + Unpin,
{
    if text.len() <= FRAGMENT {
        return sink.send(Message::Text(text)).await;
    }
    let text = Bytes::from(text);
    *open = true;
    let mut start = 0;
    while start < text.len() {
        let mut end = (start + FRAGMENT).min(text.len());
        // UTF-8 continuation bytes are 0b10xx_xxxx.
        while end < text.len() && text[end] & 0xC0 == 0x80 {
            end -= 1;
        }
        let data = if start == 0 {
            Data::Text
        } else {
            Data::Continue
        };
        let last = end == text.len();
        let frame = Frame::message(text.slice(start..end), OpCode::Data(data), last);
        sink.feed(Message::Frame(frame)).await?;
        start = end;
    }
    *open = false;
    sink.flush().await
}

/// Sends queued frames until the queue ends or the hub asks for a close.
pub(super) async fn write<W>(
    mut sink: W,
    mut outbound: mpsc::Receiver<Utf8Bytes>,
    mut close: watch::Receiver<Option<Close>>,
) where
    W: Sink<Message> + Unpin,
{
    let mut open = false;
    let close = loop {
        let msg = tokio::select! {
            biased;
            c = closing(&mut close) => break c,
            m = outbound.recv() => match m {
                Some(m) => m,
                // The socket ended on the client's side; nothing more to say.
                None => return,
            },
        };
        tokio::select! {
            biased;
            c = closing(&mut close) => break c,
            r = send(&mut sink, msg, &mut open) => if r.is_err() { return },
        }
    };
    let _ = Box::pin(tokio::time::timeout(CLOSE_TIMEOUT, async {
        // Past a cut fragment, an error frame would break the socket.
        if let Some(msg) = last_words(close).filter(|_| !open) {
            let _ = sink.send(text_frame(&msg)).await;
        }
        let _ = sink.send(close_message(close)).await;
        let _ = sink.close().await;
    }))
    .await;
}
