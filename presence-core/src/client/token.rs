//! The token the client presents: the one in hand, when the server says it
//! expires, and when to ask the app for a fresh one.

use crate::prelude::*;
use core::time::Duration;

use crate::presence::Millis;

/// Refusals in a row (a 4101 with no `welcome` between) after which a
/// client stops asking for tokens and reports `unauthorized`: an app whose
/// tokens the server keeps refusing must not reconnect in a loop.
pub const MAX_REFUSALS: u32 = 3;
/// How long a refresh may be early: a quarter of the token's life left, but
/// at most this (so an hour-long token is refreshed a minute before `exp`).
const MAX_EARLY_MS: u64 = 60_000;
/// After a failed or refused refresh, ask again this much later (until the
/// server closes the socket at `exp`).
pub const REFRESH_RETRY: Duration = Duration::from_secs(5);

#[derive(Debug, Default)]
pub(super) struct Token {
    /// What the next upgrade and `auth` frame present.
    pub value: Option<String>,
    /// The app can be asked for a token (`Action::FetchToken`).
    pub source: bool,
    /// When the server said the token in use expires.
    pub exp: Option<Millis>,
    /// When to ask for a fresh one while connected.
    pub refresh_at: Option<Millis>,
    /// When the app was asked, until it answers.
    pub asked: Option<Millis>,
    /// 4101s since the last `welcome`.
    pub refusals: u32,
    /// Stopped for good: the server refused the token and no fresh one came.
    pub stopped: bool,
    /// The server's word on the last refusal, for the app.
    pub reason: Option<String>,
}

impl Token {
    /// The server says the token in use expires at `exp`: plan the refresh.
    pub fn expires(&mut self, now: Millis, exp: Option<Millis>) {
        self.refusals = 0;
        self.exp = exp;
        self.refresh_at = match exp {
            Some(exp) if self.source => {
                // In milliseconds: `Duration` arithmetic weighs more in the bundle.
                let left = exp.0.saturating_sub(now.0);
                Some(Millis(now.0 + left - (left / 4).min(MAX_EARLY_MS)))
            }
            _ => None,
        };
    }
}
