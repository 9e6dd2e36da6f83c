#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![cfg_attr(not(feature = "std"), no_std)]

extern crate alloc;

/// What `std`'s prelude gives, for the modules that also build without `std`.
mod prelude {
    pub use alloc::borrow::ToOwned;
    pub use alloc::boxed::Box;
    pub use alloc::string::{String, ToString};
    pub use alloc::vec::Vec;
}

pub mod client;
#[cfg(feature = "std")]
pub mod cluster;
pub mod ids;
pub mod json;
#[cfg(feature = "std")]
pub mod large;
pub mod limits;
#[cfg(feature = "std")]
pub mod machine;
#[cfg(feature = "std")]
pub mod notify;
pub mod object;
pub mod policy;
pub mod presence;
pub mod privacy;
pub mod protocol;
#[cfg(feature = "std")]
pub mod receipts;
mod text;

pub use ids::{ConnId, InvalidId, ResumeToken, RoomId, UserId};
#[cfg(feature = "std")]
pub use machine::{Event, Machine, Outcome};
pub use object::{InvalidObject, JsonObject};
pub use policy::TimingPolicy;
pub use presence::{
    Activity, DeviceKind, IdleReason, Millis, PresenceState, PresenceView, Status, StatusText,
};
pub use privacy::{LastSeen, Privacy, Receipts};
pub use protocol::PROTOCOL_VERSION;
