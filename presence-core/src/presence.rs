//! The presence vocabulary: what a connection is doing, what a user chose to
//! show, and what observers see.

use crate::prelude::*;
use core::time::Duration;

use serde::{Deserialize, Serialize};

use crate::ids::UserId;
use crate::limits::MAX_STATUS_TEXT_CHARS;
use crate::object::JsonObject;

/// A point in time, in milliseconds since the Unix epoch.
///
/// The machine never reads a clock: callers pass `now`. The server feeds a
/// monotonic clock anchored to the wall clock at start-up, so deadlines never
/// jump backwards while last-seen times still read as real dates.
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug, Default, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Millis(pub u64);

impl Millis {
    /// `self + d`, saturating instead of overflowing.
    pub fn after(self, d: Duration) -> Millis {
        let d = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Millis(self.0.saturating_add(d))
    }

    /// Time elapsed from `earlier` to `self`, zero if `earlier` is later.
    pub fn since(self, earlier: Millis) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

/// Why a connection (or a user) is idle, so apps can say "away: tab hidden".
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IdleReason {
    /// No input for the idle-after delay.
    NoInput,
    /// The page is hidden (another tab in front, window minimised).
    Hidden,
    /// The window lost focus.
    Blurred,
    /// The screen is locked (Idle Detection API, where granted).
    Locked,
}

/// What one connection is doing, as its client reports it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(tag = "state", content = "reason", rename_all = "snake_case")]
pub enum Activity {
    /// The user is interacting through this connection.
    Active,
    /// Connected, but the user is not interacting, for the given reason.
    Idle(IdleReason),
}

/// The kind of device a connection runs on: its client says so in `hello`
/// (the browser SDK derives it from the browser; the app may override it),
/// for backends deciding where a notification goes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeviceKind {
    /// A desktop or laptop browser, or a desktop app.
    Desktop,
    /// A phone.
    Mobile,
    /// A tablet.
    Tablet,
    /// Anything else, or not said.
    #[default]
    Other,
}

impl DeviceKind {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            DeviceKind::Desktop => "desktop",
            DeviceKind::Mobile => "mobile",
            DeviceKind::Tablet => "tablet",
            DeviceKind::Other => "other",
        }
    }
}

/// What the user chose to show.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// The default.
    #[default]
    Available,
    /// Away, even while active.
    Away,
    /// Do not disturb.
    Busy,
    /// Seen as offline by everyone else; still receives everything.
    Invisible,
}

/// A short status text ("in a meeting"): at most
/// [`MAX_STATUS_TEXT_CHARS`] characters, no control characters, trimmed.
#[derive(Clone, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct StatusText(Box<str>);

/// Why a status text was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidStatusText {
    /// Longer than the limit.
    TooLong,
    /// Empty or only whitespace where a text was required.
    Empty,
    /// Contains a control character (newlines included).
    BadCharacter,
}

// Written out with `write_str` (no `write!`): see `crate::text`.
impl core::fmt::Display for InvalidStatusText {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::TooLong => {
                f.write_str("status text is longer than ")?;
                crate::text::write_decimal(f, MAX_STATUS_TEXT_CHARS as u64)?;
                f.write_str(" characters")
            }
            Self::Empty => f.write_str("status text must not be empty; omit the field instead"),
            Self::BadCharacter => f.write_str("status text may not contain control characters"),
        }
    }
}

impl StatusText {
    /// Validates `s`, trimming surrounding whitespace. An empty text is `None`.
    pub fn new(s: &str) -> Result<Option<Self>, InvalidStatusText> {
        let s = s.trim();
        // Characters are the bytes that do not continue one; `chars().count()`
        // brought an unrolled counter into the browser bundle.
        if s.bytes().filter(|&b| (b as i8) >= -0x40).count() > MAX_STATUS_TEXT_CHARS {
            return Err(InvalidStatusText::TooLong);
        }
        if s.chars().any(char::is_control) {
            return Err(InvalidStatusText::BadCharacter);
        }
        Ok((!s.is_empty()).then(|| Self(s.into())))
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<String> for StatusText {
    type Error = InvalidStatusText;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        // On the wire an absent text is a missing field, never "".
        Self::new(&s)?.ok_or(InvalidStatusText::Empty)
    }
}

impl From<StatusText> for String {
    fn from(t: StatusText) -> String {
        t.0.into()
    }
}

/// A user's presence as observers see it, aggregated over all connections.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PresenceState {
    /// At least one connection is active.
    Active,
    /// Connected, none active.
    Idle,
    /// No connection left after the grace period (or invisible).
    Offline,
}

impl PresenceState {
    /// Active or idle.
    pub fn is_online(self) -> bool {
        self != PresenceState::Offline
    }
}

/// One user's presence, as a given observer may see it. Invisible users are
/// rendered offline with their last visible time.
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct PresenceView {
    /// Whose presence this is.
    pub user: UserId,
    /// Aggregated state.
    pub state: PresenceState,
    /// Why idle, when `state` is idle.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<IdleReason>,
    /// Chosen status; never `invisible` towards others.
    pub status: Status,
    /// Status text, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<StatusText>,
    /// When online: the last time any connection was active.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_active: Option<Millis>,
    /// When offline: the last time the user was seen connected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<Millis>,
    /// When online: what the server says about the user (from the token's
    /// `info` claim or the app's authenticator), e.g. name and avatar.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<JsonObject>,
    /// When online: what the user's client last set with `data`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<JsonObject>,
}

impl PresenceView {
    /// A user nothing is known of: offline, available, no times, nothing set.
    pub fn offline(user: UserId) -> Self {
        Self {
            user,
            state: PresenceState::Offline,
            reason: None,
            status: Status::Available,
            text: None,
            last_active: None,
            last_seen: None,
            info: None,
            data: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_text_is_trimmed_bounded_and_clean() {
        assert_eq!(
            StatusText::new("  lunch ").unwrap().unwrap().as_str(),
            "lunch"
        );
        assert_eq!(StatusText::new("   ").unwrap(), None);
        let max = "é".repeat(MAX_STATUS_TEXT_CHARS);
        assert!(StatusText::new(&max).unwrap().is_some());
        assert_eq!(
            StatusText::new(&format!("{max}x")),
            Err(InvalidStatusText::TooLong)
        );
        assert_eq!(
            StatusText::new("a\nb"),
            Err(InvalidStatusText::BadCharacter)
        );
    }

    #[test]
    fn millis_arithmetic_saturates() {
        assert_eq!(
            Millis(u64::MAX).after(Duration::from_secs(1)),
            Millis(u64::MAX)
        );
        assert_eq!(Millis(5).since(Millis(9)), Duration::ZERO);
    }
}
