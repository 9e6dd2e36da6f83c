//! Identifier newtypes. Each validates its length and content when built, so a
//! value of these types is always safe to log, store and send.

use crate::prelude::*;
use core::fmt;

use serde::{Deserialize, Serialize};

use crate::limits::{MAX_RESUME_TOKEN_BYTES, MAX_ROOM_ID_BYTES, MAX_USER_ID_BYTES};

/// Why a string was refused as an identifier or text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidId {
    /// The string was empty.
    Empty {
        /// Which kind of value was refused.
        kind: &'static str,
    },
    /// The string was longer than its limit.
    TooLong {
        /// Which kind of value was refused.
        kind: &'static str,
        /// The limit.
        max: usize,
    },
    /// The string held a control character or whitespace.
    BadCharacter {
        /// Which kind of value was refused.
        kind: &'static str,
    },
}

// Written out with `write_str` (no `write!`): see `crate::text`.
impl fmt::Display for InvalidId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty { kind } => {
                f.write_str(kind)?;
                f.write_str(" must not be empty")
            }
            Self::TooLong { kind, max } => {
                f.write_str(kind)?;
                f.write_str(" is longer than ")?;
                crate::text::write_decimal(f, *max as u64)?;
                f.write_str(" bytes")
            }
            Self::BadCharacter { kind } => {
                f.write_str(kind)?;
                f.write_str(" may not contain control characters or whitespace")
            }
        }
    }
}

fn check(kind: &'static str, s: &str, max: usize) -> Result<(), InvalidId> {
    if s.is_empty() {
        return Err(InvalidId::Empty { kind });
    }
    if s.len() > max {
        return Err(InvalidId::TooLong { kind, max });
    }
    if s.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(InvalidId::BadCharacter { kind });
    }
    Ok(())
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal, $max:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(Box<str>);

        impl $name {
            /// Validates and wraps `s`.
            pub fn new(s: impl Into<String>) -> Result<Self, InvalidId> {
                let s = s.into();
                check($kind, &s, $max)?;
                Ok(Self(s.into_boxed_str()))
            }

            /// The identifier as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = InvalidId;
            fn try_from(s: String) -> Result<Self, InvalidId> {
                Self::new(s)
            }
        }

        impl TryFrom<&str> for $name {
            type Error = InvalidId;
            fn try_from(s: &str) -> Result<Self, InvalidId> {
                Self::new(s)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0.into()
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{:?}", &*self.0)
            }
        }
    };
}

id_type!(
    /// A user, as named by the application's auth (a JWT `sub`, a session's user id).
    UserId,
    "user id",
    MAX_USER_ID_BYTES
);
id_type!(
    /// A room: a chat channel, a document, a feed — any group whose members see each other.
    RoomId,
    "room id",
    MAX_ROOM_ID_BYTES
);
id_type!(
    /// An opaque secret issued in `welcome` that lets a reconnecting client take
    /// its old connection back instead of leaving and joining again.
    ResumeToken,
    "resume token",
    MAX_RESUME_TOKEN_BYTES
);

/// One connection: a browser tab or a device. Assigned by the server, unique
/// for the server's (or cluster's) lifetime.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ConnId(pub u64);

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "c{}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_refuse_empty_long_and_control_characters() {
        assert!(UserId::new("ana").is_ok());
        assert!(UserId::new("ána@example.com").is_ok());
        assert_eq!(UserId::new(""), Err(InvalidId::Empty { kind: "user id" }));
        assert!(matches!(
            RoomId::new("r".repeat(MAX_ROOM_ID_BYTES + 1)),
            Err(InvalidId::TooLong { .. })
        ));
        assert!(RoomId::new("r".repeat(MAX_ROOM_ID_BYTES)).is_ok());
        assert!(matches!(
            UserId::new("a\u{0}b"),
            Err(InvalidId::BadCharacter { .. })
        ));
        assert!(matches!(
            UserId::new("a b"),
            Err(InvalidId::BadCharacter { .. })
        ));
    }

    #[test]
    fn ids_deserialize_through_validation() {
        let ok: UserId = serde_json::from_str("\"bob\"").unwrap();
        assert_eq!(ok.as_str(), "bob");
        assert!(serde_json::from_str::<UserId>("\"\"").is_err());
        assert!(serde_json::from_str::<UserId>("42").is_err());
    }
}
