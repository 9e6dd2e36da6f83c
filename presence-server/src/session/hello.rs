//! The handshake: a socket's first frame must be a `hello` of our version.

use futures_util::{Stream, StreamExt};
use presence_core::protocol::{ClientMessage, CloseCode, ErrorCode, ServerMessage, decode_client};
use presence_core::{Activity, DeviceKind, ResumeToken};
use tokio_tungstenite::tungstenite::{Error as SocketError, Message};

use super::errors::{describe, error};
use crate::hub::{Close, Hub};

/// Reads until `hello`, within the hello timeout. On failure returns the
/// error frame (if any) and the close to send.
pub(super) async fn read_hello<R>(
    hub: &Hub,
    stream: &mut R,
) -> Result<(Option<ResumeToken>, Activity, DeviceKind), (Option<ServerMessage>, Close)>
where
    R: Stream<Item = Result<Message, SocketError>> + Unpin,
{
    let policy = (CloseCode::PolicyViolation, "hello required");
    let deadline = tokio::time::Instant::now() + hub.config.hello_timeout;
    let mut shutdown = hub.shutdown_signal();
    loop {
        let next = tokio::select! {
            r = tokio::time::timeout_at(deadline, stream.next()) => r,
            _ = shutdown.wait_for(|s| *s) => {
                return Err((None, (CloseCode::GoingAway, "server shutting down")));
            }
        };
        let text = match next {
            Err(_) => {
                let e = error(ErrorCode::HelloRequired, "no hello in time", None);
                return Err((Some(e), policy));
            }
            Ok(None | Some(Err(_)) | Some(Ok(Message::Close(_)))) => {
                return Err((None, (CloseCode::GoingAway, "")));
            }
            Ok(Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)))) => continue,
            Ok(Some(Ok(Message::Binary(_)))) => {
                let e = error(
                    ErrorCode::HelloRequired,
                    describe(ErrorCode::HelloRequired),
                    None,
                );
                return Err((Some(e), policy));
            }
            Ok(Some(Ok(Message::Text(t)))) => t,
        };
        return match decode_client(text.as_str()) {
            Ok(ClientMessage::Hello {
                v,
                resume,
                activity,
                device,
            }) => {
                if v != presence_core::PROTOCOL_VERSION {
                    let e = error(
                        ErrorCode::UnsupportedVersion,
                        format!("this server speaks v{}", presence_core::PROTOCOL_VERSION),
                        Some("hello"),
                    );
                    return Err((
                        Some(e),
                        (CloseCode::UnsupportedVersion, "unsupported version"),
                    ));
                }
                Ok((
                    resume,
                    activity.unwrap_or(Activity::Active),
                    device.unwrap_or_default(),
                ))
            }
            Ok(other) => Err((
                Some(error(
                    ErrorCode::HelloRequired,
                    describe(ErrorCode::HelloRequired),
                    Some(other.kind()),
                )),
                policy,
            )),
            // A `hello` with a bad field is told what is wrong with it;
            // anything else first (not JSON, another type) is not a hello.
            Err(e) if e.frame.as_deref() == Some("hello") => {
                Err((Some(error(e.code, e.message, Some("hello"))), policy))
            }
            Err(_) => Err((
                Some(error(
                    ErrorCode::HelloRequired,
                    describe(ErrorCode::HelloRequired),
                    None,
                )),
                policy,
            )),
        };
    }
}
