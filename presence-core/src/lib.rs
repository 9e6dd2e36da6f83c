#![doc = include_str!("../README.md")]
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod client;
pub mod ids;
pub mod limits;
pub mod machine;
pub mod policy;
pub mod presence;
pub mod protocol;

pub use ids::{ConnId, InvalidId, ResumeToken, RoomId, UserId};
pub use machine::{Event, Machine, Outcome};
pub use policy::TimingPolicy;
pub use presence::{Activity, IdleReason, Millis, PresenceState, PresenceView, Status, StatusText};
pub use protocol::PROTOCOL_VERSION;
