//! Wire protocol v1: JSON text frames, one message per frame, tagged by `type`.
//!
//! The contract is `PROTOCOL.md` plus the golden vectors in `vectors/`; both
//! are checked by this crate's tests, and the server and the browser SDK read
//! the same vectors. Unknown fields are ignored so that later minor versions
//! can add optional fields; unknown `type`s are refused with `unknown_type`.

mod client;
mod client_encode;
#[cfg(feature = "std")]
mod codec;
mod error;
mod server;
mod server_decode;

pub use client::ClientMessage;
#[cfg(feature = "std")]
pub use codec::{decode_client, encode};
pub use error::{CloseCode, DecodeError, ErrorCode};
pub use server::{Counts, Diff, Receipt, ServerMessage};
pub use server_decode::decode_server;

/// The protocol version this crate speaks.
pub const PROTOCOL_VERSION: u32 = 1;
